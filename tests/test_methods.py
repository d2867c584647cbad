"""Tests of rlkl.methods: the Method of typed components, RolloutBatch, the registry, and the verl/TRL translations
(rlkl.integrations.flags).

Every registry method runs on float64 and float32 batches with finite gradients; group methods refuse groups of
one; Method.advantages equals loop references for each KL term; the losses of translated verl/TRL default
configs equal those frameworks' formulas restated here (verl core_algos / TRL GRPOTrainer); on-policy, the PPO-clip and GSPO
methods' gradient equals REINFORCE's with the same advantages. float64 at 1e-12; float32 against float64 at
rtol 1e-4 / atol 1e-5 (a scalar loss aggregated from O(10) tokens).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rlkl.advantages import frpo_advantages, future_return, group_centered, group_standardized, leave_one_out
from rlkl.losses import RPGClip, aggregate, kl_loss, ppo_clip_loss
from rlkl.toy.terms import TERMS
from rlkl.components import (GSPO, RPG, AggMode, Aggregation, Estimator, FutureReturn, GroupCentered,
                             GroupStandardized, KLLoss, KLReward, KLTerm, LeaveOneOut, NoKL, PPOClip, Raw, Reinforce,
                             PassAtK, RewardForm, RPGLevel, Std, TokenWhitened)
from rlkl.integrations.flags import from_trl, from_verl
from rlkl.methods import REGISTRY, Method, Objective, RolloutBatch, get_method, list_methods
from strategies import token_batches

F64 = torch.float64
DIAGNOSTIC_KEYS = {"loss/policy", "loss/kl", "clip_fraction/low", "clip_fraction/high", "clip_fraction/dual",
                   "ratio/mean", "ratio/min", "ratio/max", "kl/k1", "kl/k2", "kl/k3", "advantage/mean",
                   "advantage/std", "zero_advantage_group_fraction"}


def make_batch(dtype=F64, G: int = 4, n_groups: int = 2, T: int = 5, seed: int = 0, on_policy: bool = False):
    """(logp, RolloutBatch): right-padded lengths 1..T, binary rewards, the second group all-equal (all 0)."""
    g = torch.Generator().manual_seed(seed)
    B = G * n_groups
    logp_old = -torch.rand(B, T, generator=g, dtype=F64) * 3.0 - 0.05
    logp_ref = torch.clamp(logp_old + 0.5 * torch.randn(B, T, generator=g, dtype=F64), max=-0.01)
    logp = logp_old.clone() if on_policy else torch.clamp(logp_old + 0.3 * torch.randn(B, T, generator=g, dtype=F64),
                                                          max=-0.01)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = torch.arange(T)[None, :] < lengths[:, None]
    rewards = torch.zeros(B, dtype=F64)
    rewards[: G // 2 + 1] = 1.0
    batch = RolloutBatch(logp_old.to(dtype), logp_ref.to(dtype), mask, rewards.to(dtype), G)
    return logp.to(dtype), batch


def loss_and_grad(method: Method, logp: torch.Tensor, batch: RolloutBatch):
    x = logp.detach().clone().requires_grad_()
    loss, diag = method.loss(x, batch)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g, diag


# ---------------------------------------------------------------------------------------------------------------
# the registry


def test_registry_has_the_required_methods():
    required = {"reinforce", "grpo", "grpo_k1_loss", "grpo_k2_loss", "grpo_is_k3", "grpo_k1_reward", "ppo_k1_rtg",
                "dr_grpo", "dapo", "rloo", "gspo", "frpo"}
    required |= {f"rpg_{d}" for d in ("fkl", "rkl", "ufkl", "urkl")}
    required |= {f"rpg_reinforce_{d}" for d in ("fkl", "rkl", "ufkl", "urkl")}
    assert required <= set(REGISTRY)
    assert list_methods() == list(REGISTRY)
    # FRPO with reverse KL and at least one other f
    frpo_fs = {m.kl.divergence for m in REGISTRY.values() if isinstance(m.kl, FutureReturn)}
    assert "reverse_kl" in frpo_fs and len(frpo_fs) >= 2
    # RPG methods carry RPG-Style Clip (the sequence-level REINFORCE ones are the unclipped exact forms)
    for d in ("fkl", "rkl", "ufkl", "urkl"):
        assert isinstance(REGISTRY[f"rpg_{d}"].policy_loss.clip, RPGClip)
        assert isinstance(REGISTRY[f"rpg_reinforce_{d}"].policy_loss.clip, RPGClip)
    for name, m in REGISTRY.items():
        assert m.name == name and m.citation and isinstance(m.objective, Objective)
        assert set(m.predicted_bias_terms(True, True)) <= set(TERMS)
    with pytest.raises(ValueError, match="unknown method 'grpo2'"):
        get_method("grpo2")
    assert get_method("grpo") is REGISTRY["grpo"]


def test_grpo_registry_entry_is_the_verl_trl_default_shape():
    # GRPO default: std-normalized (Bessel, ε 1e-6), PPO clip 0.2 with dual clip, k3 as a loss, seq-mean-token-mean
    m = REGISTRY["grpo"]
    assert m.advantage == GroupStandardized(Std.BESSEL, 1e-6)
    assert m.kl == KLLoss(Estimator.K3, straight_through=False, importance_weight=False)
    assert m.policy_loss == PPOClip(0.2, 0.2, dual=3.0) and m.aggregation == Aggregation(AggMode.SEQ_MEAN_TOKEN_MEAN)
    assert REGISTRY["grpo_is_k3"].kl.importance_weight and REGISTRY["grpo_k3_plus"].kl.straight_through
    assert REGISTRY["grpo_k1_reward"].kl == KLReward(Estimator.K1, RewardForm.FUSED)
    assert REGISTRY["dr_grpo"].aggregation.mode is AggMode.SEQ_MEAN_TOKEN_SUM_NORM
    assert REGISTRY["dapo"].policy_loss.high == 0.28 and REGISTRY["dapo"].aggregation.mode is AggMode.TOKEN_MEAN


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_method_runs_in_float64_and_float32(name):
    method = REGISTRY[name]
    results = {}
    for dtype in (F64, torch.float32):
        logp, batch = make_batch(dtype)
        if isinstance(method.advantage, PassAtK):  # pass@k learns only from a group's unique best (here 3 of 4 win)
            batch = dataclasses.replace(batch, rewards=torch.eye(1, batch.batch_size, dtype=dtype)[0])
        loss, g, diag = loss_and_grad(method, logp, batch)
        assert loss.dim() == 0 and loss.dtype == dtype and math.isfinite(loss.item())
        assert g.dtype == dtype and bool(torch.isfinite(g).all())
        assert bool((g[~batch.mask] == 0).all())  # padding gets no gradient
        assert g.abs().sum() > 0  # the method does update the policy
        assert set(diag) == DIAGNOSTIC_KEYS
        for k, v in diag.items():
            assert isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad, k
            assert math.isfinite(v.item()), k
        results[dtype] = (loss, g)
    (l64, g64), (l32, g32) = results[F64], results[torch.float32]
    assert l32.item() == pytest.approx(l64.item(), rel=1e-4, abs=1e-5)
    assert torch.allclose(g32.double(), g64, rtol=1e-4, atol=1e-5)


@given(tb=token_batches(), name=st.sampled_from(list(REGISTRY)))
def test_every_method_on_random_batches(tb, name):
    loss, g, diag = loss_and_grad(REGISTRY[name], tb.logp, tb.rollout())
    assert math.isfinite(loss.item()) and bool(torch.isfinite(g).all())
    assert all(math.isfinite(v.item()) for v in diag.values())


@pytest.mark.parametrize("name", [n for n, m in REGISTRY.items() if m.is_group_based])
def test_group_methods_refuse_groups_of_one(name):
    logp, batch = make_batch(G=1, n_groups=4)
    with pytest.raises(ValueError, match=f"method '{name}' uses a group-based advantage .* group_size >= 2, got 1"):
        REGISTRY[name].loss(logp, batch)


def test_non_group_methods_accept_groups_of_one():
    logp, batch = make_batch(G=1, n_groups=4)
    assert not REGISTRY["reinforce"].is_group_based
    loss, _ = REGISTRY["reinforce"].loss(logp, batch)
    assert math.isfinite(loss.item())


# ---------------------------------------------------------------------------------------------------------------
# advantages per KL placement, against loops


def loop_seq_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.tensor([sum(v for v, m in zip(row, mrow) if m) for row, mrow in zip(values.tolist(), mask.tolist())],
                        dtype=values.dtype)


def test_advantages_for_each_placement():
    logp, batch = make_batch()
    m = batch.mask
    R, G = batch.rewards, batch.group_size
    lr_old = batch.logp_old - batch.logp_ref  # rollout-time log ratio (verl / OpenRLHF / FRPO use π_old)
    # grpo: group-standardized reward broadcast to every valid token
    assert torch.allclose(REGISTRY["grpo"].advantages(batch), group_standardized(R, G)[:, None] * m, atol=1e-15)
    # verl GRPO + use_kl_in_reward: R − β Σ_t k1 fused *before* standardization (the peer's source)
    mth = REGISTRY["grpo_k1_reward"]
    fused = group_standardized(R - mth.beta * loop_seq_sum(lr_old, m), G)
    assert torch.allclose(mth.sequence_advantages(batch), fused, rtol=1e-12, atol=1e-12)
    assert torch.allclose(mth.advantages(batch), fused[:, None] * m, rtol=1e-12, atol=1e-12)
    # RLOO (TRL RLOOTrainer): leave-one-out of R − β Σ_t k1
    mth = REGISTRY["rloo"]
    assert torch.allclose(mth.sequence_advantages(batch), leave_one_out(R - mth.beta * loop_seq_sum(lr_old, m), G),
                          rtol=1e-12, atol=1e-12)
    # PPO k1 reward-to-go (OpenRLHF): task advantage − β Σ_{j≥t} k1_j
    mth = REGISTRY["ppo_k1_rtg"]
    rtg = [[sum(lr_old[i, j].item() for j in range(t_, m.shape[1]) if m[i, j]) if m[i, t_] else 0.0
            for t_ in range(m.shape[1])] for i in range(m.shape[0])]
    expected = (leave_one_out(R, G)[:, None] - mth.beta * torch.tensor(rtg, dtype=F64)) * m
    assert torch.allclose(mth.advantages(batch), expected, rtol=1e-12, atol=1e-12)
    # FRPO: the method path equals frpo_advantages on the rollout log-probs
    for name in ("frpo", "frpo_k3", "frpo_forward_kl"):
        mth = REGISTRY[name]
        ref = frpo_advantages(R, batch.logp_old, batch.logp_ref, m, G, mth.beta, mth.kl.divergence, True,
                              mth.advantage.eps, mth.advantage.std.value)
        assert torch.allclose(mth.advantages(batch), ref, rtol=1e-12, atol=1e-12), name
    assert torch.allclose(REGISTRY["frpo"].advantages(batch),
                          (group_standardized(R, G, 1e-6, "population")[:, None]
                           - 0.01 * future_return(lr_old, m, True)) * m, rtol=1e-12, atol=1e-12)
    # Dr. GRPO: R − μ
    assert torch.allclose(REGISTRY["dr_grpo"].advantages(batch), group_centered(R, G)[:, None] * m)
    for mth in REGISTRY.values():
        assert not mth.advantages(batch).requires_grad


class _PPOClipReadingPadding(PPOClip):
    """PPO clip declared as reading the advantages on padding (a user's loss: the base class's safe default)."""

    reads_padding_advantages = True


@pytest.mark.parametrize("name, row_view", [("grpo", True), ("rpg_reinforce_urkl_seq", True), ("gspo", True),
                                            ("reinforce_pp_baseline", False),  # token whitening: a token step
                                            ("frpo", False)])  # FutureReturn: a token penalty in the advantages
def test_policy_loss_gets_one_advantage_per_row_only_where_nothing_varies_along_the_row(monkeypatch, name, row_view):
    """Method.loss hands a built-in policy loss the [B] advantages as a stride-0 [B, T] view (one value per row, no
    [B, T] pass) unless a token penalty or token whitening makes them vary along the row; a loss that may read
    padding advantages gets them 0 there, as Method.advantages gives them. The loss and gradient are the same."""
    method = get_method(name)
    if method.has_kl:
        method = method.replace(beta=0.05)  # every KL path active
    logp, batch = make_batch()
    seen = []

    def spy(cls):
        terms = cls.terms
        monkeypatch.setattr(cls, "terms", lambda self, lp, lo, adv, mask, beta: (seen.append(adv), terms(
            self, lp, lo, adv, mask, beta))[1])

    spy(type(method.policy_loss))
    loss, grad, _ = loss_and_grad(method, logp, batch)
    materialized = method.advantages(batch)  # [B, T], 0 on padding
    adv = seen[-1]
    assert (adv.stride(-1) == 0) == row_view
    if row_view:  # each row's value, also on its padding
        assert torch.equal(adv, method.sequence_advantages(batch)[:, None].expand_as(adv))
        assert torch.equal(adv[batch.mask], materialized[batch.mask]) and bool((materialized[~batch.mask] == 0).all())
    else:
        assert torch.equal(adv, materialized)
    if name == "grpo":  # the same method with a loss that reads padding: materialized advantages, the same loss
        pl = method.policy_loss
        other = method.replace(policy_loss=_PPOClipReadingPadding(pl.low, pl.high, pl.dual))
        spy(_PPOClipReadingPadding)
        loss2, grad2, _ = loss_and_grad(other, logp, batch)
        assert seen[-1].stride(-1) != 0 and torch.equal(seen[-1], materialized)
        assert torch.equal(loss2, loss) and torch.equal(grad2, grad)


@dataclasses.dataclass(frozen=True)
class _AggregationSeeingShapes(Aggregation):
    """A user's aggregation: records the loss shape it is given, then aggregates as the built-in one."""

    seen: list = dataclasses.field(default_factory=list, compare=False)

    def __call__(self, loss, mask):
        self.seen.append(tuple(loss.shape))
        return aggregate(loss, mask, self.mode.value, self.horizon)


