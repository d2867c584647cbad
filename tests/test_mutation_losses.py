"""Checks added for mutants of rlkl/losses.py that survived the core tests (docs/mutation.md, "mutmut:
rlkl/losses.py", lists each survivor and its fate).

Each test states the documented behaviour it pins, with the arithmetic in comments; none calls the function under
test to build its own expected value. Ratios are built as w = exp(log x) from logp = log x, logp_old = 0, which is
exactly x in float64 for x = 1/4, 1/2, 2, 4 (the ties at a clip bound use those).
"""

from __future__ import annotations

import math

import pytest
import torch

from rlkl.components import KLLoss
from rlkl.losses import (PolicyLossOutput, RPGClip, cispo_loss, gspo_loss, kl_loss, ppo_clip_loss, reinforce_loss,
                         rpg_differentiable_surrogate, rpg_loss, rpg_weight)
from rlkl.options import Estimator

L2 = math.log(2.0)


def t(x, **kw):
    return torch.tensor(x, dtype=torch.float64, **kw)


def row(x, **kw):
    """[1, n] float64."""
    return t([x], **kw)


def diag(out):
    return [out.clip_fraction_low.item(), out.clip_fraction_high.item(), out.dual_clip_fraction.item()]


def ratios_and_advantages(pairs):
    """(logp = log w as a [1, n] leaf, logp_old = 0, A, mask) for tokens given as (A, w)."""
    logp = row([math.log(w) for _, w in pairs], requires_grad=True)
    return logp, torch.zeros_like(logp), row([a for a, _ in pairs]), torch.ones(1, len(pairs), dtype=torch.bool)


# --- PolicyLossOutput ---------------------------------------------------------------------------------------------

def test_policy_loss_output_built_from_values_reads_like_a_named_tuple():
    loss, d = t([[1.0, 2.0]]), [t(v) for v in (0.1, 0.2, 0.3, 1.5, 0.5, 4.0)]
    out = PolicyLossOutput(loss, *d)
    assert len(out) == 7 and out[0] is loss and list(out)[1:] == d
    assert out.clip_fraction_low is d[0] and out.ratio_max is d[5]
    names = ("loss", "clip_fraction_low", "clip_fraction_high", "dual_clip_fraction", "ratio_mean", "ratio_min",
             "ratio_max")
    assert list(out._asdict()) == list(names) and all(a is b for a, b in zip(out._asdict().values(), [loss] + d))
    assert repr(out) == "PolicyLossOutput(" + ", ".join(f"{k}={v!r}" for k, v in zip(names, [loss] + d)) + ")"
    with pytest.raises(ValueError, match="takes the loss and 6 diagnostics, got 6 values"):
        PolicyLossOutput(loss, *d[:5])


# --- validation of every tensor input -----------------------------------------------------------------------------

def _bad(x):
    y = x.clone()
    y[0, 0] = float("nan")
    return y


@pytest.mark.parametrize("which", ["logp", "logp_old", "advantages"])
@pytest.mark.parametrize("fn", ["reinforce", "ppo", "gspo", "cispo", "rpg"])
def test_policy_losses_refuse_a_non_finite_input(fn, which):
    x = {"logp": t([[-0.5, -1.0]]), "logp_old": t([[-0.6, -0.9]]), "advantages": t([[1.0, -1.0]])}
    x[which] = _bad(x[which])
    m = torch.ones(1, 2, dtype=torch.bool)
    call = {"reinforce": lambda: reinforce_loss(x["logp"], x["advantages"], m, logp_old=x["logp_old"]),
            "ppo": lambda: ppo_clip_loss(x["logp"], x["logp_old"], x["advantages"], m),
            "gspo": lambda: gspo_loss(x["logp"], x["logp_old"], x["advantages"], m),
            "cispo": lambda: cispo_loss(x["logp"], x["logp_old"], x["advantages"], m),
            "rpg": lambda: rpg_loss(x["logp"], x["logp_old"], x["advantages"], m, "urkl", "reinforce", 0.1)}[fn]
    with pytest.raises(ValueError, match=f"{which} contains non-finite values"):
        call()


def test_cispo_refuses_an_empty_mask():
    z = t([[-0.5, -1.0]])
    with pytest.raises(ValueError, match="mask"):
        cispo_loss(z, z, t([[1.0, 1.0]]), torch.zeros(1, 2, dtype=torch.bool))


# --- REINFORCE ratio diagnostics ----------------------------------------------------------------------------------

