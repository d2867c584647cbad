"""Checks added for the mutmut survivors of rlkl/divergences.py (docs/mutation.md, "mutmut: rlkl/divergences.py").

Each test states the documented behaviour it pins; references are hand-computed (arithmetic in comments) or written
here in 50-digit mpmath from the textbook formulas in u = P/Q, independently of rlkl's log-domain forms. None refers
to a mutant.
"""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import pytest
import torch

from rlkl import divergences as dv
from rlkl.divergences import (F_DIVERGENCE_NAMES, FDivergence, exact_kl, get_f_divergence, k3, kl_estimate,
                              monte_carlo_kl, rao_blackwell_kl, unnormalized_kl)

mp = mpmath.mp


def t(x, **kw):
    return torch.tensor(x, dtype=torch.float64, **kw)


def _alpha(a):
    a = mpmath.mpf(a)
    return (lambda u: (u ** a - a * u - (1 - a)) / (a * (a - 1)), lambda u: (u ** (a - 1) - 1) / (a - 1))


# name: (f(u), f'(u)) straight from the definitions
F_MP = {
    "reverse_kl": (lambda u: u * mpmath.log(u), lambda u: mpmath.log(u) + 1),
    "forward_kl": (lambda u: -mpmath.log(u), lambda u: -1 / u),
    "reverse_kl_k3": (lambda u: u * mpmath.log(u) - u + 1, lambda u: mpmath.log(u)),
    "forward_kl_k3": (lambda u: -mpmath.log(u) + u - 1, lambda u: 1 - 1 / u),
    "pearson": (lambda u: (u - 1) ** 2, lambda u: 2 * (u - 1)),
    "neyman": (lambda u: (u - 1) ** 2 / u, lambda u: 1 - 1 / u ** 2),
    "hellinger": (lambda u: (mpmath.sqrt(u) - 1) ** 2, lambda u: 1 - 1 / mpmath.sqrt(u)),
    "jensen_shannon": (lambda u: (u * mpmath.log(u) - (u + 1) * mpmath.log((u + 1) / 2)) / 2,
                       lambda u: mpmath.log(2 * u / (u + 1)) / 2),
    "total_variation": (lambda u: abs(u - 1) / 2, lambda u: mpmath.sign(u - 1) / 2),
    "alpha=0.5": _alpha(0.5), "alpha=2": _alpha(2), "alpha=-1": _alpha(-1), "alpha=0.3": _alpha(0.3),
    "alpha=0.99": _alpha(0.99), "alpha=1.5": _alpha(1.5), "alpha=30": _alpha(30), "alpha=-20": _alpha(-20),
}
BUILT_IN = [n for n in F_DIVERGENCE_NAMES if n != "alpha"]


def _mp_limit(fn, to_zero):
    """lim fn(u) as u → 0⁺ (``to_zero``) or u → ∞, in 60 digits: fn at u = 10^∓2000 and 10^∓4000; if the two
    differ by more than 1e-9 the limit is infinite (every member's limit is O(1) or diverges like a power or log)."""
    with mp.workdps(60):
        a, b = (fn(mpmath.mpf(10) ** (-e if to_zero else e)) for e in (2000, 4000))
    if abs(b - a) > 1e-9:
        return math.copysign(math.inf, b)
    return float(b)


# ---------------------------------------------------------------------------------------------------------------
# the registry: names, the limits at the support boundary, the centred derivative


@pytest.mark.parametrize("name", BUILT_IN)
def test_registry_name_round_trips(name):
    assert get_f_divergence(name).name == name


def test_alpha_names():
    assert get_f_divergence("alpha", 0.5).name == "alpha=0.5"
    assert get_f_divergence("alpha=2").name == "alpha=2" and get_f_divergence("alpha=-1.5").name == "alpha=-1.5"
    # everything after the first "=" is the number: "alpha=0.5=2" is not a number (not α = 0.5, 2 or 1)
    for bad in ("alpha=0.5=2", "alpha=1=0.5"):
        with pytest.raises(ValueError, match="must be a number"):
            get_f_divergence(bad)


