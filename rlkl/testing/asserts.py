"""`assert_optimizes` and `assert_conforms`: does a user's loss optimize an objective / equal a Method?

* `assert_optimizes(loss, objective)` computes the **exact** expected gradient of the loss on seeded random trees
  (every response enumerated, float64; `rlkl.toy`) and compares it with −c·∇J. On failure the message says, in
  words, how far off it is and why: the registered rlkl Method whose expected gradient the loss reproduces and
  that method's bias terms from `rlkl.toy.audit` (e.g. "k3 as a loss follows ∇KL(π_ref‖π), the forward
  direction"), the objectives the loss *is* exact for, or the unexplained remainder.
* `assert_conforms(loss, method)` compares loss value and gradient with ``method.loss`` on seeded ragged
  batches whose padding holds garbage, and names the likely cause of a mismatch (padding leak, other
  aggregation, a constant factor).

Both accept rlkl's ``loss_fn(logp, batch)``, a `Method`, or an adapter (`rlkl.testing.from_verl`, `from_trl`,
`from_polgrad`). A plain callable is probed for its row coupling (`rlkl.toy.probe`), so its exact audit runs on
a fast route (well under a second on the default trees for group-local losses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import Tensor

from rlkl.methods import Method
from rlkl.objective import Level, Objective, Regularizer, Std, Utility
from rlkl.testing.adapters import LossAdapter, as_rlkl_loss
from rlkl.toy.expected import LossSpec, expected_gradient
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.objectives import objective_gradient

__all__ = ["assert_optimizes", "assert_conforms", "OptimizesReport", "ConformsReport", "default_trees",
           "check_optimizes"]

DEFAULT_TOL = 1e-8


def default_trees(vocab: int = 3, horizon: int = 3, prompts: int = 2, seeds: Sequence[int] = (0,),
                  eos: Optional[bool] = None, reward: str = "binary") -> list[TreeMDP]:
    """Seeded random trees: a fixed-length and a variable-length (EOS) one per seed (``eos=None``), or only one
    kind. The fixed-length tree exposes reward and KL biases; the EOS tree adds length-normalization ones."""
    kinds = (False, True) if eos is None else (bool(eos),)
    return [TreeMDP.random(vocab, horizon, prompts, eos=k, reward=reward, seed=int(s)) for s in seeds for k in kinds]


def _bind(objective: Any, G: int) -> Objective:
    if not isinstance(objective, Objective):
        raise ValueError(f"objective must be an rlkl.objective.Objective (e.g. Objective('expected_reward', 'none') "
                         f"for E[R]), got {type(objective).__name__}")
    if objective.beta is None:
        if objective.has_regularizer:
            raise ValueError(f"objective {objective.describe()} has no β: bind it, e.g. objective.bind(beta=0.1)")
        objective = objective.bind(beta=0.0)
    if objective.group_size is None and objective.utility in (Utility.FINITE_GROUP, Utility.LEAVE_IN):
        objective = objective.bind(group_size=G)
    return objective


def _setup(mdp: TreeMDP, seed: int, off_policy: bool, policy: str):
    from rlkl.toy.audit import make_setup

    pi, old, ref = make_setup(mdp, seed, off_policy, policy)
    return pi, (old if off_policy else None), ref


def _target(objective: Objective, mdp: TreeMDP, pi, beh, ref) -> Tensor:
    """−∇J as the audit defines it (a local KL holds π_old's state distribution fixed)."""
    b = beh if beh is not None else pi.detached()
    return -objective_gradient(objective, mdp, pi, ref, b, state_policy=b)


def _norm(x: Tensor) -> float:
    return float(x.norm())


def _cos(a: Tensor, b: Tensor) -> float:
    na, nb = _norm(a), _norm(b)
    return float((a * b).sum()) / (na * nb) if na > 0 and nb > 0 else float("nan")


# ------------------------------------------------------------------------------------------------ the loss
@dataclass
class _Loss:
    """A loss the engine can differentiate: a Method, or a callable with its probe plan (one per tree)."""

    original: Any
    name: str
    method: Optional[Method] = None
    fn: Any = None
    plans: dict = field(default_factory=dict)

    @classmethod
    def of(cls, loss: Any, name: Optional[str], require_advantage: bool) -> "_Loss":
        loss = as_rlkl_loss(loss)
        if isinstance(loss, Method):
            return cls(loss, name or loss.name, method=loss)
        if isinstance(loss, LossAdapter) and loss.needs_advantage and loss.advantage is None and require_advantage:
            raise ValueError(f"{loss.name} ({loss.convention} convention) takes advantages, not rewards: pass "
                             "advantage= to the adapter (e.g. rlkl.testing.from_verl(fn, advantage="
                             "GroupStandardized())) so the expected gradient includes how rewards become advantages")
        if isinstance(loss, LossSpec):
            return cls(loss, name or loss.name, fn=loss)
        return cls(loss, name or getattr(loss, "__name__", "loss_fn"), fn=loss)

    def expected(self, mdp: TreeMDP, pi, beh, ref, G: int, progress: Optional[bool]):
        """(E[∇loss] [θ], route, scale hint) — the scale c is 1 for a callable (fitted by the caller)."""
        if self.method is not None:
            eg = expected_gradient(self.method, mdp, pi, beh, ref, G)
            return eg, self.method.aggregation.scale(mdp.horizon)
        if isinstance(self.fn, LossSpec):
            return expected_gradient(self.fn, mdp, pi, beh, ref, G), None
        from rlkl.toy.probe import plan, probed_expected_gradient, probe

        key = (mdp.name, G)
        if key not in self.plans:
            pr = self.plans.get(("probe", G))
            if pr is None:
                pr = probe(self.fn, G, horizon=max(2, mdp.horizon))
                self.plans[("probe", G)] = pr
            self.plans[key] = plan(self.fn, mdp, G, beh, name=self.name, probe_result=pr)
        eg, _ = probed_expected_gradient(self.fn, mdp, pi, beh, ref, G, progress=progress, the_plan=self.plans[key])
        return eg, None


# ------------------------------------------------------------------------------------------------ report
@dataclass
class OptimizesReport:
    """Result of `check_optimizes` / `assert_optimizes`.

    Attributes:
      loss: its name; objective: the bound `Objective`; passed: every record within ``tol``.
      records: one dict per (tree, seed): tree, seed, off_policy, group_size, rel_error, cosine, scale (c used),
        route, seconds.
      explanation: the plain-words account of the first failing record ("" when all pass).
    """

    loss: str
    objective: Objective
    passed: bool
    records: list
    explanation: str = ""
    match: Optional[dict] = None

    def summary(self) -> str:
        head = (f"{self.loss} {'optimizes' if self.passed else 'does NOT optimize'} {self.objective.describe()}")
        lines = [head]
        for r in self.records:
            lines.append(f"  {r['tree']} seed {r['seed']}{' off-policy' if r['off_policy'] else ''} G={r['group_size']}: "
                         f"rel error {r['rel_error']:.2e}, cosine {r['cosine']:.4f}, scale c = {r['scale']:.4g} "
                         f"({r['route']}, {r['seconds']:.2f} s)")
        if self.explanation:
            lines.append(self.explanation)
        return "\n".join(lines)


def check_optimizes(loss_fn: Any, objective: Objective, group_size: int = 4,
                    trees: Optional[Iterable[TreeMDP]] = None, seeds: Sequence[int] = (0,),
                    off_policy: bool = False, policy: str = "tabular", scale: Optional[float] = None,
                    tol: float = DEFAULT_TOL, explain: bool = True, progress: Optional[bool] = None,
                    name: Optional[str] = None) -> OptimizesReport:
    """The check behind `assert_optimizes`, returning the report instead of raising (arguments: see there)."""
    G = int(group_size)
    if G < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    trees = list(trees) if trees is not None else default_trees()
    if not trees:
        raise ValueError("trees is empty")
    obj = _bind(objective, G)
    loss = _Loss.of(loss_fn, name, require_advantage=True)
    records, failing = [], None
    for mdp in trees:
        if obj.needs_binary_rewards and not mdp.is_binary:
            raise ValueError(f"the {obj.utility.value} utility needs binary rewards; tree {mdp.name} has real rewards")
        for s in seeds:
            pi, beh, ref = _setup(mdp, int(s), off_policy, policy)
            eg, _ = loss.expected(mdp, pi, beh, ref, G, progress)
            target = _target(obj, mdp, pi, beh, ref)
            rec, fit = _compare(eg.grad, target, scale)
            rec.update(tree=mdp.name, seed=int(s), off_policy=bool(off_policy), group_size=G, route=eg.route,
                       seconds=eg.seconds)
            records.append(rec)
            if failing is None and rec["rel_error"] > tol:
                failing = (mdp, int(s), pi, beh, ref, eg.grad, target, rec)
    report = OptimizesReport(loss.name, obj, failing is None, records)
    if failing is not None and explain:
        report.explanation, report.match = _explain(loss, obj, G, failing, tol, progress, policy)
    return report


def _compare(g: Tensor, target: Tensor, scale: Optional[float]) -> tuple[dict, float]:
    """rel error of g against c·target, c fitted (least squares, > 0) unless given."""
    tn = _norm(target)
    if scale is None:
        c = float((g * target).sum()) / (tn * tn) if tn > 0 else 1.0
        c_used = c if c > 0 else 1.0
    else:
        c = c_used = float(scale)
    denom = c_used * tn if tn > 0 else max(_norm(g), 1e-300)
    rel = _norm(g - c_used * target) / denom if (tn > 0 or _norm(g) > 0) else 0.0
    if scale is None and c <= 0 and tn > 0:
        rel = max(rel, 1.0)  # moving against (or orthogonal to) −∇J is never "optimizes J"
    return {"rel_error": rel, "cosine": _cos(g, target), "scale": c, "gradient_norm": _norm(g),
            "target_norm": tn}, c_used


def assert_optimizes(loss_fn: Any, objective: Objective, group_size: int = 4,
                     trees: Optional[Iterable[TreeMDP]] = None, seeds: Sequence[int] = (0,),
                     off_policy: bool = False, policy: str = "tabular", scale: Optional[float] = None,
                     tol: float = DEFAULT_TOL, explain: bool = True, progress: Optional[bool] = None,
                     name: Optional[str] = None) -> OptimizesReport:
    """Assert that the exact expected gradient of ``loss_fn`` is −c·∇J on random small trees.

    For each tree and seed, with π_θ, π_ref random (seeded) and samples from π_θ (or from a perturbed π_old with
    ``off_policy=True``), E[∇_θ loss] over groups of ``group_size`` i.i.d. responses is computed exactly and
    compared with −c·∇_θ J: relative error ‖E∇L + c∇J‖/‖c∇J‖ <= ``tol``.

    Args:
      loss_fn: ``loss_fn(logp [B, T], batch: RolloutBatch) -> scalar`` (rlkl's signature), a `Method`, or an
        adapter (`from_verl`, `from_trl`, `from_polgrad`, each with ``advantage=``).
      objective: the `Objective` you claim (β bound: ``Objective(...).bind(beta=0.1)``); G is bound for the
        finite-group / leave-in utilities.
      group_size: G responses per prompt in a group.
      trees: `TreeMDP`s (default `default_trees()`: a fixed-length and an EOS tree, V = 3, T = 3, two prompts).
      seeds: policy seeds per tree; off_policy: sample from π_old ≠ π_θ; policy: ``tabular`` | ``loglinear``.
      scale: c (None: fitted per tree, must be > 0 — a positive learning-rate factor is not a bias).
      tol: relative tolerance (float64 round-off is ~1e-15).
      explain: on failure, identify the bias (may run the audit of a few dozen registered methods: seconds).
      progress: tqdm bars for long enumerations (None: when a route is estimated to take > 2 s).
    Returns:
      the `OptimizesReport` when the claim holds.
    Raises:
      AssertionError with the report (rel error per tree and the explanation) when it does not; ValueError for
      bad arguments or an enumeration too large to fit.
    """
    __tracebackhide__ = True  # pytest: show the caller's line and the report, not this frame
    report = check_optimizes(loss_fn, objective, group_size, trees, seeds, off_policy, policy, scale, tol, explain,
                             progress, name)
    if not report.passed:
        raise AssertionError(report.summary())
    return report


# ------------------------------------------------------------------------------------------------ explanation
def _term_doc(name: str) -> str:
    from rlkl.toy.terms import glossary

    return glossary().get(name) or name


def _candidates(obj: Objective, G: int, extra: Sequence[Method] = ()) -> list[Method]:
    """Registered methods (β set to the objective's where they have a KL), plus ``extra``."""
    from rlkl.methods import REGISTRY

    out = list(extra)
    for m in REGISTRY.values():
        if G < m.advantage.min_group_size:
            continue
        if m.has_kl and obj.beta is not None:
            m = m.replace(beta=float(obj.beta))
        out.append(m)
    return out


def _identify(loss: _Loss, obj: Objective, G: int, mdp, seed: int, off_policy: bool, policy: str, g: Tensor,
              progress) -> list[tuple]:
    """(rel diff, method) of the registered methods closest to the loss, closest first.

    Screened on a tiny tree of the same kind (every candidate's expected gradient in milliseconds), then the
    close ones confirmed on ``mdp`` itself (where ``g`` was computed)."""
    tiny = TreeMDP.random(3 if mdp.has_eos else 2, 2, 2, eos=mdp.has_eos, reward="binary" if mdp.is_binary else "real",
                          seed=97)
    pi_t, beh_t, ref_t = _setup(tiny, seed, off_policy, policy)
    g_tiny, _ = loss.expected(tiny, pi_t, beh_t, ref_t, G, False)
    screened = []
    cands = _candidates(obj, G)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cands), desc="rlkl: which registered method is this?", leave=False)
    for m in cands:
        if bar is not None:
            bar.update(1)
        try:
            gm = expected_gradient(m, tiny, pi_t, beh_t, ref_t, G).grad
        except ValueError:
            continue
        screened.append((_norm(gm - g_tiny.grad) / max(_norm(g_tiny.grad), _norm(gm), 1e-300), m))
    if bar is not None:
        bar.close()
    screened.sort(key=lambda t: t[0])
    pi, beh, ref = _setup(mdp, seed, off_policy, policy)
    found = []
    for d_tiny, m in screened[:3]:
        if d_tiny > 1e-3 and found:
            break
        gm = expected_gradient(m, mdp, pi, beh, ref, G).grad
        found.append((_norm(gm - g) / max(_norm(g), _norm(gm), 1e-300), m))
    found.sort(key=lambda t: t[0])
    return found


