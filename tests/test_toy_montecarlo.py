"""Monte Carlo runs of the same Method converge to the exact expectation: within a stated number of standard
errors at fixed seeds, error shrinking like 1/√n."""

import pytest
import torch

from rlkl.methods import get_method
from rlkl.toy.expected import expected_gradient
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.montecarlo import mc_gradient, token_logp_jacobian
from rlkl.toy.policies import TabularPolicy

Z_MAX = 5.0  # per-coordinate |z| bound; with ≤ 100 coordinates a false alarm has probability < 1e-4


def _setup(eos=False, reward="binary", off=False, seed=0):
    mdp = TreeMDP.random(3, 3, 2, eos=eos, reward=reward, seed=seed)
    pi = TabularPolicy.random(mdp, seed=seed + 1)
    ref = TabularPolicy.random(mdp, seed=seed + 2).detached()
    old = pi.perturbed(0.3, seed + 3).detached() if off else None
    return mdp, pi, old, ref


@pytest.mark.parametrize("name,eos,reward,off", [
    ("grpo", False, "binary", False), ("grpo", True, "binary", True), ("frpo", True, "binary", False),
    ("dapo", True, "real", True), ("rpg_reinforce_urkl_seq", False, "real", True),
])
def test_monte_carlo_mean_is_within_standard_errors_of_the_exact_expectation(name, eos, reward, off):
    mdp, pi, old, ref = _setup(eos, reward, off, seed=3)
    m = get_method(name)
    m = m.replace(beta=0.3) if m.beta > 0 else m
    exact = expected_gradient(m, mdp, pi, old, ref, group_size=4).grad
    mc = mc_gradient(m, mdp, pi, 4000, seed=11, behaviour=old, ref=ref, group_size=4)
    z = mc.z_scores(exact)
    assert float(z.abs().max()) < Z_MAX
    # and the error is of the size the standard errors say (not suspiciously small either)
    err2 = float(((mc.mean - exact) ** 2).sum())
    se2 = float((mc.stderr**2).sum())
    assert 0.2 * se2 < err2 < 5 * se2


def test_error_shrinks_like_one_over_sqrt_n():
    mdp, pi, old, ref = _setup(seed=5)
    m = get_method("grpo").replace(beta=0.2)
    exact = expected_gradient(m, mdp, pi, old, ref, group_size=4).grad
    J = token_logp_jacobian(pi)

    def mean_sq_error(n):
        errs = [float(((mc_gradient(m, mdp, pi, n, seed=s, ref=ref, group_size=4, jacobian=J).mean - exact) ** 2)
                      .sum()) for s in range(8)]
        return sum(errs) / len(errs)

    small, large = mean_sq_error(250), mean_sq_error(4000)
    ratio = small / large  # 1/√n error → squared error ratio 16
    assert 8 < ratio < 32


def test_same_seed_same_numbers_and_bad_input():
    mdp, pi, _, ref = _setup(seed=1)
    m = get_method("grpo")
    a = mc_gradient(m, mdp, pi, 100, seed=3, ref=ref)
    b = mc_gradient(m, mdp, pi, 100, seed=3, ref=ref)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.stderr, b.stderr)
    with pytest.raises(ValueError, match="num_groups must be >= 2"):
        mc_gradient(m, mdp, pi, 1)
