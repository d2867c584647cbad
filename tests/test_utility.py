"""Tests of rlkl.utility: GRPO's implicit utility 2·arcsin√p and the exact finite-group weight w_G / utility U_G.

Hand-computed closed forms (FRPO arXiv 2601.10201 §4.2), brute-force enumeration of all 2^G binary reward tuples with a
loop GRPO advantage (G = 2..5), an independent closed form of U_G through the regularized incomplete beta function,
and hypothesis properties (U_G' = w_G, symmetry, convergence to 1/√(p(1−p))).

Tolerances: float64 identities at 1e-12 (w_G is a finite sum of G terms); the large-G limit is checked at the
tolerance the spec's weight table implies (G = 256, p ∈ [0.05, 0.95]: within 1.5 %).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import betainc

from rlkl.advantages import group_centered, leave_one_out
from rlkl.utility import (conditional_advantage_means, effective_weight, finite_group_utility, finite_group_weight,
                          grpo_utility, grpo_utility_grad)
from strategies import finite_floats, interior_probabilities, probabilities

SQ2, SQ3, SQ6 = math.sqrt(2.0), math.sqrt(3.0), math.sqrt(6.0)


# ---------------------------------------------------------------------------------------------------------------
# (1) hand-computed values


def test_arcsin_utility_by_hand():
    # U(½) = 2·asin(√½) = 2·π/4 = π/2; U(1) = 2·π/2 = π; U(0) = 0; U'(½) = 1/√(¼) = 2; U'(0.2) = 1/√0.16 = 2.5
    assert grpo_utility(0.5) == pytest.approx(math.pi / 2, rel=1e-15)
    assert grpo_utility(1.0) == pytest.approx(math.pi, rel=1e-15)
    assert grpo_utility(0.0) == 0.0
    assert grpo_utility_grad(0.5) == pytest.approx(2.0, rel=1e-15)
    assert grpo_utility_grad(0.2) == pytest.approx(2.5, rel=1e-14)


def test_finite_group_weight_closed_forms_by_hand():
    # G = 2, population std: rewards (1, 0) give A = ±(½)/(½) = ±1, so E[A_1|r_1=1] = P(other = 0)·1 = 1 − p and
    # E[A_1|r_1=0] = P(other = 1)·(−1) = −p: w_2 = (1 − p) + p = 1 for every p
    for p in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert finite_group_weight(p, 2) == pytest.approx(1.0, rel=1e-14)
    # G = 3: w_3 = √2 = 1.41421356 (spec table row G = 3)
    assert finite_group_weight(0.3, 3) == pytest.approx(SQ2, rel=1e-14)
    # G = 4 at p = ½: √3 + (3 − 2√3)·¼ = 1.7320508 − 0.1160254 = 1.6160254 (spec table: 1.616)
    assert finite_group_weight(0.5, 4) == pytest.approx(SQ3 + (3 - 2 * SQ3) / 4, rel=1e-14)
    assert finite_group_weight(0.5, 4) == pytest.approx(1.6160254037844386, rel=1e-14)
    # G = 5 at p = ½: 2 + (2√6 − 6)·¼ = 2 − 0.2752551 = 1.7247449 (spec table: 1.725)
    assert finite_group_weight(0.5, 5) == pytest.approx(1.7247448713915890, rel=1e-14)
    # w_G(0⁺) = √(G − 1): at p = 0 the others all fail, A_1(r_1 = 1) = (1 − 1/G)/(√(G−1)/G) = √(G − 1)
    for G in (2, 3, 5, 8, 16):
        assert finite_group_weight(0.0, G) == pytest.approx(math.sqrt(G - 1), rel=1e-13)
        assert finite_group_weight(1e-12, G) == pytest.approx(math.sqrt(G - 1), rel=1e-9)
    # U_2(p) = p, U_3(p) = √2·p (exactly linear); U_5 = 2p + (2√6 − 6)(p²/2 − p³/3): at p = ½, 1 + (−1.1010205)/12
    assert finite_group_utility(0.37, 2) == pytest.approx(0.37, rel=1e-13)
    assert finite_group_utility(0.37, 3) == pytest.approx(SQ2 * 0.37, rel=1e-13)
    assert finite_group_utility(0.5, 5) == pytest.approx(1.0 + (2 * SQ6 - 6) / 12, rel=1e-13)


def test_spec_weight_table_values():
    # FRPO arXiv 2601.10201 §4.2 weight table (population std, ε = 0), 3 decimals; one vectorized call per G
    table = {4: {0.05: 1.710}, 5: {0.2: 1.824}, 8: {0.5: 1.856}, 16: {0.2: 2.346}, 64: {0.05: 4.336, 0.5: 1.984},
             256: {0.01: 9.311, 0.05: 4.539, 0.2: 2.492, 0.5: 1.996}}
    for G, row in table.items():
        got = finite_group_weight(np.array(list(row)), G)
        assert np.allclose(got, list(row.values()), atol=6e-4, rtol=0), G


def test_bessel_and_eps_variants_by_hand():
    # Bessel std multiplies σ by √(G/(G−1)), so w_G by √((G−1)/G): G = 2 → 1/√2 = 0.7071068
    assert finite_group_weight(0.3, 2, std="bessel") == pytest.approx(1 / SQ2, rel=1e-14)
    # G = 2 with ε: A = ±½/(½ + ε) ⇒ w_2 = 1/(1 + 2ε); ε = 1e-4 → 0.99980004
    assert finite_group_weight(0.3, 2, eps=1e-4) == pytest.approx(1 / (1 + 2e-4), rel=1e-14)


# ---------------------------------------------------------------------------------------------------------------
# (2) brute force over all G-tuples, loop advantages


def loop_grpo_advantage(rs: tuple[int, ...], std: str, eps: float) -> list[float]:
    G = len(rs)
    mu = sum(rs) / G
    var = sum((r - mu) ** 2 for r in rs) / (G if std == "population" else G - 1)
    s = math.sqrt(var)
    if s == 0.0:
        return [0.0] * G  # all-equal group: zero advantage
    return [(r - mu) / (s + eps) for r in rs]


def brute_force_weight(p: float, G: int, std: str, eps: float) -> float:
    """w_G(p) = E[A_1 (r_1 − p)]/(p(1 − p)), the expectation a sum over all 2^G reward tuples."""
    total = 0.0
    for rs in itertools.product((0, 1), repeat=G):
        prob = 1.0
        for r in rs:
            prob *= p if r else 1.0 - p
        total += prob * loop_grpo_advantage(rs, std, eps)[0] * (rs[0] - p)
    return total / (p * (1.0 - p))


@pytest.mark.parametrize("G", [2, 3, 4, 5])
@pytest.mark.parametrize("std", ["population", "bessel"])
@pytest.mark.parametrize("eps", [0.0, 1e-6, 1e-4, 0.1])
def test_weight_matches_brute_force_enumeration(G, std, eps):
    ps = [0.01, 0.13, 0.5, 0.77, 0.99]
    got = finite_group_weight(np.array(ps), G, std=std, eps=eps)
    for p, g in zip(ps, got):
        assert g == pytest.approx(brute_force_weight(p, G, std, eps), rel=1e-12)


@given(p=interior_probabilities, G=st.integers(2, 5), std=st.sampled_from(["population", "bessel"]),
       eps=st.sampled_from([0.0, 1e-6, 1e-4]))
def test_weight_matches_brute_force_hypothesis(p, G, std, eps):
    assert finite_group_weight(p, G, std=std, eps=eps) == pytest.approx(brute_force_weight(p, G, std, eps),
                                                                          rel=1e-11)


@given(p=probabilities, G=st.integers(2, 20), std=st.sampled_from(["population", "bessel"]),
       eps=st.sampled_from([0.0, 1e-6, 1e-4]))
def test_utility_matches_incomplete_beta_closed_form(p, G, std, eps):
    # spec I3a: U_G(p) = (1/G) Σ_{S=1}^{G−1} P(Bin(G−1, p) ≥ S)/(s_S + ε), P(Bin(G−1,p) ≥ S) = I_p(S, G − S),
    # s_S the std of a group with S successes: population √(S(G−S))/G, Bessel √(S(G−S)/(G(G−1)))
    ref = 0.0
    for S in range(1, G):
        var_pop = S * (G - S) / G ** 2
        s = math.sqrt(var_pop if std == "population" else var_pop * G / (G - 1))
        ref += betainc(S, G - S, p) / (s + eps) / G
    assert finite_group_utility(p, G, std=std, eps=eps) == pytest.approx(ref, rel=1e-10, abs=1e-14)


def test_other_equivariant_advantages_through_conditional_means():
    # Dr. GRPO (mean only, leave-in): w_G ≡ (G − 1)/G; RLOO (leave-one-out): w_G ≡ 1 (unbiased), any p
    p = np.array([0.05, 0.4, 0.9])
    for G in (2, 3, 6):
        def centred(r, G=G):
            return group_centered(r.reshape(-1), G).view_as(r)

        def loo(r, G=G):
            return leave_one_out(r.reshape(-1), G).view_as(r)

        s1, f1 = conditional_advantage_means(p, G, centred)
        assert np.allclose(s1 - f1, (G - 1) / G, rtol=1e-13)
        s2, f2 = conditional_advantage_means(p, G, loo)
        assert np.allclose(s2 - f2, 1.0, rtol=1e-13)
        # brute force of E[A_1 | r_1 = 1] for RLOO: E[1 − K/(G−1)] = 1 − p
        assert np.allclose(s2, 1.0 - p, rtol=1e-13)


# ---------------------------------------------------------------------------------------------------------------
# (3) properties


@given(p=finite_floats(0.01, 0.99), G=st.integers(2, 12), std=st.sampled_from(["population", "bessel"]),
       eps=st.sampled_from([0.0, 1e-4]))
def test_utility_derivative_is_weight_by_finite_difference(p, G, std, eps):
    h = 1e-6
    fd = (finite_group_utility(p + h, G, std, eps) - finite_group_utility(p - h, G, std, eps)) / (2 * h)
    assert fd == pytest.approx(finite_group_weight(p, G, std, eps), rel=1e-7)


@given(p=probabilities, G=st.integers(2, 16))
def test_weight_symmetry_bessel_scaling_and_utility_endpoints(p, G):
    w = finite_group_weight(p, G)
    assert w == pytest.approx(finite_group_weight(1.0 - p, G), rel=1e-10)  # w_G(p) = w_G(1 − p)
    assert finite_group_weight(p, G, std="bessel") == pytest.approx(w * math.sqrt((G - 1) / G), rel=1e-12)
    assert finite_group_utility(0.0, G) == 0.0
    # U_G(1) = Σ_{S=1}^{G−1} 1/√(S(G−S)) (population, ε = 0)
    assert finite_group_utility(1.0, G) == pytest.approx(sum(1 / math.sqrt(S * (G - S)) for S in range(1, G)),
                                                         rel=1e-12)
    # bounds: w_G between its end value √(G − 1) and the limit 1/√(p(1−p)) from below at interior p
    if 0.0 < p < 1.0:
        assert w <= grpo_utility_grad(p) * (1 + 1e-12)


@given(p=probabilities)
def test_closed_forms_small_groups(p):
    q = p * (1 - p)
    assert finite_group_utility(p, 2) == pytest.approx(p, rel=1e-12, abs=1e-15)
    assert finite_group_utility(p, 3) == pytest.approx(SQ2 * p, rel=1e-12, abs=1e-15)
    assert finite_group_weight(p, 4) == pytest.approx(SQ3 + (3 - 2 * SQ3) * q, rel=1e-12)
    assert finite_group_weight(p, 5) == pytest.approx(2 + (2 * SQ6 - 6) * q, rel=1e-12)


def test_weight_converges_to_arcsin_weight():
    # w_G(p)·√(p(1−p)) → 1 as G grows; the relative error decreases with G at every p of the grid and is below
    # 1.5 % at G = 256 for p ∈ [0.05, 0.95] (measured max 1.07 % at the ends; spec table: 4.539 vs 4.588 at p = .05)
    p = torch.linspace(0.05, 0.95, 91, dtype=torch.float64)
    errs = []
    for G in (4, 8, 16, 64, 256):
        errs.append((1.0 - effective_weight(p, G)).abs())
    for a, b in zip(errs, errs[1:]):
        assert bool((b < a).all())
    assert errs[-1].max().item() < 0.015
    assert bool((effective_weight(p, None) == 1).all())
    # near p = 0 the convergence needs G·p(1−p) ≫ 1: at p = 0.01, G = 256 is still 7 % short (9.311 vs 10.05)
    assert 0.05 < 1 - effective_weight(0.01, 256) < 0.1


@given(p=finite_floats(0.05, 0.95))
def test_weight_convergence_monotone_in_G_hypothesis(p):
    lim = grpo_utility_grad(p)
    err = [abs(finite_group_weight(p, G) / lim - 1) for G in (2, 5, 16, 64)]
    assert all(b < a for a, b in zip(err, err[1:]))


def test_large_group_utility_approaches_arcsin():
    # U_G(p)/U_G(1) → U(p)/U(1) = (2/π)·asin√p; spec table at p = .05/.2/.8/.95: G = 64 gives .103/.270/.730/.897
    # against the arcsin column .144/.295/.705/.856, so within 0.05 at G = 64 (measured max 0.042 on [0.01, 0.99])
    p = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    ratio = finite_group_utility(p, 64) / finite_group_utility(1.0, 64)
    assert (ratio - grpo_utility(p) / math.pi).abs().max().item() < 0.05
    spec = finite_group_utility(torch.tensor([0.05, 0.2, 0.8, 0.95], dtype=torch.float64), 64)
    assert torch.allclose(spec / finite_group_utility(1.0, 64), torch.tensor([0.103, 0.270, 0.730, 0.897],
                                                                             dtype=torch.float64), atol=6e-4)


def test_input_kinds_are_preserved():
    assert isinstance(finite_group_weight(0.3, 4), float)
    arr = finite_group_weight(np.array([[0.1, 0.2], [0.3, 0.4]]), 4)
    assert isinstance(arr, np.ndarray) and arr.shape == (2, 2)
    ten = finite_group_utility(torch.tensor([0.1, 0.2, 0.3]), 6)
    assert isinstance(ten, torch.Tensor) and ten.shape == (3,) and ten.dtype == torch.float64
    assert isinstance(grpo_utility(np.array([0.25])), np.ndarray)
    # float32 tensors are computed in float64 (exact engine precision)
    assert finite_group_weight(torch.tensor([0.5], dtype=torch.float32), 4).dtype == torch.float64


# ---------------------------------------------------------------------------------------------------------------
# input validation


def test_invalid_inputs_raise():
    for bad in (-0.1, 1.5, float("nan"), np.array([0.2, 2.0])):
        with pytest.raises(ValueError, match="probability"):
            finite_group_weight(bad, 4)
        with pytest.raises(ValueError, match="probability"):
            grpo_utility(bad)
    for G in (1, 0, 2.5):
        with pytest.raises(ValueError, match="group_size"):
            finite_group_weight(0.3, G)
    with pytest.raises(ValueError, match="std='sample'"):
        finite_group_weight(0.3, 4, std="sample")
    with pytest.raises(ValueError, match="eps"):
        finite_group_weight(0.3, 4, eps=-1e-6)
    with pytest.raises(ValueError, match="advantage_fn must return shape"):
        conditional_advantage_means(0.3, 3, lambda r: r[:, :2])
