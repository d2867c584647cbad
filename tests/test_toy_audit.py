"""audit(): records, named bias terms, flag-dict and callable inputs, the CLI, and the verify rows."""

import argparse
import json

import pytest
import torch

from rlkl.objective import Objective
from rlkl.losses import aggregate, reinforce_loss
from rlkl.methods import AWAITING_AUDIT, REGISTRY, get_method
from rlkl.toy import cli
from rlkl.toy.audit import audit, audit_one, default_mdps, make_setup, verify_rows
from rlkl.toy.expected import LossSpec
from rlkl.toy.mdp import TreeMDP

SCHEMA = {"method", "objective", "mdp", "rel_error", "cosine", "exact", "bias_terms", "scale", "unexplained",
          "predicted_terms", "as_predicted", "group_size", "beta", "route"}


def test_record_schema_and_the_grpo_decomposition():
    mdp = TreeMDP.random(2, 3, 2, seed=1)
    recs = audit("grpo", [mdp], group_size=3, beta=0.2)
    assert len(recs) == 1
    r = recs[0]
    assert SCHEMA <= set(r)
    json.dumps(recs)  # JSON-able
    assert r["exact"] is False and r["unexplained"] < 1e-10 and r["as_predicted"] is True
    assert set(r["bias_terms"]) == {"finite_group_utility", "forward_direction", "future_kl_missing"}
    assert r["scale"] == pytest.approx(1 / 3)  # seq-mean-token-mean on a fixed horizon T = 3


def test_exact_methods_are_exact_and_a_gap_is_fully_explained():
    mdp = TreeMDP.random(3, 3, 1, eos=True, seed=2)
    for name in ("frpo", "rloo", "rpg_reinforce_rkl_seq", "ppo_k1_rtg"):
        r = audit(name, [mdp], group_size=3, beta=0.3)[0]
        assert r["exact"] and r["rel_error"] < 1e-10 and r["as_predicted"], name
    r = audit("grpo_k1_loss", [mdp], group_size=3, beta=0.3)[0]
    assert {"no_kl_gradient", "length_normalization"} <= set(r["bias_terms"]) and r["unexplained"] < 1e-10


def test_the_decomposition_adds_up():
    mdp = TreeMDP.random(3, 2, 2, seed=3)
    pi, old, ref = make_setup(mdp, 0, off_policy=True)
    res = audit_one(get_method("grpo").replace(beta=0.5), mdp, pi, old, ref, 3)
    total = res.target + sum(res.terms.values()) + res.residual
    assert torch.allclose(total, res.grad, rtol=1e-12, atol=1e-15)
    assert float(res.residual.norm() / res.target.norm()) < 1e-10
    assert "missing_importance_weight" in res.record["bias_terms"]


def test_flag_dicts_are_audited_like_the_equivalent_method():
    mdp = TreeMDP.random(2, 3, 1, seed=4)
    verl = {"algorithm": {"adv_estimator": "grpo"}, "actor_rollout_ref": {"actor": {
        "use_kl_loss": True, "kl_loss_type": "low_var_kl", "kl_loss_coef": 0.2}}}
    rv = audit(verl, [mdp], group_size=3)[0]
    assert {"forward_direction", "future_kl_missing", "finite_group_utility"} <= set(rv["bias_terms"])
    trl = {"beta": 0.2, "loss_type": "dr_grpo", "scale_rewards": False, "max_completion_length": 3}
    rt = audit(trl, [mdp], group_size=3)[0]
    assert "leave_in_shrink" in rt["bias_terms"] and rt["unexplained"] < 1e-10
    plus = dict(verl)
    plus["actor_rollout_ref"] = {"actor": {"use_kl_loss": True, "kl_loss_type": "low_var_kl+", "kl_loss_coef": 0.2}}
    rp = audit(plus, [mdp], group_size=3)[0]
    assert "forward_direction" not in rp["bias_terms"]  # k3+ has k2's gradient