def _exact_for(obj: Objective, G: int, mdp, pi, beh, ref, g: Tensor, tol: float) -> list[str]:
    """Objectives from a small grid for which g = −c∇J exactly (c > 0 fitted)."""
    beta = float(obj.beta or 0.0)
    utils = [Objective(Utility.EXPECTED_REWARD, Regularizer.NONE), Objective(Utility.LEAVE_IN, Regularizer.NONE,
                                                                            group_size=G)]
    if mdp.is_binary and G >= 2:
        utils += [Objective(Utility.FINITE_GROUP, Regularizer.NONE, group_size=G, std=s, eps=e)
                  for s in (Std.BESSEL, Std.POPULATION) for e in (1e-6, 1e-4, 0.0)]
    regs = [(Regularizer.NONE, Level.SEQUENCE)]
    if beta > 0:
        regs += [(Regularizer.REVERSE_KL, Level.SEQUENCE), (Regularizer.REVERSE_KL, Level.LOCAL),
                 (Regularizer.FORWARD_KL, Level.LOCAL)]
    out = []
    for u in utils:
        for reg, lvl in regs:
            cand = u.replace(regularizer=reg, level=lvl, beta=beta if reg is not Regularizer.NONE else 0.0)
            try:
                t = _target(cand, mdp, pi, beh, ref)
            except ValueError:
                continue
            rec, _ = _compare(g, t, None)
            if rec["rel_error"] <= tol and rec["scale"] > 0:
                label = cand.describe()
                if cand.utility is Utility.FINITE_GROUP:
                    label += f" ({cand.std.value} std, eps {cand.eps:g})"
                out.append(f"{label} (c = {rec['scale']:.4g})")
    return out


