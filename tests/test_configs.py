"""Real verl / TRL configs in their own formats (rlkl.integrations.config_files / keys / translate / explain).

Small configs written here in those formats live in tests/fixtures/configs; the frameworks' own shipped
configs (verl's ppo_trainer.yaml, TRL's GRPOConfig()) are tested in tests/test_integrations_{verl,trl}.py.
"""

import sys
from pathlib import Path

import pytest

from rlkl.cli import main
from rlkl.components import (CISPO, GSPO, AggMode, Aggregation, Estimator, FutureReturn, GPGAdvantage, GroupCentered,
                             GroupStandardized, KLLoss, KLReward, LeaveOneOut, LengthWeightedCentered, NoKL, PassAtK,
                             PPOClip, Reinforce, RewardForm, Std, TokenWhitened)
from rlkl.integrations.config_files import load_trl, load_verl, split_overrides
from rlkl.integrations.explain import equivalent_method, explain, format_report
from rlkl.integrations.flags import from_trl, from_verl
from rlkl.integrations.keys import Kind
from rlkl.integrations.microbatch import Pool
from rlkl.integrations.translate import translate_trl, translate_verl
from rlkl.methods import get_method
from rlkl.toy.audit import default_mdps

FIX = Path(__file__).parent / "fixtures" / "configs"
A = "actor_rollout_ref.actor."


def _kinds(t):
    return {k.key: k.kind for k in t.keys}


# ---------------------------------------------------------------------------------------------------------------
# reading the formats

def test_verl_yaml_file_values_are_parsed_as_verl_does():
    t = translate_verl(str(FIX / "verl_grpo.yaml"))
    v = t.values
    assert v["algorithm.use_kl_in_reward"] is False  # the string "false" (OmegaConf BooleanNode)
    assert v[A + "kl_loss_coef"] == 0.04 and v[A + "use_kl_loss"] is True
    assert v["actor_rollout_ref.rollout.response_length"] == 1024  # ${data.max_response_length} resolved
    raw = load_verl(str(FIX / "verl_grpo.yaml"))
    assert raw.values[A + "optim.lr"] == 1e-6  # YAML 1.1 "1e-6" is a float with OmegaConf's loader
    assert raw.where[A + "kl_loss_coef"].endswith("verl_grpo.yaml:27")
    m = t.require_method()
    assert m.advantage == GroupStandardized(Std.BESSEL, 1e-6) and m.kl == KLLoss(Estimator.K3) and m.beta == 0.04
    assert m.aggregation == Aggregation(AggMode.TOKEN_MEAN) and m.policy_loss == PPOClip(0.2, 0.2, 3.0)
    kinds = _kinds(t)
    assert kinds["data.train_files"] is Kind.IGNORED and kinds[A + "fsdp_config.param_offload"] is Kind.IGNORED
    assert kinds[A + "ppo_mini_batch_size"] is Kind.LAYOUT and kinds["algorithm.adv_estimator"] is Kind.TRANSLATED
    cats = {k.key: k.category for k in t.keys}
    assert cats["trainer.logger"] == "logging" and cats[A + "optim.lr"] == "optimizer"
    assert cats["actor_rollout_ref.model.path"] == "model" and cats["actor_rollout_ref.ref.fsdp_config.param_offload"] \
        == "reference model"
    assert t.defaults["algorithm.norm_adv_by_std_in_grpo"] is True  # stated defaults (verl 0.9.1)
    assert t.group_size == 4 and t.steps_per_rollout == 2  # 32 prompts / 16 per mini-batch
    assert t.layout.pool is Pool.GROUPS and t.layout.groups == 16


@pytest.mark.parametrize("text,expected", [("false", False), ("False", False), ("no", False), ("off", False),
                                           ("0", False), ("true", True), ("yes", True), ("1", True)])
