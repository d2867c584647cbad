"""Probe how a plain loss callable couples the rows of a batch, so the exact engine can take a fast exact route.

The exact engine (`rlkl.toy.expected`) needs two facts about a loss ``loss_fn(logp, batch)`` to batch many groups
into one call: how the batch loss combines its groups, and what one row's gradient depends on in the other rows
of its group. A `Method` states both (`rlkl.toy.expected.coupling`); a plain callable does not, and without them
the engine makes one call per ordered G-tuple (≈ 10⁶ calls on the default trees). `probe` measures them on a
small seeded batch, by autograd, in a few dozen calls:

* **across groups** — the gradient of the whole batch on group k's rows against the gradient of group k alone:
  ``mean`` (L = (1/K) Σ_k L_k: every seq-mean aggregation, or a mean over rows), ``token-mean``
  (L = Σ_k (n_k/n) L_k with n_k the group's valid tokens), ``sum`` (L = Σ_k L_k), or ``coupled`` (none of these:
  batch statistics, e.g. whitening over the whole batch);
* **within a group** — perturb one row's reward, log-probs (π_θ, π_old, π_ref) or length and see which *other*
  rows' gradients move: nothing (``none``), only through rewards (``rewards``), through anything else (``full``);
* **symmetry** — permuting the rows of a group permutes the gradient (needed by the exchangeable routes).

`plan` turns the result into a `LossSpec` and a route for `expected_gradient`, with the number of groups the route
enumerates, an estimate of its time (tqdm progress is shown when it is long) and a ValueError stating the size when
the enumeration would not fit in memory. Every route is exact for a loss with the measured structure; the probe is
a finite check at generic random inputs (distinct rewards, ragged lengths, on- and slightly off-policy), so a loss
whose coupling appears only at special inputs can fool it (`assert_probe` re-checks a plan on the real tree).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from rlkl.options import AggMode
from rlkl.toy.expected import DEFAULT_MAX_GROUPS, ExpectedGradient, LossSpec, expected_gradient
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.policies import Policy

Tensor = torch.Tensor

__all__ = ["ProbeResult", "Plan", "probe", "plan", "probed_expected_gradient", "ACROSS"]

#: how the batch loss combines its groups (see the module docstring)
ACROSS = ("mean", "token-mean", "sum", "coupled")
_FIELDS = ("rewards", "logp", "logp_old", "logp_ref", "mask")
_REL_TOL = 1e-9


# ------------------------------------------------------------------------------------------------ probe batch
@dataclass
class _Probe:
    logp: Tensor  # [B, T]
    logp_old: Tensor
    logp_ref: Tensor
    mask: Tensor  # [B, T] bool, right-padded, ragged
    rewards: Tensor  # [B]
    G: int

    def rows(self, idx: Tensor) -> "_Probe":
        return _Probe(self.logp[idx], self.logp_old[idx], self.logp_ref[idx], self.mask[idx], self.rewards[idx], self.G)

    def batch(self):
        from rlkl.methods import RolloutBatch

        return RolloutBatch(self.logp_old, self.logp_ref, self.mask, self.rewards, self.G)


def _probe_batch(G: int, num_groups: int, T: int, seed: int, off: float, dtype: torch.dtype) -> _Probe:
    """Seeded generic inputs: distinct rewards, ragged lengths (different token counts per group), padding zero."""
    g = torch.Generator().manual_seed(seed)
    B = G * num_groups
    u = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)
    logp_old = -0.2 - 2.3 * u(B, T)  # [B, T] in [-2.5, -0.2]
    logp_ref = torch.clamp(logp_old + 1.4 * (u(B, T) - 0.5), max=-0.01)
    logp = torch.clamp(logp_old + 2 * off * (u(B, T) - 0.5), max=-0.01)
    rewards = (torch.randperm(B, generator=g).to(torch.float64) + u(B)) / B  # distinct, in [0, 1)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[::G] = T  # some full-length rows
    for k in range(num_groups):  # distinct token counts per group, so a token-mean differs from a mean over groups
        rows = lengths[k * G:(k + 1) * G]
        for _ in range(100):  # (impossible only for tiny G·T: then token-mean and mean coincide on the probe)
            if all(int(rows.sum()) != int(lengths[i * G:(i + 1) * G].sum()) for i in range(k)):
                break
            i = int(torch.randint(0, G, (1,), generator=g))
            rows[i] = 1 + (int(rows[i]) % T)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    z = torch.zeros((), dtype=torch.float64)
    cast = lambda x: torch.where(mask, x, z).to(dtype)
    return _Probe(cast(logp), cast(logp_old), cast(logp_ref), mask, rewards.to(dtype), G)


def _grad(loss_fn: Callable, p: _Probe, counter: list) -> tuple[float, Tensor]:
    """(loss value, ∂loss/∂logp) for one call (zeros when the loss does not depend on logp)."""
    leaf = p.logp.detach().clone().requires_grad_(True)
    t0 = time.perf_counter()
    try:
        out = loss_fn(leaf, p.batch())
    except Exception as exc:  # the user's code: say where it failed and how to skip the probe
        raise ValueError(f"probing {getattr(loss_fn, '__name__', 'loss_fn')} failed on a random batch (B={p.logp.shape[0]}, "
                         f"T={p.logp.shape[1]}, G={p.G}, rewards in [0, 1), ragged lengths): {type(exc).__name__}: "
                         f"{exc}. Declare the coupling instead: rlkl.toy.expected.LossSpec(loss_fn, G, aggregation, "
                         "coupling)") from exc
    loss = out[0] if isinstance(out, tuple) else out
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar tensor (or (scalar, diagnostics)), got {type(loss).__name__}"
                         + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else ""))
    if not bool(torch.isfinite(loss)):
        raise ValueError(f"loss_fn returned a non-finite loss ({float(loss)}) on the probe batch")
    (g,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    counter.append(time.perf_counter() - t0)
    return float(loss.detach()), (torch.zeros_like(leaf) if g is None else g.detach())


def _differs(a: Tensor, b: Tensor, tol: float) -> bool:
    scale = float(a.norm()) + float(b.norm())
    return float((a - b).norm()) > tol * scale + 1e-300 and float((a - b).norm()) > 1e-13 * max(1.0, scale)


# ------------------------------------------------------------------------------------------------ the probe
@dataclass(frozen=True)
class ProbeResult:
    """What `probe` measured.

    Attributes:
      across: how the batch loss combines groups (one of ``ACROSS``).
      reads: per input field (rewards, logp, logp_old, logp_ref, mask): True when another row's value of it moves
        a row's gradient within a group.
      symmetric: permuting a group's rows permutes its gradient.
      group_size: G the probe used.
      calls: loss calls made; seconds_per_call: median wall time of one call on the probe batch.
    """

    across: str
    reads: dict
    symmetric: bool
    group_size: int
    calls: int
    seconds_per_call: float

    def coupling(self, fixed_length: bool = False) -> str:
        """The engine's coupling (`LossSpec.coupling`); lengths are ignored on fixed-length trees."""
        if self.across == "coupled":
            return "batch"
        other = [f for f in _FIELDS if f != "rewards" and self.reads[f] and not (fixed_length and f == "mask")]
        if other:
            return "full"
        return "rewards" if self.reads["rewards"] else "none"

    def describe(self, fixed_length: bool = False) -> str:
        moved = [f for f in _FIELDS if self.reads[f]]
        across = {"mean": "a mean over groups", "token-mean": "a token-mean over the batch",
                  "sum": "a sum over groups", "coupled": "coupled across groups (batch statistics)"}[self.across]
        rows = (f"a row's gradient reads the other rows' {', '.join(moved)}" if moved else "rows are independent")
        return (f"{across}; {rows}; {'symmetric' if self.symmetric else 'not symmetric'} in the rows of a group "
                f"(coupling {self.coupling(fixed_length)!r})")