def test_sequence_level_rpg_hands_the_aggregation_one_value_per_response():
    """Sequence-level RPG's terms are [B, 1] (ℓ_i/|y_i| each token's loss): the built-in aggregation counts it
    |y_i| times, a user's aggregation gets it spread to [B, T]; the loss and gradient are those of the [B, T]
    broadcast, and equal the hand formula (1/B) Σ_i ℓ_i with ℓ_i = −sg[Weight_i]·Σ_t log π."""
    method = get_method("rpg_reinforce_urkl_seq").replace(advantage=Raw(), beta=0.1)
    logp, batch = make_batch()
    loss, grad, _ = loss_and_grad(method, logp, batch)
    user = method.replace(aggregation=_AggregationSeeingShapes(AggMode.SEQ_MEAN_TOKEN_SUM))
    loss2, grad2, _ = loss_and_grad(user, logp, batch)
    B, T = batch.mask.shape
    assert user.aggregation.seen[0] == (B, T)
    assert torch.allclose(loss2, loss, rtol=1e-14, atol=0) and torch.allclose(grad2, grad, rtol=1e-14, atol=1e-16)
    m = batch.mask.to(F64)
    lp, log_w = (logp * m).sum(-1), ((logp - batch.logp_old) * m).sum(-1)  # [B]
    w, A = log_w.exp(), batch.rewards  # Raw advantage
    weight = w * (A - 0.1 * log_w)  # URKL, REINFORCE form: Weight = w(A − β log w)
    assert torch.allclose(loss, (-weight * lp).mean(), rtol=1e-13, atol=0)
    assert torch.allclose(grad, (-weight[:, None] * m) / B, rtol=1e-13, atol=1e-16)


