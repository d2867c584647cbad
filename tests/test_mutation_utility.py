"""Checks added for the mutmut survivors of rlkl/utility.py (docs/mutation_utility_components.md).

Each test pins one behaviour a surviving mutant changed: the input/output kinds of the public functions, the
Gauss–Legendre node count of U_G at large G (against an mpmath reference written out from the binomial sum), the
defaults of the Mroueh recursion and the group-std update size, the strict ``tol`` of the fixed point, and the ε
placement of ``group_std_update_size``. Expected values are hand-computed (arithmetic in comments) or written out
from the paper's formula in ``math`` / mpmath — never by calling the function under test to build them.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch

from rlkl.utility import (effective_weight, finite_group_utility, grpo_utility, group_std_update_size,
                          mroueh_fixed_point, mroueh_success_map, mroueh_success_sequence)


# ---- input / output kinds ----------------------------------------------------------------------------------------


def test_bool_and_complex_tensors_are_rejected():
    # a bool tensor is not a probability (True → 1.0 would pass silently), nor is a complex one (imaginary part lost)
    with pytest.raises(ValueError, match="probability"):
        grpo_utility(torch.tensor([True, False]))
    with pytest.raises(ValueError, match="probability"):
        grpo_utility(torch.tensor([0.5 + 0.0j]))


def test_float32_tensor_is_computed_and_returned_in_float64():
    # 0.25 is exact in float32; U(¼) = 2·asin(½) = 2·π/6 = π/3 = 1.0471975511965976 (float32 would be off by ~1e-8)
    got = grpo_utility(torch.tensor([0.25], dtype=torch.float32))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    assert abs(float(got[0]) - math.pi / 3) < 1e-15


def test_scalar_in_float_out_tensor_in_tensor_out():
    # a Python float gives a Python float (not a 0-d numpy array); a tensor gives a tensor, a list an ndarray
    assert type(grpo_utility(0.25)) is float
    assert type(mroueh_success_map(0.25, 0.5, 1.0)) is float
    assert isinstance(mroueh_success_map(torch.tensor([0.25]), 0.5, 1.0), torch.Tensor)
    one = effective_weight(torch.tensor([0.3, 0.6]), None)  # the G → ∞ limit: 1 for 0 < p < 1
    assert isinstance(one, torch.Tensor) and one.tolist() == [1.0, 1.0]
    assert isinstance(effective_weight([0.3, 0.6], None), np.ndarray)


# ---- U_G at large G: the quadrature must be exact for a degree G − 1 polynomial ---------------------------------


def _u_reference(p: float, G: int, bessel: bool, eps: float) -> mpmath.mpf:
    """U_G(p) = ∫_0^p w_G, written out at 40 digits: w_G(q) = Σ_k C(n, k) q^k (1 − q)^{n−k} (A(1, k) − A(0, k)),
    n = G − 1, A(r_1, k) = (r_1 − S/G)/(s_S + ε) with S = r_1 + k successes in the group, s_S² = S(G − S)/G²
    (·G/(G − 1) for Bessel), A = 0 for an all-equal group; ∫_0^p q^k (1 − q)^m dq = Σ_j C(m, j)(−1)^j p^{k+j+1}/(k+j+1)."""
    with mpmath.workdps(40):
        n, p = G - 1, mpmath.mpf(p)

        def adv(r1: int, k: int):
            S = r1 + k
            if S in (0, G):
                return mpmath.mpf(0)
            var = mpmath.mpf(S * (G - S)) / G**2 * (mpmath.mpf(G) / (G - 1) if bessel else 1)
            return (r1 - mpmath.mpf(S) / G) / (mpmath.sqrt(var) + mpmath.mpf(eps))

        total = mpmath.mpf(0)
        for k in range(n + 1):
            m = n - k
            integral = sum(mpmath.binomial(m, j) * (-1) ** j * p ** (k + j + 1) / (k + j + 1) for j in range(m + 1))
            total += (adv(1, k) - adv(0, k)) * mpmath.binomial(n, k) * integral
        return total


@pytest.mark.parametrize("G, p, std, eps", [(20, 0.7, "population", 0.0), (40, 0.35, "population", 0.0),
                                            (33, 0.9, "bessel", 1e-3)])
def test_finite_group_utility_at_large_group_against_mpmath_binomial_sum(G, p, std, eps):
    # w_G has degree G − 1, so the rule needs ⌈G/2⌉ nodes; G // 3 + 2 (8 at G = 20) leaves an error ≫ 1e-12
    want = float(_u_reference(p, G, std == "bessel", eps))
    assert finite_group_utility(p, G, std, eps) == pytest.approx(want, rel=1e-12, abs=0)


# ---- Mroueh's success recursion --------------------------------------------------------------------------------


def _h(p: float, p_ref: float, beta: float, eps: float = 0.0) -> float:
    """h(p) = 1/(1 + ((1 − p_ref)/p_ref)·exp(−1/(β·√(p(1 − p) + ε)))), written out in math."""
    return 1.0 / (1.0 + (1.0 - p_ref) / p_ref * math.exp(-1.0 / (beta * math.sqrt(p * (1.0 - p) + eps))))


def test_mroueh_success_map_by_hand():
    # p = p_ref = 0.2, β = ½, default ε = 0: σ = √(0.2·0.8) = 0.4, β·σ = 0.2, exp(−1/0.2) = exp(−5) = 0.006737947,
    # odds = 0.8/0.2 = 4 ⇒ h = 1/(1 + 4·0.006737947) = 1/1.026951788 = 0.973755547
    assert mroueh_success_map(0.2, 0.2, 0.5) == pytest.approx(1.0 / (1.0 + 4.0 * math.exp(-5.0)), rel=1e-14)
    assert mroueh_success_map(0.2, 0.2, 0.5) == pytest.approx(0.9737555469, rel=1e-9)
    # p = 0.5, p_ref = 0.3, β = 2, ε = 0.75: σ = √(0.25 + 0.75) = 1, β·σ = 2, exp(−½) = 0.60653066;
    # odds = 0.7/0.3 = 7/3 ⇒ h = 1/(1 + 7/3·0.60653066) = 1/2.41523821 = 0.41403784
    want = 1.0 / (1.0 + 7.0 / 3.0 * math.exp(-0.5))
    assert mroueh_success_map(0.5, 0.3, 2.0, 0.75) == pytest.approx(want, rel=1e-14)
    assert want == pytest.approx(0.41403784, rel=1e-7)
    # tensor of several p at once, each against the written-out formula
    ps = [0.0, 0.1, 0.45, 0.9, 1.0]
    got = mroueh_success_map(torch.tensor(ps, dtype=torch.float64), 0.6, 0.7, 0.01)
    assert got.tolist() == pytest.approx([_h(p, 0.6, 0.7, 0.01) for p in ps], rel=1e-14)


def test_mroueh_success_sequence_by_hand():
    # default ε = 0: p_0 = 0.2, p_1 = h(0.2) = 0.973755547 (above), p_2 = h(p_1)
    p1 = _h(0.2, 0.2, 0.5)
    assert mroueh_success_sequence(0.2, 0.5, 2) == pytest.approx([0.2, p1, _h(p1, 0.2, 0.5)], rel=1e-14)
    # ε = 0.05 reaches every step (and β stays β): p_1 = h(0.2; ε) with σ = √(0.16 + 0.05)
    q1 = _h(0.2, 0.2, 0.5, 0.05)
    assert q1 == pytest.approx(1.0 / (1.0 + 4.0 * math.exp(-1.0 / (0.5 * math.sqrt(0.21)))), rel=1e-15)
    assert mroueh_success_sequence(0.2, 0.5, 2, 0.05) == pytest.approx([0.2, q1, _h(q1, 0.2, 0.5, 0.05)], rel=1e-14)


def _fixed_point_reference(p_ref: float, beta: float, eps: float) -> float:
    p = p_ref
    for _ in range(100_000):
        nxt = _h(p, p_ref, beta, eps)
        if abs(nxt - p) < 1e-15:
            return nxt
        p = nxt
    raise AssertionError("reference did not converge")


@pytest.mark.parametrize("p_ref, beta, eps", [(0.2, 3.0, None), (0.4, 2.0, 0.05)])
def test_mroueh_fixed_point_defaults_and_eps(p_ref, beta, eps):
    # default ε = 0 and tol = 1e-14: the result is the limit of the written-out recursion, h(p*) = p*
    got = mroueh_fixed_point(p_ref, beta) if eps is None else mroueh_fixed_point(p_ref, beta, eps)
    want = _fixed_point_reference(p_ref, beta, 0.0 if eps is None else eps)
    assert got == pytest.approx(want, abs=1e-12) and got > p_ref


def test_mroueh_fixed_point_tol_is_strict():
    # a step of exactly tol does not stop the iteration: with tol = |p_1 − p_0| (p_0 = 0.2, p_1 = 0.97375...),
    # step 1 continues and step 2 (|p_2 − p_1| ≈ 0.026 < 0.77) returns p_2, not p_1
    p1 = float(mroueh_success_map(0.2, 0.2, 0.5))
    got = mroueh_fixed_point(0.2, 0.5, tol=abs(p1 - 0.2))
    assert got == pytest.approx(_h(_h(0.2, 0.2, 0.5), 0.2, 0.5), rel=1e-14)
    assert abs(got - p1) > 1e-3


# ---- Bay & Yearick: the group-std update size -------------------------------------------------------------------


def test_group_std_update_size_by_hand():
    # defaults (population, ε = 0): k = 1 of G = 2: σ² = 1·1/4 = ¼, σ = ½, c = ¼/½ = ½
    assert group_std_update_size(1, 2) == 0.5
    # k = 1 of G = 4, population: σ² = 1·3/16 = 0.1875, σ = √3/4 = 0.4330127; ε = 0.1: c = 0.1875/0.5330127 = 0.3517739
    assert group_std_update_size(1, 4, "population", 0.1) == pytest.approx(0.1875 / (math.sqrt(3) / 4 + 0.1),
                                                                           rel=1e-15)
    assert group_std_update_size(1, 4, "population", 0.1) == pytest.approx(0.3517739, rel=1e-6)
    # Bessel: s² = 0.1875·4/3 = ¼, s = ½; ε = 0.1: c = 0.1875/0.6 = 0.3125; ε = 0: 0.1875/0.5 = 0.375
    assert group_std_update_size(1, 4, "bessel", 0.1) == pytest.approx(0.3125, rel=1e-15)
    assert group_std_update_size(3, 4, "bessel") == pytest.approx(0.375, rel=1e-15)
    # k = 2 of G = 5, Bessel: σ² = 6/25 = 0.24, s² = 0.24·5/4 = 0.3, c = 0.24/√0.3 = 0.4381780
    assert group_std_update_size(2, 5, "bessel") == pytest.approx(0.24 / math.sqrt(0.3), rel=1e-15)
    # silent groups: k ∈ {0, G} give exactly 0 (with ε > 0 too)
    assert group_std_update_size(0, 3) == 0.0 and group_std_update_size(3, 3, "bessel", 0.5) == 0.0