@pytest.mark.parametrize("name", list(F_MP))
def test_exact_with_one_sided_zero_mass_uses_the_limits(name):
    # two cases, so that a finite limit is never hidden behind an infinite one:
    # (a) P = (0, ½, ½), Q = (¼, ¼, ½): Σ Q f(P/Q) = ¼ f(0) + ¼ f(2) + ½ f(1) = ¼ f(0) + ¼ f(2)
    # (b) P = (½, ½), Q = (1, 0): 1·f(½) + ½·lim_{u→∞} f(u)/u
    f = F_MP[name][0]
    div = get_f_divergence(name)
    with mp.workdps(50):
        f0 = _mp_limit(f, True)
        f_inf = _mp_limit(lambda u: f(u) / u, False)
        want_a = 0.25 * f0 + 0.25 * float(f(mpmath.mpf(2)))
        want_b = float(f(mpmath.mpf(0.5))) + 0.5 * f_inf
    got_a = div.exact(t([-math.inf, 0.0, 0.0]), t([0.0, 0.0, math.log(2.0)])).item()
    got_b = div.exact(t([0.0, 0.0]), t([0.0, -math.inf])).item()
    for got, want in ((got_a, want_a), (got_b, want_b)):
        if math.isinf(want):
            assert got == want
        else:
            assert got == pytest.approx(want, rel=1e-13, abs=1e-300)


@pytest.mark.parametrize("name", list(F_MP))
@pytest.mark.parametrize("log_u", [1e-20, -1e-20, 1e-9, -1e-9, 0.7, -0.7])
def test_f_prime_centered_has_no_cancellation_near_one(name, log_u):
    # f'(u) − f'(1) in 50 digits; near u = 1 it is ≈ f''(1)·log u (e.g. reverse KL: 1e-20, not (1 + 1e-20) − 1 = 0)
    fp = F_MP[name][1]
    with mp.workdps(50):
        x = float(log_u)
        want = float(fp(mpmath.exp(mpmath.mpf(x))) - fp(mpmath.mpf(1)))
    got = get_f_divergence(name).f_prime_centered(t([x])).item()
    assert got == pytest.approx(want, rel=1e-14)


def _custom(**kw):
    # reverse KL written without the optional fields: f = u log u, f' = log u + 1, f/u = log u
    return FDivergence("mine", lambda l: torch.exp(l) * l, lambda l: l + 1.0, lambda l: l, "u log u", **kw)


def test_custom_divergence_without_optional_fields():
    div = _custom()
    # f'(u) − f'(1) as the difference: at log u = 0.5: (0.5 + 1) − (0 + 1) = 0.5
    assert div.f_prime_centered(t([0.5, -2.0])).tolist() == [0.5, -2.0]
    # full support: no limit is needed, so the missing f_at_zero / f_over_u_at_inf are never asked for.
    # P = (½, ½), Q = (¼, ¾): ½ log 2 + ½ log(2/3)
    got = div.exact(t([0.0, 0.0]), t([0.0, math.log(3.0)])).item()
    assert got == pytest.approx(0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0), rel=1e-14)
    with pytest.raises(ValueError, match="'mine' defines no f_at_zero"):
        div.exact(t([-math.inf, 0.0]), t([0.0, 0.0]))
    with pytest.raises(ValueError, match="'mine' defines no f_over_u_at_inf"):
        div.exact(t([0.0, 0.0]), t([0.0, -math.inf]))


def test_f_and_f_prime_refuse_u_zero():
    div = get_f_divergence("reverse_kl")
    for fn in (div.f, div.f_prime):
        with pytest.raises(ValueError, match="u must be > 0"):
            fn(t([1.0, 0.0]))


# ---------------------------------------------------------------------------------------------------------------
# exact divergences at extreme but valid inputs, values and gradients against mpmath


