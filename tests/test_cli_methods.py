"""`rlkl methods`: the registry table, JSON, one method's details with predicted biases, and verl/TRL translation.

Calls ``rlkl.cli.main([...])`` in-process and reads stdout through capsys.
"""

from __future__ import annotations

import json


from rlkl.cli import main
from rlkl.methods import REGISTRY, Method


def run(capsys, *argv: str) -> str:
    rc = main(["methods", *argv])
    out = capsys.readouterr().out
    assert rc == 0
    return out


def test_table_lists_every_registry_method(capsys):
    out = run(capsys)
    lines = out.splitlines()
    header = lines[0].split()
    assert header == ["name", "advantage", "kl", "loss", "aggregation", "beta"]
    assert max(len(line) for line in lines) <= 120  # fits a 120-column terminal; --wide shows more
    names = [line.split()[0] for line in lines[2:] if line.strip() and not line.startswith("(")]
    assert names == list(REGISTRY)  # every method, in registry order, names in full
    grpo_row = next(line for line in lines if line.startswith("grpo "))
    assert "k3 loss" in grpo_row and "ppo_clip(0.2,0.2,c=3)" in grpo_row and "seq-mean-token-mean" in grpo_row


def test_json_parses_and_carries_predicted_biases(capsys):
    records = json.loads(run(capsys, "--json"))
    assert [r["name"] for r in records] == list(REGISTRY)
    for r in records:
        assert {"advantage", "policy_loss", "kl", "aggregation", "beta", "objective", "citation",
                "predicted_bias_on_policy"} <= set(r)
        assert isinstance(r["beta"], float) and Method.from_dict({k: v for k, v in r.items()
                                                                  if k != "predicted_bias_on_policy"}) == REGISTRY[r["name"]]
    grpo = next(r for r in records if r["name"] == "grpo")
    assert set(grpo["predicted_bias_on_policy"]) == {"finite_group_utility", "forward_direction", "future_kl_missing"}
    assert next(r for r in records if r["name"] == "rloo")["predicted_bias_on_policy"] == []


def test_name_shows_fields_and_predicted_biases(capsys):
    out = run(capsys, "--name", "grpo")
    assert out.startswith("grpo:")
    assert "KLLoss(estimator='k3'" in out and "PPOClip(low=0.2, high=0.2, dual=3.0)" in out
    assert "intended objective   E[R] - beta*KL(pi||pi_ref)" in out
    on_policy = next(line for line in out.splitlines() if "predicted bias (on-policy" in line)
    assert "forward_direction" in on_policy and "future_kl_missing" in on_policy
    off_policy = next(line for line in out.splitlines() if "predicted bias (off-policy)" in line)
    assert "missing_importance_weight" in off_policy and "clipping" in off_policy
    assert "none (exact)" in run(capsys, "--name", "rloo")


def test_verl_and_trl_translations(capsys):
    out = run(capsys, "--verl", '{"algorithm.adv_estimator": "grpo", "actor.use_kl_loss": true}')
    assert "translated from verl flags" in out
    fields = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()[1:] if line.startswith("  ")
              and not line.strip().startswith(("intended", "predicted")) and "(component)" not in line}
    assert fields["kl"] == "k3 loss" and fields["loss"] == "ppo_clip(0.2,0.2,c=3)"
    assert fields["aggregation"] == "token-mean" and fields["beta"] == "0.001"
    assert "forward_direction" in out
    out = run(capsys, "--trl", '{"beta": 0.04, "loss_type": "dr_grpo"}')
    assert "translated from TRL GRPOConfig" in out and "seq-mean-token-sum-norm" in out and "512" in out


def test_bad_input_gives_clear_errors_and_exit_2(capsys):
    # ValueErrors (bad user input) are printed as one line on stderr, no traceback, exit code 2
    assert main(["methods", "--name", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["methods", "--verl", '{"bogus": 1}']) == 2
    assert "bogus=1: unknown to verl 0.9.1" in capsys.readouterr().err
    # json.JSONDecodeError is a ValueError too
    assert main(["methods", "--trl", "{beta: 0.04"]) == 2
    assert "Expecting property name" in capsys.readouterr().err


def test_only_the_selected_command_is_imported():
    import subprocess
    import sys

    code = "import sys, rlkl.cli; rlkl.cli.main(['methods', '--json']); print('rlkl.lm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_top_level_help_lists_methods(capsys):
    assert main([]) == 0
    assert "methods" in capsys.readouterr().out
