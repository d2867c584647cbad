"""The tiny GPT: shapes, causality, sampling, and log-probs that match between sampling and recomputation."""

import pytest
import torch

from rlkl.lm.model import GPT, GPTConfig, resolve_device, response_logits, sample, token_logprobs


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in the root conftest.py


def _model(seed=0, vocab=7, block=12):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, d_model=16)).eval()


def test_forward_shape_and_causality():
    m = _model()
    x = torch.randint(0, 7, (3, 9), generator=torch.Generator().manual_seed(1))
    logits = m(x)
    assert logits.shape == (3, 9, 7) and logits.dtype == torch.float32
    y = x.clone()
    y[:, 5:] = (y[:, 5:] + 1) % 7  # change the future only
    torch.testing.assert_close(m(y)[:, :5], logits[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(m(y)[:, 5:], logits[:, 5:])


def test_too_long_sequence_raises():
    m = _model(block=4)
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 5, dtype=torch.long))


@pytest.mark.parametrize("bad", [dict(n_head=3, d_model=16), dict(n_layer=0), dict(dropout=1.0), dict(vocab_size=0)])
def test_bad_config_raises(bad):
    with pytest.raises(ValueError):
        GPTConfig(**bad)


def test_sampling_is_seeded_and_masks_after_eos():
    m = _model()
    prompts = torch.randint(0, 6, (64, 3), generator=torch.Generator().manual_seed(2))
    eos = 6
    r1, m1, lp1 = sample(m, prompts, 6, eos, torch.Generator().manual_seed(5))
    r2, m2, lp2 = sample(m, prompts, 6, eos, torch.Generator().manual_seed(5))
    assert torch.equal(r1, r2) and torch.equal(m1, m2) and torch.equal(lp1, lp2)
    r3, _, _ = sample(m, prompts, 6, eos, torch.Generator().manual_seed(6))
    assert not torch.equal(r1, r3)
    assert r1.shape == m1.shape == lp1.shape == (64, 6)
    for row, mask in zip(r1.tolist(), m1.tolist()):
        n = sum(mask)
        assert mask == [True] * n + [False] * (6 - n)  # a prefix
        if eos in row[:n]:
            assert row.index(eos) == n - 1  # the mask ends at (and includes) the first EOS
            assert all(t == eos for t in row[n:])  # padded with EOS
        else:
            assert n == 6  # truncated rows use the whole budget
    assert torch.all(lp1[~m1] == 0) and torch.all(lp1[m1] <= 0)


def test_recomputed_logprobs_equal_sampling_logprobs():
    """One full forward over prompt+response gives the log-probs recorded token by token while sampling."""
    m = _model(3)
    prompts = torch.randint(0, 6, (128, 4), generator=torch.Generator().manual_seed(0))
    resp, mask, lp = sample(m, prompts, 7, 6, torch.Generator().manual_seed(1))
    recomputed = token_logprobs(response_logits(m, prompts, resp), resp)
    torch.testing.assert_close(recomputed[mask], lp[mask], rtol=0, atol=1e-5)


def test_kv_cache_sampling_equals_prefix_recomputation():
    m = _model(5)
    prompts = torch.randint(0, 6, (256, 4), generator=torch.Generator().manual_seed(0))
    a = sample(m, prompts, 7, 6, torch.Generator().manual_seed(9), use_cache=True)
    b = sample(m, prompts, 7, 6, torch.Generator().manual_seed(9), use_cache=False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.testing.assert_close(a[2], b[2], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="one new token"):
        caches = [{} for _ in m.blocks]
        m(prompts[:, :2], caches)
        m(prompts[:, 2:4], caches, start=2)


def test_greedy_picks_argmax():
    m = _model(4)
    prompts = torch.randint(0, 6, (8, 3), generator=torch.Generator().manual_seed(0))
    resp, mask, lp = sample(m, prompts, 1, 6, greedy=True)
    first = m(prompts)[:, -1].argmax(-1)
    assert torch.equal(resp[:, 0], first)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
