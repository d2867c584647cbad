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
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from rlkl.options import AggMode, coerce
from rlkl.toy.mdp import TreeMDP, threads_for  # noqa: F401  (threads_for re-exported)
from rlkl.toy.policies import Policy

Tensor = torch.Tensor

#: how the rows of a group interact (see `LossSpec.coupling`)
COUPLINGS = ("none", "rewards", "full", "batch")
#: default cap on the number of groups an exact expectation may enumerate
DEFAULT_MAX_GROUPS = 2_000_000
#: rows × T per loss call (memory of one chunk)
DEFAULT_CHUNK_SLOTS = 1 << 21


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
@dataclass
class _Data:
    """Stacked enumeration data of the three policies (rows b = x·N + n)."""

    logp: Tensor  # [P·N, T] current policy, detached
    logp_old: Tensor  # [P·N, T]
    logp_ref: Tensor  # [P·N, T]
    mask: Tensor  # [P·N, T]
    rewards: Tensor  # [P·N]
    q: Tensor  # [P, N] behaviour distribution (normalized)
    rho: Tensor  # [P]
    N: int
    T: int
    logp_graph: Optional[Tensor] = None  # [P·N, T] current policy with its autograd graph to θ (for the chain rule)


def _prepare(mdp: TreeMDP, policy: Policy, behaviour: Optional[Policy], ref: Optional[Policy],
             keep_graph: bool = True) -> _Data:
    if policy.mdp is not mdp:
        raise ValueError("policy was built on a different TreeMDP")
    behaviour = behaviour if behaviour is not None else policy
    for name, pol in (("behaviour", behaviour), ("ref", ref)):
        if pol is not None and pol.mdp is not mdp:
            raise ValueError(f"{name} policy was built on a different TreeMDP")
    P, N = mdp.num_prompts, mdp.num_responses
    graph = policy.token_logp() if keep_graph else None  # one pass with the graph, reused by `_chain`
    with torch.no_grad():
        logp = graph.detach() if graph is not None else policy.token_logp()
        logp_old = logp if behaviour is policy else behaviour.token_logp()
        logp_ref = ref.token_logp() if ref is not None else logp_old
        seq_old = logp_old.sum(-1).reshape(P, N)
        q = torch.softmax(seq_old, dim=-1)
        target = logp.sum(-1).reshape(P, N).exp()
    live = mdp.prompt_probs > 0
    bad = (q == 0) & (target > 0) & live[:, None]
    if bool(bad.any()):
        x, n = [int(v) for v in bad.nonzero()[0]]
        raise ValueError(
            f"behaviour policy has zero probability where the target policy has mass ({int(bad.sum())} response(s), "
            f"e.g. prompt {x}, response {mdp.responses()[n]}): the expected gradient under π_old cannot see them; "
            "use a behaviour policy with full support on the target's support")
    support = (q > 0).reshape(-1)
    if ref is not None and not bool(torch.isfinite(logp_ref[support]).all()):
        raise ValueError("the reference policy has zero probability on a response in the support of the behaviour "
                         "policy: the KL to π_ref is infinite")
    _, _, mask, rewards = mdp.stacked()
    return _Data(logp, logp_old, logp_ref, mask, rewards, q, mdp.prompt_probs, N, mdp.horizon, graph)


def make_batch(data: _Data, rows: Tensor, group_size: int):
    """A `RolloutBatch` of the enumerated responses ``rows`` (``[B]`` indices into the stacked enumeration).

    Log-probs are 0 on padding already (`Policy.token_logp`)."""
    from rlkl.methods import RolloutBatch

    return RolloutBatch(data.logp_old[rows], data.logp_ref[rows], data.mask[rows], data.rewards[rows], group_size)


def _call(spec: LossSpec, logp: Tensor, batch) -> Tensor:
    out = spec.loss_fn(logp, batch)
    loss = out[0] if isinstance(out, tuple) else out
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError(f"{spec.name}: loss_fn must return a scalar tensor (or (scalar, diagnostics))")
    return loss


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
            if bool((lengths != lengths[0]).any()):
                raise ValueError("token-mean with variable lengths couples the rows of a group; use another route")
            return (total / lengths).to(torch.float64)
        per_group = mask.view(-1, G, mask.shape[1]).sum((1, 2)).to(torch.float64)  # [B/G]
        return (total / per_group).repeat_interleave(G)
    n_units = B if per_row_unit else B // G
    return torch.full((B,), float(n_units), dtype=torch.float64)


