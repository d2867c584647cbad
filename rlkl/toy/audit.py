"""Audit: does a loss's exact expected gradient equal −∇(the objective it claims)? If not, which known terms
make up the gap?

For a method M with intended objective J (``M.objective`` with β, G, std, ε of M; `Method.bound_objective`) the audit
computes on each MDP, in float64:

    g      = E[∇_θ L_M]                             (`rlkl.toy.expected.expected_gradient`, the method's own loss)
    target = −c·∇_θ J                                (c = aggregation constant, see `aggregation_scale`)
    g      = target + Σ_k term_k + residual

with each named bias term computed *independently of the method's code* from exact quantities of the tree
(`rlkl.toy.objectives` fields) — or, where a term is defined as "what changes when one choice is undone"
(clipping, length normalization), from the same engine on the method with that choice replaced:

* ``finite_group_utility`` / ``leave_in_shrink`` / ``utility_mismatch``: −c(∇_θ Σ π_θ·h(r) − ∇U_intended), with
  h(r) = E[A_1 | r_1 = r] the shaped reward of the advantage (others from π_old; FRPO spec I3/I4). Binary
  rewards + GRPO: ∇U_G − ∇U; Dr. GRPO: −(1/G)∇p.
* ``no_kl_gradient`` (k1 as a loss: nothing), ``forward_direction`` (k3 as a loss: PG_fwd − PG_rev),
  ``future_kl_missing`` (PG_rev − ∇KL_seq), ``missing_importance_weight`` (states and tokens from π_old without
  ρ) — local fields `local_score_field` (spec frpo.md §4.5, rpg.md §2.3), all × c·β.
* ``k_in_reward``: cβ(S_k − ∇D) with S_k the score-function gradient of E_π Σ_t k (zero for k1);
  ``fusion_before_normalization``: KL fused into the reward before standardization (FRPO Prop. 3.2).
* ``token_level_reverse``: token-level RKL/URKL RPG surrogate vs the sequence KL to π_old (rpg.md §1.8(5)).
* ``token_level_ratio``: off-policy reward part with per-token ratios w_t instead of the sequence ratio
  (rpg.md §8.32), ``clipping``: the change when clipping is switched off (off-policy only).
* ``length_normalization``: token-mean / 1/|y| aggregation with variable lengths vs c × the per-sequence sum
  (Dr. GRPO, arXiv 2503.20783).

A method is **EXACT** when ``rel_error`` = ‖g − target‖/‖target‖ ≤ ``tol``; otherwise **BIASED**, and the audit
says whether the named terms explain the whole gap (``unexplained`` ≤ tol) and whether they are the ones the
spec predicts (``Method.predicted_bias_terms``). The JSON record schema is in docs/audit.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

from rlkl.toy.expected import expected_gradient, loss_spec, threads_for
from rlkl.toy.mdp import TreeMDP
from rlkl.components import (GSPO, RPG, BatchStandardized, Estimator, FutureReturn, GroupCentered, GroupStandardized,
                             KLLoss, KLReward, LeaveOneOut, PPOClip, Raw, Reinforce, RewardForm, RPGDivergence,
                             RPGLevel)
from rlkl.objective import Objective, Regularizer, Std
from rlkl.toy.objectives import (local_score_field, objective_gradient, ratio_score_field, regularizer_value,
                                 score_gradient)
from rlkl.toy.policies import LogLinearPolicy, Policy, TabularPolicy

Tensor = torch.Tensor

DEFAULT_TOL = 1e-8

#: terms the audit can compute, with a one-line meaning (superset of rlkl.methods.BIAS_TERMS where it applies)
TERM_DOCS = {
    "finite_group_utility": "std-normalized group advantage ascends Σπ·h(r) (U_G(p) for binary rewards), not the intended utility",
    "leave_in_shrink": "group mean including the sample: update × (1 − 1/G) (reward and fused KL)",
    "utility_mismatch": "advantage's shaped reward differs from the intended utility",
    "no_kl_gradient": "k1 as a loss: zero expected KL gradient",
    "forward_direction": "k3 as a loss follows the local forward KL(π_ref‖π)",
    "future_kl_missing": "local (frozen-prefix) KL gradient instead of the sequence KL: the future-KL score term is missing",
    "missing_importance_weight": "KL loss under π_old tokens without ρ = π/π_old",
    "k_in_reward": "k2/k3 in the reward: score-function gradient of E Σk, not of the KL",
    "fusion_before_normalization": "KL fused into the reward before group standardization",
    "token_level_reverse": "token-level reverse-KL RPG surrogate (states from π_old) vs sequence KL(π‖π_old)",
    "token_level_ratio": "off-policy reward part with per-token ratios instead of the sequence ratio",
    "clipping": "clipped samples lose their gradient (off-policy)",
    "length_normalization": "1/|y| or token-mean weighting with variable lengths",
    "stale_kl_reward": "off-policy: the KL in the reward uses π_old's log-ratios (score of KL at π_old's values)",
    "regularizer_mismatch": "the future-return f-divergence differs from the intended regularizer",
}


# ------------------------------------------------------------------------------------------------ helpers
def aggregation_scale(method: Any, mdp: TreeMDP) -> float:
    """c such that the exact method's expected gradient is −c·∇J: 1 for ``seq-mean-token-sum``, 1/C for
    ``seq-mean-token-sum-norm`` (C = ``method.horizon`` or T), 1/T for ``token-mean`` and ``seq-mean-token-mean``
    (exact only for fixed length T; with EOS the difference is the ``length_normalization`` term)."""
    return method.aggregation.scale(mdp.horizon)


def shaped_reward(mdp: TreeMDP, behaviour: Policy, values: Tensor, group_size: int, advantage) -> Tensor:
    """h_x(v) = E[A_1 | v_1 = v] for every response: ``[P, N]``.

    The other G−1 rows' values are i.i.d. from the behaviour distribution of v; the advantage is the library's
    ``compute_advantages(advantage, ·)`` evaluated on every multiset of the others' values (exact for any G;
    FRPO spec I4). ``raw`` gives h = v.

    Args:
      values: ``[P, N]`` per-response sequence reward (possibly KL-shaped).
    """
    if isinstance(advantage, Raw):
        return values.clone()
    if isinstance(advantage, BatchStandardized):
        raise ValueError("batch_standardized advantages have no per-prompt shaped reward")
    G = group_size
    q = behaviour.probs().detach()
    P, N = values.shape
    out = torch.zeros(P, N, dtype=torch.float64)
    for x in range(P):
        uniq, inv = torch.unique(values[x], return_inverse=True)
        K = uniq.shape[0]
        cq = torch.zeros(K, dtype=torch.float64).index_add_(0, inv, q[x])
        ms = torch.tensor(list(itertools.combinations_with_replacement(range(K), G - 1)), dtype=torch.long)
        counts = torch.zeros(ms.shape[0], K, dtype=torch.float64)
        counts.scatter_add_(1, ms, torch.ones_like(ms, dtype=torch.float64))
        logp = math.lgamma(G) - torch.lgamma(counts + 1).sum(-1) + torch.where(
            counts > 0, counts * torch.log(cq).unsqueeze(0), torch.zeros_like(counts)).sum(-1)
        pm = torch.where(torch.isfinite(logp), logp.exp(), torch.zeros_like(logp))  # [M]
        own = uniq.repeat_interleave(ms.shape[0])  # [K·M]
        rest = uniq[ms].repeat(K, 1)  # [K·M, G−1]
        groups = torch.cat([own.unsqueeze(1), rest], 1)  # [K·M, G]
        adv = advantage(groups.reshape(-1), G).view(-1, G)[:, 0]
        h_val = (adv.view(K, -1) * pm.unsqueeze(0)).sum(-1)  # [K]
        out[x] = h_val[inv]
    return out


def rollout_kl_values(mdp: TreeMDP, behaviour: Policy, ref: Policy, estimator: str) -> Tensor:
    """K(y) = Σ_t k(log π_old(a_t|s_t) − log π_ref(a_t|s_t)) per response: ``[P, N]`` (verl's in-reward KL)."""
    from rlkl.divergences import kl_estimate

    P = mdp.num_prompts
    with torch.no_grad():
        lr = behaviour.token_logp() - ref.token_logp()
        mask = mdp.enumerate().mask.repeat(P, 1)
        val = torch.where(mask, kl_estimate(lr, estimator), torch.zeros_like(lr))
    return val.sum(-1).reshape(P, -1)


def _k_grad_coef(method) -> Callable[[Tensor], Tensor]:
    """Per-token gradient coefficient c(δ) of the KL loss (∇k = c(δ)·∇log π), with ρ·k when IS-weighted."""
    from rlkl.divergences import kl_estimate

    kl = method.kl
    est = kl.estimator
    if kl.straight_through or est is Estimator.K2:
        base = lambda d: d
    elif est is Estimator.K1:
        base = lambda d: torch.ones_like(d)
    else:
        base = lambda d: -torch.expm1(-d)
    if not kl.importance_weight:
        return base
    # ∇(ρ·k) = ρ (k + c(δ)) ∇log π: the token weight ρ turns π_old-expectations into π-expectations
    return lambda d: kl_estimate(d, est.value) + base(d)


def _unclipped(method):
    if not method.policy_loss.clips:
        return None
    return method.replace(policy_loss=method.policy_loss.unclipped())


def _norm(x: Tensor) -> float:
    return float(x.norm())


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
    """Audit one method on one MDP / policy configuration.

    Args:
      method: Method or `LossSpec`/callable (then ``objective`` — an ``rlkl.objective.Objective`` — is required).
      mdp, policy: the tree and π_θ; behaviour: π_old (default π_θ: on-policy); ref: π_ref.
      group_size: G; objective: override the intended objective; scale: override c.
      tol: relative tolerance of EXACT.
      predicted: the bias terms the spec predicts (default ``method.predicted_bias_terms(...)``).
    Returns:
      `AuditResult`; ``record`` has method, objective, mdp, rel_error, cosine, exact, bias_terms, ….
    """
    with threads_for(mdp):
        return _audit_one(method, mdp, policy, behaviour, ref, group_size, objective, scale, tol, decompose, setup,
                          predicted)


def _audit_one(method, mdp, policy, behaviour, ref, group_size, objective, scale, tol, decompose, setup, predicted):
    t0 = time.perf_counter()
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
    eg = expected_gradient(spec, mdp, policy, beh, ref, G)
    g = eg.grad
    u_spec = objective.bind(beta=0.0)
    grad_u = objective_gradient(u_spec, mdp, policy, ref, beh)
    beta = float(objective.beta)
    if beta > 0 and objective.has_regularizer:
        reg = regularizer_value(objective, mdp, policy, ref, beh, beh)
        grad_d = torch.autograd.grad((mdp.prompt_probs * reg).sum(), policy.theta)[0]
    else:
        grad_d = torch.zeros_like(g)
    grad_j = grad_u - beta * grad_d
    target = -c * grad_j
    tnorm = _norm(target)
    denom = tnorm if tnorm > 1e-300 else 1.0
    rel_error = _norm(g - target) / denom
    cosine = float((g * target).sum() / (g.norm() * target.norm())) if g.norm() > 0 and tnorm > 0 else float("nan")
    fitted = float((g * -grad_j).sum() / (grad_j * grad_j).sum()) if _norm(grad_j) > 0 else float("nan")
    terms: dict[str, Tensor] = {}
    notes: list[str] = []
    if decompose and is_method and rel_error > tol:
        terms, notes = _bias_terms(method, mdp, policy, beh, ref, G, c, objective, grad_u, grad_d, off_policy,
                                   spec, g)
    residual = g - target - sum(terms.values(), torch.zeros_like(g))
    present = {k: v for k, v in terms.items() if _norm(v) / denom > tol}
    unexplained = _norm(residual) / denom
    if predicted is not None:
        predicted = list(predicted)
    elif is_method and hasattr(method, "predicted_bias_terms"):
        predicted = list(method.predicted_bias_terms(off_policy=off_policy, variable_length=not mdp.fixed_length))
    exact = rel_error <= tol
    record = {
        "method": spec.name,
        "objective": objective.describe(),
        "mdp": {**mdp.describe(), **(setup or {}), "off_policy": off_policy},
        "group_size": G,
        "beta": beta,
        "scale": c,
        "fitted_scale": fitted,
        "rel_error": rel_error,
        "cosine": cosine,
        "exact": exact,
        "bias_terms": {k: {"rel_norm": _norm(v) / denom,
                           "cosine_with_bias": _cos(v, g - target)} for k, v in present.items()},
        "unexplained": unexplained if not exact else 0.0,
        "predicted_terms": predicted,
        "as_predicted": None,
        "route": eg.route,
        "seconds": time.perf_counter() - t0,
        "notes": notes,
    }
    if predicted is not None:
        if exact:
            record["as_predicted"] = len(predicted) == 0
        else:
            record["as_predicted"] = bool(unexplained <= max(tol, 1e-7) and set(present) == set(predicted))
        record["unpredicted_terms"] = sorted(set(present) - set(predicted))
        record["missing_terms"] = sorted(set(predicted) - set(present))
    return AuditResult(record, g, target, terms, residual)


def _cos(a: Tensor, b: Tensor) -> float:
    na, nb = a.norm(), b.norm()
    return float((a * b).sum() / (na * nb)) if na > 0 and nb > 0 else float("nan")


def _bias_terms(method, mdp, policy, beh, ref, G, c, objective, grad_u, grad_d, off_policy, spec, g):
    """Named terms (dict name → θ-vector) with g ≈ −c∇J + Σ terms; see the module docstring."""
    terms: dict[str, Tensor] = {}
    notes: list[str] = []
    beta = float(method.beta)
    # --- length normalization: undo the per-token normalization, keep everything else
    base_method, g_rest, mult = method, g, 1.0
    if not mdp.fixed_length and method.aggregation.normalizes_by_length:
        try:
            from rlkl.components import AggMode, Aggregation

            summed = method.replace(aggregation=Aggregation(AggMode.SEQ_MEAN_TOKEN_SUM))
        except ValueError as exc:  # e.g. sequence-level RPG forces its aggregation
            notes.append(f"length_normalization not separable: {exc}")
        else:
            g_sum = expected_gradient(summed, mdp, policy, beh, ref, G).grad
            terms["length_normalization"] = g - c * g_sum
            base_method, g_rest, mult = summed, c * g_sum, c
    # --- clipping (off-policy): the change when clipping is switched off
    if off_policy:
        unc = _unclipped(base_method)
        if unc is not None:
            terms["clipping"] = g_rest - mult * expected_gradient(unc, mdp, policy, beh, ref, G).grad
    # --- reward part: shaped reward of the advantage vs the intended utility
    rewards = mdp.rewards
    adv = method.advantage
    fused = method.kl_active and isinstance(method.kl, KLReward) and method.kl.form is RewardForm.FUSED
    if isinstance(adv, BatchStandardized):
        notes.append("batch_standardized: no per-prompt theory; the gap stays unexplained")
        return terms, notes
    try:
        h = shaped_reward(mdp, beh, rewards, G, adv)
    except ValueError as exc:
        notes.append(str(exc))
        return terms, notes
    H = score_gradient(mdp, policy, h)
    name = ("finite_group_utility" if isinstance(adv, GroupStandardized) else
            "leave_in_shrink" if isinstance(adv, GroupCentered) else "utility_mismatch")
    terms[name] = -c * (H - grad_u)
    pl = method.policy_loss
    token_ratio = off_policy and (isinstance(pl, (PPOClip, Reinforce)) or (
        isinstance(pl, RPG) and pl.level is RPGLevel.TOKEN))
    ratio = "none" if isinstance(pl, Reinforce) else "token"
    if token_ratio and not fused:
        terms["token_level_ratio"] = -c * (ratio_score_field(mdp, policy, beh, h, ratio) - H)
    if token_ratio and method.kl_active and method.kl.reads_rollout_logprobs and not fused:
        notes.append("off-policy per-token ratios on the KL part of the advantage are not decomposed")
    # --- KL part
    if isinstance(pl, RPG):
        if pl.level is RPGLevel.TOKEN and pl.divergence.is_reverse and beta > 0:
            coef = (lambda d: d + 1.0) if pl.divergence is RPGDivergence.RKL else (lambda d: d)
            F = local_score_field(mdp, policy, beh, coef, state_policy=beh, action_policy=policy)
            terms["token_level_reverse"] = c * beta * (F - grad_d)
        return terms, notes
    if not method.kl_active:
        return terms, notes
    if ref is None:
        notes.append("no reference policy given: KL terms skipped")
        return terms, notes
    kl = method.kl
    if isinstance(kl, KLLoss):
        kcoef = _k_grad_coef(method)
        if off_policy and not kl.importance_weight:
            F_old = local_score_field(mdp, policy, ref, kcoef, state_policy=beh, action_policy=beh)
            F_pi = local_score_field(mdp, policy, ref, kcoef, state_policy=beh, action_policy=policy)
            terms["missing_importance_weight"] = c * beta * (F_old - F_pi)
        else:
            F_pi = local_score_field(mdp, policy, ref, kcoef, state_policy=beh, action_policy=policy)
        plain = not (kl.importance_weight or kl.straight_through)
        plain_k1 = kl.estimator is Estimator.K1 and plain
        if plain_k1:
            terms["no_kl_gradient"] = c * beta * (F_pi - grad_d)
            return terms, notes
        pg_rev = local_score_field(mdp, policy, ref, lambda d: d, state_policy=beh, action_policy=policy)
        if kl.estimator is Estimator.K3 and plain:
            terms["forward_direction"] = c * beta * (F_pi - pg_rev)
            base = pg_rev
        else:
            base = F_pi  # k2, k3+, ρ·k3 (= PG_rev), ρ·k1 (= PG_rev + 0)
            if not torch.allclose(base, pg_rev, rtol=1e-10, atol=1e-14):
                notes.append("KL loss gradient is neither PG_rev nor PG_fwd; its difference stays in the residual")
                base = pg_rev
        if objective.level == "sequence":
            terms["future_kl_missing"] = c * beta * (base - grad_d)
        return terms, notes
    if isinstance(kl, KLReward):
        K = rollout_kl_values(mdp, beh, ref, kl.estimator.value)
        S = score_gradient(mdp, policy, K)
        if kl.estimator is not Estimator.K1:
            terms["k_in_reward"] = c * beta * (S - grad_d)
        elif off_policy:
            # k1: S = ∇KL_seq exactly on-policy; off-policy the reward holds π_old's log-ratios
            terms["stale_kl_reward"] = c * beta * (S - grad_d)
        if fused:
            h_f = shaped_reward(mdp, beh, rewards - beta * K, G, adv)
            H_f = score_gradient(mdp, policy, h_f)
            if token_ratio:
                terms["token_level_ratio"] = -c * (ratio_score_field(mdp, policy, beh, h_f, ratio) - H_f)
            extra = -c * (H_f - H + beta * S)
            if isinstance(adv, GroupCentered):
                terms[name] = terms[name] + extra
            elif isinstance(adv, (GroupStandardized, BatchStandardized)):
                terms["fusion_before_normalization"] = extra
            else:
                if _norm(extra) > 1e-12 * max(1.0, _norm(H)):
                    terms["utility_mismatch"] = terms.get("utility_mismatch", 0) + extra
        return terms, notes
    if isinstance(kl, FutureReturn):
        # FRPO follows ∇ Σ_t E D_f (token-wise f-divergence) exactly on-policy
        from rlkl.toy.objectives import token_f_divergence

        if not (objective.regularizer is Regularizer.TOKEN_F_DIVERGENCE and objective.f_divergence == kl.divergence) \
                and kl.divergence not in ("reverse_kl", "reverse_kl_k3"):
            tf = (mdp.prompt_probs * token_f_divergence(mdp, policy, ref, kl.divergence)).sum()
            grad_tf = torch.autograd.grad(tf, policy.theta)[0]
            terms["regularizer_mismatch"] = c * beta * (grad_tf - grad_d)
        return terms, notes
    return terms, notes


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
    """The audit's default MDPs: one random tree per seed."""
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
    """Audit a method on MDPs: for each MDP and seed, exact expected gradient vs −c·∇(intended objective).

    Args:
      method: a Method, a registry name, a verl/TRL flag dict (``framework`` "verl"/"trl", guessed from the keys),
        or a callable ``loss_fn(logp, batch)`` (then ``objective`` is required; c = 1).
      mdps: TreeMDPs (default: `default_mdps`).
      group_size: G; seeds: policy seeds per MDP; off_policy: sample from a perturbed π_old.
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
        for s in seeds:
            pi, old, ref = make_setup(mdp, s, off_policy, policy)
            res = audit_one(m, mdp, pi, old if off_policy else None, ref, group_size, objective, tol=tol,
                            setup={"seed": int(s), "policy": policy})
            records.append(res.record)
    return records


# ------------------------------------------------------------------------------------------------ verify rows
def _grid(quick: bool):
    """Fixed grid of (label, mdp, G, off_policy, policy) for `rlkl verify`."""
    if quick:
        fixed = TreeMDP.random(2, 3, 2, reward="binary", seed=11)
        eos = TreeMDP.random(3, 3, 1, eos=True, reward="binary", seed=12)
        real = TreeMDP.random(2, 2, 2, reward="real", seed=13)
        G = 3
    else:
        fixed = TreeMDP.random(3, 3, 2, reward="binary", seed=11)
        eos = TreeMDP.random(3, 3, 2, eos=True, reward="binary", seed=12)
        real = TreeMDP.random(3, 2, 2, reward="real", seed=13)
        G = 4
    return fixed, eos, real, G


def verify_rows(quick: bool = True) -> list:
    """Verdict rows for ``rlkl verify``: every registered method × objective on a fixed grid of MDPs.

    On-policy on a fixed-length binary tree (all methods), off-policy (π_old = π_θ + 0.3·noise) for the methods
    with off-policy claims, the EOS tree for the aggregation modes (Dr. GRPO's length bias), real rewards for the
    linear advantages. Status EXACT/BIASED with the bias size; ``expected`` says whether the finding is what the
    spec predicts (``Method.predicted_bias_terms``, all of the gap explained by the named terms).
    """
    from rlkl.methods import REGISTRY

    fixed, eos, real, G = _grid(quick)
    rows = []
    plan = []
    for name, m in REGISTRY.items():
        plan.append((name, m, fixed, False))
    off_names = ["grpo", "grpo_is_k3", "grpo_k2_loss", "dapo", "rpg_fkl", "rpg_urkl", "rpg_reinforce_ufkl",
                 "rpg_reinforce_rkl", "rpg_reinforce_fkl_seq", "rpg_reinforce_urkl_seq"]
    for name in off_names:
        if name in REGISTRY:
            plan.append((name, REGISTRY[name], fixed, True))
    for name in ["grpo", "dr_grpo", "dapo", "frpo"]:
        if name in REGISTRY:
            plan.append((name, REGISTRY[name], eos, False))
    for name in ["reinforce", "rloo", "ppo_k1_rtg"]:
        if name in REGISTRY:
            plan.append((name, REGISTRY[name], real, False))
    for name, m, mdp, off in plan:
        rows.append(_verify_one(name, m, mdp, off, G))
    # FRPO Prop. 3.1: GRPO's utility is 2·arcsin√p only as G → ∞; at finite G it is U_G (frpo.md §0, I3)
    if "no_kl" in REGISTRY:
        m = REGISTRY["no_kl"].replace(advantage=GroupStandardized(Std.POPULATION, 0.0))
        arcsin = Objective("arcsin", "none", group_size=G, std="population", beta=0.0)
        rows.append(_verify_one("no_kl (population std)", m, fixed, False, G, objective=arcsin,
                                predicted=("finite_group_utility",), source="FRPO arXiv 2601.10201 Prop. 3.1"))
    return rows


def _verify_one(name, m, mdp, off, G, objective=None, predicted=None, source=None):
    """One verdict row: audit ``m`` on ``mdp`` (β raised to ≥ 0.1 so the KL terms are visible)."""
    from rlkl.report import Verdict

    t0 = time.perf_counter()
    if m.beta > 0:
        m = m.replace(beta=max(m.beta, 0.1))  # a visible KL term (registry β's are tiny)
    label = f"{name}: {objective.utility if objective is not None else m.objective.describe()}"
    where = f"{mdp.name}{' off-policy' if off else ''} G={G}"
    try:
        pi, old, ref = make_setup(mdp, 0, off)
        res = audit_one(m, mdp, pi, old if off else None, ref, G, objective=objective, predicted=predicted,
                        setup={"seed": 0, "policy": "tabular"}).record
    except Exception as exc:  # a broken audit is a FAIL row, not a crash of `rlkl verify`
        return Verdict("audit", label, where, "FAIL", f"{type(exc).__name__}: {exc}"[:200],
                       time.perf_counter() - t0, False)
    if res["exact"]:
        status = "EXACT"
        detail = f"{where}: rel_error {res['rel_error']:.1e}"
    else:
        status = "BIASED"
        tl = ", ".join(f"{k} {v['rel_norm']:.2g}" for k, v in res["bias_terms"].items())
        surprise = ""
        if res.get("unpredicted_terms"):
            surprise += f"UNPREDICTED {','.join(res['unpredicted_terms'])}; "
        if res.get("missing_terms"):
            surprise += f"PREDICTED BUT ABSENT {','.join(res['missing_terms'])}; "
        if res["unexplained"] > 1e-7:
            surprise += f"UNEXPLAINED {res['unexplained']:.2g}; "
        detail = (f"{surprise}{where}: rel_error {res['rel_error']:.3g} cos {res['cosine']:.3f}; terms [{tl}]; "
                  f"unexplained {res['unexplained']:.1e}")
    return Verdict("audit", label, source or m.citation[:60] or "rlkl.methods", status, detail,
                   time.perf_counter() - t0, bool(res["as_predicted"]))
