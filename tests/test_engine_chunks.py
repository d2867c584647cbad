"""The exact engine's chunked fast paths equal the brute-force loop: the first-row route reading each response once
per chunk (`_Repeat`), the per-sample route without a row index, chunk boundaries anywhere; the π_ref gather
skipped only for methods that do not read π_ref; the node-table finiteness check read from one sum."""

import dataclasses

import pytest
import torch

import rlkl.toy.expected as X
from rlkl.components import Raw
from rlkl.losses import aggregate
from rlkl.methods import RolloutBatch, get_method, list_methods
from rlkl.toy.expected import brute_force_expected_gradient, expected_gradient
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.policies import TabularPolicy


def _setup(gap: bool, seed: int = 4, P: int = 2):
    """A V = 2, T = 2 tree (responses 00, 01, 10, 11 per prompt); ``gap``: token 1 after token 0 (node 1) of prompt 0
    gets probability 0 under π_θ and π_old, so that prompt's support {00, 10, 11} is not a range of rows (the
    engine's index paths run instead of the range paths)."""
    mdp = TreeMDP.random(2, 2, P, reward="binary", success_rate=0.4, seed=seed)
    logits = TabularPolicy.random(mdp, seed=seed + 1).theta.detach().clone()
    if gap:
        logits[0, 1, 1] = float("-inf")
    pi = TabularPolicy(mdp, logits.requires_grad_(True))
    old = pi.perturbed(0.3, seed + 2).detached()  # keeps the −inf entries
    ref = TabularPolicy.random(mdp, seed=seed + 3).detached()
    return mdp, pi, old, ref


def _rel(a, b):
    return float((a - b).norm() / b.norm())


#: chunk sizes (rows × T): one response per chunk, a partial last chunk, everything in one chunk
CHUNKS = (2, 10, 1 << 17)


@pytest.mark.parametrize("gap", [False, True])
@pytest.mark.parametrize("name", ["grpo", "frpo", "dr_grpo"])
def test_first_rows_route_in_chunks_equals_brute_force(name, gap):
    mdp, pi, old, ref = _setup(gap)
    m = get_method(name)
    m = m.replace(beta=0.2) if m.beta > 0 else m
    sup = (torch.softmax(old.sequence_logp().reshape(2, -1), -1)[0] > 0).nonzero().squeeze(1)
    assert (int(sup[-1]) - int(sup[0]) + 1 != sup.shape[0]) == gap  # prompt 0's support has a gap exactly when asked
    assert X._first_row_method(X.loss_spec(m, mdp, 3), "reward") is m  # the first-row route runs
    bf = brute_force_expected_gradient(m, mdp, pi, old, ref, group_size=3)
    for chunk_slots in CHUNKS:
        eg = expected_gradient(m, mdp, pi, old, ref, group_size=3, route="exchangeable", class_by="reward",
                               chunk_slots=chunk_slots)
        assert _rel(eg.grad, bf) < 1e-12, chunk_slots


@pytest.mark.parametrize("gap", [False, True])
@pytest.mark.parametrize("name", ["rpg_reinforce_urkl_seq", "rpg_reinforce_fkl", "reinforce"])
def test_per_sample_route_in_chunks_equals_brute_force(name, gap):
    mdp, pi, old, ref = _setup(gap)
    m = get_method(name).replace(advantage=Raw())
    bf = brute_force_expected_gradient(m, mdp, pi, old, ref, group_size=1)
    for chunk_slots in CHUNKS:
        eg = expected_gradient(m, mdp, pi, old, ref, group_size=1, route="per_sample", chunk_slots=chunk_slots)
        assert _rel(eg.grad, bf) < 1e-12, chunk_slots


def test_per_sample_rows_without_index_equal_the_support_rows():
    """Full support: rows 0 … P·N − 1 with weights ρ(x)q(y), the same as the per-prompt support gather."""
    mdp, pi, old, ref = _setup(False, P=3)
    data = X._prepare(mdp, pi, old, ref)
    rows, w = X._per_sample_rows(data)
    N = data.N
    assert torch.equal(rows, torch.arange(3 * N))
    for x in range(3):
        assert torch.equal(w[x * N:(x + 1) * N], data.rho[x] * data.q[x])


