"""rlkl.testing: the probe of a callable's coupling, the adapters, assert_optimizes and assert_conforms.

References are independent of the code under test: the engine's own coupling of a Method (`coupling`) and its
expected gradient, and `brute_force_expected_gradient` (one loss call and one autograd pass per ordered G-tuple).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from rlkl.components import GroupStandardized, LeaveOneOut
from rlkl.losses import aggregate
from rlkl.methods import REGISTRY, get_method
from rlkl.objective import Objective
from rlkl.testing import (GarbageBatch, VerlActorConfig, assert_conforms, assert_optimizes, check_optimizes,
                          conformance_batches, default_trees, from_polgrad, from_rlkl, from_trl, from_verl)
from rlkl.testing.strategies import rollout_batches, setups
from rlkl.toy.audit import make_setup
from rlkl.toy.expected import brute_force_expected_gradient, coupling, expected_gradient
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.probe import plan, probe, probed_expected_gradient

F64 = torch.float64
E_R = Objective("expected_reward", "none")


def as_callable(method):
    return lambda logp, batch: method.loss(logp, batch)


# ------------------------------------------------------------------------------------------------ hand-written losses
def rloo_loss(logp, batch):
    r = batch.rewards.view(-1, batch.group_size)
    adv = (r - (r.sum(-1, keepdim=True) - r) / (batch.group_size - 1)).reshape(-1, 1)
    return -(adv * logp * batch.mask).sum(-1).mean()


def grpo_k3_loss(logp, batch, beta=0.1):
    r = batch.rewards.view(-1, batch.group_size)
    adv = ((r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + 1e-6)).reshape(-1, 1)
    d = batch.logp_ref - logp
    tok = -adv * torch.exp(logp - batch.logp_old) + beta * (torch.exp(d) - d - 1)
    return ((tok * batch.mask).sum(-1) / batch.mask.sum(-1)).mean()


def verl_vanilla(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
                 rollout_is_weights=None):
    """A verl-signature PPO loss written here (verl 0.9.1 vanilla's rule, without verl)."""
    ratio = torch.exp(torch.clamp(log_prob - old_log_prob, -20, 20))
    lo, hi, c = config.clip_ratio_low, config.clip_ratio_high, config.clip_ratio_c
    l1, l2 = -advantages * ratio, -advantages * torch.clamp(ratio, 1 - lo, 1 + hi)
    clipped = torch.maximum(l1, l2)
    pg = torch.where(advantages < 0, torch.minimum(-advantages * c, clipped), clipped)
    return aggregate(pg * response_mask, response_mask, loss_agg_mode), {"actor/pg_clipfrac": 0.0}


def trl_per_token(per_token_logps, old_per_token_logps, advantages, completion_mask, ref_per_token_logps, beta=0.04):
    """TRL GRPOTrainer-style per-token loss: clipped ratio and β·k3 (written here, without TRL)."""
    coef_1 = torch.exp(per_token_logps - old_per_token_logps)
    coef_2 = torch.clamp(coef_1, 0.8, 1.2)
    loss = -torch.minimum(coef_1 * advantages.unsqueeze(1), coef_2 * advantages.unsqueeze(1))
    d = ref_per_token_logps - per_token_logps
    return loss + beta * (torch.exp(d) - d - 1)


def polgrad_style(*, logprobs, old_logprobs, advantages, response_mask):
    """polgrad's keyword convention (written here): DAPO's clip-higher PPO, token-mean."""
    adv = advantages.unsqueeze(1)
    ratio = torch.exp(torch.where(response_mask, logprobs - old_logprobs, 0.0))
    obj = torch.minimum(ratio * adv, ratio.clamp(0.8, 1.28) * adv)
    return -(torch.where(response_mask, obj, 0.0)).sum() / response_mask.sum()


# ------------------------------------------------------------------------------------------------ probe
@pytest.mark.parametrize("name", ["grpo", "rloo", "dapo", "reinforce", "frpo", "grpo_k1_reward", "dr_grpo",
                                  "rpg_reinforce_urkl_seq", "opo", "grpo_passk", "cispo"])
def test_probe_finds_the_engines_coupling_of_each_method(name):
    m = REGISTRY[name]
    m = m.replace(beta=0.1) if m.has_kl else m
    for tree in (TreeMDP.random(2, 3, 2, seed=1), TreeMDP.random(3, 3, 1, eos=True, seed=2)):
        pr = probe(as_callable(m), 4, horizon=tree.horizon)
        assert pr.coupling(tree.fixed_length) == coupling(m, tree), (name, tree.name, pr.describe())
        assert pr.symmetric and pr.across == ("token-mean" if m.aggregation.mode.value == "token-mean" else "mean")
        pi, old, ref = make_setup(tree, 0, off_policy=True)
        eg, p = probed_expected_gradient(as_callable(m), tree, pi, old, ref, 4)
        torch.testing.assert_close(eg.grad, expected_gradient(m, tree, pi, old, ref, 4).grad, rtol=1e-12, atol=1e-15)


def _sum_loss(logp, batch):  # a sum over rows, not a mean: L(2 groups) = L(group 1) + L(group 2)
    return -(batch.rewards[:, None] * logp * batch.mask).sum()


def _batch_whitened(logp, batch):  # rewards whitened over the whole batch: couples groups
    r = batch.rewards
    a = (r - r.mean()) / (r.std() + 1e-6)
    return -(a[:, None] * logp * batch.mask).sum(-1).mean()


def _first_row_baseline(logp, batch):  # baseline = the reward of the group's first row: not symmetric
    r = batch.rewards.view(-1, batch.group_size)
    a = (r - r[:, :1]).reshape(-1, 1)
    return -(a * logp * batch.mask).sum(-1).mean()


@pytest.mark.parametrize("fn, across, cpl, symmetric", [(_sum_loss, "sum", "none", True),
                                                        (_batch_whitened, "coupled", "batch", True),
                                                        (_first_row_baseline, "mean", "rewards", False),
                                                        (rloo_loss, "mean", "rewards", True)])
def test_probe_of_plain_callables_against_brute_force(fn, across, cpl, symmetric):
    tree = TreeMDP.random(2, 2, 1, seed=6)  # 4 responses: 4^3 = 64 ordered groups for the brute force
    pr = probe(fn, 3, horizon=2)
    assert (pr.across, pr.coupling(True), pr.symmetric) == (across, cpl, symmetric), pr.describe()
    pi, old, ref = make_setup(tree, 1, off_policy=True)
    eg, p = probed_expected_gradient(fn, tree, pi, old, ref, 3)
    brute = brute_force_expected_gradient(fn, tree, pi, old, ref, 3)
    torch.testing.assert_close(eg.grad, brute, rtol=1e-11, atol=1e-14)
    assert p.route == {"none": "per_sample", "batch": "loop"}.get(cpl, "exchangeable" if symmetric else "tuples")


def test_plan_states_the_size_it_refuses():
    big = TreeMDP.random(3, 5, 1, seed=0)  # 243 responses
    with pytest.raises(ValueError, match=r"enumerates [\d,]+ groups"):
        plan(_batch_whitened, big, 4)  # one call per ordered 4-tuple: 243^4 groups
    with pytest.raises(ValueError, match="would not fit in memory"):
        plan(as_callable(REGISTRY["rloo"].replace(beta=0.1)), big, 4, max_bytes=1 << 20)


def test_progress_bar_on_request(capsys):
    tree = TreeMDP.random(2, 2, 1, seed=0)
    pi, old, ref = make_setup(tree, 0)
    probed_expected_gradient(_batch_whitened, tree, pi, None, ref, 3, progress=True)
    assert "rlkl _batch_whitened" in capsys.readouterr().err


def test_probe_rejects_a_non_scalar_loss():
    with pytest.raises(ValueError, match="scalar"):
        probe(lambda logp, batch: logp.sum(-1), 2)


# ------------------------------------------------------------------------------------------------ assert_optimizes
def test_a_correct_loss_passes_and_reports():
    rep = assert_optimizes(rloo_loss, E_R)
    assert rep.passed and len(rep.records) == 2 and max(r["rel_error"] for r in rep.records) < 1e-12
    assert rep.records[0]["scale"] == pytest.approx(1.0)  # Σ over tokens, mean over rows: c = 1
    # the Method itself, for its own claim with β (k1 fused into the reward, leave-one-out: exact)
    rloo = get_method("rloo").replace(beta=0.2)
    assert assert_optimizes(rloo, rloo.bound_objective(4)).passed


def test_grpo_with_k3_names_its_bias():
    with pytest.raises(AssertionError) as err:
        assert_optimizes(grpo_k3_loss, Objective("expected_reward", "reverse_kl", beta=0.1))
    msg = str(err.value)
    for words in ("does NOT optimize", "reproduces rlkl's `grpo` (β=0.1) exactly", "forward_direction",
                  "future_kl_missing", "finite_group_utility", "unexplained remainder", "exact for"):
        assert words in msg, (words, msg)


def test_an_unknown_bias_is_reported_as_unexplained():
    def squared_advantage(logp, batch):
        r = batch.rewards.view(-1, batch.group_size)
        a = (r - r.mean(-1, keepdim=True)).reshape(-1, 1)
        return -(a * a.abs() * logp * batch.mask).sum(-1).mean()

    rep = check_optimizes(squared_advantage, E_R, trees=[TreeMDP.random(3, 2, 2, reward="real", seed=3)])
    assert not rep.passed and "unexplained: no registered rlkl method" in rep.explanation
    wrong_sign = lambda logp, batch: -rloo_loss(logp, batch)
    rep = check_optimizes(wrong_sign, E_R, trees=default_trees(eos=False), explain=True)
    assert "against" in rep.explanation and rep.records[0]["scale"] < 0


def test_adapters_in_assert_optimizes():
    # verl's vanilla PPO with verl's grpo estimator: on-policy (ratio 1, no clip active) GRPO without KL
    fn = from_verl(verl_vanilla, advantage=GroupStandardized())
    rep = check_optimizes(fn, E_R, trees=default_trees(eos=False))
    assert not rep.passed and rep.match["rel_diff"] < 1e-12
    assert get_method(rep.match["method"]).advantage == GroupStandardized() and not get_method(rep.match["method"]).has_kl
    assert "finite_group_utility" in rep.explanation
    ok = from_verl(verl_vanilla, advantage=LeaveOneOut(), loss_agg_mode="seq-mean-token-sum")
    assert assert_optimizes(ok, E_R).passed  # RLOO advantage, sequence sums: exact (also with EOS)
    with pytest.raises(ValueError, match="takes advantages, not rewards"):
        assert_optimizes(from_verl(verl_vanilla), E_R)
    with pytest.raises(ValueError, match="from_verl"):
        assert_optimizes(verl_vanilla, E_R)
    with pytest.raises(ValueError, match="bind it"):
        assert_optimizes(rloo_loss, Objective("expected_reward", "reverse_kl"))


# ------------------------------------------------------------------------------------------------ assert_conforms
def test_conforms_for_every_adapter():
    grpo = get_method("grpo")
    assert assert_conforms(as_callable(grpo), grpo).passed
    verl = from_verl(verl_vanilla, loss_agg_mode="seq-mean-token-mean", kl_coef=0.04, kl_loss_type="low_var_kl")
    rep = assert_conforms(verl, grpo)  # the method's own advantages are supplied
    assert rep.passed and rep.max_grad_rel < 1e-12 and rep.padding_grad == 0.0
    assert assert_conforms(from_trl(trl_per_token, loss_type="grpo"), grpo).passed
    assert assert_conforms(from_polgrad(polgrad_style), "dapo").passed
    assert assert_conforms(from_rlkl(as_callable(grpo)), grpo, padding="zero", holes=True).passed


def test_conformance_failures_are_diagnosed():
    grpo = get_method("grpo")

    def unmasked_gspo(logp, batch):  # the sequence ratio sums padding too: fine with zeros, wrong with garbage
        adv = get_method("gspo").advantages(batch)
        seq = ((logp - batch.logp_old).sum(-1) / batch.mask.sum(-1)).clamp(max=10.0)  # (the bug: no mask)
        s = torch.exp(seq.detach()[:, None] + logp - logp.detach())
        tok = torch.maximum(-adv * s, -adv * s.clamp(1 - 3e-4, 1 + 4e-4))
        return aggregate(tok * batch.mask, batch.mask, "seq-mean-token-mean")

    with pytest.raises(AssertionError, match="padding values leak"):
        assert_conforms(unmasked_gspo, "gspo")
    token_mean = grpo.replace(aggregation=REGISTRY["dapo"].aggregation)
    with pytest.raises(AssertionError, match="aggregation 'token-mean' instead of 'seq-mean-token-mean'"):
        assert_conforms(as_callable(token_mean), grpo)
    with pytest.raises(AssertionError, match="constant 2"):
        assert_conforms(lambda lp, b: 2 * grpo.loss(lp, b)[0], grpo)

    def leaks_gradient(logp, batch):
        return grpo.loss(logp, batch)[0] + 1e-3 * torch.where(batch.mask, 0.0, logp).sum()

    with pytest.raises(AssertionError, match="gradient leaks into padding"):
        assert_conforms(leaks_gradient, grpo)


def test_garbage_batches():
    cases = list(conformance_batches(6, 3, seed=1, padding="nan"))
    assert len(cases) == 6 and all(isinstance(c.garbage_batch, GarbageBatch) for c in cases)
    for c in cases:
        pad = ~c.batch.mask
        assert bool(torch.isnan(c.logp_garbage[pad]).all()) and bool((c.batch.logp_old[pad] == 0).all())
        assert torch.equal(c.logp_garbage[c.batch.mask], c.logp[c.batch.mask])
    again = list(conformance_batches(6, 3, seed=1, padding="nan"))
    assert all(torch.equal(a.logp, b.logp) for a, b in zip(cases, again))  # seeded
    with pytest.raises(ValueError, match="padding"):
        list(conformance_batches(padding="junk"))

    def where_masked(logp, batch):  # NaN-safe: masks before every reduction
        adv = get_method("dapo").advantages(getattr(batch, "clean", batch))
        ratio = torch.exp(torch.where(batch.mask, logp - batch.logp_old, 0.0))
        obj = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.28))
        return torch.where(batch.mask, obj, 0.0).sum() / batch.mask.sum()

    assert assert_conforms(where_masked, "dapo", padding="nan").passed


