"""Checks added by the mutmut triage of rlkl/methods.py (docs/mutation_methods.md): hand-computed values.

Shared case (B = 2, T = 2, all tokens valid, float64): logp = [[-1, -2], [-0.5, -1.5]] = logp_old.
"""
import math
import re

import pytest
import torch

from rlkl._checks import trusted
from rlkl.components import RPG, AggMode, GroupCentered, LeaveOneOut, RPGClip, RPGDivergence, RPGForm, RPGLevel
from rlkl.methods import REGISTRY, Diagnostics, RolloutBatch, get_method
from rlkl.objective import Anchor, Level, Objective, Regularizer, Utility

D = torch.float64
LOGP = [[-1.0, -2.0], [-0.5, -1.5]]


def _t(x):
    return torch.tensor(x, dtype=D)


def _mask():
    return torch.ones(2, 2, dtype=torch.bool)


def _batch(rewards=(1.0, 0.0), **kw):
    return RolloutBatch(logp_old=_t(LOGP), logp_ref=_t(LOGP), mask=_mask(), rewards=_t(list(rewards)), group_size=2,
                        **kw)


ADV = [[1.0, 1.0], [-1.0, -1.0]]
# REINFORCE l_t = -A_t·logp_t = [[1, 2], [-0.5, -1.5]]; seq-mean-token-sum: rows 3, -2 -> (3 - 2)/2 = 0.5
REINFORCE_LOSS = 0.5
# token_weights [[2, 0], [1, 1]]: [[2, 0], [-0.5, -1.5]] -> rows 2, -2 -> 0
W = [[2.0, 0.0], [1.0, 1.0]]


# -- loss_given_advantages: both branches, token weights, the overflow check -----------------------------------
@pytest.mark.parametrize("trust", [False, True])
def test_loss_given_advantages_hand_values(trust):
    m = get_method("reinforce")
    with trusted() if trust else torch.no_grad():
        loss, _ = m.loss_given_advantages(_t(LOGP), _t(LOGP), _mask(), _t(ADV), _t(LOGP))
        assert float(loss) == pytest.approx(REINFORCE_LOSS, abs=1e-12)
        loss_w, _ = m.loss_given_advantages(_t(LOGP), _t(LOGP), _mask(), _t(ADV), _t(LOGP), _t(W))
        assert float(loss_w) == pytest.approx(0.0, abs=1e-12)
        # no logp_ref: allowed (no KL loss), no kl/* diagnostics
        _, diag = m.loss_given_advantages(_t(LOGP), _t(LOGP), _mask(), _t(ADV))
        assert "kl/k1" not in diag and diag["loss/kl"].dtype == D and float(diag["loss/kl"]) == 0.0


def test_loss_given_advantages_weights_zero_and_fractional_accepted_negative_refused():
    m = get_method("reinforce")
    for w in ([[0.0, 0.0], [0.5, 0.5]], [[0.5, 1.0], [0.0, 3.0]]):
        m.loss_given_advantages(_t(LOGP), _t(LOGP), _mask(), _t(ADV), _t(LOGP), _t(w))
    with pytest.raises(ValueError, match="token_weights must be non-negative"):
        m.loss_given_advantages(_t(LOGP), _t(LOGP), _mask(), _t(ADV), _t(LOGP), _t([[1.0, -0.5], [1.0, 1.0]]))


def test_loss_given_advantages_logp_ref_rules():
    m = get_method("grpo")  # a KL loss towards π_ref
    with pytest.raises(ValueError, match="logp_ref is required"):
        m.loss_given_advantages(_t(LOGP), _t(LOGP), _mask(), _t(ADV))
    loss, _ = m.loss_given_advantages(_t(LOGP), _t(LOGP), _mask(), _t(ADV), _t(LOGP))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="logp_ref"):
        get_method("reinforce").loss_given_advantages(_t(LOGP), _t(LOGP), _mask(), _t(ADV), _t([[-1.0, -2.0]]))


