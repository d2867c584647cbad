"""Tests of rlkl.methods: the Method dataclass, RolloutBatch, the registry, and the verl/TRL translations.

Every registry method runs on float64 and float32 batches with finite gradients; group methods refuse groups of
one; Method.advantages equals loop references for each KL placement; the losses of translated verl/TRL default
configs equal those frameworks' formulas restated here (spec/peers.md §1, §2); on-policy, the PPO-clip and GSPO
methods' gradient equals REINFORCE's with the same advantages. float64 at 1e-12; float32 against float64 at
rtol 1e-4 / atol 1e-5 (a scalar loss aggregated from O(10) tokens).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rlkl.advantages import frpo_advantages, future_return, group_centered, group_standardized, leave_one_out
from rlkl.losses import RPGClip, aggregate, kl_loss, ppo_clip_loss
from rlkl.methods import (BIAS_TERMS, REGISTRY, Method, Objective, RolloutBatch, from_trl, from_verl, get_method,
                          list_methods)
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
    frpo_fs = {m.kl_divergence for m in REGISTRY.values() if m.kl_placement == "future_return"}
    assert "reverse_kl" in frpo_fs and len(frpo_fs) >= 2
    # RPG methods carry RPG-Style Clip (the sequence-level REINFORCE ones are the unclipped exact forms)
    for d in ("fkl", "rkl", "ufkl", "urkl"):
        assert isinstance(REGISTRY[f"rpg_{d}"].rpg_clip, RPGClip)
        assert isinstance(REGISTRY[f"rpg_reinforce_{d}"].rpg_clip, RPGClip)
    for name, m in REGISTRY.items():
        assert m.name == name and m.citation and isinstance(m.objective, Objective)
        assert set(m.predicted_bias_terms(True, True)) <= set(BIAS_TERMS)
    with pytest.raises(ValueError, match="unknown method 'grpo2'"):
        get_method("grpo2")
    assert get_method("grpo") is REGISTRY["grpo"]


def test_grpo_registry_entry_is_the_verl_trl_default_shape():
    # GRPO default: std-normalized (Bessel, ε 1e-6), PPO clip 0.2 with dual clip, k3 as a loss, seq-mean-token-mean
    m = REGISTRY["grpo"]
    assert (m.advantage, m.adv_std, m.adv_eps) == ("group_standardized", "bessel", 1e-6)
    assert (m.kl_estimator, m.kl_placement, m.kl_straight_through, m.kl_importance_weight) == ("k3", "loss", False,
                                                                                               False)
    assert (m.policy_loss, m.clip_low, m.clip_high, m.aggregation) == ("ppo_clip", 0.2, 0.2, "seq-mean-token-mean")
    assert REGISTRY["grpo_is_k3"].kl_importance_weight and REGISTRY["grpo_k3_plus"].kl_straight_through
    assert REGISTRY["grpo_k1_reward"].kl_placement == "reward" and REGISTRY["grpo_k1_reward"].kl_estimator == "k1"
    assert REGISTRY["dr_grpo"].aggregation == "seq-mean-token-sum-norm"
    assert REGISTRY["dapo"].clip_high == 0.28 and REGISTRY["dapo"].aggregation == "token-mean"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_method_runs_in_float64_and_float32(name):
    method = REGISTRY[name]
    results = {}
    for dtype in (F64, torch.float32):
        logp, batch = make_batch(dtype)
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
    # verl GRPO + use_kl_in_reward: R − β Σ_t k1 fused *before* standardization (peers.md §1.3)
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
        ref = frpo_advantages(R, batch.logp_old, batch.logp_ref, m, G, mth.beta, mth.kl_divergence, True,
                              mth.adv_eps, mth.adv_std)
        assert torch.allclose(mth.advantages(batch), ref, rtol=1e-12, atol=1e-12), name
    assert torch.allclose(REGISTRY["frpo"].advantages(batch),
                          (group_standardized(R, G, 1e-6, "population")[:, None]
                           - 0.01 * future_return(lr_old, m, True)) * m, rtol=1e-12, atol=1e-12)
    # Dr. GRPO: R − μ
    assert torch.allclose(REGISTRY["dr_grpo"].advantages(batch), group_centered(R, G)[:, None] * m)
    for mth in REGISTRY.values():
        assert not mth.advantages(batch).requires_grad


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


PPO_LIKE = [n for n, m in REGISTRY.items() if m.policy_loss in ("ppo_clip", "gspo")]


@given(tb=token_batches(on_policy=True), name=st.sampled_from(PPO_LIKE))
def test_on_policy_ppo_methods_gradient_equals_reinforce(tb, name):
    # logp == logp_old (values): ρ ≡ 1, nothing is clipped, so the PPO-clip (and GSPO) gradient equals REINFORCE's
    # with the same advantages (and the same KL term and aggregation)
    method = REGISTRY[name]
    batch = tb.rollout()
    _, g, _ = loss_and_grad(method, tb.logp, batch)
    _, g_rf, _ = loss_and_grad(method.replace(policy_loss="reinforce"), tb.logp, batch)
    assert torch.allclose(g, g_rf, rtol=1e-12, atol=1e-14)


@given(tb=token_batches(on_policy=True))
def test_on_policy_rpg_reinforce_clip_is_exact(tb):
    # RPG Alg. 2 at w ≡ 1: the clipped method's gradient equals the unclipped one's
    batch = tb.rollout()
    for d in ("fkl", "rkl", "ufkl", "urkl"):
        m = REGISTRY[f"rpg_reinforce_{d}"]
        _, g, _ = loss_and_grad(m, tb.logp, batch)
        _, g0, _ = loss_and_grad(m.replace(rpg_clip=None), tb.logp, batch)
        assert torch.allclose(g, g0, rtol=1e-12, atol=1e-14), d


# ---------------------------------------------------------------------------------------------------------------
# peer translations


def test_from_verl_defaults():
    m = from_verl({"algorithm.adv_estimator": "grpo", "actor.use_kl_loss": True})
    assert (m.advantage, m.adv_std, m.adv_eps) == ("group_standardized", "bessel", 1e-6)
    assert (m.kl_estimator, m.kl_placement, m.kl_straight_through, m.kl_importance_weight) == ("k3", "loss", False,
                                                                                               False)
    assert m.beta == 0.001 and m.aggregation == "token-mean" and m.dual_clip == 3.0 and m.horizon is None
    assert (m.policy_loss, m.clip_low, m.clip_high) == ("ppo_clip", 0.2, 0.2)
    assert m.objective.regularizer == "reverse_kl" and m.objective.anchor == "ref"
    assert {"forward_direction", "future_kl_missing", "finite_group_utility"} <= set(m.predicted_bias_terms())
    # nested form with the full actor path, and the '+' estimator
    nested = from_verl({"algorithm": {"adv_estimator": "grpo"},
                        "actor_rollout_ref": {"actor": {"use_kl_loss": True, "kl_loss_type": "low_var_kl+",
                                                        "kl_loss_coef": 0.01, "clip_ratio_high": 0.28}}})
    assert nested.kl_straight_through and nested.kl_estimator == "k3" and nested.beta == 0.01
    assert (nested.clip_low, nested.clip_high) == (0.2, 0.28)
    assert from_verl({"algorithm.adv_estimator": "grpo", "actor.use_kl_loss": True,
                      "actor.kl_loss_type": "mse"}).kl_estimator == "k2"
    # no KL flag at all: no KL
    plain = from_verl({"algorithm.adv_estimator": "grpo"})
    assert plain.kl_placement == "none" and plain.beta == 0.0


def test_from_verl_kl_in_reward_is_fused_k1():
    m = from_verl({"algorithm.adv_estimator": "grpo", "algorithm.use_kl_in_reward": True})
    assert (m.kl_placement, m.kl_estimator, m.beta) == ("reward", "k1", 0.001)
    assert "fusion_before_normalization" in m.predicted_bias_terms()
    logp, batch = make_batch()
    fused = group_standardized(batch.rewards - 0.001 * loop_seq_sum(batch.logp_old - batch.logp_ref, batch.mask),
                               batch.group_size)
    assert torch.allclose(m.sequence_advantages(batch), fused, rtol=1e-12, atol=1e-12)
    k3r = from_verl({"algorithm.adv_estimator": "grpo", "algorithm.use_kl_in_reward": True,
                     "algorithm.kl_penalty": "low_var_kl", "algorithm.kl_ctrl.kl_coef": 0.05})
    assert (k3r.kl_estimator, k3r.beta) == ("k3", 0.05) and "k_in_reward" in k3r.predicted_bias_terms()


def test_from_verl_other_translations():
    assert from_verl({"algorithm.adv_estimator": "rloo"}).advantage == "leave_one_out"
    assert from_verl({"algorithm.adv_estimator": "grpo",
                      "algorithm.norm_adv_by_std_in_grpo": False}).advantage == "group_centered"
    g = from_verl({"algorithm.adv_estimator": "grpo", "actor.policy_loss.loss_mode": "gspo",
                   "actor.loss_agg_mode": "token-mean"})
    assert g.policy_loss == "gspo" and g.aggregation == "seq-mean-token-mean"  # verl forces it for GSPO
    d = from_verl({"algorithm.adv_estimator": "grpo", "actor.loss_agg_mode": "seq-mean-token-sum-norm",
                   "actor.loss_scale_factor": 4096})
    assert d.aggregation == "seq-mean-token-sum-norm" and d.horizon == 4096
    assert from_verl({"algorithm.adv_estimator": "grpo", "actor.policy_loss.loss_mode": "gpg"}).policy_loss == \
        "reinforce"


def test_from_verl_errors():
    with pytest.raises(ValueError, match=r"from_verl does not know the keys \['actor.bogus'\]"):
        from_verl({"algorithm.adv_estimator": "grpo", "actor.bogus": 1})
    with pytest.raises(ValueError, match="adv_estimator='gae' is not translatable"):
        from_verl({"actor.use_kl_loss": True})  # verl's default estimator is GAE (needs a critic)
    with pytest.raises(ValueError, match="use_kl_in_reward and use_kl_loss together"):
        from_verl({"algorithm.adv_estimator": "grpo", "algorithm.use_kl_in_reward": True, "actor.use_kl_loss": True})
    with pytest.raises(ValueError, match="kl_ctrl.type='fixed'"):
        from_verl({"algorithm.adv_estimator": "grpo", "algorithm.use_kl_in_reward": True,
                   "algorithm.kl_ctrl.type": "adaptive"})
    with pytest.raises(ValueError, match="'\\+' KL type"):
        from_verl({"algorithm.adv_estimator": "grpo", "algorithm.use_kl_in_reward": True,
                   "algorithm.kl_penalty": "k3+"})
    with pytest.raises(ValueError, match="verl KL type 'abs'"):
        from_verl({"algorithm.adv_estimator": "grpo", "actor.use_kl_loss": True, "actor.kl_loss_type": "abs"})
    with pytest.raises(ValueError, match="token-sum"):
        from_verl({"algorithm.adv_estimator": "grpo", "actor.loss_agg_mode": "token-sum"})
    with pytest.raises(ValueError, match="loss_mode='sapo'"):
        from_verl({"algorithm.adv_estimator": "grpo", "actor.policy_loss.loss_mode": "sapo"})


def test_from_trl_defaults_and_options():
    m = from_trl({"beta": 0.04})
    # TRL >= 1.11 (PR #6503) multiplies the k3 loss by the ratio by default; 1.10 did not
    assert (m.kl_estimator, m.kl_placement, m.kl_importance_weight, m.beta) == ("k3", "loss", True, 0.04)
    old = from_trl({"beta": 0.04}, trl_version="1.10")
    assert old.kl_importance_weight is False
    assert from_trl({"beta": 0.04, "use_bias_correction_kl": False}).kl_importance_weight is False
    assert m.aggregation == "token-mean"  # loss_type="dapo" (TRL default)
    assert (m.advantage, m.adv_std, m.adv_eps) == ("group_standardized", "bessel", 1e-4)
    assert (m.policy_loss, m.clip_low, m.clip_high, m.dual_clip) == ("ppo_clip", 0.2, 0.2, None)
    assert from_trl({}).kl_placement == "none" and from_trl({}).beta == 0.0  # TRL default β = 0
    dr = from_trl({"beta": 0.04, "loss_type": "dr_grpo"})
    assert dr.aggregation == "seq-mean-token-sum-norm" and dr.horizon == 512  # max_completion_length default
    assert from_trl({"loss_type": "dr_grpo", "max_completion_length": 256}).horizon == 256
    assert from_trl({"loss_type": "grpo"}).aggregation == "seq-mean-token-mean"
    assert from_trl({"loss_type": "bnpo"}).aggregation == "token-mean"
    bc = from_trl({"beta": 0.04, "use_bias_correction_kl": True})
    assert bc.kl_importance_weight and "forward_direction" not in bc.predicted_bias_terms()
    assert from_trl({"scale_rewards": False}).advantage == "group_centered"
    assert from_trl({"scale_rewards": "none"}).advantage == "group_centered"
    assert from_trl({"scale_rewards": True}).advantage == "group_standardized"
    assert from_trl({"importance_sampling_level": "sequence"}).policy_loss == "gspo"
    assert from_trl({"epsilon_high": 0.28}).clip_high == 0.28


def test_from_trl_errors():
    with pytest.raises(ValueError, match=r"from_trl does not know the keys \['kl_coef'\]"):
        from_trl({"kl_coef": 0.1})
    with pytest.raises(ValueError, match="delta"):
        from_trl({"delta": 2.0})
    with pytest.raises(ValueError, match="loss_type='cispo'"):
        from_trl({"loss_type": "cispo"})
    with pytest.raises(ValueError, match="scale_rewards='batch'"):
        from_trl({"scale_rewards": "batch"})
    with pytest.raises(ValueError, match="importance_sampling_level='tokens'"):
        from_trl({"importance_sampling_level": "tokens"})


# peer formulas restated (spec/peers.md §1.1, §1.2, §1.4, §1.5, §2.2, §2.3) as per-token loops


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


# ---------------------------------------------------------------------------------------------------------------
# validation


def test_method_field_validation():
    base = REGISTRY["grpo"]
    bad = [(dict(advantage="gae"), "advantage='gae'"), (dict(kl_placement="value"), "kl_placement='value'"),
           (dict(aggregation="sum"), "aggregation='sum'"), (dict(kl_estimator="k4"), "kl_estimator='k4'"),
           (dict(kl_divergence="kl"), "kl_divergence='kl'"), (dict(beta=-1.0), "beta must be >= 0"),
           (dict(adv_eps=-1.0), "adv_eps must be >= 0"), (dict(policy_loss="sapo"), "policy_loss='sapo'"),
           (dict(kl_placement="reward", kl_straight_through=True), "kl_straight_through only applies"),
           (dict(kl_placement="reward", kl_importance_weight=True), "kl_importance_weight only applies"),
           (dict(rpg_divergence="fkl"), "rpg_divergence is set but policy_loss is not 'rpg'"),
           (dict(clip_low=1.0), "clip_low"), (dict(dual_clip=1.0), "dual_clip must be > 1"),
           (dict(adv_std="sample"), "adv_std='sample'")]
    for changes, msg in bad:
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            base.replace(**changes)
    rpg = REGISTRY["rpg_fkl"]
    with pytest.raises(ValueError, match="kl_placement must be 'none'"):
        rpg.replace(kl_placement="loss")
    with pytest.raises(ValueError, match="use aggregation='seq-mean-token-sum'"):
        rpg.replace(rpg_level="sequence")
    with pytest.raises(ValueError, match="rpg_divergence=None"):
        rpg.replace(rpg_divergence=None)
    with pytest.raises(ValueError, match="token_f_divergence needs f_divergence"):
        Objective("expected_reward", "token_f_divergence")
    with pytest.raises(ValueError, match="utility='linear'"):
        Objective("linear")
    # frozen
    with pytest.raises(Exception):
        base.beta = 1.0  # type: ignore[misc]
    assert REGISTRY["grpo"].objective.describe() == "E[R] - beta*KL(pi||pi_ref)"


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