def _mp_exact_and_grad(name, zp, zq):
    """D = Σ Q f(P/Q) and its gradient in both logit vectors, in 50 digits.

    ∂D/∂z_p,k = P_k (f'(u_k) − Σ_x P_x f'(u_x)); ∂D/∂z_q,k = Q_k (g_k − Σ_x Q_x g_x), g = f(u) − u f'(u)."""
    f, fp = F_MP[name]
    with mp.workdps(50):
        zp, zq = [mpmath.mpf(z) for z in zp], [mpmath.mpf(z) for z in zq]
        sp, sq = sum(mpmath.exp(z) for z in zp), sum(mpmath.exp(z) for z in zq)
        p, q = [mpmath.exp(z) / sp for z in zp], [mpmath.exp(z) / sq for z in zq]
        u = [a / b for a, b in zip(p, q)]
        d = sum(b * f(x) for b, x in zip(q, u))
        ep = sum(a * fp(x) for a, x in zip(p, u))
        g = [f(x) - x * fp(x) for x in u]
        eq = sum(b * y for b, y in zip(q, g))
        return float(d), [float(a * (fp(x) - ep)) for a, x in zip(p, u)], [float(b * (y - eq)) for b, y in zip(q, g)]


# log u per category: +L, −L, and a moderate one (the first two categories carry little mass on one side)
EXTREME = {400: ([0.0, -400.0, -1.0], [-400.0, 0.0, -1.5]), 700: ([0.0, -700.0, -1.0], [-700.0, 0.0, -1.5])}


@pytest.mark.parametrize("name", list(F_MP))
@pytest.mark.parametrize("big", list(EXTREME))
def test_exact_at_extreme_log_ratios(name, big):
    zp, zq = EXTREME[big]
    want, gp_want, gq_want = _mp_exact_and_grad(name, zp, zq)
    if not math.isfinite(want) or abs(want) > 1e300:
        pytest.skip("the divergence itself leaves float64")
    lp, lq = t(zp, requires_grad=True), t(zq, requires_grad=True)
    d = get_f_divergence(name).exact(lp, lq)
    assert d.item() == pytest.approx(want, rel=1e-13)
    gp, gq = torch.autograd.grad(d, (lp, lq))
    scale = max(abs(x) for x in gp_want + gq_want)
    for got, ref in ((gp, gp_want), (gq, gq_want)):
        assert torch.isfinite(got).all()
        for a, b in zip(got.tolist(), ref):
            assert abs(a - b) <= 1e-12 * abs(b) + 1e-13 * scale


@pytest.mark.parametrize("name", ["reverse_kl", "pearson", "neyman", "alpha=0.3"])
def test_exact_reduces_only_the_category_axis(name):
    div = get_f_divergence(name)
    rows_p = [[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]]
    rows_q = [[0.5, 0.0, 0.0], [0.0, 1.0, -2.0]]
    each = [div.exact(t(a), t(b)).item() for a, b in zip(rows_p, rows_q)]
    assert div.exact(t(rows_p), t(rows_q)).tolist() == pytest.approx(each, rel=1e-15)
    assert div.exact(t(rows_p).T, t(rows_q).T, dim=0).tolist() == pytest.approx(each, rel=1e-15)
    kl = [exact_kl(t(a), t(b)).item() for a, b in zip(rows_p, rows_q)]
    assert exact_kl(t(rows_p).T, t(rows_q).T, dim=0).tolist() == pytest.approx(kl, rel=1e-15)
    ukl = [unnormalized_kl(t(a), t(b)).item() for a, b in zip(rows_p, rows_q)]
    assert unnormalized_kl(t(rows_p), t(rows_q)).tolist() == pytest.approx(ukl, rel=1e-15)
    assert unnormalized_kl(t(rows_p).T, t(rows_q).T, dim=0).tolist() == pytest.approx(ukl, rel=1e-15)


def test_logit_validation_names_the_argument_and_checks_every_slice():
    good = t([[0.0, 1.0], [1.0, 0.0]])
    one_row_masked = t([[0.0, 1.0], [-math.inf, -math.inf]])
    for fn in (exact_kl, get_f_divergence("hellinger").exact):
        with pytest.raises(ValueError, match="logits_p has a slice along dim=-1 whose logits are all −inf"):
            fn(one_row_masked, good)
        for bad in (math.nan, math.inf):
            with pytest.raises(ValueError, match="logits_p contains nan or"):
                fn(t([[0.0, bad], [1.0, 0.0]]), good)
            with pytest.raises(ValueError, match="logits_q contains nan or"):
                fn(good, t([[0.0, bad], [1.0, 0.0]]))
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="log_p contains nan or"):
            unnormalized_kl(t([0.0, bad]), t([0.0, 0.0]))