def test_verl_string_booleans(text, expected):
    t = translate_verl({"algorithm.adv_estimator": "grpo", "actor.use_kl_loss": text})
    assert t.values[A + "use_kl_loss"] is expected
    assert isinstance(t.method.kl, KLLoss) is expected


def test_trl_strings_are_parsed_as_hf_argument_parser_does():
    t = translate_trl(str(FIX / "trl_grpo.yaml"))
    assert t.values["beta"] == 0.04 and t.values["use_bias_correction_kl"] is False
    m = t.require_method()
    assert m.kl == KLLoss(Estimator.K3, importance_weight=False) and m.beta == 0.04
    for text, val in (("t", True), ("F", False), ("y", True), ("no", False)):
        assert translate_trl({"beta": 0.1, "use_bias_correction_kl": text}).values["use_bias_correction_kl"] is val
    bad = translate_trl({"use_bias_correction_kl": "maybe"})
    assert bad.method is None and "not a bool" in bad.unsupported[0].reason
    # scale_rewards: True/False as GRPOConfig.__post_init__ maps them; the string "false" TRL itself rejects
    assert translate_trl({"scale_rewards": False}).method.advantage == GroupCentered()
    assert "invalid value 'false'" in translate_trl({"scale_rewards": "false"}).unsupported[0].reason


def test_trl_json_and_kinds():
    t = translate_trl(str(FIX / "trl_grpo.json"))
    m = t.require_method()
    assert m.policy_loss == GSPO(0.2, 0.2) and m.aggregation.mode is AggMode.SEQ_MEAN_TOKEN_MEAN
    y = translate_trl(str(FIX / "trl_grpo.yaml"))
    kinds = _kinds(y)
    assert kinds["model_name_or_path"] is Kind.IGNORED and kinds["dataset_name"] is Kind.IGNORED
    assert kinds["learning_rate"] is Kind.IGNORED and kinds["per_device_train_batch_size"] is Kind.LAYOUT
    assert y.layout.pool is Pool.MICRO and (y.layout.groups, y.layout.micro_rows) == (4, 8)  # bnpo: 16-row batch


def test_malformed_files_give_their_line(tmp_path):
    with pytest.raises(ValueError, match=r"verl_bad.yaml:6:16: malformed YAML: .*starts at line 5"):
        translate_verl(str(FIX / "verl_bad.yaml"))
    with pytest.raises(ValueError, match=r"trl_bad.json:4:3: malformed JSON: Expecting ',' delimiter"):
        translate_trl(str(FIX / "trl_bad.json"))
    bad = tmp_path / "x.yaml"
    bad.write_text("beta: 0.1\n  loss_type: grpo\n")
    with pytest.raises(ValueError, match=r"x.yaml:2:12: malformed YAML"):
        translate_trl(str(bad))
    with pytest.raises(ValueError, match="does not exist"):
        translate_verl(str(tmp_path / "missing.yaml"))
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        translate_verl(str(bad))
    with pytest.raises(ValueError, match="must be a mapping of GRPOConfig fields"):
        translate_trl(str(bad))


def test_hydra_defaults_list_needs_hydra(monkeypatch):
    monkeypatch.setitem(sys.modules, "hydra", None)  # as without hydra-core (the composition itself: verl venv)
    with pytest.raises(ValueError, match="Hydra `defaults:` list; that needs hydra-core"):
        translate_verl(str(FIX / "verl_hydra.yaml"))


# ---------------------------------------------------------------------------------------------------------------
# Hydra-style overrides