def _explain(loss: _Loss, obj: Objective, G: int, failing: tuple, tol: float, progress,
             policy: str) -> tuple[str, Optional[dict]]:
    from rlkl.toy.audit import audit_one

    mdp, seed, pi, beh, ref, g, target, rec = failing
    where = f"{mdp.name} (seed {seed}{', off-policy' if beh is not None else ''}, G={G})"
    lines = [f"why, on {where}:"]
    if rec["scale"] <= 0:
        lines.append(f"  the expected update moves *against* −∇J (cosine {rec['cosine']:.3f}): check the sign of the "
                     "loss (losses are minimized)")
    match = None
    found = (_identify(loss, obj, G, mdp, seed, beh is not None, policy, g, progress) if loss.method is None
             else [(0.0, loss.method)])
    if found and found[0][0] <= 1e-3:
        d, m = found[0]
        how = "exactly" if d <= 1e-8 else "approximately"
        lines.append(f"  your loss reproduces rlkl's `{m.name}`{f' (β={m.beta:g})' if m.has_kl else ''} {how} "
                     f"(relative difference of the expected gradients {d:.1e}): {m.description}")
        res = audit_one(m, mdp, pi, beh, ref, G, objective=obj).record
        terms = res["bias_terms"]
        if terms:
            lines.append(f"  relative to {obj.describe()}, `{m.name}`'s expected gradient has these bias terms "
                         "(norm relative to ‖c∇J‖):")
            for k, v in terms.items():
                lines.append(f"    - {k} ({v['rel_norm']:.3g}): {_term_doc(k)}")
            un = res["unexplained"]
            lines.append(f"    unexplained remainder: {un:.1e}" + ("" if un <= 1e-7 else
                         " (rlkl's audit has no term for this part yet)"))
        else:
            lines.append(f"  (rlkl's audit names no term for `{m.name}` against this objective; rel error "
                         f"{res['rel_error']:.3g} with its own scale c = {res['scale']:.4g})")
        match = {"method": m.name, "rel_diff": d, "bias_terms": terms, "unexplained": res["unexplained"]}
    else:
        near = f"; the closest registered method is `{found[0][1].name}` (relative difference {found[0][0]:.2g})" \
            if found else ""
        lines.append(f"  unexplained: no registered rlkl method reproduces your loss's expected gradient{near}. The "
                     f"whole gap (rel error {rec['rel_error']:.3g}, cosine {rec['cosine']:.4f}) is unexplained.")
    exact = _exact_for(obj, G, mdp, pi, beh, ref, g, tol)
    if exact:
        lines.append("  on this tree your loss is exact for: " + "; ".join(exact))
    return "\n".join(lines), match


