"""Exact sequence-level metrics of the LM (rlkl.lm.exact): the enumeration, the optima, the equal-odds distance."""

import math

import pytest
import torch
from hypothesis import given, strategies as st

from rlkl.lm import exact as E
from rlkl.lm.model import GPT, GPTConfig, response_logits, token_logprobs
from rlkl.lm.tasks import make_task

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in the root conftest.py


def _model(task, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=task.vocab_size, block_size=task.prompt_len + task.max_response_len,
                         n_layer=1, n_head=2, d_model=16)).eval()


def test_response_space_by_hand():
    resp, mask = E.response_space(vocab_size=3, max_len=2, eos_id=2)
    # k = 0: "$"; k = 1: "0$", "1$"; k = 2 (truncated): "00", "01", "10", "11"  -> 1 + 2 + 4 = 7
    assert resp.tolist() == [[2, 2], [0, 2], [1, 2], [0, 0], [0, 1], [1, 0], [1, 1]]
    assert mask.tolist() == [[True, False], [True, True], [True, True]] + [[True, True]] * 4
    assert E.response_space(12, 3, 11)[0].shape == (1 + 11 + 121 + 1331, 3)
    with pytest.raises(ValueError, match="too many"):
        E.response_space(50, 6, 0)


def test_sequence_logprobs_equal_one_forward_per_response_and_sum_to_one():
    task = make_task("divisor", 1)
    m = _model(task).double()
    prompts = task.encode_prompts(torch.tensor([[6], [7], [1]]))
    lp, resp, mask = E.sequence_logprobs(m, prompts, task.vocab_size, task.max_response_len, task.eos_id)
    assert lp.shape == (3, 1 + 11 + 121) and lp.dtype == torch.float64
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-6)
    for i in range(3):  # independent route: the plain forward over prompt + response, summed over the mask
        rl = response_logits(m, prompts[i : i + 1].repeat(len(resp), 1), resp)
        brute = (token_logprobs(rl, resp) * mask).sum(-1).double()
        torch.testing.assert_close(lp[i], brute, rtol=0, atol=1e-5)  # the head emits float32 logits


def test_kl_entropy_tv_by_hand():
    p = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64).log()
    q = torch.tensor([[0.25, 0.25, 0.5]], dtype=torch.float64).log()
    assert E.kl(p, q).item() == pytest.approx(math.log(2))  # ½ log 2 + ½ log 2, 0·log 0 = 0
    assert E.entropy(p).item() == pytest.approx(math.log(2))
    assert E.tv(p, q).item() == pytest.approx(0.5)  # ½ (¼ + ¼ + ½)


def test_reverse_kl_optimum_closed_form_and_odds():
    ref = torch.tensor([[0.5, 0.5], [0.2, 0.8]], dtype=torch.float64).log()
    R = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    opt = E.reverse_kl_optimum(ref, R, beta=1.0).exp()
    e = math.e
    torch.testing.assert_close(opt[0], torch.tensor([e / (1 + e), 1 / (1 + e)], dtype=torch.float64))
    torch.testing.assert_close(opt[1], torch.tensor([0.2 * e / (0.2 * e + 0.8), 0.8 / (0.2 * e + 0.8)],
                                                    dtype=torch.float64))
    with pytest.raises(ValueError, match="beta > 0"):
        E.reverse_kl_optimum(ref, R, 0.0)


def _rand_case(seed, M=6):
    g = torch.Generator().manual_seed(seed)
    ref = torch.log_softmax(torch.randn(1, M, generator=g, dtype=torch.float64), -1)
    R = (torch.rand(1, M, generator=g, dtype=torch.float64) < 0.5).double()
    R[0, 0], R[0, 1] = 1.0, 0.0  # both classes present
    return ref, R


@given(st.integers(0, 10_000), st.floats(0.05, 3.0))
def test_optima_beat_every_other_policy(seed, beta):
    """J(π*) >= J(π) for random π, for E[R] − β KL(π‖π_ref) and E[R] − β KL(π_ref‖π); stationarity of the
    forward-KL optimum (R + β π_ref/π constant) and normalization."""
    ref, R = _rand_case(seed)
    others = torch.log_softmax(torch.randn(50, ref.shape[1], generator=torch.Generator().manual_seed(seed + 1),
                                           dtype=torch.float64) * 2, -1)
    rev = E.reverse_kl_optimum(ref, R, beta)
    j_rev = lambda lp: (lp.exp() * R).sum(-1) - beta * E.kl(lp, ref.expand_as(lp))
    assert bool((j_rev(others) <= j_rev(rev) + 1e-12).all())
    fwd = E.forward_kl_optimum(ref, R, beta)
    assert fwd.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    lam = R + beta * ref.exp() / fwd.exp()
    torch.testing.assert_close(lam, lam[:, :1].expand_as(lam), rtol=0, atol=1e-9)
    j_fwd = lambda lp: (lp.exp() * R).sum(-1) - beta * E.kl(ref.expand_as(lp), lp)
    assert bool((j_fwd(others) <= j_fwd(fwd) + 1e-12).all())
    # both optima keep π_ref's odds among the (equal-reward) correct answers
    assert E.odds_tv(rev, ref, R).item() == pytest.approx(0.0, abs=1e-12)
    assert E.odds_tv(fwd, ref, R).item() == pytest.approx(0.0, abs=1e-9)


