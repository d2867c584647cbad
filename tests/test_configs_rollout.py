"""The inference engine's side of verl / TRL configs (rlkl.integrations.rollout): every rollout-correction and
sampler key → the Method's ``correction`` and the audit's ``Sampler``, the refusals with their reasons, and
``rlkl audit --verl/--trl`` running the mismatch audit. Configs are small and hand-written in the frameworks'
formats; the frameworks' own functions are compared in tests/test_integrations_{verl,trl}.py."""

import json
import math

import pytest
import torch

from rlkl.cli import main
from rlkl.components import NoCorrection, SequenceMIS, SequenceTIS, TokenMIS, TokenTIS
from rlkl.integrations.flags import from_trl
from rlkl.integrations.keys import Kind
from rlkl.integrations.rollout import parse_verl_threshold
from rlkl.integrations.translate import translate_trl, translate_verl
from rlkl.options import LogprobsMode
from rlkl.sampling import Sampler
from rlkl.toy.audit import default_mdps, make_setup
from rlkl.toy.mismatch import audit_mismatch

C = "algorithm.rollout_correction."
R = "actor_rollout_ref.rollout."
BASE = {"algorithm.adv_estimator": "grpo", R + "n": 4}

# hand-computed rows: ρ = (0.5, 1.5, 2.5) on three tokens; Π ρ = 0.5·1.5·2.5 = 1.875 (no value on a bound)
LOG_RHO = torch.log(torch.tensor([[0.5, 1.5, 2.5]], dtype=torch.float64))
MASK = torch.ones(1, 3, dtype=torch.bool)


def _verl(**kw):
    """A verl config: ``rollout.x`` → actor_rollout_ref.rollout.x, any other key → algorithm.rollout_correction.*"""
    return translate_verl({**BASE, **{R + k[len("rollout."):] if k.startswith("rollout.") else C + k: v
                                      for k, v in kw.items()}})


def _reasons(t):
    return {k.key: k.reason for k in t.unsupported}


# --------------------------------------------------------------------------------------------------------- verl
@pytest.mark.parametrize("level,threshold,component,weights", [
    ("token", None, TokenTIS(2.0), [0.5, 1.5, 2.0]),                  # default threshold 2.0: min(ρ, 2)
    ("token", 1.2, TokenTIS(1.2), [0.5, 1.2, 1.2]),
    ("token", "3", TokenTIS(3.0), [0.5, 1.5, 2.5]),                   # a float-like string: TIS
    ("token", "0.6_2", TokenMIS(2.0, 0.6), [0.0, 1.5, 0.0]),          # IcePop: 0.5 < 0.6 and 2.5 > 2 dropped
    ("sequence", None, SequenceTIS(2.0), [1.875, 1.875, 1.875]),      # min(1.875, 2)
    ("sequence", 1.5, SequenceTIS(1.5), [1.5, 1.5, 1.5]),             # min(1.875, 1.5)
    ("sequence", "0.6_1.8", SequenceMIS(1.8, 0.6), [0.0, 0.0, 0.0]),  # 1.875 > 1.8: the row is dropped
    ("sequence", "0.5_3", SequenceMIS(3.0, 0.5), [1.875, 1.875, 1.875]),
])
def test_verl_rollout_is(level, threshold, component, weights):
    kw = {"rollout_is": level} if threshold is None else {"rollout_is": level, "rollout_is_threshold": threshold}
    t = _verl(**kw)
    assert t.method is not None and t.method.correction == component
    torch.testing.assert_close(t.method.correction.weights(LOG_RHO, MASK),
                               torch.tensor([weights], dtype=torch.float64), rtol=1e-12, atol=1e-12)
    kinds = {k.key: k.kind for k in t.keys}
    assert kinds[C + "rollout_is"] is Kind.TRANSLATED
    if threshold is not None:
        assert kinds[C + "rollout_is_threshold"] is Kind.TRANSLATED
    else:
        assert t.defaults[C + "rollout_is_threshold"] == 2.0