# ------------------------------------------------------------------------------------------------ conformance
@dataclass
class ConformsReport:
    """Result of `assert_conforms`.

    Attributes:
      loss, method: names; passed; n_cases; max_loss_rel, max_grad_rel: worst relative differences;
      worst: the worst case (seed, shape, loss values); padding_grad: max |∂loss/∂logp| on padding;
      clean_passed: the same comparison with zero padding (tells a padding leak from a formula difference);
      diagnosis: plain-words causes tried when it fails.
    """

    loss: str
    method: str
    passed: bool
    n_cases: int
    max_loss_rel: float
    max_grad_rel: float
    worst: dict
    padding_grad: float
    padding: str
    clean_passed: Optional[bool] = None
    diagnosis: list = field(default_factory=list)

    def summary(self) -> str:
        w = self.worst
        lines = [f"{self.loss} {'conforms to' if self.passed else 'does NOT conform to'} rlkl `{self.method}` on "
                 f"{self.n_cases} seeded ragged batches ({self.padding} padding): max loss rel diff "
                 f"{self.max_loss_rel:.2e}, max grad rel diff {self.max_grad_rel:.2e}, max |grad| on padding "
                 f"{self.padding_grad:.2e}"]
        if w:
            lines.append(f"  worst case: seed {w['seed']}, shape {w['shape']}, loss {w['loss']:.10g} vs "
                         f"{w['reference']:.10g}, grad rel diff {w['grad_rel']:.2e}, cosine {w['cosine']:.6f}")
        lines += [f"  - {d}" for d in self.diagnosis]
        return "\n".join(lines)


