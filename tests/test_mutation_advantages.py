"""Checks added for mutants of rlkl/advantages.py that survived the core tests (docs/mutation.md, "mutmut:
rlkl/advantages.py", lists each survivor and its fate).

Each test states the documented behaviour it pins, with the arithmetic in comments; none calls the function under
test to build its own expected value. Several use extreme but valid inputs (subnormal or ulp-sized spreads, 1e±300
magnitudes, float32 round-off): the stable forms of the code exist for exactly those inputs.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from rlkl.advantages import (batch_standardized, frpo_advantages, frpo_regularizer, future_return,
                             group_standardized, masked_whiten, pass_at_k_advantage, reward_to_go)

U = 2.0 ** -52  # one ulp of 1.0 in float64


def t(x, **kw):
    return torch.tensor(x, dtype=torch.float64, **kw)


def close(got, want, tol=1e-12):
    want = t(want) if not isinstance(want, torch.Tensor) else want
    return got.shape == want.shape and bool(torch.allclose(got, want.to(got.dtype), rtol=tol, atol=0.0))


# --- group / batch standardization (_standardize) -----------------------------------------------------------------

def test_group_standardized_of_subnormal_rewards_with_zero_eps():
    # rewards (0, 5e-324 = 2^-1074, the smallest subnormal), G = 2, ε = 0, Bessel: mean 2^-1075, deviations ∓2^-1075,
    # s = √(2·2^-2150/1) = √2·2^-1075, so A = ∓1/√2 — a pair of distinct values always standardizes to ∓1/√2
    a = group_standardized(t([0.0, 5e-324]), 2, eps=0.0)
    assert close(a, [-1 / math.sqrt(2), 1 / math.sqrt(2)]), a


def test_group_standardized_scales_each_group_by_its_own_magnitude():
    # groups (1e-300, 2e-300) and (1e300, 2e300), ε = 0: each is a distinct pair, A = (∓1/√2, ±1/√2) per group
    # (the tiny group's z = x/scale must not underflow because of the huge group's scale)
    a = group_standardized(t([1e-300, 2e-300, 2e300, 1e300]), 2, eps=0.0)
    h = 1 / math.sqrt(2)
    assert close(a, [-h, h, h, -h]), a


def test_group_standardized_centres_each_group_on_its_own_mean_at_ulp_spread():
    # group 1 = (1, 1, 1 + u), u = 2^-52: mean 1 + u/3, deviations (−u/3, −u/3, 2u/3), Σd² = 6u²/9, Bessel var
    # = u²/3, s = u/√3, A = (−1/√3, −1/√3, 2/√3) — the spread is one ulp, so any round-off in the centring
    # (e.g. subtracting a mean taken over other groups) is an O(1) error.
    # group 2 = (−0.3, 0.1, 0.9): mean 0.7/3, deviations (−8, −2, 10)/15, Σd² = 168/225, var = 84/225,
    # A = (−8, −2, 10)/√84
    a = group_standardized(t([1.0, 1.0, 1.0 + U, -0.3, 0.1, 0.9]), 3, eps=0.0)
    r3, r84 = math.sqrt(3), math.sqrt(84)
    assert close(a, [-1 / r3, -1 / r3, 2 / r3, -8 / r84, -2 / r84, 10 / r84], tol=1e-10), a


def test_batch_standardized_default_eps():
    # rewards (0, 2): mean 1, Bessel std √2, default ε = 1e-6: A = ∓1/(√2 + 1e-6)
    a = batch_standardized(t([0.0, 2.0]))
    w = 1 / (math.sqrt(2) + 1e-6)
    assert close(a, [-w, w], tol=1e-14), a


# --- reward-to-go and FRPO ---------------------------------------------------------------------------------------

def test_reward_to_go_with_gamma_one_is_the_future_return_and_sums_float32_accurately():
    # Documented: with γ = 1 reward_to_go equals future_return(·, include_current=True). 1000 float32 per-token
    # rewards of 2^-24 before a final reward of 1: G_0 = 1 + 1000·2^-24 = 1 + 500·2^-23, exactly a float32 value.
    # A step-by-step float32 recursion G_t = r_t + G_{t+1} stays at 1 (1 + 2^-24 is a tie, rounded to even = 1);
    # the reverse cumulative sum (torch's CPU cumsum accumulates float32 in float64) gives the exact value.
    r = torch.full((1, 1001), 2.0 ** -24, dtype=torch.float32)
    r[0, -1] = 1.0
    m = torch.ones(1, 1001, dtype=torch.bool)
    g = reward_to_go(r, m, gamma=1.0)
    assert torch.equal(g, future_return(r, m, include_current=True))
    assert g[0, 0].item() == 1.0 + 500 * 2.0 ** -23, g[0, 0].item()
    assert g[0, -1].item() == 1.0


def test_frpo_regularizer_default_divergence_is_reverse_kl():
    # reverse KL: reg_t = Σ_{j≥t} δ_j over valid tokens; δ = (0.5, −0.25, [2.0 padding]) → (0.25, −0.25, 0)
    reg = frpo_regularizer(t([[0.5, -0.25, 2.0]]), torch.tensor([[True, True, False]]))
    assert close(reg, [[0.25, -0.25, 0.0]], tol=1e-15), reg


def test_frpo_advantages_without_the_local_term():
    # rewards (1, 0), G = 2, population std 0.5 (FRPO's default), ε = 1e-6: a = ±0.5/(0.5 + 1e-6).
    # δ = logp − logp_ref = row 0 (0.2, 0.4), row 1 (−0.6, 0.1); β = 0.5; include_local=False keeps Σ_{j>t} δ_j:
    # row 0 (0.4, 0), row 1 (0.1, 0) → A = (a − 0.2, a), (−a − 0.05, −a). (With the local term row 0 would be
    # (a − 0.3, a − 0.2).)
    a = 0.5 / (0.5 + 1e-6)
    logp_ref = t([[-1.0, -2.0], [-0.5, -1.5]])
    logp = logp_ref + t([[0.2, 0.4], [-0.6, 0.1]])
    m = torch.ones(2, 2, dtype=torch.bool)
    adv = frpo_advantages(t([1.0, 0.0]), logp, logp_ref, m, 2, 0.5, include_local=False)
    assert close(adv, [[a - 0.2, a], [-a - 0.05, -a]]), adv


def test_frpo_regularizer_overflow_names_the_term_and_the_valid_log_ratio_range():
    # forward KL: f(u)/u = −log(u)/u = −δ·e^{−δ}; at δ = −800 that is 800·e^800 = inf in float64, so the per-token
    # estimate itself overflows. The range in the message is over valid tokens only (the padding's 123 is not in it).
    lr, m = t([[0.5, -800.0, 123.0]]), torch.tensor([[True, True, False]])
    msg = "log_ratio: FRPO's forward_kl regularizer (f(u)/u) overflows torch.float64 for log-ratios in [-800, 0.5]"
    with pytest.raises(ValueError, match=re.escape(msg)):
        frpo_regularizer(lr, m, "forward_kl")


@pytest.mark.parametrize("include_local, what", [(False, "future sum of f(u)/u"), (True, "f'(u) + future sum")])
def test_frpo_regularizer_overflow_of_the_sum_names_the_sum(include_local, what):
    # reverse KL: f(u)/u = δ is finite (1e308), but the sums overflow: Σ_{j>0} δ_j = 1e308 + 1e308 = inf
    # (include_local=False, three valid tokens) and δ_1 + Σ_{j>1} δ_j = inf (with the local term)
    lr, m = t([[1e308, 1e308, 1e308, -5.0]]), torch.tensor([[True, True, True, False]])
    msg = (f"log_ratio: FRPO's reverse_kl regularizer ({what}) overflows torch.float64 for log-ratios in "
           "[1e+308, 1e+308]")
    with pytest.raises(ValueError, match=re.escape(msg)):
        frpo_regularizer(lr, m, "reverse_kl", include_local=include_local)


# --- pass@k --------------------------------------------------------------------------------------------------------

def test_pass_at_k_normalized_with_zero_eps():
    # group (1, 0, 0): only the best gets 1 − 0 = 1, divided by its Bessel std √((4/9 + 1/9 + 1/9)/2) = 1/√3 → √3;
    # group (0.5, 0.5, 0.5): no strict best, all 0 — also with ε = 0, where the std is 0 (no 0/0)
    a = pass_at_k_advantage(t([1.0, 0.0, 0.0, 0.5, 0.5, 0.5]), 3, normalize=True, eps=0.0)
    assert torch.isfinite(a).all(), a
    assert close(a[:3], [math.sqrt(3), 0.0, 0.0]) and a[3:].tolist() == [0.0, 0.0, 0.0], a


# --- masked_whiten -------------------------------------------------------------------------------------------------

def test_masked_whiten_of_float32_values_is_computed_in_float64():
    # float32 values 1e7 + (0, 1, 2, 3) (integers, exact in float32): mean 1e7 + 1.5, deviations ±0.5, ±1.5,
    # Bessel var = (2.25 + 0.25 + 0.25 + 2.25)/3 = 5/3, ε = 0 → d/√(5/3). (In float32 the sum 4e7 + 6 rounds to a
    # multiple of 4, the mean to 1e7 + 2, and every deviation is off by 0.5.)
    x = torch.tensor([[1e7, 1e7 + 1, 1e7 + 2, 1e7 + 3]], dtype=torch.float32)
    out = masked_whiten(x, torch.ones(1, 4, dtype=torch.bool), eps=0.0)
    s = math.sqrt(5 / 3)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), t([[-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]]), rtol=1e-6, atol=0.0), out


def test_masked_whiten_per_group_scales_each_group_by_its_own_spread():
    # group_size = 1: rows (1e-300, 2e-300) and (1e300, 2e300), population std, ε = 0: each row's deviations are
    # ∓σ, so every row whitens to (−1, 1); the squares 1e-600 and 1e600 are out of float64's range, the scale-free
    # form never forms them (and the tiny row must not be divided by the huge row's scale)
    x = t([[1e-300, 2e-300], [1e300, 2e300]])
    out = masked_whiten(x, torch.ones(2, 2, dtype=torch.bool), eps=0.0, std="population", group_size=1)
    assert close(out, [[-1.0, 1.0], [-1.0, 1.0]]), out


def test_masked_whiten_when_eps_dominates_a_tiny_spread():
    # values (0, 2e-200), population: μ = 1e-200, d = ∓1e-200, σ² = 1e-400 (0 in float64); default ε = 1e-8:
    # (x − μ)/√(σ² + ε) = ∓1e-200/1e-4 = ∓1e-196 (r = √ε/scale = 1e196: r² is not formed)
    out = masked_whiten(t([[0.0, 2e-200]]), torch.ones(1, 2, dtype=torch.bool), std="population")
    assert close(out, [[-1e-196, 1e-196]]), out


def test_masked_whiten_all_equal_scope_with_zero_eps_is_zero_with_a_finite_gradient():
    # group_size = 1: row (3, 3) is all-equal → exactly 0 (documented), also with ε = 0; row (1, 2) → (−1, 1).
    # The all-equal row's output is a constant 0, so its gradient is 0 (and finite: no 0/0 on an untaken side).
    x = t([[3.0, 3.0], [1.0, 2.0]], requires_grad=True)
    out = masked_whiten(x, torch.ones(2, 2, dtype=torch.bool), eps=0.0, std="population", group_size=1)
    assert close(out, [[0.0, 0.0], [-1.0, 1.0]]), out
    assert out[0].tolist() == [0.0, 0.0]
    (g,) = torch.autograd.grad((out * t([[1.0, 2.0], [3.0, 5.0]])).sum(), x)
    assert torch.isfinite(g).all(), g
    assert g[0].tolist() == [0.0, 0.0], g
