"""Audit: does a loss's exact expected gradient equal −∇(the objective it claims)? If not, which known terms
make up the gap?

For a method M with intended objective J (``M.objective`` with M's β, G, std, ε: `Method.bound_objective`) the
audit computes on each tree, in float64:

    g      = E[∇_θ L_M]            (`rlkl.toy.expected.expected_gradient`: the method's own loss, judged)
    target = −c·∇_θ J               (c: the aggregation constant, `aggregation_scale`)
    g      = target + Σ_k term_k + residual

Each bias term is a `rlkl.toy.terms.BiasTerm` measured from exact quantities of the tree with the formulas of
`rlkl.toy.reference`, written independently of the method's code (group statistics, clip rules, RPG weights, KL
estimators); the finite-group utility of the target is an independent binomial sum too. So a bug in the method —
or in the explanation — leaves a residual. A verdict is **as predicted** when ``unexplained`` ≤ 1e-10 and the
terms present (> ``tol``·‖target‖) are exactly those the theory predicts (`rlkl.toy.terms.predicted_terms`,
``Method.predicted_bias_terms``). Record schema and the terms' formulas: docs/audit.md.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterable, Optional, Sequence

import torch

from rlkl.objective import Objective, Regularizer, Std, Utility
from rlkl.toy import reference as ref_
from rlkl.toy.context import AuditContext
from rlkl.toy.expected import expected_gradient, loss_spec, threads_for
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.policies import LogLinearPolicy, Policy, TabularPolicy
from rlkl.toy.terms import Setting, measure_terms, predicted_terms

Tensor = torch.Tensor

#: relative tolerance of EXACT, and the size above which a bias term counts as present
DEFAULT_TOL = 1e-8
#: the largest residual (relative to ‖target‖) an "as predicted" verdict allows
EXPLAINED_TOL = 1e-10


# ------------------------------------------------------------------------------------------------ helpers
def aggregation_scale(method: Any, mdp: TreeMDP) -> float:
    """c such that the exact method's expected gradient is −c·∇J: 1 for ``seq-mean-token-sum``, 1/C for
    ``seq-mean-token-sum-norm`` (C = the aggregation's horizon or T), 1/T for ``token-mean`` and
    ``seq-mean-token-mean`` (exact only for fixed length T; with EOS the difference is ``length_normalization``)."""
    return ref_.aggregation_constant(method.aggregation, mdp.horizon)


def shaped_reward(mdp: TreeMDP, behaviour: Policy, values: Tensor, group_size: int, advantage) -> Tensor:
    """h_x(v) = E[A_1 | v_1 = v] for every response: ``[P, N]``, the other G − 1 rows i.i.d. from the behaviour
    policy, as a multinomial sum over their value classes (`rlkl.toy.reference.group_law`; FRPO arXiv
    2601.10201 Prop. 3.1 for binary rewards).

    Args:
      values: ``[P, N]`` per-response sequence reward (possibly KL-shaped); advantage: an Advantage component.
    """
    q = behaviour.probs().detach()
    out = []
    for x in range(mdp.num_prompts):
        law = ref_.group_law(values[x], q[x], group_size)
        out.append(ref_.group_advantage(advantage, values[x], law, group_size) @ law.probs)
    return torch.stack(out)


def skip_reason(method: Any, mdp: TreeMDP) -> Optional[str]:
    """Why ``method`` cannot be audited on ``mdp`` (its claim needs binary rewards), or None."""
    objective = getattr(method, "objective", None)
    if isinstance(objective, Objective) and objective.needs_binary_rewards and not mdp.is_binary:
        return (f"its objective {objective.describe()} is defined for binary rewards (a success probability); "
                f"{mdp.name} has real rewards")
    return None


def _norm(x: Tensor) -> float:
    return float(x.norm())


def _cos(a: Tensor, b: Tensor) -> float:
    na, nb = a.norm(), b.norm()
    return float((a * b).sum() / (na * nb)) if na > 0 and nb > 0 else float("nan")


# ------------------------------------------------------------------------------------------------ one audit
@dataclasses.dataclass
class AuditResult:
    """Vectors and numbers of one audit (``record`` is the JSON-able summary, see docs/audit.md)."""

    record: dict
    grad: Tensor
    target: Tensor
    terms: dict
    residual: Tensor


def audit_one(method: Any, mdp: TreeMDP, policy: Policy, behaviour: Optional[Policy] = None,
              ref: Optional[Policy] = None, group_size: int = 4, objective: Any = None, scale: Optional[float] = None,
              tol: float = DEFAULT_TOL, decompose: bool = True, setup: Optional[dict] = None,
              predicted: Optional[Sequence[str]] = None) -> AuditResult:
    """Audit one method on one tree / policy configuration.

    Args:
      method: a Method, or a `LossSpec`/callable (then ``objective`` — an ``rlkl.objective.Objective`` — is
        required and no bias terms are measured).
      mdp, policy: the tree and π_θ; behaviour: π_old (default π_θ: on-policy); ref: π_ref (default π_old).
      group_size: G; objective: override the intended objective; scale: override c.
      tol: relative tolerance of EXACT and of a term's presence; decompose: measure the bias terms.
      predicted: the terms the theory predicts (default `rlkl.toy.terms.predicted_terms`).
    Returns:
      `AuditResult`; ``record`` has method, objective, mdp, rel_error, exact, bias_terms, unexplained, ….
    """
    with threads_for(mdp):
        return _audit_one(method, mdp, policy, behaviour, ref, group_size, objective, scale, tol, decompose, setup,
                          predicted)


def _prepare(method, mdp, policy, behaviour, ref, group_size, objective, scale):
    from rlkl.methods import Method

    is_method = isinstance(method, Method)
    off_policy = behaviour is not None and behaviour is not policy and not torch.equal(
        behaviour.theta.detach(), policy.theta.detach())
    beh = behaviour if behaviour is not None else policy.detached()
    spec = loss_spec(method, mdp, group_size)
    G = spec.group_size
    if objective is None:
        if not is_method:
            raise ValueError("auditing a loss function needs objective= (an rlkl.objective.Objective)")
        objective = method.bound_objective(G)
    elif objective.beta is None:
        objective = objective.bind(beta=method.beta if is_method else 0.0)
    c = scale if scale is not None else (aggregation_scale(method, mdp) if is_method else 1.0)
    ctx = AuditContext(method if is_method else None, mdp, policy, beh, ref if ref is not None else beh, G, c,
                       objective, off_policy)
    return spec, ctx, is_method


def _decompose(ctx: AuditContext, notes: list) -> dict:
    if not (ctx.policy.normalized and ctx.behaviour.normalized):
        notes.append("bias terms are defined for normalized policies: not decomposed")
        return {}
    try:
        return measure_terms(ctx)
    except ValueError as exc:  # a component the reference formulas do not know
        notes.append(f"not decomposed: {exc}")
        return {}


def _audit_one(method, mdp, policy, behaviour, ref, group_size, objective, scale, tol, decompose, setup, predicted):
    t0 = time.perf_counter()
    spec, ctx, is_method = _prepare(method, mdp, policy, behaviour, ref, group_size, objective, scale)
    eg = expected_gradient(spec, mdp, policy, ctx.behaviour, ref, ctx.G)
    g, target = eg.grad, ctx.target
    notes: list[str] = []
    terms = _decompose(ctx, notes) if decompose and is_method else {}
    residual = g - target - sum(terms.values(), torch.zeros_like(g))
    tnorm = _norm(target)
    denom = tnorm if tnorm > 1e-300 else 1.0
    present = {k: v for k, v in terms.items() if _norm(v) / denom > tol}
    setting = Setting(off_policy=ctx.off_policy, variable_length=not mdp.fixed_length)
    if predicted is None and is_method:
        predicted = predicted_terms(method, setting)
    descent = target / ctx.c if ctx.c else target  # −∇J
    record = {
        "method": spec.name,
        "objective": ctx.objective.describe(),
        "mdp": {**mdp.describe(), **(setup or {}), "off_policy": ctx.off_policy},
        "group_size": ctx.G,
        "beta": float(ctx.objective.beta or 0.0),
        "scale": ctx.c,
        "fitted_scale": float((g * descent).sum() / (descent * descent).sum()) if _norm(descent) > 0 else float("nan"),
        "rel_error": _norm(g - target) / denom,
        "cosine": _cos(g, target),
        "exact": _norm(g - target) / denom <= tol,
        "bias_terms": {k: {"rel_norm": _norm(v) / denom, "cosine_with_bias": _cos(v, g - target)}
                       for k, v in present.items()},
        "unexplained": _norm(residual) / denom,
        "predicted_terms": None if predicted is None else list(predicted),
        "as_predicted": None,
        "route": eg.route,
        "seconds": 0.0,
        "notes": notes,
    }
    if predicted is not None:
        record["unpredicted_terms"] = sorted(set(present) - set(predicted))
        record["missing_terms"] = sorted(set(predicted) - set(present))
        record["as_predicted"] = bool(record["unexplained"] <= EXPLAINED_TOL and set(present) == set(predicted))
    record["seconds"] = time.perf_counter() - t0
    return AuditResult(record, g, target, terms, residual)


# ------------------------------------------------------------------------------------------------ public audit
def _as_method(obj: Any, framework: Optional[str] = None):
    from rlkl import methods as M

    if isinstance(obj, str):
        return M.get_method(obj)
    if isinstance(obj, dict):
        fw = framework
        if fw is None:
            keys = set(obj)
            fw = "verl" if any(k.split(".")[0] in ("algorithm", "actor", "actor_rollout_ref") for k in keys) else "trl"
        from rlkl.integrations.flags import from_trl, from_verl

        return from_verl(obj) if fw == "verl" else from_trl(obj)
    return obj


def default_mdps(vocab: int = 3, horizon: int = 3, prompts: int = 2, eos: bool = False, seeds: Sequence[int] = (0,),
                 reward: str = "binary") -> list[TreeMDP]:
    """The audit's default trees: one random tree per seed."""
    return [TreeMDP.random(vocab, horizon, prompts, eos=eos, reward=reward, seed=s) for s in seeds]


def make_setup(mdp: TreeMDP, seed: int = 0, off_policy: bool = False, policy: str = "tabular",
               logit_scale: float = 1.0, off_policy_scale: float = 0.3) -> tuple[Policy, Policy, Policy]:
    """(π_θ, π_old, π_ref) for an audit: random π_θ and π_ref (seeded), π_old = π_θ or π_θ perturbed."""
    if policy == "tabular":
        pi = TabularPolicy.random(mdp, logit_scale, seed=10_000 + seed)
        ref = TabularPolicy.random(mdp, logit_scale, seed=20_000 + seed).detached()
    elif policy == "loglinear":
        pi = LogLinearPolicy.random(mdp, dim=4, scale=logit_scale, seed=10_000 + seed)
        ref = pi.with_theta(pi.theta.detach() * 0.0)
    else:
        raise ValueError(f"policy must be 'tabular' or 'loglinear', got {policy!r}")
    old = pi.perturbed(off_policy_scale, 30_000 + seed).detached() if off_policy else pi.detached()
    return pi, old, ref


def audit(method: Any, mdps: Optional[Iterable[TreeMDP]] = None, group_size: int = 4, seeds: Sequence[int] = (0,),
          off_policy: bool = False, beta: Optional[float] = None, objective: Any = None, policy: str = "tabular",
          framework: Optional[str] = None, tol: float = DEFAULT_TOL) -> list[dict]:
    """Audit a method on trees: for each tree and seed, exact expected gradient vs −c·∇(intended objective).

    Args:
      method: a Method, a registry name, a verl/TRL flag dict (``framework`` "verl"/"trl", guessed from the keys),
        or a callable ``loss_fn(logp, batch)`` (then ``objective`` is required; c = 1).
      mdps: TreeMDPs (default: `default_mdps`); a tree whose rewards the claim cannot take raises (`skip_reason`).
      group_size: G; seeds: policy seeds per tree; off_policy: sample from a perturbed π_old.
      beta: override the method's β (``method.replace(beta=...)``).
      policy: ``"tabular"`` or ``"loglinear"``.
    Returns:
      A list of JSON-able records (schema: docs/audit.md).
    """
    m = _as_method(method, framework)
    from rlkl.methods import Method

    if beta is not None and isinstance(m, Method) and m.has_kl:
        m = m.replace(beta=float(beta))  # β only where the method has a KL to weigh
    mdps = list(mdps) if mdps is not None else default_mdps()
    records = []
    for mdp in mdps:
        reason = skip_reason(m, mdp) if objective is None else None
        if reason is not None:
            raise ValueError(f"cannot audit {getattr(m, 'name', m)!r} on {mdp.name}: {reason}")
        for s in seeds:
            pi, old, ref = make_setup(mdp, s, off_policy, policy)
            res = audit_one(m, mdp, pi, old if off_policy else None, ref, group_size, objective, tol=tol,
                            setup={"seed": int(s), "policy": policy})
            records.append(res.record)
    return records


# ------------------------------------------------------------------------------------------------ verify rows
#: the settings of `rlkl verify`: (off_policy, eos, reward, policy)
GRID = [(off, eos, reward, pol) for off in (False, True) for eos in (False, True) for reward in ("binary", "real")
        for pol in ("tabular", "loglinear")]


def _grid_trees(quick: bool) -> tuple[dict, int]:
    """One tree per (eos, reward), G = 4 (w_G is not constant in p for G >= 4). Default: V2 T2 P2 (fixed length),
    V3 T2 P2 (EOS); ``--full``: V3 T3 P2, real fixed-length rewards on V3 T2 P2 (with 27 distinct rewards the
    exact group law alone has 3654 multisets per response)."""
    sizes = ({(False, "binary"): (2, 2, 2), (False, "real"): (2, 2, 2), (True, "binary"): (3, 2, 2),
              (True, "real"): (3, 2, 2)} if quick else
             {(False, "binary"): (3, 3, 2), (False, "real"): (3, 2, 2), (True, "binary"): (3, 3, 2),
              (True, "real"): (3, 3, 2)})
    trees = {key: TreeMDP.random(*sizes[key], eos=key[0], reward=key[1], seed=11 + i) for i, key in enumerate(sizes)}
    return trees, 4


def _label(off, eos, reward, pol) -> str:
    return "/".join(["off" if off else "on", "eos" if eos else "fixed", reward, pol])


def _method_row(name: str, m: Any, trees: dict, G: int):
    """One verdict row: ``m`` on every setting of `GRID` (β raised to ≥ 0.1 so the KL terms are visible)."""
    from rlkl.report import Verdict

    t0 = time.perf_counter()
    if m.beta > 0:
        m = m.replace(beta=max(m.beta, 0.1))
    results, skipped = {}, []
    for off, eos, reward, pol in GRID:
        mdp = trees[(eos, reward)]
        if skip_reason(m, mdp):
            skipped.append(_label(off, eos, reward, pol))
            continue
        pi, old, ref = make_setup(mdp, 0, off, pol)
        try:
            res = audit_one(m, mdp, pi, old if off else None, ref, G, setup={"seed": 0, "policy": pol}).record
        except Exception as exc:  # a broken audit is a FAIL row, not a crash of `rlkl verify`
            return Verdict("audit", f"{name}: {m.objective.describe()}", m.citation or "rlkl.methods", "FAIL",
                           f"{_label(off, eos, reward, pol)}: {type(exc).__name__}: {exc}"[:300],
                           time.perf_counter() - t0, False)
        results[(off, eos, reward, pol)] = res
    return _summarize(name, m, results, skipped, time.perf_counter() - t0)


def _summarize(name, m, results: dict, skipped: list, seconds: float):
    from rlkl.report import Verdict

    base = results[(False, False, "binary", "tabular")]
    bad = [(k, r) for k, r in results.items() if not r["as_predicted"]]
    terms = ", ".join(f"{k} {v['rel_norm']:.2g}" for k, v in base["bias_terms"].items())
    seen = set(base["bias_terms"])
    extra = {}
    for key, tag in (((True, False, "binary", "tabular"), "off-policy"), ((False, True, "binary", "tabular"), "EOS")):
        if key in results:
            extra[tag] = sorted(set(results[key]["bias_terms"]) - seen)
    parts = [f"{len(results) - len(bad)}/{len(results)} settings as predicted"
             + (f" ({len(skipped)} skipped: binary-reward claim)" if skipped else "")
             + f", max unexplained {max(r['unexplained'] for r in results.values()):.1e}"]
    for k, r in bad[:2]:
        parts.append(f"NOT AS PREDICTED {_label(*k)}: unpredicted {r['unpredicted_terms']}, missing "
                     f"{r['missing_terms']}, unexplained {r['unexplained']:.2g}")
    parts.append(f"on-policy: rel_error {base['rel_error']:.2g}" + (f", terms [{terms}]" if terms else ""))
    parts += [f"{tag} adds [{', '.join(t)}]" for tag, t in extra.items() if t]
    status = "EXACT" if base["exact"] else "BIASED"
    return Verdict("audit", f"{name}: {m.objective.describe()}", m.citation or "rlkl.methods", status,
                   "; ".join(parts), seconds, not bad)


def _arcsin_row(trees: dict, G: int):
    """FRPO Prop. 3.1: GRPO's utility is 2·arcsin√p only as G → ∞; at finite G the gap is finite_group_utility."""
    from rlkl.methods import get_method
    from rlkl.report import Verdict
    from rlkl.components import GroupStandardized

    t0 = time.perf_counter()
    mdp = trees[(False, "binary")]
    m = get_method("no_kl").replace(advantage=GroupStandardized(Std.POPULATION, 0.0))
    arcsin = Objective(Utility.ARCSIN, Regularizer.NONE, group_size=G, std=Std.POPULATION, beta=0.0)
    pi, _, ref = make_setup(mdp, 0)
    r = audit_one(m, mdp, pi, None, ref, G, objective=arcsin, predicted=("finite_group_utility",)).record
    detail = (f"{mdp.name} G={G}: rel_error {r['rel_error']:.3g}, finite_group_utility "
              f"{r['bias_terms'].get('finite_group_utility', {}).get('rel_norm', 0.0):.3g}, unexplained "
              f"{r['unexplained']:.1e}")
    return Verdict("audit", "no_kl (population std): E 2asin(sqrt p) only as G -> inf",
                   "FRPO arXiv 2601.10201 Prop. 3.1", "EXACT" if r["exact"] else "BIASED", detail,
                   time.perf_counter() - t0, bool(r["as_predicted"]))


def verify_rows(quick: bool = True) -> list:
    """Verdict rows for ``rlkl verify``: every registered method (and those of ``AWAITING_AUDIT``) on every setting
    of `GRID`.

    {on-, off-policy (π_old = π_θ + 0.3·noise)} × {fixed length, EOS} × {binary, real rewards} × {tabular,
    log-linear}; one row per method (status: its on-policy verdict on the fixed-length binary tree), ``expected``
    when every setting is as predicted. Small trees by default; ``quick=False`` (``rlkl verify --full``) uses the
    `rlkl audit` defaults (V = 3, T = 3, P = 2, G = 4).
    """
    from rlkl.methods import AWAITING_AUDIT, REGISTRY

    trees, G = _grid_trees(quick)
    rows = [_method_row(name, m, trees, G) for name, m in {**REGISTRY, **AWAITING_AUDIT}.items()]
    rows.append(_arcsin_row(trees, G))
    return rows