def _loss_and_grad(fn, logp: Tensor, batch) -> tuple[float, Tensor]:
    leaf = logp.detach().clone().requires_grad_(True)
    out = fn(leaf, batch)
    loss = out[0] if isinstance(out, tuple) else out
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError(f"the loss must return a scalar tensor, got {type(loss).__name__}")
    (g,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    return float(loss.detach()), (torch.zeros_like(leaf) if g is None else g.detach())


def _rel(a: float, b: float, atol: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), atol) if math.isfinite(a) else float("inf")


def _grel(a: Tensor, b: Tensor, atol: float) -> float:
    if not bool(torch.isfinite(a).all()):
        return float("inf")
    return _norm(a - b) / max(_norm(a), _norm(b), atol)


def _compare_cases(fn, ref_fn, cases, use_garbage: bool, atol: float) -> tuple[float, float, dict, float]:
    max_l = max_g = pad_g = 0.0
    worst: dict = {}
    score = -1.0
    for c in cases:
        lp, b = (c.logp_garbage, c.garbage_batch) if use_garbage else (c.logp, c.batch)
        la, ga = _loss_and_grad(fn, lp, b)
        lb, gb = _loss_and_grad(ref_fn, c.logp, c.batch)
        valid = c.batch.mask
        lr, gr = _rel(la, lb, atol), _grel(torch.where(valid, ga, 0.0), gb, atol)
        pad = float(torch.where(valid, 0.0, ga).abs().max()) if bool((~valid).any()) else 0.0
        pad = pad if math.isfinite(pad) else float("inf")
        max_l, max_g, pad_g = max(max_l, lr), max(max_g, gr), max(pad_g, pad)
        if max(lr, gr) > score:
            score = max(lr, gr)
            worst = {"seed": c.seed, "shape": c.shape, "loss": la, "reference": lb, "grad_rel": gr,
                     "cosine": _cos(torch.where(valid, ga, 0.0), gb)}
    return max_l, max_g, worst, pad_g