def test_override_forms():
    t = translate_verl(None, ["algorithm.adv_estimator=grpo", "+actor_rollout_ref.rollout.n=8",
                              "++actor_rollout_ref.actor.use_kl_loss=true", f"{A}kl_loss_type=low_var_kl+",
                              f"{A}kl_loss_coef=1e-3"])
    m = t.require_method()
    assert t.group_size == 8 and m.kl == KLLoss(Estimator.K3, straight_through=True) and m.beta == 0.001
    # ~key deletes a key of the file: the default (token-mean) applies again
    u = translate_verl(str(FIX / "verl_grpo.yaml"), [f"~{A}loss_agg_mode", f"{A}kl_loss_type=mse"])
    assert u.method.kl.estimator is Estimator.K2 and u.defaults[A + "loss_agg_mode"] == "token-mean"
    assert u.keys and {k.where for k in u.keys if k.key == A + "kl_loss_type"} == {"override 2"}
    with pytest.raises(ValueError, match=r"override 1 'algorithm.adv_estimator' is not key=value"):
        translate_verl(None, ["algorithm.adv_estimator"])
    with pytest.raises(ValueError, match="no such key"):
        translate_verl(None, ["~algorithm.nope"])
    lists = translate_verl(None, ["algorithm.adv_estimator=grpo", "trainer.logger=[console,wandb]"])
    assert lists.values and {k.key: k.value for k in lists.keys}["trainer.logger"] == ["console", "wandb"]


def test_example_script_command_line():
    tokens = split_overrides((FIX / "verl_example.sh").read_text())
    assert tokens[0] == "algorithm.adv_estimator=grpo" and tokens[-1] == "trainer.total_epochs=15"
    assert "data.train_files=$gsm8k_train_path" in tokens  # a path: ignored, never expanded
    t = translate_verl(None, (FIX / "verl_example.sh").read_text())
    m = t.require_method()
    assert t.group_size == 5 and m.beta == 0.001 and t.steps_per_rollout == 1
    assert t.layout.pool is Pool.GROUPS and t.layout.groups == 64


# ---------------------------------------------------------------------------------------------------------------
# classification and refusals

def test_every_untranslatable_key_is_named_with_its_reason():
    t = translate_verl({"algorithm.adv_estimator": "grpo", "actor.entropy_coeff": 0.01, "actor.bogus": 1,
                        "algorithm.rollout_correction.rollout_rs": "token_k1",
                        "algorithm.filter_groups.enable": True})
    assert t.method is None
    reasons = {k.key: k.reason for k in t.unsupported}
    assert "entropy bonus" in reasons[A + "entropy_coeff"]
    assert "unknown to verl 0.9.1" in reasons[A + "bogus"]
    assert "response_mask" in reasons["algorithm.rollout_correction.rollout_rs"]
    assert "dynamic sampling" in reasons["algorithm.filter_groups.enable"]
    with pytest.raises(ValueError, match="entropy_coeff=0.01: an entropy bonus"):
        t.require_method("from_verl")
    # a misspelled objective key is refused, not ignored
    assert translate_verl({"algorithm.adv_estimator": "grpo", "actor.kl_los_coef": 0.1}).method is None
    assert translate_verl({"algorithm.adv_estimator": "grpo", "actor.entropy_coeff": "0"}).method is not None


@pytest.mark.parametrize("est,reason", [
    ("gae", "critic"), ("remax", "greedy rollout"),
    ("optimal_token_baseline", "per-token baseline"), ("gdpo", "several reward components"),
    ("nonsense", "neither a verl 0.9.1 estimator nor an rlkl plug-in name")])
def test_refused_adv_estimators_say_why(est, reason):
    t = translate_verl({"algorithm.adv_estimator": est, "actor_rollout_ref.rollout.n": 4})
    assert t.method is None
    (k,) = [k for k in t.unsupported if k.key == "algorithm.adv_estimator"]
    assert reason in k.reason and f"adv_estimator={est!r}" in k.reason


