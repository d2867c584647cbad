"""Tests of rlkl.losses: REINFORCE, PPO clip (clip-higher, dual clip), GSPO, KL losses, the eight RPG surrogates with
RPG-Style Clip, and loss aggregation.

Hand-computed values (arithmetic in comments), slow per-token loop references (PPO as verl writes it, RPG Tables 1/2/4
and Algorithms 1/2 of arXiv 2505.17508 as docs/theory.md restates them, aggregation), hypothesis properties (the RPG
per-sample identity ∇ℓ_differentiable = ∇ℓ_REINFORCE, padding invariance, on-policy PPO = REINFORCE), peer parity
with verl/OpenRLHF (the peers' source, restated in docs/integrations.md) and input validation. float64 at 1e-12; float32 at rtol 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from rlkl.losses import (AGGREGATION_MODES, RPG_DIVERGENCES, PolicyLossOutput, RPGClip, aggregate, gspo_loss, kl_loss,
                         ppo_clip_loss, reinforce_loss, rpg_loss)
from strategies import finite_floats, float_tensors, masks, token_batches

F64 = torch.float64


def t(x, dtype=F64) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


def ones_mask(B: int, T: int) -> torch.Tensor:
    return torch.ones(B, T, dtype=torch.bool)


def grad_of(fn, logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, d value.sum() / d logp) of fn(logp)."""
    x = logp.detach().clone().requires_grad_()
    v = fn(x)
    return v.detach(), grad_or_zero(v.sum(), x)