def test_reinforce_ratio_statistics_with_and_without_logp_old():
    # logp_old = −1, logp = (log 2 − 1, log ½ − 1): ρ = π/π_old = (2, ½), mean 1.25, min ½, max 2;
    # without logp_old ρ ≡ 1
    logp, m = row([L2 - 1.0, -L2 - 1.0]), torch.ones(1, 2, dtype=torch.bool)
    a = row([1.0, 1.0])
    out = reinforce_loss(logp, a, m, logp_old=torch.full_like(logp, -1.0))
    got = [out.ratio_mean.item(), out.ratio_min.item(), out.ratio_max.item()]
    assert got == pytest.approx([1.25, 0.5, 2.0], rel=1e-15), got
    out = reinforce_loss(logp, a, m)
    assert [out.ratio_mean.item(), out.ratio_min.item(), out.ratio_max.item()] == [1.0, 1.0, 1.0]
    assert diag(out) == [0.0, 0.0, 0.0]


# --- PPO: the clip fractions and the ±20 log-ratio guard ----------------------------------------------------------

def test_ppo_clip_fractions_count_only_the_documented_tokens():
    # ε_low = ε_high = 0.2, dual clip c = 3. Fractions (of 9 tokens): low = A < 0 and ρ < 0.8; high = A > 0 and
    # ρ > 1.2; dual = A < 0 and −ρA > −cA (ρ > 3).
    pairs = [(-1.0, 0.5),   # low
             (0.0, 0.5),    # A = 0: not clipped
             (0.5, 0.5),    # A > 0, ρ < 0.8: not clipped low
             (-1.0, 1.0),   # inside
             (1.0, 1.0),    # inside
             (0.0, 2.0),    # A = 0: not clipped high
             (1.0, 2.0),    # high
             (-1.0, 4.0),   # dual
             (0.5, 4.0)]    # high (A > 0: never dual)
    logp, logp_old, a, m = ratios_and_advantages(pairs)
    out = ppo_clip_loss(logp, logp_old, a, m, 0.2, 0.2, dual_clip=3.0)
    assert diag(out) == pytest.approx([1 / 9, 2 / 9, 1 / 9], rel=1e-15, abs=0)
    # ratio mean (3·½ + 2·1 + 2·2 + 2·4)/9 = 15.5/9
    assert out.ratio_mean.item() == pytest.approx(15.5 / 9, rel=1e-15)
    assert (out.ratio_min.item(), out.ratio_max.item()) == (0.5, 4.0)


def test_ppo_clip_bounds_are_strict():
    # ties: ε_low = ½ (bound ½), ε_high = 1 (bound 2), c = 2; ρ exactly ½ (A < 0), 2 (A > 0), 2 (A < 0): at a
    # bound the loss is the same on both sides, and no token counts as clipped
    logp, logp_old, a, m = ratios_and_advantages([(-1.0, 0.5), (1.0, 2.0), (-1.0, 2.0)])
    out = ppo_clip_loss(logp, logp_old, a, m, 0.5, 1.0, dual_clip=2.0)
    assert diag(out) == [0.0, 0.0, 0.0]
    # l = max(−ρA, −clip(ρ)A) = (½, −2, 2); the dual cut min(l, −cA) = min(2, 2) = 2
    assert out.loss.tolist() == [[0.5, -2.0, 2.0]]


@pytest.mark.parametrize("fn", ["ppo", "cispo"])
def test_log_ratio_guard_of_ppo_and_cispo(fn):
    # log ρ = (30, −30) is clamped to ±20 (verl's guard): ρ = (e^20, e^-20). A = (−1, +1).
    # PPO: l = max(−ρA, −clip(ρ, 0.8, 1.2)A) = (max(e^20, 1.2), max(−e^-20, −0.8)) = (e^20, −e^-20).
    # CISPO (clip_low None): l = −min(ρ, 1.2)·A·logp = (1.2·logp_0, −e^-20·logp_1), logp = (−1, −2).
    logp_old = t([[-31.0, 28.0]])
    logp = logp_old + t([[30.0, -30.0]])
    a, m = t([[-1.0, 1.0]]), torch.ones(1, 2, dtype=torch.bool)
    if fn == "ppo":
        out = ppo_clip_loss(logp, logp_old, a, m)
        want = [math.exp(20.0), -math.exp(-20.0)]
    else:
        out = cispo_loss(logp, logp_old, a, m)
        want = [1.2 * -1.0, -math.exp(-20.0) * -2.0]
    assert out.loss[0].tolist() == pytest.approx(want, rel=1e-12)
    assert out.ratio_max.item() == pytest.approx(math.exp(20.0), rel=1e-12)
    assert out.ratio_min.item() == pytest.approx(math.exp(-20.0), rel=1e-12)


# --- GSPO: clip fractions of the sequence ratio and its guard -----------------------------------------------------

