"""Exact expected gradient of a Method (or any loss ``loss_fn(logp, batch)``) under a behaviour policy.

For a loss L computed on one group of G responses y_1..y_G ~ π_old(·|x) i.i.d. (x ~ ρ), the expected update is

    E[∇_θ L] = Σ_x ρ(x) Σ_{(y_1..y_G)} Π_i π̃_old(y_i|x) · ∇_θ L(y_1..y_G; θ),

with L the method's own ``loss(logp, batch)`` on a `RolloutBatch` of exactly that group (the unit of the
expectation is one group; ``token-mean`` over a whole batch couples groups, so the per-group normalization is
restored exactly, see `_group_factors`). ∇_θ L = Σ_{i,t} ∂L/∂logp_{i,t} · ∇_θ log π_θ(a_{i,t}|s_{i,t}): the
engine differentiates the loss w.r.t. the ``[B, T]`` log-probs it was given (autograd through the method's code),
weights each row by its probability, accumulates the per-response coefficients ``coef[y, t]`` and applies the
chain rule to θ once.

Routes (``route=``):

* ``"per_sample"`` — rows do not interact (no group statistics, per-row normalization): E = Σ_y q(y) ∇ℓ(y).
* ``"tuples"`` — all ordered G-tuples per prompt (N^G groups): exact for any loss that only couples rows within a
  group. A clear ValueError (with the count) when it does not fit.
* ``"exchangeable"`` — the loss is symmetric in the rows of a group, so E = G·E[row-1 part]; row 1 runs over all
  responses and the other G−1 rows over *multisets* of classes with multinomial probabilities. With
  ``class_by="reward"`` a class is a reward value: exact when row 1's gradient depends on the others only through
  their rewards (group advantages), and for binary rewards this is the binomial count of successes among the
  other G−1 samples — exact for any G (FRPO arXiv 2601.10201 Prop. 3.1). ``class_by="response"`` is exact for any
  permutation-symmetric group loss (e.g. ``token-mean`` with variable lengths, KL fused into the reward).
* ``"loop"`` — one call per ordered G-tuple (for losses whose aggregation is unknown or couple rows through batch
  statistics). Slow; small problems only.

``route="auto"`` picks per_sample → exchangeable(reward) → exchangeable(response) → tuples/loop from what the
Method couples (`coupling`).
"""

from __future__ import annotations

import itertools
import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional

import torch

from rlkl._checks import check_float, deferring, require, trusted, values_trusted
from rlkl.options import AggMode, coerce
from rlkl._memory import retain_freed_memory
from rlkl.toy.mdp import SMALL_PROBLEM_SLOTS, TreeMDP, threads_for  # noqa: F401  (threads_for re-exported)
from rlkl.toy.policies import Policy, TabularPolicy

Tensor = torch.Tensor

#: how the rows of a group interact (see `LossSpec.coupling`)
COUPLINGS = ("none", "rewards", "full", "batch")
#: default cap on the number of groups an exact expectation may enumerate
DEFAULT_MAX_GROUPS = 2_000_000
#: rows × T per loss call (memory of one chunk: 2 MiB per float64 [B, T] array, a core's L2 here). Measured on 2 cores
#: (`rlkl bench exact_engine`'s cases, best of 5): grpo N = 10^5 0.108 s at 2^18 vs 0.118 s at 2^17 and 0.137 s at 2^19
#: (1 thread), 0.073 / 0.083 / 0.087 s (2 threads); rpg_urkl_seq N = 10^6 within noise of each other (0.18–0.19 s at
#: 1 thread, 0.13–0.14 s at 2). Smaller chunks pay the ~150 op dispatches per chunk more often; larger ones leave L2.
DEFAULT_CHUNK_SLOTS = 1 << 18


# ------------------------------------------------------------------------------------------------ loss spec
@dataclass(frozen=True)
class LossSpec:
    """What the engine differentiates.

    Attributes:
      loss_fn: ``loss_fn(logp [B, T], batch: RolloutBatch) -> scalar`` or ``(scalar, diagnostics)``.
      group_size: G, rows per group (the unit of the expectation).
      aggregation: the aggregation mode of ``loss_fn`` (an ``rlkl.options.AggMode`` or its value), needed to batch many
        groups into one call; None → one call per group (route ``loop``).
      coupling: how rows of a group interact: ``"none"`` (row-separable), ``"rewards"`` (only through the
        others' rewards), ``"full"`` (through their content), ``"batch"`` (through batch statistics: one call per
        group).
      name: label for records.
      method: the ``rlkl.methods.Method`` when built from one.
    """

    loss_fn: Callable
    group_size: int
    aggregation: Optional[AggMode] = None
    coupling: str = "full"
    name: str = "loss_fn"
    method: Any = None

    def __post_init__(self):
        if self.aggregation is not None:
            object.__setattr__(self, "aggregation", coerce(AggMode, "LossSpec.aggregation", self.aggregation))
        if self.coupling not in COUPLINGS:
            raise ValueError(f"LossSpec.coupling={self.coupling!r} is not one of {list(COUPLINGS)}")


def coupling(method: Any, mdp: TreeMDP) -> str:
    """How the rows of one group interact in ``method.loss`` on ``mdp`` (see `LossSpec.coupling`).

    * an advantage with batch statistics (``advantage.couples_batch``) → ``"batch"``;
    * an aggregation whose row weights depend on the other rows' lengths (token-mean) with variable lengths, or
      a KL fused into the reward of a group-coupled advantage (the others' log-ratios enter the baseline)
      → ``"full"``;
    * an advantage that reads the other rows' lengths or token values (``Advantage.couples_beyond_rewards``)
      → ``"full"``;
    * other group-coupled advantages → ``"rewards"``; otherwise ``"none"``.

    Pass `toy_equivalent(method)` for batch statistics that have a per-group form.
    """
    adv = method.advantage
    if adv.couples_batch:
        return "batch"
    if not mdp.fixed_length and method.aggregation.couples_rows:
        return "full"
    if method.is_group_based:
        beyond = adv.couples_beyond_rewards(mdp.fixed_length, _kl_token_penalty(method))
        return "full" if _kl_enters_group_baseline(method) or beyond else "rewards"
    return "none"


def _kl_token_penalty(method: Any) -> bool:
    """True when a per-token KL penalty is subtracted from the token advantages (reward-to-go, FRPO)."""
    return method.kl_active and method.kl.reads_rollout_logprobs and not _kl_enters_group_baseline(method)


def toy_equivalent(method: Any) -> Any:
    """``method`` with batch statistics of its advantage taken per group (``Advantage.per_group``).

    The engine's unit of expectation is one group of G responses to one prompt, evaluated as its own batch; on
    such a batch the two are equal, and the per-group form lets the engine batch many groups into one call."""
    adv = method.advantage
    if adv.couples_batch and not adv.per_group().couples_batch:
        return method.replace(advantage=adv.per_group())
    return method


def _kl_enters_group_baseline(method: Any) -> bool:
    """True when the rollout KL is fused into the reward that the group advantage normalizes (a reward-to-go KL
    is added per row after the advantage, so it does not couple rows)."""
    from rlkl.components import KLReward, RewardForm

    return method.kl_active and isinstance(method.kl, KLReward) and method.kl.form is RewardForm.FUSED