def test_penalizes_names_the_kl_terms_with_a_reward_part():
    """The rollout log-ratio is built only for a KL term whose class overrides a penalty (a KL loss has none)."""
    assert not any(k.penalizes_sequences or k.penalizes_tokens for k in (NoKL(), KLLoss()))
    assert KLReward().penalizes_sequences and KLReward().penalizes_tokens
    assert FutureReturn().penalizes_tokens and not FutureReturn().penalizes_sequences

    @dataclasses.dataclass(frozen=True)
    class OneNatPerToken(KLTerm):  # a user's term: a token penalty of 1 nat
        reads_rollout_logprobs = True

        def token_penalty(self, log_ratio_old, mask):
            return mask.to(log_ratio_old.dtype)

    _, batch = make_batch()
    base = get_method("reinforce").replace(advantage=Raw())
    user = base.replace(kl=OneNatPerToken(), beta=0.25)
    # A_t = r − β·1 on each valid token, r − 0.25 (0 on padding)
    expected = (batch.rewards[:, None] - 0.25) * batch.mask
    assert torch.equal(user.advantages(batch), expected)


def test_steps_tokens_names_the_advantages_with_a_token_step():
    assert TokenWhitened().steps_tokens
    assert not any(a.steps_tokens for a in (GroupStandardized(), GroupCentered(), Raw(), LeaveOneOut()))