# ---------------------------------------------------------------------------------------------------------------
# k2+, k3's autograd forms


def test_k2_plus_is_plain_k2_even_when_k2_overflows():
    # ½·(1e200)² = 5e399 > float64 max: k2 = inf; the straight-through sum inf + (inf − inf) would give nan
    x = t([1e200, 3.0])
    assert kl_estimate(x, "k2", straight_through_grad=True).tolist() == [math.inf, 4.5]


def test_k3_double_backward():
    # k3'(x) = 1 − e^{−x}, k3''(x) = e^{−x}: at x = (−2, 0.1, 3)
    x = t([-2.0, 0.1, 3.0], requires_grad=True)
    (g,) = torch.autograd.grad(k3(x).sum(), x, create_graph=True)
    want = [1 - math.exp(2.0), -math.expm1(-0.1), 1 - math.exp(-3.0)]
    assert g.tolist() == pytest.approx(want, rel=1e-15)
    (h,) = torch.autograd.grad(g.sum(), x)
    assert h.tolist() == pytest.approx([math.exp(2.0), math.exp(-0.1), math.exp(-3.0)], rel=1e-15)


def test_k3_under_torch_func():
    x = t([-2.0, 0.1, 3.0])
    # value under vmap (of the kernel: k3's input check reads values), gradient under grad / jacrev:
    # k3(x) = e^{−x} − 1 + x, k3'(x) = 1 − e^{−x}
    assert torch.func.vmap(dv._k3)(x).tolist() == pytest.approx([math.exp(2) - 3, math.exp(-0.1) - 0.9,
                                                             math.exp(-3) + 2], rel=1e-15)
    want = [1 - math.exp(2.0), -math.expm1(-0.1), 1 - math.exp(-3.0)]
    assert torch.func.grad(lambda z: k3(z).sum())(x).tolist() == pytest.approx(want, rel=1e-15)
    assert torch.func.jacrev(k3)(x).diagonal().tolist() == pytest.approx(want, rel=1e-15)


# ---------------------------------------------------------------------------------------------------------------
# Dekker's product: hi + lo is the exact product


@pytest.mark.parametrize("a", [0.3, -0.7, 0.99, 1.0 / 3.0, 29.0, -21.0])
def test_product_is_exact_in_float64(a):
    z = t([1e-3, -0.37, 5.5, -123.456, 699.9, -700.0, 1234.5678])
    hi, lo = dv._product(a, z)
    for h, l, x in zip(hi.tolist(), lo.tolist(), z.tolist()):
        assert Fraction(h) + Fraction(l) == Fraction(a) * Fraction(x)


def test_product_with_a_low_part():
    # (a + a_lo)·z with a_lo = 2^-30: hi + lo within 2^-75 relative of the exact value in float64 (a_lo·z is one
    # rounded product added to Dekker's exact low part) and within 2^-45 for float32 inputs (formed in float64,
    # split in two float32 halves); a_lo's own share is 2^-30/0.3 ≈ 3e-9 relative, far above both tolerances
    a, a_lo = 0.3, 2.0 ** -30
    for dtype, tol in ((torch.float64, 2.0 ** -75), (torch.float32, 2.0 ** -45)):
        z = torch.tensor([1e-3, -0.37, 5.5, -123.456, 80.25], dtype=dtype)
        hi, lo = dv._product(a, z, a_lo)
        for h, l, x in zip(hi.tolist(), lo.tolist(), z.tolist()):
            exact = (Fraction(a) + Fraction(a_lo)) * Fraction(x)
            assert abs(Fraction(h) + Fraction(l) - exact) <= tol * abs(exact)


# ---------------------------------------------------------------------------------------------------------------
# sequence-level KL estimators


