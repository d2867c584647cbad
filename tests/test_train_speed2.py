"""The trainer's faster routes compute what the plain routes compute (issue 13, trainer throughput).

Each test compares a fast path with an independent or plainer computation of the same numbers: the
``[V, N]`` metric layout against float64 formulas, ``kl_rev_seq`` against ``rao_blackwell_kl``, π_old taken
from the first update's forward against a separate forward, the direct submodule calls of ``Block`` against
the module-call route.
"""

from __future__ import annotations

import pytest
import torch

from rlkl.divergences import rao_blackwell_kl
from rlkl.lm.metrics import rollout_metrics, token_entropy, token_kl, vocab_leading
from rlkl.lm.model import GPT, GPTConfig, _continuation_mask, token_logprobs
from rlkl.lm.tasks import make_task
from rlkl.lm.train import build_method, collect_rollout, compute_loss, policy_logits, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in the root conftest.py


def _logits(B: int = 6, T: int = 4, V: int = 13, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(B, T, V, generator=g), 3 * torch.randn(B, T, V, generator=g)


def test_vocab_leading_entropy_and_kl_equal_float64_formulas():
    a, b = _logits()
    B, T, V = a.shape
    la, lb = vocab_leading(a), vocab_leading(b)  # [V, B·T]
    assert la.shape == (V, B * T) and la.is_contiguous() and torch.equal(la[:, 5], a.reshape(-1, V)[5])
    pa, pb = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)  # [B, T, V] float64
    ent_ref = -(pa.exp() * pa).sum(-1)  # H = −Σ p log p
    kl_ref = (pa.exp() * (pa - pb)).sum(-1)  # KL(a‖b) = Σ p_a (log p_a − log p_b)
    torch.testing.assert_close(token_entropy(la, dim=0).view(B, T).double(), ent_ref, rtol=0, atol=2e-6)
    torch.testing.assert_close(token_kl(la, lb, dim=0).view(B, T).double(), kl_ref, rtol=0, atol=2e-6)
    # the default last-axis route gives the same numbers up to float round-off
    torch.testing.assert_close(token_kl(la, lb, dim=0).view(B, T), token_kl(a, b), rtol=0, atol=1e-6)
    torch.testing.assert_close(token_entropy(la, dim=0).view(B, T), token_entropy(a), rtol=0, atol=1e-6)


def test_rollout_kl_rev_seq_is_the_rao_blackwell_estimate():
    a, b = _logits(seed=1)
    tokens = torch.randint(0, a.shape[-1], a.shape[:2], generator=torch.Generator().manual_seed(2))
    mask = torch.ones(a.shape[:2], dtype=torch.bool)
    mask[0, 2:] = False  # a row of length 2
    mask[3, 1:] = False  # a row of length 1
    lp, lpr = token_logprobs(a, tokens), token_logprobs(b, tokens)
    out = rollout_metrics(a, b, lp, lpr, mask, torch.tensor([1.0, 0, 1, 1, 0, 0]), group_size=2)
    rb = rao_blackwell_kl(a, b, mask)  # [B] the library's estimator, on the [B, T, V] layout
    assert out["kl_rev_seq"] == pytest.approx(float(rb.mean()), rel=1e-6)
    assert out["kl_rb_seq_var"] == pytest.approx(float(rb.var(unbiased=False)), rel=1e-5)
    assert out["kl_rev_tok"] == pytest.approx(float(rb.sum() / mask.sum()), rel=1e-6)


def _tiny(dropout: float = 0.0, extra: int = 0) -> tuple[GPT, object]:
    task = make_task("addition", 1)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=task.vocab_size, block_size=task.prompt_len + task.max_response_len + extra,
                    n_layer=2, n_head=2, d_model=16, dropout=dropout)
    return GPT(cfg), task


def test_block_direct_calls_equal_the_module_call_route():
    fast, task = _tiny()
    plain, _ = _tiny(dropout=0.1)  # dropout > 0 takes the module-call route; in eval() it drops nothing
    plain.load_state_dict(fast.state_dict())
    plain.eval()
    idx = task.sample_prompts(5, torch.Generator().manual_seed(3))  # [5, P]
    assert torch.equal(fast(idx), plain(idx))