def loss_spec(method_or_fn: Any, mdp: TreeMDP, group_size: Optional[int] = None, aggregation: Optional[str] = None,
              coupling_: Optional[str] = None, name: Optional[str] = None) -> LossSpec:
    """Normalize a Method, a `LossSpec` or a callable ``loss_fn(logp, batch)`` into a `LossSpec`.

    Args:
      method_or_fn: ``rlkl.methods.Method`` (its ``loss`` is called), a `LossSpec`, or a callable.
      group_size: G (required for callables; default 4 for group-based Methods, 1 otherwise).
      aggregation, coupling_: override what is known about a callable (default: unknown → one call per group).
    Returns:
      LossSpec.
    """
    if isinstance(method_or_fn, LossSpec):
        return method_or_fn
    from rlkl.methods import Method

    if isinstance(method_or_fn, Method):
        m = method_or_fn
        G = group_size if group_size is not None else (4 if m.is_group_based else 1)
        if G < m.advantage.min_group_size:
            raise ValueError(f"method {m.name!r} is group-based ({type(m.advantage).__name__}); group_size must be "
                             f">= {m.advantage.min_group_size}, got {G}")
        toy = toy_equivalent(m)  # a batch statistic taken per group: the same on the engine's one-group unit
        return LossSpec(toy.loss, int(G), m.aggregation.mode, coupling_ or coupling(toy, mdp), name or m.name, m)
    if callable(method_or_fn):
        if group_size is None:
            raise ValueError("a callable loss_fn needs group_size=")
        return LossSpec(method_or_fn, int(group_size), aggregation, coupling_ or "full",
                        name or getattr(method_or_fn, "__name__", "loss_fn"))
    raise ValueError(f"expected a Method, LossSpec or callable loss_fn(logp, batch), got {type(method_or_fn).__name__}")


# ------------------------------------------------------------------------------------------------ data
class _Tokens:
    """The ``[P·N, T]`` token log-probs of one policy (detached; 0 on padding), read a chunk of rows at a time.

    For a policy with the generic `Policy.token_logp` (a gather of its node log-probs) only the node table
    ``[P, S·V]`` is kept and each chunk gathers its own rows (`rows`): the same values, bit for bit, as the whole
    array, which is built only when read whole (`full`). Another policy gives the whole array at once."""

    __slots__ = ("table", "flat", "mask", "N", "T", "_full", "memo")

    def __init__(self, table: Optional[Tensor], flat: Optional[Tensor], mask: Optional[Tensor], N: int, T: int,
                 full: Optional[Tensor] = None, memo: Optional[dict] = None):
        self.table, self.flat, self.mask, self.N, self.T, self._full = table, flat, mask, N, T, full
        self.memo = {} if memo is None else memo  # values derived from the table alone (`_sequence_sums`)

    def full(self) -> Tensor:
        if self._full is None:
            P = self.table.shape[0]
            self._full = self.rows(slice(0, P * self.N))
        return self._full

    def rows(self, rows: Tensor | slice, index: Optional[tuple] = None) -> Tensor:
        """``[B, T]`` the rows ``rows`` (indices b = x·N + n, or a slice of consecutive rows); ``index``: their
        `index` (shared by the policies of one chunk)."""
        if self._full is not None:
            return self._full[rows]
        idx, mask = self.index(rows) if index is None else index
        tok = self.table.view(-1).index_select(0, idx).view(-1, self.T)
        return tok if mask is None else torch.where(mask, tok, 0.0)  # 0 on padding

    def rows_t(self, rows: "_TMajor", index: tuple[Tensor, Optional[Tensor]]) -> Tensor:
        """``[B, T]`` the rows of one prompt's range ``rows``, T-major (``[T, B]`` storage seen as ``[B, T]``):
        one gather per position t from the prompt's node table row, with ``index`` = `_TMajor.index` (``[T, B]``
        views of the T-major flat index and mask)."""
        idx, mask = index
        src = self.table[rows.x]  # [S·V] the prompt's node-token log-probs
        out = torch.empty(idx.shape, dtype=src.dtype, device=src.device)  # [T, B]
        for t in range(idx.shape[0]):
            torch.index_select(src, 0, idx[t], out=out[t])
        return (out if mask is None else torch.where(mask, out, 0.0)).t()  # 0 on padding

    def index(self, rows: Tensor | slice) -> tuple[Tensor, Optional[Tensor]]:
        """(``[B·T]`` flat index of the rows' token slots into the ``[P·S·V]`` node table, ``[B, T]`` mask or None)."""
        P, N, T = self.table.shape[0], self.N, self.T
        if isinstance(rows, slice) and P == 1:
            idx = self.flat[rows.start * T:rows.stop * T]  # a view: no index is built
            mask = None if self.mask is None else self.mask[rows]
        else:
            if isinstance(rows, slice):
                rows = torch.arange(rows.start, rows.stop)
            if P == 1:
                n, idx = rows, self.flat.view(N, T)[rows].reshape(-1)
            else:
                x = torch.div(rows, N, rounding_mode="floor")
                n = rows - x * N
                idx = (self.flat.view(N, T)[n] + (x * self.table.shape[1]).unsqueeze(1)).reshape(-1)
            mask = None if self.mask is None else self.mask[n]
        return idx, mask


@dataclass(frozen=True)
class _Repeat:
    """Rows ``start … stop − 1`` of the stacked enumeration, the whole range repeated ``times`` times (``[B]`` with
    B = times·(stop − start), entry k·n + i = row start + i): a chunk of the first-row route, where every response
    heads M groups. Its arrays are the distinct rows read once and copied as blocks (`spread`), not gathered row by
    row."""

    start: int
    stop: int
    times: int

    @property
    def base(self) -> slice:
        return slice(self.start, self.stop)

    def spread(self, x: Tensor) -> Tensor:
        """``[n, …]`` → ``[times·n, …]``: ``times`` copies of the block, row i at rows k·n + i."""
        return torch.cat([x] * self.times)  # block copies (Tensor.repeat is ~3.5x slower here)

    def collapse(self, x: Tensor) -> Tensor:
        """``[times·n, …]`` → ``[n, …]``: the sum over each row's copies (what the copies add to that row)."""
        return x.view(self.times, -1, *x.shape[1:]).sum(0)


@dataclass(frozen=True)
class _TMajor:
    """Rows x·N + start … x·N + stop − 1 (the responses start … stop − 1 of prompt x), their ``[B, T]`` arrays held
    T-major: ``[T, B]`` storage seen as ``[B, T]`` (a chunk of the per-sample route of a Method's loss). Same values
    as the row-major arrays; the loss's row reductions over T run as vectorized adds of ``[B]`` columns, and each
    node-token entry still receives its slots' coefficients in increasing row order (an entry at depth t is read
    only at position t), so the node sums are the row-major ones, bit for bit.

    ``flat_t``, ``mask_t``: ``[T, N]`` node·V + token and mask per position (`_t_major_index`); ``padded``: some
    response is shorter than T (the gathered log-probs are then set to 0 on padding)."""

    x: int
    start: int
    stop: int
    N: int
    flat_t: Tensor = field(repr=False, compare=False)
    mask_t: Tensor = field(repr=False, compare=False)
    padded: bool

    @property
    def base(self) -> slice:
        return slice(self.x * self.N + self.start, self.x * self.N + self.stop)

    def index(self) -> tuple[Tensor, Optional[Tensor]]:
        """(``[T, B]`` node·V + token of the rows' slots, ``[T, B]`` mask or None): views, no copies."""
        return (self.flat_t[:, self.start:self.stop], self.mask_t[:, self.start:self.stop] if self.padded else None)

    @property
    def mask(self) -> Tensor:
        """``[B, T]`` the rows' mask (a view of the T-major mask)."""
        return self.mask_t[:, self.start:self.stop].t()