def test_gspo_clip_fractions_count_only_the_documented_sequences():
    # one token per sequence, so s_i = ρ_i; ε_low = ½ (bound ½), ε_high = 1 (bound 2). low = A < 0 and s < ½;
    # high = A > 0 and s > 2 (12 sequences)
    pairs = [(-1.0, 0.25),   # low
             (0.0, 0.25),    # A = 0
             (1.0, 0.25),    # A > 0: not low
             (-1.0, 1.0),    # inside
             (1.0, 1.0),     # inside
             (0.0, 4.0),     # A = 0
             (1.0, 4.0),     # high
             (0.5, 4.0),     # high
             (-1.0, 4.0),    # A < 0: not high
             (-1.0, 0.5),    # tie at ½: not low
             (1.0, 2.0),     # tie at 2: not high
             (1.0, 2.5)]     # high
    logp, logp_old, a, _ = ratios_and_advantages(pairs)
    n = len(pairs)
    out = gspo_loss(logp.reshape(n, 1), logp_old.reshape(n, 1), a.reshape(n, 1), torch.ones(n, 1, dtype=torch.bool),
                    clip_low=0.5, clip_high=1.0)
    assert diag(out) == pytest.approx([1 / 12, 3 / 12, 0.0], rel=1e-15, abs=0)


def test_gspo_sequence_log_ratio_guard_is_10():
    # two tokens with log ρ = 10.5 each: mean 10.5, clamped to 10 (verl's guard) → s = e^10; A = −1:
    # l = max(s, clip(s)) = e^10 per token
    logp = t([[10.5, 10.5]])
    out = gspo_loss(logp, torch.zeros_like(logp), t([[-1.0, -1.0]]), torch.ones(1, 2, dtype=torch.bool))
    assert out.loss[0].tolist() == pytest.approx([math.exp(10.0)] * 2, rel=1e-12)


# --- CISPO ---------------------------------------------------------------------------------------------------------

def test_cispo_clip_fractions_are_strict():
    # ε_low = ½, ε_high = 1: ρ = ½ and 2 sit on the bounds (not counted), ¼ is below, 4 above (any sign of A)
    logp, logp_old, a, m = ratios_and_advantages([(1.0, 0.5), (1.0, 2.0), (-1.0, 0.25), (1.0, 4.0)])
    out = cispo_loss(logp, logp_old, a, m, clip_low=0.5, clip_high=1.0)
    assert diag(out)[:2] == [0.25, 0.25]


# --- KL loss: straight-through and the importance weight's guard --------------------------------------------------

def test_kl_loss_term_straight_through_value_and_gradient():
    # δ = (½, −1). k3 = e^{−δ} − 1 + δ = (e^{−½} − ½, e − 2); its gradient 1 − e^{−δ}. Straight-through (verl's
    # k3+): the value of k3 with the gradient of k2 = δ²/2, i.e. δ. k1+: value δ, gradient δ.
    logp_ref = t([[-1.0, -1.0]])
    m = torch.ones(1, 2, dtype=torch.bool)
    k3 = [math.exp(-0.5) - 0.5, math.e - 2.0]
    for est, st, value, grad in [(Estimator.K3, True, k3, [0.5, -1.0]),
                                 (Estimator.K3, False, k3, [1 - math.exp(-0.5), 1 - math.e]),
                                 (Estimator.K1, True, [0.5, -1.0], [0.5, -1.0])]:
        logp = (logp_ref + t([[0.5, -1.0]])).requires_grad_()
        v = KLLoss(estimator=est, straight_through=st).loss_terms(logp, logp_ref, None, m)
        (g,) = torch.autograd.grad(v.sum(), logp)
        assert v[0].tolist() == pytest.approx(value, rel=1e-14), (est, st)
        assert g[0].tolist() == pytest.approx(grad, rel=1e-14), (est, st)


def test_kl_loss_importance_weight_log_ratio_guard():
    # k1 × ρ with log ρ = logp − logp_old = (30, −30) clamped to ±20; δ = logp − logp_ref = (1, 1):
    # value = (e^20, e^-20)
    logp = t([[0.0, 0.0]])
    v = kl_loss(logp, logp - 1.0, torch.ones(1, 2, dtype=torch.bool), "k1", logp_old=t([[-30.0, 30.0]]),
                importance_weight=True)
    assert v[0].tolist() == pytest.approx([math.exp(20.0), math.exp(-20.0)], rel=1e-12)


# --- RPG -----------------------------------------------------------------------------------------------------------

