"""Checks added for the mutmut survivors of rlkl/components.py (docs/mutation_utility_components.md).

Each test pins what a surviving (or never-called) mutant changed: the components' own forwarding of their fields
(PPO's dual clip, CISPO's lower bound, pass@k's std, REINFORCE's ratio diagnostic, the straight-through KL), the
default ``PolicyLoss.terms`` / ``KLTerm.loss_terms``, the rollout-correction spellings and their parser, and the
dict round trip. Expected values are hand-computed (arithmetic in comments).
"""

from __future__ import annotations

import math

import pytest
import torch

from rlkl.components import (CISPO, GroupStandardized, KLLoss, KLTerm, LengthWeightedCentered, PassAtK, PolicyLoss,
                             PPOClip, Reinforce, RPG, RPGClip, SequenceMIS, TokenMIS, TokenTIS, component_from_dict,
                             correction_from_spec)

F64 = torch.float64
LN2 = math.log(2.0)


def _t(*rows):
    return torch.tensor(rows, dtype=F64)


# ---- policy losses: each component forwards its own fields ----------------------------------------------------


def test_ppo_dual_clip_is_forwarded():
    # ρ = e² = 7.389 (log π − log π_old = 2), A = −1: max(−ρA, −clip(ρ, 0.8, 1.2)A) = max(7.389, 1.2) = 7.389;
    # the dual clip c = 3 caps a negative-advantage token at −c·A = 3
    args = (_t([2.0]), _t([0.0]), _t([-1.0]), torch.tensor([[True]]), 0.0)
    assert float(PPOClip(0.2, 0.2, None)(*args).loss[0, 0]) == pytest.approx(math.exp(2.0), rel=1e-14)
    assert float(PPOClip(0.2, 0.2, 3.0)(*args).loss[0, 0]) == pytest.approx(3.0, rel=1e-14)


@pytest.mark.parametrize("via_terms", [False, True])
def test_cispo_lower_bound_is_forwarded(via_terms):
    # ρ = ½ (log π = log ½, log π_old = 0), A = 1, ε_low = 0.2: ŵ = clamp(½, 0.8, 1.2) = 0.8,
    # l = −0.8·1·log ½ = 0.8·0.693147 = 0.554518 (without the lower bound: 0.5·0.693147 = 0.346574)
    args = (_t([-LN2]), _t([0.0]), _t([1.0]), torch.tensor([[True]]), 0.0)
    c = CISPO(low=0.2, high=0.2)
    loss = c.terms(*args)[0] if via_terms else c(*args).loss
    assert float(loss[0, 0]) == pytest.approx(0.8 * LN2, rel=1e-14)


def test_reinforce_value_and_ratio_diagnostic():
    # l_t = −A·log π_t: A = 2, log π = (log ½, log ¼) → (2·0.693147, 2·1.386294) = (1.386294, 2.772589);
    # ratio π/π_old with log π_old = (log ¼, log ¼): (2, 1), mean 1.5 (diagnostic field 4, i = 3 of the thunk)
    logp, logp_old = _t([-LN2, -2 * LN2]), _t([-2 * LN2, -2 * LN2])
    adv, mask = _t([2.0, 2.0]), torch.tensor([[True, True]])
    out = Reinforce()(logp, logp_old, adv, mask, 0.0)
    torch.testing.assert_close(out.loss, _t([2 * LN2, 4 * LN2]), rtol=1e-14, atol=0)
    assert float(out.ratio_mean) == pytest.approx(1.5, rel=1e-14)
    loss, diag = Reinforce().terms(logp, logp_old, adv, mask, 0.0)
    torch.testing.assert_close(loss, _t([2 * LN2, 4 * LN2]), rtol=1e-14, atol=0)
    assert float(diag(3)) == pytest.approx(1.5, rel=1e-14)


class _DefaultTerms(Reinforce):
    """REINFORCE on β·A through the base class's default ``terms`` (which evaluates ``__call__``)."""

    terms = PolicyLoss.terms

    def __call__(self, logp, logp_old, advantages, mask, beta):
        return super().__call__(logp, logp_old, beta * advantages, mask, beta)


def test_policy_loss_default_terms_evaluates_call():
    # same numbers as above (A = 1, β = 2: β·A = 2): the default terms returns __call__'s loss, diagnostics(i) =
    # field i + 1
    logp, logp_old = _t([-LN2, -2 * LN2]), _t([-2 * LN2, -2 * LN2])
    loss, diag = _DefaultTerms().terms(logp, logp_old, _t([1.0, 1.0]), torch.tensor([[True, True]]), 2.0)
    torch.testing.assert_close(loss, _t([2 * LN2, 4 * LN2]), rtol=1e-14, atol=0)
    assert float(diag(3)) == pytest.approx(1.5, rel=1e-14)  # ratio_mean: (2 + 1)/2
    assert float(diag(4)) == pytest.approx(1.0, rel=1e-14) and float(diag(5)) == pytest.approx(2.0, rel=1e-14)
    assert float(diag(0)) == 0.0  # no clip rule: clip fraction 0


