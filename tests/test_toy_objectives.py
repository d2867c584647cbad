"""Exact objectives: values against hand formulas, gradients against central finite differences."""

import math

import pytest
import torch

from rlkl.objective import Objective
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.objectives import (local_score_field, objective_gradient,
                                 objective_value, sequence_divergence, success_prob, token_f_divergence, utility)
from rlkl.toy.policies import LogLinearPolicy, TabularPolicy, UnnormalizedPolicy
from rlkl.utility import finite_group_weight


def _fd_gradient(fn, theta, h=1e-6):
    g = torch.zeros_like(theta)
    flat = g.view(-1)
    for i in range(theta.numel()):
        e = torch.zeros_like(theta).view(-1)
        e[i] = h
        e = e.view_as(theta)
        with torch.no_grad():
            flat[i] = (fn(theta + e) - fn(theta - e)) / (2 * h)
    return g


OBJECTIVES = [
    Objective("expected_reward", "reverse_kl", beta=0.7),
    Objective("arcsin", "forward_kl", beta=0.3),
    Objective("finite_group", "token_f_divergence", f_divergence="pearson", beta=0.2, group_size=5,
                  std="bessel", eps=1e-6),
    Objective("leave_in", "reverse_kl", level="local", beta=0.5, group_size=4),
    Objective("expected_reward", "forward_kl", level="local", beta=0.5),
    Objective("expected_reward", "unnormalized_reverse_kl", anchor="old", beta=0.4),
]


@pytest.mark.parametrize("obj", OBJECTIVES, ids=lambda o: f"{o.utility}-{o.regularizer}-{o.level}")
@pytest.mark.parametrize("eos", [False, True])
def test_objective_gradient_matches_finite_differences(obj, eos):
    mdp = TreeMDP.random(3, 3, 2, eos=eos, seed=2)
    pi = TabularPolicy.random(mdp, seed=0)
    ref = TabularPolicy.random(mdp, seed=1).detached()
    old = pi.perturbed(0.4, seed=2).detached()
    frozen = pi.detached()  # "local": the state distribution is held at the evaluation point
    g = objective_gradient(obj, mdp, pi, ref, old, frozen)
    fd = _fd_gradient(lambda th: float(objective_value(obj, mdp, pi.with_theta(th), ref, old, frozen)),
                      pi.theta.detach())
    assert float((g - fd).norm() / fd.norm()) < 1e-7


def test_loglinear_gradient_matches_finite_differences():
    mdp = TreeMDP.random(3, 3, 2, eos=True, seed=3)
    pi = LogLinearPolicy.random(mdp, dim=5, seed=0)
    ref = pi.with_theta(torch.zeros(5, dtype=torch.float64)).detached()
    obj = Objective("arcsin", "reverse_kl", beta=0.5)
    g = objective_gradient(obj, mdp, pi, ref)
    fd = _fd_gradient(lambda th: float(objective_value(obj, mdp, pi.with_theta(th), ref)), pi.theta.detach())
    assert float((g - fd).norm() / fd.norm()) < 1e-7


@pytest.mark.parametrize("eos", [False, True])
def test_token_wise_reverse_kl_is_the_sequence_kl_but_forward_is_not(eos):
    mdp = TreeMDP.random(3, 3, 2, eos=eos, seed=4)
    pi = TabularPolicy.random(mdp, seed=0)
    ref = TabularPolicy.random(mdp, seed=1).detached()
    seq = sequence_divergence(mdp, pi, ref, "reverse_kl")
    tok = token_f_divergence(mdp, pi, ref, "reverse_kl")
    assert torch.allclose(seq, tok, rtol=1e-12)  # chain rule, prefixes from π (FRPO arXiv 2601.10201 §3)
    fwd_seq = sequence_divergence(mdp, pi, ref, "forward_kl")
    fwd_tok = token_f_divergence(mdp, pi, ref, "forward_kl")
    assert (fwd_seq - fwd_tok).abs().max() > 1e-3  # prefixes from π, not π_ref (FRPO arXiv 2601.10201, docs/theory.md)