def test_loss_given_advantages_overflow_raises_untrusted_not_trusted():
    # finite inputs, -A·logp = 1e308·10 = inf: a ValueError, never a silent inf (docstring); trusted: no host sync
    m, big = get_method("reinforce"), _t([[1e308, 1e308], [1e308, 1e308]])
    logp = _t([[-10.0, -10.0], [-10.0, -10.0]])
    with pytest.raises(ValueError, match="loss"):
        m.loss_given_advantages(logp, logp, _mask(), big)
    with trusted():
        loss, _ = m.loss_given_advantages(logp, logp, _mask(), big)
    assert not torch.isfinite(loss)


def test_policy_loss_terms_hand_values():
    out = get_method("reinforce").policy_loss_terms(_t(LOGP), _t(LOGP), _t(ADV), _mask())
    torch.testing.assert_close(out.loss, _t([[1.0, 2.0], [-0.5, -1.5]]), rtol=0, atol=1e-12)  # -A·logp
    # rpg_urkl, token level, logp = logp_old (w = 1, log w = 0): Weight = w(A - β log w) = A -> l = -A·w (value)
    out = get_method("rpg_urkl").policy_loss_terms(_t(LOGP), _t(LOGP), _t(ADV), _mask())
    assert torch.isfinite(out.loss).all() and out.loss.shape == (2, 2)


# -- Method.loss: sequence_advantages, overflow, diagnostics ----------------------------------------------------
SEQ = [2.0, -1.0]
# given sequence advantages [2, -1]: l = -s_i·logp_t: row 0: -2·(-1 - 2) = 6, row 1: 1·(-0.5 - 1.5) = -2 -> mean 2


@pytest.mark.parametrize("validate", [True, False])
def test_loss_uses_given_sequence_advantages(validate):
    m = get_method("reinforce")
    loss, diag = m.loss(_t(LOGP), _batch(), validate=validate, sequence_advantages=_t(SEQ))
    assert float(loss) == pytest.approx(2.0, abs=1e-12)
    # advantage/mean = 0.5; population std = sqrt(((2 - .5)² + (-1 - .5)²)/2) = 1.5; one group, not all zero
    assert float(diag["advantage/mean"]) == pytest.approx(0.5, abs=1e-12)
    assert float(diag["advantage/std"]) == pytest.approx(1.5, abs=1e-12)
    assert float(diag["zero_advantage_group_fraction"]) == 0.0
    torch.testing.assert_close(m.advantages(_batch(), _t(SEQ)), _t([[2.0, 2.0], [-1.0, -1.0]]), rtol=0, atol=0)


def test_loss_zero_advantage_group_fraction_one():
    _, diag = get_method("reinforce").loss(_t(LOGP), _batch(), sequence_advantages=_t([0.0, 0.0]))
    assert float(diag["zero_advantage_group_fraction"]) == 1.0