def assert_conforms(loss_fn: Any, method: Any, group_size: Optional[int] = None, n_cases: int = 24, seed: int = 0,
                    padding: str = "huge", shapes: Sequence[tuple[int, int]] = ((1, 5), (2, 8), (3, 3), (2, 1)),
                    max_gap: float = 0.5, holes: bool = False, loss_rtol: float = 1e-10, grad_rtol: float = 1e-10,
                    atol: float = 1e-12, diagnose: bool = True, name: Optional[str] = None) -> ConformsReport:
    """Assert that ``loss_fn`` has the loss value and gradient of ``method.loss`` on seeded ragged batches.

    Each case is a random rollout batch (groups of ``group_size`` rows, right-padded ragged masks, binary and
    continuous rewards, π_θ ≠ π_old so clip branches are exercised); ``loss_fn`` sees garbage where the mask
    is False (``padding``: ``huge`` finite values, or ``nan``), the reference ``method.loss`` sees zeros. Passes
    when every case has |ΔL| <= loss_rtol·|L| and ‖Δ∇L‖ <= grad_rtol·‖∇L‖ on valid tokens, and the gradient on
    padding is exactly zero.

    Args:
      loss_fn: rlkl's ``loss_fn(logp, batch)`` or an adapter; an adapter without ``advantage=`` is given the
        method's own advantages (``method.advantages(batch)``) — then the check certifies the loss given the
        advantages, not the advantage estimator.
      method: a `Method` or a registered name.
      group_size: G (default 4 for a group-based method, else 1); n_cases, seed, shapes ((groups, T) pairs),
      max_gap, holes: the batches (`rlkl.testing.batches.conformance_batches`).
      diagnose: on failure, try the usual causes (padding leak, another aggregation, a constant factor).
    Returns:
      the `ConformsReport`. Raises AssertionError with it on failure.
    """
    __tracebackhide__ = True  # pytest: show the caller's line and the report, not this frame
    from rlkl.methods import get_method
    from rlkl.testing.batches import conformance_batches

    m = get_method(method) if isinstance(method, str) else method
    if not isinstance(m, Method):
        raise ValueError(f"method must be an rlkl Method or a registered name, got {type(method).__name__}")
    G = group_size if group_size is not None else (4 if m.is_group_based else 1)
    loss = as_rlkl_loss(loss_fn)
    if isinstance(loss, LossSpec):
        loss = loss.loss_fn
    if isinstance(loss, LossAdapter) and loss.needs_advantage and loss.advantage is None:
        loss = loss.with_advantage(m)
    label = name or getattr(loss, "name", None) or getattr(loss, "__name__", "loss_fn")
    ref_fn = lambda lp, b: m.loss(lp, b)[0]
    cases = list(conformance_batches(n_cases, G, seed, padding, shapes, max_gap, holes))
    max_l, max_g, worst, pad_g = _compare_cases(loss, ref_fn, cases, True, atol)
    passed = max_l <= loss_rtol and max_g <= grad_rtol and pad_g == 0.0
    report = ConformsReport(label, m.name, passed, n_cases, max_l, max_g, worst, pad_g, padding)
    if not passed and diagnose:
        report.clean_passed, report.diagnosis = _diagnose(loss, m, cases, max_l, max_g, pad_g, loss_rtol, grad_rtol,
                                                          atol)
    if not passed:
        raise AssertionError(report.summary())
    return report