def test_rao_blackwell_and_monte_carlo_kl_hand_computed():
    # B = 2 sequences, T = 3 steps, V = 4 tokens; π uniform at every state, π_ref puts e^1/(e + 3) on token 0
    logits = torch.zeros(2, 3, 4, dtype=torch.float64)
    ref = torch.zeros(2, 3, 4, dtype=torch.float64)
    ref[..., 0] = 1.0
    mask = torch.tensor([[True, True, False], [True, False, False]])
    # KL(uniform‖ref) per state = Σ ¼ (log ¼ − log ref) = log(¼) − ¼(1 − 4 log(e + 3)) ... written out:
    zr = math.e + 3.0
    per_state = 0.25 * (math.log(0.25) - (1.0 - math.log(zr))) + 0.75 * (math.log(0.25) + math.log(zr))
    assert rao_blackwell_kl(logits, ref, mask).tolist() == pytest.approx([2 * per_state, per_state], rel=1e-14)
    logp = t([[-1.0, -2.0, -3.0], [-0.5, -0.25, -4.0]])
    logp_ref = t([[-1.5, -1.0, 0.0], [-1.0, -1.0, -1.0]])
    # row 1: (−1 + 1.5) + (−2 + 1) = −0.5 (t = 3 masked); row 2: (−0.5 + 1) = 0.5
    assert monte_carlo_kl(logp, logp_ref, mask).tolist() == [-0.5, 0.5]


def test_sequence_kl_masks_are_checked():
    logits = torch.zeros(2, 3, 4, dtype=torch.float64)
    logp = torch.zeros(2, 3, dtype=torch.float64)
    for bad in (torch.ones(2, 3, dtype=torch.float64), torch.ones(3, 2, dtype=torch.bool), [[True] * 3] * 2,
                torch.ones(2, 3, 4, dtype=torch.bool)):
        with pytest.raises(ValueError, match="mask must be a bool tensor"):
            rao_blackwell_kl(logits, logits, bad)
        with pytest.raises(ValueError, match="mask must be a bool tensor"):
            monte_carlo_kl(logp, logp, bad)


# ---------------------------------------------------------------------------------------------------------------
# every stable form on a dense grid through its branch points, against mpmath


def _grid() -> list[float]:
    """Every branch point of the forms (|δ| = 0.5, 1, 2, 3, 4, 40 and the α cut-offs) and its float neighbours,
    401 uniform points in [−45, 45], 60 log-spaced magnitudes in [1e-12, 700]; both signs."""
    cuts = [0.5, 1.0, 2.0, 2.0 / 0.7, 2.0 / 0.3, 2.0 / 0.99, 2.0 / 1.01, 3.0, 4.0, 40.0, 41.0, 1.0 / 0.7, 1.0 / 29.0]
    pts = set()
    for c in cuts:
        for x in (c, math.nextafter(c, 0.0), math.nextafter(c, math.inf)):
            pts.update((x, -x))
    pts.update(-45.0 + 0.225 * i for i in range(401))
    pts.update(s * 10.0 ** (-12 + 14.845 * i / 59) for i in range(60) for s in (1.0, -1.0))
    return sorted(p for p in pts if p != 0.0)


GRID = _grid()
U64 = 2.0 ** -53


@pytest.mark.parametrize("name", [n for n in F_MP if n not in ("alpha=30", "alpha=-20")])
def test_every_form_is_accurate_through_its_branch_points(name):
    # relative error vs 50-digit mpmath of f(u), f(u)/u and f'(u) − f'(1) at u = e^δ, δ on GRID (float64)
    f, fp = F_MP[name]
    div = get_f_divergence(name)
    x = t(GRID)
    got = {"f": div.f_of_log(x).tolist(), "f/u": div.f_over_u_of_log(x).tolist(),
           "f'": div.f_prime_centered(x).tolist()}
    worst = {k: 0.0 for k in got}
    with mp.workdps(50):
        fp1 = fp(mpmath.mpf(1))
        for i, d in enumerate(GRID):
            u = mpmath.exp(mpmath.mpf(d))
            for k, ref in (("f", f(u)), ("f/u", f(u) / u), ("f'", fp(u) - fp1)):
                if ref == 0 or not 2.3e-308 < abs(ref) < 1.7e308:
                    continue
                err = float(abs((mpmath.mpf(got[k][i]) - ref) / ref)) if math.isfinite(got[k][i]) else math.inf
                worst[k] = max(worst[k], err)
    # 8 u: the documented float64 bound of most rows (docs/precision.md); Jensen–Shannon's and the Amari forms'
    # near-1 pieces are documented at 16 u
    bound = 16 * U64 if name.startswith(("alpha", "jensen")) else 8 * U64
    assert max(worst.values()) <= bound, worst