def test_translated_adv_estimators():
    n4 = {"actor_rollout_ref.rollout.n": 4}
    assert from_verl({"algorithm.adv_estimator": "grpo_vectorized", **n4}).advantage == GroupStandardized(Std.BESSEL,
                                                                                                           1e-6)
    assert from_verl({"algorithm.adv_estimator": "rloo_vectorized", **n4}).advantage == LeaveOneOut()
    # the docs' FRPO recipe through rlkl's verl plug-in: the registered frpo with β = kl_ctrl.kl_coef
    m = from_verl(str(FIX / "verl_frpo_recipe.yaml"))
    frpo = get_method("frpo").replace(beta=0.01)
    assert (m.advantage, m.policy_loss, m.kl, m.aggregation, m.beta) == \
        (frpo.advantage, frpo.policy_loss, frpo.kl, frpo.aggregation, 0.01)
    assert m.objective == frpo.objective and isinstance(m.kl, FutureReturn)
    bad = translate_verl(str(FIX / "verl_frpo_recipe.yaml"), [f"{A}kl_loss_coef=0.1"])
    assert "second KL term" in {k.key: k.reason for k in bad.unsupported}[A + "kl_loss_coef"]
    # an RPG method: β is kl_loss_coef, the clip from verl's clip keys
    r = from_verl({"algorithm.adv_estimator": "rpg_reinforce_fkl", "actor.policy_loss.loss_mode": "rpg_reinforce_fkl",
                   "actor.kl_loss_coef": 1e-3, "actor.clip_ratio_high": 0.28, "actor.clip_ratio_c": 10.0})
    assert r.beta == 1e-3 and r.policy_loss.clip.eps_high == 0.28 and r.policy_loss.clip.c == 10.0
    # in-reward KL with verl's defaults
    kr = from_verl({"algorithm.adv_estimator": "grpo", "algorithm.use_kl_in_reward": True})
    assert (kr.kl, kr.beta) == (KLReward(Estimator.K1, RewardForm.FUSED), 0.001)
    # the estimators and losses the registry added (CISPO, Pass@k, OPO, GPG, REINFORCE++)
    assert from_verl({"algorithm.adv_estimator": "grpo_passk", **n4}).advantage == PassAtK(True, Std.BESSEL, 1e-6)
    assert from_verl({"algorithm.adv_estimator": "grpo_passk", "algorithm.norm_adv_by_std_in_grpo": False,
                      **n4}).advantage.normalize is False
    assert from_verl({"algorithm.adv_estimator": "opo", **n4}).advantage == LengthWeightedCentered()
    gpg = from_verl({"algorithm.adv_estimator": "gpg", "actor.policy_loss.loss_mode": "gpg", **n4})
    assert (gpg.advantage, gpg.policy_loss) == (GPGAdvantage(), Reinforce())
    rpp = from_verl({"algorithm.adv_estimator": "reinforce_plus_plus", "algorithm.use_kl_in_reward": True})
    assert rpp.advantage == TokenWhitened(group_mean=False) and rpp.kl.form is RewardForm.REWARD_TO_GO
    rppb = from_verl({"algorithm.adv_estimator": "reinforce_plus_plus_baseline", "algorithm.use_kl_in_reward": True,
                      **n4})
    assert rppb.advantage == TokenWhitened(group_mean=True) and rppb.kl.form is RewardForm.FUSED
    disc = translate_verl({"algorithm.adv_estimator": "reinforce_plus_plus", "algorithm.gamma": 0.99})
    assert disc.method is None and "discounted return" in disc.unsupported[0].reason
    cispo = from_verl({"algorithm.adv_estimator": "grpo", "actor.policy_loss.loss_mode": "cispo", **n4})
    assert cispo.policy_loss == CISPO(0.2, 0.2)