def test_rpg_weight_and_surrogate_default_z_old_is_one():
    # ufkl with Z_old = 1: Weight = wA − β(w − 1) = 2·1 − ½·1 = 1.5; ℓ = −wA + β(w − log w − 1)
    # = −2 + ½(2 − log 2 − 1) = −1.5 − ½ log 2
    w, lw, lp, adv = t(2.0), t(L2), t(-1.0), t(1.0)
    assert rpg_weight(w, lw, adv, "ufkl", 0.5).item() == pytest.approx(1.5, rel=1e-15)
    assert rpg_differentiable_surrogate(w, lw, lp, adv, "ufkl", 0.5).item() == pytest.approx(-1.5 - 0.5 * L2,
                                                                                             rel=1e-15)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_rpg_log_weight_guard(level):
    # fkl, differentiable, β = 0: ℓ = −wA. Token level: log w = (30, −30) → clamped ±20; A = (1, 1):
    # ℓ = (−e^20, −e^-20). Sequence level: one response per row, log w = Σ_t = 30 or −30 (two tokens of ±15)
    # → ℓ_i = −e^{±20}, spread as ℓ_i/2 over its two tokens.
    if level == "token":
        logp, m, want = t([[30.0, -30.0]]), torch.ones(1, 2, dtype=torch.bool), [[-math.exp(20.0), -math.exp(-20.0)]]
    else:
        logp, m = t([[15.0, 15.0], [-15.0, -15.0]]), torch.ones(2, 2, dtype=torch.bool)
        want = [[-math.exp(20.0) / 2] * 2, [-math.exp(-20.0) / 2] * 2]
    out = rpg_loss(logp, torch.zeros_like(logp), torch.ones_like(logp), m, "fkl", "differentiable", 0.0, level=level)
    assert out.loss.tolist()[0] == pytest.approx(want[0], rel=1e-12)
    assert out.loss.tolist()[-1] == pytest.approx(want[-1], rel=1e-12)


def test_rpg_dual_clip_fractions_of_the_differentiable_form():
    # urkl, β = 0: Â = A; RPGClip(ε1 = ½, ε2 = 1, c = 4): bounds ½, 2, 4. Alg. 1 / G.1: low = Â < 0 and w < ½;
    # high = Â >= 0 (the paper's positive side, Â = 0 included) and w > 2; dual = Â < 0 and w > 4 (14 valid tokens)
    pairs = [(-1.0, 0.25),   # low
             (1.0, 0.25),    # Â > 0: not low
             (-1.0, 0.5),    # tie: not low
             (-1.0, 1.0),    # inside
             (1.0, 3.0),     # high
             (-1.0, 3.0),    # Â < 0: not high
             (1.0, 2.0),     # tie: not high
             (1.0, 1.0),     # inside
             (-1.0, 8.0),    # dual
             (1.0, 8.0),     # high, not dual
             (-1.0, 4.0),    # tie: not dual
             (0.0, 3.0),     # Â = 0 is on the positive side: high
             (0.0, 0.25),    # Â = 0: not low
             (1.0, 2.5),     # high
             (-1.0, 0.25)]   # padding (mask False): not counted, and not a token of the denominator
    logp, logp_old, a, m = ratios_and_advantages(pairs)
    m[0, -1] = False
    out = rpg_loss(logp, logp_old, a, m, "urkl", "differentiable", 0.0, clip=RPGClip(0.5, 1.0, 4.0))
    assert diag(out) == pytest.approx([1 / 14, 4 / 14, 1 / 14], rel=1e-15, abs=0)


def test_rpg_alg2_clip_bounds_are_inclusive():
    # Alg. 2 (REINFORCE form): active set {A' >= 0, w < 1 + ε2} ∪ {A' < 0, 1 − ε1 < w < c}; urkl, β = 0 gives
    # Weight = wA, C_KL = 0, A' = A. RPGClip(½, 1, 4): w = 2 (A > 0), ½ (A < 0), 4 (A < 0) sit on the bounds and
    # are clipped; A' = 0 is on the positive side (w = 8 → high, not dual); (A, w) = (1, 1) is active with gradient
    # −Weight = −1 on its log π, every clipped token has gradient 0.
    logp, logp_old, a, m = ratios_and_advantages([(1.0, 2.0), (-1.0, 0.5), (-1.0, 4.0), (0.0, 8.0), (1.0, 1.0)])
    out = rpg_loss(logp, logp_old, a, m, "urkl", "reinforce", 0.0, clip=RPGClip(0.5, 1.0, 4.0))
    assert diag(out) == pytest.approx([1 / 5, 2 / 5, 1 / 5], rel=1e-15, abs=0)
    (g,) = torch.autograd.grad(out.loss.sum(), logp)
    assert g[0].tolist() == [0.0, 0.0, 0.0, 0.0, -1.0]