def test_verl_defaults_are_no_correction_and_the_identity_sampler():
    t = translate_verl(BASE)
    assert t.method.correction == NoCorrection() and t.sampler.is_identity
    for key in ("rollout_is", "rollout_rs", "bypass_mode", "rollout_is_batch_normalize"):
        assert C + key in t.defaults
    assert t.defaults[R + "top_k"] == -1 and t.defaults[R + "logprobs_mode"] == "processed_logprobs"
    # rollout_is: null with a threshold: the threshold is unused
    assert _verl(rollout_is=None, rollout_is_threshold=0.5).method.correction == NoCorrection()


@pytest.mark.parametrize("kw,key,why", [
    ({"rollout_rs": "token_k1", "rollout_rs_threshold": 2.0}, "rollout_rs", "response_mask"),
    ({"rollout_rs": "seq_max_k3", "rollout_rs_threshold": 0.1}, "rollout_rs", "denominators"),
    ({"rollout_is": "token", "rollout_is_batch_normalize": True}, "rollout_is_batch_normalize", "batch statistic"),
    ({"bypass_mode": "true"}, "bypass_mode", "π_θ/q_reported"),
    ({"rollout_is": "token", "rollout_is_threshold": 1.0}, "rollout_is_threshold", "must be > 1"),
    ({"rollout_is": "token", "rollout_is_threshold": "2_1"}, "rollout_is_threshold", "lower <= upper"),
    ({"rollout_is": "token", "rollout_is_threshold": "1.2_2"}, "rollout_is_threshold", "TokenMIS.lower"),
    ({"rollout_is": "token", "rollout_is_threshold": "abc"}, "rollout_is_threshold", "not a number"),
    ({"rollout_is": "geometric"}, "rollout_is", "not a verl level"),
])
def test_verl_rollout_correction_refusals(kw, key, why):
    t = _verl(**kw)
    assert t.method is None
    assert why in _reasons(t)[C + key]


def test_verl_sampler_keys():
    t = _verl(**{"rollout.top_p": 0.8, "rollout.top_k": 5, "rollout.temperature": 0.7})
    # the actor's log-probs use the same τ: relative temperature 1, only the truncation remains
    assert t.sampler == Sampler(top_k=5, top_p=0.8)
    assert all(k.kind is Kind.TRANSLATED for k in t.keys if k.key.startswith(R))
    for k in (-1, 0):  # vLLM's and HF's "off"
        assert _verl(**{"rollout.top_k": k}).sampler.top_k is None
    raw = _verl(**{"rollout.logprobs_mode": "raw_logprobs", "rollout.top_p": 0.9})
    assert raw.sampler.logprobs is LogprobsMode.RAW and raw.method is not None


@pytest.mark.parametrize("kw,key,why", [
    ({"rollout.logprobs_mode": "raw_logprobs", "rollout.temperature": 0.7}, "logprobs_mode", "before the temperature"),
    ({"rollout.logprobs_mode": "processed_logits"}, "logprobs_mode", "report logits"),
    ({"rollout.top_k": -2}, "top_k", "turns top-k off"),
    ({"rollout.top_p": 1.5}, "top_p", "(0, 1]"),
    ({"rollout.top_p": 0}, "top_p", "(0, 1]"),
    ({"rollout.temperature": 0}, "temperature", "greedy"),
])
def test_verl_sampler_refusals(kw, key, why):
    t = _verl(**kw)
    assert t.method is None and why in _reasons(t)[R + key]


def test_parse_verl_threshold():
    assert parse_verl_threshold(2.0) == (2.0, None)
    assert parse_verl_threshold("0.5_3") == (3.0, 0.5)
    for bad in (True, None, "", "-1", "0_2", "x_2"):
        with pytest.raises(ValueError):
            parse_verl_threshold(bad)