def test_trl_every_loss_type_and_options():
    for lt, mode in (("grpo", AggMode.SEQ_MEAN_TOKEN_MEAN), ("bnpo", AggMode.TOKEN_MEAN),
                     ("dapo", AggMode.TOKEN_MEAN), ("dr_grpo", AggMode.SEQ_MEAN_TOKEN_SUM_NORM),
                     ("luspo", AggMode.SEQ_MEAN_TOKEN_SUM)):
        assert from_trl({"loss_type": lt, "beta": 0.04}).aggregation.mode is mode
    for lt in ("sapo", "vespo"):
        t = translate_trl({"loss_type": lt})
        assert t.method is None and f"loss_type={lt!r} is not translatable" in t.unsupported[0].reason
    # TRL's cispo caps ρ at epsilon_high itself (ε_max): CISPO(no lower bound, ε_high = ε_max − 1)
    c = from_trl({"loss_type": "cispo", "epsilon_high": 5.0})
    assert c.policy_loss == CISPO(None, 4.0) and c.aggregation.mode is AggMode.TOKEN_MEAN
    bad = translate_trl({"loss_type": "cispo"})  # epsilon_high defaults to epsilon = 0.2: caps every weight below 1
    assert bad.method is None and "(trl default)" in bad.unsupported[0].reason
    seq = translate_trl({"beta": 0.04, "importance_sampling_level": "sequence"})  # + bias correction (default)
    assert seq.method is None and "sequence* ratio" in seq.unsupported[0].reason
    assert isinstance(from_trl({"importance_sampling_level": "sequence"}).policy_loss, GSPO)
    assert from_trl({}).kl == NoKL()
    # defaults by version: 1.9 → k3, 1.10 / 1.16 → ρ·k3
    assert from_trl({"beta": 0.1}, trl_version="1.9").kl.importance_weight is False
    assert from_trl({"beta": 0.1}, trl_version="1.10").kl.importance_weight is True
    assert "newer than 1.16" in translate_trl({}, trl_version="1.20").notes[0]
    with pytest.raises(ValueError, match="from 1.0 on"):
        translate_trl({}, trl_version="0.29")
    for key, value, why in (("repetition_penalty", 1.1, "repetition"), ("top_entropy_quantile", 0.2, "highest-entropy"),
                            ("mask_truncated_completions", True, "truncated"), ("entropy_coef", 0.01, "entropy"),
                            ("delta", 2.0, "two-sided clip"), ("scale_rewards", "batch", "batch std")):
        t = translate_trl({key: value})
        assert t.method is None and why in {k.key: k.reason for k in t.unsupported}[key]


def test_trl_layouts():
    d = translate_trl({"per_device_train_batch_size": 8, "gradient_accumulation_steps": 4, "num_generations": 8})
    assert d.layout.pool is Pool.GROUPS and d.layout.groups == 4  # dapo: the 32-row generation batch
    assert d.steps_per_rollout == 1
    s = translate_trl({"steps_per_generation": 8, "gradient_accumulation_steps": 2, "num_iterations": 2,
                       "num_generations": 4})
    assert s.steps_per_rollout == 8 and "older policy" in s.notes[0]
    assert translate_trl({"loss_type": "grpo"}).layout.is_group
    bad = translate_trl({"num_generations": 3, "per_device_train_batch_size": 4})
    assert bad.method is None and "generation batch" in bad.unsupported[0].reason


def test_trl_config_object_and_to_dict():
    """A dataclass with to_dict (what a GRPOConfig is) and its dict give the same Method."""
    from dataclasses import dataclass, field

    @dataclass
    class FakeGRPOConfig:  # the shape of trl.GRPOConfig (the real one: tests/test_integrations_trl.py)
        output_dir: str = "out"
        beta: float = 0.04
        loss_type: str = "grpo"
        num_generations: int = 4
        report_to: list = field(default_factory=list)

        def to_dict(self):
            return dict(self.__dict__)

    obj = FakeGRPOConfig()
    assert from_trl(obj) == from_trl(obj.to_dict())
    assert load_trl(obj).origin == "FakeGRPOConfig object"
    with pytest.raises(ValueError, match="GRPOConfig, a dict"):
        from_trl(3)


# ---------------------------------------------------------------------------------------------------------------
# the report: verdict, layout term, equivalent method, smallest fix

