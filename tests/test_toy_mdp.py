"""TreeMDP: enumeration layout, construction from arrays/functions, seeded constructors, clear errors."""

import itertools

import pytest
import torch

from rlkl.toy.mdp import TreeMDP, count_nodes, count_responses


@pytest.mark.parametrize("V,T", [(2, 1), (3, 2), (2, 4), (4, 3)])
def test_fixed_length_enumeration_is_row_major_product(V, T):
    mdp = TreeMDP.random(V, T, 1, seed=0)
    assert mdp.responses() == list(itertools.product(range(V), repeat=T))
    e = mdp.enumerate()
    assert e.mask.all() and (e.lengths == T).all()
    assert e.num_nodes == count_nodes(V, T, False) == sum(V**t for t in range(T))


@pytest.mark.parametrize("V,T", [(2, 1), (2, 3), (3, 3), (4, 2)])
def test_eos_enumeration_covers_every_terminated_response(V, T):
    eos = V - 1
    mdp = TreeMDP.random(V, T, 1, eos=True, seed=0)
    got = mdp.responses()
    # brute force: every sequence of length 1..T where EOS appears only last, and either ends with EOS or has length T
    want = []
    for L in range(1, T + 1):
        for seq in itertools.product(range(V), repeat=L):
            if eos in seq[:-1]:
                continue
            if seq[-1] == eos or L == T:
                want.append(seq)
    assert sorted(got) == sorted(want)
    assert len(got) == len(set(got)) == count_responses(V, T, True)
    lengths = [len(y) for y in got]
    assert lengths == sorted(lengths)  # ordered by length, then lexicographic
    e = mdp.enumerate()
    assert e.mask.sum(-1).tolist() == lengths


def test_node_index_identifies_prefixes():
    mdp = TreeMDP.random(3, 3, 1, eos=True, seed=0)
    e = mdp.enumerate()
    seen = {}
    for n, y in enumerate(mdp.responses()):
        for t in range(len(y)):
            node = int(e.node_index[n, t])
            seen.setdefault(node, y[:t])
            assert seen[node] == y[:t]  # one node ↔ one prefix
    assert len(seen) == e.num_nodes
    # parent table agrees with the prefixes
    for node, prefix in seen.items():
        if prefix:
            assert seen[int(e.node_parent[node])] == prefix[:-1]
            assert int(e.node_parent_token[node]) == prefix[-1]
            assert int(e.node_depth[node]) == len(prefix)


def test_from_arrays_accepts_both_layouts_and_matches():
    V, T = 3, 2
    table = torch.arange(2 * V**T, dtype=torch.float64).reshape(2, V, V)
    a = TreeMDP.from_arrays(table, V, T)
    b = TreeMDP.from_arrays(table.reshape(2, -1), V, T, prompt_probs=[0.5, 0.5])
    assert torch.equal(a.rewards, b.rewards)
    # rewards[x, a1, a2] is the reward of response (a1, a2)
    n = a.responses().index((2, 1))
    assert a.rewards[1, n] == table[1, 2, 1]


def test_from_function_and_vectorized_agree():
    f = lambda x, y: float(sum(y) % 2 == x)
    fv = lambda x, tokens, mask: ((tokens * mask).sum(-1) % 2 == x).to(torch.float64)
    a = TreeMDP.from_function(f, 3, 3, num_prompts=2, eos_token=2)
    b = TreeMDP.from_function(fv, 3, 3, num_prompts=2, eos_token=2, vectorized=True)
    assert torch.equal(a.rewards, b.rewards)
    assert a.is_binary and not a.fixed_length


def test_random_is_seeded_and_mixed():
    a = TreeMDP.random(3, 3, 3, seed=5)
    b = TreeMDP.random(3, 3, 3, seed=5)
    c = TreeMDP.random(3, 3, 3, seed=6)
    assert torch.equal(a.rewards, b.rewards) and torch.equal(a.prompt_probs, b.prompt_probs)
    assert not torch.equal(a.rewards, c.rewards)
    assert abs(float(a.prompt_probs.sum()) - 1) < 1e-12
    for x in range(3):  # ensure_mixed: every prompt has a success and a failure
        assert 0 < float(a.rewards[x].mean()) < 1
    r = TreeMDP.random(2, 2, 1, reward="real", seed=0)
    assert not r.is_binary