def test_loss_checks_sequence_advantages():
    m = get_method("reinforce")
    with pytest.raises(ValueError, match="sequence_advantages"):
        m.loss(_t(LOGP), _batch(), sequence_advantages=_t([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="sequence_advantages"):
        m.loss(_t(LOGP), _batch(), sequence_advantages=_t([1.0, math.nan]))


def test_loss_overflow_raises_validated_not_unvalidated():
    # Raw advantage = reward = 1e308; l = -1e308·(-10) = inf on finite inputs
    logp = _t([[-10.0, -10.0], [-10.0, -10.0]])
    b = RolloutBatch(logp_old=logp, logp_ref=logp, mask=_mask(), rewards=_t([1e308, 1e308]), group_size=2)
    with pytest.raises(ValueError, match="loss"):
        get_method("reinforce").loss(logp, b)
    loss, _ = get_method("reinforce").loss(logp, b, validate=False)  # documented: no host sync, no check
    assert not torch.isfinite(loss)


def test_rollout_diagnostics_capped_fraction_and_kept_mass():
    # grpo_tis: w = min(ρ, 2), ρ = exp(logp_old - logp_rollout); one token of 4 has ρ = 3 -> capped 1/4
    rollout = _t([[-1.0 - math.log(3.0), -2.0], [-0.5, -1.5]])
    b = _batch(logp_rollout=rollout, kept_logmass=_t([[math.log(0.5)] * 2] * 2))
    _, diag = get_method("grpo_tis").loss(_t(LOGP), b)
    assert float(diag["rollout/capped_fraction"]) == pytest.approx(0.25, abs=1e-12)
    assert float(diag["rollout/kept_mass"]) == pytest.approx(0.5, abs=1e-12)  # mean of exp(log 0.5)


# -- bound_objective --------------------------------------------------------------------------------------------
def test_bound_objective_takes_std_and_eps_from_the_advantage():
    o = get_method("grpo").bound_objective(4)  # GroupStandardized(Std.BESSEL, 1e-6), β = 0.04
    assert (o.std.value, o.eps, o.beta, o.group_size) == ("bessel", 1e-6, 0.04, 4)
    o = get_method("frpo").bound_objective(3)  # GroupStandardized(Std.POPULATION, 1e-6)
    assert (o.std.value, o.eps) == ("population", 1e-6)


# -- RolloutBatch -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["logp_ref", "rewards"])
def test_rollout_batch_refuses_nan(field):
    kw = dict(logp_old=_t(LOGP), logp_ref=_t(LOGP), mask=_mask(), rewards=_t([1.0, 0.0]), group_size=2)
    kw[field] = kw[field].clone()
    kw[field].view(-1)[0] = math.nan
    with pytest.raises(ValueError, match=field):
        RolloutBatch(**kw)


def test_rollout_batch_kept_logmass_rounding_tolerance():
    _batch(kept_logmass=_t([[1e-9, 0.0], [0.0, 0.0]]))  # log of a mass rounded above 1 by <= 1e-9: accepted
    with pytest.raises(ValueError, match="kept_logmass must be <= 0"):
        _batch(kept_logmass=_t([[2e-9, 0.0], [0.0, 0.0]]))


def test_rollout_batch_non_finite_messages():
    bad = _t([[-1.0, -math.inf], [-0.5, -1.5]])
    msg = ("logp_rollout is not finite on a response token: the sampler reports zero probability for a token it "
           "emitted (row 0, position 1); the trainer needs q(a_t|s_t) > 0 to form the importance ratio — check the "
           "engine's logprobs mode and that the reported log-probs belong to these tokens")
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        _batch(logp_rollout=bad)
    msg = ("kept_logmass is not finite on a response token: the trainer's π_old gives the sampler's kept set zero "
           "mass (row 0, position 1)")
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        _batch(kept_logmass=bad)


def test_diagnostics_setitem():
    d = Diagnostics(lambda: {"a": _t(1.0)})
    d["b"] = _t(2.0)
    assert float(d["b"]) == 2.0 and float(d["a"]) == 1.0


# -- the RPG registry entries against RPG arXiv 2505.17508 -------------------------------------------------------
# Written out from the paper: Alg. 1 = fully differentiable surrogate, Alg. 2 = REINFORCE-style; the propositions
# FKL E.1, RKL E.3, UFKL 3.2, URKL 3.6 (Alg. 1) and F.1 / F.4 / F.3 / F.5 (REINFORCE); β = 1e-4 (the paper's
# experiments); objective J = E_π[R] − β·D(π‖π_old) at the sequence level (anchor π_old).
_REG = {"fkl": "forward_kl", "rkl": "reverse_kl", "ufkl": "unnormalized_forward_kl",
        "urkl": "unnormalized_reverse_kl"}
_ALG1 = {"fkl": "E.1", "rkl": "E.3", "ufkl": "3.2", "urkl": "3.6"}
_ALG2 = {"fkl": "F.1", "rkl": "F.4", "ufkl": "F.3", "urkl": "F.5"}
RPG_ROWS = ([(f"rpg_{d}", d, "differentiable", "token", f"Prop. {_ALG1[d]}, Alg. 1") for d in _REG]
            + [(f"rpg_reinforce_{d}", d, "reinforce", "token", f"Prop. {_ALG2[d]}, Alg. 2") for d in _REG]
            + [(f"rpg_reinforce_{d}_seq", d, "reinforce", "sequence", f"Prop. {_ALG2[d]}") for d in _REG])


@pytest.mark.parametrize("name,div,form,level,prop", RPG_ROWS)
def test_rpg_registry_entries(name, div, form, level, prop):
    m = REGISTRY[name]
    assert m.name == name and m.beta == 1e-4
    pl = m.policy_loss
    assert isinstance(pl, RPG)
    assert (pl.divergence.value, pl.form.value, pl.level.value) == (div, form, level)
    token = level == "token"
    assert pl.clip == (RPGClip() if token else None)
    assert type(m.advantage) is (GroupCentered if token else LeaveOneOut)
    assert m.aggregation.mode is (AggMode.TOKEN_MEAN if token else AggMode.SEQ_MEAN_TOKEN_SUM)
    o = m.objective
    assert (o.utility, o.regularizer.value, o.level, o.anchor) == (Utility.EXPECTED_REWARD, _REG[div],
                                                                   Level.SEQUENCE, Anchor.OLD)
    assert o == Objective(Utility.EXPECTED_REWARD, Regularizer(_REG[div]), Level.SEQUENCE, Anchor.OLD)
    assert m.citation == f"RPG arXiv 2505.17508 {prop}"
    assert isinstance(m.description, str) and len(m.description) > 20
    assert RPGDivergence(div) is pl.divergence and RPGForm(form) is pl.form and RPGLevel(level) is pl.level


# -- second round: what the first recheck left --------------------------------------------------------------------
def test_loss_given_advantages_trusted_reads_logp_old_and_logp_ref():
    # no_kl: PPO clip (0.2, 0.2), seq-mean-token-mean. logp = logp_old + 0.1: r = e^0.1 = 1.1051709 inside the clip
    # range, so l_t = -r·A_t; A = [[1, 1], [0.5, 0.5]]: row means -r, -0.5r -> mean -0.75r = -0.8288782
    m = get_method("no_kl")
    logp = _t(LOGP) + 0.1
    adv = _t([[1.0, 1.0], [0.5, 0.5]])
    with trusted():
        loss, diag = m.loss_given_advantages(logp, _t(LOGP), _mask(), adv, _t(LOGP))
        # kl/* from log π_θ − log π_ref = 0.1 on every token: k1 = 0.1, k2 = 0.1²/2 = 0.005
        assert float(diag["kl/k1"]) == pytest.approx(0.1, abs=1e-12)
        assert float(diag["kl/k2"]) == pytest.approx(0.005, abs=1e-12)
    assert float(loss) == pytest.approx(-0.75 * math.exp(0.1), abs=1e-12)


def test_loss_given_advantages_trusted_reads_no_weight_value():
    # inside trusted() no value is read (rlkl._checks.trusted): negative weights pass; -A·logp·w as in the case above
    w = _t([[-1.0, 0.0], [1.0, 1.0]])  # [[1·-1, 0], [-0.5, -1.5]] -> rows -1, -2 -> -1.5
    with trusted():
        loss, _ = get_method("reinforce").loss_given_advantages(_t(LOGP), _t(LOGP), _mask(), _t(ADV), _t(LOGP), w)
    assert float(loss) == pytest.approx(-1.5, abs=1e-12)


@pytest.mark.parametrize("w", [[[0.0, 1.0], [1.0, 1.0]], [[0.5, 1.0], [1.0, 1.0]]])
def test_loss_given_advantages_error_order_with_valid_weights(w):
    # zero / fractional weights are valid, so a nan in logp_ref is the error reported (the checks' order)
    ref = _t([[-1.0, math.nan], [-0.5, -1.5]])
    with pytest.raises(ValueError, match="logp_ref"):
        get_method("reinforce").loss_given_advantages(_t(LOGP), _t(LOGP), _mask(), _t(ADV), ref, _t(w))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CPU is the default device)")
def test_diagnostics_on_the_inputs_device():
    dev = torch.device("cuda")
    logp = _t(LOGP).to(dev)
    _, diag = get_method("reinforce").loss_given_advantages(logp, logp, _mask().to(dev), _t(ADV).to(dev))
    assert diag["loss/kl"].device == logp.device and diag["loss/kl"].dtype == D
