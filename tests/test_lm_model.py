"""The tiny GPT: shapes, causality, sampling, and log-probs that match between sampling and recomputation."""

import pytest
import torch

from rlkl.lm.model import (GPT, GPTConfig, expand_caches, expand_caches_for_decoding, log_softmax, resolve_device,
                           response_logits, sample, shared_prefix_logits, token_logprobs)


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
    # a multi-token continuation of a cache attends to the cache and causally to itself: the full forward
    caches = [{} for _ in m.blocks]
    head = m(prompts[:, :2], caches)
    tail = m(prompts[:, 2:4], caches, start=2)
    torch.testing.assert_close(torch.cat([head, tail], 1), m(prompts), rtol=0, atol=1e-5)


def test_shared_prefix_logits_and_gradients_equal_the_repeated_forward():
    """float64 model: the prompt computed once per group gives the logits and parameter gradients of the plain
    forward over G repeated prompt rows (to round-off), for G = 1, 3 and a 1-token response."""
    m = _model(6).double()
    prompts = torch.randint(0, 7, (4, 5), generator=torch.Generator().manual_seed(0))
    for G, R in ((3, 6), (1, 6), (3, 1)):
        resp = torch.randint(0, 7, (4 * G, R), generator=torch.Generator().manual_seed(G))
        a = shared_prefix_logits(m, prompts, resp, G)
        b = response_logits(m, prompts.repeat_interleave(G, 0), resp)
        assert a.shape == b.shape == (4 * G, R, 7)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        w = torch.randint(-3, 4, a.shape, generator=torch.Generator().manual_seed(7)).double()
        # a random linear functional of the logits: its gradient is the full vector-Jacobian product. The head
        # casts the logits to float32, so their gradient is float32 there: small integer weights keep it (and
        # the sum over the G copies of the shared first position) exact, and the rest of the backward is float64.
        ga = torch.autograd.grad((a * w).sum(), list(m.parameters()))
        gb = torch.autograd.grad((b * w).sum(), list(m.parameters()))
        for x, y in zip(ga, gb):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="n·G"):
        shared_prefix_logits(m, prompts, torch.zeros(5, 2, dtype=torch.long), 3)


def test_group_sampling_shares_the_prompt_pass_and_matches_repeated_prompts():
    m = _model(7)
    prompts = torch.randint(0, 6, (16, 4), generator=torch.Generator().manual_seed(0))
    a = sample(m, prompts, 6, 6, torch.Generator().manual_seed(3), group_size=5)
    b = sample(m, prompts.repeat_interleave(5, 0), 6, 6, torch.Generator().manual_seed(3))
    c = sample(m, prompts, 6, 6, torch.Generator().manual_seed(3), group_size=5, use_cache=False)
    assert a[0].shape == (80, 6)
    for x in (b, c):
        assert torch.equal(a[0], x[0]) and torch.equal(a[1], x[1])
        torch.testing.assert_close(a[2], x[2], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="group_size"):
        sample(m, prompts, 6, 6, group_size=0)


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


@pytest.mark.parametrize("shape", [(5, 13), (6, 4, 13), (3, 2, 2, 7), (4, 300)])
def test_log_softmax_equals_torch_values_and_gradients(shape):
    """The leading-axis route (V <= 256 on CPU) and the fallback (V = 300) give torch.log_softmax's values and
    input gradients; the strided result still normalizes every row (logsumexp 0)."""
    x = (3 * torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape)))).requires_grad_()
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(9))
    a, b = log_softmax(x), torch.log_softmax(x, dim=-1)
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.logsumexp(-1), torch.zeros(shape[:-1]), rtol=0, atol=1e-6)
    ga, = torch.autograd.grad((a * w).sum(), x)
    gb, = torch.autograd.grad((b * w).sum(), x)
    # float32: the two kernels sum each row (Σ_v w_v softmax_v, up to V = 300 terms of |w| ~ 1) in different orders,
    # a few ulp of that sum's scale apart — 1e-5 absolute is ~100 ulp of 1, far below any wrong-formula difference
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-5)


def _plain_and_buffered(m, prompts, G: int, extra: int) -> tuple[list[dict], list[dict]]:
    """The prompt caches of ``prompts`` repeated G times: concatenating (`expand_caches`) and in decoding buffers
    with room for ``extra`` positions (`expand_caches_for_decoding`)."""
    plain, buffered = [{} for _ in m.blocks], [{} for _ in m.blocks]
    m(prompts, plain)
    m(prompts, buffered)
    expand_caches(plain, G)
    expand_caches_for_decoding(buffered, G, extra=extra)
    return plain, buffered


def test_decoding_buffers_hold_the_repeated_prompt_cache():
    """expand_caches_for_decoding = expand_caches (row i·G + g holds prompt row i) in buffers with room for the
    extra positions; a decoding step written into them gives the logits of the concatenating cache."""
    m = _model(8)
    prompts = torch.randint(0, 6, (3, 4), generator=torch.Generator().manual_seed(0))
    nxt = torch.randint(0, 6, (6, 1), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain, buffered = _plain_and_buffered(m, prompts, 2, extra=3)
        for c, d in zip(plain, buffered):
            assert d["len"] == 4 and d["k_buf"].shape == (7, 6, 2, 8)  # position-major [P + extra, n·G, H, D/H]
            assert torch.equal(d["k_buf"][:4], c["k"].permute(2, 0, 1, 3))
            assert torch.equal(d["v_buf"][:4], c["v"].permute(2, 0, 1, 3))
        a, b = m(nxt, plain, start=4), m(nxt, buffered, start=4)  # [6, 1, V]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert all(d["len"] == 5 for d in buffered)


def test_buffered_decoding_of_several_tokens_equals_the_concatenating_cache():
    """Two tokens written at once (the masked kernel route), then one more (the one-query route): the logits of
    the concatenating cache both times."""
    m = _model(8)
    prompts = torch.randint(0, 6, (3, 4), generator=torch.Generator().manual_seed(10))  # [3, P = 4]
    nxt = torch.randint(0, 6, (6, 2), generator=torch.Generator().manual_seed(11))  # 2 tokens at once
    with torch.no_grad():
        plain, buffered = _plain_and_buffered(m, prompts, 2, extra=3)
        a, b = m(nxt, plain, start=4), m(nxt, buffered, start=4)  # [6, 2, V]
        c, d = m(nxt[:, :1], plain, start=6), m(nxt[:, :1], buffered, start=6)  # then one more token
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(c, d, rtol=0, atol=1e-6)
