"""pytest entry point for the derivations: one test per registered identity, plus tests of the framework itself.

Every ``@identity`` in ``derivations/*.py`` becomes ``test_identity[<name>]``; a failing step fails the test with the
residual in the message.
"""

from __future__ import annotations

import math

import pytest
import sympy as sp

from derivations import MODULES, load_all
from derivations._framework import (Derivation, Identity, Softmax, StepFailed, generic_function, prove_zero,
                                    run_identity, vsum)
from derivations.kl_estimators import monte_carlo, schulman_table

REGISTRY = load_all()


@pytest.mark.parametrize(
    "name", [pytest.param(k, marks=pytest.mark.slow) if v.slow else k for k, v in REGISTRY.items()])
def test_identity(name):
    res = run_identity(REGISTRY[name])
    if res.status == "SKIP":
        pytest.skip(res.detail)
    assert res.status == "PASS", res.detail
    assert any(s.method != "text" for s in res.steps), "an identity must check at least one step"


def test_every_module_registers_identities():
    modules = {i.module.split(".")[-1] for i in REGISTRY.values()}
    assert set(MODULES) <= modules
    assert len(REGISTRY) >= 30


def test_every_identity_has_a_claim_and_a_source():
    for ident in REGISTRY.values():
        assert ident.source.strip() and ident.claim.strip(), ident.name


# --- the framework must be able to fail -------------------------------------------------------------------------


def test_wrong_identity_fails_with_residual():
    a, b = sp.symbols("a b", real=True)

    def wrong(d: Derivation):
        d.eq((a + b) ** 2, a ** 2 + b ** 2, "square without the cross term")

    res = run_identity(Identity("t.wrong", "deliberately wrong", "test", wrong, "t"))
    assert res.status == "FAIL"
    assert "residual" in res.detail and "2*a*b" in res.detail


def test_wrong_sign_in_a_gradient_identity_fails():
    pol = Softmax("p")
    q = Softmax("q")

    def wrong(d: Derivation):
        d.relations.update({**pol.relations, **q.relations})
        kl_rev = sum(pi * (sp.log(pi) - sp.log(qi)) for pi, qi in zip(pol.probs, q.probs))
        k3_loss = vsum(pi * pol.grad(qi / pi - 1 + sp.log(pi) - sp.log(qi)) for pi, qi in zip(pol.probs, q.probs))
        d.eq(k3_loss, pol.grad(kl_rev), "k3-as-loss gives the reverse KL (false)")

    res = run_identity(Identity("t.k3", "k3 loss = reverse KL", "test", wrong, "t"))
    assert res.status == "FAIL" and "residual" in res.detail


def test_relations_are_needed_for_softmax_identities():
    pol = Softmax("p")
    expr = sum(pol.probs) - 1
    assert prove_zero(expr)[0] is False
    assert prove_zero(expr, pol.relations)[0] is True


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