def grad_or_zero(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dy/dx, or zeros when y does not depend on x (e.g. every sample is on a constant clipped branch)."""
    if not y.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(y, x, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def close(a: torch.Tensor, b, rtol: float = 1e-12, atol: float = 1e-12) -> bool:
    b = b if isinstance(b, torch.Tensor) else torch.tensor(b, dtype=a.dtype)
    return a.shape == b.shape and bool(torch.allclose(a, b.to(a.dtype), rtol=rtol, atol=atol))


# ---------------------------------------------------------------------------------------------------------------
# (1) hand-computed values


def test_ppo_clip_by_hand():
    # tokens (ρ, A): (1.5, +1) → max(−1.5, −1.2) = −1.2 (clipped high, no gradient)
    #                (0.5, +1) → max(−0.5, −0.8) = −0.5 (unclipped, gradient −Aρ = −0.5)
    #                (0.5, −1) → max(0.5, 0.8) = 0.8 (clipped low, no gradient)
    #                (5, −1), dual c = 3 → max(5, 1.2) = 5, then min(5, −c·A = 3) = 3 (dual clipped, no gradient)
    logp_old = t([[-1.0, -1.0, -1.0, -1.0]])
    logp = logp_old + torch.log(t([[1.5, 0.5, 0.5, 5.0]]))
    A = t([[1.0, 1.0, -1.0, -1.0]])
    out = ppo_clip_loss(logp, logp_old, A, ones_mask(1, 4), 0.2, 0.2, dual_clip=3.0)
    assert isinstance(out, PolicyLossOutput)
    assert close(out.loss, [[-1.2, -0.5, 0.8, 3.0]])
    # each of high / low / dual clips one token of four; ratio mean (1.5 + .5 + .5 + 5)/4 = 1.875
    assert out.clip_fraction_high.item() == 0.25 and out.clip_fraction_low.item() == 0.25
    assert out.dual_clip_fraction.item() == 0.25
    assert out.ratio_mean.item() == pytest.approx(1.875, rel=1e-14)
    assert out.ratio_min.item() == pytest.approx(0.5, rel=1e-14)
    assert out.ratio_max.item() == pytest.approx(5.0, rel=1e-14)
    _, g = grad_of(lambda x: ppo_clip_loss(x, logp_old, A, ones_mask(1, 4), 0.2, 0.2, 3.0).loss, logp)
    assert close(g, [[0.0, -0.5, 0.0, 0.0]])
    # without the dual clip the last token costs ρ·|A| = 5 and keeps its gradient −A·ρ = 5
    out = ppo_clip_loss(logp, logp_old, A, ones_mask(1, 4))
    assert close(out.loss, [[-1.2, -0.5, 0.8, 5.0]]) and out.dual_clip_fraction.item() == 0.0
    # clip-higher ε_high = 0.28 (DAPO): ρ = 1.5, A = 1 → −1.28
    out = ppo_clip_loss(logp[:, :1], logp_old[:, :1], A[:, :1], ones_mask(1, 1), 0.2, 0.28)
    assert close(out.loss, [[-1.28]])


def test_reinforce_and_gspo_by_hand():
    # REINFORCE: −A·log π = −2·(−0.5) = 1, gradient −A = −2; padding contributes nothing
    logp = t([[-0.5, -3.0]])
    m = torch.tensor([[True, False]])
    v, g = grad_of(lambda x: reinforce_loss(x, t([[2.0, 2.0]]), m).loss, logp)
    assert close(v, [[1.0, 0.0]]) and close(g, [[-2.0, 0.0]])
    # GSPO: log ρ = [0.1, 0.3] → s = exp(mean) = e^{0.2} = 1.2214028; A = 1, ε = (0.3, 0.3): unclipped,
    # per-token loss −s = −1.2214028, gradient per token −A·s = −1.2214028, and −s/|y| = −0.6107014 after
    # seq-mean-token-mean
    logp_old = t([[-1.0, -2.0]])
    logp = logp_old + t([[0.1, 0.3]])
    A = t([[1.0, 1.0]])
    out = gspo_loss(logp, logp_old, A, ones_mask(1, 2), 0.3, 0.3)
    assert close(out.loss, [[-1.2214027581601699] * 2])
    _, g = grad_of(lambda x: aggregate(gspo_loss(x, logp_old, A, ones_mask(1, 2), 0.3, 0.3).loss, ones_mask(1, 2),
                                       "seq-mean-token-mean"), logp)
    assert close(g, [[-0.6107013790800849] * 2])
    # GSPO defaults (3e-4, 4e-4): s = 1.2214 > 1.0004 → clipped, loss −1.0004 per token, no gradient
    v, g = grad_of(lambda x: gspo_loss(x, logp_old, A, ones_mask(1, 2)).loss, logp)
    assert close(v, [[-1.0004, -1.0004]]) and close(g, [[0.0, 0.0]])


def test_kl_loss_by_hand():
    # log_ratio l = 1 (logp = −1, logp_ref = −2): k3 = e^{−1} = 0.3678794, ∇k3 = 1 − e^{−1} = 0.6321206
    logp, ref = t([[-1.0]]), t([[-2.0]])
    v, g = grad_of(lambda x: kl_loss(x, ref, ones_mask(1, 1), "k3"), logp)
    assert close(v, [[math.exp(-1)]]) and close(g, [[1 - math.exp(-1)]])
    # ρ = π/π_old = 2 (logp_old = −1 − ln 2): value ρ·k3 = 0.7357589; ∇(ρ k3) = ρ(k3 + 1 − e^{−l}) = ρ·l = 2
    old = logp - math.log(2.0)
    v, g = grad_of(lambda x: kl_loss(x, ref, ones_mask(1, 1), "k3", logp_old=old, importance_weight=True), logp)
    assert close(v, [[2 * math.exp(-1)]]) and close(g, [[2.0]])
    # k1 (value 1, gradient 1), k2 (value ½, gradient l = 1), k3+ (value 0.3679, gradient 1)
    for est, st_, val, grad in (("k1", False, 1.0, 1.0), ("k2", False, 0.5, 1.0), ("k3", True, math.exp(-1), 1.0)):
        v, g = grad_of(lambda x: kl_loss(x, ref, ones_mask(1, 1), est, straight_through=st_), logp)
        assert close(v, [[val]]) and close(g, [[grad]]), est


# one token: logp = −1, logp_old = −1.5 → log w = ½, w = e^{½} = 1.6487213; A = 1, β = 0.1
RPG_HAND = {  # (differentiable value, REINFORCE value = −Weight·lp = Weight, gradient = −Weight)
    # fkl: ℓ = −wA − β lp = −1.6487213 + 0.1 = −1.5487213; Weight = wA + β = 1.7487213
    "fkl": (-1.548721270700128, 1.7487212707001283, -1.7487212707001283),
    # rkl: ℓ = w(−A + β log w) = 1.6487213·(−0.95) = −1.5662852; Weight = w(A − β(log w + 1)) = 1.6487213·0.85
    "rkl": (-1.5662852071651217, 1.401413080095109, -1.401413080095109),
    # ufkl: ℓ = −wA + β(w − log w − 1) = −1.6487213 + 0.0148721 = −1.6338491; Weight = wA − β(w − 1) = 1.5838491
    "ufkl": (-1.6338491436301155, 1.5838491436301154, -1.5838491436301154),
    # urkl: ℓ = −wA + β(w log w − w) = −1.6487213 − 0.0824361 = −1.7311573; Weight = w(A − β log w) = 1.5662852
    "urkl": (-1.7311573342351345, 1.5662852071651217, -1.5662852071651217),
}


@pytest.mark.parametrize("div", RPG_DIVERGENCES)
def test_rpg_surrogates_by_hand(div):
    logp, old, A, m = t([[-1.0]]), t([[-1.5]]), t([[1.0]]), ones_mask(1, 1)
    diff, rf, grad = RPG_HAND[div]
    v, g = grad_of(lambda x: rpg_loss(x, old, A, m, div, "differentiable", 0.1).loss, logp)
    assert close(v, [[diff]]) and close(g, [[grad]])
    v, g = grad_of(lambda x: rpg_loss(x, old, A, m, div, "reinforce", 0.1).loss, logp)
    assert close(v, [[rf]]) and close(g, [[grad]])


def test_rpg_style_clip_by_hand():
    logp, old, m, clip = t([[-1.0]]), t([[-1.5]]), ones_mask(1, 1), RPGClip(0.2, 0.28, 10.0)
    # Alg. 2, urkl, A = +1, w = 1.6487 ≥ 1 + ε2 = 1.28: C_KL = Weight − wA = 1.5662852 − 1.6487213 = −0.0824361,
    # A' = A + C_KL/w = 0.95 ≥ 0 → constant (A + C_KL/1.28)·ℓ·1.28 = (1.28 − 0.0824361)·1 = 1.1975639, no gradient
    out = rpg_loss(logp, old, t([[1.0]]), m, "urkl", "reinforce", 0.1, clip=clip)
    assert close(out.loss, [[1.1975639364649935]]) and out.clip_fraction_high.item() == 1.0
    _, g = grad_of(lambda x: rpg_loss(x, old, t([[1.0]]), m, "urkl", "reinforce", 0.1, clip=clip).loss, logp)
    assert close(g, [[0.0]])
    # Alg. 2, A = −1: Weight = w(−1 − 0.05) = −1.7311573, A' = −1.05 < 0 and 0.8 < w < 10: active,
    # loss −Weight·lp = −1.7311573, gradient −Weight = +1.7311573
    v, g = grad_of(lambda x: rpg_loss(x, old, t([[-1.0]]), m, "urkl", "reinforce", 0.1, clip=clip).loss, logp)
    assert close(v, [[-1.7311573342351347]]) and close(g, [[1.7311573342351347]])
    # Alg. 2 dual clip, A = −1, w = 12 > c = 10: Weight = 12(−1 − 0.1 ln 12) = −14.9818880, C_KL = −2.9818880,
    # constant A·ℓ·c + C_KL·ℓ = −10 − 2.9818880 = −12.9818880, no gradient
    old12 = logp - math.log(12.0)
    out = rpg_loss(logp, old12, t([[-1.0]]), m, "urkl", "reinforce", 0.1, clip=clip)
    assert close(out.loss, [[-12.9818879797456]]) and out.dual_clip_fraction.item() == 1.0
    # Alg. 1 (differentiable + clip), urkl, A = +1: Â = A − β log w = 0.95, w > 1.28 → loss −1.28·Â = −1.216 and,
    # because Â depends on θ, gradient −1.28·∂Â/∂lp = +1.28·β = 0.128 (RPG arXiv 2505.17508, docs/theory.md)
    v, g = grad_of(lambda x: rpg_loss(x, old, t([[1.0]]), m, "urkl", "differentiable", 0.1, clip=clip).loss, logp)
    assert close(v, [[-1.216]]) and close(g, [[0.128]])


def test_aggregation_by_hand():
    # rows: [1, 2, 3] (3 tokens) and [4, pad, pad] (1 token); padding holds garbage (99) that must be ignored
    loss = t([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]])
    m = torch.tensor([[True, True, True], [True, False, False]])
    assert aggregate(loss, m, "token-mean").item() == 2.5  # (1 + 2 + 3 + 4)/4
    assert aggregate(loss, m, "seq-mean-token-mean").item() == 3.0  # (6/3 + 4/1)/2 = (2 + 4)/2
    assert aggregate(loss, m, "seq-mean-token-sum").item() == 5.0  # (6 + 4)/2
    assert aggregate(loss, m, "seq-mean-token-sum-norm", horizon=4).item() == 1.25  # (6 + 4)/(2·4)
    assert aggregate(loss, m, "seq-mean-token-sum-norm").item() == pytest.approx(10 / 6, rel=1e-15)  # C = T = 3
    # a row with no valid token: the seq-mean modes average over the B' = 1 non-empty row; token-mean is unchanged;
    # sum-norm divides by the full batch size B = 2 (docstring: Σ/(B·C)).
    # NOTE: the peer's source defines B for verl's sum-norm as "sequences with ≥ 1 valid token"; rlkl uses all rows.
    loss = t([[1.0, 2.0], [5.0, 5.0]])
    m = torch.tensor([[True, True], [False, False]])
    assert aggregate(loss, m, "token-mean").item() == 1.5
    assert aggregate(loss, m, "seq-mean-token-mean").item() == 1.5
    assert aggregate(loss, m, "seq-mean-token-sum").item() == 3.0
    assert aggregate(loss, m, "seq-mean-token-sum-norm", horizon=2).item() == 0.75  # 3/(2·2)


def test_aggregation_of_one_value_per_response_by_hand():
    # a [B, 1] loss x_i counts once per valid token of row i: rows x = 2 (3 tokens) and x = 4 (1 token), as the
    # [B, T] losses [2, 2, 2] and [4, pad, pad]
    x = t([[2.0], [4.0]])
    m = torch.tensor([[True, True, True], [True, False, False]])
    assert aggregate(x, m, "token-mean").item() == 2.5  # (2·3 + 4·1)/4
    assert aggregate(x, m, "seq-mean-token-mean").item() == 3.0  # (6/3 + 4/1)/2
    assert aggregate(x, m, "seq-mean-token-sum").item() == 5.0  # (6 + 4)/2
    assert aggregate(x, m, "seq-mean-token-sum-norm", horizon=4).item() == 1.25  # (6 + 4)/(2·4)
    assert aggregate(x, m, "seq-mean-token-sum-norm").item() == pytest.approx(10 / 6, rel=1e-15)  # C = T = 3
    # a row with no valid token adds nothing (B' = 1 for the seq-mean modes, B = 2 for sum-norm)
    x, m = t([[1.5], [5.0]]), torch.tensor([[True, True], [False, False]])
    assert aggregate(x, m, "token-mean").item() == 1.5  # (1.5·2)/2
    assert aggregate(x, m, "seq-mean-token-mean").item() == 1.5
    assert aggregate(x, m, "seq-mean-token-sum").item() == 3.0  # 1.5·2/1
    assert aggregate(x, m, "seq-mean-token-sum-norm", horizon=2).item() == 0.75  # 3/(2·2)
    # gradient of seq-mean-token-sum w.r.t. x_i: k_i/B' = (2, 0)
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(aggregate(xg, m, "seq-mean-token-sum"), xg)
    assert g.tolist() == [[2.0], [0.0]]
    with pytest.raises(ValueError, match=r"mask has shape \(2, 2\), expected \(3, 2\)"):
        aggregate(t([[1.0], [2.0], [3.0]]), m, "token-mean")


# ---------------------------------------------------------------------------------------------------------------
# (2) slow loop references


def verl_vanilla_ppo(logp: float, logp_old: float, A: float, clip_low: float, clip_high: float,
                     dual_clip: float | None) -> float:
    """verl ``vanilla`` per-token loss (the peer's source): ρ = exp(clamp(log ρ, ±20));
    ℓ₁ = max(−ρA, −clip(ρ, 1−ε_lo, 1+ε_hi)A); for A < 0 additionally min(ℓ₁, −c·A)."""
    rho = math.exp(max(-20.0, min(20.0, logp - logp_old)))
    l1 = max(-rho * A, -min(max(rho, 1 - clip_low), 1 + clip_high) * A)
    if dual_clip is not None and A < 0:
        l1 = min(l1, -dual_clip * A)
    return l1


def openrlhf_ppo(logp: float, logp_old: float, A: float, eps: float, dual_clip: float | None) -> float:
    """OpenRLHF PolicyLoss (the peer's source): −min(ρA, clip(ρ)A); for A < 0 with dual clip −max(min(ρA, clip(ρ)A), cA)."""
    rho = math.exp(max(-20.0, min(20.0, logp - logp_old)))
    inner = min(rho * A, min(max(rho, 1 - eps), 1 + eps) * A)
    if dual_clip is not None and A < 0:
        return -max(inner, dual_clip * A)
    return -inner


def loop_aggregate(loss: list[list[float]], mask: list[list[bool]], mode: str, horizon: int | None) -> float:
    if mode == "token-mean":
        num = den = 0.0
        for row, mrow in zip(loss, mask):
            for v, m in zip(row, mrow):
                if m:
                    num += v
                    den += 1
        return num / den
    seq = []
    for row, mrow in zip(loss, mask):
        n = sum(mrow)
        s = sum(v for v, m in zip(row, mrow) if m)
        seq.append((s, n))
    if mode == "seq-mean-token-mean":
        vals = [s / n for s, n in seq if n > 0]
        return sum(vals) / len(vals)
    if mode == "seq-mean-token-sum":
        vals = [s for s, n in seq if n > 0]
        return sum(vals) / len(vals)
    C = len(loss[0]) if horizon is None else horizon
    return sum(s for s, _ in seq) / (len(loss) * C)


def rpg_reference(lp: torch.Tensor, lp_old: float, A: float, div: str, form: str, beta: float, clip: RPGClip | None,
                  z: float) -> torch.Tensor:
    """One sample's RPG loss from RPG arXiv 2505.17508 Tables 1, 2, 4, Alg. 1 and Alg. 2 (literally), written out.

    Alg. 1's Â for the forward KLs (not given in the paper) holds its KL term fixed: with a θ-dependent β/w the
    product −w·Â = −wA − β would drop the KL gradient altogether (docs/theory.md).

    ``lp`` is a 0-dim differentiable tensor (log π_θ of the sample), everything else is data.
    """
    log_w = lp - lp_old
    w = torch.exp(log_w)
    weight = {"fkl": w * A + beta, "rkl": w * (A - beta * (log_w + 1)), "ufkl": z * (w * A - beta * (w - 1)),
              "urkl": z * w * (A - beta * log_w)}[div]
    if clip is None and form == "differentiable":
        return {"fkl": -w * A - beta * lp, "rkl": w * (-A + beta * log_w),
                "ufkl": z * (-w * A + beta * (w - log_w - 1)),
                "urkl": z * (-w * A + beta * (w * log_w - w))}[div]
    if clip is None:
        return -weight.detach() * lp
    e1, e2, c = clip.eps_low, clip.eps_high, clip.c
    if form == "differentiable":  # Algorithm 1: θ-dependent Â for the reverse KLs, the forward KLs' KL term fixed
        wd_ = w.detach()
        a_hat = z * {"urkl": A - beta * log_w, "rkl": A - beta * (log_w + 1), "ufkl": A - beta * (1 - 1 / wd_),
                     "fkl": A + beta / wd_}[div]
        loss = torch.maximum(-w * a_hat, -torch.clamp(w, 1 - e1, 1 + e2) * a_hat)
        if a_hat.item() < 0:
            loss = torch.minimum(loss, -c * a_hat)
        return loss
    # Algorithm 2 (REINFORCE-style RPG-Style Clip), ℓ = −log π_θ ≥ 0
    wd = w.detach().item()
    a_r = z * A
    c_kl = weight.detach().item() - z * wd * A
    a_eff = a_r + c_kl / wd
    ell = -lp
    ell_sg = -lp.item()
    psi = a_eff * ell
    if psi.item() >= 0:
        if wd < 1 + e2:
            return psi * wd
        return torch.tensor((a_r + c_kl / (1 + e2)) * ell_sg * (1 + e2), dtype=lp.dtype)
    if wd <= 1 - e1:
        return torch.tensor((a_r + c_kl / (1 - e1)) * ell_sg * (1 - e1), dtype=lp.dtype)
    if wd < c:
        return psi * wd
    return torch.tensor(a_r * ell_sg * c + c_kl * ell_sg, dtype=lp.dtype)


def alg2_knife_edge(lp: float, lp_old: float, A: float, div: str, beta: float, z: float) -> bool:
    """True when Alg. 2's effective advantage A' = Weight/w is within round-off of 0. There the loss *value* jumps
    between the active branch (A'·ℓ·w ≈ 0) and the clipped constant (e.g. (1 + ε2 − w)·A·ℓ), a discontinuity of the
    algorithm itself; which side round-off picks is not a property worth testing."""
    log_w = lp - lp_old
    w = math.exp(log_w)
    weight = {"fkl": w * A + beta, "rkl": w * (A - beta * (log_w + 1)), "ufkl": z * (w * A - beta * (w - 1)),
              "urkl": z * w * (A - beta * log_w)}[div]
    return abs(weight / w) < 1e-9


@given(tb=token_batches(log_ratio_bound=1.0), clip_low=finite_floats(0.05, 0.5), clip_high=finite_floats(0.05, 0.5),
       dual=st.sampled_from([None, 1.5, 3.0]), data=st.data())
def test_ppo_clip_matches_verl_loop(tb, clip_low, clip_high, dual, data):
    A = data.draw(float_tensors(tb.logp.shape, -2.0, 2.0))
    out = ppo_clip_loss(tb.logp, tb.logp_old, A, tb.mask, clip_low, clip_high, dual)
    lp, lo, a, m = tb.logp.tolist(), tb.logp_old.tolist(), A.tolist(), tb.mask.tolist()
    ref = [[verl_vanilla_ppo(lp[i][j], lo[i][j], a[i][j], clip_low, clip_high, dual) if m[i][j] else 0.0
            for j in range(len(lp[0]))] for i in range(len(lp))]
    assert close(out.loss, ref)
    if clip_low == clip_high:
        ref2 = [[openrlhf_ppo(lp[i][j], lo[i][j], a[i][j], clip_low, dual) if m[i][j] else 0.0
                 for j in range(len(lp[0]))] for i in range(len(lp))]
        assert close(out.loss, ref2)
    # gradient: −A·ρ on unclipped tokens, exactly 0 on the clipped ones (and on padding)
    _, g = grad_of(lambda x: ppo_clip_loss(x, tb.logp_old, A, tb.mask, clip_low, clip_high, dual).loss, tb.logp)
    rho = torch.exp(tb.logp - tb.logp_old)
    clipped = ((A > 0) & (rho > 1 + clip_high)) | ((A < 0) & (rho < 1 - clip_low))
    if dual is not None:
        clipped |= (A < 0) & (rho > dual)
    expected = torch.where(clipped | ~tb.mask, torch.zeros_like(A), -A * rho)
    assert close(g, expected)


@given(tb=token_batches(log_ratio_bound=1.0), eps=st.sampled_from([(3e-4, 4e-4), (0.2, 0.2), (0.5, 1.0)]),
       data=st.data())
def test_gspo_matches_loop(tb, eps, data):
    A = data.draw(float_tensors(tb.logp.shape, -2.0, 2.0))
    out = gspo_loss(tb.logp, tb.logp_old, A, tb.mask, *eps)
    lp, lo, a, m = tb.logp.tolist(), tb.logp_old.tolist(), A.tolist(), tb.mask.tolist()
    ref, ref_g = [], []
    for i in range(len(lp)):
        n = sum(m[i])
        s = math.exp(min(10.0, sum(lp[i][j] - lo[i][j] for j in range(len(lp[i])) if m[i][j]) / n))
        cs = min(max(s, 1 - eps[0]), 1 + eps[1])
        ref.append([max(-s * a[i][j], -cs * a[i][j]) if m[i][j] else 0.0 for j in range(len(lp[i]))])
        clipped = [(a[i][j] > 0 and s > 1 + eps[1]) or (a[i][j] < 0 and s < 1 - eps[0]) for j in range(len(lp[i]))]
        ref_g.append([-a[i][j] * s if m[i][j] and not clipped[j] else 0.0 for j in range(len(lp[i]))])
    assert close(out.loss, ref)
    _, g = grad_of(lambda x: gspo_loss(x, tb.logp_old, A, tb.mask, *eps).loss, tb.logp)
    assert close(g, ref_g)


@given(tb=token_batches(log_ratio_bound=1.5), est=st.sampled_from(["k1", "k2", "k3"]), st_=st.booleans(),
       iw=st.booleans())
def test_kl_loss_matches_loop(tb, est, st_, iw):
    fn = lambda x: kl_loss(x, tb.logp_ref, tb.mask, est, st_, tb.logp_old, iw)  # noqa: E731
    v, g = grad_of(fn, tb.logp)
    k = {"k1": lambda l: l, "k2": lambda l: 0.5 * l * l, "k3": lambda l: math.exp(-l) - 1 + l}[est]
    dk = {"k1": lambda l: 1.0, "k2": lambda l: l, "k3": lambda l: 1 - math.exp(-l)}[est]
    if st_:
        dk = lambda l: l  # noqa: E731  (the + suffix: gradient of k2)
    ref_v, ref_g = [], []
    for i in range(tb.logp.shape[0]):
        rv, rg = [], []
        for j in range(tb.logp.shape[1]):
            if not tb.mask[i, j]:
                rv.append(0.0)
                rg.append(0.0)
                continue
            l = (tb.logp[i, j] - tb.logp_ref[i, j]).item()
            rho = math.exp((tb.logp[i, j] - tb.logp_old[i, j]).item()) if iw else 1.0
            rv.append(rho * k(l))
            rg.append(rho * k(l) + rho * dk(l) if iw else dk(l))  # ∇(ρ k) = ρ k + ρ k'
        ref_v.append(rv)
        ref_g.append(rg)
    assert close(v, ref_v) and close(g, ref_g, rtol=1e-11)
    if iw and est == "k3" and not st_:
        # RPG §2.3: ∇(ρ·k3) = ρ·log(π/π_ref)·∇log π, the reverse-KL gradient for any π_old
        lr = tb.logp - tb.logp_ref
        assert close(g, torch.exp(tb.logp - tb.logp_old) * lr * tb.mask, rtol=1e-11)


CLIPS = [None, RPGClip(), RPGClip(0.1, 0.1, 3.0)]


@pytest.mark.parametrize("form", ["differentiable", "reinforce"])
@given(tb=token_batches(log_ratio_bound=1.5), beta=finite_floats(0.0, 0.5), clip=st.sampled_from(CLIPS),
       z=st.sampled_from([1.0, 0.7]), data=st.data())
def test_rpg_token_level_matches_loop(form, tb, beta, clip, z, data):
    A = data.draw(float_tensors(tb.logp.shape, -2.0, 2.0))
    x = tb.logp.clone().requires_grad_()
    for div in RPG_DIVERGENCES:
        if form == "reinforce" and clip is not None and any(
                alg2_knife_edge(a, b, c, div, beta, z) for a, b, c, mm in
                zip(tb.logp.flatten().tolist(), tb.logp_old.flatten().tolist(), A.flatten().tolist(),
                    tb.mask.flatten().tolist()) if mm):
            continue
        out = rpg_loss(x, tb.logp_old, A, tb.mask, div, form, beta, "token", clip, z)
        g = grad_or_zero(out.loss.sum(), x)
        xr = tb.logp.clone().requires_grad_()
        ref = torch.zeros_like(xr)
        for i in range(xr.shape[0]):
            for j in range(xr.shape[1]):
                if tb.mask[i, j]:
                    ref = ref.index_put((torch.tensor([i]), torch.tensor([j])),
                                        rpg_reference(xr[i, j], tb.logp_old[i, j].item(), A[i, j].item(), div, form,
                                                      beta, clip, z).reshape(1))
        gr = grad_or_zero(ref.sum(), xr)
        assert close(out.loss.detach(), ref.detach(), rtol=1e-11, atol=1e-12), div
        assert close(g, gr, rtol=1e-11, atol=1e-12), div


def test_rpg_alg1_forward_kls_keep_their_kl_gradient_per_sample():
    """Inside the clip bounds, Alg. 1's gradient is −Weight·∇log π per sample for fkl and ufkl: the KL term of Â is
    held fixed, so −w·Â does not lose it (a θ-dependent β/w would give −wA − β, whose gradient has no KL part).
    fkl, A = 0.5, log w = 0.1, β = 0.3: Weight = wA + β = 1.10517·0.5 + 0.3 = 0.852585."""
    lp_old = torch.tensor([[-1.0]], dtype=torch.float64)
    lp = (lp_old + 0.1).requires_grad_()
    A, m = torch.tensor([[0.5]], dtype=torch.float64), torch.ones(1, 1, dtype=torch.bool)
    wide = RPGClip(0.9, 10.0, 50.0)  # no bound is reached at w = e^0.1
    for div, weight in (("fkl", math.exp(0.1) * 0.5 + 0.3), ("ufkl", math.exp(0.1) * 0.5 - 0.3 * (math.exp(0.1) - 1))):
        out = rpg_loss(lp, lp_old, A, m, div, "differentiable", 0.3, "token", wide)
        (g,) = torch.autograd.grad(out.loss.sum(), lp)
        assert float(g) == pytest.approx(-weight, rel=1e-12), div


@pytest.mark.parametrize("form", ["differentiable", "reinforce"])
@given(tb=token_batches(log_ratio_bound=0.4, max_T=4), beta=finite_floats(0.0, 0.5), clip=st.sampled_from(CLIPS),
       div=st.sampled_from(RPG_DIVERGENCES), data=st.data())
def test_rpg_sequence_level_matches_loop(form, tb, beta, clip, div, data):
    A_seq = data.draw(float_tensors((tb.logp.shape[0],), -2.0, 2.0))
    A = A_seq[:, None].expand_as(tb.logp).contiguous()
    m = tb.mask.to(F64)
    if form == "reinforce" and clip is not None:
        lps, lpos = (tb.logp * m).sum(-1).tolist(), (tb.logp_old * m).sum(-1).tolist()
        assume(not any(alg2_knife_edge(a, b, c, div, beta, 1.0) for a, b, c in zip(lps, lpos, A_seq.tolist())))
    # one divergence per example (the per-sample identity test covers all four on every example)
    x = tb.logp.clone().requires_grad_()
    out = rpg_loss(x, tb.logp_old, A, tb.mask, div, form, beta, "sequence", clip)
    g = grad_or_zero(out.loss.sum(), x)
    xr = tb.logp.clone().requires_grad_()
    total = torch.zeros((), dtype=F64)
    seq_vals = []
    for i in range(xr.shape[0]):
        lp = (xr[i] * m[i]).sum()  # log π_θ(y_i)
        lp_old = (tb.logp_old[i] * m[i]).sum().item()
        ell = rpg_reference(lp, lp_old, A_seq[i].item(), div, form, beta, clip, 1.0)
        seq_vals.append(ell.item())
        total = total + ell
    gr = grad_or_zero(total, xr)
    # ℓ_i is spread as ℓ_i/|y_i| over the response's tokens: row sums give ℓ_i
    assert close(out.loss.detach().sum(-1), seq_vals, rtol=1e-10, atol=1e-12), div
    assert close(out.loss.detach(), torch.tensor(seq_vals, dtype=F64)[:, None] * m / m.sum(-1, keepdim=True),
                 rtol=1e-10, atol=1e-12), div
    assert close(g, gr, rtol=1e-10, atol=1e-12), div


def test_rpg_sequence_level_uses_first_valid_token_advantage():
    # the sequence advantage is read at the first valid token (left padding works too)
    logp = t([[-1.0, -0.5, -0.7]])
    m = torch.tensor([[False, True, True]])
    A = t([[9.0, 2.0, 5.0]])  # 9 is on padding, 2 is the first valid token
    out = rpg_loss(logp, logp, A, m, "fkl", "reinforce", 0.0, "sequence")
    # on-policy w = 1: Weight = A = 2; ℓ = −2·(−0.5 − 0.7) = 2.4 spread over 2 tokens → 1.2 each
    assert close(out.loss, [[0.0, 1.2, 1.2]])


@given(tb=token_batches(), data=st.data())
def test_aggregation_matches_loop(tb, data):
    loss = data.draw(float_tensors(tb.logp.shape, -5.0, 5.0))
    for mode in AGGREGATION_MODES:
        for horizon in ((None, 7) if mode == "seq-mean-token-sum-norm" else (None,)):
            ref = loop_aggregate(loss.tolist(), tb.mask.tolist(), mode, horizon)
            assert aggregate(loss, tb.mask, mode, horizon).item() == pytest.approx(ref, rel=1e-12, abs=1e-12)


@given(tb=token_batches(), data=st.data())
def test_aggregation_of_one_value_per_response_matches_loop(tb, data):
    # [B, 1] against the loop over its [B, T] broadcast (value), and its gradient against the broadcast's row sums
    B = tb.logp.shape[0]
    x = data.draw(float_tensors((B, 1), -5.0, 5.0))
    spread = x.expand(tb.mask.shape).contiguous()
    for mode in AGGREGATION_MODES:
        for horizon in ((None, 7) if mode == "seq-mean-token-sum-norm" else (None,)):
            ref = loop_aggregate(spread.tolist(), tb.mask.tolist(), mode, horizon)
            assert aggregate(x, tb.mask, mode, horizon).item() == pytest.approx(ref, rel=1e-12, abs=1e-12), mode
            xg, sg = x.clone().requires_grad_(), spread.clone().requires_grad_()
            (g,) = torch.autograd.grad(aggregate(xg, tb.mask, mode, horizon), xg)
            (gs,) = torch.autograd.grad(aggregate(sg, tb.mask, mode, horizon), sg)
            assert close(g, (gs * tb.mask).sum(-1, keepdim=True), rtol=1e-12, atol=1e-14), mode


# ---------------------------------------------------------------------------------------------------------------
# (3) properties


@pytest.mark.parametrize("level", ["token", "sequence"])
@given(tb=token_batches(log_ratio_bound=1.0), beta=finite_floats(0.0, 1.0), z=st.sampled_from([1.0, 0.5, 2.0]),
       data=st.data())
def test_rpg_per_sample_gradient_identity(level, tb, beta, z, data):
    # RPG arXiv 2505.17508, docs/theory.md: for every single sample, ∇ℓ_differentiable = −Weight·∇lp = ∇ℓ_REINFORCE (not only in
    # expectation). Each token (token level) or response (sequence level) only touches its own log-probs, so the
    # gradient of the summed loss w.r.t. logp holds every sample's gradient separately.
    if level == "sequence":
        A = data.draw(float_tensors((tb.logp.shape[0],), -2.0, 2.0))[:, None].expand_as(tb.logp).contiguous()
    else:
        A = data.draw(float_tensors(tb.logp.shape, -2.0, 2.0))
    m = tb.mask.to(F64)
    for div in RPG_DIVERGENCES:
        grads = []
        for form in ("differentiable", "reinforce"):
            _, g = grad_of(lambda x: rpg_loss(x, tb.logp_old, A, tb.mask, div, form, beta, level, None, z).loss,
                           tb.logp)
            grads.append(g)
        assert close(grads[0], grads[1], rtol=1e-10, atol=1e-12), div
        # and both equal −Weight·∂lp/∂logp_t = −Weight·m_t (token: lp = logp_t; sequence: lp = Σ_t m_t logp_t, the
        # loss ℓ_i spread as ℓ_i/|y_i| over the tokens, so the row sum is ℓ_i)
        if level == "token":
            log_w, a = tb.logp - tb.logp_old, A
        else:
            log_w, a = ((tb.logp - tb.logp_old) * m).sum(-1, keepdim=True), A[:, :1]
        w = torch.exp(log_w)
        weight = {"fkl": w * a + beta, "rkl": w * (a - beta * (log_w + 1)), "ufkl": z * (w * a - beta * (w - 1)),
                  "urkl": z * w * (a - beta * log_w)}[div]
        assert close(grads[0], -weight * m, rtol=1e-10, atol=1e-12), div


@given(tb=token_batches(on_policy=True), beta=finite_floats(0.0, 1.0), data=st.data())
def test_rpg_reinforce_clip_has_no_effect_at_w_equal_1(tb, beta, data):
    # Alg. 2 at w ≡ 1 (first update after sampling): every branch is active, the update is the exact regularized
    # gradient −Weight·∇lp (RPG arXiv 2505.17508, docs/theory.md)
    A = data.draw(float_tensors(tb.logp.shape, -2.0, 2.0))
    for div in RPG_DIVERGENCES:
        _, g0 = grad_of(lambda x: rpg_loss(x, tb.logp_old, A, tb.mask, div, "reinforce", beta).loss, tb.logp)
        _, g1 = grad_of(lambda x: rpg_loss(x, tb.logp_old, A, tb.mask, div, "reinforce", beta, clip=RPGClip()).loss,
                        tb.logp)
        assert close(g0, g1), div


@given(tb=token_batches(on_policy=True), dual=st.sampled_from([None, 3.0]), data=st.data())
def test_on_policy_ppo_and_gspo_gradients_equal_reinforce(tb, dual, data):
    # at ρ ≡ 1 nothing is clipped: ∇ PPO = −A∇log π = ∇ REINFORCE; GSPO-token with A constant per response: the
    # per-token gradient is −A·s_i = −A as well
    A = data.draw(float_tensors((tb.logp.shape[0],), -2.0, 2.0))[:, None].expand_as(tb.logp).contiguous()
    _, g_rf = grad_of(lambda x: reinforce_loss(x, A, tb.mask).loss, tb.logp)
    _, g_ppo = grad_of(lambda x: ppo_clip_loss(x, tb.logp_old, A, tb.mask, 0.2, 0.28, dual).loss, tb.logp)
    _, g_gspo = grad_of(lambda x: gspo_loss(x, tb.logp_old, A, tb.mask).loss, tb.logp)
    assert close(g_ppo, g_rf) and close(g_gspo, g_rf)


@given(data=st.data(), B=st.integers(1, 4), T=st.integers(1, 5), extra=st.integers(1, 3))
def test_aggregation_invariant_to_padding_columns(data, B, T, extra):
    # appending padding columns (mask False, arbitrary loss values) changes nothing, for every mode, except
    # seq-mean-token-sum-norm with horizon=None, whose constant C is the padded width T: its value is rescaled by
    # T/(T + extra) (documented in aggregate(): "C is a constant only if T is"; verl's default loss_scale_factor)
    loss = data.draw(float_tensors((B, T), -5.0, 5.0))
    m = data.draw(masks(B, T))
    pad_vals = data.draw(float_tensors((B, extra), -100.0, 100.0))
    loss2 = torch.cat([loss, pad_vals], dim=1)
    m2 = torch.cat([m, torch.zeros(B, extra, dtype=torch.bool)], dim=1)
    for mode in AGGREGATION_MODES:
        a, b = aggregate(loss, m, mode, horizon=9), aggregate(loss2, m2, mode, horizon=9)
        assert b.item() == pytest.approx(a.item(), rel=1e-12, abs=1e-12), mode
    a = aggregate(loss, m, "seq-mean-token-sum-norm")
    b = aggregate(loss2, m2, "seq-mean-token-sum-norm")
    assert b.item() == pytest.approx(a.item() * T / (T + extra), rel=1e-12, abs=1e-12)


@given(tb=token_batches(log_ratio_bound=1.0), data=st.data())
def test_float32_paths(tb, data):
    # every loss runs in float32, returns float32 and matches float64 within rtol 1e-5 / atol 1e-5
    A = data.draw(float_tensors(tb.logp.shape, -2.0, 2.0))
    f = lambda x: x.float()  # noqa: E731
    calls = [
        lambda lp, lo, lr, a: reinforce_loss(lp, a, tb.mask).loss,
        lambda lp, lo, lr, a: ppo_clip_loss(lp, lo, a, tb.mask, 0.2, 0.28, 3.0).loss,
        lambda lp, lo, lr, a: gspo_loss(lp, lo, a, tb.mask, 0.2, 0.2).loss,
        lambda lp, lo, lr, a: kl_loss(lp, lr, tb.mask, "k3", logp_old=lo, importance_weight=True),
    ] + [
        (lambda d, fm, c: lambda lp, lo, lr, a: rpg_loss(lp, lo, a, tb.mask, d, fm, 0.1, "token", c).loss)(d, fm, c)
        for d in RPG_DIVERGENCES for fm in ("differentiable", "reinforce") for c in (None, RPGClip())
    ]
    for call in calls:
        ref = call(tb.logp, tb.logp_old, tb.logp_ref, A)
        got = call(f(tb.logp), f(tb.logp_old), f(tb.logp_ref), f(A))
        assert got.dtype == torch.float32
        assert close(got.double(), ref, rtol=1e-5, atol=1e-5)
    for mode in AGGREGATION_MODES:
        agg = aggregate(got, tb.mask, mode)
        assert agg.dtype == torch.float32
        assert agg.item() == pytest.approx(aggregate(ref, tb.mask, mode).item(), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_diagnostics_have_the_input_dtype(dtype):
    # PolicyLossOutput diagnostics are 0-dim tensors of the computation's dtype. losses._frac picks float64 only if
    # `mask.dtype == torch.float64`, which never holds for a bool mask, so float64 runs get float32 clip fractions.
    logp_old = t([[-1.0, -1.0, -1.0]], dtype)
    logp = logp_old + torch.log(t([[1.5, 0.5, 1.0]], dtype))
    A = t([[1.0, -1.0, 1.0]], dtype)
    m = ones_mask(1, 3)
    outs = [ppo_clip_loss(logp, logp_old, A, m, dual_clip=3.0), gspo_loss(logp, logp_old, A, m),
            reinforce_loss(logp, A, m, logp_old=logp_old),
            rpg_loss(logp, logp_old, A, m, "urkl", "reinforce", 0.1, clip=RPGClip())]
    for out in outs:
        for name, value in zip(PolicyLossOutput._fields, out):
            assert value.dtype == dtype, (name, value.dtype)


# ---------------------------------------------------------------------------------------------------------------
# input validation


def _std_inputs(dtype=F64):
    lp = t([[-1.0, -2.0], [-0.5, -0.3]], dtype)
    return lp, lp - 0.1, t([[1.0, 1.0], [-1.0, -1.0]], dtype), ones_mask(2, 2)


POLICY_CALLS = {
    "reinforce": lambda lp, lo, a, m: reinforce_loss(lp, a, m, logp_old=lo),
    "ppo_clip": lambda lp, lo, a, m: ppo_clip_loss(lp, lo, a, m),
    "gspo": lambda lp, lo, a, m: gspo_loss(lp, lo, a, m),
    "rpg": lambda lp, lo, a, m: rpg_loss(lp, lo, a, m, "fkl", "reinforce", 0.1),
}


@pytest.mark.parametrize("name", list(POLICY_CALLS))
def test_policy_loss_shape_mask_and_finiteness_errors(name):
    call = POLICY_CALLS[name]
    lp, lo, a, m = _std_inputs()
    with pytest.raises(ValueError, match=r"advantages has shape \(2, 1\), expected \(2, 2\)"):
        call(lp, lo, a[:, :1], m)
    with pytest.raises(ValueError, match="selects no token"):
        call(lp, lo, a, torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool tensor"):
        call(lp, lo, a, m.float())
    with pytest.raises(ValueError, match="logp contains non-finite"):
        call(lp.clone().fill_(float("nan")), lo, a, m)
    with pytest.raises(ValueError, match="advantages contains non-finite"):
        call(lp, lo, a.clone().fill_(float("inf")), m)
    with pytest.raises(ValueError, match="logp must have 2 dimensions"):
        call(lp[0], lo[0], a[0], m[0])
    if name != "reinforce":
        with pytest.raises(ValueError, match="logp_old has shape"):
            call(lp, lo[:1], a, m)
        with pytest.raises(ValueError, match="share one dtype"):
            call(lp, lo.float(), a, m)


@pytest.mark.parametrize("name", list(POLICY_CALLS))
def test_policy_loss_mixed_advantage_dtype_raises(name):
    # api.md: all inputs one dtype; nothing broadcasts/promotes silently. losses._check_adv checks only the
    # shape of `advantages`, so float32 advantages with float64 log-probs return a silently promoted float64 loss
    # (and float64 advantages turn a float32 run into float64).
    lp, lo, a, m = _std_inputs()
    with pytest.raises(ValueError, match="dtype"):
        POLICY_CALLS[name](lp, lo, a.float(), m)
    lp32, lo32, a32, _ = _std_inputs(torch.float32)
    with pytest.raises(ValueError, match="dtype"):
        POLICY_CALLS[name](lp32, lo32, a32.double(), m)


def test_logp_old_dtype_is_checked_where_it_is_optional():
    # reinforce_loss(logp_old=...) and kl_loss(logp_old=..., importance_weight=True) check logp_old's shape but not
    # its dtype: a float32 logp_old with float64 logp is silently promoted instead of raising.
    lp, lo, a, m = _std_inputs()
    with pytest.raises(ValueError, match="dtype"):
        reinforce_loss(lp, a, m, logp_old=lo.float())
    with pytest.raises(ValueError, match="dtype"):
        kl_loss(lp, lo, m, "k3", logp_old=lo.float(), importance_weight=True)


def test_clip_parameter_errors():
    lp, lo, a, m = _std_inputs()
    for lo_, hi_, bad in ((0.0, 0.2, "clip_low"), (1.0, 0.2, "clip_low"), (0.2, 0.0, "clip_high"),
                          (-0.1, 0.2, "clip_low")):
        with pytest.raises(ValueError, match=rf"{bad} must be in \("):
            ppo_clip_loss(lp, lo, a, m, lo_, hi_)
    for c in (1.0, 0.5):
        with pytest.raises(ValueError, match=r"dual_clip must be in \(1, inf\)"):
            ppo_clip_loss(lp, lo, a, m, dual_clip=c)
    for kw in (dict(eps_low=0.0), dict(eps_low=1.0), dict(eps_high=0.0), dict(c=1.0)):
        with pytest.raises(ValueError, match=f"RPGClip.{next(iter(kw))} must be in"):
            RPGClip(**kw)


def test_rpg_and_gspo_errors():
    lp, lo, a, m = _std_inputs()
    with pytest.raises(ValueError, match="divergence='kl'"):
        rpg_loss(lp, lo, a, m, "kl", "reinforce", 0.1)
    with pytest.raises(ValueError, match="form='clipped'"):
        rpg_loss(lp, lo, a, m, "fkl", "clipped", 0.1)
    with pytest.raises(ValueError, match="level='batch'"):
        rpg_loss(lp, lo, a, m, "fkl", "reinforce", 0.1, level="batch")
    with pytest.raises(ValueError, match=r"beta must be in \[0, inf\), got -0.1"):
        rpg_loss(lp, lo, a, m, "fkl", "reinforce", -0.1)
    empty_row = torch.tensor([[True, True], [False, False]])
    with pytest.raises(ValueError, match="rows with no token"):
        rpg_loss(lp, lo, a, empty_row, "fkl", "reinforce", 0.1, level="sequence")
    with pytest.raises(ValueError, match="rows with no token"):
        gspo_loss(lp, lo, a, empty_row)


def test_kl_loss_errors():
    lp, lo, _, m = _std_inputs()
    with pytest.raises(ValueError, match="estimator='k5'"):
        kl_loss(lp, lo, m, "k5")
    with pytest.raises(ValueError, match="needs logp_old"):
        kl_loss(lp, lo, m, "k3", importance_weight=True)
    with pytest.raises(ValueError, match="logp_old has shape"):
        kl_loss(lp, lo, m, "k3", logp_old=lo[:, :1], importance_weight=True)
    with pytest.raises(ValueError, match="logp_ref has shape"):
        kl_loss(lp, lo[:1], m, "k3")


def test_aggregate_errors():
    loss, _, _, m = _std_inputs()
    with pytest.raises(ValueError, match="aggregation='seq-mean'"):
        aggregate(loss, m, "seq-mean")
    for h in (0, -3, 2.5):
        with pytest.raises(ValueError, match="horizon must be"):
            aggregate(loss, m, "seq-mean-token-sum-norm", horizon=h)
    with pytest.raises(ValueError, match="loss must have 2 dimensions"):
        aggregate(loss[0], m[0], "token-mean")
    with pytest.raises(ValueError, match="selects no token"):
        aggregate(loss, torch.zeros(2, 2, dtype=torch.bool), "token-mean")
    with pytest.raises(ValueError, match="non-finite"):
        aggregate(loss.clone().fill_(float("nan")), m, "token-mean")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dual_clip", [None, 1.5, 3.0])
def test_ppo_clip_equals_the_textbook_max_min_form_bit_for_bit(dtype, dual_clip):
    # reference: l = max(−Aρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high)), then min(l, −cA) where A < 0, by torch.maximum /
    # torch.minimum through autograd (ties split 1/2 + 1/2). rlkl selects with torch.where and detaches the clipped
    # branch (its clamp is active wherever it is selected): the same values and, ties included, the same gradients.
    gen = torch.Generator().manual_seed(7)
    B, T = 29, 41
    lo = -torch.rand(B, T, generator=gen, dtype=dtype) * 3
    lp = (lo + torch.randn(B, T, generator=gen, dtype=dtype) * 0.4).clamp(max=0)
    lp[0, :5] = lo[0, :5]  # ρ = 1 exactly: both branches tie
    A = torch.randn(B, T, generator=gen, dtype=dtype) * 2
    A[A.abs() < 0.2] = 0.0
    w = torch.rand(B, T, generator=gen, dtype=dtype)  # a per-token aggregation weight
    mask = torch.ones(B, T, dtype=torch.bool)
    x = lp.clone().requires_grad_(True)
    out = ppo_clip_loss(x, lo, A, mask, 0.2, 0.28, dual_clip)
    (out.loss * w).sum().backward()
    y = lp.clone().requires_grad_(True)
    ratio = torch.exp(torch.clamp(y - lo, -20.0, 20.0))
    ref = torch.maximum(-A * ratio, -A * torch.clamp(ratio, 1 - 0.2, 1 + 0.28))
    if dual_clip is not None:
        ref = torch.where(A < 0, torch.minimum(ref, -A * dual_clip), ref)
    (ref * w).sum().backward()
    assert torch.equal(out.loss, ref.detach())
    assert torch.equal(x.grad, y.grad)
