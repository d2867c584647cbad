"""Tests of rlkl.divergences: k1/k2/k3, the straight-through k3+, the f-divergence family, exact and unnormalized KL.

Three kinds of test (the project's test conventions): hand-computed values (arithmetic in the comments), equality with slow references
written as Python loops over categories, and hypothesis properties. Plus peer parity with verl/TRL/OpenRLHF's KL
estimators (the peers' source, restated in docs/integrations.md), numerical stability and input validation.

Tolerances: float64 identities at 1e-12 relative (round-off); float32 paths at rtol 1e-5 / atol 1e-6 against
float64 (a float32 ulp is 6e-8; the f-divergence estimators lose a few ulps to cancellation near u = 1).
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rlkl.divergences import (F_DIVERGENCE_NAMES, exact_kl, get_f_divergence, k1, k2, k3, k3_straight_through,
                              kl_estimate, straight_through, unnormalized_kl)
from strategies import categorical_pairs, finite_floats, float_tensors, log_measures

F64 = torch.float64

# f(u) written directly in the u domain, in plain Python (the slow, obviously-correct reference).
F_REFERENCE = {
    "reverse_kl": lambda u: u * math.log(u),
    "forward_kl": lambda u: -math.log(u),
    "reverse_kl_k3": lambda u: u * math.log(u) - u + 1.0,
    "forward_kl_k3": lambda u: -math.log(u) + u - 1.0,
    "pearson": lambda u: (u - 1.0) ** 2,
    "neyman": lambda u: (u - 1.0) ** 2 / u,
    "hellinger": lambda u: (math.sqrt(u) - 1.0) ** 2,
    "jensen_shannon": lambda u: 0.5 * (u * math.log(u) - (u + 1.0) * math.log((u + 1.0) / 2.0)),
    "total_variation": lambda u: 0.5 * abs(u - 1.0),
}
ALPHAS = (-1.0, 0.5, 2.0, 0.3)


def alpha_reference(a: float):
    return lambda u: (u ** a - a * u - (1.0 - a)) / (a * (a - 1.0))


ALL_F = [(name, F_REFERENCE[name]) for name in F_REFERENCE] + [(f"alpha={a:g}", alpha_reference(a)) for a in ALPHAS]


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


# ---------------------------------------------------------------------------------------------------------------
# (1) hand-computed values


def test_k_estimators_by_hand():
    # log_ratio = 1: k1 = 1, k2 = ½·1² = 0.5, k3 = e^{-1} − 1 + 1 = 0.36787944117144233
    assert k1(t(1.0)).item() == 1.0
    assert k2(t(1.0)).item() == 0.5
    assert k3(t(1.0)).item() == pytest.approx(0.36787944117144233, rel=1e-15)
    # log_ratio = −1: k2 = 0.5, k3 = e − 1 − 1 = 0.7182818284590451
    assert k2(t(-1.0)).item() == 0.5
    assert k3(t(-1.0)).item() == pytest.approx(math.e - 2.0, rel=1e-15)
    # log_ratio = ln 2 (π = 2 π_ref): k3 = ½ − 1 + ln 2 = 0.1931471805599453
    assert k3(t(math.log(2.0))).item() == pytest.approx(0.1931471805599453, rel=1e-14)
    # log_ratio = 0: all three vanish
    for k in (k1, k2, k3):
        assert k(t(0.0)).item() == 0.0
    # kl_estimate dispatches by name
    x = t([-0.7, 0.0, 1.3])
    for name, fn in (("k1", k1), ("k2", k2), ("k3", k3)):
        assert torch.equal(kl_estimate(x, name), fn(x))


def test_k3_straight_through_by_hand():
    # verl's k3+ at log_ratio = 1: value k3(1) = 0.3679, gradient d/dl ½l² = l = 1
    # (k3's own gradient would be 1 − e^{-1} = 0.632)
    x = t(1.0).requires_grad_()
    y = k3_straight_through(x)
    (g,) = torch.autograd.grad(y, x)
    assert y.item() == pytest.approx(0.36787944117144233, rel=1e-15)
    assert g.item() == pytest.approx(1.0, rel=1e-15)
    # log_ratio = −2: value e² − 1 − 2 = 4.38905609893065, gradient −2
    x = t(-2.0).requires_grad_()
    y = kl_estimate(x, "k3", straight_through_grad=True)
    (g,) = torch.autograd.grad(y, x)
    assert y.item() == pytest.approx(math.exp(2.0) - 3.0, rel=1e-15)
    assert g.item() == pytest.approx(-2.0, rel=1e-15)
    # k1+ at 0.5: value 0.5, gradient 0.5 (k1's own gradient would be 1)
    x = t(0.5).requires_grad_()
    y = kl_estimate(x, "k1", straight_through_grad=True)
    (g,) = torch.autograd.grad(y, x)
    assert (y.item(), g.item()) == (0.5, 0.5)
    # straight_through(value, grad_source) in general: value of the first, gradient of the second
    x = t(3.0).requires_grad_()
    y = straight_through(x ** 2, 5.0 * x)
    (g,) = torch.autograd.grad(y, x)
    assert (y.item(), g.item()) == (9.0, 5.0)


def test_f_divergence_sampled_estimates_by_hand():
    # u = π/π_ref = 2 (log u = ln 2 = 0.693147); estimator f(u)/u:
    l2 = t(math.log(2.0))
    expected = {
        "reverse_kl": math.log(2.0),                                   # 2 ln 2 / 2 = 0.693147
        "forward_kl": -math.log(2.0) / 2.0,                            # −ln 2 / 2 = −0.346574
        "reverse_kl_k3": math.log(2.0) - 0.5,                          # (2 ln 2 − 1)/2 = 0.193147 (= k3(ln 2))
        "forward_kl_k3": (1.0 - math.log(2.0)) / 2.0,                  # (−ln 2 + 1)/2 = 0.153426
        "pearson": 0.5,                                                # (2 − 1)² / 2
        "neyman": 0.25,                                                # (1 − 1/2)²
        "hellinger": (1.0 - 1.0 / math.sqrt(2.0)) ** 2,                # (1 − 0.707107)² = 0.085786
        "jensen_shannon": 0.5 * (math.log(2.0) - 1.5 * math.log(1.5)),  # ½(0.693147 − 0.608198) = 0.042474
        "total_variation": 0.25,                                       # ½|2 − 1| / 2
    }
    for name, value in expected.items():
        got = get_f_divergence(name).sampled_estimate(l2).item()
        assert got == pytest.approx(value, rel=1e-13, abs=1e-15), name
    # Amari α = 2 at u = 2: f = (4 − 4 − (−1))/2 = 0.5, f/u = 0.25
    assert get_f_divergence("alpha", alpha=2.0).sampled_estimate(l2).item() == pytest.approx(0.25, rel=1e-14)


def test_exact_divergences_by_hand():
    # P = (½, ½), Q = (¼, ¾) as logits (log-probs are valid logits)
    lp, lq = t([math.log(0.5), math.log(0.5)]), t([math.log(0.25), math.log(0.75)])
    # KL(P‖Q) = ½ ln 2 + ½ ln(2/3) = ½(0.693147 − 0.405465) = 0.143841
    kl_pq = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
    assert exact_kl(lp, lq).item() == pytest.approx(kl_pq, rel=1e-14)
    assert get_f_divergence("reverse_kl").exact(lp, lq).item() == pytest.approx(kl_pq, rel=1e-14)
    # KL(Q‖P) = ¼ ln ½ + ¾ ln(3/2) = −0.173287 + 0.304099 = 0.130812 (forward_kl: f = −log u)
    kl_qp = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert get_f_divergence("forward_kl").exact(lp, lq).item() == pytest.approx(kl_qp, rel=1e-14)
    # Pearson χ² = Σ (p−q)²/q = 0.0625/0.25 + 0.0625/0.75 = 0.25 + 0.083333 = 1/3
    assert get_f_divergence("pearson").exact(lp, lq).item() == pytest.approx(1.0 / 3.0, rel=1e-14)
    # Neyman χ² = Σ (p−q)²/p = 0.0625/0.5 · 2 = 0.25
    assert get_f_divergence("neyman").exact(lp, lq).item() == pytest.approx(0.25, rel=1e-14)
    # TV = ½ Σ|p − q| = ½(0.25 + 0.25) = 0.25
    assert get_f_divergence("total_variation").exact(lp, lq).item() == pytest.approx(0.25, rel=1e-14)
    # squared Hellinger = (√.5 − .5)² + (√.5 − √.75)² = 0.0428932 + 0.0252551 = 0.0681483
    hel = (math.sqrt(0.5) - 0.5) ** 2 + (math.sqrt(0.5) - math.sqrt(0.75)) ** 2
    assert get_f_divergence("hellinger").exact(lp, lq).item() == pytest.approx(hel, rel=1e-14)


def test_unnormalized_kl_by_hand():
    # p = (1, 2), q = (1, 1) as masses: Σ p log(p/q) = 2 ln 2 = 1.386294; Σ (q − p) = 2 − 3 = −1 → 0.386294
    assert unnormalized_kl(t([0.0, math.log(2.0)]), t([0.0, 0.0])).item() == pytest.approx(2 * math.log(2) - 1,
                                                                                          rel=1e-14)
    # reversed: Σ q log(q/p) = −ln 2 = −0.693147; Σ (p − q) = +1 → 0.306853
    assert unnormalized_kl(t([0.0, 0.0]), t([0.0, math.log(2.0)])).item() == pytest.approx(1 - math.log(2), rel=1e-14)


# ---------------------------------------------------------------------------------------------------------------
# (2) slow loop references


def loop_f_divergence(f, p: list[float], q: list[float]) -> float:
    total = 0.0
    for pi, qi in zip(p, q):
        total += qi * f(pi / qi)
    return total


@given(pair=categorical_pairs())
def test_f_divergence_exact_matches_loop(pair):
    a, b = pair
    p, q = torch.softmax(a, -1).tolist(), torch.softmax(b, -1).tolist()
    log_u = torch.log_softmax(a, -1) - torch.log_softmax(b, -1)
    us = [math.exp(lu) for lu in log_u.tolist()]
    for name, f in ALL_F:
        div = get_f_divergence(name)
        ref = loop_f_divergence(f, p, q)
        assert div.exact(a, b).item() == pytest.approx(ref, rel=1e-10, abs=1e-13), name
        # the per-token sampled estimator f(u)/u is unbiased under P: Σ_x p(x)·f(u_x)/u_x = D_f(P‖Q)
        est = sum(pi * e for pi, e in zip(p, div.sampled_estimate(log_u).tolist()))
        assert est == pytest.approx(ref, rel=1e-10, abs=1e-13), name
        # f and f/u in the log domain agree with the u-domain reference entry by entry
        f_ref = t([f(u) for u in us])
        assert torch.allclose(div.f_of_log(log_u), f_ref, rtol=1e-10, atol=1e-13), name
        assert torch.allclose(div.f(t(us)), f_ref, rtol=1e-10, atol=1e-13), name
        assert torch.allclose(div.sampled_estimate(log_u), f_ref / t(us), rtol=1e-10, atol=1e-13), name


@given(pair=categorical_pairs(), batch=st.integers(1, 3))
def test_exact_kl_matches_loop_and_reduces_over_dim(pair, batch):
    a, b = pair
    p, q = torch.softmax(a, -1).tolist(), torch.softmax(b, -1).tolist()
    ref = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert exact_kl(a, b).item() == pytest.approx(ref, rel=1e-10, abs=1e-13)
    # batched along dim 0, reduced along dim 1 (and along dim 0 for the transposed layout)
    A, Bq = a.repeat(batch, 1), b.repeat(batch, 1)
    assert torch.allclose(exact_kl(A, Bq), torch.full((batch,), ref, dtype=F64), rtol=1e-10, atol=1e-13)
    assert torch.allclose(exact_kl(A.T, Bq.T, dim=0), torch.full((batch,), ref, dtype=F64), rtol=1e-10, atol=1e-13)


@given(pair=log_measures())
def test_unnormalized_kl_matches_loop(pair):
    lp, lq = pair
    ref = 0.0
    for a, b in zip(lp.tolist(), lq.tolist()):
        ref += math.exp(a) * (a - b) + math.exp(b) - math.exp(a)
    assert unnormalized_kl(lp, lq).item() == pytest.approx(ref, rel=1e-10, abs=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# (3) properties


@given(x=float_tensors((16,), -50.0, 50.0))
def test_k3_nonnegative_and_k_relations(x):
    assert bool((k3(x) >= 0).all())
    assert bool((k3(x.float()) >= 0).all())
    assert bool((k2(x) >= 0).all())
    assert torch.equal(k1(x), x)
    # k3 ≥ 0 is the inequality e^{−l} ≥ 1 − l; its exact value matches the direct formula where that is accurate
    big = x.abs() > 1e-2
    assert torch.allclose(k3(x)[big], (torch.exp(-x) - 1 + x)[big], rtol=1e-12)


@given(x=float_tensors((12,), -10.0, 10.0), est=st.sampled_from(["k1", "k3"]))
def test_straight_through_value_is_estimator_gradient_is_k2(x, est):
    x = x.requires_grad_()
    y = kl_estimate(x, est, straight_through_grad=True)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(y.detach(), kl_estimate(x.detach(), est))  # value of the estimator, bit for bit
    assert torch.allclose(g, x.detach(), rtol=1e-14, atol=0)  # gradient of k2 = ½l² is l
    if est == "k3":
        y2 = k3_straight_through(x)
        (g2,) = torch.autograd.grad(y2.sum(), x)
        assert torch.equal(y2.detach(), k3(x.detach())) and torch.allclose(g2, g)
    # k2+ is plain k2
    y3 = kl_estimate(x, "k2", straight_through_grad=True)
    (g3,) = torch.autograd.grad(y3.sum(), x)
    assert torch.equal(y3.detach(), k2(x.detach())) and torch.allclose(g3, x.detach())


@given(x=float_tensors((12,), -10.0, 10.0))
def test_own_gradients_of_k_estimators(x):
    # ∇k1 = 1, ∇k2 = l, ∇k3 = 1 − e^{−l} (k3 as a loss: on-policy E_π[(1 − π_ref/π)∇log π] = ∇KL(π_ref‖π))
    for est, grad in (("k1", torch.ones_like(x)), ("k2", x), ("k3", -torch.expm1(-x))):
        xg = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(kl_estimate(xg, est).sum(), xg)
        assert torch.allclose(g, grad, rtol=1e-12, atol=1e-15), est


@given(pair=log_measures())
def test_k3_expectation_is_unnormalized_kl(pair):
    # RPG App. D: for positive measures, E_p[k3(log p − log q)] = Σ p (q/p − 1 + log p/q) = UKL(p‖q)
    lp, lq = pair
    expectation = (lp.exp() * k3(lp - lq)).sum()
    assert expectation.item() == pytest.approx(unnormalized_kl(lp, lq).item(), rel=1e-10, abs=1e-12)
    assert unnormalized_kl(lp, lq).item() >= -1e-12
    assert unnormalized_kl(lp, lp).item() == pytest.approx(0.0, abs=1e-12)


@given(pair=categorical_pairs())
def test_unnormalized_kl_equals_kl_when_normalized(pair):
    a, b = pair
    lp, lq = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    assert unnormalized_kl(lp, lq).item() == pytest.approx(exact_kl(a, b).item(), rel=1e-10, abs=1e-13)
    assert exact_kl(a, b).item() >= -1e-15


@given(pair=categorical_pairs(), u=finite_floats(0.05, 20.0))
def test_f_divergence_properties(pair, u):
    a, b = pair
    for name, _ in ALL_F:
        div = get_f_divergence(name)
        # D_f ≥ 0 (Jensen, f convex with f(1) = 0), D_f(P‖P) = 0, f(1) = 0
        assert div.exact(a, b).item() >= -1e-12, name
        assert div.exact(a, a).item() == pytest.approx(0.0, abs=1e-14), name
        assert div.f(t(1.0)).item() == pytest.approx(0.0, abs=1e-15), name
        # f' is the derivative of f (total variation: subgradient ½ sign(u − 1); f is not differentiable at 1)
        if name == "total_variation" and abs(u - 1.0) < 1e-9:
            continue
        ug = t(u).requires_grad_()
        (g,) = torch.autograd.grad(div.f(ug), ug)
        assert div.f_prime(t(u)).item() == pytest.approx(g.item(), rel=1e-10, abs=1e-12), name
        assert div.f_prime_of_log(t(math.log(u))).item() == pytest.approx(g.item(), rel=1e-10, abs=1e-12), name


@given(pair=categorical_pairs())
def test_amari_alpha_special_cases(pair):
    a, b = pair
    D = {n: get_f_divergence(n).exact(a, b).item() for n in ("hellinger", "pearson", "neyman", "reverse_kl_k3",
                                                             "forward_kl_k3")}
    # α = ½: f = −4√u + 2u + 2 = 2(√u − 1)² → twice the squared Hellinger; α = 2: (u − 1)²/2 → ½ Pearson;
    # α = −1: (1/u + u − 2)/2 = (u − 1)²/(2u) → ½ Neyman; "alpha=0.5" names work too
    assert get_f_divergence("alpha", alpha=0.5).exact(a, b).item() == pytest.approx(2 * D["hellinger"], rel=1e-10,
                                                                                      abs=1e-14)
    assert get_f_divergence("alpha=0.5").exact(a, b).item() == pytest.approx(2 * D["hellinger"], rel=1e-10, abs=1e-14)
    assert get_f_divergence("alpha", alpha=2.0).exact(a, b).item() == pytest.approx(0.5 * D["pearson"], rel=1e-10,
                                                                                      abs=1e-14)
    assert get_f_divergence("alpha", alpha=-1.0).exact(a, b).item() == pytest.approx(0.5 * D["neyman"], rel=1e-10,
                                                                                       abs=1e-14)
    # limits α → 1 (reverse KL, k3 generator) and α → 0 (forward KL, k3 generator): error O(|α − 1|), O(|α|)
    assert get_f_divergence("alpha", alpha=1 - 1e-6).exact(a, b).item() == pytest.approx(D["reverse_kl_k3"], rel=1e-4,
                                                                                          abs=1e-8)
    assert get_f_divergence("alpha", alpha=1e-6).exact(a, b).item() == pytest.approx(D["forward_kl_k3"], rel=1e-4,
                                                                                      abs=1e-8)
    # the k3 generators give the same divergence as the plain ones for normalized distributions
    assert D["reverse_kl_k3"] == pytest.approx(get_f_divergence("reverse_kl").exact(a, b).item(), rel=1e-10, abs=1e-14)
    assert D["forward_kl_k3"] == pytest.approx(get_f_divergence("forward_kl").exact(a, b).item(), rel=1e-10, abs=1e-14)


def test_reverse_kl_k3_estimator_is_k3():
    # f(u) = u log u − u + 1 ⇒ f(u)/u = log u − 1 + 1/u = k3(log u) (FRPO Eq. 4.6)
    x = torch.linspace(-20, 20, 401, dtype=F64)
    assert torch.allclose(get_f_divergence("reverse_kl_k3").sampled_estimate(x), k3(x), rtol=1e-13, atol=1e-300)


# ---------------------------------------------------------------------------------------------------------------
# numerical stability


def test_k3_relative_accuracy_near_zero_against_mpmath():
    # k3(1e-6) = x²/2 − x³/6 + … = 4.999998333e-13: the direct formula loses ~4 digits to cancellation; the series
    # keeps full precision. Worst case on a dense grid is ~2e-13 relative, just above the 1e-3 series cutoff.
    mpmath.mp.dps = 40
    xs = [s * 10.0 ** e for e in [x / 4.0 for x in range(-40, 7)] for s in (1.0, -1.0)] + [1e-3, -1e-3, 1.0001e-3]
    got = k3(torch.tensor(xs, dtype=F64)).tolist()
    for x, g in zip(xs, got):
        exact = float(mpmath.exp(-mpmath.mpf(x)) - 1 + mpmath.mpf(x))
        assert abs(g - exact) <= 1e-12 * exact, (x, g, exact)
    assert k3(t(1e-6)).item() == pytest.approx(4.999998333333750e-13, rel=1e-12)


def test_stable_for_log_ratio_up_to_50_in_float64():
    x = torch.tensor([-50.0, -30.0, -1e-12, 0.0, 1e-12, 30.0, 50.0], dtype=F64)
    for est in ("k1", "k2", "k3"):
        assert bool(torch.isfinite(kl_estimate(x, est)).all()), est
    # k3(50) = e^{-50} − 1 + 50 = 49 (+2e-22), k3(−50) = e^{50} − 51 = 5.184705528587072e21
    assert k3(t(50.0)).item() == 49.0
    assert k3(t(-50.0)).item() == pytest.approx(math.exp(50.0) - 51.0, rel=1e-15)
    # gradients stay finite too (k3 switches between a series and the direct form with torch.where; neither branch
    # may leak an inf/nan gradient): ∇k3 = 1 − e^{−l}, ∇k3+ = l
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(k3(xg).sum(), xg)
    assert torch.allclose(g, -torch.expm1(-x), rtol=1e-12, atol=1e-15)
    (g,) = torch.autograd.grad(k3_straight_through(xg).sum(), xg)
    assert torch.equal(g, x)
    for name, _ in ALL_F:
        div = get_f_divergence(name)
        for fn in (div.f_of_log, div.f_prime_of_log, div.sampled_estimate):
            assert bool(torch.isfinite(fn(x)).all()), name
    # exact divergences with logits 50 apart stay finite and match the loop reference
    a, b = t([50.0, 0.0, -50.0]), t([-50.0, 0.0, 50.0])
    p, q = torch.softmax(a, -1).tolist(), torch.softmax(b, -1).tolist()
    assert exact_kl(a, b).item() == pytest.approx(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)), rel=1e-12)
    for name, f in ALL_F:
        if name in ("pearson", "neyman", "alpha=-1", "alpha=2"):
            continue  # χ²-type: Σ q (p/q)² has terms ~e^{200}, not representable even in float64
        assert math.isfinite(get_f_divergence(name).exact(a, b).item()), name


F32_RANGE_OK = [n for n, _ in ALL_F if n not in ("pearson", "neyman", "alpha=-1", "alpha=2")]


@given(x=float_tensors((16,), -30.0, 30.0))
def test_float32_matches_float64_within_tolerance(x):
    # float32 tolerance: rtol 1e-5, atol 1e-6 (a few ulps; near u = 1 the estimators cancel to O(l²))
    xf = x.float()
    for est in ("k1", "k2", "k3"):
        got = kl_estimate(xf, est)
        assert got.dtype == torch.float32
        assert torch.allclose(got.double(), kl_estimate(x, est), rtol=1e-5, atol=1e-6), est
    for name, _ in ALL_F:
        div = get_f_divergence(name)
        ref = div.sampled_estimate(x)
        got = div.sampled_estimate(xf)
        assert got.dtype == torch.float32
        assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-6), name


def test_float32_range_documented_in_module():
    # module docstring: float32 is safe up to |log_ratio| ~ 80 for every member except the χ² ones (and Amari α
    # with |α − ½| > ½, which are χ²-like: α = 2 is ½ Pearson, α = −1 is ½ Neyman)
    x = torch.tensor([-80.0, -40.0, 0.0, 40.0, 80.0], dtype=torch.float32)
    assert bool(torch.isfinite(k3(x)).all())
    for name in F32_RANGE_OK:
        div = get_f_divergence(name)
        for fn in (div.f_of_log, div.f_prime_of_log, div.sampled_estimate):
            assert bool(torch.isfinite(fn(x)).all()), name


# ---------------------------------------------------------------------------------------------------------------
# peer parity with verl kl_penalty, TRL and OpenRLHF (their source, restated in docs/integrations.md), formulas restated here


def verl_kl_penalty(logprob: torch.Tensor, ref_logprob: torch.Tensor, name: str) -> torch.Tensor:
    """verl ``kl_penalty`` as recorded in the peer's source (restated, not copied)."""
    ell = logprob - ref_logprob
    if name.endswith("+"):
        value = verl_kl_penalty(logprob, ref_logprob, name[:-1])
        k2_ = 0.5 * ell * ell
        return value.detach() + (k2_ - k2_.detach())
    if name in ("kl", "k1"):
        return ell
    if name in ("mse", "k2"):
        return 0.5 * ell * ell
    if name in ("low_var_kl", "k3"):
        u = torch.clamp(-ell, -20.0, 20.0)
        return torch.clamp(torch.exp(u) - u - 1.0, -10.0, 10.0)
    raise NotImplementedError(name)


