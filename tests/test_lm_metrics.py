"""Each LM metric against a hand computation or brute-force enumeration."""

import itertools
import math

import pytest
import torch

from rlkl.lm.metrics import (evaluate, grad_norm, kl_estimates, masked_mean, mean_ci, pass_at_k, pass_at_k_batch,
                             rollout_metrics, seq_sum, token_entropy, token_kl, tokens_per_second,
                             zero_advantage_fraction)
from rlkl.lm.model import GPT, GPTConfig, response_logits, token_logprobs


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in the root conftest.py


# ---- pass@k ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 5, 3), (6, 2, 1), (6, 2, 3), (8, 3, 4), (10, 1, 10), (7, 4, 5)])
def test_pass_at_k_equals_enumeration_over_subsets(n, c, k):
    """pass@k = P(a uniformly random k-subset of the n samples contains a correct one)."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_1_is_fraction_correct_and_batch_mean():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    correct = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.float32)
    res = pass_at_k_batch(correct, [1, 2, 4])
    assert res[1] == pytest.approx((0.25 + 1 + 0) / 3)
    assert res[2] == pytest.approx((0.5 + 1 + 0) / 3)  # 1 - C(3,2)/C(4,2) = 0.5
    assert res[4] == pytest.approx(2 / 3)


@pytest.mark.parametrize("args", [(4, 5, 1), (4, 1, 5), (0, 0, 1), (4, -1, 1), (4, 1, 0), (4.0, 1, 1)])
def test_pass_at_k_bad_args(args):
    with pytest.raises(ValueError):
        pass_at_k(*args)


# ---- exact per-token quantities ----------------------------------------------------------------------


def test_token_entropy_and_kl_by_hand():
    p = torch.tensor([0.5, 0.25, 0.25])
    q = torch.tensor([0.25, 0.25, 0.5])
    lp, lq = p.log(), q.log() + 3.0  # logits need not be normalized
    assert token_entropy(lp).item() == pytest.approx(1.5 * math.log(2), rel=1e-6)
    assert token_kl(lp, lq).item() == pytest.approx(0.25 * math.log(2), rel=1e-5)
    assert token_kl(lq, lp).item() == pytest.approx(0.25 * math.log(2), rel=1e-5)
    assert token_kl(lp, lp).item() == 0.0
    with pytest.raises(ValueError):
        token_kl(torch.zeros(3), torch.zeros(4))


def _tiny_pair():
    cfg = GPTConfig(vocab_size=4, block_size=6, n_layer=1, n_head=2, d_model=8)
    torch.manual_seed(0)
    pi = GPT(cfg).eval()
    torch.manual_seed(1)
    ref = GPT(cfg).eval()
    with torch.no_grad():  # larger weights so the two policies differ visibly
        for p in list(pi.parameters()) + list(ref.parameters()):
            p.mul_(20.0)
    return pi, ref


@torch.no_grad()
def test_exact_token_metrics_equal_enumeration_on_a_tiny_model():
    """Σ_t exact token KL / entropy along π's trajectories, averaged exactly over all sequences, equals the
    sequence-level KL(π‖π_ref) and entropy H(π) computed by enumerating every response."""
    pi, ref = _tiny_pair()
    V, R = 4, 3
    prompt = torch.tensor([[1, 2]])
    seqs = torch.tensor(list(itertools.product(range(V), repeat=R)))  # [64, 3] every response
    prompts = prompt.expand(seqs.shape[0], -1)
    lg_pi, lg_ref = response_logits(pi, prompts, seqs), response_logits(ref, prompts, seqs)  # [64, 3, V]
    logp_pi = token_logprobs(lg_pi, seqs).sum(1)  # [64] log π(y)
    logp_ref = token_logprobs(lg_ref, seqs).sum(1)
    prob = logp_pi.exp()
    assert prob.sum().item() == pytest.approx(1.0, abs=1e-5)
    seq_kl_rev = (prob * (logp_pi - logp_ref)).sum()
    seq_kl_fwd = (logp_ref.exp() * (logp_ref - logp_pi)).sum()
    seq_entropy = -(prob * logp_pi).sum()
    assert seq_kl_rev > 0.05  # the test is not vacuous
    mask = torch.ones(seqs.shape, dtype=torch.bool)
    kl_tok = token_kl(lg_pi, lg_ref)  # [64, 3]
    assert (prob * seq_sum(kl_tok, mask)).sum().item() == pytest.approx(seq_kl_rev.item(), rel=1e-4)
    assert (prob * seq_sum(token_entropy(lg_pi), mask)).sum().item() == pytest.approx(seq_entropy.item(), rel=1e-4)
    # forward KL: same identity with trajectories from π_ref
    fwd_tok = token_kl(lg_ref, lg_pi)
    assert (logp_ref.exp() * seq_sum(fwd_tok, mask)).sum().item() == pytest.approx(seq_kl_fwd.item(), rel=1e-4)
    # and the first-position token KL equals the enumerated marginal of the first token
    p1 = torch.stack([prob[seqs[:, 0] == v].sum() for v in range(V)])
    q1 = torch.stack([logp_ref.exp()[seqs[:, 0] == v].sum() for v in range(V)])
    assert kl_tok[0, 0].item() == pytest.approx((p1 * (p1.log() - q1.log())).sum().item(), rel=1e-4)


def test_masked_mean_and_seq_sum():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[True, True, False], [True, False, False]])
    assert masked_mean(x, m).item() == pytest.approx(7 / 3)
    assert seq_sum(x, m).tolist() == [3.0, 4.0]
    with pytest.raises(ValueError, match="no tokens"):
        masked_mean(x, torch.zeros_like(m))
    with pytest.raises(ValueError, match="bool"):
        masked_mean(x, m.float())


def test_kl_estimates_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, -9.0]])
    logp_ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.3, -3.0, -1.0]])
    m = torch.tensor([[True, True, True], [True, True, False]])
    lr = [0.5, -1.0, 0.0, 0.2, 0.0]
    out = kl_estimates(logp, logp_ref, m)
    assert out["kl_k1"] == pytest.approx(sum(lr) / 5, rel=1e-6)
    assert out["kl_k2"] == pytest.approx(sum(0.5 * x * x for x in lr) / 5, rel=1e-6)
    assert out["kl_k3"] == pytest.approx(sum(math.exp(-x) - 1 + x for x in lr) / 5, rel=1e-6)
    assert out["log_ratio_seq"] == pytest.approx(((0.5 - 1.0 + 0.0) + 0.2) / 2, rel=1e-6)


def test_zero_advantage_fraction():
    r = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.5, 0.5])
    assert zero_advantage_fraction(r, 2) == pytest.approx(3 / 4)
    assert zero_advantage_fraction(r, 4) == 0.0
    assert zero_advantage_fraction(r, 1) == 1.0
    with pytest.raises(ValueError, match="divide"):
        zero_advantage_fraction(r, 3)


def test_rollout_metrics_values():
    torch.manual_seed(0)
    B, T, V = 4, 3, 5
    logits, logits_ref = torch.randn(B, T, V), torch.randn(B, T, V)
    tokens = torch.randint(0, V, (B, T))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    lp, lpr = token_logprobs(logits, tokens), token_logprobs(logits_ref, tokens)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    out = rollout_metrics(logits, logits_ref, lp, lpr, mask, rewards, group_size=2)
    assert out["reward_mean"] == 0.75 and out["reward_std"] == pytest.approx(math.sqrt(0.1875))
    assert out["zero_adv_group_frac"] == 0.5 and out["response_len"] == 2.25
    kl = token_kl(logits, logits_ref)
    assert out["kl_rev_tok"] == pytest.approx(float(kl[mask].mean()), rel=1e-6)
    assert out["kl_rev_seq"] == pytest.approx(float((kl * mask).sum() / B), rel=1e-6)
    assert out["kl_fwd_tok"] == pytest.approx(float(token_kl(logits_ref, logits)[mask].mean()), rel=1e-6)
    assert out["entropy"] == pytest.approx(float(token_entropy(logits)[mask].mean()), rel=1e-6)
    assert out["kl_k1"] == pytest.approx(float((lp - lpr)[mask].mean()), rel=1e-5)
    # per-sequence estimators: Rao-Blackwell Σ_t KL(s_t) and Monte Carlo Σ_t log ratio, population variances
    rb, mc = (kl * mask).sum(1), ((lp - lpr) * mask).sum(1)
    assert out["kl_rb_seq_var"] == pytest.approx(float(((rb - rb.mean()) ** 2).mean()), rel=1e-5)
    assert out["kl_mc_seq_var"] == pytest.approx(float(((mc - mc.mean()) ** 2).mean()), rel=1e-5)
    # groups (1, 0) and (1, 1): population stds 0.5 and 0
    assert out["group_std_mean"] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        rollout_metrics(logits[:, :2], logits_ref, lp, lpr, mask, rewards, 2)


def test_grad_norm_and_throughput():
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(1))
    c = torch.nn.Parameter(torch.zeros(1))  # no grad: skipped
    (3 * a[0] + 4 * b[0] * 1.0 + 0 * a[1]).backward()
    assert grad_norm([a, b, c]) == pytest.approx(5.0)
    assert grad_norm([c]) == 0.0
    assert tokens_per_second(100, 4.0) == 25.0 and tokens_per_second(5, 0.0) == 0.0
    with pytest.raises(ValueError):
        tokens_per_second(-1, 1.0)


def test_mean_ci():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0
    assert hi - m == pytest.approx(4.302652729911275 * 1.0 / math.sqrt(3))  # t_{0.975, 2} · s / √n
    assert lo == pytest.approx(2 * m - hi)
    assert mean_ci([5.0]) == (5.0, 5.0, 5.0)
    assert all(math.isnan(v) for v in mean_ci([]))


def test_evaluate_on_a_perfect_and_a_random_policy():
    from rlkl.lm.tasks import make_task

    task = make_task("sort", 2)

    class Oracle(torch.nn.Module):  # emits the sorted digits then EOS, with certainty
        def forward(self, idx):
            B, L = idx.shape
            out = torch.full((B, L, task.vocab_size), -1e9)
            digits = idx[:, :2].sort(dim=1).values
            targets = torch.cat([digits, torch.full((B, 1), task.eos_id)], dim=1)
            for pos in range(L):
                t = pos - (task.prompt_len - 1)
                if 0 <= t < 3:
                    out[torch.arange(B), pos, targets[:, t]] = 0.0
            return out

    prompts = task.sample_prompts(10, torch.Generator().manual_seed(0))
    res = evaluate(Oracle(), task, prompts, n_samples=4, ks=[1, 4], seed=0)
    assert res["pass@1"] == 1.0 and res["pass@4"] == 1.0 and res["greedy_acc"] == 1.0
    assert res["eval_response_len"] == 3.0
    with pytest.raises(ValueError, match="n_samples"):
        evaluate(Oracle(), task, prompts, n_samples=2, ks=[4], seed=0)
