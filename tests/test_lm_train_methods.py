"""`train(cfg, method=Method(...))` and `rlkl train --method-file | --verl | --trl`: any Method trains, the run
records the full Method (config.json's method_json, method.json), and a resume refuses another Method."""

import argparse
import json
from pathlib import Path

import pytest

from rlkl.components import GroupCentered, LeaveOneOut
from rlkl.integrations.flags import from_verl
from rlkl.lm import cli_train
from rlkl.lm.sft import SFTConfig, train_sft
from rlkl.lm.train import TrainConfig, build_method, resume, train
from rlkl.methods import Method, get_method

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in the root conftest.py
FIX = Path(__file__).parent / "fixtures" / "configs"


@pytest.fixture(scope="module")
def ref_path(tmp_path_factory):
    """A small noisy-SFT reference on 1-digit addition (a few seconds on one core)."""
    out = tmp_path_factory.mktemp("ref")
    cfg = SFTConfig(task="addition", difficulty=1, n_layer=1, n_head=2, d_model=32, steps=60, batch_size=64, lr=1e-2,
                    warmup_steps=10, noise_rate=0.3, eval_prompts=6, eval_samples=4, eval_every=60, num_threads=1)
    train_sft(cfg, out, progress=False)
    return str(out / "reference.pt")


def _cfg(ref_path, **kw):
    base = dict(task="addition", difficulty=1, ref=ref_path, steps=2, prompts_per_step=4, group_size=4, lr=1e-3,
                warmup_steps=1, eval_every=2, eval_prompts=6, eval_samples=2, checkpoint_every=100, num_threads=1,
                device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_train_any_method_records_it_and_resume_checks_it(ref_path, tmp_path):
    m = get_method("grpo").replace(name="grpo_centered", advantage=GroupCentered(), beta=0.02)
    out = tmp_path / "run"
    rows = train(_cfg(ref_path), out, progress=False, method=m)
    assert rows[-1]["step"] == 2
    saved = json.loads((out / "config.json").read_text())
    assert saved["method"] == "grpo_centered" and saved["beta"] == 0.02
    assert Method.from_dict(json.loads(saved["method_json"])) == m
    assert Method.from_dict(json.loads((out / "method.json").read_text())) == m
    assert build_method(TrainConfig.from_dict(saved)) == m
    more = resume(out, progress=False, steps=3)  # the recorded Method continues
    assert more[-1]["step"] == 3
    other = m.replace(advantage=LeaveOneOut())
    with pytest.raises(ValueError, match=r"cannot change \['method_json'\]"):
        train(_cfg(ref_path, steps=4), out, resume=True, progress=False, method=other)
    (out / "method.json").write_text(json.dumps(other.to_dict()))  # a run that trained another Method
    with pytest.raises(ValueError, match="its method.json is not the Method this config builds"):
        resume(out, progress=False, steps=4)


def test_method_json_is_validated(ref_path):
    with pytest.raises(ValueError, match="method_json is not JSON"):
        _cfg(ref_path, method_json="{nope")
    with pytest.raises(ValueError, match="unknown component kind"):
        _cfg(ref_path, method_json=json.dumps({"name": "x", "advantage": {"kind": "Nope"}}))
    with pytest.raises(ValueError, match="method must be an rlkl Method"):
        train(_cfg(ref_path), "unused", method="grpo")


def _cli(argv):
    parser = argparse.ArgumentParser()
    cli_train.add_arguments(parser)
    return cli_train.main(parser.parse_args(argv))


def test_cli_trains_a_translated_verl_config(ref_path, tmp_path, capsys):
    out = tmp_path / "verl"
    base = ["--ref", ref_path, "--difficulty", "1", "--steps", "2", "--prompts-per-step", "4", "--eval_prompts", "6",
            "--eval_samples", "2", "--quiet", "--out", str(out)]
    assert _cli(["--verl", str(FIX / "verl_grpo.yaml"), "actor_rollout_ref.actor.kl_loss_coef=0.02", *base]) == 0
    saved = json.loads((out / "config.json").read_text())
    expected = from_verl(str(FIX / "verl_grpo.yaml"), overrides=["actor_rollout_ref.actor.kl_loss_coef=0.02"])
    assert Method.from_dict(json.loads(saved["method_json"])) == expected
    assert saved["method"] == "verl_config" and saved["group_size"] == 4 and saved["beta"] == 0.02  # G = rollout.n
    assert "run directory" in capsys.readouterr().out
    # the run's method.json trains again with --method-file; a TRL config trains too
    assert _cli(["--method-file", str(out / "method.json"), *base[:-1], str(tmp_path / "file")]) == 0
    assert _cli(["--trl", '{"loss_type": "dr_grpo", "num_generations": 4, "beta": 0.01}', *base[:-1],
                 str(tmp_path / "trl")]) == 0
    assert json.loads((tmp_path / "trl" / "config.json").read_text())["method"] == "trl_config"


def test_cli_train_carries_the_configs_sampler_and_correction(ref_path, tmp_path):
    """The engine's top-p and verl's token TIS of a config reach the run: the sampler fields and the Method."""
    out = tmp_path / "verl_top_p"
    base = ["--ref", ref_path, "--difficulty", "1", "--steps", "1", "--prompts-per-step", "4", "--eval_prompts", "6",
            "--eval_samples", "2", "--quiet", "--out", str(out)]
    assert _cli(["--verl", str(FIX / "verl_grpo.yaml"), "actor_rollout_ref.rollout.top_p=0.8",
                 "algorithm.rollout_correction.rollout_is=token", *base]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["top_p"] == 0.8 and saved["top_k"] == 0 and saved["logprobs"] == "processed"
    assert Method.from_dict(json.loads(saved["method_json"])).correction.spec() == "token_tis:2"
    # a flag given on the command line wins over the config's value
    assert _cli(["--verl", str(FIX / "verl_grpo.yaml"), "actor_rollout_ref.rollout.top_p=0.8", "--top-p", "0.9",
                 *base[:-1], str(tmp_path / "flag")]) == 0
    assert json.loads((tmp_path / "flag" / "config.json").read_text())["top_p"] == 0.9


def test_cli_method_sources_errors(ref_path, tmp_path, capsys):
    base = ["--ref", ref_path, "--difficulty", "1", "--quiet"]
    assert _cli(["--method", "grpo", "--verl-overrides", "algorithm.adv_estimator=grpo", *base]) == 2
    assert "give one of --method" in capsys.readouterr().err
    assert _cli(["--verl-overrides", "algorithm.adv_estimator=gae", *base]) == 2
    err = capsys.readouterr().err
    assert "needs a value model (critic)" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "m.json"
    bad.write_text("{\n  nope\n}")
    assert _cli(["--method-file", str(bad), *base]) == 2
    assert "m.json:2:3: malformed JSON" in capsys.readouterr().err
    assert _cli(["--method-file", str(tmp_path / "missing.json"), *base]) == 2