def test_repeat_spread_and_collapse():
    r = X._Repeat(5, 8, 2)  # rows 5, 6, 7, twice: entries 5 6 7 5 6 7
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert torch.equal(r.spread(x), torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]] * 2))
    c = torch.arange(12.0).view(6, 2)
    # row 5 gets entries 0 and 3: [0, 1] + [6, 7] = [6, 8]; row 6: [2, 3] + [8, 9]; row 7: [4, 5] + [10, 11]
    assert torch.equal(r.collapse(c), torch.tensor([[6.0, 8.0], [10.0, 12.0], [14.0, 16.0]]))
    assert r.base == slice(5, 8)


@pytest.mark.parametrize("name", list_methods())
def test_methods_without_a_reference_do_not_read_logp_ref(name):
    """`Method.uses_reference` False ⇒ the loss and its gradient do not depend on ``batch.logp_ref`` (what lets the
    engine skip π_ref's gather, `_reads_ref`); True ⇒ the engine gathers it."""
    m = get_method(name)
    g = torch.Generator().manual_seed(0)
    B, T, G = 8, 5, 4
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False
    mask[6, 1:] = False
    logp_old = -torch.rand(B, T, generator=g, dtype=torch.float64) * mask
    rewards = (torch.rand(B, generator=g) > 0.5).to(torch.float64)
    logp = (logp_old + 0.1 * torch.randn(B, T, generator=g, dtype=torch.float64)) * mask
    refs = [-torch.rand(B, T, generator=g, dtype=torch.float64) * mask for _ in range(2)]
    out = []
    for ref in refs:
        leaf = logp.clone().requires_grad_(True)
        loss = m.loss(leaf, RolloutBatch(logp_old, ref, mask, rewards, G))[0]
        out.append((loss.detach(), torch.autograd.grad(loss, leaf)[0]))
    same = torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    if not m.uses_reference:
        assert same
        assert not X._reads_ref(X.loss_spec(m, TreeMDP.random(2, 2, 1, seed=0), G))
    else:
        assert not same  # a method with a KL to π_ref reads it (or the property would be vacuous)
        assert X._reads_ref(X.loss_spec(m, TreeMDP.random(2, 2, 1, seed=0), G))


def test_a_reference_the_method_does_not_read_is_not_built_nor_checked():
    """π_ref with zero probability on a supported response: "the KL to π_ref is infinite" for a method that reads
    π_ref (grpo); a method that reads none (RPG: its KL is to π_old; grpo at β = 0) gets the gradient it gets with
    a full-support π_ref (and the brute force's), bit for bit."""
    mdp, pi, old, ref = _setup(gap=False)
    logits = ref.theta.detach().clone()
    logits[1, 0, 0] = float("-inf")  # prompt 1: response 00 and 01 get π_ref = 0
    holed = TabularPolicy(mdp, logits).detached()
    with pytest.raises(ValueError, match="KL to π_ref is infinite"):
        expected_gradient(get_method("grpo"), mdp, pi, old, holed, group_size=2)
    for m in (get_method("rpg_reinforce_urkl_seq").replace(advantage=Raw()), get_method("grpo").replace(beta=0.0)):
        assert not m.uses_reference
        a = expected_gradient(m, mdp, pi, old, holed, group_size=2).grad
        b = expected_gradient(m, mdp, pi, old, ref, group_size=2).grad
        assert torch.equal(a, b)
        bf = brute_force_expected_gradient(m, mdp, pi, old, ref, group_size=2)
        assert _rel(a, bf) < 1e-12


def test_a_callable_loss_always_gets_the_reference():
    spec = X.LossSpec(lambda logp, batch: (logp * batch.logp_ref).sum(), 1, "token-mean", "none")
    assert X._reads_ref(spec)