def test_explain_finds_the_smallest_exact_change():
    t = translate_verl(None, ["algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=4",
                              f"{A}use_kl_loss=True", f"{A}kl_loss_coef=0.05", "data.train_batch_size=8",
                              f"{A}ppo_mini_batch_size=8"])
    rep = explain(t, default_mdps(3, 2, 2), seeds=(0,))
    assert rep["equivalent"] == {"name": "grpo", "differs_in": ["aggregation"]}
    (rec,) = rep["audits"]
    assert not rec["config_exact"] and {"finite_group_utility", "forward_direction"} <= set(rec["bias_terms"])
    fix = rep["fix"]
    assert fix["status"] == "fix" and fix["rel_error"] < 1e-12
    assert fix["changes"] == {"algorithm.adv_estimator": "rloo", A + "use_kl_loss": False,
                              "algorithm.use_kl_in_reward": True, "algorithm.kl_ctrl.kl_coef": 0.05}
    text = format_report(rep)
    assert "smallest change to exact (4 keys" in text and "algorithm.adv_estimator=rloo" in text
    assert "registered 'grpo' except its aggregation" in text


def test_explain_reports_the_batch_layout_term_with_eos():
    t = translate_verl(None, ["algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=3",
                              "data.train_batch_size=4", f"{A}ppo_mini_batch_size=4"])
    rep = explain(t, default_mdps(3, 3, 2, eos=True), fix=False, group_size=3)
    (rec,) = rep["audits"]
    assert rec["bias_terms"]["batch_layout"]["rel_norm"] > 1e-3  # token-mean over 4 groups, not 1
    assert "length_normalization" in rec["bias_terms"]
    seq = translate_verl(None, ["algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=3",
                                f"{A}loss_agg_mode=seq-mean-token-mean"])
    (rec2,) = explain(seq, default_mdps(3, 3, 2, eos=True), fix=False)["audits"]
    assert "batch_layout" not in rec2["bias_terms"]


def test_equivalent_method():
    assert equivalent_method(get_method("dapo").replace(beta=0.0)) == ("dapo", [])
    name, diff = equivalent_method(from_trl({"loss_type": "grpo", "scale_rewards": "none"}))
    assert diff == [] or len(diff) == 1


# ---------------------------------------------------------------------------------------------------------------
# the CLI

def test_cli_audit_verl_file_with_overrides(capsys):
    assert main(["audit", "--verl", str(FIX / "verl_grpo.yaml"), "data.train_batch_size=16",
                 "--vocab", "3", "--horizon", "2"]) == 0
    out = capsys.readouterr().out
    assert "verl 0.9.1 config" in out and "BIASED" in out and "smallest change to exact" in out
    assert "ignored (14, do not affect the objective)" in out


def test_cli_audit_trl_and_verl_overrides(capsys):
    assert main(["audit", "--trl", '{"beta": 0.04, "num_generations": 4}', "--horizon", "2"]) == 0
    assert "trl 1.16 config" in capsys.readouterr().out
    assert main(["audit", "--verl-overrides", "python3 -m verl.trainer.main_ppo algorithm.adv_estimator=frpo "
                 "actor_rollout_ref.rollout.n=4 actor_rollout_ref.actor.policy_loss.loss_mode=frpo "
                 "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum", "--horizon", "2", "--json"]) == 0
    import json

    rep = json.loads(capsys.readouterr().out)
    assert rep["equivalent"]["name"] == "frpo" and rep["audits"][0]["config_exact"]


def test_cli_bad_configs_exit_2(capsys):
    assert main(["audit", "--verl", str(FIX / "verl_bad.yaml")]) == 2
    assert "verl_bad.yaml:6:16: malformed YAML" in capsys.readouterr().err
    assert main(["audit", "--verl-overrides", "algorithm.adv_estimator=grpo actor_rollout_ref.actor.entropy_coeff=0.1",
                 "--horizon", "2"]) == 2
    out = capsys.readouterr().out
    assert "NOT SUPPORTED override 2: actor_rollout_ref.actor.entropy_coeff=0.1: an entropy bonus" in out
    assert main(["audit", "--trl", "{beta: 1"]) == 2
