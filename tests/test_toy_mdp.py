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


def test_large_enumerations_run_on_one_thread_when_the_other_cores_are_busy(monkeypatch):
    """threads_for: a small tree always gets 1 intra-op thread; a large one keeps the setting on an idle machine
    (1-minute load < cores − 0.5) and gets 1 thread when the load says the other cores are taken."""
    import os

    import rlkl.toy.mdp as M

    small, large = TreeMDP.random(2, 2, 1, seed=0), TreeMDP.random(10, 5, 1, seed=0)  # 4·2 and 10^5·5 slots
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for load, want_large in ((0.9, 2), (1.6, 1)):
            monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
            with M.threads_for(small):
                assert torch.get_num_threads() == 1
            with M.threads_for(large):
                assert torch.get_num_threads() == want_large, load
            assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(prev)