@dataclass
class _Data:
    """Stacked enumeration data of the three policies (rows b = x·N + n).

    ``logp`` / ``logp_old`` / ``logp_ref`` are the ``[P·N, T]`` arrays, built when first read; the routes read
    their chunks with `take` (gathered from the node tables, no ``[P·N, T]`` array at all)."""

    tok: _Tokens  # current policy, detached
    tok_old: _Tokens
    tok_ref: _Tokens
    mask: Tensor  # [P·N, T]
    rewards: Tensor  # [P·N]
    q: Tensor  # [P, N] behaviour distribution (normalized)
    rho: Tensor  # [P]
    N: int
    T: int
    logp_graph: Optional[Tensor] = None  # [P·N, T] current policy with its autograd graph to θ (for the chain rule)
    logp_rollout: Optional[Tensor] = None  # [P·N, T] the sampler's reported log-probs (None: q = π_old)
    kept_logmass: Optional[Tensor] = None  # [P·N, T] log π_old mass on the sampler's kept set
    chain_policy: Optional[Policy] = None  # the policy whose token log-probs the loss sees (π_θ, or π_θ^K replayed)
    sampled: Optional[Policy] = None  # the behaviour distribution q when a sampler is given
    finite_sums: Optional[Tensor] = None  # [P·N] bool: the row sums of logp and logp_old are finite
    all_finite: bool = False  # every entry of logp and logp_old is finite (read from the node tables)
    _last_index: Optional[tuple] = field(default=None, repr=False)  # (rows, `_Tokens.index(rows)`)
    mdp: Optional[TreeMDP] = field(default=None, repr=False)  # the tree (its cached indices)

    @property
    def logp(self) -> Tensor:
        return self.tok.full()

    @property
    def logp_old(self) -> Tensor:
        return self.tok_old.full()

    @property
    def logp_ref(self) -> Tensor:
        return self.tok_ref.full()

    def token_index(self, rows: Tensor | slice) -> tuple[Tensor, Optional[Tensor]]:
        """`_Tokens.index` of ``rows`` (kept for the last ``rows``: one build per chunk)."""
        last = self._last_index
        if last is None or last[0] is not rows:
            last = self._last_index = (rows, rows.index() if isinstance(rows, _TMajor) else self.tok.index(rows))
        return last[1]

    def take(self, name: str, rows: "Tensor | slice | _Repeat") -> Tensor:
        """Rows ``rows`` of the field ``name`` (the token log-probs gathered for these rows only; the gather index
        of the last ``rows`` is kept, so the three policies of one chunk build it once)."""
        if isinstance(rows, _Repeat):  # the distinct rows read once, then each copied `times` times
            return rows.spread(self.take(name, rows.base))
        tokens = {"logp": self.tok, "logp_old": self.tok_old, "logp_ref": self.tok_ref}.get(name)
        if isinstance(rows, _TMajor):
            if name == "mask":
                return rows.mask
            if tokens is None:
                return getattr(self, name)[rows.base]
            return tokens.rows_t(rows, self.token_index(rows))
        if tokens is None:
            return getattr(self, name)[rows]
        if tokens.table is None or self.tok.table is None or tokens.table.shape != self.tok.table.shape:
            return tokens.rows(rows)
        return tokens.rows(rows, self.token_index(rows))


def _prepare(mdp: TreeMDP, policy: Policy, behaviour: Optional[Policy], ref: Optional[Policy],
             keep_graph: bool = True, sampler: Any = None, replay: bool = False) -> _Data:
    if policy.mdp is not mdp:
        raise ValueError("policy was built on a different TreeMDP")
    behaviour = behaviour if behaviour is not None else policy
    for name, pol in (("behaviour", behaviour), ("ref", ref)):
        if pol is not None and pol.mdp is not mdp:
            raise ValueError(f"{name} policy was built on a different TreeMDP")
    P, N = mdp.num_prompts, mdp.num_responses
    sampled = None
    if sampler is not None:  # the engine samples q = sampler(π_old); a mask-replaying trainer sees π^K
        from rlkl.toy.samplers import SampledPolicy, replayed_policy

        sampled = SampledPolicy(behaviour, sampler)
        if replay:
            policy, behaviour = replayed_policy(policy, sampled), replayed_policy(behaviour, sampled)
    tok, graph = _token_logp(policy, keep_graph)  # the graph is reused by `_chain`
    with torch.no_grad():
        tok_old = tok if behaviour is policy else _token_logp(behaviour, False)[0]
        tok_ref = _token_logp(ref, False)[0] if ref is not None else tok_old
        # [P·N] row sums; a row is finite if its sum is (and vice versa unless the sum overflows: the checks below
        # then look at the row itself). π_θ's (and π_ref's) are needed only where a check reads them.
        sum_old = _sequence_sums(tok_old, mdp)
        sum_pi = sum_old if tok_old is tok else None
        q, q_has_zero = _behaviour_q(tok_old, sum_old, sampled, P, N)
        all_finite = _all_finite(tok) and (tok_old is tok or _all_finite(tok_old))
    live = mdp.prompt_probs > 0
    if sampled is not None:
        _check_sampler_support(mdp, q, tok_old.full(), live)
    bad = None
    if sampled is None and q_has_zero:
        bad = (q == 0) & live[:, None]  # then where the target has mass (its exp is read only where q = 0)
        sum_pi = _sequence_sums(tok, mdp) if sum_pi is None else sum_pi
        bad = bad & (sum_pi.reshape(P, N).exp() > 0)
    if bad is not None and bool(bad.any()):
        # under a sampler, the cut mass is the bias being measured
        x, n = [int(v) for v in bad.nonzero()[0]]
        raise ValueError(
            f"behaviour policy has zero probability where the target policy has mass ({int(bad.sum())} response(s), "
            f"e.g. prompt {x}, response {mdp.responses()[n]}): the expected gradient under π_old cannot see them; "
            "use a behaviour policy with full support on the target's support")
    if ref is not None and not _all_finite(tok_ref) and not _rows_finite(
            tok_ref, sum_old if tok_ref is tok_old else _sequence_sums(tok_ref, mdp), (q > 0).reshape(-1)):
        raise ValueError("the reference policy has zero probability on a response in the support of the behaviour "
                         "policy: the KL to π_ref is infinite")
    e = mdp.enumerate()
    mask = e.mask if P == 1 else e.mask.repeat(P, 1)  # [P·N, T] as `TreeMDP.stacked` (no copy for one prompt)
    if not all_finite:
        sum_pi = _sequence_sums(tok, mdp) if sum_pi is None else sum_pi
    data = _Data(tok, tok_old, tok_ref, mask, mdp.rewards.reshape(-1), q, mdp.prompt_probs, N, mdp.horizon,
                 graph, chain_policy=policy, all_finite=all_finite,
                 finite_sums=None if all_finite else torch.isfinite(sum_pi) & torch.isfinite(sum_old), mdp=mdp)
    if sampled is not None:
        data.sampled = sampled
        data.logp_rollout = sampled.reported_token_logp()
        data.kept_logmass = sampled.kept_logmass(sampled.base)
    return data


def _behaviour_q(tok_old: _Tokens, sum_old: Tensor, sampled: Any, P: int, N: int) -> tuple[Tensor, bool]:
    """(``[P, N]`` q, the distribution groups are drawn from — π_old's, or the sampler's — and whether some q may be
    0: read for π_old's, True under a sampler, whose cut mass is not checked). π_old's is kept in its table's memo
    (`_cached_tokens`: one softmax and one scan per table, not per call)."""
    if sampled is not None:
        return torch.softmax(sampled.token_logp().sum(-1).reshape(P, N), dim=-1), True
    memo = tok_old.memo
    if "q" not in memo:
        memo["q"] = torch.softmax(sum_old.reshape(P, N), dim=-1)
        memo["q_has_zero"] = bool((memo["q"] == 0).any())
    return memo["q"], memo["q_has_zero"]


def _check_sampler_support(mdp: TreeMDP, q: Tensor, logp_old: Tensor, live: Tensor) -> None:
    """The trainer needs a finite log π_old for every token the sampler can emit."""
    P, N = q.shape
    unscored = (~torch.isfinite(logp_old)).any(-1).reshape(P, N)
    bad = (q > 0) & unscored & live[:, None]
    if bool(bad.any()):
        x, n = [int(v) for v in bad.nonzero()[0]]
        raise ValueError(f"the sampler emits a response the trainer's π_old gives zero probability (prompt {x}, "
                         f"response {mdp.responses()[n]}): the importance ratio π_old/q is undefined there")


@dataclass
class _NodeGraph:
    """The chain rule at the node level: ``nlp`` = ``[P, S, V]`` node log-probs with their graph to θ; the token
    log-probs are the gather ``nlp.reshape(P, S·V)[:, flat]`` (``flat`` = node·V + token per response slot)."""

    nlp: Tensor
    flat: Tensor  # [N·T] long
    mask: Optional[Tensor] = None  # [N·T] bool, False on padding (None: fixed length, no padding)