def _rpg_args():
    # two tokens, each π = ½, π_old = ¼ (w = 2, log w = ln 2 = 0.693147), A = 1
    return _t([-LN2, -LN2]), _t([-2 * LN2, -2 * LN2]), _t([1.0, 1.0]), torch.tensor([[True, True]])


@pytest.mark.parametrize("via_terms", [False, True])
def test_rpg_urkl_reinforce_by_hand(via_terms):
    # URKL, REINFORCE form, β = ½: Weight = z·w(A − β log w) = 2(1 − 0.346574) = 1.306853 (z = 1),
    # l_t = −Weight·log π = 1.306853·0.693147 = 0.905841 per token
    def loss_of(c):
        return c.terms(*_rpg_args(), 0.5)[0] if via_terms else c(*_rpg_args(), 0.5).loss

    tok = 2 * (1 - 0.5 * LN2) * LN2
    torch.testing.assert_close(loss_of(RPG()), _t([tok, tok]), rtol=1e-14, atol=0)
    # sequence level: log w = 2 ln 2 (w = 4), lp = −2 ln 2, Weight = 4(1 − ½·2 ln 2) = 4 − 4 ln 2 = 1.227411,
    # ℓ = 1.227411·1.386294 = 1.701553, spread as ℓ/|y| = 0.850777 on each token (`terms` gives that one value
    # per response, [B, 1], which the aggregation counts |y| times)
    seq = (4 - 4 * LN2) * 2 * LN2 / 2
    torch.testing.assert_close(loss_of(RPG(level="sequence")), _t([seq] if via_terms else [seq, seq]), rtol=1e-14,
                               atol=0)
    # RPG-Style Clip (Alg. 2), ε_high = 0.28: A' = A + C/w with C = Weight − wA = −0.693147 ⇒ A' = 0.653426 >= 0
    # and w = 2 >= 1.28: the high branch's constant (A + C/1.28)·ℓ·1.28 = (1.28 − ln 2)·ln 2 = 0.406775
    clipped = (1.28 - LN2) * LN2
    torch.testing.assert_close(loss_of(RPG(clip=RPGClip())), _t([clipped, clipped]), rtol=1e-14, atol=0)


def test_rpg_unclipped_drops_the_clip():
    assert RPG(clip=RPGClip()).unclipped() == RPG() and RPG(clip=RPGClip()).unclipped().clip is None


def test_pass_at_k_std_is_forwarded():
    # G = 2, rewards (1, 0): A = ([1 − 0]_+, [0 − 1]_+) = (1, 0); population std of (1, 0) = ½ ⇒ A_1 = 1/(½ + ε);
    # Bessel: √(½) = 0.7071068 ⇒ A_1 = 1/(0.7071068 + ε)
    r = torch.tensor([1.0, 0.0], dtype=F64)
    assert PassAtK(std="population")(r, 2).tolist() == pytest.approx([1 / (0.5 + 1e-6), 0.0], rel=1e-14)
    assert PassAtK()(r, 2).tolist() == pytest.approx([1 / (math.sqrt(0.5) + 1e-6), 0.0], rel=1e-14)


def test_length_weighted_centered_call_and_integer_lengths():
    # __call__ (no lengths) is the group-centred rule: (1, 0, 0, 0) − ¼ = (0.75, −0.25, −0.25, −0.25)
    r = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64)
    assert LengthWeightedCentered()(r, 4).tolist() == [0.75, -0.25, -0.25, -0.25]
    # compute with integer lengths (3, 1, 1, 1): b = 3·1/6 = ½ ⇒ A = (½, −½, −½, −½), in the rewards' dtype
    got = LengthWeightedCentered().compute(r, 4, torch.tensor([3, 1, 1, 1]))
    assert got.dtype == F64 and got.tolist() == pytest.approx([0.5, -0.5, -0.5, -0.5], rel=1e-15)


def test_base_advantage_couples_only_rewards():
    assert GroupStandardized().couples_beyond_rewards(False, True) is False
    assert GroupStandardized().couples_beyond_rewards(True, False) is False


# ---- KL terms ---------------------------------------------------------------------------------------------------


def test_kl_loss_values_mask_and_importance_weight_by_hand():
    # δ = log π − log π_ref = log 2 at token 0 (π = ½, π_ref = ¼), padding at token 1:
    # k1 = δ = 0.693147; k2 = δ²/2 = 0.240227; k3 = e^{−δ} − 1 + δ = ½ − 1 + 0.693147 = 0.193147
    logp, logp_ref, logp_old = _t([-LN2, -1.0]), _t([-2 * LN2, -1.0]), _t([-2 * LN2, -1.0])
    mask = torch.tensor([[True, False]])
    for est, v in (("k1", LN2), ("k2", LN2**2 / 2), ("k3", 0.5 - 1 + LN2)):
        got = KLLoss(est).loss_term(logp, logp_ref, logp_old, mask)
        assert got[0].tolist() == pytest.approx([v, 0.0], rel=1e-14, abs=0), est
        # × ρ = π/π_old = 2 with the importance weight
        got = KLLoss(est, importance_weight=True).loss_term(logp, logp_ref, logp_old, mask)
        assert got[0].tolist() == pytest.approx([2 * v, 0.0], rel=1e-14, abs=0), est


