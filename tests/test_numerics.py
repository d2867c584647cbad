"""Reproducers of the "silent wrong numbers" found by fuzzing the public API (defects 1–7), one test group each.

Every expected value is either worked out by hand in the comments or computed from the textbook formula in
mpmath at 50 digits (an independent reference: it never calls rlkl). Each of these tests failed on the code
before the fix (see the commit that adds this file).
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

from rlkl.advantages import batch_standardized, frpo_advantages, frpo_regularizer, future_return, group_standardized
from rlkl.divergences import F_DIVERGENCE_NAMES, exact_kl, get_f_divergence, k3, kl_estimate, unnormalized_kl
from rlkl.losses import RPG_DIVERGENCES, RPGClip, aggregate, gspo_loss, kl_loss, masked_mean, ppo_clip_loss, rpg_loss
from rlkl.utility import finite_group_weight

F32, F64 = torch.float32, torch.float64
mpmath.mp.dps = 50
ALL_F = [n for n in F_DIVERGENCE_NAMES if n != "alpha"] + ["alpha=0.5", "alpha=2", "alpha=-1"]


def t(x, dtype=F64) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


def ones_mask(*shape) -> torch.Tensor:
    return torch.ones(*shape, dtype=torch.bool)


# ---------------------------------------------------------------------------------------------------------------
# defect 1: the strictly-future sum must not be "inclusive minus own value"


def test_frpo_k3_future_terms_survive_a_dominant_own_term():
    # reg_0 = f'(u_0) − f'(1) + Σ_{j>0} k3(δ_j) = −50 + 3·k3(−1) = −50 + 3(e − 2) = −47.845154514622862
    lr = t([[-50.0, -1.0, -1.0, -1.0]])
    reg = frpo_regularizer(lr, ones_mask(1, 4), "reverse_kl_k3")
    assert reg[0, 0].item() == pytest.approx(-50.0 + 3.0 * (math.e - 2.0), rel=1e-14)
    # the later tokens: −1 + 2(e − 2), −1 + (e − 2), −1
    assert reg[0, 1:].tolist() == pytest.approx([-1 + 2 * (math.e - 2), -1 + (math.e - 2), -1.0], rel=1e-14)
    # float32: δ = −18 already swamped the future terms (k3(−18) = e^18 − 19 ≈ 6.6e7, ulp 8 > 3(e − 2) = 2.15)
    reg32 = frpo_regularizer(t([[-18.0, -1.0, -1.0, -1.0]], F32), ones_mask(1, 4), "reverse_kl_k3")
    assert reg32[0, 0].item() == pytest.approx(-18.0 + 3.0 * (math.e - 2.0), rel=1e-6)


def test_frpo_k3_advantage_by_hand():
    # G = 2, rewards (1, 0), population std: A_out = (1 − ½)/(½ + ε) = 1/(1 + 2ε); β = 0.01:
    # A_{0,0} = A_out − β·reg_0 = 1/(1 + 2e-6) + 0.01·47.845154514622862 = 1.478449547...
    logp_ref = t([[-0.1, -0.2, -0.3, -0.4], [-0.5, -0.5, -0.5, -0.5]])
    logp = logp_ref + t([[-50.0, -1.0, -1.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    adv = frpo_advantages(t([1.0, 0.0]), logp, logp_ref, ones_mask(2, 4), 2, 0.01, "reverse_kl_k3")
    expected = 1.0 / (1.0 + 2e-6) + 0.01 * (50.0 - 3.0 * (math.e - 2.0))
    assert adv[0, 0].item() == pytest.approx(expected, rel=1e-13)


def test_future_return_strict_is_a_direct_sum_with_holes():
    # v = (1e20, 1, 2, 3) with a hole at j = 2: Σ_{j>0} m_j v_j = 1 + 3 = 4, Σ_{j>1} = 3, Σ_{j>3} = 0
    v = t([[1e20, 1.0, 2.0, 3.0]])
    m = torch.tensor([[True, True, False, True]])
    assert future_return(v, m, include_current=False).tolist() == [[4.0, 3.0, 0.0, 0.0]]
    assert future_return(v, m, include_current=True).tolist() == [[1e20 + 4.0, 4.0, 0.0, 3.0]]


# ---------------------------------------------------------------------------------------------------------------
# defect 2: exact divergences with masked (−inf) and very negative logits


def mp_divergence(name: str, p: list, q: list):
    """Σ_x q f(p/q) in mpmath from the textbook generator, with 0 f(0/0) = 0, q f(0) = q·lim_{u→0} f."""
    a = {"alpha=0.5": 0.5, "alpha=2": 2.0, "alpha=-1": -1.0}.get(name)
    f = {
        "reverse_kl": lambda u: u * mpmath.log(u), "forward_kl": lambda u: -mpmath.log(u),
        "reverse_kl_k3": lambda u: u * mpmath.log(u) - u + 1, "forward_kl_k3": lambda u: -mpmath.log(u) + u - 1,
        "pearson": lambda u: (u - 1) ** 2, "neyman": lambda u: (u - 1) ** 2 / u,
        "hellinger": lambda u: (mpmath.sqrt(u) - 1) ** 2,
        "jensen_shannon": lambda u: (u * mpmath.log(u) - (u + 1) * mpmath.log((u + 1) / 2)) / 2,
        "total_variation": lambda u: abs(u - 1) / 2,
    }.get(name) or (lambda u: (u ** a - a * u - (1 - a)) / (a * (a - 1)))
    return mpmath.fsum(qi * f(pi / qi) for pi, qi in zip(p, q))


def mp_softmax(logits: list) -> list:
    m = [mpmath.exp(mpmath.mpf(x)) for x in logits]
    return [x / mpmath.fsum(m) for x in m]


@pytest.mark.parametrize("name", ALL_F)
def test_exact_f_divergence_with_very_negative_logits(name):
    div = get_f_divergence(name)
    P, Q = [0.0, 0.0], [0.0, -1e4]  # Q = (1, e^-1e4): KL(P‖Q) = 5000 − log 2; TV = ½; Pearson ≈ e^1e4/4 = inf
    exact = mp_divergence(name, mp_softmax(P), mp_softmax(Q))
    got = div.exact(t(P), t(Q)).item()
    if exact > torch.finfo(F64).max:
        assert got == math.inf, name
    else:
        assert got == pytest.approx(float(exact), rel=1e-12), name
    # float32, Q = (0, −90): Q_2 = e^-90 ≈ 8e-40 is subnormal; every value is finite (Pearson: 0.25·e^90 ≈ 3.05e38)
    exact32 = mp_divergence(name, mp_softmax(P), mp_softmax([0.0, -90.0]))
    got32 = div.exact(t(P, F32), t([0.0, -90.0], F32))
    assert got32.dtype == F32 and math.isfinite(got32.item()), name
    assert got32.item() == pytest.approx(float(exact32), rel=1e-6), name
    if name == "total_variation":
        assert got == 0.5 and got32.item() == 0.5


# P = (1, 0), Q = (½, ½): D_f = ½ f(2) + ½ f(0) (the masked category of P contributes Q·f(0))
MASKED_P = {
    "reverse_kl": math.log(2.0),                        # ½·2 log 2 + ½·0
    "forward_kl": math.inf,                             # f(0) = −log 0 = inf
    "reverse_kl_k3": math.log(2.0),                     # ½(2 log 2 − 1) + ½·1
    "forward_kl_k3": math.inf,
    "pearson": 1.0,                                     # ½·1 + ½·1
    "neyman": math.inf,                                 # f(0) = 1/0
    "hellinger": 2.0 - math.sqrt(2.0),                  # ½(√2 − 1)² + ½
    "jensen_shannon": 0.75 * math.log(4.0 / 3.0),       # ¼(2 log 2 − 3 log 1.5) + ¼ log 2
    "total_variation": 0.5,                             # ½·½ + ½·½
    "alpha=0.5": 0.5 * (math.sqrt(2.0) - 1.5) / -0.25 + 1.0,  # ½ f(2) + ½·(1/α)
    "alpha=2": 0.5 * 0.5 + 0.5 * 0.5,                   # f = (u − 1)²/2: ½·½ + ½·½
    "alpha=-1": math.inf,                               # f = (u − 1)²/(2u): f(0) = inf
}


@pytest.mark.parametrize("name", ALL_F)
def test_exact_f_divergence_with_masked_logits(name):
    div = get_f_divergence(name)
    p = t([0.0, -math.inf]).requires_grad_()
    q = t([0.0, 0.0]).requires_grad_()
    d = div.exact(p, q)
    assert d.item() == pytest.approx(MASKED_P[name], rel=1e-13), name
    if math.isfinite(MASKED_P[name]):  # finite value: finite gradient in every logit
        gp, gq = torch.autograd.grad(d, (p, q))
        assert bool(torch.isfinite(gp).all() and torch.isfinite(gq).all()), name
    # both masked in the same category: that category contributes nothing; D(P‖P) = 0 with masks
    both = div.exact(t([0.0, -math.inf, 1.0]), t([0.5, -math.inf, 1.0]))
    assert both.item() == pytest.approx(float(mp_divergence(name, mp_softmax([0.0, 1.0]), mp_softmax([0.5, 1.0]))),
                                        rel=1e-12), name
    assert div.exact(t([0.0, -math.inf]), t([0.0, -math.inf])).item() == 0.0


def test_exact_kl_and_unnormalized_kl_with_masked_entries():
    # KL((1, 0)‖(½, ½)) = log 2; KL((½, ½)‖(1, 0)) = inf; masked in both: 0 term
    p = t([0.0, -math.inf]).requires_grad_()
    d = exact_kl(p, t([0.0, 0.0]))
    assert d.item() == pytest.approx(math.log(2.0), rel=1e-15)
    (g,) = torch.autograd.grad(d, p)
    assert bool(torch.isfinite(g).all())
    assert exact_kl(t([0.0, 0.0]), t([0.0, -math.inf])).item() == math.inf
    assert exact_kl(t([0.0, 0.0]), t([0.0, -1e4])).item() == pytest.approx(5000.0 - math.log(2.0), rel=1e-14)
    # UKL: p = (e^0, 0), q = (e^-1, e^2): 1·(0 + 1) + (e^-1 − 1) + (e^2 − 0) = e^-1 + e^2 (p = 0 contributes q)
    assert unnormalized_kl(t([0.0, -math.inf]), t([-1.0, 2.0])).item() == pytest.approx(math.exp(-1) + math.exp(2),
                                                                                          rel=1e-14)
    # p ≪ q in float32: 1·k3-like form stays finite: UKL(e^-100 ‖ 1) = e^-100·(−100) + 1 − e^-100 ≈ 1
    assert unnormalized_kl(t([-100.0], F32), t([0.0], F32)).item() == pytest.approx(1.0, rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# defect 3: sequence-level RPG with a long or far off-policy response


@pytest.mark.parametrize("dtype,T,delta", [(F32, 100, 1.0), (F64, 16, 50.0)])
def test_rpg_sequence_level_guard_keeps_valid_inputs_finite(dtype, T, delta):
    B = 2
    logp_old = torch.full((B, T), -60.0 if delta == 50.0 else -1.5, dtype=dtype)
    adv = torch.tensor([[1.0], [-1.0]], dtype=dtype).expand(B, T).contiguous()
    for div in RPG_DIVERGENCES:
        for form in ("differentiable", "reinforce"):
            for clip in (None, RPGClip()):
                logp = (logp_old + delta).clamp(max=-0.01).requires_grad_()  # Σ_t log ρ_t = T·δ' >> 20
                out = rpg_loss(logp, logp_old, adv, ones_mask(B, T), div, form, 0.1, level="sequence", clip=clip)
                (g,) = torch.autograd.grad(out.loss.sum(), logp)
                assert bool(torch.isfinite(out.loss).all()), (div, form, clip)
                assert bool(torch.isfinite(g).all()), (div, form, clip)
                assert math.isfinite(out.ratio_max.item()) and out.ratio_max.item() == pytest.approx(math.exp(20.0),
                                                                                                     rel=1e-6)


def test_rpg_sequence_level_guard_changes_nothing_inside_the_clamp():
    # |Σ_t log ρ_t| = 3·0.4 = 1.2 < 20: the urkl REINFORCE weight is w(A − β log w), w = e^{1.2}, A = 1, β = 0.1:
    # loss per token = −Weight·lp/|y| = −e^{1.2}(1 − 0.12)·(3·(−0.5))/3 = 0.5·0.88·e^{1.2}
    logp_old = t([[-0.9, -0.9, -0.9]])
    logp = logp_old + 0.4
    out = rpg_loss(logp, logp_old, torch.ones(1, 3, dtype=F64), ones_mask(1, 3), "urkl", "reinforce", 0.1,
                   level="sequence")
    assert out.loss[0].tolist() == pytest.approx([0.5 * 0.88 * math.exp(1.2)] * 3, rel=1e-14)


# ---------------------------------------------------------------------------------------------------------------
# defect 4: aggregation of finite per-token losses must not overflow


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_aggregate_does_not_overflow_float32(mode):
    # 8 tokens of 3e38 (float32 max 3.4e38): Σ = 2.4e39 overflows, every mean is 3e38. For the sum modes the
    # tokens sit in 8 one-token sequences (each sequence sum is 3e38 too); horizon C = 1 for the norm mode.
    loss = torch.full((8, 1), 3e38, dtype=F32, requires_grad=True)
    out = aggregate(loss, ones_mask(8, 1), mode, horizon=1 if mode.endswith("norm") else None)
    assert out.item() == pytest.approx(3e38, rel=1e-6)
    (g,) = torch.autograd.grad(out, loss)
    assert bool(torch.isfinite(g).all())
    if mode in ("token-mean", "seq-mean-token-mean"):  # one sequence of 8 tokens
        row = torch.full((1, 8), 3e38, dtype=F32)
        assert aggregate(row, ones_mask(1, 8), mode).item() == pytest.approx(3e38, rel=1e-6)


def test_kl_loss_of_large_log_ratio_aggregates_finitely():
    # the registered frpo/grpo style: k3 at δ = −80 in float32 is e^80 − 81 ≈ 5.5e34 per token; 8 tokens
    # token-mean = 5.5e34 (the old (Σ m l)/Σ m was fine here, the point is that the guard-free path stays finite)
    logp = torch.full((1, 8), -80.5, dtype=F32, requires_grad=True)
    per_token = kl_loss(logp, torch.full((1, 8), -0.5, dtype=F32), ones_mask(1, 8), "k3")
    out = aggregate(per_token, ones_mask(1, 8), "token-mean")
    assert out.item() == pytest.approx(math.exp(80.0) - 81.0, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# defect 5: float32 precision near δ = 0 (against mpmath)


def mp_rel_error(got: float, exact) -> float:
    return float(abs((mpmath.mpf(got) - exact) / exact))


U32 = 2.0 ** -24


@pytest.mark.parametrize("delta", [1e-6, -1e-6, 1e-4, 1.1e-3, -1.1e-3, 1e-2, 0.3, -0.3, 0.6])
def test_float32_precision_near_zero(delta):
    x = t([delta], F32)
    d = mpmath.mpf(float(x))  # the float32 input, exactly
    u = mpmath.exp(d)
    cases = {
        "k3": (k3(x), mpmath.exp(-d) - 1 + d),
        "jensen_shannon": (get_f_divergence("jensen_shannon").sampled_estimate(x),
                           (u * mpmath.log(u) - (u + 1) * mpmath.log((u + 1) / 2)) / 2 / u),
        "alpha=0.5": (get_f_divergence("alpha=0.5").sampled_estimate(x), (mpmath.sqrt(u) - 0.5 * u - 0.5) / -0.25 / u),
        "forward_kl_k3": (get_f_divergence("forward_kl_k3").sampled_estimate(x), (-d + u - 1) / u),
    }
    for name, (got, exact) in cases.items():
        assert got.item() >= 0, name  # every one of them is >= 0 (the old alpha=0.5 went negative)
        assert mp_rel_error(got.item(), exact) <= 8 * U32, (name, got.item(), float(exact))


def test_neyman_is_finite_on_its_documented_float32_range():
    # (1 − 1/u)² ≈ e^{−2δ} fits float32 (max e^88.72) for δ >= −44.36 (docs/precision.md); the old form overflowed
    # from δ < −44 and the module promised float32 safety to ~80 for it
    div = get_f_divergence("neyman")
    x = torch.linspace(-44.3, 80.0, 500, dtype=F32)
    assert bool(torch.isfinite(div.sampled_estimate(x)).all())
    import rlkl.divergences as mod
    assert "l >= −44.3" in mod.__doc__


# ---------------------------------------------------------------------------------------------------------------
# defect 6: ε = 0 standardization and gradients at the edges


def test_eps_zero_standardization_all_equal_group_has_zero_gradient():
    r = t([1.0, 1.0, 0.3, 0.7]).requires_grad_()
    a = group_standardized(r, 2, eps=0.0, std="population")
    assert a.tolist()[:2] == [0.0, 0.0]
    (g,) = torch.autograd.grad(a.sum(), r)
    assert bool(torch.isfinite(g).all())
    b = batch_standardized(t([2.0, 2.0, 2.0]).requires_grad_(), eps=0.0)
    assert b.tolist() == [0.0, 0.0, 0.0]


def test_eps_zero_standardization_of_subnormal_scale_rewards():
    # (5.9e-204, 0): centred ±2.95e-204, population std 2.95e-204 → ±1 (the squares underflowed to 0 before)
    assert group_standardized(t([5.9e-204, 0.0]), 2, 0.0, "population").tolist() == [1.0, -1.0]
    assert group_standardized(t([5.9e-204, 0.0]), 2, 0.0).tolist() == pytest.approx([2 ** -0.5, -(2 ** -0.5)],
                                                                                   rel=1e-15)
    # huge rewards: (1e308, −1e308) would overflow the mean and the variance
    assert group_standardized(t([1e308, -1e308]), 2, 0.0, "population").tolist() == [1.0, -1.0]
    # two adjacent floats: the exact standardization is ±1 (the first mean rounds to one of them)
    x = 1.0 + 2.0 ** -52
    assert group_standardized(t([1.0, x]), 2, 0.0, "population").tolist() == [-1.0, 1.0]


def test_finite_group_weight_gradient_at_the_edges():
    # G = 4, population std, ε = 0: w_4(p) = √3 + (3 − 2√3) p(1 − p) → w_4'(0) = 3 − 2√3, w_4'(1) = −(3 − 2√3)
    c = 3 - 2 * math.sqrt(3)
    for p0, slope in ((0.0, c), (1.0, -c), (0.25, 0.5 * c)):  # w_4'(p) = c(1 − 2p)
        p = t(p0).requires_grad_()
        (g,) = torch.autograd.grad(finite_group_weight(p, 4), p)
        assert g.item() == pytest.approx(slope, rel=1e-12, abs=1e-14), p0


def test_k3_gradient_at_huge_log_ratio_float32():
    # ∇k3 = 1 − e^{−δ} = 1 at δ = 7e12 (the series branch used to leak inf − inf = nan into the gradient)
    x = t([7e12, 1e30, -80.0], F32).requires_grad_()
    (g,) = torch.autograd.grad(k3(x).sum(), x)
    assert g[:2].tolist() == [1.0, 1.0]
    assert g[2].item() == pytest.approx(1.0 - math.exp(80.0), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# defect 7: one scalar validator; dtype and meta tensors


def _inputs(dtype=F64):
    lp = t([[-0.5, -0.7], [-0.2, -0.9]], dtype)
    return lp, lp - 0.1, t([[1.0, 1.0], [-1.0, -1.0]], dtype), ones_mask(2, 2)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.1, "0.1", True, None])
def test_beta_is_validated(bad):
    lp, lo, a, m = _inputs()
    with pytest.raises(ValueError, match="beta"):
        frpo_advantages(t([1.0, 0.0]), lp, lo, m, 2, bad)
    with pytest.raises(ValueError, match="beta"):
        rpg_loss(lp, lo, a, m, "urkl", "reinforce", bad)


def test_eps_dual_clip_alpha_and_clip_bounds_are_validated():
    lp, lo, a, m = _inputs()
    for bad in (math.nan, -1e-6, math.inf):
        with pytest.raises(ValueError, match="eps"):
            group_standardized(t([1.0, 0.0]), 2, eps=bad)
    for bad in (math.nan, 1.0, 0.5, math.inf):
        with pytest.raises(ValueError, match="dual_clip"):
            ppo_clip_loss(lp, lo, a, m, dual_clip=bad)
    for name in ("alpha=nan", "alpha=inf", "alpha=", "alpha=abc"):
        with pytest.raises(ValueError, match="alpha"):
            get_f_divergence(name)
    with pytest.raises(ValueError, match="alpha"):
        get_f_divergence("alpha", alpha=math.nan)
    with pytest.raises(ValueError, match=r"clip_low must be in \(0, 1\), got 5"):
        gspo_loss(lp, lo, a, m, clip_low=5, clip_high=-3)
    with pytest.raises(ValueError, match="clip_high"):
        gspo_loss(lp, lo, a, m, clip_low=0.2, clip_high=-3)
    with pytest.raises(ValueError, match="straight_through_grad"):
        kl_estimate(lp, "k3", straight_through_grad=1)


def test_masked_mean_of_empty_mask_is_defined_as_zero():
    x = t([[1.0, 2.0]])
    assert masked_mean(x, torch.zeros(1, 2, dtype=torch.bool)).item() == 0.0
    assert masked_mean(x, torch.tensor([[True, False]])).item() == 1.0
    with pytest.raises(ValueError, match="mask has shape"):
        masked_mean(x, torch.ones(2, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_floats_are_refused_with_a_cast_hint(dtype):
    with pytest.raises(ValueError, match=r"log_ratio has dtype .*cast to float32"):
        k3(t([-12.0], dtype))
    lp, lo, a, m = _inputs(dtype)
    with pytest.raises(ValueError, match="logp has dtype"):
        ppo_clip_loss(lp, lo, a, m)


def test_meta_tensors_are_refused_before_any_host_sync():
    meta = torch.empty(2, 3, device="meta")
    with pytest.raises(ValueError, match="log_ratio is a meta tensor"):
        k3(meta)
    with pytest.raises(ValueError, match="mask is a meta tensor"):
        aggregate(torch.zeros(2, 3), torch.empty(2, 3, dtype=torch.bool, device="meta"), "token-mean")
    with pytest.raises(ValueError, match="p is a meta tensor"):
        finite_group_weight(torch.empty(3, device="meta"), 3)