def _flat_token_index(mdp: TreeMDP) -> Tensor:
    """``[N·T]`` index node·V + token of every response slot (0 on padding), cached on the tree."""
    cache = mdp._cache
    if "flat_token_index" not in cache:
        e = mdp.enumerate()
        cache["flat_token_index"] = (e.node_index * mdp.vocab_size + e.tokens).reshape(-1)
    return cache["flat_token_index"]


def _t_major_index(mdp: TreeMDP) -> tuple[Tensor, Tensor]:
    """(``[T, N]`` node·V + token, ``[T, N]`` mask) per position: `_flat_token_index` and the mask transposed,
    cached on the tree (the index of `_TMajor` chunks)."""
    cache = mdp._cache
    if "t_major_index" not in cache:
        N, T = mdp.num_responses, mdp.horizon
        cache["t_major_index"] = (_flat_token_index(mdp).view(N, T).t().contiguous(),
                                  mdp.enumerate().mask.t().contiguous())
    return cache["t_major_index"]


def _token_logp(policy: Policy, keep_graph: bool) -> tuple[_Tokens, Any]:
    """(the detached token log-probs `_Tokens`, what `_chain` needs to apply the chain rule to θ, or None).

    A policy that keeps the generic `Policy.token_logp` (a gather of its node log-probs) keeps its node table and
    has its chain rule applied at the node level — the same values, bit for bit, without an autograd graph over
    the ``[P·N, T]`` gather (nor that array); a policy with its own ``token_logp`` through autograd."""
    mdp = policy.mdp
    N, T = mdp.num_responses, mdp.horizon
    if not keep_graph and _table_cacheable(policy):
        return _cached_tokens(policy), None
    if type(policy).token_logp is not Policy.token_logp:
        graph = policy.token_logp() if keep_graph else None
        with torch.no_grad():
            full = graph.detach() if graph is not None else policy.token_logp()
        return _Tokens(None, None, None, N, T, full=full), graph
    nlp = policy.node_log_probs() if keep_graph else None
    with torch.no_grad():
        src = nlp.detach() if nlp is not None else policy.node_log_probs()  # [P, S, V]
    flat = _flat_token_index(mdp)
    mask = None if mdp.fixed_length else mdp.enumerate().mask
    tokens = _Tokens(src.reshape(src.shape[0], -1), flat, mask, N, T)
    return tokens, (_NodeGraph(nlp, flat, None if mask is None else mask.reshape(-1)) if keep_graph else None)


class _CachedTable(NamedTuple):
    """What `_cached_tokens` keeps for one policy read without its graph."""

    theta: Tensor  # a copy of θ when the table was built
    table: Tensor  # [P, S·V] its node log-probs
    memo: dict  # values derived from the table alone (`_Tokens.memo`)
    mdp: TreeMDP  # the tree they were built on


_TABLE_CACHE: "weakref.WeakKeyDictionary[Policy, _CachedTable]" = weakref.WeakKeyDictionary()


def _table_cacheable(policy: Policy) -> bool:
    """True for a policy whose token log-probs are a function of θ alone, through rlkl's own code: a
    `TabularPolicy` that keeps its `node_log_probs` and the generic `Policy.token_logp` (a user's override may read
    other state)."""
    cls = type(policy)
    return (isinstance(policy, TabularPolicy) and cls.node_log_probs is TabularPolicy.node_log_probs
            and cls.token_logp is Policy.token_logp)


def _cached_tokens(policy: Policy) -> _Tokens:
    """`_token_logp` of a policy read without its graph (π_old, π_ref), its node table reused from the last call
    while θ holds the same values.

    A training loop or a sweep evaluates many gradients against one fixed π_ref (and one π_old per outer step): the
    log-softmax of its ``[P, S, V]`` logits and the prefix sums of its responses' log-probs (`_sequence_sums`) are
    then built once. The check is on θ's values (``torch.equal`` with a copy, one read of θ), not on its version
    counter, so any change — in place, through ``.data``, or a new tensor — rebuilds the table."""
    mdp = policy.mdp
    theta = policy.theta.detach()
    hit = _TABLE_CACHE.get(policy)
    if (hit is None or hit.mdp is not mdp or hit.theta.shape != theta.shape or hit.theta.dtype != theta.dtype
            or hit.theta.device != theta.device or not torch.equal(hit.theta, theta)):
        with torch.no_grad():
            src = policy.node_log_probs()  # [P, S, V]
        hit = _TABLE_CACHE[policy] = _CachedTable(theta.clone(), src.reshape(src.shape[0], -1), {}, mdp)
    mask = None if mdp.fixed_length else mdp.enumerate().mask
    # a fresh wrapper per call (its whole [P·N, T] array, when read, is not kept past the call); the table and
    # the memo are shared
    return _Tokens(hit.table, _flat_token_index(mdp), mask, mdp.num_responses, mdp.horizon, memo=hit.memo)


def _prefix_index(mdp: TreeMDP) -> tuple[list[tuple[int, int, Tensor]], Tensor, Tensor]:
    """The tree's prefix recursion, cached: per depth t ≥ 1 (first node id, end, ``[nodes]`` parent·V + token of
    each node), and per response its last slot's node and node·V + token (``[N]`` each)."""
    cache = mdp._cache
    if "prefix_index" not in cache:
        e, V = mdp.enumerate(), mdp.vocab_size
        levels = []
        for t in range(1, mdp.horizon):
            ids = (e.node_depth == t).nonzero().squeeze(1)  # depth-major: a contiguous range of ids
            levels.append((int(ids[0]), int(ids[-1]) + 1, e.node_parent[ids] * V + e.node_parent_token[ids]))
        last = (e.lengths - 1).unsqueeze(1)
        node = e.node_index.gather(1, last).squeeze(1)
        cache["prefix_index"] = (levels, node, node * V + e.tokens.gather(1, last).squeeze(1))
    return cache["prefix_index"]


def _all_finite(tokens: _Tokens) -> bool:
    """True when every token log-prob of every response is finite, read from the node table (S·V entries per
    prompt, not N·T): every (node, token) entry is emitted by some response, so the two are the same condition.
    False for a policy without a node table (its rows are checked instead)."""
    if tokens.table is None:
        return False
    # a finite sum has finite entries (a nan or ±inf entry makes it nan or ±inf): one reduction, no [S·V] masks;
    # entries only when the sum is not finite (one is not, or finite entries overflowed the sum)
    return bool(torch.isfinite(tokens.table.sum())) or bool(torch.isfinite(tokens.table).all())


def _sequence_sums(tokens: _Tokens, mdp: TreeMDP) -> Tensor:
    """``[P·N]`` Σ_t log π(a_t|s_t) per response. From a node table by the prefix recursion (c(root) = 0,
    c(child) = c(parent) + log π(token|parent); a response's sum is c(its last node) + its last log-prob): the
    tokens added left to right, O(nodes + responses) instead of a pass over ``[P·N, T]``."""
    if tokens.table is None:
        return tokens.full().sum(-1)
    if "sums" in tokens.memo:
        return tokens.memo["sums"]
    table = tokens.table  # [P, S·V]
    levels, last_node, last_flat = _prefix_index(mdp)
    cum = torch.zeros(table.shape[0], mdp.num_nodes, dtype=table.dtype)
    for start, stop, parent_flat in levels:
        cum[:, start:stop] = cum.index_select(1, torch.div(parent_flat, mdp.vocab_size, rounding_mode="floor")) \
            + table.index_select(1, parent_flat)
    sums = tokens.memo["sums"] = (cum.index_select(1, last_node) + table.index_select(1, last_flat)).reshape(-1)
    return sums