def test_all_finite_from_one_sum_and_its_overflow_fallback():
    def tokens(table):
        return X._Tokens(table.reshape(1, -1), None, None, 1, 1)

    assert X._all_finite(tokens(torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64)))
    assert not X._all_finite(tokens(torch.tensor([-1.0, float("-inf"), -3.0], dtype=torch.float64)))
    assert not X._all_finite(tokens(torch.tensor([-1.0, float("nan"), -3.0], dtype=torch.float64)))
    assert not X._all_finite(tokens(torch.tensor([float("inf"), float("-inf")], dtype=torch.float64)))  # sum nan
    # finite entries whose sum overflows (−1.5e308 · 2 = −inf): read entry by entry, finite
    assert X._all_finite(tokens(torch.tensor([-1.5e308, -1.5e308], dtype=torch.float64)))
    assert X._all_finite(X._Tokens(None, None, None, 1, 1, full=torch.zeros(1, 1))) is False  # no table


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_seq_mean_token_mean_by_hand(dtype):
    # rows: [1, 2, pad] → (1 + 2)/2 = 1.5; [4, pad, pad] → 4; mean over B' = 2 rows: (1.5 + 4)/2 = 2.75
    loss = torch.tensor([[1.0, 2.0, 100.0], [4.0, 7.0, -3.0]], dtype=dtype)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert aggregate(loss, mask, "seq-mean-token-mean").item() == 2.75
    # an empty row counts in neither B' nor the sum: (1.5 + 4)/2 again
    loss3 = torch.cat([loss, torch.full((1, 3), 9.0, dtype=dtype)])
    mask3 = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)])
    assert aggregate(loss3, mask3, "seq-mean-token-mean").item() == 2.75


def test_seq_mean_token_sum_counts_rows_of_a_strided_mask():
    """B' from the mask's bytes works on a non-contiguous mask (a transposed view)."""
    # rows [1+2, 4, (empty)] → Σ = 7 over B' = 2 rows = 3.5
    loss = torch.tensor([[1.0, 4.0, 5.0], [2.0, 6.0, 5.0]], dtype=torch.float64).t()
    mask = torch.tensor([[True, True, False], [True, False, False]]).t()
    assert not mask.is_contiguous()
    assert aggregate(loss, mask, "seq-mean-token-sum").item() == 3.5


def _per_sample_methods(mdp):
    """The registered Methods (advantage Raw()) whose exact gradient takes the per-sample route on ``mdp`` (G = 1),
    one per distinct (policy-loss kind, level, divergence and form, KL kind and estimator, aggregation, correction)."""
    out = {}
    for name in list_methods():
        try:
            m = get_method(name).replace(advantage=Raw())
        except ValueError:  # a combination Raw() cannot make
            continue
        if m.is_group_based or X.choose_route(X.loss_spec(m, mdp, 1), mdp)[0] != "per_sample":
            continue
        out.setdefault((type(m.policy_loss).__name__, repr(getattr(m.policy_loss, "level", None)),
                        repr(getattr(m.policy_loss, "divergence", None)), repr(getattr(m.policy_loss, "form", None)),
                        type(m.kl).__name__,
                        repr(getattr(m.kl, "estimator", None)), m.aggregation.mode, type(m.correction).__name__), m)
    return list(out.values())