def test_grpo_loss_is_the_composition_of_library_terms():
    # grpo = seq-mean-token-mean[ PPO-clip(dual 3) + β·k3(logp − logp_ref) ]
    logp, batch = make_batch()
    mth = REGISTRY["grpo"]
    A = group_standardized(batch.rewards, batch.group_size)[:, None].expand_as(logp) * batch.mask
    per_tok = ppo_clip_loss(logp, batch.logp_old, A, batch.mask, 0.2, 0.2, 3.0).loss + \
        mth.beta * kl_loss(logp, batch.logp_ref, batch.mask, "k3")
    loss, diag = mth.loss(logp, batch)
    assert loss.item() == pytest.approx(aggregate(per_tok, batch.mask, "seq-mean-token-mean").item(), rel=1e-13)
    # diagnostics: kl/k1 is the token mean of logp − logp_ref; half the groups (the all-zero one) have A ≡ 0
    lr = (logp - batch.logp_ref)[batch.mask]
    assert diag["kl/k1"].item() == pytest.approx(lr.mean().item(), rel=1e-12)
    assert diag["kl/k3"].item() == pytest.approx((torch.exp(-lr) - 1 + lr).mean().item(), rel=1e-12)
    assert diag["zero_advantage_group_fraction"].item() == 0.5
    assert diag["loss/kl"].item() == pytest.approx(
        aggregate(kl_loss(logp, batch.logp_ref, batch.mask, "k3"), batch.mask, "seq-mean-token-mean").item(), rel=1e-13)


PPO_LIKE = [n for n, m in REGISTRY.items() if isinstance(m.policy_loss, (PPOClip, GSPO))]


@given(tb=token_batches(on_policy=True), name=st.sampled_from(PPO_LIKE))
def test_on_policy_ppo_methods_gradient_equals_reinforce(tb, name):
    # logp == logp_old (values): ρ ≡ 1, nothing is clipped, so the PPO-clip (and GSPO) gradient equals REINFORCE's
    # with the same advantages (and the same KL term and aggregation)
    method = REGISTRY[name]
    batch = tb.rollout()
    _, g, _ = loss_and_grad(method, tb.logp, batch)
    _, g_rf, _ = loss_and_grad(method.replace(policy_loss=Reinforce()), tb.logp, batch)
    assert torch.allclose(g, g_rf, rtol=1e-12, atol=1e-14)


@given(tb=token_batches(on_policy=True))
def test_on_policy_rpg_reinforce_clip_is_exact(tb):
    # RPG Alg. 2 at w ≡ 1: the clipped method's gradient equals the unclipped one's
    batch = tb.rollout()
    for d in ("fkl", "rkl", "ufkl", "urkl"):
        m = REGISTRY[f"rpg_reinforce_{d}"]
        _, g, _ = loss_and_grad(m, tb.logp, batch)
        _, g0, _ = loss_and_grad(m.replace(policy_loss=m.policy_loss.unclipped()), tb.logp, batch)
        assert torch.allclose(g, g0, rtol=1e-12, atol=1e-14), d


# ---------------------------------------------------------------------------------------------------------------
# peer translations