def make_batch(data: _Data, rows: Tensor, group_size: int):
    """A `RolloutBatch` of the enumerated responses ``rows`` (``[B]`` indices into the stacked enumeration).

    Log-probs are 0 on padding already (`Policy.token_logp`). When π_ref's token log-probs are π_old's (no π_ref
    given, or one the loss does not read: `_reads_ref`, `_expected_gradient`) the rows are gathered once and the
    batch's ``logp_ref`` field holds ``logp_old``'s."""
    from rlkl.methods import RolloutBatch

    extra = {k: data.take(k, rows) for k in ("logp_rollout", "kept_logmass") if getattr(data, k) is not None}
    logp_old = data.take("logp_old", rows)
    logp_ref = logp_old if data.tok_ref is data.tok_old else data.take("logp_ref", rows)
    return RolloutBatch(logp_old, logp_ref, data.take("mask", rows), data.take("rewards", rows), group_size, **extra)


def _reads_ref(spec: LossSpec) -> bool:
    """False only for a Method whose loss value and gradient do not read π_ref (`Method.uses_reference`: no KL to
    π_ref; π_ref then enters only the ``kl/*`` diagnostics, which the engine does not read)."""
    method = _engine_method(spec)
    return method is None or method.uses_reference


def _engine_method(spec: LossSpec) -> Any:
    """The Method whose own ``loss`` ``spec`` runs (``loss_spec(method)``), or None for another callable."""
    from rlkl.methods import Method

    owner = getattr(spec.loss_fn, "__self__", None)
    if isinstance(owner, Method) and getattr(spec.loss_fn, "__func__", None) is Method.loss:
        return owner
    return None


def _call(spec: LossSpec, logp: Tensor, batch, **loss_kwargs) -> Tensor:
    """The scalar loss of ``spec`` on one batch. Inside the engine's trusted block (values validated once,
    `_check_support_values`) a Method's loss runs with ``validate=False``: no host sync; the finiteness of the loss
    is a deferred check (`rlkl._checks.require`)."""
    method = _engine_method(spec) if values_trusted() else None
    if method is not None:
        out = method.loss(logp, batch, validate=False, **loss_kwargs)
    else:
        out = spec.loss_fn(logp, batch, **loss_kwargs)
    loss = out[0] if isinstance(out, tuple) else out
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError(f"{spec.name}: loss_fn must return a scalar tensor (or (scalar, diagnostics))")
    if method is not None:
        require(torch.isfinite(loss), _raise_nonfinite_loss)
    return loss


def _raise_nonfinite_loss() -> None:
    raise ValueError("loss contains non-finite values (nan/inf); check the log-probs upstream")


def _rows_finite(x: "_Tokens", sums: Tensor, rows: Tensor) -> bool:
    """True when every row ``rows`` (``[B]`` bool) of ``x`` (``[B, T]``) is finite, read from the row sums ``[B]``
    (one pass already made), and from the rows themselves only when a sum is not finite (an overflow)."""
    if bool((torch.isfinite(sums) | ~rows).all()):
        return True
    return bool(torch.isfinite(x.full()[rows]).all())


def _check_support_values(data: _Data) -> None:
    """The engine's one validation of the values its trusted loss calls read: the log-probs of every response in
    the support of a live prompt are finite (the messages of ``Method.loss`` / ``RolloutBatch``)."""
    if data.all_finite:
        return  # every node table is finite, so is every token log-prob
    rows = ((data.rho > 0)[:, None] & (data.q > 0)).reshape(-1)
    if data.finite_sums is not None and bool((data.finite_sums | ~rows).all()):
        return  # every row's sum is finite, so is every entry
    check_float("logp", data.logp[rows])
    check_float("logp_old", data.logp_old[rows])


def _raise_variable_token_mean() -> None:
    raise ValueError("token-mean with variable lengths couples the rows of a group; use another route")


def _group_factors(spec: LossSpec, mask: Tensor, G: int, per_row_unit: bool) -> Tensor:
    """``[B]`` factors f_i with ∂L_group/∂logp_i = f_i · ∂L_batch/∂logp_i (per-token losses local to groups).

    All aggregation modes are means over rows except ``token-mean`` (mean over the batch's tokens):
    seq-mean-* / seq-mean-token-sum-norm: f = (#groups in the batch) (or #rows when the unit is one row);
    token-mean: f = (#tokens in the batch)/(#tokens in the row's group) (or per row: #tokens/T, fixed length).
    """
    B = mask.shape[0]
    if spec.aggregation is None:
        raise ValueError("batched routes need the loss's aggregation mode")
    if spec.aggregation is AggMode.TOKEN_MEAN:
        total = mask.sum().to(torch.float64)
        if per_row_unit:
            lengths = mask.sum(-1).to(torch.float64)
            require((lengths == lengths[0]).all(), _raise_variable_token_mean)
            return (total / lengths).to(torch.float64)
        per_group = mask.view(-1, G, mask.shape[1]).sum((1, 2)).to(torch.float64)  # [B/G]
        return (total / per_group).repeat_interleave(G)
    n_units = B if per_row_unit else B // G
    return torch.full((B,), float(n_units), dtype=torch.float64)


class _Coef:
    """Where the routes add Σ weight·∂L/∂logp: the ``[P·N, T]`` per-slot coefficients (``dense``), or — when the
    chain rule runs at the node level (`_NodeGraph`) and nobody asked for them — straight into the ``[P, S·V]``
    node-token gradient (each chunk's slots summed into their node·token entries: no ``[P·N, T]`` array; the same
    sums as the dense chain rule when rows come once each in increasing order)."""

    def __init__(self, data: _Data, dense: bool):
        self.data = data
        node_level = isinstance(data.logp_graph, _NodeGraph) and data.tok.table is not None and not dense
        self.node = torch.zeros_like(data.tok.table) if node_level else None  # [P, S·V]
        self.dense = None if node_level else torch.zeros(data.q.numel(), data.T, dtype=torch.float64)

    def add(self, rows: "Tensor | slice | _Repeat", contrib: Tensor) -> None:
        """Add ``contrib`` ``[B, T]`` at the rows ``rows`` (a slice: each row once; indices may repeat)."""
        if isinstance(rows, _Repeat):  # each row's copies summed first, then added once
            rows, contrib = rows.base, rows.collapse(contrib)
        if isinstance(rows, _TMajor):
            # added row-major (a copy): the slots of one row are added together, as for a slice. T-major, every
            # depth-0 slot would be added to the same few entries back to back (a chain of dependent additions,
            # measured ~2x slower)
            rows, contrib = rows.base, contrib.contiguous()
        if self.node is not None:
            idx, mask = self.data.token_index(rows)
            if mask is not None:  # padding is a constant 0 in the token log-probs: no gradient reaches θ from it
                contrib = torch.where(mask, contrib, 0.0)
            self.node.view(-1).index_add_(0, idx, contrib.reshape(-1))
        elif isinstance(rows, slice):
            self.dense[rows] += contrib
        else:
            self.dense.index_add_(0, rows, contrib)


