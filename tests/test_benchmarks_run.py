"""The benchmarks run (they are not timed here): each benchmark's helpers on a tiny tree, and `rlkl bench --quick`
as a user runs it (slow). `callable_audit`'s per-tuple loop once passed the engine a bare tensor where it now takes
its coefficient accumulator (`_Coef`) and crashed `rlkl bench`; nothing ran it."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlkl.components import GroupStandardized
from rlkl.testing import from_verl
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.policies import TabularPolicy

ROOT = Path(__file__).resolve().parents[1]


def test_callable_audit_loop_runs_and_counts_every_ordered_tuple():
    from rlkl.benchmarks import callable_audit as B

    mdp = TreeMDP.random(2, 2, 2, reward="binary", success_rate=0.5, seed=0)  # 4 responses per prompt
    pi = TabularPolicy.random(mdp, seed=1)
    ref = TabularPolicy.random(mdp, seed=2).detached()
    loss = from_verl(B.custom_policy_loss, advantage=GroupStandardized(), name="custom_policy_loss")
    seconds, tuples = B.undeclared_seconds(loss, mdp, pi, ref, G=2, sample=3)
    assert tuples == 2 * 4**2  # P · n^G ordered tuples
    assert seconds > 0


def test_exact_engine_helpers_on_a_small_tree():
    from rlkl.benchmarks import exact_engine as B
    from rlkl.components import Raw
    from rlkl.methods import get_method

    mdp = TreeMDP.random(3, 3, 1, reward="binary", success_rate=0.3, seed=3)
    pi = TabularPolicy.random(mdp, seed=1)
    old = pi.perturbed(0.2, 3).detached()
    ref = TabularPolicy.random(mdp, seed=2).detached()
    method = get_method("rpg_reinforce_urkl_seq").replace(advantage=Raw(), beta=0.1)  # the benchmark's case
    seconds, ran = B.loop_seconds(method, mdp, pi, old, ref, limit=5)
    assert ran == 5 and seconds > 0
    N, T = 27, 3
    params = pi.theta.numel() * 8
    # three [N, T] float64 log-prob arrays, the bool mask, float64 rewards, three policies' parameters + gradient
    assert B.minimal_bytes("rpg_urkl_seq", mdp, pi, 1) == 3 * N * T * 8 + N * T + N * 8 + 4 * params
    assert B.minimal_bytes("grpo(G=4)", mdp, pi, 4) == N * 4 * 5 * T * 8  # N·G rows of five [T] float64 arrays
    assert B.copy_bandwidth(mbytes=8, repeats=2) > 1e8  # bytes/s: any machine moves > 100 MB/s


@pytest.mark.slow
def test_rlkl_bench_quick_runs_every_benchmark():
    res = subprocess.run([sys.executable, "-m", "rlkl", "bench", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for name in ("callable_audit", "exact_engine", "loss_vs_verl", "trainer_vs_trl"):
        assert f"== {name}: exit 0" in res.stdout, res.stdout[-3000:]