def test_pi_old_from_the_first_update_equals_a_separate_forward(tmp_path):
    from rlkl.lm.sft import SFTConfig, save_reference

    model, task = _tiny()
    ref = tmp_path / "ref.pt"
    save_reference(ref, model, task, SFTConfig(), {})
    cfg = TrainConfig(task="addition", difficulty=1, ref=str(ref), device="cpu")
    prompts = task.sample_prompts(3, torch.Generator().manual_seed(4))  # [3, P]
    _continuation_mask.cache_clear()  # the rollout (under inference_mode) builds the masks the update reuses
    ro = collect_rollout(model, model, model, task, prompts, 4, torch.Generator().manual_seed(5),
                         with_behaviour=False)
    fields = (ro.prompts, ro.responses, ro.mask, ro.logp_sample, ro.logp_ref, ro.rewards, ro.logits_base)
    assert not any(t.is_inference() for t in fields) and ro.logits_ref is ro.logits_base
    loss, _ = compute_loss(model, build_method(cfg), ro, 4)  # fills ro.logp_old from its own forward
    loss.backward()  # nothing saved for the backward is an inference tensor
    with torch.no_grad():
        separate = token_logprobs(policy_logits(model, ro.group_prompts, ro.responses, 4), ro.responses)  # [B, R]
    assert torch.equal(ro.logp_old, separate) and not ro.logp_old.requires_grad
    assert loss.requires_grad
    again = collect_rollout(model, model, model, task, prompts, 4, torch.Generator().manual_seed(5))
    assert torch.equal(again.logp_old, ro.logp_old) and again.metrics == ro.metrics


def test_continuation_mask_first_built_under_inference_mode_is_a_plain_tensor():
    _continuation_mask.cache_clear()
    with torch.inference_mode():
        m = _continuation_mask(2, 3, torch.device("cpu"))  # [2, 5]: query j sees the 3 cached and new <= j
    assert not m.is_inference()
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_packed_layout_by_hand():
    from rlkl.lm.model import _packed_layout

    lay = _packed_layout(2, 2, 2, torch.device("cpu"))  # a 2-token prompt, G = 2 continuations of L = 2 tokens
    # packed positions: [p0, p1, g0 t0, g0 t1, g1 t0, g1 t1] at model positions 0, 1, 2, 3, 2, 3
    assert lay.positions.tolist() == [0, 1, 2, 3, 2, 3] and lay.longest == 4
    T, F = True, False
    assert lay.mask.tolist() == [[T, F, F, F, F, F],  # the prompt is causal
                                 [T, T, F, F, F, F],
                                 [T, T, T, F, F, F],  # a continuation sees the prompt and its own tokens <= t
                                 [T, T, T, T, F, F],
                                 [T, T, F, F, T, F],
                                 [T, T, F, F, T, T]]
    with torch.inference_mode():  # first built there, still a plain tensor (the update's backward may save it)
        assert not _packed_layout(3, 2, 1, torch.device("cpu")).mask.is_inference()


@pytest.mark.parametrize("G, R", [(3, 6), (17, 5)])
def test_packed_and_cached_routes_give_the_same_logits_and_gradients(monkeypatch, G, R):
    import rlkl.lm.model as lm_model

    m, task = _tiny(extra=8)  # room for responses longer than the task's
    m = m.double()
    prompts = task.sample_prompts(4, torch.Generator().manual_seed(6))  # [4, P]
    resp = torch.randint(0, task.vocab_size, (4 * G, R), generator=torch.Generator().manual_seed(G))
    w = torch.randn(4 * G, R, task.vocab_size, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    out = {}
    for limit in (0, 10**6):  # 0: the prompt pass + repeated-cache route; 10**6: the packed route
        monkeypatch.setattr(lm_model, "PACKED_MAX_ROWS", limit)
        logits = lm_model.shared_prefix_logits(m, prompts, resp, G)  # [4·G, R, V]
        out[limit] = (logits, torch.autograd.grad((logits * w).sum(), list(m.parameters())))
    (a, ga), (b, gb) = out.values()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-9)  # the head's float32 cast rounds the logit gradient


def test_decode_attention_equals_sdpa():
    from rlkl.lm.model import _decode_attention

    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((5, 3, 4), (7, 5, 3, 4), (7, 5, 3, 4)))
    ref = torch.nn.functional.scaled_dot_product_attention(q[:, :, None], k.permute(1, 2, 0, 3), v.permute(1, 2, 0, 3))
    torch.testing.assert_close(_decode_attention(q, k, v), ref[:, :, 0], rtol=0, atol=1e-12)
