"""Policies on a TreeMDP: normalization, [B, T] log-probs, state visitation, seeded vectorized sampling."""

import math

import pytest
import torch

from rlkl.toy.mdp import TreeMDP
from rlkl.toy.policies import LogLinearPolicy, TabularPolicy, UnnormalizedPolicy


def _policies(mdp):
    return [TabularPolicy.random(mdp, seed=1), LogLinearPolicy.random(mdp, dim=3, seed=2)]


@pytest.mark.parametrize("eos", [False, True])
def test_normalized_policies_sum_to_one_and_token_logp_is_per_token(eos):
    mdp = TreeMDP.random(3, 3, 2, eos=eos, seed=0)
    for pol in _policies(mdp):
        assert torch.allclose(pol.probs().sum(-1), torch.ones(2, dtype=torch.float64), atol=1e-12)
        assert pol.log_mass().abs().max() < 1e-12
        tl = pol.token_logp()
        assert tl.shape == (2 * mdp.num_responses, 3) and tl.dtype == torch.float64
        mask = mdp.enumerate().mask.repeat(2, 1)
        assert (tl[~mask] == 0).all() and (tl[mask] < 0).all()
        # hand computation for one response: product of the node softmaxes along the path
        nlp = pol.node_log_probs().detach()
        e = mdp.enumerate()
        n = mdp.num_responses - 1
        want = sum(float(nlp[1, e.node_index[n, t], e.tokens[n, t]]) for t in range(int(e.lengths[n])))
        assert math.isclose(float(pol.sequence_logp().detach()[mdp.num_responses + n]), want, rel_tol=1e-12)


def test_state_visitation_matches_path_probabilities():
    mdp = TreeMDP.random(3, 3, 1, eos=True, seed=0)
    pol = TabularPolicy.random(mdp, seed=3)
    d = pol.state_log_visitation().exp()[0].detach()
    probs = pol.probs()[0].detach()
    e = mdp.enumerate()
    # d(s) = Σ of probabilities of the responses passing through s
    want = torch.zeros(e.num_nodes, dtype=torch.float64)
    for n in range(e.num_responses):
        for t in range(int(e.lengths[n])):
            want[e.node_index[n, t]] += probs[n]
    assert torch.allclose(d, want, atol=1e-12)


def test_unnormalized_measure_has_the_stated_mass():
    mdp = TreeMDP.random(4, 1, 1, seed=0)  # T = 1: π(x) = exp θ_x on a finite X (RPG's setting)
    pol = UnnormalizedPolicy.random(mdp, log_mass=math.log(2.5), seed=0)
    assert math.isclose(float(pol.measure().sum().detach()), 2.5, rel_tol=1e-12)
    assert torch.allclose(pol.measure()[0], pol.theta.detach()[0, 0].exp())
    assert math.isclose(float(pol.probs().sum().detach()), 1.0, rel_tol=1e-12)
    base = TabularPolicy.random(TreeMDP.random(2, 3, 1, seed=0), seed=0)
    u = UnnormalizedPolicy.from_policy(base, log_mass=math.log(3.0))
    assert math.isclose(float(u.measure().sum().detach()), 3.0, rel_tol=1e-12)


def test_sampling_is_seeded_vectorized_and_has_the_right_frequencies():
    mdp = TreeMDP.random(2, 3, 2, seed=0)
    pol = TabularPolicy.random(mdp, seed=4)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = pol.sample_groups(20000, 3, g1)
    b = pol.sample_groups(20000, 3, g2)
    assert torch.equal(a, b) and a.shape == (20000, 3)
    N = mdp.num_responses
    prompts = a // N
    assert (prompts == prompts[:, :1]).all()  # one prompt per group
    # frequencies within 5 standard errors of ρ(x)·π(y|x)
    p = (mdp.prompt_probs[:, None] * pol.probs().detach()).reshape(-1)
    counts = torch.bincount(a.reshape(-1), minlength=p.numel()).to(torch.float64)
    n = a.numel()
    se = torch.sqrt(n * p * (1 - p))
    assert ((counts - n * p).abs() <= 5 * se + 1e-9).all()


def test_with_theta_perturbed_and_errors():
    mdp = TreeMDP.random(2, 2, 1, seed=0)
    pol = TabularPolicy.random(mdp, seed=0)
    q = pol.perturbed(0.5, seed=1)
    assert not torch.equal(q.theta, pol.theta)
    assert torch.equal(pol.perturbed(0.5, seed=1).theta, q.theta)
    with pytest.raises(ValueError, match=r"logits must have shape \[P, S, V\]"):
        TabularPolicy(mdp, torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="at least one finite"):
        TabularPolicy(mdp, torch.full((1, 3, 2), float("-inf")))
    with pytest.raises(ValueError, match="features"):
        LogLinearPolicy(mdp, torch.zeros(1, 3, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="theta must have shape"):
        pol.with_theta(torch.zeros(3))
    with pytest.raises(ValueError, match="prompt must be"):
        pol.sample_groups(2, 2, torch.Generator(), prompt=3)


@pytest.mark.parametrize("shape", [(3000, 10), (5, 3), (40, 100)])
@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0, 100.0, 600.0, 1e5])
def test_node_log_softmax_matches_torch_at_every_scale(scale, shape):
    """`_log_softmax` within 4 ulp of torch.log_softmax (an independent kernel) on its own route (3000 × 10: shift
    by sg[max], no cancellation of two large numbers) and on torch's (few logits; a long last axis), −inf entries
    kept, and the same gradient."""
    from rlkl.toy.policies import _log_softmax

    g = torch.Generator().manual_seed(int(scale * 10) % 1000)
    z = torch.randn(*shape, dtype=torch.float64, generator=g) * scale
    z[::7, 2] = float("-inf")  # zero-probability tokens
    z.requires_grad_(True)
    got, want = _log_softmax(z), torch.log_softmax(z, -1)
    fin = torch.isfinite(want)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    ulp = torch.maximum(want.abs(), torch.ones_like(want)).detach() * 2.0**-52
    assert float(((got - want).abs().detach() / ulp)[fin].max()) <= 4.0
    w = torch.randn(*shape, dtype=torch.float64, generator=g).masked_fill(~fin, 0.0)
    (ga,) = torch.autograd.grad((got.masked_fill(~fin, 0.0) * w).sum(), z)
    (gb,) = torch.autograd.grad((want.masked_fill(~fin, 0.0) * w).sum(), z)
    assert float((ga - gb).abs().max()) <= 1e-13 * float(w.abs().sum(-1).max())


def test_node_log_softmax_of_a_node_without_finite_logit_is_nan_as_torch():
    from rlkl.toy.policies import _log_softmax

    z = torch.tensor([[float("-inf")] * 3, [0.0, 1.0, 2.0]], dtype=torch.float64)
    got, want = _log_softmax(z), torch.log_softmax(z, -1)
    assert torch.isnan(got[0]).all() and torch.isnan(want[0]).all()
    assert torch.allclose(got[1], want[1], rtol=0, atol=1e-15)