def test_bad_reward_table_shape_says_what_is_expected():
    with pytest.raises(ValueError, match=r"expected \[P, 9\] or \[P, 3, 3\]"):
        TreeMDP.from_arrays(torch.zeros(2, 8), 3, 2)
    with pytest.raises(ValueError, match=r"\[P, N\] = \[2, 9\]"):
        TreeMDP(torch.tensor([0.5, 0.5], dtype=torch.float64), 3, 2, torch.zeros(2, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected"):
        TreeMDP.from_arrays(torch.zeros(1, 9), 3, 2, eos_token=2)  # with EOS there are 8 responses


def test_enumeration_too_large_says_the_size():
    with pytest.raises(ValueError, match=r"N=387,420,489 responses.*GB"):
        TreeMDP.random(9, 9, 1)
    with pytest.raises(ValueError, match="enumeration too large"):
        TreeMDP.from_function(lambda x, y: 0.0, 10, 8)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="sum to 1"):
        TreeMDP.from_arrays(torch.zeros(2, 4), 2, 2, prompt_probs=[0.5, 0.6])
    with pytest.raises(ValueError, match="eos_token"):
        TreeMDP.from_arrays(torch.zeros(1, 4), 2, 2, eos_token=5)
    with pytest.raises(ValueError, match="finite"):
        TreeMDP.from_arrays(torch.full((1, 4), float("nan")), 2, 2)
    with pytest.raises(ValueError, match="binary"):
        TreeMDP.random(2, 2, reward="ternary")


@pytest.mark.parametrize("reads, want_large", [((0,), 2), ((1, 1, 1), 1), ((2, 3, 1), 1), ((1, 0), 2),
                                                ((1, 1, 0), 2)])
def test_large_enumerations_run_on_one_thread_when_other_processes_hold_the_other_cores(monkeypatch, reads,
                                                                                         want_large):
    """threads_for (Linux route): a small tree always gets 1 intra-op thread; a large one keeps the setting unless
    other processes' runnable threads cover the other core (2 cores: >= 1) in three reads; an idle first read
    decides at once, a blip (a later read of 0) does not make the machine busy."""
    import os

    import rlkl.toy.mdp as M

    small, large = TreeMDP.random(2, 2, 1, seed=0), TreeMDP.random(10, 5, 1, seed=0)  # 4·2 and 10^5·5 slots
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    seen = []
    monkeypatch.setattr(M, "_others_running", lambda: seen.append(1) or reads[len(seen) - 1])
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))  # not read on this route
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with M.threads_for(small):
            assert torch.get_num_threads() == 1
        assert not seen  # a small tree never looks
        with M.threads_for(large):
            assert torch.get_num_threads() == want_large, reads
        assert len(seen) == len(reads)  # every read used, none more
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(prev)


def test_without_proc_the_load_average_less_this_process_share_decides(monkeypatch):
    """Elsewhere (no /proc): 1 thread when load − own >= cores − 1.5 (2 cores: another process holds half a core)."""
    import os

    import rlkl.toy.mdp as M

    large = TreeMDP.random(10, 5, 1, seed=0)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(M, "_others_running", lambda: None)
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        # (load, own share, threads): this process alone on one thread (0.9 − 0.8); idle; another process on a
        # core (1.6 − 0); this process's own two threads (1.9 of which 1.8 its own); its own work plus another
        # process (2.4 − 1.0 = 1.4); another process at 0.6 of a core, this one idle
        for load, own, want in ((0.9, 0.8, 2), (0.4, 0.0, 2), (1.6, 0.0, 1), (1.9, 1.8, 2), (2.4, 1.0, 1),
                                (0.6, 0.0, 1)):
            monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
            monkeypatch.setattr(M, "_own_load", lambda own=own: own)
            with M.threads_for(large):
                assert torch.get_num_threads() == want, (load, own)
    finally:
        torch.set_num_threads(prev)


def test_others_running_reads_procfs_without_this_process_threads(tmp_path):
    """A fake /proc: 4 runnable threads system-wide, 2 of them this process's (one with a ')' in its name) → 2."""
    import rlkl.toy.mdp as M

    (tmp_path / "loadavg").write_text("0.50 0.40 0.30 4/90 1234\n")
    for tid, stat in (("10", "10 (python) R 1 10"), ("11", "11 (pt (worker)) R 1 10"), ("12", "12 (python) S 1")):
        (tmp_path / "self" / "task" / tid).mkdir(parents=True)
        (tmp_path / "self" / "task" / tid / "stat").write_text(stat)
    assert M._others_running(str(tmp_path)) == 2
    assert M._others_running(str(tmp_path / "absent")) is None


def test_a_busy_process_is_seen_running():
    """The real /proc (Linux): a child spinning on a core shows up among the other processes' runnable threads."""
    import os
    import subprocess
    import sys
    import time

    import rlkl.toy.mdp as M

    if M._others_running() is None:
        pytest.skip("no /proc on this platform")
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        seen = []
        for _ in range(20):
            seen.append(M._others_running())
            time.sleep(0.005)
        assert max(seen) >= 1, seen
        if os.cpu_count() == 2:  # the child holds the other core: confirmed in three reads
            assert M.other_cores_busy()
    finally:
        child.kill()
        child.wait()


def test_own_load_is_the_kernels_exponential_average_of_this_process_busy_threads(monkeypatch):
    """_OwnLoad by hand: from 0 at the start, 60 s at 2 busy threads (120 CPU s) → 2·(1 − e^{−1}) = 1.2642; then
    30 s idle → 1.2642·e^{−1/2} = 0.7668; a read with no time passed changes nothing."""
    import math
    import time

    import rlkl.toy.mdp as M

    clock = {"wall": 100.0, "cpu": 0.0}
    monkeypatch.setattr(M, "_process_start", lambda: 100.0)
    monkeypatch.setattr(time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(time, "process_time", lambda: clock["cpu"])
    own = M._OwnLoad()
    clock.update(wall=160.0, cpu=120.0)
    assert own() == pytest.approx(2 * (1 - math.exp(-1)), rel=1e-12)
    clock.update(wall=190.0)
    assert own() == pytest.approx(2 * (1 - math.exp(-1)) * math.exp(-0.5), rel=1e-12)
    assert own() == pytest.approx(2 * (1 - math.exp(-1)) * math.exp(-0.5), rel=1e-12)


def test_process_start_is_in_the_past():
    import time

    import rlkl.toy.mdp as M

    start = M._process_start()
    assert start <= time.monotonic()