def _accumulate(spec: LossSpec, data: _Data, rows: "Tensor | slice | _Repeat", weights: Tensor, coef: _Coef, G: int,
                per_row_unit: bool, unit_scale: float = 1.0, **loss_kwargs) -> None:
    """Add Σ_rows weight·∂L_group/∂logp into ``coef`` (`_Coef`) for one chunk of complete groups.

    ``rows``: indices into the stacked enumeration, a slice of consecutive rows (then the batch holds views, no
    copies), or a `_Repeat` (a range of rows read once, repeated). ``unit_scale`` multiplies the group factors (the
    first-row route: 1/G)."""
    batch = make_batch(data, rows, G)
    leaf = data.take("logp", rows).detach().requires_grad_(True)  # a fresh leaf, 0 on padding
    loss = _call(spec, leaf, batch, **loss_kwargs)
    (g,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    if g is None:
        return
    factor = _group_factors(spec, batch.mask, G, per_row_unit)
    if unit_scale != 1.0:
        factor = factor * unit_scale
    scale = (weights * factor).unsqueeze(1)  # [B, 1]
    if isinstance(rows, _TMajor):  # the product written row-major (one pass), as `_Coef.add` reads it
        coef.add(rows, torch.mul(g, scale, out=torch.empty(g.shape, dtype=g.dtype, device=g.device)))
    else:
        coef.add(rows, g * scale)


def _chunks(n_groups: int, G: int, T: int, chunk_slots: int):
    per = max(1, chunk_slots // max(1, G * T))
    for start in range(0, n_groups, per):
        yield start, min(n_groups, start + per)


# ------------------------------------------------------------------------------------------------ result
class ExpectedGradient:
    """Result of `expected_gradient`.

    Attributes:
      grad: E[∇_θ L], shaped like ``policy.theta``.
      coef: ``[P·N, T]`` E-weighted ∂L/∂logp per (response, token): grad = Σ coef·∇_θ logp. When the chain rule
        ran at the node level (no ``[P·N, T]`` array was needed) it is computed on first read, by the same route
        over the same data (the same values, bit for bit, as accumulating it the first time); the constructor
        takes the tensor or a zero-argument function giving it.
      route: the route used; num_groups: groups (or rows) evaluated; seconds: wall time.
    """

    def __init__(self, grad: Tensor, coef: Tensor | Callable[[], Tensor], route: str, num_groups: int,
                 seconds: float, extra: Optional[dict] = None):
        self.grad, self._coef, self.route, self.num_groups, self.seconds = grad, coef, route, num_groups, seconds
        self.extra = {} if extra is None else extra

    @property
    def coef(self) -> Tensor:
        if not isinstance(self._coef, Tensor):
            self._coef = self._coef()
        return self._coef

    def __repr__(self) -> str:
        return (f"ExpectedGradient(grad={self.grad!r}, route={self.route!r}, num_groups={self.num_groups}, "
                f"seconds={self.seconds:.3g})")


def _chain(policy: Policy, coef: _Coef, tl: Any = None) -> Tensor:
    """Σ_{y,t} coef[y, t]·∇_θ log π_θ(a_t|s_t) (one backward pass through the enumerated log-probs; at the node
    level for a `_NodeGraph`: the per-slot coefficients summed into node·token entries — by the routes already
    when ``coef.node`` — then one backward)."""
    if isinstance(tl, _NodeGraph):
        P = tl.nlp.shape[0]
        grad_nlp = coef.node
        if grad_nlp is None:
            grad_nlp = torch.zeros(P, tl.nlp[0].numel(), dtype=coef.dense.dtype)
            slots = coef.dense.view(P, -1)  # [P, N·T]
            if tl.mask is not None:  # padding is a constant 0 in the token log-probs: no gradient reaches θ from it
                slots = torch.where(tl.mask, slots, 0.0)
            grad_nlp.index_add_(1, tl.flat, slots)
        outputs, grads = tl.nlp, grad_nlp.view_as(tl.nlp)
    else:
        outputs, grads = (policy.token_logp() if tl is None else tl), coef.dense
    (g,) = torch.autograd.grad(outputs, policy.theta, grad_outputs=grads, allow_unused=True)
    if g is None:
        return torch.zeros_like(policy.theta)
    return g


def _support(data: _Data, x: int) -> Tensor:
    return (data.q[x] > 0).nonzero().squeeze(1)


def _per_sample_rows(data: _Data) -> tuple[Tensor, Tensor]:
    """(``[n]`` the rows of the live prompts' supports, increasing; ``[n]`` their weights ρ(x)q(y))."""
    P, N = data.q.shape
    if bool((data.rho > 0).all() & (data.q > 0).all()):  # every row: no index to build
        return torch.arange(P * N), (data.rho[:, None] * data.q).reshape(-1)
    rows_all, w_all = [], []
    for x in range(P):
        if data.rho[x] == 0:
            continue
        sup = _support(data, x)
        rows_all.append(x * N + sup)
        w_all.append(data.rho[x] * data.q[x, sup])
    return torch.cat(rows_all), torch.cat(w_all)


def _route_per_sample(spec, data, coef, chunk_slots):
    G = spec.group_size
    rows, w = _per_sample_rows(data)
    n = rows.shape[0]
    first = int(rows[0])
    consecutive = int(rows[-1]) - first + 1 == n  # rows are increasing: consecutive iff the span is n
    per = max(G, (chunk_slots // max(1, data.T)) // G * G)
    if consecutive and first == 0 and n == data.q.numel() and _t_major_ok(spec, data, G):
        flat_t, mask_t = _t_major_index(data.mdp)
        padded = data.tok.mask is not None
        N = data.N
        for x in range(data.q.shape[0]):  # chunks inside one prompt: T-major views of its rows
            for start in range(0, N, per):
                stop = min(N, start + per)
                rows_t = _TMajor(x, start, stop, N, flat_t, mask_t, padded)
                _accumulate(spec, data, rows_t, w[x * N + start:x * N + stop], coef, G, per_row_unit=True)
        return n
    for start in range(0, n, per):
        stop = min(n, start + per)
        ww = w[start:stop]
        pad = (-(stop - start)) % G
        if consecutive and not pad:
            _accumulate(spec, data, slice(first + start, first + stop), ww, coef, G, per_row_unit=True)
            continue
        r = rows[start:stop]
        if pad:  # pad to a multiple of G with zero-weight copies (the batch must hold whole groups)
            r = torch.cat([r, r[:1].repeat(pad)])
            ww = torch.cat([ww, torch.zeros(pad, dtype=ww.dtype)])
        _accumulate(spec, data, r, ww, coef, G, per_row_unit=True)
    return n


#: `_t_major_ok`: the fewest token slots per prompt (N·T) for T-major chunks (below, their extra gathers cost more
#: than the vectorized reductions save)
T_MAJOR_MIN_SLOTS = 1 << 14


def _t_major_ok(spec: LossSpec, data: _Data, G: int) -> bool:
    """True when the per-sample route runs T-major chunks (`_TMajor`): the loss is a Method's own (whose code is
    tested on strided inputs; a user's callable gets contiguous row-major arrays), every policy has a node table of
    one shape, each prompt's responses split into whole groups, and a prompt holds at least `T_MAJOR_MIN_SLOTS`
    token slots."""
    tables = [t.table for t in (data.tok, data.tok_old, data.tok_ref)]
    return (_engine_method(spec) is not None and data.mdp is not None and data.N % G == 0
            and data.N * data.T >= T_MAJOR_MIN_SLOTS
            and all(t is not None and t.shape == tables[0].shape for t in tables))


def _tuples_for_prompt(data: _Data, x: int, G: int, max_groups: int) -> tuple[Tensor, Tensor]:
    sup = _support(data, x)
    n = sup.shape[0]
    count = n**G
    if count > max_groups:
        raise ValueError(f"exact enumeration of ordered G-tuples too large: {n} responses in the support of prompt {x}, "
                         f"G={G} → {n}^{G} = {count:,} groups > max_groups={max_groups:,}. Use the exchangeable route "
                         "(binary rewards: exact for any G), a smaller tree/G, or Monte Carlo")
    idx = torch.arange(count, dtype=torch.long)
    powers = n ** torch.arange(G - 1, -1, -1, dtype=torch.long)
    digits = (idx.unsqueeze(1) // powers) % n  # [count, G]
    resp = sup[digits]  # [count, G]
    probs = data.q[x][resp].prod(-1) * data.rho[x]  # [count]
    return x * data.N + resp, probs


def _route_tuples(spec, data, coef, max_groups, chunk_slots, loop=False):
    G = spec.group_size
    P = data.q.shape[0]
    total = 0
    for x in range(P):
        if data.rho[x] == 0:
            continue
        rows, probs = _tuples_for_prompt(data, x, G, max_groups)
        total += rows.shape[0]
        if loop:
            for k in range(rows.shape[0]):
                _accumulate_single(spec, data, rows[k], probs[k].expand(G), coef, G)
            continue
        for a, b in _chunks(rows.shape[0], G, data.T, chunk_slots):
            r = rows[a:b].reshape(-1)
            w = probs[a:b].repeat_interleave(G)
            _accumulate(spec, data, r, w, coef, G, per_row_unit=False)
    return total


def _accumulate_single(spec, data, rows, weights, coef, G):
    """One group per loss call (any aggregation, batch-level statistics included): factor 1."""
    batch = make_batch(data, rows, G)
    leaf = data.take("logp", rows).requires_grad_(True)
    loss = _call(spec, leaf, batch)
    (g,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    if g is not None:
        coef.add(rows, g * weights.unsqueeze(1))


def _multisets(num_classes: int, size: int) -> Tensor:
    """All multisets of ``size`` class indices as sorted rows ``[M, size]`` (M = C(K+size−1, size))."""
    if size == 0:
        return torch.zeros(1, 0, dtype=torch.long)
    return torch.tensor(list(itertools.combinations_with_replacement(range(num_classes), size)), dtype=torch.long)


def _log_multinomial(ms: Tensor, log_q: Tensor, num_classes: int) -> Tensor:
    """log P(multiset) for i.i.d. draws with class log-probabilities ``log_q``: ``[M]``."""
    size = ms.shape[1]
    counts = torch.zeros(ms.shape[0], num_classes, dtype=torch.float64)
    if size:
        counts.scatter_add_(1, ms, torch.ones_like(ms, dtype=torch.float64))
    log_coef = math.lgamma(size + 1) - torch.lgamma(counts + 1).sum(-1)
    term = torch.where(counts > 0, counts * log_q.unsqueeze(0), torch.zeros_like(counts))
    return log_coef + term.sum(-1)


def _classes(data: _Data, x: int, class_by: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(support, class of each supported response, class probabilities, a representative response per class)."""
    sup = _support(data, x)
    qx = data.q[x]
    if class_by == "reward":
        values, inv = torch.unique(data.rewards[x * data.N + sup], return_inverse=True)
        K = values.shape[0]
        class_q = torch.zeros(K, dtype=torch.float64).index_add_(0, inv, qx[sup])
        first = torch.full((K,), sup.shape[0], dtype=torch.long).scatter_reduce_(
            0, inv, torch.arange(sup.shape[0]), "amin")  # first supported response of each class
        return sup, inv, class_q, sup[first]
    if class_by == "response":
        return sup, torch.arange(sup.shape[0]), qx[sup], sup
    raise ValueError(f"class_by must be 'reward' or 'response', got {class_by!r}")


def _other_rows(data: _Data, x: int, sup: Tensor, class_q: Tensor, G: int, class_by: str, max_groups: int
                ) -> tuple[Tensor, Tensor]:
    """The multisets of the other G − 1 rows' classes ``[M, G−1]`` with nonzero probability and their
    multinomial probabilities ``[M]`` (ValueError beyond ``max_groups`` groups)."""
    K = class_q.shape[0]
    M = math.comb(K + G - 2, G - 1)
    count = sup.shape[0] * M
    if count > max_groups:
        raise ValueError(f"exchangeable enumeration too large for prompt {x}: {sup.shape[0]} responses × "
                         f"C({K}+{G}-2, {G}-1) = {M:,} multisets of the other G−1 rows ({class_by} classes) = "
                         f"{count:,} groups > max_groups={max_groups:,}")
    ms = _multisets(K, G - 1)  # [M, G−1]
    log_pm = _log_multinomial(ms, torch.log(class_q), K)  # [M]
    keep = torch.isfinite(log_pm)
    return ms[keep], log_pm[keep].exp()


def _route_exchangeable(spec, data, coef, class_by, max_groups, chunk_slots):
    G = spec.group_size
    P, N = data.q.shape
    first_rows = _first_row_method(spec, class_by)
    total = 0
    for x in range(P):
        if data.rho[x] == 0:
            continue
        sup, inv, class_q, reps = _classes(data, x, class_by)
        ms, pm = _other_rows(data, x, sup, class_q, G, class_by, max_groups)
        n1, Mk = sup.shape[0], ms.shape[0]
        wq = data.rho[x] * data.q[x][sup]  # [n1] ρ(x)·q(y_1)
        total += n1 * Mk
        if first_rows is not None:
            _first_rows_of_prompt(spec, first_rows, data, coef, x, sup, inv, reps, ms, wq, pm, chunk_slots)
            continue
        w1 = wq.repeat_interleave(Mk) * pm.repeat(n1) * G  # row-1 weight (× G: symmetry)
        others = x * N + reps[ms]  # [M, G−1]
        first = (x * N + sup).repeat_interleave(Mk)  # [n1·M]
        rows = torch.cat([first.unsqueeze(1), others.repeat(n1, 1)], dim=1)  # [n1·M, G]
        weights = torch.zeros(rows.shape[0], G, dtype=torch.float64)
        weights[:, 0] = w1
        for a, b in _chunks(rows.shape[0], G, data.T, chunk_slots):
            _accumulate(spec, data, rows[a:b].reshape(-1), weights[a:b].reshape(-1), coef, G, per_row_unit=False)
    return total


def _first_row_method(spec: LossSpec, class_by: str) -> Any:
    """The Method whose row-1 loss the exchangeable reward route can evaluate alone, or None.

    When row 1's gradient depends on the other rows only through their rewards (coupling ``"rewards"``) and the
    advantage has no token step (the identity `Advantage.token_step`: REINFORCE++'s whitening reads the other rows'
    token advantages), only row 1 of each group carries weight: its sequence advantage comes from the group's
    rewards, and its loss is evaluated on a batch of first rows alone (``Method.loss(..., sequence_advantages=)``)
    — 1/G of the rows the full groups have."""
    from rlkl.components import Advantage

    method = _engine_method(spec)
    if method is None or class_by != "reward" or spec.coupling != "rewards":
        return None
    return method if type(method.advantage).token_step is Advantage.token_step else None


def _first_rows_of_prompt(spec, method, data, coef, x, sup, inv, reps, ms, wq, pm, chunk_slots) -> None:
    """Row 1 of every (response, multiset of the others' reward classes) group of prompt ``x``, G − 1 rows fewer per
    group: the sequence advantage of row 1 for each (row-1 class, multiset) pair, then the first rows in chunks.

    Entry j = i·M + k of the n1·M first rows is response ``sup[i]`` with multiset ``k``: weight
    ρ(x)q(y_i)·P(multiset k)·G (× G: symmetry), advantage that of row 1 of (class of y_i, multiset k); each chunk
    builds its own rows, weights and advantages (no n1·M arrays)."""
    G, N, T = spec.group_size, data.N, data.T
    K, Mk = reps.shape[0], ms.shape[0]
    values = data.rewards[x * N + reps]  # [K] reward of each class
    lengths = data.mask[x * N + reps].sum(-1).to(values.dtype)  # [K] (read only by length-aware advantages)
    cls = torch.cat([torch.arange(K).repeat_interleave(Mk).unsqueeze(1), ms.repeat(K, 1)], dim=1)  # [K·M, G]
    adv = method.advantage.compute(values[cls].reshape(-1), G, lengths[cls].reshape(-1))  # [K·M·G]
    adv_first = adv.view(K, Mk, G)[:, :, 0]  # [K, M] row-1 advantage per (row-1 class, multiset)
    rows_of = x * N + sup  # [n1]
    n1 = sup.shape[0]
    per = max(1, chunk_slots // max(1, T))
    if int(sup[-1]) - int(sup[0]) + 1 == n1:  # the support is a range: chunks of whole responses, each read once
        per_resp = max(1, per // Mk)
        for a in range(0, n1, per_resp):
            b = min(n1, a + per_resp)
            rows = _Repeat(int(rows_of[a]), int(rows_of[a]) + b - a, Mk)  # entry k·n + i: response a + i, multiset k
            # weights ρ(x)q(y_i)·P(multiset k)·G and advantages, [M, b − a] → [M·(b − a)] (the same entry order)
            _accumulate(spec, data, rows, (wq[None, a:b] * pm[:, None] * G).reshape(-1), coef, 1, per_row_unit=True,
                        unit_scale=1.0 / G, sequence_advantages=adv_first[inv[a:b]].t().reshape(-1))
        return
    for a in range(0, n1 * Mk, per):
        j = torch.arange(a, min(n1 * Mk, a + per))
        i = torch.div(j, Mk, rounding_mode="floor")
        k = j - i * Mk
        # a batch of first rows: its units are rows, the group's are groups of G rows (factor 1/G)
        _accumulate(spec, data, rows_of[i], wq[i] * pm[k] * G, coef, 1, per_row_unit=True, unit_scale=1.0 / G,
                    sequence_advantages=adv_first[inv[i], k])


def choose_route(spec: LossSpec, mdp: TreeMDP, max_groups: int = DEFAULT_MAX_GROUPS) -> tuple[str, Optional[str]]:
    """The exact route ``route="auto"`` takes for ``spec`` on ``mdp``: (route, class_by)."""
    G = spec.group_size
    if spec.aggregation is None or spec.coupling == "batch":
        return "loop", None
    if spec.coupling == "none":
        if spec.aggregation is AggMode.TOKEN_MEAN and not mdp.fixed_length and G > 1:
            return "exchangeable", "response"
        return "per_sample", None
    if spec.coupling == "rewards":
        return "exchangeable", "reward"
    # full coupling: multisets over responses are smaller than ordered tuples
    return "exchangeable", "response"


def expected_gradient(method: Any, mdp: TreeMDP, policy: Policy, behaviour: Optional[Policy] = None,
                      ref: Optional[Policy] = None, group_size: Optional[int] = None, route: str = "auto",
                      class_by: Optional[str] = None, max_groups: int = DEFAULT_MAX_GROUPS,
                      chunk_slots: int = DEFAULT_CHUNK_SLOTS, sampler: Any = None) -> ExpectedGradient:
    """Exact E_{x∼ρ, y_1..y_G∼π_old}[∇_θ L(y_1..y_G; θ)] for a Method's (or any) loss, in float64.

    Args:
      method: ``rlkl.methods.Method``, a `LossSpec`, or a callable ``loss_fn(logp, batch)`` (then pass
        ``group_size``; its aggregation is unknown so the ``loop`` route runs unless a `LossSpec` says otherwise).
      mdp: the tree; policy: π_θ (gradient w.r.t. ``policy.theta``).
      behaviour: π_old that sampled the group (default: π_θ itself — on-policy). Must cover π_θ's support.
      ref: π_ref for ``batch.logp_ref`` (default: the behaviour policy, RPG's iterative reference).
      group_size: G (default 4 for group-based Methods, 1 otherwise).
      route: ``"auto" | "per_sample" | "tuples" | "exchangeable" | "loop"`` (see the module docstring).
      class_by: for ``exchangeable``: ``"reward"`` or ``"response"`` (default from the coupling).
      max_groups: cap on enumerated groups (ValueError with the count beyond it).
      sampler: an ``rlkl.sampling.Sampler``: groups are drawn from q = sampler(π_old) instead of π_old; the batch
        carries the log-probs the sampler reports (``logp_rollout``) and the kept-set mass; a Method whose
        correction replays the kept set sees π_θ and π_old renormalized over it (``rlkl.toy.samplers``).
    Returns:
      `ExpectedGradient` (``grad`` shaped like ``policy.theta``).
    """
    if mdp.num_prompts * mdp.num_responses * mdp.horizon >= SMALL_PROBLEM_SLOTS:
        retain_freed_memory()  # chunks reuse freed pages instead of faulting them in again (glibc)
    with threads_for(mdp):
        return _expected_gradient(method, mdp, policy, behaviour, ref, group_size, route, class_by, max_groups,
                                  chunk_slots, sampler)


def replays_kept_set(spec: LossSpec) -> bool:
    """True when the spec's Method has a rollout correction that renormalizes over the sampler's kept set."""
    correction = getattr(spec.method, "correction", None)
    return bool(getattr(correction, "replays_kept_set", False))


def _expected_gradient(method, mdp, policy, behaviour, ref, group_size, route, class_by, max_groups, chunk_slots,
                       sampler=None):
    t0 = time.perf_counter()
    spec = loss_spec(method, mdp, group_size)
    # a Method that reads no π_ref (`_reads_ref`): π_ref's node table is neither built nor checked, nor its rows
    # gathered (`make_batch` puts π_old's rows in the logp_ref field)
    data = _prepare(mdp, policy, behaviour, ref if _reads_ref(spec) else None, sampler=sampler,
                    replay=replays_kept_set(spec))
    if route == "auto":
        route, auto_class = choose_route(spec, mdp, max_groups)
        class_by = class_by or auto_class
    method_given = _engine_method(spec) is not None
    if method_given:  # a Method: its values validated once here, its loss calls trusted (no host sync)
        _check_support_values(data)

    def run(dense: bool) -> tuple[_Coef, int, Optional[str]]:
        coef = _Coef(data, dense)
        if not method_given:  # a callable: called as it is, on batches it validates itself
            return (coef, *_run_route(spec, data, coef, route, class_by, max_groups, chunk_slots))
        with deferring(), trusted():  # the loss calls' derived checks deferred
            return (coef, *_run_route(spec, data, coef, route, class_by, max_groups, chunk_slots))

    # node level only where each row is added once, in increasing order (per_sample): the node sums then add the
    # slots in the order the dense chain rule does, bit for bit; routes that revisit rows keep the dense array
    coef, n, class_by = run(dense=route != "per_sample")
    grad = _chain(policy, coef, data.logp_graph)
    label = route if route != "exchangeable" else f"exchangeable[{class_by}]"
    lazy = coef.dense if coef.dense is not None else (lambda: run(dense=True)[0].dense)
    return ExpectedGradient(grad, lazy, label, n, time.perf_counter() - t0)


def _run_route(spec, data, coef, route, class_by, max_groups, chunk_slots) -> tuple[int, Optional[str]]:
    """Accumulate the route's coefficients into ``coef``; returns (groups or rows evaluated, class_by)."""
    if route == "per_sample":
        if spec.coupling != "none":
            raise ValueError(f"route 'per_sample' needs a row-separable loss; {spec.name} has coupling {spec.coupling!r}")
        return _route_per_sample(spec, data, coef, chunk_slots), class_by
    if route == "tuples":
        return _route_tuples(spec, data, coef, max_groups, chunk_slots, loop=spec.aggregation is None), class_by
    if route == "loop":
        return _route_tuples(spec, data, coef, max_groups, chunk_slots, loop=True), class_by
    if route == "exchangeable":
        if spec.coupling == "batch" or spec.aggregation is None:
            raise ValueError("route 'exchangeable' needs a known aggregation and group-local coupling")
        cb = class_by or ("reward" if spec.coupling in ("none", "rewards") else "response")
        if cb == "reward" and spec.coupling == "full":
            raise ValueError(f"{spec.name}: rows couple beyond rewards (coupling 'full'); use class_by='response'")
        return _route_exchangeable(spec, data, coef, cb, max_groups, chunk_slots), cb
    raise ValueError(f"unknown route {route!r}")


def brute_force_expected_gradient(method: Any, mdp: TreeMDP, policy: Policy, behaviour: Optional[Policy] = None,
                                  ref: Optional[Policy] = None, group_size: Optional[int] = None) -> Tensor:
    """Reference implementation: a Python loop over prompts and ordered G-tuples, one ``loss`` call and one
    autograd pass to θ per tuple. Tiny problems only (tests)."""
    spec = loss_spec(method, mdp, group_size)
    G = spec.group_size
    data = _prepare(mdp, policy, behaviour, ref)
    P, N = data.q.shape
    total = torch.zeros_like(policy.theta)
    for x in range(P):
        for tup in itertools.product(range(N), repeat=G):
            prob = float(mdp.prompt_probs[x]) * float(torch.prod(data.q[x, list(tup)]))
            if prob == 0.0:
                continue
            rows = torch.tensor([x * N + n for n in tup], dtype=torch.long)
            batch = make_batch(data, rows, G)
            logp = policy.token_logp()[rows]
            logp = torch.where(batch.mask, logp, torch.zeros((), dtype=logp.dtype))
            loss = _call(spec, logp, batch)
            (g,) = torch.autograd.grad(loss, policy.theta, allow_unused=True)
            if g is not None:
                total = total + prob * g
    return total