def test_from_verl_defaults():
    m = from_verl({"algorithm.adv_estimator": "grpo", "actor.use_kl_loss": True})
    assert m.advantage == GroupStandardized(Std.BESSEL, 1e-6)
    assert m.kl == KLLoss(Estimator.K3, straight_through=False, importance_weight=False)
    assert m.beta == 0.001 and m.aggregation == Aggregation(AggMode.TOKEN_MEAN)
    assert m.policy_loss == PPOClip(0.2, 0.2, dual=3.0)
    assert m.objective.regularizer == "reverse_kl" and m.objective.anchor == "ref"
    assert {"forward_direction", "future_kl_missing", "finite_group_utility"} <= set(m.predicted_bias_terms())
    # nested form with the full actor path, and the '+' estimator
    nested = from_verl({"algorithm": {"adv_estimator": "grpo"},
                        "actor_rollout_ref": {"actor": {"use_kl_loss": True, "kl_loss_type": "low_var_kl+",
                                                        "kl_loss_coef": 0.01, "clip_ratio_high": 0.28}}})
    assert nested.kl == KLLoss(Estimator.K3, straight_through=True) and nested.beta == 0.01
    assert (nested.policy_loss.low, nested.policy_loss.high) == (0.2, 0.28)
    assert from_verl({"algorithm.adv_estimator": "grpo", "actor.use_kl_loss": True,
                      "actor.kl_loss_type": "mse"}).kl.estimator is Estimator.K2
    # no KL flag at all: no KL
    plain = from_verl({"algorithm.adv_estimator": "grpo"})
    assert plain.kl == NoKL() and plain.beta == 0.0


def test_from_verl_kl_in_reward_is_fused_k1():
    m = from_verl({"algorithm.adv_estimator": "grpo", "algorithm.use_kl_in_reward": True})
    assert (m.kl, m.beta) == (KLReward(Estimator.K1, RewardForm.FUSED), 0.001)
    assert "fusion_before_normalization" in m.predicted_bias_terms()
    k3r = from_verl({"algorithm.adv_estimator": "grpo", "algorithm.use_kl_in_reward": True,
                     "algorithm.kl_penalty": "low_var_kl"})
    assert k3r.kl.estimator is Estimator.K3 and "k_in_reward" in k3r.predicted_bias_terms()


def test_from_verl_other_translations():
    assert from_verl({"algorithm.adv_estimator": "rloo"}).advantage == LeaveOneOut()
    assert from_verl({"algorithm.adv_estimator": "grpo",
                      "algorithm.norm_adv_by_std_in_grpo": False}).advantage == GroupCentered()
    g = from_verl({"algorithm.adv_estimator": "grpo", "actor.policy_loss.loss_mode": "gspo",
                   "actor.clip_ratio_low": 3e-4, "actor.clip_ratio_high": 4e-4})
    assert g.policy_loss == GSPO(3e-4, 4e-4)
    # verl 0.9.1's ppo_loss passes config.loss_agg_mode to every loss, GSPO included (default token-mean)
    assert g.aggregation.mode is AggMode.TOKEN_MEAN
    d = from_verl({"algorithm.adv_estimator": "grpo", "actor.loss_agg_mode": "seq-mean-token-sum-norm",
                   "actor.loss_scale_factor": 4096})
    assert d.aggregation == Aggregation(AggMode.SEQ_MEAN_TOKEN_SUM_NORM, 4096)
    assert from_verl({"algorithm.adv_estimator": "grpo", "actor.policy_loss.loss_mode": "gpg"}).policy_loss == \
        Reinforce()


def test_from_verl_errors():
    with pytest.raises(ValueError, match=r"actor_rollout_ref.actor.bogus=1: unknown to verl 0.9.1"):
        from_verl({"algorithm.adv_estimator": "grpo", "actor.bogus": 1})
    with pytest.raises(ValueError, match="no critic"):
        from_verl({"actor.use_kl_loss": True})  # verl's default estimator is GAE (needs a critic)
    with pytest.raises(ValueError, match="together"):
        from_verl({"algorithm.adv_estimator": "grpo", "algorithm.use_kl_in_reward": True, "actor.use_kl_loss": True})
    with pytest.raises(ValueError, match="fixed"):
        from_verl({"algorithm.adv_estimator": "grpo", "algorithm.use_kl_in_reward": True,
                   "algorithm.kl_ctrl.type": "adaptive"})
    with pytest.raises(ValueError, match="only changes gradients"):
        from_verl({"algorithm.adv_estimator": "grpo", "algorithm.use_kl_in_reward": True,
                   "algorithm.kl_penalty": "low_var_kl+"})
    with pytest.raises(ValueError, match="'abs' has no rlkl equivalent"):
        from_verl({"algorithm.adv_estimator": "grpo", "actor.use_kl_loss": True, "actor.kl_loss_type": "abs"})
    with pytest.raises(ValueError, match="token-sum"):
        from_verl({"algorithm.adv_estimator": "grpo", "actor.loss_agg_mode": "token-sum"})
    with pytest.raises(ValueError, match="loss_mode='sapo' is not translatable"):
        from_verl({"algorithm.adv_estimator": "grpo", "actor.policy_loss.loss_mode": "sapo"})
    for bad in ([], 3):
        with pytest.raises(ValueError, match="needs a mapping of flags"):
            from_verl(bad)
    with pytest.raises(ValueError, match="config file 'grpo' does not exist"):
        from_verl("grpo")  # a string is a YAML path


