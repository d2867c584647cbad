"""The frontier experiment's statistics: bootstrap intervals, interpolation at matched KL, the verdict rules
(the end-to-end run is the quick figure, tests/test_figures.py)."""

import math

import numpy as np
import pytest

from rlkl.experiments import lm_frontier as F


def _runs(variant, pts, noise=0.0, seeds=5):
    """Synthetic final metrics: one (kl, reward) pair per β, seeds spread by ±noise."""
    out = []
    for beta, (kl, rew) in pts.items():
        for s in range(seeds):
            d = noise * (s - (seeds - 1) / 2)
            out.append({"variant": variant, "beta": beta, "seed": s, "kl_rev_seq": kl + d, "reward": rew + d,
                        "kl_fwd_seq": kl + d})
    return out


def test_bootstrap_ci():
    assert F.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert F.bootstrap_ci([3.0]) == (3.0, 3.0, 3.0)
    assert all(math.isnan(v) for v in F.bootstrap_ci([]))
    m, lo, hi = F.bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert m == 3.0 and 1.0 < lo < 3.0 < hi < 5.0
    assert F.bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0]) == (m, lo, hi)  # seeded: the same interval every time
    assert F.bootstrap_ci([1.0, float("nan"), 3.0])[0] == 2.0  # NaN dropped


def test_interpolation_at_matched_kl():
    xs = {0.1: [0.2], 1.0: [0.6]}
    ys = {0.1: [0.9], 1.0: [0.5]}
    assert F.interp_at(xs, ys, 0.4) == pytest.approx(0.7)  # halfway between (0.2, 0.9) and (0.6, 0.5)
    assert math.isnan(F.interp_at(xs, ys, 0.7))  # outside the curve: no extrapolation
    res = _runs("a", {0.1: (0.6, 0.5), 1.0: (0.2, 0.9)}, noise=0.01)
    m, lo, hi = F.matched(res, "a", "kl_rev_seq", "reward", 0.4)
    assert m == pytest.approx(0.7) and lo <= m <= hi


def test_compare_and_verdict_rules():
    res = _runs("a", {0.1: (0.6, 0.5), 1.0: (0.2, 0.3)}, noise=0.005) + \
        _runs("b", {0.1: (0.6, 0.9), 1.0: (0.2, 0.7)}, noise=0.005)
    rows = F.compare(res, "a", "b", "kl_rev_seq", "reward")
    assert len(rows) == 3 and all(r["a_lower"] and not r["a_higher"] for r in rows)
    assert F._part(rows, "a_lower") == "yes" and F._part(rows, "a_higher") == "no"
    assert F._verdict({"x": "yes", "y": "yes"}) == "reproduced"
    assert F._verdict({"x": "yes", "y": "no"}) == "qualified"
    assert F._verdict({"x": "means"}) == "not separated"  # only the means agree: inconclusive
    assert F._verdict({"x": "means", "y": "no"}) == "not separated"
    assert F._verdict({"x": "partly", "y": "no"}) == "qualified"
    part = [dict(rows[0]), dict(rows[1], a_lower=False)]  # separated at one point, means lower at both
    assert F._part(part, "a_lower") == "partly"
    assert F._verdict({"x": "no"}) == "not reproduced"
    assert F.compare(res, "a", "a_missing", "kl_rev_seq", "reward") == []


def test_is_k3_equals_k2_claim_and_aggregate():
    res = _runs("grpo_is_k3", {0.1: (0.3, 0.8)}) + _runs("grpo_k2_loss", {0.1: (0.3, 0.8)})
    names = ["grpo_is_k3", "grpo_k2_loss"]
    agg = F.aggregate(res, names, ["kl_rev_seq", "reward"])
    assert [r["n_seeds"] for r in agg] == [5, 5] and agg[0]["reward"][0] == pytest.approx(0.8)
    c = F.claim_is_k3_equals_k2(res, agg, names)
    assert c["verdict"] == "reproduced"
    res[0]["reward"] += 0.01
    assert F.claim_is_k3_equals_k2(res, agg, names)["verdict"] == "not reproduced"


