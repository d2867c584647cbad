"""Variable-length (EOS) toy exposing the length bias of the aggregation modes (Dr. GRPO, arXiv 2503.20783).

Tree: tokens {a, b, EOS}, horizon 4; a response is correct iff its first token is ``a`` — so the length of a
response is irrelevant to the reward, and the unbiased update must leave the continue/stop probabilities after the
first token untouched. With the per-sequence 1/|y| normalization (GRPO's ``seq-mean-token-mean``) it does not:
the update ascends Σ π(y)·h(r)/|y| (h: the group advantage's shaped reward), which favours *long* incorrect and
*short* correct responses.
"""

import torch

from rlkl.components import AggMode, Aggregation, Reinforce
from rlkl.methods import get_method
from rlkl.toy.audit import shaped_reward
from rlkl.toy.expected import expected_gradient
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.objectives import score_gradient
from rlkl.toy.policies import TabularPolicy

A, B, EOS = 0, 1, 2
G = 4


def _toy():
    mdp = TreeMDP.from_function(lambda x, y: float(y[0] == A), 3, 4, eos_token=EOS, name="length-toy")
    pi = TabularPolicy.random(mdp, scale=0.5, seed=0)
    return mdp, pi


def _length_given_first(pi, first):
    mdp = pi.mdp
    e = mdp.enumerate()
    sel = (e.tokens[:, 0] == first).to(torch.float64)
    p = pi.probs()[0]
    return (p * sel * e.lengths.to(torch.float64)).sum() / (p * sel).sum()


def _length_logits(mdp):
    """Mask of the θ entries that only decide *when to stop* after the first token: EOS logits at depth ≥ 1."""
    e = mdp.enumerate()
    m = torch.zeros(1, e.num_nodes, 3, dtype=torch.bool)
    m[0, e.node_depth >= 1, EOS] = True
    return m


def test_constant_normalizer_leaves_length_alone_but_1_over_len_does_not():
    mdp, pi = _toy()
    no_kl = get_method("no_kl").replace(policy_loss=Reinforce())
    g_len = expected_gradient(no_kl, mdp, pi, group_size=G).grad  # seq-mean-token-mean (GRPO)
    g_dr = expected_gradient(get_method("dr_grpo").replace(policy_loss=Reinforce()), mdp, pi, group_size=G).grad
    g_sum = expected_gradient(no_kl.replace(aggregation=Aggregation(AggMode.SEQ_MEAN_TOKEN_SUM)), mdp, pi, group_size=G).grad
    lm = _length_logits(mdp)
    # unbiased aggregations: exactly no push on when to stop (the reward does not depend on it)
    assert float(g_dr[lm].abs().max()) < 1e-15 and float(g_sum[lm].abs().max()) < 1e-15
    # 1/|y|: a clear push on the stop decisions
    assert float(g_len[lm].abs().max()) > 1e-3 * float(g_len.abs().max())
    # direction: a step θ − ε·g makes incorrect answers longer and correct answers shorter
    grad_wrong = torch.autograd.grad(_length_given_first(pi, B), pi.theta)[0]
    grad_right = torch.autograd.grad(_length_given_first(pi, A), pi.theta)[0]
    assert float(-(grad_wrong * g_len).sum()) > 1e-4  # d/dε E[|y| | wrong] > 0
    assert float(-(grad_right * g_len).sum()) < -1e-4  # d/dε E[|y| | correct] < 0
    assert abs(float((grad_wrong * g_dr).sum())) < 1e-15 and abs(float((grad_right * g_dr).sum())) < 1e-15


def test_seq_mean_token_mean_ascends_the_length_weighted_shaped_reward():
    """Exactly: E[∇L] = −∇_θ Σ_y π_θ(y)·sg[h(r(y))/|y|] on-policy (the implied reward of incorrect answers,
    h(0)/|y| < 0, increases with |y|)."""
    mdp, pi = _toy()
    m = get_method("no_kl").replace(policy_loss=Reinforce())
    g = expected_gradient(m, mdp, pi, group_size=G).grad
    h = shaped_reward(mdp, pi.detached(), mdp.rewards, G, m.advantage)
    lengths = mdp.enumerate().lengths.to(torch.float64)
    want = -score_gradient(mdp, pi, h / lengths)
    assert float((g - want).norm() / want.norm()) < 1e-12
    implied = (h / lengths)[0]
    wrong = mdp.rewards[0] == 0
    by_len = {int(L): float(implied[wrong & (lengths == L)].mean()) for L in lengths[wrong].unique()}
    values = [by_len[L] for L in sorted(by_len)]
    assert all(a < b for a, b in zip(values, values[1:])) and values[-1] < 0


def test_token_mean_couples_the_group_and_is_also_length_biased():
    """DAPO's token-mean (one normalizer for the whole group) is exact only for fixed lengths; on the EOS toy it
    also pushes the stop decisions, and the exact expectation needs the whole group (multisets of responses)."""
    mdp, pi = _toy()
    m = get_method("dapo").replace(policy_loss=Reinforce())
    eg = expected_gradient(m, mdp, pi, group_size=3)
    assert eg.route == "exchangeable[response]"
    tup = expected_gradient(m, mdp, pi, group_size=3, route="tuples")
    assert float((eg.grad - tup.grad).norm() / tup.grad.norm()) < 1e-12
    lm = _length_logits(mdp)
    assert float(eg.grad[lm].abs().max()) > 1e-3 * float(eg.grad.abs().max())