def trl_k3(logp: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """TRL GRPOTrainer per-token KL (the peer's source): exp(ref − logp) − (ref − logp) − 1, no clamps."""
    return torch.exp(ref - logp) - (ref - logp) - 1.0


def openrlhf_approx_kl(logp: torch.Tensor, base: torch.Tensor, estimator: str) -> torch.Tensor:
    """OpenRLHF compute_approx_kl (the peer's source): every estimator clamped to [−10, 10]."""
    d = logp - base
    value = {"k1": d, "k2": 0.5 * d * d, "k3": torch.exp(-d) - 1 + d}[estimator]
    return torch.clamp(value, -10.0, 10.0)


@given(logp=float_tensors((10,), -8.0, -0.01), d=float_tensors((10,), -2.3, 4.0))
def test_kl_values_match_verl_trl_openrlhf_inside_clamp_range(logp, d):
    # inside verl's clamp range (|l| ≤ 20 and k3 ≤ 10, here l ∈ [−2.3, 4] gives k3 ≤ e^{2.3} − 3.3 = 6.67) the
    # values agree: rlkl does not clamp, so agreement is exact up to verl's cancellation in e^u − u − 1 near 0.
    ref = logp - d
    lr = logp - ref
    for verl_name, est in (("kl", "k1"), ("k1", "k1"), ("mse", "k2"), ("k2", "k2"), ("low_var_kl", "k3"), ("k3", "k3")):
        assert torch.allclose(kl_estimate(lr, est), verl_kl_penalty(logp, ref, verl_name), rtol=1e-12, atol=1e-15)
    assert torch.allclose(k3(lr), trl_k3(logp, ref), rtol=1e-12, atol=1e-15)
    for est in ("k1", "k2", "k3"):
        v = kl_estimate(lr, est)
        inside = v.abs() <= 10
        assert torch.allclose(v[inside], openrlhf_approx_kl(logp, ref, est)[inside], rtol=1e-12, atol=1e-15)


@given(l=float_tensors((10,), -2.0, 4.0))
def test_straight_through_matches_verl_plus_gradients(l):
    # verl "k3+" / "low_var_kl+" / "k1+": value of the estimator, gradient of ½l²; "k2+" is plain k2
    for verl_name, est in (("k3+", "k3"), ("low_var_kl+", "k3"), ("k1+", "k1"), ("k2+", "k2")):
        x1 = l.clone().requires_grad_()
        x2 = l.clone().requires_grad_()
        ours = kl_estimate(x1, est, straight_through_grad=True)
        theirs = verl_kl_penalty(x2, torch.zeros_like(x2), verl_name)
        (g1,) = torch.autograd.grad(ours.sum(), x1)
        (g2,) = torch.autograd.grad(theirs.sum(), x2)
        assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-15) and torch.allclose(g1, g2, rtol=1e-14)