def test_from_trl_defaults_and_options():
    m = from_trl({"beta": 0.04})
    # TRL >= 1.10 defaults use_bias_correction_kl=True (False in the 1.9.2 wheel, True in 1.10.0 and 1.16.0)
    assert m.kl == KLLoss(Estimator.K3, importance_weight=True) and m.beta == 0.04
    assert from_trl({"beta": 0.04}, trl_version="1.10").kl.importance_weight is True
    old = from_trl({"beta": 0.04}, trl_version="1.9")
    assert old.kl.importance_weight is False
    assert from_trl({"beta": 0.04}, trl_version="1.9.2").kl.importance_weight is False
    assert from_trl({"beta": 0.04, "use_bias_correction_kl": False}).kl.importance_weight is False
    assert m.aggregation.mode is AggMode.TOKEN_MEAN  # loss_type="dapo" (TRL default)
    assert m.advantage == GroupStandardized(Std.BESSEL, 1e-4)
    assert m.policy_loss == PPOClip(0.2, 0.2, None)
    assert from_trl({}).kl == NoKL() and from_trl({}).beta == 0.0  # TRL default β = 0
    dr = from_trl({"beta": 0.04, "loss_type": "dr_grpo"})
    assert dr.aggregation == Aggregation(AggMode.SEQ_MEAN_TOKEN_SUM_NORM, 512)  # max_completion_length default
    assert from_trl({"loss_type": "dr_grpo", "max_completion_length": 256}).aggregation.horizon == 256
    assert from_trl({"loss_type": "grpo"}).aggregation.mode is AggMode.SEQ_MEAN_TOKEN_MEAN
    assert from_trl({"loss_type": "bnpo"}).aggregation.mode is AggMode.TOKEN_MEAN
    assert from_trl({"scale_rewards": False}).advantage == GroupCentered()
    assert from_trl({"scale_rewards": "none"}).advantage == GroupCentered()
    assert from_trl({"scale_rewards": True}).advantage == GroupStandardized(Std.BESSEL, 1e-4)
    assert isinstance(from_trl({"importance_sampling_level": "sequence"}).policy_loss, GSPO)
    assert from_trl({"epsilon_high": 0.28}).policy_loss.high == 0.28
    for bad in ("1", "x.y", ""):
        with pytest.raises(ValueError, match="trl_version must look like"):
            from_trl({}, trl_version=bad)


def test_from_trl_errors():
    with pytest.raises(ValueError, match=r"kl_coef=0.1: not a field of TRL's GRPOConfig"):
        from_trl({"kl_coef": 0.1})
    with pytest.raises(ValueError, match="delta"):
        from_trl({"delta": 2.0})
    with pytest.raises(ValueError, match="loss_type='cispo'"):
        from_trl({"loss_type": "cispo"})
    with pytest.raises(ValueError, match="scale_rewards='batch'"):
        from_trl({"scale_rewards": "batch"})
    with pytest.raises(ValueError, match="importance_sampling_level='tokens'"):
        from_trl({"importance_sampling_level": "tokens"})


# peer formulas restated (the peers' source, restated in docs/integrations.md) as per-token loops


def _group_adv(R: list[float], G: int, eps: float) -> list[float]:
    out = []
    for g in range(0, len(R), G):
        grp = R[g:g + G]
        mu = sum(grp) / G
        sd = math.sqrt(sum((x - mu) ** 2 for x in grp) / (G - 1))  # Bessel (torch.std)
        out += [(x - mu) / (sd + eps) for x in grp]
    return out


def verl_default_grpo_loss(logp, batch) -> float:
    """verl: A = (R − μ)/(σ + 1e-6); vanilla PPO (ε 0.2, dual c = 3) + 0.001·low_var_kl (clamped); token-mean."""
    A = _group_adv(batch.rewards.tolist(), batch.group_size, 1e-6)
    num = den = 0.0
    for i in range(logp.shape[0]):
        for j in range(logp.shape[1]):
            if not batch.mask[i, j]:
                continue
            lp, lo, lr = logp[i, j].item(), batch.logp_old[i, j].item(), batch.logp_ref[i, j].item()
            rho = math.exp(max(-20.0, min(20.0, lp - lo)))
            pg = max(-rho * A[i], -min(max(rho, 0.8), 1.2) * A[i])
            if A[i] < 0:
                pg = min(pg, -3.0 * A[i])
            u = max(-20.0, min(20.0, lr - lp))
            kl = max(-10.0, min(10.0, math.exp(u) - u - 1.0))
            num += pg + 0.001 * kl
            den += 1
    return num / den