# ---------------------------------------------------------------------------------------------------------- TRL
@pytest.mark.parametrize("kw,component,weights", [
    ({}, SequenceMIS(3.0), [1.875, 1.875, 1.875]),                                    # default: sequence_mask, 3
    ({"vllm_importance_sampling_clip_max": 1.8}, SequenceMIS(1.8), [0.0, 0.0, 0.0]),  # 1.875 > 1.8: dropped
    ({"vllm_importance_sampling_mode": "token_mask"}, TokenMIS(3.0), [0.5, 1.5, 2.5]),
    ({"vllm_importance_sampling_mode": "token_mask", "vllm_importance_sampling_clip_min": 0.6,
      "vllm_importance_sampling_clip_max": 2.0}, TokenMIS(2.0, 0.6), [0.0, 1.5, 0.0]),
    ({"vllm_importance_sampling_mode": "token_truncate"}, TokenTIS(3.0), [0.5, 1.5, 2.5]),
    ({"vllm_importance_sampling_mode": "token_truncate", "vllm_importance_sampling_clip_min": 0.6,
      "vllm_importance_sampling_clip_max": 2.0}, TokenTIS(2.0, 0.6), [0.6, 1.5, 2.0]),
    ({"vllm_importance_sampling_mode": "sequence_truncate", "vllm_importance_sampling_clip_max": 1.5},
     SequenceTIS(1.5), [1.5, 1.5, 1.5]),
    ({"vllm_importance_sampling_mode": "sequence_mask", "vllm_importance_sampling_clip_max": None},
     SequenceTIS(None), [1.875, 1.875, 1.875]),                                       # no bound: plain IS
    ({"vllm_importance_sampling_mode": "token_truncate", "vllm_importance_sampling_clip_min": 0.0},
     TokenTIS(3.0), [0.5, 1.5, 2.5]),                                                 # clamp(min=0): no floor
    ({"vllm_importance_sampling_cap": 1.8}, SequenceMIS(1.8), [0.0, 0.0, 0.0]),       # deprecated, overrides
])
def test_trl_vllm_importance_sampling(kw, component, weights):
    t = translate_trl({"use_vllm": True, "num_generations": 4, **kw})
    assert t.method is not None and t.method.correction == component, _reasons(t)
    torch.testing.assert_close(t.method.correction.weights(LOG_RHO, MASK),
                               torch.tensor([weights], dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert all(k.kind is Kind.TRANSLATED for k in t.keys if k.key.startswith(("use_vllm", "vllm_importance")))


def test_trl_correction_applies_with_vllm_only():
    assert from_trl({"vllm_importance_sampling_mode": "token_truncate"}).correction == NoCorrection()
    assert from_trl({"use_vllm": True, "vllm_importance_sampling_correction": False}).correction == NoCorrection()
    assert from_trl({"use_vllm": "true"}).correction == SequenceMIS(3.0)  # HfArgumentParser's string bool


def test_trl_versions():
    # up to 1.5: vllm_importance_sampling_cap (default 3.0) is the only bound; clip_max/clip_min are not fields
    assert from_trl({"use_vllm": True}, trl_version="1.5").correction == SequenceMIS(3.0)
    assert from_trl({"use_vllm": True, "vllm_importance_sampling_cap": 2}, trl_version="1.0").correction == \
        SequenceMIS(2.0)
    old = translate_trl({"use_vllm": True, "vllm_importance_sampling_clip_min": 0.5}, trl_version="1.5")
    assert old.method is None and "added in 1.6" in _reasons(old)["vllm_importance_sampling_clip_min"]
    assert translate_trl({}, trl_version="1.5").defaults["vllm_importance_sampling_cap"] == 3.0
    new = translate_trl({}, trl_version="1.16").defaults
    assert new["vllm_importance_sampling_clip_max"] == 3.0 and new["vllm_importance_sampling_cap"] is None


@pytest.mark.parametrize("kw,key,why", [
    ({"vllm_importance_sampling_clip_max": 1.0, "vllm_importance_sampling_mode": "token_truncate"},
     "vllm_importance_sampling_clip_max", "must be > 1"),
    ({"vllm_importance_sampling_clip_min": 3.0}, "vllm_importance_sampling_clip_min", "must be < clip_max"),
    ({"vllm_importance_sampling_clip_min": 2.0}, "vllm_importance_sampling_clip_min", "SequenceMIS.lower"),
    ({"vllm_importance_sampling_clip_min": 1.5, "vllm_importance_sampling_clip_max": None},
     "vllm_importance_sampling_clip_min", "SequenceMIS.lower"),
    ({"vllm_importance_sampling_mode": "sequence"}, "vllm_importance_sampling_mode", "TRL raises"),
    ({"vllm_importance_sampling_mode": "token_truncate", "vllm_importance_sampling_clip_max": None},
     "vllm_importance_sampling_clip_max", "GRPOConfig raises"),
    ({"top_p": 0}, "top_p", "(0, 1]"),
    ({"top_k": -1}, "top_k", "turns top-k off"),
    ({"min_p": 1.0}, "min_p", "[0, 1)"),
    ({"temperature": 0}, "temperature", "> 0"),
])
def test_trl_refusals(kw, key, why):
    t = translate_trl({"use_vllm": True, "num_generations": 4, **kw})
    assert t.method is None and why in _reasons(t)[key]


def test_trl_sampler_keys():
    t = translate_trl({"top_p": 0.9, "top_k": 20, "min_p": 0.05, "temperature": 0.7})
    assert t.sampler == Sampler(top_k=20, top_p=0.9, min_p=0.05)
    assert t.method.correction == NoCorrection()  # transformers generation: TRL applies no weight
    assert translate_trl({"top_k": 0, "min_p": None}).sampler.is_identity
    v = translate_trl({"use_vllm": True, "top_p": 0.9, "min_p": 0.05})
    assert any("min-p before top-k/top-p" in n for n in v.notes)
    s = translate_trl({"use_vllm": True, "vllm_mode": "server"})
    assert any("processed log-probs" in n for n in s.notes)


# ---------------------------------------------------------------------------------------------------------- CLI
def test_cli_verl_runs_the_mismatch_audit(capsys):
    assert main(["audit", "--verl", "algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=3",
                 f"{C}rollout_is=token", f"{R}top_p=0.8", "--vocab", "3", "--horizon", "2", "--group-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "correction   TokenTIS(cap=2.0, floor=None)" in out
    assert "sampler top_p=0.8" in out and "rollout–trainer mismatch" in out
    assert "token_tis:2" in out and "\n  none " in out and "mean kept mass" in out


def test_cli_trl_mismatch_json_matches_an_independent_correction(tmp_path, capsys):
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text("num_generations: 3\nper_device_train_batch_size: 6\nuse_vllm: true\nvllm_importance_sampling_mode: token_truncate\n"
                   "vllm_importance_sampling_clip_max: 2.0\ntop_p: 0.8\n")
    assert main(["audit", "--trl", str(cfg), "--vocab", "3", "--horizon", "2", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["sampler"] == "top_p=0.8" and rep["correction"] == "token_tis:2"
    rec, none = rep["mismatch"]
    assert (rec["correction"], none["correction"]) == ("token_tis:2", "none")
    # at τ = 1 with processed log-probs every ratio π_old/q is the kept mass S <= 1 (rlkl.sampling), so the cap 2
    # never binds: token TIS:2 audits exactly as plain token IS, computed here through another component
    mdp = default_mdps(3, 2)[0]
    pi, _, ref = make_setup(mdp, 0)
    t = translate_trl(str(cfg))
    (plain,) = audit_mismatch(t.method, mdp, pi, t.sampler, ref, 3, [TokenTIS(None)])
    for reading in ("full", "deployed"):
        assert math.isclose(rec[reading]["rel_bias"], plain.record[reading]["rel_bias"], rel_tol=1e-10)
    assert math.isclose(rec["variance"], plain.record["variance"], rel_tol=1e-10)
    assert rec[reading]["rel_bias"] != none[reading]["rel_bias"]


def test_explain_notes_an_inactive_correction(capsys):
    assert main(["audit", "--verl", "algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=3",
                 f"{C}rollout_is=sequence", "--vocab", "3", "--horizon", "2", "--group-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "gives every token weight 1" in out and "rollout–trainer mismatch" not in out


def test_sampler_flags_with_a_config_are_an_error(capsys):
    assert main(["audit", "--verl", "algorithm.adv_estimator=grpo", "--top-p", "0.8"]) == 2
    assert "states its own sampler" in capsys.readouterr().err