def test_deliberate_difference_rlkl_does_not_clamp_k3():
    # Deliberate difference: verl clamps k3 to [−10, 10] (and its exponent to ±20); OpenRLHF clamps every estimator
    # to [−10, 10]. rlkl keeps the true value so exact expectations stay unbiased. At l = −5 (π_ref = e^5 π):
    # k3 = e^5 − 1 − 5 = 142.413159, verl and OpenRLHF report 10; at l = −30, verl's exponent clamp alone gives
    # e^{20} − 21 before the output clamp. For k1 at l = 12 OpenRLHF gives 10, verl and rlkl 12.
    logp, ref = t([-6.0]), t([-1.0])
    assert k3(logp - ref).item() == pytest.approx(math.exp(5.0) - 6.0, rel=1e-14)
    assert verl_kl_penalty(logp, ref, "k3").item() == 10.0
    assert openrlhf_approx_kl(logp, ref, "k3").item() == 10.0
    assert k1(t([12.0])).item() == 12.0 and openrlhf_approx_kl(t([12.0]), t([0.0]), "k1").item() == 10.0


# ---------------------------------------------------------------------------------------------------------------
# input validation


@pytest.mark.parametrize("fn", [k1, k2, k3, k3_straight_through, lambda x: kl_estimate(x, "k3"),
                                lambda x: get_f_divergence("pearson").sampled_estimate(x)])
