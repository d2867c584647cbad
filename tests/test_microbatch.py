"""Batch layouts (rlkl.integrations.microbatch): concrete weights by hand, the accumulated loss equals the
per-micro-batch Method losses, and the exact expected gradient under a layout equals a brute-force loop over
whole optimizer steps (every prompt assignment, response tuple and micro-batch partition)."""

import itertools

import pytest
import torch

from rlkl.components import AggMode, Aggregation
from rlkl.integrations.microbatch import (BatchLayout, Pool, layout_expected_gradient, layout_term, split_loss,
                                          token_weights)
from rlkl.methods import REGISTRY, RolloutBatch, get_method
from rlkl.toy.expected import _prepare, expected_gradient, make_batch
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.policies import TabularPolicy

LENGTHS = [1, 2, 3, 2]


def _mask(lengths=LENGTHS, T=3):
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


def test_token_weights_by_hand():
    m = _mask()  # 8 tokens; micro-batches {0, 1} (3 tokens) and {2, 3} (5 tokens)
    w = token_weights(m, "token-mean")
    assert torch.allclose(w[m], torch.full((8,), 1 / 8, dtype=torch.float64))
    micro = torch.tensor([0, 0, 1, 1])
    wm = token_weights(m, "token-mean", micro)
    # (1/k)·1/N_j with k = 2 micro-batches: rows 0, 1 → 1/6, rows 2, 3 → 1/10
    assert torch.allclose(wm[m], torch.tensor([1 / 6] * 3 + [1 / 10] * 5, dtype=torch.float64))
    for mode in ("seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        # row-local normalizers: equal-sized micro-batches change nothing
        assert torch.equal(token_weights(m, mode, micro), token_weights(m, mode))
    # seq-mean-token-mean: 1/(|y_i|·B): row 2 (3 tokens) → 1/12 per token
    assert token_weights(m, "seq-mean-token-mean")[2, 0].item() == pytest.approx(1 / 12)
    assert token_weights(m, "seq-mean-token-sum-norm", horizon=5)[0, 0].item() == pytest.approx(1 / 20)
    with pytest.raises(ValueError, match="equal sizes"):
        token_weights(m, "token-mean", torch.tensor([0, 0, 0, 1]))


def _random_batch(seed, B=8, T=5, G=4):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    logp_old = -torch.rand(B, T, generator=g, dtype=torch.float64) - 0.1
    logp_ref = logp_old + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    logp = (logp_old + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)).requires_grad_()
    rewards = torch.randint(0, 2, (B,), generator=g).to(torch.float64)
    return logp, RolloutBatch(logp_old, logp_ref, mask, rewards, G)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_split_loss_without_micro_batches_is_method_loss(name):
    m = get_method(name)
    m = m.replace(beta=0.2) if m.beta > 0 else m
    logp, b = _random_batch(1)
    adv = m.advantages(b)
    ref, _ = m.loss_given_advantages(logp, b.logp_old, b.mask, adv, b.logp_ref)
    got = split_loss(m, logp, b.logp_old, b.logp_ref, b.mask, adv)
    torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-15)
    g1, = torch.autograd.grad(got, logp)
    g2, = torch.autograd.grad(ref, logp)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("mode", [m.value for m in AggMode])
@pytest.mark.parametrize("name", ["grpo", "dapo", "gspo", "rpg_fkl"])
def test_split_loss_equals_accumulated_micro_batch_losses(mode, name):
    """Σ_j Method.loss(M_j)/k (gradient accumulation, TRL's grpo/bnpo/dr_grpo) = Σ W·ℓ with token_weights."""
    m = get_method(name)
    m = m.replace(aggregation=Aggregation(mode), beta=0.1 if m.beta > 0 else 0.0)
    logp, b = _random_batch(2)
    adv = m.advantages(b)
    micro = torch.tensor([1, 0, 1, 0, 2, 2, 3, 3])
    acc = sum(m.loss_given_advantages(logp[micro == j], b.logp_old[micro == j], b.mask[micro == j],
                                      adv[micro == j], b.logp_ref[micro == j])[0] for j in range(4)) / 4
    got = split_loss(m, logp, b.logp_old, b.logp_ref, b.mask, adv, micro)
    torch.testing.assert_close(got, acc, rtol=1e-13, atol=1e-15)


# ---------------------------------------------------------------------------------------------------------------
# exact expectation vs brute force over whole optimizer steps