@pytest.mark.parametrize("eos", [False, True])
def test_t_major_chunks_equal_the_row_major_route_and_brute_force(eos, monkeypatch):
    """A Method's own loss runs on T-major chunks (`_TMajor`: [T, B] storage seen as [B, T]; forced on this small
    tree); the same loss as a plain callable runs on row-major rows. They agree to 1e-13 and equal the brute force
    (every third Method), on a fixed-length and a variable-length (EOS) tree with two prompts, chunks that split
    the prompts anywhere."""
    mdp = TreeMDP.random(3, 3, 2, eos=eos, reward="real", seed=7)
    assert mdp.fixed_length != eos
    pi = TabularPolicy.random(mdp, seed=8)
    old = pi.perturbed(0.3, 9).detached()
    ref = TabularPolicy.random(mdp, seed=10).detached()
    monkeypatch.setattr(X, "T_MAJOR_MIN_SLOTS", 0)  # T-major on this small tree too
    seen = []
    real = X._accumulate

    def spy(spec, data, rows, *args, **kwargs):
        seen.append((rows.x, rows.start, rows.stop) if isinstance(rows, X._TMajor) else rows)
        return real(spec, data, rows, *args, **kwargs)

    monkeypatch.setattr(X, "_accumulate", spy)
    methods = _per_sample_methods(mdp)
    assert len(methods) >= 10, [m.name for m in methods]
    for i, m in enumerate(methods):
        bf = brute_force_expected_gradient(m, mdp, pi, old, ref, group_size=1) if i % 3 == 0 else None
        spec = X.loss_spec(m, mdp, 1)
        wrapped = dataclasses.replace(spec, loss_fn=lambda logp, batch, f=spec.loss_fn: f(logp, batch), method=None)
        assert X._engine_method(wrapped) is None  # a callable: row-major rows
        row_major = expected_gradient(wrapped, mdp, pi, old, ref, group_size=1, route="per_sample")
        for chunk_slots in (2 * mdp.horizon, 1 << 17):  # 2 rows per chunk (a prompt split anywhere), everything
            seen.clear()
            eg = expected_gradient(m, mdp, pi, old, ref, group_size=1, route="per_sample", chunk_slots=chunk_slots)
            per = max(1, chunk_slots // mdp.horizon)
            N = mdp.num_responses
            assert seen == [(x, s, min(N, s + per)) for x in range(2) for s in range(0, N, per)], m.name  # T-major
            if bf is not None:  # every third Method (the row-major route equals the brute force elsewhere)
                assert _rel(eg.grad, bf) < 1e-12, (m.name, chunk_slots)
            assert _rel(eg.grad, row_major.grad) < 1e-13, (m.name, chunk_slots)
            assert _rel(eg.coef, row_major.coef) < 1e-13, (m.name, chunk_slots)


def test_t_major_views_hold_the_row_major_values():
    """`_TMajor`'s arrays are the row-major rows, bit for bit: token log-probs (0 on padding), mask, rewards."""
    mdp = TreeMDP.random(3, 3, 2, eos=True, seed=3)
    pi = TabularPolicy.random(mdp, seed=4)
    data = X._prepare(mdp, pi, pi.perturbed(0.2, 5).detached(), None)
    flat_t, mask_t = X._t_major_index(mdp)
    N = mdp.num_responses
    rows = X._TMajor(1, 2, N - 1, N, flat_t, mask_t, True)
    base = slice(N + 2, 2 * N - 1)
    for name in ("logp", "logp_old", "mask", "rewards"):
        t_major = data.take(name, rows)
        assert torch.equal(t_major, data.take(name, base)), name
        if t_major.dim() == 2:
            assert t_major.t().is_contiguous() or name == "mask", name  # [T, B] storage
    assert (data.take("logp", rows)[~data.take("mask", base)] == 0).all()  # 0 on padding


def test_a_callable_gets_row_major_rows():
    """A user's loss callable sees contiguous row-major arrays (only a Method's own loss runs T-major)."""
    mdp, pi, old, ref = _setup(False)
    shapes = []

    def loss(logp, batch):
        shapes.append((logp.is_contiguous(), batch.logp_old.is_contiguous(), batch.mask.is_contiguous()))
        return (-logp.sum(-1) * batch.rewards).mean()

    spec = X.LossSpec(loss, 1, "seq-mean-token-sum", "none")
    eg = expected_gradient(spec, mdp, pi, old, ref, group_size=1, route="per_sample")
    assert eg.route == "per_sample"
    assert shapes and all(all(s) for s in shapes)


def test_t_major_chunks_only_from_the_size_where_they_pay():
    """A prompt below `T_MAJOR_MIN_SLOTS` token slots keeps row-major chunks; one at the bound runs T-major."""
    m = get_method("rpg_reinforce_urkl_seq").replace(advantage=Raw())
    small = TreeMDP.random(2, 2, 1, seed=0)
    big = TreeMDP.random(4, 7, 1, seed=0)  # 4^7 = 16384 responses · 7 slots >= 2^14
    for mdp, want in ((small, False), (big, True)):
        pi = TabularPolicy.random(mdp, seed=1)
        data = X._prepare(mdp, pi, pi.perturbed(0.1, 2).detached(), None)
        assert X._t_major_ok(X.loss_spec(m, mdp, 1), data, 1) is want