def test_non_finite_and_non_float_inputs_raise(fn):
    for bad in (t([0.0, float("nan")]), t([float("inf")]), t([-float("inf"), 1.0])):
        with pytest.raises(ValueError, match="non-finite"):
            fn(bad)
    with pytest.raises(ValueError, match="floating"):
        fn(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="torch.Tensor"):
        fn([0.1, 0.2])


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="estimator='k4'"):
        kl_estimate(t([0.1]), "k4")
    with pytest.raises(ValueError, match="unknown f-divergence 'kl_reverse'"):
        get_f_divergence("kl_reverse")
    with pytest.raises(ValueError, match="needs alpha"):
        get_f_divergence("alpha")
    for a in (0.0, 1.0):
        with pytest.raises(ValueError, match="alpha must differ"):
            get_f_divergence("alpha", alpha=a)
    assert set(F_DIVERGENCE_NAMES) >= {"reverse_kl", "forward_kl", "pearson", "neyman", "hellinger",
                                       "jensen_shannon", "total_variation", "alpha"}


def test_shape_and_domain_errors():
    with pytest.raises(ValueError, match="logits_q has shape"):
        exact_kl(t([0.0, 1.0]), t([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="logits_q has shape"):
        get_f_divergence("hellinger").exact(t([0.0, 1.0]), t([0.0]))
    with pytest.raises(ValueError, match="log_q has shape"):
        unnormalized_kl(t([0.0, 1.0]), t([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="u > 0"):
        get_f_divergence("reverse_kl").f(t([1.0, 0.0]))
    with pytest.raises(ValueError, match="u > 0"):
        get_f_divergence("reverse_kl").f_prime(t([-1.0]))