def _step_brute_force(method, mdp, pi, ref, G, K, micro_rows=None):
    """E[∇ L_step] by a loop: K groups with prompts x_1..x_K ~ ρ, K·G responses ~ π (on-policy), and (MICRO)
    every partition of the K·G rows into micro-batches of ``micro_rows`` (uniform: a shuffle then a split);
    L_step = Σ_j Method.loss(M_j)/#micro (MICRO) or Method.loss(all rows) (GROUPS: token-mean over the pool)."""
    data = _prepare(mdp, pi, None, ref)
    P, N = data.q.shape
    rows_n = K * G
    parts = [None]
    if micro_rows is not None:
        parts = _partitions(list(range(rows_n)), micro_rows)
    tl = pi.token_logp()
    coef = torch.zeros_like(tl)  # Σ prob·∂L/∂logp per enumerated (response, token); chained to θ once at the end
    for xs in itertools.product(range(P), repeat=K):
        px = float(torch.prod(mdp.prompt_probs[list(xs)]))
        if px == 0:
            continue
        for ys in itertools.product(range(N), repeat=rows_n):
            rows = torch.tensor([xs[r // G] * N + ys[r] for r in range(rows_n)])
            prob = px * float(torch.prod(torch.stack([data.q[xs[r // G], ys[r]] for r in range(rows_n)])))
            if prob == 0:
                continue
            batch = make_batch(data, rows, G)
            adv = method.advantages(batch)
            logp = tl.detach()[rows].requires_grad_(True)
            loss = 0.0
            for part in parts:
                if part is None:
                    loss = method.loss_given_advantages(logp, batch.logp_old, batch.mask, adv, batch.logp_ref)[0]
                    continue
                for block in part:
                    idx = torch.tensor(block)
                    loss = loss + method.loss_given_advantages(logp[idx], batch.logp_old[idx], batch.mask[idx],
                                                               adv[idx], batch.logp_ref[idx])[0] / len(part)
            if parts != [None]:
                loss = loss / len(parts)  # uniform over partitions
            g, = torch.autograd.grad(loss, logp)
            coef.index_add_(0, rows, prob * g)
    total, = torch.autograd.grad(tl, pi.theta, grad_outputs=coef)
    return total


def _partitions(rows, size):
    """All unordered partitions of ``rows`` into blocks of ``size``."""
    if not rows:
        return [[]]
    first, rest = rows[0], rows[1:]
    out = []
    for mates in itertools.combinations(rest, size - 1):
        left = [r for r in rest if r not in mates]
        for p in _partitions(left, size):
            out.append([[first, *mates]] + p)
    return out


def _tiny(V, T, P, seed):
    mdp = TreeMDP.random(V, T, P, eos=True, reward="binary", seed=seed)
    pi = TabularPolicy.random(mdp, seed=seed + 1)
    ref = TabularPolicy.random(mdp, seed=seed + 2).detached()
    return mdp, pi, ref


def _method(name):
    m = get_method(name)
    return m.replace(aggregation=Aggregation("token-mean"), beta=0.3 if m.beta > 0 else 0.0)


@pytest.mark.parametrize("name", ["dapo", "grpo"])
def test_groups_layout_equals_brute_force(name):
    mdp, pi, ref = _tiny(2, 2, 2, seed=4)  # 3 responses, lengths 1, 2, 2; two prompts
    m = _method(name)
    layout = BatchLayout(Pool.GROUPS, groups=2)
    got = layout_expected_gradient(m, layout, mdp, pi, None, ref, group_size=2).grad
    bf = _step_brute_force(m, mdp, pi, ref, G=2, K=2)
    assert float((got - bf).norm() / bf.norm()) < 1e-12
    # and it differs from the per-group token-mean the Method audits: a real layout effect
    own = expected_gradient(m, mdp, pi, None, ref, 2).grad
    assert float((got - own).norm() / own.norm()) > 1e-3


@pytest.mark.parametrize("name", ["dapo", pytest.param("grpo", marks=pytest.mark.slow)])
def test_micro_layout_equals_brute_force(name):
    mdp, pi, ref = _tiny(2, 3, 1, seed=6)  # 4 responses, lengths 1, 2, 3, 3
    m = _method(name)
    layout = BatchLayout(Pool.MICRO, groups=2, micro_rows=2)
    got = layout_expected_gradient(m, layout, mdp, pi, None, ref, group_size=2).grad
    bf = _step_brute_force(m, mdp, pi, ref, G=2, K=2, micro_rows=2)
    assert float((got - bf).norm() / bf.norm()) < 1e-12


def test_layout_identities():
    """b = 1: each row normalized by its own length (= seq-mean-token-mean); b = K·G: the whole pool (= GROUPS K);
    GROUP: the Method itself; fixed lengths: no layout effect at all."""
    mdp, pi, ref = _tiny(3, 3, 2, seed=8)
    m = _method("dapo")
    G = 3
    seq = m.replace(aggregation=Aggregation("seq-mean-token-mean"))
    one = layout_expected_gradient(m, BatchLayout(Pool.MICRO, groups=2, micro_rows=1), mdp, pi, None, ref, G).grad
    torch.testing.assert_close(one, expected_gradient(seq, mdp, pi, None, ref, G).grad, rtol=1e-12, atol=1e-15)
    whole = layout_expected_gradient(m, BatchLayout(Pool.MICRO, groups=2, micro_rows=6), mdp, pi, None, ref, G).grad
    pool = layout_expected_gradient(m, BatchLayout(Pool.GROUPS, groups=2), mdp, pi, None, ref, G).grad
    torch.testing.assert_close(whole, pool, rtol=1e-12, atol=1e-15)
    assert torch.equal(layout_term(m, BatchLayout(), mdp, pi, None, ref, G), torch.zeros_like(pi.theta))
    fixed = TreeMDP.random(3, 3, 2, reward="binary", seed=8)
    pf = TabularPolicy.random(fixed, seed=9)
    term = layout_term(m, BatchLayout(Pool.GROUPS, groups=5), fixed, pf, None, None, G)
    assert float(term.norm()) < 1e-14


def test_layout_validation():
    with pytest.raises(ValueError, match="micro_rows is required"):
        BatchLayout(Pool.MICRO, groups=2)
    with pytest.raises(ValueError, match="groups must be 1"):
        BatchLayout(Pool.GROUP, groups=2)
    with pytest.raises(ValueError, match="do not divide"):
        BatchLayout(Pool.MICRO, groups=1, micro_rows=3).check(4)