def probe(loss_fn: Callable, group_size: int, horizon: int = 4, num_groups: int = 3, seed: int = 0,
          dtype: torch.dtype = torch.float64, tol: float = _REL_TOL) -> ProbeResult:
    """Measure how ``loss_fn(logp, batch)`` couples rows (see the module docstring); a few dozen loss calls.

    Args:
      loss_fn: rlkl's signature: ``loss_fn(logp [B, T], batch: RolloutBatch) -> scalar`` or ``(scalar, diag)``.
      group_size: G (rows per group, contiguous).
      horizon: T of the probe batch (>= 2, so lengths can differ); num_groups: K >= 2 groups.
      seed: seed of the probe inputs; tol: relative change that counts as "moved".
    Returns:
      `ProbeResult`.
    """
    G = int(group_size)
    if G < 1 or num_groups < 2 or horizon < 2:
        raise ValueError(f"probe needs group_size >= 1, num_groups >= 2, horizon >= 2; got {G}, {num_groups}, {horizon}")
    counter: list = []
    across = None
    reads = {f: False for f in _FIELDS}
    symmetric = True
    for k, off in enumerate((0.0, 1e-4)):  # on-policy, then slightly off-policy (ratios ≠ 1, inside any clip)
        p = _probe_batch(G, num_groups, horizon, seed + 7919 * k, off, dtype)
        a = _across_groups(loss_fn, p, num_groups, counter, tol)
        across = a if across in (None, a) else "coupled"
        one = p.rows(torch.arange(G))
        for f in _within_group(loss_fn, one, counter, tol):
            reads[f] = True
        symmetric = symmetric and _is_symmetric(loss_fn, one, counter, tol)
    t = sorted(counter)[len(counter) // 2]
    return ProbeResult(across, reads, symmetric, G, len(counter), t)


def _across_groups(loss_fn, p: _Probe, K: int, counter: list, tol: float) -> str:
    """Compare ∂L(batch)/∂logp on group k with w_k·∂L(group k)/∂logp for the candidate weights w."""
    G = p.G
    _, g_all = _grad(loss_fn, p, counter)
    parts = [_grad(loss_fn, p.rows(torch.arange(k * G, (k + 1) * G)), counter)[1] for k in range(K)]
    tokens = torch.tensor([float(p.mask[k * G:(k + 1) * G].sum()) for k in range(K)], dtype=torch.float64)
    candidates = {"mean": [1.0 / K] * K, "token-mean": (tokens / tokens.sum()).tolist(), "sum": [1.0] * K}
    for name, w in candidates.items():
        if all(not _differs(g_all[k * G:(k + 1) * G], w[k] * parts[k], tol) for k in range(K)):
            return name
    return "coupled"


def _perturbed(p: _Probe, field_name: str, j: int) -> _Probe:
    q = _Probe(p.logp.clone(), p.logp_old.clone(), p.logp_ref.clone(), p.mask.clone(), p.rewards.clone(), p.G)
    T = p.mask.shape[1]
    L = int(p.mask[j].sum())
    if field_name == "rewards":
        q.rewards[j] = q.rewards[j] + 0.37
    elif field_name == "mask":
        newL = L - 1 if L > 1 else min(T, L + 1)
        q.mask[j] = torch.arange(T) < newL
        for t in (q.logp, q.logp_old, q.logp_ref):  # a valid value on the new token, 0 on new padding
            t[j] = torch.where(q.mask[j], torch.where(p.mask[j], t[j], torch.full_like(t[j], -0.7)),
                               torch.zeros_like(t[j]))
    else:
        t = getattr(q, field_name)
        delta = 1e-3 if field_name == "logp" else 0.3
        t[j] = torch.where(q.mask[j], torch.clamp(t[j] + delta * torch.linspace(-1, 1, T, dtype=t.dtype), max=-0.01),
                           t[j])
    return q


def _within_group(loss_fn, one: _Probe, counter: list, tol: float) -> set:
    """Fields of row j whose change moves the gradient of some other row i ≠ j of the same group."""
    G = one.G
    _, base = _grad(loss_fn, one, counter)
    moved = set()
    if G == 1:
        return moved
    for f in _FIELDS:
        for j in (G - 1, 0):  # two rows: enough for symmetric losses, a spot check otherwise
            _, g = _grad(loss_fn, _perturbed(one, f, j), counter)
            others = torch.tensor([i for i in range(G) if i != j])
            if _differs(g[others], base[others], tol):
                moved.add(f)
                break
    return moved


def _is_symmetric(loss_fn, one: _Probe, counter: list, tol: float) -> bool:
    G = one.G
    if G == 1:
        return True
    _, base = _grad(loss_fn, one, counter)
    perm = torch.roll(torch.arange(G), 1)
    _, g = _grad(loss_fn, one.rows(perm), counter)
    return not _differs(g, base[perm], tol)


# ------------------------------------------------------------------------------------------------ plan
class _SumToMean:
    """``loss_fn / (number of groups)``: turns a sum over groups into the engine's mean over groups."""

    def __init__(self, loss_fn: Callable):
        self.loss_fn = loss_fn
        self.__name__ = getattr(loss_fn, "__name__", "loss_fn")

    def __call__(self, logp, batch):
        out = self.loss_fn(logp, batch)
        loss = out[0] if isinstance(out, tuple) else out
        return loss / (batch.batch_size // batch.group_size)


@dataclass
class Plan:
    """How `probed_expected_gradient` computes E[∇ loss] on one tree.

    Attributes:
      spec: the `LossSpec` (aggregation class and coupling from the probe); route, class_by: the engine route.
      groups: groups (or rows, per_sample) the route evaluates; calls: loss calls (one per group on ``loop``).
      seconds: estimated wall time; bytes: estimated memory of the enumeration's index tensors.
      probe: the `ProbeResult`.
    """

    spec: LossSpec
    route: str
    class_by: Optional[str]
    groups: int
    calls: int
    seconds: float
    bytes: int
    probe: ProbeResult
    notes: list = field(default_factory=list)


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def _route(pr: ProbeResult, mdp: TreeMDP) -> tuple[str, Optional[str]]:
    c = pr.coupling(mdp.fixed_length)
    if c == "batch":
        return "loop", None
    if c == "none" and not (pr.across == "token-mean" and not mdp.fixed_length and pr.group_size > 1):
        return "per_sample", None
    if not pr.symmetric:
        return "tuples", None
    return "exchangeable", ("reward" if c in ("none", "rewards") else "response")


def _count(route: str, class_by: Optional[str], mdp: TreeMDP, q: Tensor, G: int) -> int:
    total = 0
    for x in range(mdp.num_prompts):
        if float(mdp.prompt_probs[x]) == 0.0:
            continue
        sup = (q[x] > 0).nonzero().squeeze(1)
        n = int(sup.shape[0])
        if route == "per_sample":
            total += n
        elif route in ("tuples", "loop"):
            total += n**G
        else:
            K = n if class_by == "response" else int(torch.unique(mdp.rewards[x][sup]).shape[0])
            total += n * math.comb(K + G - 2, G - 1)
    return total


def plan(loss_fn: Callable, mdp: TreeMDP, group_size: int, behaviour: Optional[Policy] = None,
         name: Optional[str] = None, probe_result: Optional[ProbeResult] = None,
         max_groups: Optional[int] = None, max_bytes: Optional[int] = None) -> Plan:
    """Probe ``loss_fn`` (unless ``probe_result`` is given) and choose the fastest exact route on ``mdp``.

    Args:
      loss_fn: rlkl's signature ``loss_fn(logp, batch)``; group_size: G.
      behaviour: the sampling policy (its support decides the enumeration size; default: full support).
      max_groups: cap on enumerated groups (default: the engine's 2,000,000, 50,000 for one call per group).
      max_bytes: memory cap for the index tensors (default: half the available memory).
    Returns:
      `Plan`. Raises ValueError, naming the size, when the enumeration exceeds ``max_groups`` or ``max_bytes``.
    """
    G = int(group_size)
    pr = probe_result if probe_result is not None else probe(loss_fn, G, horizon=max(2, mdp.horizon))
    route, class_by = _route(pr, mdp)
    agg = None if pr.across == "coupled" else (AggMode.TOKEN_MEAN if pr.across == "token-mean"
                                                   else AggMode.SEQ_MEAN_TOKEN_SUM)
    fn = _SumToMean(loss_fn) if pr.across == "sum" else loss_fn
    label = name or getattr(loss_fn, "__name__", "loss_fn")
    spec = LossSpec(fn, G, agg, pr.coupling(mdp.fixed_length), label)
    if behaviour is not None:
        with torch.no_grad():
            q = torch.softmax(behaviour.token_logp().sum(-1).reshape(mdp.num_prompts, -1), dim=-1)
    else:
        q = torch.ones(mdp.num_prompts, mdp.num_responses, dtype=torch.float64)
    groups = _count(route, class_by, mdp, q, G)
    per_group = route in ("loop",)
    calls = groups if per_group else max(1, math.ceil(groups * (1 if route == "per_sample" else G) * mdp.horizon
                                                       / (1 << 21)))
    slots = groups * (1 if route == "per_sample" else G) * mdp.horizon
    seconds = groups * pr.seconds_per_call if per_group else pr.seconds_per_call * calls + 2e-7 * slots
    nbytes = groups * max(1, G) * 32
    cap = max_groups if max_groups is not None else (50_000 if per_group else DEFAULT_MAX_GROUPS)
    limit = max_bytes if max_bytes is not None else _available_bytes() // 2
    what = (f"{label} on {mdp.name} (G={G}, route {route}{f'[{class_by}]' if class_by else ''}: {pr.describe(mdp.fixed_length)})")
    if nbytes > limit:
        raise ValueError(f"exact enumeration would not fit in memory: {what} enumerates {groups:,} groups ≈ "
                         f"{nbytes / 2**30:.1f} GiB of index tensors > the limit {limit / 2**30:.1f} GiB. Use a "
                         "smaller tree (vocab/horizon), a smaller group_size, or Monte Carlo (rlkl.toy.mc_gradient)")
    if groups > cap:
        raise ValueError(f"exact enumeration too large: {what} enumerates {groups:,} groups"
                         f"{f' ({groups:,} loss calls, ≈ {seconds:,.0f} s)' if per_group else ''} > max_groups="
                         f"{cap:,}. Use a smaller tree or group_size, or raise max_groups")
    return Plan(spec, route, class_by, groups, calls, seconds, nbytes, pr)


class _Progress:
    """Wrap a loss so each call advances a tqdm bar by the number of groups it evaluates."""

    def __init__(self, loss_fn: Callable, bar: Any, per_row: bool):
        self.loss_fn, self.bar, self.per_row = loss_fn, bar, per_row
        self.__name__ = getattr(loss_fn, "__name__", "loss_fn")

    def __call__(self, logp, batch):
        out = self.loss_fn(logp, batch)
        self.bar.update(batch.batch_size if self.per_row else batch.batch_size // batch.group_size)
        return out


def probed_expected_gradient(loss_fn: Callable, mdp: TreeMDP, policy: Policy, behaviour: Optional[Policy] = None,
                             ref: Optional[Policy] = None, group_size: int = 4, progress: Optional[bool] = None,
                             the_plan: Optional[Plan] = None, **plan_kwargs: Any) -> tuple[ExpectedGradient, Plan]:
    """Exact E[∇ loss] of a plain callable on the route its probed coupling allows (`plan`).

    Args:
      loss_fn: ``loss_fn(logp, batch)`` in rlkl's signature; mdp, policy, behaviour, ref, group_size: as in
        `rlkl.toy.expected.expected_gradient`.
      progress: show a tqdm bar with ETA (None: when the plan estimates more than 2 s).
      the_plan: a `Plan` from `plan` (reused across policies on the same tree).
    Returns:
      (`ExpectedGradient`, `Plan`).
    """
    p = the_plan if the_plan is not None else plan(loss_fn, mdp, group_size, behaviour, **plan_kwargs)
    show = p.seconds > 2.0 if progress is None else bool(progress)
    spec = p.spec
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=p.groups, unit="row" if p.route == "per_sample" else "group", desc=f"rlkl {spec.name}",
                   leave=False, file=sys.stderr, dynamic_ncols=True)
        spec = LossSpec(_Progress(spec.loss_fn, bar, p.route == "per_sample"), spec.group_size, spec.aggregation,
                        spec.coupling, spec.name, spec.method)
    try:
        eg = expected_gradient(spec, mdp, policy, behaviour, ref, p.spec.group_size, route=p.route,
                               class_by=p.class_by, max_groups=max(p.groups, 1))
    finally:
        if bar is not None:
            bar.close()
    return eg, p