def test_jobs_sweep_beta_only_for_methods_with_a_kl(tmp_path):
    import argparse

    args = argparse.Namespace(task="divisor", seeds=[0, 1], betas=[0.1, 1.0], steps=5, eval_every=5, rpg_k=4,
                              only=["no_kl", "frpo", "rpg_reinforce_urkl_K4_noclip"])
    jobs = F.make_jobs(args, "ref.pt", tmp_path)
    assert sorted({(j["variant"], j["beta"]) for j in jobs}) == [
        ("frpo", 0.1), ("frpo", 1.0), ("no_kl", 0.0), ("rpg_reinforce_urkl_K4_noclip", 0.1),
        ("rpg_reinforce_urkl_K4_noclip", 1.0)]
    rpg = next(j for j in jobs if j["variant"].endswith("noclip"))
    assert rpg["config"]["unclipped"] is True and rpg["config"]["updates_per_batch"] == 4
    assert "beta" not in next(j for j in jobs if j["variant"] == "no_kl")["config"]
    assert np.isfinite(len(jobs)) and len(jobs) == 2 * 5


def test_fused_kl_claim_needs_a_lower_reward_and_a_drop():
    # grpo_k1_reward lies 0.2 below grpo on the same KL grid (intervals ±0.01 apart): lower at matched KL
    res = _runs("grpo_k1_reward", {0.1: (0.6, 0.5), 1.0: (0.2, 0.3)}, noise=0.005) + \
        _runs("grpo", {0.1: (0.6, 0.7), 1.0: (0.2, 0.5)}, noise=0.005)
    for r in res:
        r["reward_drop"] = 0.0
    names = ["grpo", "grpo_k1_reward"]
    agg = F.aggregate(res, names, ["kl_rev_seq", "reward", "reward_drop"])
    c = F.claim_fused(res, agg, names)
    assert c["parts"]["lower reward than grpo at matched KL"] == "yes"
    assert c["parts"]["a larger reward drop (peak − final, 10-step average) than grpo at some β"] == "no"
    assert c["verdict"] == "qualified"  # lower, but no collapse
    for r in res:  # now grpo_k1_reward collapses at β = 1: its reward falls 0.3 from its peak
        if r["variant"] == "grpo_k1_reward" and r["beta"] == 1.0:
            r["reward_drop"] = 0.3 + 0.01 * r["seed"]
    agg = F.aggregate(res, names, ["kl_rev_seq", "reward", "reward_drop"])
    assert F.claim_fused(res, agg, names)["verdict"] == "reproduced"
    assert F.claim_fused(res, agg, ["grpo"]) is None


def test_distance_table_rows_per_point_with_a_beta():
    res = _runs("grpo", {0.1: (0.6, 0.7)}) + _runs("no_kl", {0.0: (1.0, 0.9)})
    for r in res:
        r.update(kl_to_opt_rev=0.2, tv_to_opt_rev=0.1)
    agg = F.aggregate(res, ["no_kl", "grpo"], ["kl_rev_seq", "reward", "kl_to_opt_rev", "tv_to_opt_rev"])
    rows = F.distance_table(agg, ["no_kl", "grpo"])
    assert [(r["variant"], r["beta"]) for r in rows] == [("grpo", 0.1)]  # no_kl has no β, hence no optimum
    assert rows[0]["kl_to_opt_rev"][0] == pytest.approx(0.2)


def test_claims_ledger_groups_runs_over_seeds():
    from rlkl.experiments.claims_ledger import over_seeds

    res = [{"method": "grpo", "beta": 0.1, "K": 1, "unclipped": False, "gap": g, "run": f"s{i}"}
           for i, g in enumerate([1.0, 2.0, 3.0])]
    res.append({"method": "grpo", "beta": 0.3, "K": 1, "unclipped": False, "gap": 5.0, "run": "x"})
    rows = over_seeds(res)
    assert [(r["beta"], r["n_seeds"]) for r in rows] == [(0.1, 3), (0.3, 1)]
    m, lo, hi = rows[0]["gap"]
    assert m == pytest.approx(2.0) and 1.0 <= lo < 2.0 < hi <= 3.0  # mean of 1, 2, 3 and a bootstrap interval
    assert rows[1]["gap"] == (5.0, 5.0, 5.0) and "run" not in rows[0]
