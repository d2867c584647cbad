"""Exact expected gradients: every route equals a brute-force Python loop; routes agree; clear errors."""

import pytest
import torch

from rlkl.components import AggMode, Aggregation, GroupStandardized, Raw, Reinforce
from rlkl.objective import Objective
from rlkl.methods import get_method
from rlkl.losses import aggregate, reinforce_loss
from rlkl.toy.expected import LossSpec, brute_force_expected_gradient, expected_gradient
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.objectives import objective_gradient
from rlkl.toy.policies import TabularPolicy


def _setup(V=2, T=2, P=1, eos=False, reward="binary", seed=0, off=False):
    mdp = TreeMDP.random(V, T, P, eos=eos, reward=reward, seed=seed)
    pi = TabularPolicy.random(mdp, seed=seed + 1)
    ref = TabularPolicy.random(mdp, seed=seed + 2).detached()
    old = pi.perturbed(0.4, seed + 3).detached() if off else None
    return mdp, pi, old, ref


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name,eos,off", [
    ("grpo", False, False), ("grpo", True, True), ("frpo", True, False), ("dapo", True, False),
    ("grpo_k1_reward", False, True), ("rpg_reinforce_rkl", False, True), ("reinforce", True, True),
])
def test_exact_expectation_equals_brute_force_loop(name, eos, off):
    mdp, pi, old, ref = _setup(V=3 if eos else 2, T=2, eos=eos, off=off, seed=3)
    m = get_method(name)
    m = m.replace(beta=0.3) if m.beta > 0 else m
    bf = brute_force_expected_gradient(m, mdp, pi, old, ref, group_size=2)
    eg = expected_gradient(m, mdp, pi, old, ref, group_size=2)
    assert _rel(eg.grad, bf) < 1e-12, eg.route


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "frpo", "rpg_urkl", "grpo_is_k3"])
@pytest.mark.parametrize("off", [False, True])
def test_tuple_enumeration_and_binomial_route_agree_to_1e12(name, off):
    mdp, pi, old, ref = _setup(V=2, T=2, P=2, off=off, seed=5)
    m = get_method(name).replace(beta=0.2) if get_method(name).beta > 0 else get_method(name)
    tup = expected_gradient(m, mdp, pi, old, ref, group_size=3, route="tuples")
    binom = expected_gradient(m, mdp, pi, old, ref, group_size=3, route="exchangeable", class_by="reward")
    resp = expected_gradient(m, mdp, pi, old, ref, group_size=3, route="exchangeable", class_by="response")
    assert binom.route == "exchangeable[reward]"
    assert _rel(binom.grad, tup.grad) < 1e-12
    assert _rel(resp.grad, tup.grad) < 1e-12
    assert torch.allclose(binom.coef, tup.coef, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("G,std,eps", [(2, "population", 0.0), (7, "bessel", 1e-6), (16, "population", 0.1),
                                       (40, "bessel", 1e-4)])
def test_binomial_route_is_exact_for_any_group_size(G, std, eps):
    """GRPO's expected update = w_G(p)∇p for any G (FRPO spec I3), far beyond what tuples can enumerate."""
    mdp, pi, _, _ = _setup(V=3, T=3, P=2, seed=7)
    m = get_method("no_kl").replace(advantage=GroupStandardized(std, eps), policy_loss=Reinforce(),
                                    aggregation=Aggregation(AggMode.SEQ_MEAN_TOKEN_SUM))
    eg = expected_gradient(m, mdp, pi, group_size=G)
    want = -objective_gradient(Objective("finite_group", "none", group_size=G, std=std, eps=eps), mdp, pi)
    assert eg.route == "exchangeable[reward]"
    assert _rel(eg.grad, want) < 1e-10


def test_per_sample_route_matches_tuples_for_row_separable_losses():
    mdp, pi, old, ref = _setup(V=3, T=2, P=2, reward="real", seed=9, off=True)
    m = get_method("rpg_reinforce_fkl_seq").replace(advantage=Raw(), beta=0.5)
    a = expected_gradient(m, mdp, pi, old, group_size=3)
    b = expected_gradient(m, mdp, pi, old, group_size=3, route="tuples")
    assert a.route == "per_sample" and _rel(a.grad, b.grad) < 1e-12
    # group size does not matter for a row-separable loss
    c = expected_gradient(m, mdp, pi, old, group_size=1)
    assert _rel(c.grad, b.grad) < 1e-12


def test_callable_loss_fn_loop_and_declared_batched_routes_agree():
    mdp, pi, old, ref = _setup(V=2, T=3, P=1, seed=11)

    def loss_fn(logp, batch):  # REINFORCE with leave-one-out advantage, token-mean over the batch
        r = batch.rewards.view(-1, batch.group_size)
        adv = (r - (r.sum(-1, keepdim=True) - r) / (batch.group_size - 1)).reshape(-1)
        out = reinforce_loss(logp, adv[:, None].expand_as(logp) * batch.mask, batch.mask)
        return aggregate(out.loss, batch.mask, "token-mean")

    loop = expected_gradient(loss_fn, mdp, pi, group_size=3)
    assert loop.route == "loop"
    batched = expected_gradient(LossSpec(loss_fn, 3, "token-mean", "rewards"), mdp, pi)
    assert _rel(batched.grad, loop.grad) < 1e-12
    # RLOO is unbiased: −(1/T)∇p
    want = -objective_gradient(Objective("expected_reward", "none"), mdp, pi) / 3
    assert _rel(loop.grad, want) < 1e-10


def test_enumeration_too_large_error_says_the_count():
    mdp, pi, _, _ = _setup(V=3, T=3, P=1, seed=0)
    with pytest.raises(ValueError, match=r"27\^6 = 387,420,489 groups"):
        expected_gradient(get_method("grpo"), mdp, pi, group_size=6, route="tuples")


def test_zero_behaviour_probability_where_target_has_mass_is_an_error():
    mdp, pi, _, _ = _setup(V=2, T=2, P=1, seed=0)
    logits = pi.theta.detach().clone()
    logits[0, 0, 1] = float("-inf")  # behaviour never emits token 1 at the root
    old = TabularPolicy(mdp, logits)
    for _ in range(2):  # the second call reads π_old's cached table and response distribution
        with pytest.raises(ValueError, match="zero probability where the target policy has mass"):
            expected_gradient(get_method("grpo"), mdp, pi, old, group_size=2)
    # a target that puts no mass there either is fine (the same cached π_old)
    target = TabularPolicy(mdp, logits.clone())
    assert torch.isfinite(expected_gradient(get_method("grpo"), mdp, target, old, group_size=2).grad).all()


def test_route_errors():
    mdp, pi, _, _ = _setup(V=2, T=2, P=1, seed=0)
    with pytest.raises(ValueError, match="class_by='response'"):
        expected_gradient(get_method("grpo_k1_reward"), mdp, pi, group_size=2, route="exchangeable",
                          class_by="reward")
    with pytest.raises(ValueError, match="row-separable"):
        expected_gradient(get_method("grpo"), mdp, pi, group_size=2, route="per_sample")
    with pytest.raises(ValueError, match="group_size="):
        expected_gradient(lambda lp, b: lp.sum(), mdp, pi)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        expected_gradient(get_method("grpo"), mdp, pi, group_size=1)
    other = TabularPolicy.random(TreeMDP.random(2, 2, 1, seed=1), seed=0)
    with pytest.raises(ValueError, match="different TreeMDP"):
        expected_gradient(get_method("grpo"), mdp, pi, other, group_size=2)


@pytest.mark.parametrize("name,eos,real", [("grpo", False, False), ("frpo", False, True), ("dr_grpo", True, False),
                                           ("rpg_urkl", False, False), ("gspo_token", False, True)])
def test_first_rows_route_equals_brute_force(name, eos, real):
    """The exchangeable reward route evaluates only row 1 of each (response, multiset of the others' rewards)
    group, its advantage computed from the group's rewards: the same expectation as the brute-force loop over
    ordered G-tuples (G = 3, off-policy, binary and real rewards, fixed length and EOS)."""
    import rlkl.toy.expected as X

    mdp, pi, old, ref = _setup(V=3 if eos else 2, T=2, P=2, eos=eos, reward="real" if real else "binary", seed=9,
                               off=True)
    m = get_method(name)
    m = m.replace(beta=0.2) if m.beta > 0 else m
    assert X._first_row_method(X.loss_spec(m, mdp, 3), "reward") is m  # the route under test runs
    eg = expected_gradient(m, mdp, pi, old, ref, group_size=3, route="exchangeable", class_by="reward")
    bf = brute_force_expected_gradient(m, mdp, pi, old, ref, group_size=3)
    assert _rel(eg.grad, bf) < 1e-12


def test_fixed_policies_tables_are_reused_while_theta_holds_its_values():
    # π_old's and π_ref's node tables (and π_old's response sums) are kept between calls; each of the ways θ can
    # change — in place, through .data, a new tensor — rebuilds them: the result equals that of fresh policies
    # built from the same values (which share no cache)
    from rlkl.toy import expected as E

    mdp, pi, old, ref = _setup(V=3, T=3, eos=True, off=True, seed=5)
    m = get_method("grpo").replace(beta=0.3)  # reads π_ref (its k3 loss) and π_old (ratio, sampling)

    def fresh():
        return expected_gradient(m, mdp, pi, TabularPolicy(mdp, old.theta.detach()),
                                 TabularPolicy(mdp, ref.theta.detach()), group_size=2).grad

    g0 = expected_gradient(m, mdp, pi, old, ref, group_size=2).grad
    table = E._TABLE_CACHE[ref].table
    assert torch.equal(g0, fresh()) and {"sums", "q", "q_has_zero"} <= set(E._TABLE_CACHE[old].memo)
    assert torch.equal(expected_gradient(m, mdp, pi, old, ref, group_size=2).grad, g0)
    assert E._TABLE_CACHE[ref].table is table  # reused, not rebuilt
    changes = (lambda: ref.theta.data.mul_(2.0),  # .data: θ's version counter does not move (a shift of all
               # logits would not change the policy)
               lambda: old.theta.data.mul_(0.3),
               lambda: setattr(ref, "theta", torch.zeros_like(ref.theta, requires_grad=True)))
    for change in changes:
        change()
        g = expected_gradient(m, mdp, pi, old, ref, group_size=2).grad
        assert torch.equal(g, fresh()) and not torch.equal(g, g0)
        g0 = g
    with torch.no_grad():
        old.theta.mul_(1.5)  # in place
    g = expected_gradient(m, mdp, pi, old, ref, group_size=2).grad
    assert torch.equal(g, fresh()) and not torch.equal(g, g0)
    assert _rel(g, brute_force_expected_gradient(m, mdp, pi, old, ref, group_size=2)) < 1e-12
    # the cache holds its policies weakly: a policy no longer used takes its tables with it
    import gc

    tmp = TabularPolicy(mdp, ref.theta.detach() * 0.5)
    expected_gradient(m, mdp, pi, old, tmp, group_size=2)
    n = len(E._TABLE_CACHE)
    del tmp
    gc.collect()
    assert len(E._TABLE_CACHE) == n - 1


def test_a_policy_with_its_own_log_probs_is_not_cached():
    from rlkl.toy import expected as E

    class Tempered(TabularPolicy):  # reads state besides θ: its table cannot be keyed on θ
        temperature = 1.0

        def node_log_probs(self, theta=None):
            return torch.log_softmax(self._theta(theta) / self.temperature, -1)

        def _new(self, theta):
            return Tempered(self.mdp, theta)

    mdp, pi, _, _ = _setup(V=3, T=3, seed=6)
    ref = Tempered(mdp, TabularPolicy.random(mdp, seed=9).theta.detach())
    m = get_method("grpo").replace(beta=0.3)
    g1 = expected_gradient(m, mdp, pi, None, ref, group_size=2).grad
    ref.temperature = 3.0
    g2 = expected_gradient(m, mdp, pi, None, ref, group_size=2).grad
    assert ref not in E._TABLE_CACHE and not torch.equal(g1, g2)
    assert _rel(g2, brute_force_expected_gradient(m, mdp, pi, None, ref, group_size=2)) < 1e-12