@pytest.mark.parametrize("method", ["loss_term", "loss_terms"])
def test_kl_loss_straight_through_gradient(method):
    # k1 straight-through: value δ = 0.693147, gradient of k2 = δ = 0.693147 (plain k1's gradient is 1)
    logp = _t([-LN2]).requires_grad_()
    logp_ref, mask = _t([-2 * LN2]), torch.tensor([[True]])
    term = getattr(KLLoss("k1", straight_through=True), method)(logp, logp_ref, logp_ref, mask)
    (g,) = torch.autograd.grad(term.sum(), logp)
    assert float(term.detach().sum()) == pytest.approx(LN2, rel=1e-14)
    assert float(g[0, 0]) == pytest.approx(LN2, rel=1e-14)


class _Diff(KLTerm):
    """A KL term whose loss is logp − 2·logp_ref + 3·logp_old − 4·mask: each argument lands visibly."""

    def loss_term(self, logp, logp_ref, logp_old, mask):
        return logp - 2 * logp_ref + 3 * logp_old - 4 * mask.to(logp.dtype)


def test_kl_term_default_loss_terms_forwards_every_argument():
    # 1 − 2·2 + 3·3 − 4·1 = 2
    got = _Diff().loss_terms(_t([1.0]), _t([2.0]), _t([3.0]), torch.tensor([[True]]))
    assert got.tolist() == [[2.0]]


# ---- rollout corrections: spellings and parser ------------------------------------------------------------------


def test_correction_spec_spellings():
    assert TokenMIS(3.0).spec() == "token_mis:3" and TokenMIS(3.0, 0.5).spec() == "token_mis:0.5_3"
    assert SequenceMIS(3.0).spec() == "seq_mis:3" and SequenceMIS(3.0, 0.5).spec() == "seq_mis:0.5_3"
    assert TokenMIS(None, 0.5).spec().startswith("token_mis:0.5")  # an absent upper bound is spelled, not an error
    for c in (TokenMIS(3.0, 0.5), SequenceMIS(3.0), SequenceMIS(4.0, 0.25), TokenTIS(2.0, 0.5)):
        assert correction_from_spec(c.spec()) == c


def test_correction_from_spec_reads_floor_cap_and_rejects_bad_spellings():
    assert correction_from_spec("token_tis:0.5_2") == TokenTIS(2.0, 0.5)  # spelled floor_cap, built (cap, floor)
    with pytest.raises(ValueError, match="non-empty string"):
        correction_from_spec(5)
    with pytest.raises(ValueError, match="non-empty string"):
        correction_from_spec("   ")
    for name in ("token_tis", "seq_tis", "token_mis", "seq_mis"):
        with pytest.raises(ValueError, match="needs a bound"):
            correction_from_spec(name)
    for spec in ("token_tis:0.5_2_3", "seq_mis:0.1_2_3_4", "gm:2_3"):
        with pytest.raises(ValueError, match="too many bounds"):
            correction_from_spec(spec)


def test_cap_error_names_the_field():
    with pytest.raises(ValueError, match=r"TokenTIS\.cap must be > 1"):
        TokenTIS(0.5)
    with pytest.raises(ValueError, match=r"SequenceMIS\.upper"):
        SequenceMIS("x")


# ---- the dict round trip ----------------------------------------------------------------------------------------


def test_component_from_dict_errors_and_nested_clip():
    with pytest.raises(ValueError, match="'kind' key"):
        component_from_dict({"cap": 2})
    with pytest.raises(ValueError, match="'kind' key"):
        component_from_dict([("kind", "Reinforce")])
    with pytest.raises(ValueError, match="no fields") as e:
        component_from_dict({"kind": "Reinforce", "foo": 1})
    assert "['foo']" in str(e.value)
    # the admissible kinds: every public one without a base; only the base's subclasses with one
    with pytest.raises(ValueError, match="unknown component kind") as e:
        component_from_dict({"kind": "Nope"})
    allowed = str(e.value).split("expected one of")[1]
    assert "'GroupCentered'" in allowed and "'Reinforce'" in allowed and "_TruncatedIS" not in allowed
    with pytest.raises(ValueError, match="unknown component kind") as e:
        component_from_dict({"kind": "GroupCentered"}, PolicyLoss)
    allowed = str(e.value).split("expected one of")[1]
    assert "'Reinforce'" in allowed and "'GroupCentered'" not in allowed
    with pytest.raises(ValueError, match="unknown component kind"):
        component_from_dict({"kind": "_TruncatedIS"})  # a private base is not a kind
    # RPG's nested clip must be an RPGClip dict: another kind is refused by the dict reader itself
    with pytest.raises(ValueError, match="unknown component kind"):
        component_from_dict({"kind": "RPG", "clip": {"kind": "Reinforce"}})
    rpg = component_from_dict({"kind": "RPG", "clip": {"kind": "RPGClip"}})
    assert isinstance(rpg, RPG) and rpg.clip == RPGClip()
