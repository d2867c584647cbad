"""The verl plug-in (``rlkl.integrations.verl``) against verl's own code (verl 0.9.1, CPU tensors).

Skipped, with the reason, when verl is not importable; ``scripts/test_integrations.sh verl`` installs it into a
venv and runs this file. Everything runs verl's real functions on float64 random batches, no Ray and no GPU:

* the registered rlkl estimators and losses, called through verl's registries, its actor loss ``ppo_loss``
  (``verl.workers.utils.losses``) and its ``compute_advantage`` (``verl.trainer.ppo.ray_trainer``), equal
  ``Method.loss`` / ``Method.advantages`` in value and gradient;
* verl's built-in GRPO KL-loss path (``use_kl_loss=True``, ``kl_loss_type=low_var_kl`` and friends) equals, value
  and gradient, the rlkl Method that ``from_verl`` translates it to, and that Method *is* rlkl's ``grpo`` (k3
  loss) up to β/aggregation/labels — so its audit is rlkl's ``grpo`` audit.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("verl.trainer.ppo.core_algos", reason="verl not installed: run scripts/test_integrations.sh verl")

from verl.trainer.config import AlgoConfig, KLControlConfig  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.workers.config import FSDPActorConfig, PolicyLossConfig  # noqa: E402

import rlkl.integrations.verl as rv  # noqa: E402  (importing registers)
from rlkl.losses import RPGClip, aggregate, kl_loss  # noqa: E402
from rlkl.components import RPG, Aggregation  # noqa: E402
from rlkl.integrations.flags import from_verl  # noqa: E402
from rlkl.methods import RolloutBatch, get_method  # noqa: E402

pytestmark = pytest.mark.integration
G = 4


def _batch(seed: int, B: int = 8, T: int = 7, prefix_mask: bool = True):
    """Random float64 rollout; rows of a group contiguous (rlkl's layout). Masks are response prefixes."""
    g = torch.Generator().manual_seed(seed)
    logp_old = -torch.rand(B, T, dtype=torch.float64, generator=g) * 2 - 0.05
    logp_ref = logp_old + 0.3 * torch.randn(B, T, dtype=torch.float64, generator=g)
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    if not prefix_mask:
        mask = mask & (torch.rand(B, T, generator=g) < 0.85)
        mask[:, 0] = True
    rewards = torch.rand(B, generator=g, dtype=torch.float64).round(decimals=1)
    logp = (logp_old + 0.25 * torch.randn(B, T, dtype=torch.float64, generator=g)).requires_grad_()
    return logp, RolloutBatch(logp_old, logp_ref, mask, rewards, G)


def _token_rewards(batch):
    """verl's token_level_rewards: the score on the last response token."""
    last = batch.mask.long().cumsum(-1).argmax(-1)
    tlr = torch.zeros_like(batch.logp_old)
    tlr[torch.arange(len(last)), last] = batch.rewards
    return tlr


def _shuffled(batch, seed):
    """A permutation of the rows (verl does not promise contiguous groups) and the uid index in that order."""
    perm = torch.randperm(batch.batch_size, generator=torch.Generator().manual_seed(seed))
    uids = np.array([f"prompt-{int(i) // G}" for i in perm], dtype=object)
    return perm, uids


def _actor_config(**kw):
    base = dict(strategy="fsdp", rollout_n=G, ppo_micro_batch_size_per_gpu=4, clip_ratio=0.2, clip_ratio_low=0.2,
                clip_ratio_high=0.2, clip_ratio_c=3.0, loss_agg_mode="token-mean", use_kl_loss=False,
                kl_loss_coef=0.0)
    base.update(kw)
    loss_mode = base.pop("loss_mode", "vanilla")
    return FSDPActorConfig(policy_loss=PolicyLossConfig(loss_mode=loss_mode), **base)


def _config_for(name, beta):
    """(expected Method, verl actor config, verl algorithm config) for a registered rlkl name: the verl knobs
    are set to the Method's own values, so the expected Method is rlkl's registered one with β = ``beta``."""
    m = get_method(name).replace(beta=beta)
    agg = m.aggregation.mode.value
    if isinstance(m.policy_loss, RPG):
        clip = m.policy_loss.clip or RPGClip()
        actor = _actor_config(loss_mode=name, loss_agg_mode=agg, kl_loss_coef=beta,
                              clip_ratio_low=clip.eps_low, clip_ratio_high=clip.eps_high, clip_ratio_c=clip.c)
        algo = AlgoConfig()
    else:  # frpo: KL in the advantage; verl computes ref_log_prob only with a KL switched on (coef 0)
        actor = _actor_config(loss_mode=name, loss_agg_mode=agg, use_kl_loss=True, kl_loss_coef=0.0,
                              clip_ratio_low=m.policy_loss.low, clip_ratio_high=m.policy_loss.high)
        algo = AlgoConfig(kl_ctrl=KLControlConfig(kl_coef=beta))
    return m, actor, algo


def _grads(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


# ---------------------------------------------------------------------------------------------------------------
# registration


def test_registered_by_name():
    assert rv.VERL_METHOD_NAMES and {"frpo", "rpg_reinforce_fkl", "rpg_fkl"} <= set(rv.VERL_METHOD_NAMES)
    for name in rv.VERL_METHOD_NAMES:
        assert core_algos.get_adv_estimator_fn(name).__rlkl__ == name
        assert core_algos.get_policy_loss_fn(name).__rlkl__ == name
    again = rv.register_rlkl_with_verl()  # idempotent
    assert again["adv_estimators"] == list(rv.VERL_METHOD_NAMES)
    assert "verl.trainer.ppo.ray_trainer" in again["patched"]


def test_refuses_to_replace_a_verl_entry(monkeypatch):
    monkeypatch.setitem(core_algos.POLICY_LOSS_REGISTRY, "frpo", core_algos.get_policy_loss_fn("vanilla"))
    with pytest.raises(ValueError, match="already has a policy loss named 'frpo'"):
        rv.register_rlkl_with_verl(["frpo"])
    with pytest.raises(ValueError, match="not an rlkl method offered"):
        rv.register_rlkl_with_verl(["grpo"])


# ---------------------------------------------------------------------------------------------------------------
# registered functions == rlkl


@pytest.mark.parametrize("name", rv.VERL_METHOD_NAMES)
def test_registered_functions_equal_method_loss(name):
    """verl registry lookup → advantage (shuffled rows, groups by uid) → policy loss = Method.loss (value, grad)."""
    for seed in range(3):
        logp, batch = _batch(seed, prefix_mask=seed != 2)
        method, actor, algo = _config_for(name, beta=0.05)
        perm, uids = _shuffled(batch, seed)
        est = core_algos.get_adv_estimator_fn(name)
        adv, returns = est(token_level_rewards=_token_rewards(batch)[perm], response_mask=batch.mask[perm].long(),
                           index=uids, config=algo, old_log_probs=batch.logp_old[perm],
                           ref_log_prob=batch.logp_ref[perm])
        torch.testing.assert_close(adv, method.advantages(batch)[perm], rtol=1e-13, atol=1e-13)
        assert torch.equal(adv, returns)
        loss_fn = core_algos.get_policy_loss_fn(name)
        got, metrics = loss_fn(old_log_prob=batch.logp_old[perm], log_prob=logp[perm], advantages=adv,
                               response_mask=batch.mask[perm], loss_agg_mode=actor.loss_agg_mode, config=actor,
                               rollout_is_weights=None)
        ref, _ = method.loss(logp, batch)
        torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(_grads(got, logp), _grads(ref, logp), rtol=1e-12, atol=1e-13)
        assert {"actor/pg_clipfrac", "actor/ppo_kl", "rlkl/loss/policy"} <= set(metrics)
        assert all(isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize("name", ["frpo", "rpg_reinforce_urkl_seq"])
def test_registered_policy_loss_reads_the_host_twice(name):
    """Two host syncs per call: the validation of the inputs, and one device → host copy of every metric (verl's
    own policy losses make three ``.item()`` calls). The metric values are the Method's diagnostics."""
    from syncs import HostSyncs

    logp, batch = _batch(0)
    method, actor, _ = _config_for(name, beta=0.05)
    adv = method.advantages(batch)
    loss_fn = core_algos.get_policy_loss_fn(name)
    with HostSyncs() as s:
        _, metrics = loss_fn(old_log_prob=batch.logp_old, log_prob=logp, advantages=adv, response_mask=batch.mask,
                             loss_agg_mode=actor.loss_agg_mode, config=actor, rollout_is_weights=None)
    assert s.total == 2, s.count
    _, diag = method.loss_given_advantages(logp, batch.logp_old, batch.mask, adv)
    assert {f"rlkl/{k}": float(v) for k, v in diag.items()}.items() <= metrics.items()
    assert metrics["actor/pg_clipfrac"] == float(diag["clip_fraction/low"] + diag["clip_fraction/high"])
    assert metrics["actor/pg_clipfrac_lower"] == float(diag["clip_fraction/dual"])
    m = batch.mask.double()
    assert metrics["actor/ppo_kl"] == float(((batch.logp_old - logp.detach()) * m).sum() / m.sum())


def test_frpo_beta_comes_from_kl_ctrl():
    logp, batch = _batch(0)
    est = core_algos.get_adv_estimator_fn("frpo")
    uids = np.array([i // G for i in range(batch.batch_size)], dtype=object)
    kw = dict(token_level_rewards=_token_rewards(batch), response_mask=batch.mask, index=uids,
              old_log_probs=batch.logp_old, ref_log_prob=batch.logp_ref)
    a1, _ = est(config=AlgoConfig(kl_ctrl=KLControlConfig(kl_coef=0.01)), **kw)
    a2, _ = est(config=AlgoConfig(kl_ctrl=KLControlConfig(kl_coef=0.2)), **kw)
    torch.testing.assert_close(a2, get_method("frpo").replace(beta=0.2).advantages(batch), rtol=1e-13, atol=1e-13)
    assert not torch.allclose(a1, a2)


# ---------------------------------------------------------------------------------------------------------------
# through verl's own actor loss and compute_advantage


def _verl_ppo_loss(actor, logp, batch, advantages, prompt_len=3, dp_size=1, batch_num_tokens=None,
                   global_batch_size=None):
    """verl's actor loss ``ppo_loss(config, model_output, data)`` on a padded batch (verl's no-padding layout)."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.losses import ppo_loss

    B, T = batch.mask.shape
    lengths = batch.mask.sum(-1)
    assert torch.equal(batch.mask, torch.arange(T)[None, :] < lengths[:, None]), "ppo_loss needs prefix masks"
    pieces = []  # flat [Σ (P + len_i)] log-probs; position P−1+j of row i holds log π(response token j)
    for i in range(B):
        n = int(lengths[i])
        pieces += [logp.new_zeros(prompt_len - 1), logp[i, :n], logp.new_zeros(1)]
    flat = torch.cat(pieces)
    data = TensorDict({
        "prompts": torch.ones(B, prompt_len, dtype=torch.long),
        "responses": torch.ones(B, T, dtype=torch.long),
        "attention_mask": torch.cat([torch.ones(B, prompt_len, dtype=torch.long), batch.mask.long()], dim=1),
        "response_mask": batch.mask.long(),
        "old_log_probs": batch.logp_old,
        "ref_log_prob": batch.logp_ref,
        "advantages": advantages,
    }, batch_size=[B])
    tu.assign_non_tensor(data, dp_size=dp_size, batch_num_tokens=batch_num_tokens,
                         global_batch_size=global_batch_size)
    loss, metrics = ppo_loss(actor, {"log_probs": flat}, data)
    return loss, metrics


@pytest.mark.parametrize("name", ["frpo", "frpo_k3", "rpg_reinforce_fkl", "rpg_urkl", "rpg_reinforce_rkl_seq"])
def test_verl_actor_loss_runs_the_registered_method(name):
    """verl's ``ppo_loss`` with ``policy_loss.loss_mode=<name>`` (and, for FRPO, its zero-coefficient KL loss)
    equals Method.loss, given the advantages verl's registry computes."""
    logp, batch = _batch(5)
    method, actor, algo = _config_for(name, beta=0.05)
    uids = np.array([i // G for i in range(batch.batch_size)], dtype=object)
    adv, _ = core_algos.get_adv_estimator_fn(name)(
        token_level_rewards=_token_rewards(batch), response_mask=batch.mask, index=uids, config=algo,
        old_log_probs=batch.logp_old, ref_log_prob=batch.logp_ref)
    got, metrics = _verl_ppo_loss(actor, logp, batch, adv)
    ref, _ = method.loss(logp, batch)
    torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(_grads(got, logp), _grads(ref, logp), rtol=1e-12, atol=1e-13)


def test_micro_batches_with_global_normalizers_sum_to_the_batch_loss():
    """verl splits a mini-batch into micro-batches and sums their gradients; with global_batch_info each
    micro-batch's rlkl loss is scaled so the sum is the whole-batch Method.loss (token-mean and seq-mean)."""
    for name in ("frpo", "rpg_reinforce_fkl"):
        logp, batch = _batch(7, B=8)
        method, actor, algo = _config_for(name, beta=0.05)
        adv = method.advantages(batch)
        ref, _ = method.loss(logp, batch)
        total = 0.0
        for rows in (slice(0, 3), slice(3, 8)):  # unequal micro-batches
            part = RolloutBatch(batch.logp_old[rows], batch.logp_ref[rows], batch.mask[rows],
                                batch.rewards[rows], 1)
            loss, _ = _verl_ppo_loss(actor, logp[rows], part, adv[rows], batch_num_tokens=int(batch.mask.sum()),
                                     global_batch_size=batch.batch_size)
            total = total + loss
        torch.testing.assert_close(total, ref, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(_grads(total, logp), _grads(ref, logp), rtol=1e-12, atol=1e-13)


def test_data_parallel_scale_matches_verl_agg_loss():
    """With dp_size=2 and global counts, the plug-in's factor is verl agg_loss's (on the same per-token loss)."""
    logp, batch = _batch(3)
    for name in ("frpo", "rpg_reinforce_fkl"):
        method, actor, algo = _config_for(name, beta=0.05)
        adv = method.advantages(batch)
        # the other rank holds 5 sequences and 17 tokens: the factor is not 1
        info = dict(dp_size=2, batch_num_tokens=int(batch.mask.sum()) + 17, global_batch_size=batch.batch_size + 5,
                    loss_scale_factor=None)
        actor.global_batch_info.update(info)
        agg = method.aggregation.mode.value
        got, _ = core_algos.get_policy_loss_fn(name)(batch.logp_old, logp, adv, batch.mask, agg, actor)
        from rlkl.integrations import policy_loss_from_advantages
        per_token = policy_loss_from_advantages(method, logp, batch.logp_old, adv, batch.mask).loss
        want = core_algos.agg_loss(per_token, batch.mask, agg, **info)
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
        assert not torch.allclose(got, aggregate(per_token, batch.mask, agg))


def test_verl_compute_advantage_forwards_logprobs_to_frpo():
    """verl's driver-side ``compute_advantage`` (DataProto, uid grouping) runs rlkl's FRPO estimator with the
    batch's old/ref log-probs thanks to the wrapper; verl's unwrapped function cannot, and says so."""
    import verl.trainer.ppo.ray_trainer as rt
    from verl import DataProto

    logp, batch = _batch(11, prefix_mask=False)
    perm, uids = _shuffled(batch, 11)
    data = DataProto.from_dict(
        tensors={"token_level_rewards": _token_rewards(batch)[perm], "response_mask": batch.mask[perm].long(),
                 "old_log_probs": batch.logp_old[perm], "ref_log_prob": batch.logp_ref[perm]},
        non_tensors={"uid": uids})
    algo = AlgoConfig(kl_ctrl=KLControlConfig(kl_coef=0.03))
    out = rt.compute_advantage(data, adv_estimator="frpo", config=algo)
    want = get_method("frpo").replace(beta=0.03).advantages(batch)[perm]
    torch.testing.assert_close(out.batch["advantages"], want, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="register_rlkl_with_verl"):
        rt.compute_advantage.__wrapped__(data, adv_estimator="frpo", config=algo)
    # rpg estimators read rewards only: verl's plain function suffices
    out = rt.compute_advantage.__wrapped__(data, adv_estimator="rpg_reinforce_fkl", config=AlgoConfig())
    torch.testing.assert_close(out.batch["advantages"], get_method("rpg_reinforce_fkl").advantages(batch)[perm],
                               rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("override,match", [
    (dict(loss_agg_mode="token-mean"), "loss_agg_mode=seq-mean-token-sum"),
    (dict(use_kl_loss=True, kl_loss_coef=0.001), "second KL term"),
])
def test_config_mismatch_is_an_error(override, match):
    logp, batch = _batch(0)
    method, actor, _ = _config_for("frpo", beta=0.05)
    actor = _actor_config(**{**dict(loss_mode="frpo", loss_agg_mode=method.aggregation.mode.value), **override})
    with pytest.raises(ValueError, match=match):
        core_algos.get_policy_loss_fn("frpo")(batch.logp_old, logp, method.advantages(batch), batch.mask,
                                              actor.loss_agg_mode, actor)


def test_kl_in_reward_with_rlkl_advantage_is_an_error():
    logp, batch = _batch(0)
    with pytest.raises(ValueError, match="use_kl_in_reward=False"):
        core_algos.get_adv_estimator_fn("frpo")(
            token_level_rewards=_token_rewards(batch), response_mask=batch.mask,
            index=np.arange(batch.batch_size) // G, config=AlgoConfig(use_kl_in_reward=True),
            old_log_probs=batch.logp_old, ref_log_prob=batch.logp_ref)


def test_unequal_groups_are_an_error():
    logp, batch = _batch(0)
    with pytest.raises(ValueError, match="equal group sizes"):
        core_algos.get_adv_estimator_fn("rpg_reinforce_fkl")(
            token_level_rewards=_token_rewards(batch), response_mask=batch.mask,
            index=np.array([0, 0, 0, 1, 1, 1, 1, 1]), config=AlgoConfig())


# ---------------------------------------------------------------------------------------------------------------
# verl's built-in GRPO + KL-loss path == rlkl's grpo family

@pytest.mark.parametrize("estimator,verl_name", [("k3", "low_var_kl"), ("k3", "k3"), ("k2", "mse"), ("k1", "kl")])
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_kl_penalty_and_agg_loss_equal_rlkl(estimator, verl_name, mode):
    """verl ``kl_penalty`` + ``agg_loss`` == rlkl ``kl_loss`` + ``aggregate`` (value and gradient)."""
    logp, batch = _batch(2, prefix_mask=False)
    v = core_algos.agg_loss(core_algos.kl_penalty(logp, batch.logp_ref, verl_name), batch.mask, mode)
    r = aggregate(kl_loss(logp, batch.logp_ref, batch.mask, estimator), batch.mask, mode)
    torch.testing.assert_close(v, r, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(_grads(v, logp), _grads(r, logp), rtol=1e-12, atol=1e-13)


def test_kl_penalty_straight_through_equals_rlkl():
    logp, batch = _batch(4)
    v = core_algos.agg_loss(core_algos.kl_penalty(logp, batch.logp_ref, "low_var_kl+"), batch.mask, "token-mean")
    r = aggregate(kl_loss(logp, batch.logp_ref, batch.mask, "k3", straight_through=True), batch.mask, "token-mean")
    torch.testing.assert_close(v, r, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(_grads(v, logp), _grads(r, logp), rtol=1e-12, atol=1e-13)


def _label_free(m):
    return dataclasses.replace(m, name="-", citation="-", description="-")


@pytest.mark.parametrize("kl_loss_type,rlkl_name", [("low_var_kl", "grpo"), ("mse", "grpo_k2_loss"),
                                                    ("low_var_kl+", "grpo_k3_plus"), ("kl", "grpo_k1_loss")])
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_verl_grpo_kl_loss_path_is_rlkl_grpo(kl_loss_type, rlkl_name, mode):
    """verl's GRPO estimator + ``ppo_loss`` (vanilla PPO clip with dual clip, ``use_kl_loss`` with
    ``kl_loss_type``) equals, in value and gradient, Method.loss of ``from_verl`` of the same flags — and that
    Method equals rlkl's registered ``rlkl_name`` (``grpo`` for verl's default ``low_var_kl``) with verl's β and
    aggregation: every field the audit reads is the same, so the audit verdict is rlkl's ``grpo`` verdict."""
    beta = 0.04
    flags = {"algorithm": {"adv_estimator": "grpo"},
             "actor_rollout_ref": {"actor": {"use_kl_loss": True, "kl_loss_type": kl_loss_type, "kl_loss_coef": beta,
                                             "loss_agg_mode": mode}}}
    translated = from_verl(flags)
    registered = get_method(rlkl_name).replace(beta=beta, aggregation=Aggregation(mode))
    assert _label_free(translated) == _label_free(registered)
    for seed in range(3):
        logp, batch = _batch(20 + seed)
        uids = np.array([i // G for i in range(batch.batch_size)], dtype=object)
        adv, _ = core_algos.compute_grpo_outcome_advantage(_token_rewards(batch), batch.mask.long(), uids)
        torch.testing.assert_close(adv, translated.advantages(batch), rtol=1e-12, atol=1e-12)
        actor = _actor_config(use_kl_loss=True, kl_loss_type=kl_loss_type, kl_loss_coef=beta, loss_agg_mode=mode)
        got, metrics = _verl_ppo_loss(actor, logp, batch, adv)
        ref, _ = translated.loss(logp, batch)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(_grads(got, logp), _grads(ref, logp), rtol=1e-11, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# the audit: verl's own low_var_kl code path, run by the exact engine, gives rlkl grpo's verdict


def _verl_grpo_kl_loss_fn(mode, beta, kl_loss_type="low_var_kl"):
    """verl's GRPO advantage + actor loss (``ppo_loss``: vanilla PPO clip, dual clip 3, KL loss) as a
    ``loss_fn(logp, batch)`` for the exact engine — verl's functions only, no rlkl loss code."""

    def loss_fn(logp, batch):
        B = batch.batch_size
        uids = np.array([i // batch.group_size for i in range(B)], dtype=object)
        adv, _ = core_algos.compute_grpo_outcome_advantage(_token_rewards(batch), batch.mask.long(), uids)
        actor = _actor_config(use_kl_loss=True, kl_loss_type=kl_loss_type, kl_loss_coef=beta, loss_agg_mode=mode)
        loss, _ = _verl_ppo_loss(actor, logp, batch, adv)
        return loss

    loss_fn.__name__ = f"verl_grpo_{kl_loss_type}_{mode}"
    return loss_fn


@pytest.mark.parametrize("off_policy,eos", [(False, False), (True, True)])
def test_verl_low_var_kl_path_audits_as_rlkl_grpo(off_policy, eos):
    """The exact engine's expected gradient of verl's literal code path equals rlkl ``grpo``'s, so every audit
    number (rel_error against the intended objective, cosine, bias terms) is the same — on trees where verl's
    k3 clamp (value clamped to ≤ 10) is inactive; see the next test for where it is not."""
    from rlkl.toy.audit import aggregation_scale, audit_one, make_setup
    from rlkl.toy.expected import LossSpec
    from rlkl.toy.mdp import TreeMDP
    beta, mode = 0.1, "seq-mean-token-mean"
    grpo = get_method("grpo").replace(beta=beta, aggregation=Aggregation(mode))
    mdp = TreeMDP.random(3, 3, 2, eos=eos, reward="binary", seed=3)
    pi, old, ref = make_setup(mdp, seed=0, off_policy=off_policy, logit_scale=0.5)
    with torch.no_grad():  # premise: no token of the tree reaches verl's clamp k3 > 10
        k3 = kl_loss(pi.token_logp(), ref.token_logp(), mdp.enumerate().mask.repeat(2, 1), "k3")
    assert float(k3.max()) < 10
    behaviour = old if off_policy else None
    ours = audit_one(grpo, mdp, pi, behaviour, ref, group_size=G)
    spec = LossSpec(_verl_grpo_kl_loss_fn(mode, beta), G, aggregation=mode, coupling="rewards", name="verl")
    theirs = audit_one(spec, mdp, pi, behaviour, ref, group_size=G, objective=grpo.bound_objective(G),
                       scale=aggregation_scale(grpo, mdp), decompose=False)
    torch.testing.assert_close(theirs.grad, ours.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(theirs.target, ours.target, rtol=1e-12, atol=1e-14)
    assert theirs.record["rel_error"] == pytest.approx(ours.record["rel_error"], rel=1e-8)
    assert not ours.record["exact"] and "forward_direction" in ours.record["bias_terms"]


def test_verl_low_var_kl_clamp_is_a_known_difference():
    """verl clamps the k3 *value* to [−10, 10] (and log π_ref/π to ±20): a token with k3 > 10 gets no KL
    gradient in verl, while rlkl's k3 keeps it. Only there do the two differ (the peers' source, restated in docs/integrations.md)."""
    logp = torch.tensor([[-0.1, -0.2], [-0.3, -0.1]], dtype=torch.float64, requires_grad=True)
    logp_ref = torch.tensor([[-0.2, -0.3], [2.8, -0.2]], dtype=torch.float64)  # row 1 token 0: k3 = e^3.1 − 4.1
    mask = torch.ones(2, 2, dtype=torch.bool)
    v = core_algos.agg_loss(core_algos.kl_penalty(logp, logp_ref, "low_var_kl"), mask, "token-mean")
    r = aggregate(kl_loss(logp, logp_ref, mask, "k3"), mask, "token-mean")
    gv, gr = _grads(v, logp), _grads(r, logp)
    assert float(gv[1, 0]) == 0.0 and float(gr[1, 0]) != 0.0
    keep = torch.ones(2, 2, dtype=torch.bool)
    keep[1, 0] = False
    torch.testing.assert_close(gv[keep], gr[keep], rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------------------------------------------------------
# verl's own shipped config (read from the installed wheel, never copied) and the recorded peer fixtures

import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import verl  # noqa: E402

from rlkl.integrations.keys import Kind  # noqa: E402
from rlkl.integrations.translate import translate_verl  # noqa: E402

VERL_CONFIG_DIR = Path(os.path.dirname(verl.__file__)) / "trainer" / "config"
PEERS = Path(__file__).parent / "fixtures" / "peers"


def test_verl_version_is_the_one_rlkl_states():
    assert verl.__version__ == "0.9.1"


def test_verls_own_ppo_trainer_yaml_every_key_classified():
    """verl's ppo_trainer.yaml (Hydra defaults list, composed by Hydra) + the issue's overrides: all ~900 keys are
    translated, layout or ignored — none unknown, none unsupported — and the Method is rlkl's grpo components."""
    path = VERL_CONFIG_DIR / "ppo_trainer.yaml"
    t = translate_verl(str(path), ["algorithm.adv_estimator=grpo", "actor_rollout_ref.actor.use_kl_loss=True",
                                   "actor_rollout_ref.rollout.n=4"])
    assert len(t.keys) > 800 and not t.unsupported, [k.line() for k in t.unsupported][:5]
    kinds = {k.kind for k in t.keys}
    assert kinds == {Kind.TRANSLATED, Kind.LAYOUT, Kind.IGNORED}
    m = t.require_method()
    g = get_method("grpo")
    assert (m.advantage, m.policy_loss, m.kl) == (g.advantage, g.policy_loss, g.kl) and m.beta == 0.001
    assert m.aggregation.mode.value == "token-mean" and t.steps_per_rollout == 4  # 1024 / 256 prompts
    # the composed values equal the stated verl 0.9.1 defaults for every key rlkl reads
    from rlkl.integrations.translate import VERL_DEFAULTS

    given = {k.key: k.value for k in t.keys}
    for key, default in VERL_DEFAULTS.items():
        if key not in ("algorithm.adv_estimator", "actor_rollout_ref.actor.use_kl_loss", "actor_rollout_ref.rollout.n"):
            assert given[key] == default, key
    # the plain generated file (no Hydra) classifies the same way
    plain = translate_verl(str(VERL_CONFIG_DIR / "_generated_ppo_trainer.yaml"),
                           ["algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=4"])
    assert not plain.unsupported, [k.line() for k in plain.unsupported][:5]


def test_rlkl_audit_of_verls_own_config_prints_a_verdict(capsys):
    from rlkl.cli import main

    # the issue's command: verl's own config, two overrides (rollout.n stays verl's default 1: noted, G from the audit)
    rc = main(["audit", "--verl", str(VERL_CONFIG_DIR / "ppo_trainer.yaml"), "algorithm.adv_estimator=grpo",
               "actor_rollout_ref.actor.use_kl_loss=True", "--horizon", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and "BIASED" in out and "forward_direction" in out and "smallest change to exact" in out
    assert "rollout.n is not set (verl's default 1" in out and "(G=4;" in out


def test_hydra_errors_are_reported():
    with pytest.raises(ValueError, match="Could not override 'algorithm.bogus'"):
        translate_verl(str(VERL_CONFIG_DIR / "ppo_trainer.yaml"), ["algorithm.bogus=1"])


def _recorder():
    spec = importlib.util.spec_from_file_location("record_peer_fixtures",
                                                  Path(__file__).parents[1] / "scripts" / "record_peer_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_recorded_verl_fixtures_are_current():
    """Re-record in memory: verl's functions still give the stored losses, gradients and advantages (else rerun
    scripts/record_peer_fixtures.py verl and read the diff)."""
    live = _recorder().record_verl()
    assert set(live) == {p.stem for p in PEERS.glob("verl_*.json")}
    for name, fx in live.items():
        stored = json.loads((PEERS / f"{name}.json").read_text())
        assert stored["config"] == fx["config"] and stored["batch"] == fx["batch"]
        assert fx["loss"] == pytest.approx(stored["loss"], rel=1e-13, abs=1e-15), name
        torch.testing.assert_close(torch.tensor(fx["grad"]), torch.tensor(stored["grad"]), rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(torch.tensor(fx["advantages"]), torch.tensor(stored["advantages"]), rtol=1e-12,
                                   atol=1e-15)


# ---------------------------------------------------------------------------------------------------------------
# algorithm.rollout_correction and the rollout sampler keys (rlkl.integrations.rollout) against verl's own code
from verl.trainer.ppo import rollout_corr_helper as rch  # noqa: E402

from rlkl.integrations.rollout import parse_verl_threshold  # noqa: E402


@pytest.mark.parametrize("level,threshold", [("token", 2.0), ("token", "1.5"), ("token", "0.6_1.5"),
                                             ("token", "0.2_5"), ("sequence", 2.0), ("sequence", 3.0),
                                             ("sequence", "0.3_2.5"), ("sequence", "0.5_1.1")])
def test_rollout_is_weights_equal_verl(level, threshold):
    """verl's compute_rollout_correction_and_rejection_mask (log ρ = old_log_prob − rollout_log_prob) gives the
    weights of the correction from_verl translates the config to, through Method.rollout_weights (1e-12)."""
    rec = _recorder()
    t = translate_verl({"algorithm.adv_estimator": "grpo", "actor_rollout_ref.rollout.n": 4,
                        "algorithm.rollout_correction.rollout_is": level,
                        "algorithm.rollout_correction.rollout_is_threshold": threshold})
    m = t.require_method()
    for seed in range(3):
        b = rec.mismatch_batch(500 + seed)
        proto, mask_out, _ = rch.compute_rollout_correction_and_rejection_mask(
            old_log_prob=b["logp_old"], rollout_log_prob=b["logp_rollout"], response_mask=b["mask"].long(),
            rollout_is=level, rollout_is_threshold=threshold)
        B = b["mask"].shape[0]
        rb = RolloutBatch(b["logp_old"], b["logp_old"], b["mask"], torch.zeros(B, dtype=torch.float64), G,
                          logp_rollout=b["logp_rollout"])
        torch.testing.assert_close(m.rollout_weights(rb), proto.batch["rollout_is_weights"], rtol=1e-12, atol=1e-14)
        assert torch.equal(mask_out.bool(), b["mask"])  # IS alone leaves the response mask as it is


@pytest.mark.parametrize("spec", [2.0, "2", "0.5_3", "1_1", "0.2_0.9", "-1", "0_2", "3_2", "abc", "", True])
def test_threshold_parse_agrees_with_verl(spec):
    try:
        want = rch._parse_rollout_is_threshold(spec)
    except (TypeError, ValueError):
        with pytest.raises(ValueError):
            parse_verl_threshold(spec)
        return
    assert parse_verl_threshold(spec) == want


def test_rollout_correction_defaults_are_the_yamls():
    """rlkl states the defaults of verl's config files (what Hydra composes; also checked key by key in
    test_verls_own_ppo_trainer_yaml_every_key_classified), not of the RolloutCorrectionConfig dataclass, whose own
    default rollout_is='sequence' a composed config never sees."""
    import yaml
    from verl.trainer.config.algorithm import RolloutCorrectionConfig

    from rlkl.integrations.rollout import VERL_ROLLOUT_DEFAULTS

    y = yaml.safe_load((VERL_CONFIG_DIR / "algorithm" / "rollout_correction.yaml").read_text())
    for key, value in VERL_ROLLOUT_DEFAULTS.items():
        if key.startswith("algorithm.rollout_correction."):
            assert y[key.rsplit(".", 1)[1]] == value, key
    assert RolloutCorrectionConfig().rollout_is == "sequence" and y["rollout_is"] is None


def test_recorded_verl_rollout_fixtures_are_current():
    live = _recorder().record_verl_rollout()
    assert set(live) == {p.stem for p in (PEERS / "rollout").glob("verl_*.json")}
    for name, fx in live.items():
        stored = json.loads((PEERS / "rollout" / f"{name}.json").read_text())
        assert stored["config"] == fx["config"] and stored["batch"] == fx["batch"]
        torch.testing.assert_close(torch.tensor(fx["weights"]), torch.tensor(stored["weights"]), rtol=1e-13,
                                   atol=1e-15)