def test_a_plain_loss_function_can_be_audited():
    mdp = TreeMDP.random(2, 3, 2, reward="real", seed=5)

    def rloo_loss(logp, batch):
        r = batch.rewards.view(-1, batch.group_size)
        adv = (r - (r.sum(-1, keepdim=True) - r) / (batch.group_size - 1)).reshape(-1)
        out = reinforce_loss(logp, adv[:, None].expand_as(logp) * batch.mask, batch.mask)
        return aggregate(out.loss, batch.mask, "seq-mean-token-sum")

    r = audit(rloo_loss, [mdp], group_size=3, objective=Objective("expected_reward", "none"))[0]
    assert r["exact"] and r["method"] == "rloo_loss"
    spec = LossSpec(rloo_loss, 3, "seq-mean-token-sum", "rewards", "rloo_batched")
    assert audit(spec, [mdp], objective=Objective("expected_reward", "none"))[0]["exact"]
    with pytest.raises(ValueError, match="objective="):
        audit(rloo_loss, [mdp], group_size=3)


def test_cli_table_json_and_errors(capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--method", "frpo,dr_grpo", "--vocab", "2", "--horizon", "2", "--prompts", "1",
                              "--group-size", "3", "--json"])
    assert cli.main(args) == 0
    recs = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in recs] == ["frpo", "dr_grpo"] and recs[0]["exact"]
    args = parser.parse_args(["--method", "grpo", "--vocab", "2", "--horizon", "2", "--eos"])
    assert cli.main(args) == 0
    assert "length_normalization" in capsys.readouterr().out
    assert cli.main(parser.parse_args(["--method", "nope"])) == 2
    assert cli.main(parser.parse_args(["--method", "grpo", "--vocab", "9", "--horizon", "9"])) == 2
    assert "enumeration too large" in capsys.readouterr().err


def test_cli_real_rewards_skip_binary_only_claims_and_print_the_rest(capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--method", "all", "--reward", "real", "--vocab", "2", "--horizon", "2", "--prompts",
                              "1", "--group-size", "3", "--off-policy", "--json"])
    assert cli.main(args) == 0
    out = capsys.readouterr()
    recs = json.loads(out.out)  # stdout is one JSON document; the skip notes go to stderr
    binary_only = {n for n, m in REGISTRY.items() if m.objective.needs_binary_rewards}
    assert binary_only and {r["method"] for r in recs} == set(REGISTRY) - binary_only
    assert all(r["as_predicted"] and r["unexplained"] <= 1e-10 for r in recs)
    assert out.err.count("skipped") == len(binary_only) and "binary rewards" in out.err
    assert cli.main(parser.parse_args(["--method", "frpo,rloo", "--reward", "real", "--vocab", "2", "--horizon",
                                       "2", "--prompts", "1", "--group-size", "3"])) == 0
    table = capsys.readouterr().out
    assert "skipped: frpo" in table and "1/1 records as predicted, 1 skipped" in table


def test_default_mdps_are_seeded():
    a, b = default_mdps(seeds=(0, 1))
    assert a.name != b.name and torch.equal(default_mdps(seeds=(0,))[0].rewards, a.rewards)


@pytest.mark.slow
def test_verify_rows_full_grid():
    rows = verify_rows(quick=False)
    assert all(r.status in ("EXACT", "BIASED") and r.expected for r in rows), [r.detail for r in rows if not r.expected]


def test_verify_rows_run_every_method_on_the_whole_grid():
    """One row per registered method, each audited on {on, off} × {fixed, EOS} × {binary, real} × {tabular,
    log-linear}: every setting as predicted, binary-reward claims skipped on real rewards, citations whole."""
    rows = verify_rows(quick=True)
    by = {r.claim.split(":")[0]: r for r in rows}
    methods = {**REGISTRY, **AWAITING_AUDIT}
    assert set(methods) <= set(by)
    assert all(r.section == "audit" and r.status in ("EXACT", "BIASED") and r.expected for r in rows), \
        [r.detail for r in rows if not r.expected]
    assert by["frpo"].status == "EXACT" and "8/8 settings" in by["frpo"].detail and "8 skipped" in by["frpo"].detail
    assert by["grpo"].status == "BIASED" and by["grpo"].detail.startswith("16/16 settings as predicted")
    seq = by["rpg_reinforce_urkl_seq"]
    assert seq.status == "EXACT" and "off-policy adds" not in seq.detail
    assert "geometric_mean_ratio" in by["gspo"].detail and "length_normalization" not in by["dr_grpo"].detail
    assert all(by[n].source == m.citation for n, m in methods.items())
    assert "batch_normalization" in by["reinforce_pp"].detail
