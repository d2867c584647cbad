"""pytest entry point for the derivations: one test per registered identity, plus tests of the framework itself.

Every ``@identity`` in ``derivations/*.py`` becomes ``test_identity[<name>]``; a failing step fails the test with the
residual in the message. The framework tests show that the zero test, the sum canonicalization, the directional
derivatives and the kind bookkeeping can fail.
"""

from __future__ import annotations

import math

import pytest
import sympy as sp

from . import MODULES, load_all
from ._framework import (GENERAL, Categorical, Derivation, Identity, StepFailed, canonical_sums, generic_function,
                         prove_zero, run_identity, vary, vary2)
from .kl_estimators import monte_carlo, schulman_table

REGISTRY = load_all()


@pytest.mark.parametrize(
    "name", [pytest.param(k, marks=pytest.mark.slow) if v.slow else k for k, v in REGISTRY.items()])
def test_identity(name):
    res = run_identity(REGISTRY[name])
    if res.status == "SKIP":
        pytest.skip(res.detail)
    assert res.status == "PASS", res.detail
    assert any(s.category != "text" for s in res.steps), "an identity must check at least one step"
    assert res.kind.startswith(REGISTRY[name].category)


def test_every_module_registers_identities():
    modules = {i.module.split(".")[-1] for i in REGISTRY.values()}
    assert set(MODULES) <= modules
    assert len(REGISTRY) >= 40


def test_every_identity_has_a_claim_a_paper_source_and_a_kind():
    for ident in REGISTRY.values():
        assert ident.source.strip() and ident.claim.strip(), ident.name
        assert "spec" not in ident.source.lower() and ".md" not in ident.source, ident.name
        if ident.category != GENERAL:
            assert ident.declared_kind != GENERAL


def test_the_required_claims_are_symbolic_general():
    for name in ("k3_unnormalized.k3_forward", "k3_unnormalized.k3_reverse", "loss_side_kl.k1_loss",
                 "loss_side_kl.k2_loss", "loss_side_kl.k3_loss", "rpg_surrogates.fkl", "rpg_surrogates.rkl",
                 "rpg_surrogates.ufkl", "rpg_surrogates.urkl", "future_kl.f_divergence_gradient",
                 "future_kl.sequence_kl_gradient", "finite_groups.binomial_form"):
        assert REGISTRY[name].category == GENERAL, name


# --- the framework must be able to fail -------------------------------------------------------------------------


def _run(func, **kw):
    return run_identity(Identity("t.x", "test", "test", func, "t", **kw))


def test_wrong_identity_fails_with_residual():
    a, b = sp.symbols("a b", real=True)
    res = _run(lambda d: d.eq((a + b) ** 2, a ** 2 + b ** 2, "square without the cross term"))
    assert res.status == "FAIL"
    assert "residual" in res.detail and "2*a*b" in res.detail


def test_wrong_sign_in_a_general_gradient_identity_fails():
    cat = Categorical()
    p, dp, q = cat.base("p"), cat.base("dp", positive=False), cat.base("q")

    def wrong(d: Derivation):
        d.relations.update({**cat.normalized(p), **cat.normalized(q), **cat.tangent(dp)})
        kl_rev = cat.expect(p, lambda a: sp.log(p[a]) - sp.log(q[a]))
        k3 = cat.expect(p, lambda a: vary(q[a] / p[a] - 1 + sp.log(p[a]) - sp.log(q[a]), {p: dp}))
        d.eq(k3, vary(kl_rev, {p: dp}), "k3-as-loss gives the reverse KL (false)")

    res = _run(wrong)
    assert res.status == "FAIL" and "residual" in res.detail


def test_sum_relations_are_needed_and_sums_do_not_cancel_wrongly():
    cat = Categorical()
    p, x = cat.base("p"), cat.base("x", positive=False)
    assert prove_zero(cat.sum(lambda a: p[a]) - 1)[0] is False
    assert prove_zero(cat.sum(lambda a: p[a]) - 1, cat.normalized(p))[0] is True
    # Σ x² ≠ (Σ x)², Σ_a x_a ≠ n·x_1, and a dummy renaming is harmless
    assert not prove_zero(cat.sum(lambda a: x[a] ** 2) - cat.sum(lambda a: x[a]) ** 2)[0]
    assert not prove_zero(cat.sum(lambda a: x[a]) - cat.n * x[1])[0]
    b = sp.Symbol("b", integer=True)
    assert prove_zero(cat.sum(lambda a: x[a] ** 2) - sp.Sum(x[b] ** 2, (b, 1, cat.n)))[0]


def test_sum_ranges_boundary_terms_and_shifts():
    T = sp.Symbol("T", integer=True, positive=True)
    t = sp.Symbol("t", integer=True)
    c = sp.IndexedBase("c")
    assert prove_zero(sp.Sum(c[t], (t, 1, T + 1)) - sp.Sum(c[t], (t, 2, T)) - c[1] - c[T + 1])[0]
    assert not prove_zero(sp.Sum(c[t], (t, 1, T + 1)) - sp.Sum(c[t], (t, 2, T)) - c[1])[0]       # c_{T+1} missing
    assert prove_zero(sp.Sum(c[t], (t, 1, T)) - sp.Sum(c[t + 1], (t, 0, T - 1)))[0]               # re-indexed
    assert not prove_zero(sp.Sum(c[t], (t, 1, T)) - sp.Sum(c[t + 1], (t, 0, T)))[0]               # off by one
    can = canonical_sums(sp.Sum(3 * c[t] * T, (t, 1, T)))
    assert can == 3 * T * sp.Sum(c[sp.Symbol("_k1", integer=True)], (sp.Symbol("_k1", integer=True), 1, T))


