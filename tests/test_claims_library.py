"""Library pieces behind the claims ledger (docs/claims.md): the Rao-Blackwellized KL estimator (Amini, Vieira &
Cotterell arXiv 2504.10637), GRPO's success recursion (Mroueh arXiv 2503.06639) and the group-std update size
(Bay & Yearick arXiv 2607.00152), each against an independent computation."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from rlkl.advantages import group_standardized
from rlkl.divergences import monte_carlo_kl, rao_blackwell_kl
from rlkl.utility import group_std_update_size, mroueh_fixed_point, mroueh_success_map, mroueh_success_sequence

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in the root conftest.py


# ---- Rao-Blackwellized KL ---------------------------------------------------------------------------------------


def test_rb_and_mc_kl_by_hand():
    # one state, two tokens: π = (½, ½), π_ref = (¼, ¾); sampled token 0
    logits = torch.tensor([[[0.0, 0.0]]]).log_softmax(-1)
    logits_ref = torch.tensor([[[0.25, 0.75]]]).log()
    mask = torch.tensor([[True]])
    exact = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert rao_blackwell_kl(logits, logits_ref, mask).item() == pytest.approx(exact, rel=1e-6)
    lp, lpr = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert monte_carlo_kl(lp, lpr, mask).item() == pytest.approx(math.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="mask"):
        rao_blackwell_kl(logits, logits_ref, mask.float())


def test_rb_kl_is_unbiased_with_variance_at_most_mc_by_enumeration():
    """Exact E and Var over every response of a tiny GPT (divisor task, 133 responses per prompt): both estimators
    have mean KL(π‖π_ref) over sequences, and Var_RB <= Var_MC (Rao-Blackwell), strictly here."""
    from rlkl.lm import exact as E
    from rlkl.lm.model import GPT, GPTConfig, response_logits, token_logprobs
    from rlkl.lm.tasks import make_task

    task = make_task("divisor", 1)
    cfg = GPTConfig(vocab_size=task.vocab_size, block_size=task.prompt_len + task.max_response_len, n_layer=1,
                    n_head=2, d_model=16)
    torch.manual_seed(0)
    pi, ref = GPT(cfg).double().eval(), GPT(cfg).double().eval()
    prompt = task.encode_prompts(torch.tensor([[6]]))
    lp, resp, mask = E.sequence_logprobs(pi, prompt, task.vocab_size, task.max_response_len, task.eos_id)
    lq, _, _ = E.sequence_logprobs(ref, prompt, task.vocab_size, task.max_response_len, task.eos_id)
    with torch.no_grad():
        rows = prompt.repeat(resp.shape[0], 1)
        lg, lg_ref = response_logits(pi, rows, resp).double(), response_logits(ref, rows, resp).double()
        rb = rao_blackwell_kl(lg, lg_ref, mask)  # [M]
        mc = monte_carlo_kl(token_logprobs(lg, resp), token_logprobs(lg_ref, resp), mask)  # [M]
    w = lp[0].exp()  # π(y), sums to 1
    kl_seq = E.kl(lp, lq)[0]
    mean_rb, mean_mc = (w * rb).sum(), (w * mc).sum()
    assert float(mean_rb) == pytest.approx(float(kl_seq), rel=1e-5)
    assert float(mean_mc) == pytest.approx(float(kl_seq), rel=1e-5)
    var_rb, var_mc = (w * (rb - mean_rb) ** 2).sum(), (w * (mc - mean_mc) ** 2).sum()
    assert float(var_rb) < float(var_mc)
    assert bool((rb >= 0).all()) and bool((mc < 0).any())  # RB never negative; MC sometimes is


# ---- Mroueh's success recursion ---------------------------------------------------------------------------------


@given(st.floats(0.05, 0.95), st.floats(0.3, 5.0), st.sampled_from([1e-6, 0.01]))
def test_mroueh_map_is_the_success_rate_of_the_optimal_step_policy(p_ref, beta, eps):
    """Independent route: a 6-answer categorical with π_ref(correct) = p_ref; π_n ∝ π_ref·exp(A/β) with A the
    whitened reward under π_{n−1} (numpy); its success mass equals h(p_{n−1}) for three steps (ε > 0: p_n can
    round to 1, where the ε = 0 whitening divides by zero)."""
    ref = np.array([0.5, 0.3, 0.2, 0.4, 0.35, 0.25])
    ref = np.concatenate([ref[:3] / ref[:3].sum() * p_ref, ref[3:] / ref[3:].sum() * (1 - p_ref)])
    r = np.array([1, 1, 1, 0, 0, 0], dtype=float)
    pi = ref.copy()
    for _ in range(3):
        p = float((pi * r).sum())
        A = (r - p) / math.sqrt(p * (1 - p) + eps)
        nxt = ref * np.exp(A / beta)
        nxt /= nxt.sum()
        assert float((nxt * r).sum()) == pytest.approx(float(mroueh_success_map(p, p_ref, beta, eps)), rel=1e-10)
        pi = nxt


@pytest.mark.parametrize("p_ref, beta", [(0.2, 2.0), (0.5, 2.0), (0.5, 5.0), (0.8, 3.0), (0.3, 0.5)])
def test_mroueh_fixed_point_exceeds_p_ref_and_is_the_limit(p_ref, beta):
    eps = 1e-6
    p_star = mroueh_fixed_point(p_ref, beta, eps)
    assert p_star > p_ref
    assert float(mroueh_success_map(p_star, p_ref, beta, eps)) == pytest.approx(p_star, abs=1e-12)
    seq = mroueh_success_sequence(p_ref, beta, 200, eps)
    assert seq[0] == p_ref and seq[-1] == pytest.approx(p_star, abs=1e-9)
    with pytest.raises(ValueError, match="p_ref"):
        mroueh_success_map(0.5, 1.0, beta)


# ---- Bay & Yearick: the GRPO update of a binary group is the group std -------------------------------------------


@given(st.integers(2, 12).flatmap(lambda G: st.tuples(st.just(G), st.integers(0, G))), st.integers(0, 1000),
       st.sampled_from(["population", "bessel"]))
def test_group_update_equals_group_std_times_the_direction_contrast(Gk, seed, std):
    """(1/G) Σ_i A_i g_i (A from rlkl.advantages.group_standardized, ε = 0) = c·(ḡ_correct − ḡ_wrong) for random
    directions g_i, with c = σ = √(k(G−k))/G (population) and σ·√((G−1)/G) (Bessel)."""
    G, k = Gk
    rewards = torch.zeros(G, dtype=torch.float64)
    rewards[:k] = 1.0
    g = torch.randn(G, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    A = group_standardized(rewards, G, 0.0, std)
    update = (A[:, None] * g).mean(0)
    sigma = math.sqrt(k * (G - k)) / G
    c = sigma * (math.sqrt((G - 1) / G) if std == "bessel" else 1.0)
    assert group_std_update_size(k, G, std) == pytest.approx(c, abs=1e-15)
    if 0 < k < G:
        torch.testing.assert_close(update, c * (g[:k].mean(0) - g[k:].mean(0)), rtol=1e-12, atol=1e-12)
    else:
        assert c == 0.0 and bool((update == 0).all())  # silent groups