def test_local_gradient_differs_from_sequence_gradient_for_T_ge_2_and_agrees_for_T_1():
    for T, differ in [(1, False), (3, True)]:
        mdp = TreeMDP.random(3, T, 1, seed=5)
        pi = TabularPolicy.random(mdp, seed=0)
        ref = TabularPolicy.random(mdp, seed=1).detached()
        seq = objective_gradient(Objective("none", "reverse_kl", beta=1.0), mdp, pi, ref)
        loc = objective_gradient(Objective("none", "reverse_kl", level="local", beta=1.0), mdp, pi, ref)
        rel = float((seq - loc).norm() / seq.norm())
        assert (rel > 1e-3) if differ else (rel < 1e-12)
        # the local gradient is the field Σ_s d(s) Σ_a π δ ∇log π (PG_rev)
        pg_rev = local_score_field(mdp, pi, ref, lambda d: d)
        assert torch.allclose(-loc, pg_rev, rtol=1e-10, atol=1e-14)


def test_utilities_and_their_derivatives():
    p = torch.tensor([0.0, 0.2, 0.5, 0.9], dtype=torch.float64, requires_grad=True)
    u2 = utility(p, "finite_group", 2, "population")
    assert torch.allclose(u2, p.detach(), atol=1e-12)  # U_2(p) = p
    u3 = utility(p, "finite_group", 3, "population")
    assert torch.allclose(u3, math.sqrt(2) * p.detach(), atol=1e-12)  # U_3(p) = √2 p
    u = utility(p, "finite_group", 6, "bessel", 1e-6)
    (g,) = torch.autograd.grad(u.sum(), p)
    assert torch.allclose(g, finite_group_weight(p.detach(), 6, "bessel", 1e-6), atol=1e-12)
    a = utility(p, "arcsin")
    (ga,) = torch.autograd.grad(a.sum(), p)
    assert ga[0] == 0  # p = 0: U' infinite but ∇p = 0, product taken as 0
    assert math.isclose(float(ga[2]), 2.0, rel_tol=1e-12)  # 1/√(p(1−p)) at 1/2
    assert torch.allclose(utility(p, "leave_in", 4), 0.75 * p.detach())


def test_unnormalized_sequence_kl_is_the_mass_corrected_kl():
    mdp = TreeMDP.random(4, 1, 1, seed=0)
    pi = UnnormalizedPolicy.random(mdp, log_mass=math.log(0.7), seed=1)
    old = UnnormalizedPolicy.random(mdp, log_mass=math.log(2.5), seed=2).detached()
    p, q = pi.measure().detach()[0], old.measure().detach()[0]
    want_r = float((p * (p / q).log()).sum() + (q - p).sum())
    want_f = float((q * (q / p).log()).sum() + (p - q).sum())
    assert math.isclose(sequence_divergence(mdp, pi, old, "unnormalized_reverse_kl").item(), want_r, rel_tol=1e-12)
    assert math.isclose(sequence_divergence(mdp, pi, old, "unnormalized_forward_kl").item(), want_f, rel_tol=1e-12)
    assert math.isclose(success_prob(mdp, pi)[0].item(), float((p * mdp.rewards[0]).sum()), rel_tol=1e-12)


def test_objective_errors_are_clear():
    real = TreeMDP.random(2, 2, 1, reward="real", seed=0)
    pi = TabularPolicy.random(real, seed=0)
    with pytest.raises(ValueError, match="binary rewards"):
        objective_value(Objective("arcsin", "none"), real, pi)
    with pytest.raises(ValueError, match="needs the reference"):
        objective_value(Objective("expected_reward", "reverse_kl", beta=0.1), real, pi)
    un = UnnormalizedPolicy.random(real, log_mass=1.0, seed=0)
    with pytest.raises(ValueError, match="normalized policy"):
        objective_value(Objective("expected_reward", "reverse_kl", beta=0.1), real, un, ref=pi.detached())
    with pytest.raises(ValueError, match="utility=.log. is not one of"):
        utility(torch.tensor([0.5], dtype=torch.float64), "log")
    with pytest.raises(ValueError, match="group_size"):
        utility(torch.tensor([0.5], dtype=torch.float64), "finite_group")