def test_binomial_sums_with_symbolic_group_size():
    G, S = sp.Symbol("G", integer=True, positive=True), sp.Symbol("S", integer=True)
    p = sp.Symbol("p", positive=True)
    lhs = sp.Sum(sp.binomial(G - 1, S - 1) * p ** S, (S, 1, G))
    assert prove_zero(lhs - sp.Sum(sp.binomial(G, S) * S / G * p ** S, (S, 1, G)))[0]
    assert not prove_zero(lhs - sp.Sum(sp.binomial(G, S) * S / (G + 1) * p ** S, (S, 1, G)))[0]


def test_vary_is_the_directional_derivative():
    x, y, dx, dy = sp.symbols("x y dx dy", positive=True)
    f = x ** 2 * sp.log(y)
    assert prove_zero(vary(f, {x: dx, y: dy}) - (sp.diff(f, x) * dx + sp.diff(f, y) * dy))[0]
    assert not prove_zero(vary(f, {x: dx, y: dy}) - sp.diff(f, x) * dx)[0]
    u, v, w = sp.symbols("u v w")
    second = vary2(x ** 3, {x: u}, {x: v}, {x: w})
    assert prove_zero(second - (6 * x * u * v + 3 * x ** 2 * w))[0]


def test_generic_function_identities_hold_for_any_f_and_wrong_ones_fail():
    f, fp = generic_function("f")
    x = sp.Symbol("x", positive=True)
    assert prove_zero(sp.diff(f(x ** 2), x) - 2 * x * fp(x ** 2))[0]
    assert not prove_zero(sp.diff(f(x ** 2), x) - x * fp(x ** 2))[0]


def test_numeric_and_exact_steps_require_a_reason_and_can_fail():
    d = Derivation()
    with pytest.raises(ValueError):
        d.eq_numeric(1.0, 1.0, "no reason", atol=1e-9, reason="")
    with pytest.raises(StepFailed):
        d.eq_numeric(1.0, 1.1, "too far", atol=1e-3, reason="test")
    x = sp.Symbol("x")
    with pytest.raises(StepFailed):
        d.eq_exact(x ** 2, 2 * x, "only at x=2", points=[{x: 2}, {x: 3}], reason="test")
    with pytest.raises(StepFailed):
        d.ne(x ** 2, x * x, "not a counterexample", at={x: 3})


def test_assumption_false_fails():
    d = Derivation()
    with pytest.raises(StepFailed):
        d.assume(sp.Integer(1) < 0, "one is negative")


def test_kinds_are_enforced():
    x = sp.Symbol("x")
    numeric_in_general = _run(lambda d: (d.eq(x, x, "ok"), d.eq_numeric(1.0, 1.0, "n", atol=1e-9, reason="r")))
    assert numeric_in_general.status == "FAIL" and "kind mismatch" in numeric_in_general.detail
    exact_in_general = _run(lambda d: d.eq_exact(x, x, "e", points=[{x: 1}], reason="r"))
    assert exact_in_general.status == "FAIL" and "kind mismatch" in exact_in_general.detail
    ok_instance = _run(lambda d: d.eq_exact(x, x, "e", points=[{x: 1}], reason="r"), category="symbolic-instance",
                       sizes="x = 1")
    assert ok_instance.status == "PASS" and ok_instance.kind == "symbolic-instance (x = 1)"
    no_counterexample = _run(lambda d: d.eq(x, x, "ok"), category="counterexample")
    assert no_counterexample.status == "FAIL" and "kind mismatch" in no_counterexample.detail
    numeric = _run(lambda d: d.eq_numeric(1.0, 1.0, "n", atol=1e-9, reason="r"), category="numeric")
    assert numeric.status == "PASS" and numeric.kind == "numeric (1e-09)"


# --- schulman_table ----------------------------------------------------------------------------------------------


def test_schulman_table_values_and_types():
    t = schulman_table(1.0)
    assert set(t) == {"k1", "k2", "k3"}
    for v in t.values():
        assert isinstance(v[0], float) and isinstance(v[1], float)
    assert t["k1"] == (0.0, 2.0)
    assert t["k2"][0] == pytest.approx(0.25, rel=1e-15) and t["k2"][1] == pytest.approx(math.sqrt(3), rel=1e-15)
    assert t["k3"][1] == pytest.approx(2 * math.sqrt(math.e - 2), rel=1e-14)
    small = schulman_table(0.1)
    assert small["k1"][1] == pytest.approx(20.0, rel=1e-14)
    assert small["k2"][0] == pytest.approx(0.0025, rel=1e-14)
    # tiny μ: the k3 ratio tends to √2 without cancellation
    assert schulman_table(1e-7)["k3"][1] == pytest.approx(math.sqrt(2), rel=1e-9)
    assert schulman_table(-1.0) == t


@pytest.mark.parametrize("bad", [0.0, float("nan"), float("inf")])
def test_schulman_table_rejects_degenerate_mu(bad):
    with pytest.raises(ValueError, match="mu"):
        schulman_table(bad)


@pytest.mark.parametrize("mu", [0.1, 1.0])
def test_schulman_table_matches_monte_carlo_within_standard_errors(mu):
    n = 400_000
    mc = monte_carlo(mu, n=n, seed=123)
    kl = mu ** 2 / 2
    for name, (bias, std) in schulman_table(mu).items():
        assert abs(mc[name]["mean"] - kl * (1 + bias)) <= 4 * mc[name]["se_mean"], name
        assert abs(mc[name]["var"] - (kl * std) ** 2) <= 4 * mc[name]["se_var"], name