def _diagnose(loss, m: Method, cases, max_l, max_g, pad_g, loss_rtol, grad_rtol, atol) -> tuple[bool, list]:
    from rlkl.components import AggMode, Aggregation

    out = []
    cl, cg, _, _ = _compare_cases(loss, lambda lp, b: m.loss(lp, b)[0], cases, False, atol)
    clean = cl <= loss_rtol and cg <= grad_rtol
    if pad_g > 0:
        out.append(f"gradient leaks into padding (max |∂loss/∂logp| = {pad_g:.3g} where mask is False): padded "
                   "tokens would be trained on")
    if clean and (max_l > loss_rtol or max_g > grad_rtol):
        out.append("with zeros on padding it conforms: the padding values leak into your loss (mask every token "
                   "term before reducing, e.g. torch.where(mask, x, 0))")
    if not clean:
        for mode in AggMode:
            if mode is m.aggregation.mode:
                continue
            try:
                alt = m.replace(aggregation=Aggregation(mode))
            except ValueError:
                continue
            al, ag, _, _ = _compare_cases(loss, lambda lp, b: alt.loss(lp, b)[0], cases, False, atol)
            if al <= loss_rtol and ag <= grad_rtol:
                out.append(f"it conforms to `{m.name}` with aggregation {mode.value!r} instead of "
                           f"{m.aggregation.mode.value!r}")
        ratios = []
        for c in cases[:6]:
            la, _ = _loss_and_grad(loss, c.logp, c.batch)
            lb, _ = _loss_and_grad(lambda lp, b: m.loss(lp, b)[0], c.logp, c.batch)
            if abs(lb) > 1e-8:
                ratios.append(la / lb)
        if len(ratios) >= 3 and max(ratios) - min(ratios) <= 1e-9 * max(1.0, abs(ratios[0])):
            out.append(f"your loss is a constant {ratios[0]:.6g} × the method's loss")
        if not out:
            out.append("no single cause found: compare per token, e.g. the loss given the method's advantages "
                       "(m.advantages(batch)) with m.policy_loss_terms")
    return clean, out
