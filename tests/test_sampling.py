"""rlkl.sampling and the rollout corrections: hand-computed samplers, the kept-mass identity, correction weights,
mismatch diagnostics, the Method integration (weights on the policy loss only) and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rlkl.components import (GeometricMeanIS, MaskReplay, NoCorrection, SequenceMIS, SequenceTIS, TokenMIS, TokenTIS,
                             component_from_dict, component_to_dict, correction_from_spec)
from rlkl.losses import aggregate, kl_loss, ppo_clip_loss
from rlkl.methods import REGISTRY, Method, RolloutBatch
from rlkl.sampling import (Sampler, effective_sample_size, kept_set, masked_is_weights, mismatch_diagnostics,
                           rollout_log_ratio, sequence_is_weights, token_is_weights)

from strategies import float_tensors


def _lp(*p):
    return torch.log(torch.tensor(p, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------ kept sets
def test_top_p_keeps_the_token_that_crosses_p():
    lp = _lp(0.5, 0.3, 0.2)
    # cumulative mass before each rank: 0, 0.5, 0.8 → p = 0.75 keeps ranks 0, 1; 0.85 keeps all; 0.45 keeps rank 0
    assert kept_set(lp, top_p=0.75).tolist() == [True, True, False]
    assert kept_set(lp, top_p=0.85).tolist() == [True, True, True]
    assert kept_set(lp, top_p=0.45).tolist() == [True, False, False]
    assert kept_set(lp, top_p=1.0).tolist() == [True, True, True]


def test_ties_are_broken_by_token_index():
    lp = _lp(0.25, 0.25, 0.25, 0.25)
    assert kept_set(lp, top_k=2).tolist() == [True, True, False, False]
    # mass before ranks 0..3: 0, .25, .5, .75 (exact in binary): top_p = 0.5 keeps the first two indices
    assert kept_set(lp, top_p=0.5).tolist() == [True, True, False, False]
    assert kept_set(_lp(0.1, 0.3, 0.3, 0.3), top_k=2).tolist() == [False, True, True, False]


def test_min_p_and_zero_probability_tokens():
    assert kept_set(_lp(0.5, 0.3, 0.2), min_p=0.5).tolist() == [True, True, False]  # keep p >= 0.25
    lp = torch.tensor([0.0, float("-inf"), -1.0], dtype=torch.float64).log_softmax(-1)
    assert kept_set(lp).tolist() == [True, False, True]  # zero probability is never kept


def test_top_k_is_applied_before_top_p():
    lp = _lp(0.4, 0.3, 0.2, 0.1)
    # alone: mass before ranks 0, .4, .7, .9 → top_p 0.75 keeps three tokens
    assert kept_set(lp, top_p=0.75).tolist() == [True, True, True, False]
    # after top_k = 3 the renormalized masses are .444, .333, .222: before ranks 0, .444, .778 → two tokens
    assert kept_set(lp, top_k=3, top_p=0.75).tolist() == [True, True, False, False]


def test_sampler_temperature_and_truncation_by_hand():
    z = _lp(0.5, 0.3, 0.2)
    out = Sampler(temperature=0.5, top_p=0.9).transform(z)
    # π̃ ∝ p² = (.25, .09, .04)/.38 = (.6579, .2368, .1053); mass before ranks 0, .658, .895 → all three kept
    assert out.kept.all()
    torch.testing.assert_close(out.log_q.exp(), torch.tensor([.25, .09, .04], dtype=torch.float64) / .38,
                               rtol=1e-14, atol=0)
    out = Sampler(temperature=0.5, top_p=0.8).transform(z)
    # now .895 >= .8 cuts the last token: q = (.25, .09)/.34, kept mass S = .34/.38
    torch.testing.assert_close(out.log_q.exp(), torch.tensor([.25 / .34, .09 / .34, 0.0], dtype=torch.float64),
                               rtol=1e-14, atol=1e-300)
    assert out.log_kept_mass.exp().item() == pytest.approx(.34 / .38, rel=1e-14)
    # raw log-probs are the untempered, untruncated engine softmax
    torch.testing.assert_close(Sampler(temperature=0.5, top_p=0.8, logprobs="raw").transform(z).log_reported, z,
                               rtol=0, atol=1e-15)


def test_bfloat16_rounds_the_logits():
    z = torch.tensor([0.1, 0.2, -1.0], dtype=torch.float64)
    out = Sampler(dtype="bfloat16").transform(z)
    # bf16 keeps 8 significant bits: 0.1 → 0.10009765625, 0.2 → 0.2001953125, −1 exact
    assert out.engine_logits.tolist() == [0.10009765625, 0.2001953125, -1.0]
    torch.testing.assert_close(out.log_q, out.engine_logits.log_softmax(-1), rtol=0, atol=0)
    noisy = Sampler(noise=0.1, seed=3)
    assert torch.equal(noisy.noise_like((2, 3)), noisy.noise_like((2, 3)))  # seeded
    assert not torch.equal(noisy.transform(z).log_q, z.log_softmax(-1))


@given(float_tensors((4, 6), -4.0, 4.0), st.floats(0.05, 1.0), st.one_of(st.none(), st.integers(1, 6)),
       st.floats(0.0, 0.9))
def test_kept_mass_identity_at_temperature_one(z, top_p, top_k, min_p):
    """At τ = 1 without a precision change, π_old(a|s)/q(a|s) = S_s for every kept token (to round-off)."""
    out = Sampler(top_p=top_p, top_k=top_k, min_p=min_p).transform(z)
    log_old = z.log_softmax(-1)
    gap = (log_old - out.log_q) - out.log_kept_mass.unsqueeze(-1)
    assert out.kept.any(-1).all()
    assert gap[out.kept].abs().max() < 1e-13
    torch.testing.assert_close(out.log_q.exp().sum(-1), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-14)
    assert (out.log_q[~out.kept] == float("-inf")).all()


@pytest.mark.parametrize("kwargs", [dict(top_p=0.0), dict(top_p=1.5), dict(top_p=-0.1), dict(top_k=0),
                                    dict(temperature=0.0), dict(min_p=1.0), dict(noise=-1.0), dict(dtype="int8"),
                                    dict(logprobs="cooked"), dict(top_p=float("nan"))])
def test_sampler_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        Sampler(**kwargs)


# ------------------------------------------------------------------------------------------------ weights
_MASK = torch.tensor([[True, True, False], [True, True, True]])
#: row 0: ratios 0.5, 3 (Π = 1.5); row 1: ratios 2, 1.5, 1 (Π = 3); padding holds garbage
_LR = torch.log(torch.tensor([[0.5, 3.0, 7.0], [2.0, 1.5, 1.0]], dtype=torch.float64))


@pytest.mark.parametrize("correction,expected", [
    (NoCorrection(), [[1, 1, 0], [1, 1, 1]]),
    (MaskReplay(), [[1, 1, 0], [1, 1, 1]]),
    (TokenTIS(2.0), [[0.5, 2.0, 0], [2.0, 1.5, 1.0]]),
    (TokenTIS(2.0, floor=0.8), [[0.8, 2.0, 0], [2.0, 1.5, 1.0]]),
    (SequenceTIS(2.0), [[1.5, 1.5, 0], [2.0, 2.0, 2.0]]),
    (TokenMIS(2.0), [[0.5, 0.0, 0], [2.0, 1.5, 1.0]]),  # 3 > 2 dropped; 2 <= 2 kept
    (TokenMIS(2.0, lower=0.6), [[0.0, 0.0, 0], [2.0, 1.5, 1.0]]),
    (SequenceMIS(2.0), [[1.5, 1.5, 0], [0.0, 0.0, 0.0]]),  # Π = 3 > 2: the whole row dropped
    (GeometricMeanIS(), [[math.sqrt(1.5)] * 2 + [0], [3 ** (1 / 3)] * 3]),  # exp(mean log ρ)
    (GeometricMeanIS(1.3), [[math.sqrt(1.5)] * 2 + [0], [1.3] * 3]),
])
def test_correction_weights_by_hand(correction, expected):
    lr = torch.where(_MASK, _LR, torch.zeros_like(_LR))
    w = correction.weights(lr, _MASK)
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0)


def test_weights_functions_agree_with_the_components_and_zero_padding():
    lr = rollout_log_ratio(_LR, torch.zeros_like(_LR), _MASK)
    assert lr[0, 2] == 0 and not lr.requires_grad
    assert torch.equal(token_is_weights(lr, _MASK, 2.0), TokenTIS(2.0).weights(lr, _MASK))
    assert torch.equal(sequence_is_weights(lr, _MASK), SequenceTIS(None).weights(lr, _MASK))
    assert torch.equal(masked_is_weights(lr, _MASK, True, 2.0), SequenceMIS(2.0).weights(lr, _MASK))


@pytest.mark.parametrize("spec", ["none", "mask_replay", "token_is", "seq_is", "token_tis:2", "seq_tis:0.5_3",
                                  "token_mis:2", "seq_mis:0.5_2", "gm", "gm:3",
                                  # a floor / lower bound alone: the absent side is spelled empty
                                  "token_tis:0.5_", "seq_tis:0.25_", "token_mis:0.5_", "seq_mis:0.75_"])
def test_correction_specs_and_dicts_round_trip(spec):
    c = correction_from_spec(spec)
    assert c.spec() == spec
    assert component_from_dict(component_to_dict(c)) == c


@pytest.mark.parametrize("bad", [lambda: TokenTIS(1.0), lambda: TokenTIS(0.5), lambda: SequenceTIS(1.0),
                                 lambda: TokenMIS(1.0), lambda: SequenceMIS(0.9), lambda: TokenMIS(None, None),
                                 lambda: TokenMIS(2.0, lower=1.0), lambda: GeometricMeanIS(1.0),
                                 lambda: correction_from_spec("token_tis:1"), lambda: correction_from_spec("tis:2"),
                                 lambda: correction_from_spec("token_tis"), lambda: correction_from_spec("none:2"),
                                 lambda: correction_from_spec("seq_mis:x")])
def test_bad_corrections_raise(bad):
    with pytest.raises(ValueError):
        bad()


def test_cap_message_says_what_to_do():
    with pytest.raises(ValueError, match="must be > 1"):
        TokenTIS(1.0)


# ------------------------------------------------------------------------------------------------ diagnostics
def test_mismatch_diagnostics_by_hand():
    mask = torch.tensor([[True, True], [True, False]])
    old = torch.log(torch.tensor([[0.4, 0.2], [0.5, 0.9]], dtype=torch.float64))
    rollout = torch.log(torch.tensor([[0.5, 0.1], [0.5, 0.1]], dtype=torch.float64))
    # ratios on the mask: 0.8, 2, 1 → mean 3.8/3; ℓ = log ρ = (−0.22314, 0.69315, 0)
    w = TokenTIS(1.5).weights(rollout_log_ratio(old, rollout, mask), mask)  # 0.8, 1.5, 1
    raw = TokenTIS(None).weights(rollout_log_ratio(old, rollout, mask), mask)
    kept = torch.log(torch.tensor([[0.9, 0.8], [1.0, 1.0]], dtype=torch.float64))
    d = mismatch_diagnostics(old, rollout, mask, w, raw, kept)
    l1, l2 = math.log(0.8), math.log(2.0)
    assert d["ratio_mean"].item() == pytest.approx(3.8 / 3, rel=1e-14)
    assert d["kl_k1"].item() == pytest.approx(-(l1 + l2) / 3, rel=1e-14)
    assert d["kl_k2"].item() == pytest.approx((l1 ** 2 + l2 ** 2) / 6, rel=1e-14)
    assert d["kl_k3"].item() == pytest.approx(((0.8 - 1 - l1) + (2 - 1 - l2)) / 3, rel=1e-13)
    assert d["weight_mean"].item() == pytest.approx(3.3 / 3, rel=1e-14)
    # ESS = (Σw)²/(N Σw²) = 3.3²/(3·(0.64 + 2.25 + 1)) = 10.89/11.67
    assert d["ess"].item() == pytest.approx(10.89 / 11.67, rel=1e-14)
    assert d["capped_fraction"].item() == pytest.approx(1 / 3, rel=1e-14)
    assert d["rejected_fraction"].item() == 0.0
    assert d["kept_mass"].item() == pytest.approx(2.7 / 3, rel=1e-14)
    dm = mismatch_diagnostics(old, rollout, mask, TokenMIS(1.5).weights(rollout_log_ratio(old, rollout, mask), mask),
                              raw)
    assert dm["rejected_fraction"].item() == pytest.approx(1 / 3, rel=1e-14)  # ρ = 2 dropped
    assert effective_sample_size(torch.zeros(2, 2, dtype=torch.float64), mask).item() == 0.0


# ------------------------------------------------------------------------------------------------ Method integration
def _batch(seed=0, B=4, T=3, rollout_shift=None):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) - 0.1
    ref = -torch.rand(B, T, generator=g, dtype=torch.float64) - 0.1
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 2] = False
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    rollout = None if rollout_shift is None else old + rollout_shift * torch.randn(B, T, generator=g,
                                                                                   dtype=torch.float64)
    return RolloutBatch(old, ref, mask, rewards, 2, logp_rollout=rollout)


@pytest.mark.parametrize("spec", ["none", "token_tis:2", "seq_tis:2", "token_mis:2", "seq_mis:2", "gm"])
def test_no_mismatch_means_weight_one(spec):
    """logp_rollout = logp_old gives ρ = 1: every correction leaves loss and gradient unchanged."""
    m = REGISTRY["grpo"].replace(correction=correction_from_spec(spec))
    b0 = _batch()
    b1 = RolloutBatch(b0.logp_old, b0.logp_ref, b0.mask, b0.rewards, 2, logp_rollout=b0.logp_old.clone())
    logp = (b0.logp_old + 0.05).requires_grad_(True)
    l0, d0 = REGISTRY["grpo"].loss(logp, b0)
    l1, d1 = m.loss(logp, b1)
    assert l0.item() == l1.item()
    assert torch.equal(torch.autograd.grad(l0, logp)[0], torch.autograd.grad(l1, logp)[0])
    assert d1["rollout/ratio_mean"].item() == 1.0 and d1["rollout/ess"].item() == pytest.approx(1.0, rel=1e-14)
    assert not any(k.startswith("rollout/") for k in d0)


def test_weights_multiply_the_policy_loss_only():
    m = REGISTRY["grpo_tis"]
    b = _batch(rollout_shift=0.5)
    logp = (b.logp_old + 0.03).requires_grad_(True)
    loss, diag = m.loss(logp, b)
    w = torch.clamp(torch.exp(b.logp_old - b.logp_rollout), max=2.0) * b.mask
    adv = m.advantages(b)
    pg = ppo_clip_loss(logp, b.logp_old, adv, b.mask, 0.2, 0.2, 3.0).loss
    kl = kl_loss(logp, b.logp_ref, b.mask, "k3")
    manual = aggregate(pg * w + m.beta * kl, b.mask, "seq-mean-token-mean")
    assert loss.item() == pytest.approx(manual.item(), rel=1e-14)
    assert diag["rollout/weight_mean"].item() == pytest.approx(float((w * b.mask).sum() / b.mask.sum()), rel=1e-14)


def test_rollout_batch_rejects_a_zero_probability_sampled_token():
    b = _batch()
    bad = b.logp_old.clone()
    bad[0, 1] = float("-inf")
    with pytest.raises(ValueError, match="zero probability for a token it emitted"):
        RolloutBatch(b.logp_old, b.logp_ref, b.mask, b.rewards, 2, logp_rollout=bad)
    ok = b.logp_old.clone()
    ok[1, 2] = float("-inf")  # padding may hold anything
    RolloutBatch(b.logp_old, b.logp_ref, b.mask, b.rewards, 2, logp_rollout=ok)
    with pytest.raises(ValueError, match="kept_logmass must be <= 0"):
        RolloutBatch(b.logp_old, b.logp_ref, b.mask, b.rewards, 2, kept_logmass=torch.ones_like(b.logp_old))


def test_mask_replay_needs_the_kept_set():
    m = REGISTRY["grpo"].replace(correction=MaskReplay())
    b = _batch(rollout_shift=0.1)
    with pytest.raises(ValueError, match="kept_logmass"):
        m.loss(b.logp_old.clone().requires_grad_(True), b)


def test_method_dict_round_trip_keeps_the_correction_and_reads_old_dicts():
    for name in ("grpo", "grpo_tis", "dapo_seq_mis"):
        m = REGISTRY[name]
        assert Method.from_dict(m.to_dict()) == m
    old = REGISTRY["grpo"].to_dict()
    del old["correction"]  # method.json written before corrections existed
    assert Method.from_dict(old).correction == NoCorrection()
    assert REGISTRY["grpo_tis"].correction == TokenTIS(2.0)
    assert REGISTRY["dapo_seq_mis"].correction == SequenceMIS(3.0)
    with pytest.raises(ValueError, match="correction"):
        REGISTRY["grpo"].replace(correction="token_tis:2")


def test_trainer_side_replay_and_exact_mismatch_kl():
    from rlkl.sampling import exact_mismatch_kl, kept_log_softmax, kept_logmass

    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.2]]], dtype=torch.float64)).requires_grad_(True)
    kept = torch.tensor([[[True, True, False]]])
    lp = kept_log_softmax(logits, kept)
    # renormalized over {0, 1}: (0.5, 0.3)/0.8 = (0.625, 0.375); log S = log 0.8
    torch.testing.assert_close(lp.exp(), torch.tensor([[[0.625, 0.375, 0.0]]], dtype=torch.float64), rtol=1e-14,
                               atol=0)
    assert kept_logmass(logits, kept).item() == pytest.approx(math.log(0.8), rel=1e-14)
    (g,) = torch.autograd.grad(lp[0, 0, 0], logits)
    assert g[0, 0, 2].item() == 0.0  # no gradient reaches the cut token
    # q = top-p of π_old: KL(q‖π_old) = Σ_K q log(q/π_old) = −log S = 0.2231
    log_q = Sampler(top_p=0.75).transform(logits.detach()).log_q
    mask = torch.ones(1, 1, dtype=torch.bool)
    assert exact_mismatch_kl(log_q, logits.detach().log_softmax(-1), mask).item() == pytest.approx(-math.log(0.8),
                                                                                                 rel=1e-14)