def _accumulate(spec: LossSpec, data: _Data, rows: Tensor, weights: Tensor, coef: Tensor, G: int,
                per_row_unit: bool) -> None:
    """Add Σ_rows weight·∂L_group/∂logp into ``coef`` (``[P·N, T]``) for one chunk of complete groups."""
    batch = make_batch(data, rows, G)
    leaf = data.logp[rows].requires_grad_(True)  # advanced indexing: a fresh leaf, 0 on padding
    loss = _call(spec, leaf, batch)
    (g,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    if g is None:
        return
    factor = _group_factors(spec, batch.mask, G, per_row_unit)
    contrib = g * (weights * factor).unsqueeze(1)
    coef.index_add_(0, rows, contrib)


def _chunks(n_groups: int, G: int, T: int, chunk_slots: int):
    per = max(1, chunk_slots // max(1, G * T))
    for start in range(0, n_groups, per):
        yield start, min(n_groups, start + per)


# ------------------------------------------------------------------------------------------------ result
@dataclass
class ExpectedGradient:
    """Result of `expected_gradient`.

    Attributes:
      grad: E[∇_θ L], shaped like ``policy.theta``.
      coef: ``[P·N, T]`` E-weighted ∂L/∂logp per (response, token): grad = Σ coef·∇_θ logp.
      route: the route used; num_groups: groups (or rows) evaluated; seconds: wall time.
    """

    grad: Tensor
    coef: Tensor
    route: str
    num_groups: int
    seconds: float
    extra: dict = field(default_factory=dict)


def _chain(policy: Policy, coef: Tensor, tl: Optional[Tensor] = None) -> Tensor:
    """Σ_{y,t} coef[y, t]·∇_θ log π_θ(a_t|s_t) (one backward pass through the enumerated log-probs)."""
    tl = policy.token_logp() if tl is None else tl
    (g,) = torch.autograd.grad(tl, policy.theta, grad_outputs=coef, allow_unused=True)
    if g is None:
        return torch.zeros_like(policy.theta)
    return g


def _support(data: _Data, x: int) -> Tensor:
    return (data.q[x] > 0).nonzero().squeeze(1)


def _route_per_sample(spec, data, coef, chunk_slots):
    G = spec.group_size
    P, N = data.q.shape
    rows_all, w_all = [], []
    for x in range(P):
        if data.rho[x] == 0:
            continue
        sup = _support(data, x)
        rows_all.append(x * N + sup)
        w_all.append(data.rho[x] * data.q[x, sup])
    rows = torch.cat(rows_all)
    w = torch.cat(w_all)
    # pad to a multiple of G with zero-weight copies (the batch must hold whole groups)
    n = rows.shape[0]
    per = max(G, (chunk_slots // max(1, data.T)) // G * G)
    count = 0
    for start in range(0, n, per):
        r = rows[start:start + per]
        ww = w[start:start + per]
        pad = (-r.shape[0]) % G
        if pad:
            r = torch.cat([r, r[:1].repeat(pad)])
            ww = torch.cat([ww, torch.zeros(pad, dtype=ww.dtype)])
        _accumulate(spec, data, r, ww, coef, G, per_row_unit=True)
        count += 1
    return n


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
    leaf = data.logp[rows].requires_grad_(True)
    loss = _call(spec, leaf, batch)
    (g,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    if g is not None:
        coef.index_add_(0, rows, g * weights.unsqueeze(1))


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


def _route_exchangeable(spec, data, coef, class_by, max_groups, chunk_slots):
    G = spec.group_size
    P, N = data.q.shape
    total = 0
    for x in range(P):
        if data.rho[x] == 0:
            continue
        sup = _support(data, x)
        qx = data.q[x]
        if class_by == "reward":
            r = data.rewards[x * N + sup]
            values, inv = torch.unique(r, return_inverse=True)
            K = values.shape[0]
            class_q = torch.zeros(K, dtype=torch.float64).index_add_(0, inv, qx[sup])
            reps = torch.empty(K, dtype=torch.long)
            for c in range(K):
                reps[c] = sup[(inv == c).nonzero()[0, 0]]
        elif class_by == "response":
            K = sup.shape[0]
            class_q = qx[sup]
            reps = sup
        else:
            raise ValueError(f"class_by must be 'reward' or 'response', got {class_by!r}")
        M = math.comb(K + G - 2, G - 1)
        count = sup.shape[0] * M
        if count > max_groups:
            raise ValueError(f"exchangeable enumeration too large for prompt {x}: {sup.shape[0]} responses × "
                             f"C({K}+{G}-2, {G}-1) = {M:,} multisets of the other G−1 rows ({class_by} classes) = "
                             f"{count:,} groups > max_groups={max_groups:,}")
        ms = _multisets(K, G - 1)  # [M, G−1]
        log_pm = _log_multinomial(ms, torch.log(class_q), K)  # [M]
        keep = torch.isfinite(log_pm)
        ms, pm = ms[keep], log_pm[keep].exp()
        others = x * N + reps[ms]  # [M, G−1]
        n1 = sup.shape[0]
        Mk = ms.shape[0]
        first = (x * N + sup).repeat_interleave(Mk)  # [n1·M]
        rest = others.repeat(n1, 1)  # [n1·M, G−1]
        rows = torch.cat([first.unsqueeze(1), rest], dim=1)  # [n1·M, G]
        w1 = (data.rho[x] * qx[sup]).repeat_interleave(Mk) * pm.repeat(n1) * G  # row-1 weight (× G: symmetry)
        weights = torch.zeros(rows.shape[0], G, dtype=torch.float64)
        weights[:, 0] = w1
        total += rows.shape[0]
        for a, b in _chunks(rows.shape[0], G, data.T, chunk_slots):
            _accumulate(spec, data, rows[a:b].reshape(-1), weights[a:b].reshape(-1), coef, G, per_row_unit=False)
    return total


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
                      chunk_slots: int = DEFAULT_CHUNK_SLOTS) -> ExpectedGradient:
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
    Returns:
      `ExpectedGradient` (``grad`` shaped like ``policy.theta``).
    """
    with threads_for(mdp):
        return _expected_gradient(method, mdp, policy, behaviour, ref, group_size, route, class_by, max_groups,
                                  chunk_slots)


def _expected_gradient(method, mdp, policy, behaviour, ref, group_size, route, class_by, max_groups, chunk_slots):
    t0 = time.perf_counter()
    spec = loss_spec(method, mdp, group_size)
    data = _prepare(mdp, policy, behaviour, ref)
    if route == "auto":
        route, auto_class = choose_route(spec, mdp, max_groups)
        class_by = class_by or auto_class
    coef = torch.zeros_like(data.logp)
    if route == "per_sample":
        if spec.coupling != "none":
            raise ValueError(f"route 'per_sample' needs a row-separable loss; {spec.name} has coupling {spec.coupling!r}")
        n = _route_per_sample(spec, data, coef, chunk_slots)
    elif route == "tuples":
        n = _route_tuples(spec, data, coef, max_groups, chunk_slots, loop=spec.aggregation is None)
    elif route == "loop":
        n = _route_tuples(spec, data, coef, max_groups, chunk_slots, loop=True)
    elif route == "exchangeable":
        if spec.coupling == "batch" or spec.aggregation is None:
            raise ValueError("route 'exchangeable' needs a known aggregation and group-local coupling")
        cb = class_by or ("reward" if spec.coupling in ("none", "rewards") else "response")
        if cb == "reward" and spec.coupling == "full":
            raise ValueError(f"{spec.name}: rows couple beyond rewards (coupling 'full'); use class_by='response'")
        n = _route_exchangeable(spec, data, coef, cb, max_groups, chunk_slots)
        class_by = cb
    else:
        raise ValueError(f"unknown route {route!r}")
    grad = _chain(policy, coef, data.logp_graph)
    return ExpectedGradient(grad, coef, route if route != "exchangeable" else f"exchangeable[{class_by}]", n,
                            time.perf_counter() - t0)


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