def test_finite_group_optimum_special_cases_and_optimality():
    """U_2(p) = p and U_3(p) = √2 p (population std): the optimum is π_ref e^{cR/β} with c = 1 and √2; for G = 8
    (Bessel, ε = 1e-6, the LM's GRPO) its objective beats every member of the family π_c."""
    from rlkl.utility import finite_group_utility

    ref, R = _rand_case(3)
    beta = 0.3
    torch.testing.assert_close(E.finite_group_optimum(ref, R, beta, 2), E.reverse_kl_optimum(ref, R, beta))
    torch.testing.assert_close(E.finite_group_optimum(ref, R, beta, 3),
                               E.reverse_kl_optimum(ref, R, beta, math.sqrt(2)), rtol=0, atol=1e-9)
    opt = E.finite_group_optimum(ref, R, beta, 8, "bessel", 1e-6)

    def J(lp):
        p = (lp.exp() * R).sum(-1).clamp(0, 1)
        return finite_group_utility(p, 8, "bessel", 1e-6) - beta * E.kl(lp, ref.expand_as(lp))

    family = torch.cat([E.reverse_kl_optimum(ref, R, beta, c) for c in torch.linspace(0.0, 6.0, 301).tolist()])
    assert bool((J(family) <= J(opt) + 1e-9).all())
    with pytest.raises(ValueError, match="binary"):
        E.finite_group_optimum(ref, R * 0.5 + 0.25, beta, 8)


def test_odds_tv_and_correct_entropy_by_hand():
    # answers a, b correct; π gives them 0.3, 0.1 (odds 3:1), π_ref 0.2, 0.2 (1:1): TV of (¾, ¼) vs (½, ½) = ¼
    lp = torch.tensor([[0.3, 0.1, 0.6]], dtype=torch.float64).log()
    ref = torch.tensor([[0.2, 0.2, 0.6]], dtype=torch.float64).log()
    R = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    assert E.odds_tv(lp, ref, R).item() == pytest.approx(0.25)
    assert E.correct_entropy(ref, R).item() == pytest.approx(math.log(2))
    assert E.correct_entropy(lp, R).item() == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


def test_sequence_metrics_chain_rule_and_pass_at_k():
    """exact_kl_rev_seq = Σ_y π(y) Σ_t KL(π‖π_ref)(s_t) (chain rule, computed from the per-state softmaxes of a
    plain forward), and pass@k = 1 − (1 − p)^k."""
    from rlkl.lm.metrics import token_kl

    task = make_task("divisor", 1)
    pi, ref = _model(task, 1).double(), _model(task, 2).double()
    prompts = task.encode_prompts(torch.tensor([[4], [9]]))
    V, R_, eos = task.vocab_size, task.max_response_len, task.eos_id
    lp, resp, mask = E.sequence_logprobs(pi, prompts, V, R_, eos)
    lq, _, _ = E.sequence_logprobs(ref, prompts, V, R_, eos)
    M = resp.shape[0]
    rewards = task.score_groups(prompts, resp.repeat(2, 1), M).view(2, M).double()
    out = E.sequence_metrics(lp, lq, rewards, mask.sum(1).double(), beta=0.5, ks=(1, 4))
    chain = []
    with torch.no_grad():  # independent route: the per-state softmaxes of a plain forward over each response
        for i in range(2):
            rows = prompts[i : i + 1].repeat(M, 1)
            tok = token_kl(response_logits(pi, rows, resp), response_logits(ref, rows, resp)).double()  # [M, R]
            chain.append((lp[i].exp() * (tok * mask).sum(-1)).sum())
    assert out["kl_rev_seq"] == pytest.approx(float(torch.stack(chain).mean()), rel=1e-5)
    p = (lp.exp() * rewards).sum(-1)
    assert out["pass@4"] == pytest.approx(float((1 - (1 - p) ** 4).mean()), rel=1e-12)
    assert out["reward"] == pytest.approx(out["pass@1"], rel=1e-12)
    assert {"kl_to_opt_rev", "tv_to_opt_rev", "kl_to_opt_fwd", "tv_to_opt_fwd"} <= set(out)
    assert "kl_to_opt_rev" not in E.sequence_metrics(lp, lq, rewards, mask.sum(1).double(), beta=0.0)


def test_yardstick_of_the_reference_itself():
    task = make_task("divisor", 1)
    m = _model(task, 4)
    ys = E.Yardstick.build(m, task, "cpu")
    assert ys.prompts.shape[0] == len(task.split_problems("train"))
    res = ys.metrics(m, beta=0.1, group=(4, "bessel", 1e-6))
    assert res["exact_kl_rev_seq"] == 0.0 and res["exact_odds_tv"] == 0.0 and res["exact_kl_fwd_seq"] == 0.0
    assert 0 < res["exact_reward"] < 1 and res["exact_kl_to_opt_ug"] > 0
    assert E.enumerable(task) and not E.enumerable(make_task("addition", 2))


def test_yardstick_reuses_the_optima_of_each_beta_only():
    """The optima π_ref's metrics measure distances to are computed once per (β, group): a second β gets its own,
    and every call equals sequence_metrics computing them afresh."""
    task = make_task("divisor", 1)
    ref, pi = _model(task, 4), _model(task, 5)
    ys = E.Yardstick.build(ref, task, "cpu")
    logp, _, _ = E.sequence_logprobs(pi, ys.prompts, ys.vocab_size, ys.max_len, ys.eos_id)
    group = (4, "bessel", 1e-6)
    for beta in (0.1, 0.5, 0.1):
        fresh = E.sequence_metrics(logp, ys.logp_ref, ys.rewards, ys.lengths, beta, (1, 8), group)
        assert ys.metrics(pi, beta, group=group) == {f"exact_{k}": v for k, v in fresh.items()}
    assert set(ys._optima) == {(0.1, group), (0.5, group)}