def trl_grpo_loss(logp, batch, beta: float, bias_correction: bool) -> float:
    """TRL: A = (R − μ)/(σ + 1e-4); −min(ρA, clip(ρ)A) + β·k3 (× ρ with bias correction); dapo = token-mean."""
    A = _group_adv(batch.rewards.tolist(), batch.group_size, 1e-4)
    num = den = 0.0
    for i in range(logp.shape[0]):
        for j in range(logp.shape[1]):
            if not batch.mask[i, j]:
                continue
            lp, lo, lr = logp[i, j].item(), batch.logp_old[i, j].item(), batch.logp_ref[i, j].item()
            c = math.exp(lp - lo)
            per_token = -min(c * A[i], min(max(c, 0.8), 1.2) * A[i])
            k3 = math.exp(lr - lp) - (lr - lp) - 1.0
            per_token += beta * k3 * (c if bias_correction else 1.0)
            num += per_token
            den += 1
    return num / den


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_translated_defaults_reproduce_verl_and_trl_losses(seed):
    # inside verl's clamp range (here |log ratio| < 2, k3 < 10) rlkl's unclamped k3 equals verl's
    logp, batch = make_batch(seed=seed)
    verl = from_verl({"algorithm.adv_estimator": "grpo", "actor.use_kl_loss": True})
    assert verl.loss(logp, batch)[0].item() == pytest.approx(verl_default_grpo_loss(logp, batch), rel=1e-12)
    for bc in (False, True):
        trl = from_trl({"beta": 0.04, "use_bias_correction_kl": bc})
        assert trl.loss(logp, batch)[0].item() == pytest.approx(trl_grpo_loss(logp, batch, 0.04, bc), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# predicted bias terms (the spec's claims, as encoded in the registry)


def test_predicted_bias_terms_of_key_methods():
    on = {n: set(m.predicted_bias_terms()) for n, m in REGISTRY.items()}
    assert on["grpo"] == {"finite_group_utility", "forward_direction", "future_kl_missing"}
    assert on["grpo_k1_loss"] == {"finite_group_utility", "no_kl_gradient"}
    assert "forward_direction" not in on["grpo_is_k3"] and "forward_direction" not in on["grpo_k2_loss"]
    assert "fusion_before_normalization" in on["grpo_k1_reward"]
    assert on["rloo"] == set() and on["ppo_k1_rtg"] == set() and on["reinforce"] == set()
    assert on["frpo"] == set()  # FRPO's intended objective already is the finite-group utility
    assert on["dr_grpo"] == {"leave_in_shrink"}
    assert "missing_importance_weight" in REGISTRY["grpo"].predicted_bias_terms(off_policy=True)
    assert "missing_importance_weight" not in REGISTRY["grpo_is_k3"].predicted_bias_terms(off_policy=True)
    assert "token_level_reverse" in REGISTRY["rpg_rkl"].predicted_bias_terms(off_policy=True)
    assert "token_level_reverse" not in REGISTRY["rpg_fkl"].predicted_bias_terms(off_policy=True)
    assert "length_normalization" in REGISTRY["grpo"].predicted_bias_terms(variable_length=True)
    assert "length_normalization" not in REGISTRY["dr_grpo"].predicted_bias_terms(variable_length=True)
    off = {n: set(m.predicted_bias_terms(off_policy=True)) for n, m in REGISTRY.items()}
    assert off["gspo"] == {"finite_group_utility", "clipping", "geometric_mean_ratio"}  # not token_level_ratio
    assert {"stale_kl_reward", "token_level_ratio", "clipping"} <= off["ppo_k1_rtg"]
    assert {"state_distribution_shift", "future_kl_missing"} <= off["grpo_k2_loss"]
    assert "state_distribution_shift" not in off["grpo_k1_loss"]  # k1's local field is 0 at any states


# ---------------------------------------------------------------------------------------------------------------
# validation


def test_method_field_validation():
    base = REGISTRY["grpo"]
    bad = [(dict(advantage="gae"), "Method.advantage must be an rlkl Advantage"),
           (dict(kl="loss"), "Method.kl must be an rlkl KLTerm"),
           (dict(aggregation="sum"), "Method.aggregation must be an rlkl Aggregation"),
           (dict(policy_loss="sapo"), "Method.policy_loss must be an rlkl PolicyLoss"),
           (dict(beta=-1.0), r"Method.beta must be in \[0, inf\)"), (dict(beta=float("nan")), "Method.beta must be a number"),
           (dict(beta=True), "Method.beta must be a real number"), (dict(name=""), "Method.name")]
    for changes, msg in bad:
        with pytest.raises(ValueError, match=msg):
            base.replace(**changes)
    component_errors = [(lambda: Aggregation("sum"), "Aggregation.mode='sum' is not one of"),
                        (lambda: KLLoss("k4"), "KLLoss.estimator='k4' is not one of"),
                        (lambda: FutureReturn("kl"), "unknown f-divergence 'kl'"),
                        (lambda: GroupStandardized(eps=-1.0), r"GroupStandardized.eps must be in \[0, inf\)"),
                        (lambda: GroupStandardized(std="sample"), "GroupStandardized.std='sample'"),
                        (lambda: PPOClip(low=1.0), r"PPOClip.low must be in \(0, 1\)"),
                        (lambda: PPOClip(dual=1.0), r"PPOClip.dual must be in \(1, inf\)"),
                        (lambda: GSPO(low=5, high=-3), r"GSPO.low must be in \(0, 1\)"),
                        (lambda: KLLoss("k2", straight_through=True), "k2's gradient already is k2's"),
                        (lambda: Aggregation("token-mean", 512), "only applies to mode=seq-mean-token-sum-norm"),
                        (lambda: RPG("xkl"), "RPG.divergence='xkl'")]
    for make, msg in component_errors:
        with pytest.raises(ValueError, match=msg):
            make()
    # invalid combinations name both components
    rpg = REGISTRY["rpg_fkl"]
    with pytest.raises(ValueError, match=r"policy_loss=RPG\(.*\) carries its own KL .* kl=KLLoss\("):
        rpg.replace(kl=KLLoss())
    with pytest.raises(ValueError, match=r"policy_loss=RPG\(.*level='sequence'.*needs aggregation=.*got Aggregation"):
        rpg.replace(policy_loss=RPG("fkl", "reinforce", RPGLevel.SEQUENCE))
    with pytest.raises(ValueError, match=r"beta=0.1 has no effect: kl=NoKL\(\) and policy_loss=PPOClip"):
        REGISTRY["no_kl"].replace(beta=0.1)
    assert REGISTRY["no_kl"].replace(beta=0.0).beta == 0.0 and REGISTRY["grpo"].replace(beta=0.0).beta == 0.0
    with pytest.raises(ValueError, match=r"Objective\(regularizer=token_f_divergence\) needs f_divergence"):
        Objective("expected_reward", "token_f_divergence")
    with pytest.raises(ValueError, match="utility='logit'"):
        Objective("logit")
    # frozen
    with pytest.raises(Exception):
        base.beta = 1.0  # type: ignore[misc]
    assert REGISTRY["grpo"].objective.describe() == "E[R] - beta*KL(pi||pi_ref)"
    assert REGISTRY["grpo"].bound_objective(4).describe() == "E[R] - 0.04*KL(pi||pi_ref)"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_method_dict_roundtrip(name):
    m = REGISTRY[name]
    import json

    again = Method.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m
    with pytest.raises(ValueError, match="unknown component kind 'Bogus'"):
        Method.from_dict({**m.to_dict(), "kl": {"kind": "Bogus"}})
    with pytest.raises(ValueError, match="expected one of"):
        Method.from_dict({**m.to_dict(), "kl": {"kind": "PPOClip"}})  # a policy loss is not a KL term
    with pytest.raises(ValueError, match=r"Method has no fields \['clip_low'\]"):
        Method.from_dict({**m.to_dict(), "clip_low": 0.2})


def test_rollout_batch_validation():
    logp, b = make_batch()
    with pytest.raises(ValueError, match="group_size=3 does not divide the batch size 8"):
        RolloutBatch(b.logp_old, b.logp_ref, b.mask, b.rewards, 3)
    with pytest.raises(ValueError, match=r"rewards has shape \(7,\), expected \(8,\)"):
        RolloutBatch(b.logp_old, b.logp_ref, b.mask, b.rewards[:7], 4)
    with pytest.raises(ValueError, match="rewards dtype torch.float32 differs"):
        RolloutBatch(b.logp_old, b.logp_ref, b.mask, b.rewards.float(), 4)
    with pytest.raises(ValueError, match="share one dtype"):
        RolloutBatch(b.logp_old, b.logp_ref.float(), b.mask, b.rewards, 4)
    with pytest.raises(ValueError, match="logp_ref has shape"):
        RolloutBatch(b.logp_old, b.logp_ref[:, :2], b.mask, b.rewards, 4)
    with pytest.raises(ValueError, match="selects no token"):
        RolloutBatch(b.logp_old, b.logp_ref, torch.zeros_like(b.mask), b.rewards, 4)
    with pytest.raises(ValueError, match="logp_old contains non-finite"):
        RolloutBatch(b.logp_old.clone().fill_(-float("inf")), b.logp_ref, b.mask, b.rewards, 4)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        RolloutBatch(b.logp_old, b.logp_ref, b.mask, b.rewards, 0)
    assert b.batch_size == 8


def test_method_loss_validation():
    logp, b = make_batch()
    m = REGISTRY["grpo"]
    with pytest.raises(ValueError, match="logp dtype torch.float32 differs"):
        m.loss(logp.float(), b)
    with pytest.raises(ValueError, match="logp has shape"):
        m.loss(logp[:, :2], b)
    with pytest.raises(ValueError, match="logp contains non-finite"):
        m.loss(logp.clone().fill_(float("nan")), b)
    with pytest.raises(ValueError, match="batch must be a RolloutBatch"):
        m.loss(logp, {"logp_old": b.logp_old})
    # sequence-level RPG and GSPO need every response to have a token
    empty = b.mask.clone()
    empty[-1] = False
    eb = RolloutBatch(b.logp_old, b.logp_ref, empty, b.rewards, 4)
    for name in ("gspo", "rpg_reinforce_fkl_seq"):
        with pytest.raises(ValueError, match="rows with no token"):
            REGISTRY[name].loss(logp, eb)


def test_only_advantages_that_read_lengths_get_them():
    from rlkl.components import Advantage, GroupStandardized, LengthWeightedCentered, Raw, TokenWhitened

    assert LengthWeightedCentered().reads_lengths
    assert not GroupStandardized().reads_lengths and not Raw().reads_lengths and not TokenWhitened().reads_lengths

    @dataclasses.dataclass(frozen=True)
    class LengthBonus(Raw):  # a user's advantage that overrides compute reads the lengths: it gets them
        def compute(self, rewards, group_size, lengths):
            return rewards + 0.5 * lengths

    assert LengthBonus().reads_lengths and issubclass(LengthBonus, Advantage)
    seen = []

    @dataclasses.dataclass(frozen=True)
    class Spy(Raw):
        def compute(self, rewards, group_size, lengths):
            seen.append(lengths)
            return rewards

    mask = torch.tensor([[True, True, False], [True, False, False]])
    batch = RolloutBatch(torch.zeros(2, 3), torch.zeros(2, 3), mask, torch.tensor([1.0, 0.0]), 1)
    get_method("reinforce").replace(advantage=Spy()).sequence_advantages(batch)
    assert seen[0].tolist() == [2.0, 1.0]  # |y_1| = 2, |y_2| = 1