def test_verl_config_reads_like_verls():
    cfg = VerlActorConfig(clip_ratio_high=0.28)
    assert cfg.clip_ratio_high == 0.28 and cfg.get("clip_ratio_c") == 3.0 and cfg.policy_loss.loss_mode == "vanilla"
    assert cfg.global_batch_info["dp_size"] == 1
    with pytest.raises(AttributeError, match="no key"):
        cfg.nope
    with pytest.raises(ValueError, match="kl_loss_type"):
        from_verl(verl_vanilla, kl_coef=0.1, kl_loss_type="abs")
    with pytest.raises(ValueError, match="max_completion_length"):
        from_trl(trl_per_token, loss_type="dr_grpo")


# ------------------------------------------------------------------------------------------------ strategies
@settings(max_examples=10)
@given(rollout_batches(min_group=2, max_group=4, reward_kind="mixed"))
def test_every_registered_loss_ignores_padding_values(drawn):
    logp, batch = drawn
    pad = ~batch.mask
    junk = torch.where(pad, torch.full_like(logp, -37.0), logp)
    dirty = type(batch)(torch.where(pad, 13.0, batch.logp_old), torch.where(pad, -11.0, batch.logp_ref), batch.mask,
                        batch.rewards, batch.group_size)
    for name in ("grpo", "frpo", "cispo", "opo", "grpo_passk", "gspo_token"):
        m = get_method(name)
        torch.testing.assert_close(m.loss(junk, dirty)[0], m.loss(logp, batch)[0], rtol=1e-12, atol=1e-12)


@settings(max_examples=5)
@given(setups(max_vocab=3, max_horizon=2, max_prompts=2))
def test_probed_route_equals_the_methods_route_on_random_setups(s):
    m = get_method("grpo").replace(beta=0.2)
    eg, _ = probed_expected_gradient(as_callable(m), s.tree, s.policy, s.behaviour if s.off_policy else None,
                                     s.ref, 3)
    want = expected_gradient(m, s.tree, s.policy, s.behaviour if s.off_policy else None, s.ref, 3)
    torch.testing.assert_close(eg.grad, want.grad, rtol=1e-11, atol=1e-14)
