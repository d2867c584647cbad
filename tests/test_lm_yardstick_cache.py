"""The exact yardstick's reuse (rlkl.lm.exact): `weights_fingerprint` tells models apart by everything the
enumeration reads; `Yardstick.build` returns the yardstick already built for the same π_0 and task, and `metrics`
reads π_0's log-probs for a policy with π_0's weights — each equal to computing afresh."""

import copy

import pytest
import torch

from rlkl.lm import exact as E
from rlkl.lm.model import GPT, GPTConfig
from rlkl.lm.tasks import make_task

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in the root conftest.py


def _model(task, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=task.vocab_size, block_size=task.prompt_len + task.max_response_len,
                         n_layer=1, n_head=2, d_model=16)).eval()


@pytest.fixture(autouse=True)
def _empty_cache():
    E._BUILT.clear()
    yield
    E._BUILT.clear()


def test_fingerprint_sees_every_weight_the_mode_and_the_config():
    task = make_task("divisor", 1)
    m = _model(task)
    fp = E.weights_fingerprint(m)
    assert E.weights_fingerprint(copy.deepcopy(m)) == fp  # another object, the same numbers
    nudged = copy.deepcopy(m)
    with torch.no_grad():  # one entry moved by one ulp
        w = nudged.blocks[0].mlp.fc.weight.view(-1)
        w[7] = torch.nextafter(w[7], torch.tensor(float("inf")))
    assert E.weights_fingerprint(nudged) != fp
    assert E.weights_fingerprint(copy.deepcopy(m).train()) == fp  # no dropout: train and eval give the same outputs
    cfg = GPTConfig(vocab_size=task.vocab_size, block_size=task.prompt_len + task.max_response_len, n_layer=1,
                    n_head=2, d_model=16, dropout=0.1)
    torch.manual_seed(0)
    drop = GPT(cfg).eval()
    assert E.weights_fingerprint(copy.deepcopy(drop).train()) != E.weights_fingerprint(drop)  # dropout: they differ
    lin = torch.nn.Linear(2, 2)
    assert E.weights_fingerprint(lin) != E.weights_fingerprint(copy.deepcopy(lin).eval())  # another module: the mode
    wider = GPT(GPTConfig(vocab_size=task.vocab_size, block_size=task.prompt_len + task.max_response_len + 1,
                          n_layer=1, n_head=2, d_model=16)).eval()
    assert E.weights_fingerprint(wider) != fp
    assert E.weights_fingerprint(m.to(torch.float64)) != fp  # the dtype is part of it


def test_build_returns_the_yardstick_of_the_same_reference_and_task_only():
    task = make_task("divisor", 1)
    ref = _model(task, 0)
    ys = E.Yardstick.build(ref, task, "cpu")
    assert E.Yardstick.build(copy.deepcopy(ref), task, "cpu") is ys  # same weights: no second enumeration
    other = E.Yardstick.build(_model(task, 1), task, "cpu")
    assert other is not ys and not torch.equal(other.logp_ref, ys.logp_ref)
    harder = make_task("divisor", 2)  # (difficulty 1 has no eval problems)
    hard_ref = _model(harder, 0)
    train = E.Yardstick.build(hard_ref, harder, "cpu")
    assert train is not ys and E.Yardstick.build(hard_ref, harder, "cpu", split="eval") is not train
    fresh, _, _ = E.sequence_logprobs(ref, ys.prompts, ys.vocab_size, ys.max_len, ys.eos_id)
    assert torch.equal(ys.logp_ref, fresh)


def test_the_cache_keeps_a_few_entries():
    task = make_task("divisor", 1)
    for seed in range(E._BUILT_MAX + 2):
        E.Yardstick.build(_model(task, seed), task, "cpu")
    assert len(E._BUILT) == E._BUILT_MAX


def test_metrics_of_pi0_itself_equal_the_enumeration(monkeypatch):
    """A policy with π_0's weights (a run's step 0: a copy in train mode) gets the metrics sequence_metrics gives on
    its own enumerated log-probs, bit for bit, without enumerating; a policy one step away is enumerated."""
    task = make_task("divisor", 1)
    ref = _model(task, 0)
    ys = E.Yardstick.build(ref, task, "cpu")
    policy = copy.deepcopy(ref).train()
    calls = []
    real = E.sequence_logprobs
    with monkeypatch.context() as patch:
        patch.setattr(E, "sequence_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
        ys.metrics(policy, 0.1)
    assert not calls  # π_0's log-probs read, nothing enumerated
    group = (4, "bessel", 1e-6)
    logp, _, _ = E.sequence_logprobs(policy, ys.prompts, ys.vocab_size, ys.max_len, ys.eos_id)
    fresh = E.sequence_metrics(logp, ys.logp_ref, ys.rewards, ys.lengths, 0.1, (1, 8), group)
    assert ys.metrics(policy, 0.1, group=group) == {f"exact_{k}": v for k, v in fresh.items()}
    with torch.no_grad():
        policy.head.weight.mul_(1.5)
    moved = ys.metrics(policy, 0.1, group=group)
    logp, _, _ = E.sequence_logprobs(policy, ys.prompts, ys.vocab_size, ys.max_len, ys.eos_id)
    want = E.sequence_metrics(logp, ys.logp_ref, ys.rewards, ys.lengths, 0.1, (1, 8), group)
    assert moved == {f"exact_{k}": v for k, v in want.items()} and moved["exact_kl_rev_seq"] > 0
