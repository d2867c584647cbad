"""Exact objectives on a `TreeMDP`: J(θ) = Σ_x ρ(x) [ U(p_θ(x)) − β·D_x(θ) ], value and gradient.

* p_θ(x) = Σ_y π_θ(y|x) R(x, y): success probability (binary rewards) or expected reward. For an
  unnormalized measure π_θ it is E_{π_θ}[R] in RPG's sense (Σ_y π_θ(y) R(y), arXiv 2505.17508 §0).
* Utilities U: ``expected_reward`` (U = p), ``linear`` (U = c·p with a stated constant c),
  ``arcsin`` (U = 2·arcsin√p, GRPO's G → ∞ utility, FRPO arXiv 2601.10201 Prop. 3.1) and ``finite_group``
  (the exact finite-G utility U_G of `rlkl.utility`, FRPO arXiv 2601.10201 Prop. 3.1).
* Regularizers D_x, anchored to π_ref (``anchor="ref"``) or to the behaviour policy π_old (``"old"``, RPG):
  - sequence level: ``reverse_kl`` KL(π‖π_a), ``forward_kl`` KL(π_a‖π) (normalized measures),
    ``unnormalized_reverse_kl`` UKL(π‖π_a) and ``unnormalized_forward_kl`` UKL(π_a‖π) (RPG Defs. 3.4, 3.1);
  - ``token_f_divergence``: FRPO's R = E_{y∼π} Σ_t D_f(π(·|s_t)‖π_a(·|s_t)) = Σ_s d_π(s) D_f(s)
    (d_π(s) = probability that a response passes through node s);
  - ``level="local"``: Σ_s sg[d_μ(s)] D(π(·|s), π_a(·|s)) with the state distribution d_μ of a fixed policy μ
    (default: π_θ itself at the evaluation point, held fixed): the objective whose gradient loss-side KL
    penalties follow (PG_rev / PG_fwd, docs/audit.md; FRPO arXiv 2601.10201 Prop. 4.3).

All values are differentiable float64 functions of ``policy.theta``; `objective_gradient` uses autograd.
The utilities' derivatives are the library's closed forms (``grpo_utility_grad``, ``finite_group_weight``).
"""

from __future__ import annotations

from typing import Optional

import torch

from rlkl.divergences import get_f_divergence
from rlkl.objective import Anchor, Level, Objective, Regularizer, Utility, coerce
from rlkl.toy.mdp import TreeMDP, threads_for
from rlkl.toy.policies import Policy
from rlkl.utility import finite_group_utility, finite_group_weight, grpo_utility, grpo_utility_grad

Tensor = torch.Tensor

_NORM_TOL = 1e-9


# ---------------------------------------------------------------------------------------------------- utilities
class _Utility(torch.autograd.Function):
    """U(p) with the closed-form derivative U'(p) from rlkl.utility (value and derivative on detached p)."""

    @staticmethod
    def forward(ctx, p, kind, group_size, std, eps):
        pd = p.detach().clamp(0.0, 1.0)
        if kind is Utility.ARCSIN:
            val = grpo_utility(pd)
            with torch.no_grad():
                interior = (pd > 0) & (pd < 1)
                safe = torch.where(interior, pd, torch.full_like(pd, 0.5))
                # U' = 1/√(p(1−p)) is infinite at p ∈ {0, 1}; there ∇p = 0 (all rewards equal under a full-support
                # policy), and the product is taken as 0.
                der = torch.where(interior, grpo_utility_grad(safe), torch.zeros_like(pd))
        else:
            val = finite_group_utility(pd, group_size, std, eps)
            der = finite_group_weight(pd, group_size, std, eps)
        ctx.save_for_backward(der)
        return val.to(p.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (der,) = ctx.saved_tensors
        return grad_out * der, None, None, None, None


def utility(p: Tensor, kind: str, group_size: Optional[int] = None, std: str = "population", eps: float = 0.0,
            scale: float = 1.0) -> Tensor:
    """U(p) elementwise, differentiable.

    ``expected_reward``: U = p; ``leave_in``: U = (1 − 1/G)·p (leave-in group-mean baseline; docs/audit.md, leave_in_shrink);
    ``linear``: U = scale·p; ``none``: U = 0; ``arcsin``: U = 2 arcsin√p (FRPO Prop. 3.1);
    ``finite_group``: U_G(p) = ∫_0^p w_G (``rlkl.utility``; ``group_size``, ``std``, ``eps`` as in GRPO);
    ``pass_at_k``: U = (1 − (1 − p)^G)/G (pass@G per sample; ``group_size`` = G).

    Args:
      p: ``[P]`` success probabilities (in [0, 1] for arcsin / finite_group).
      kind: a :class:`rlkl.objective.Utility` (or its value).
    Returns:
      ``[P]`` U(p); its autograd derivative is the library's U'(p).
    """
    kind = coerce(Utility, "utility", kind)
    if kind is Utility.EXPECTED_REWARD:
        return p
    if kind is Utility.LINEAR:
        return scale * p
    if kind is Utility.NONE:
        return torch.zeros_like(p)
    if kind is Utility.LEAVE_IN:
        if group_size is None or group_size < 1:
            raise ValueError(f"the leave_in utility needs group_size, got {group_size!r}")
        return (1.0 - 1.0 / group_size) * p
    if kind is Utility.PASS_AT_K:
        if group_size is None or group_size < 1:
            raise ValueError(f"the pass_at_k utility needs group_size, got {group_size!r}")
        return (1.0 - (1.0 - p) ** group_size) / group_size  # pass@G = 1 − (1 − p)^G, per sample of the group
    if kind is Utility.ARCSIN:
        return _Utility.apply(p, Utility.ARCSIN, None, std, eps)
    if group_size is None or group_size < 2:
        raise ValueError(f"the finite_group utility needs group_size >= 2, got {group_size!r}")
    return _Utility.apply(p, Utility.FINITE_GROUP, int(group_size), std, float(eps))


def success_prob(mdp: TreeMDP, policy: Policy, theta: Optional[Tensor] = None) -> Tensor:
    """p_θ(x) = Σ_y π_θ(y|x) R(x, y) per prompt: ``[P]`` (a measure-weighted sum for unnormalized π)."""
    return (policy.measure(theta) * mdp.rewards).sum(-1)


# ---------------------------------------------------------------------------------------------------- divergences
def _require_normalized(name: str, policy: Policy, theta=None) -> None:
    lm = policy.log_mass(theta).detach()
    if lm.abs().max() > _NORM_TOL:
        raise ValueError(f"{name} needs a normalized policy (log mass {lm.tolist()}); use the unnormalized_* "
                         "regularizers for positive measures")


def _xlogx_ratio(log_p: Tensor, log_q: Tensor) -> Tensor:
    """p·(log p − log q) with 0·log 0 = 0 and an error where p > 0 = q (infinite divergence)."""
    p = log_p.exp()
    if bool(((p > 0) & torch.isneginf(log_q)).any()):
        raise ValueError("divergence is infinite: the anchor has zero probability where the policy has mass")
    diff = torch.where(p > 0, log_p - torch.where(torch.isneginf(log_q), torch.zeros_like(log_q), log_q),
                       torch.zeros_like(log_p))
    return p * diff


def sequence_divergence(mdp: TreeMDP, policy: Policy, anchor: Policy, kind: str,
                        theta: Optional[Tensor] = None) -> Tensor:
    """Sequence-level divergence per prompt, ``[P]``.

    ``reverse_kl``: KL(π‖π_a) = Σ_y π log(π/π_a); ``forward_kl``: KL(π_a‖π) (both need normalized measures);
    ``unnormalized_reverse_kl``: UKL(π‖π_a) = Σ π log(π/π_a) + Σ(π_a − π) (RPG Def. 3.4);
    ``unnormalized_forward_kl``: UKL(π_a‖π) = Σ π_a log(π_a/π) + Σ(π − π_a) (RPG Def. 3.1).

    Args:
      policy: the optimized policy (differentiable at ``theta``); anchor: π_ref or π_old (detached).
    """
    P = mdp.num_prompts
    kind = coerce(Regularizer, "kind", kind)
    lp = policy.sequence_logp(theta).reshape(P, -1)
    la = anchor.sequence_logp().detach().reshape(P, -1)
    if kind is Regularizer.REVERSE_KL:
        _require_normalized("reverse_kl", policy, theta)
        _require_normalized("reverse_kl (anchor)", anchor)
        return _xlogx_ratio(lp, la).sum(-1)
    if kind is Regularizer.FORWARD_KL:
        _require_normalized("forward_kl", policy, theta)
        _require_normalized("forward_kl (anchor)", anchor)
        return _xlogx_ratio(la, lp).sum(-1)
    if kind is Regularizer.UNNORMALIZED_REVERSE_KL:
        return _xlogx_ratio(lp, la).sum(-1) + (la.exp() - lp.exp()).sum(-1)
    if kind is Regularizer.UNNORMALIZED_FORWARD_KL:
        return _xlogx_ratio(la, lp).sum(-1) + (lp.exp() - la.exp()).sum(-1)
    raise ValueError(f"no sequence-level divergence for {kind.value!r}")


def node_divergences(policy: Policy, anchor: Policy, f_divergence: str = "reverse_kl",
                     theta: Optional[Tensor] = None) -> Tensor:
    """D_f(π(·|s)‖π_a(·|s)) = Σ_a π_a(a|s) f(π(a|s)/π_a(a|s)) at every node: ``[P, S]``.

    ``f_divergence="reverse_kl"`` (f = u log u) gives KL(π(·|s)‖π_a(·|s)); ``"forward_kl"`` (f = −log u) gives
    KL(π_a(·|s)‖π(·|s)); any name of ``rlkl.divergences.F_DIVERGENCE_NAMES`` works. Normalized policies only.
    """
    if not (policy.normalized and anchor.normalized):
        raise ValueError("per-state divergences need normalized (softmax) policies")
    div = get_f_divergence(f_divergence)
    lp = policy.node_log_probs(theta)
    la = anchor.node_log_probs().detach()
    if bool((torch.isneginf(la) & ~torch.isneginf(lp)).any()) or bool((torch.isneginf(lp)).any()):
        raise ValueError("per-state divergences need full-support policies (no −inf logits)")
    return (la.exp() * div.f_of_log(lp - la)).sum(-1)


def token_f_divergence(mdp: TreeMDP, policy: Policy, anchor: Policy, f_divergence: str = "reverse_kl",
                       theta: Optional[Tensor] = None) -> Tensor:
    """FRPO's token-wise regularizer R(x) = E_{y∼π(·|x)} Σ_t D_f(π(·|s_t)‖π_a(·|s_t)) = Σ_s d_π(s) D_f(s): ``[P]``.

    FRPO arXiv 2601.10201 Thm 4.1 (standard convention). For ``reverse_kl`` this equals the
    sequence-level KL(π(y)‖π_a(y)) (chain rule, prefixes from π), also with EOS.
    """
    d = policy.state_log_visitation(theta).exp()
    return (d * node_divergences(policy, anchor, f_divergence, theta)).sum(-1)


def local_divergence(mdp: TreeMDP, policy: Policy, anchor: Policy, f_divergence: str = "reverse_kl",
                     state_policy: Optional[Policy] = None, theta: Optional[Tensor] = None) -> Tensor:
    """Local (frozen-state) divergence Σ_s sg[d_μ(s)] D_f(π(·|s)‖π_a(·|s)): ``[P]``.

    Its gradient is the "partial" gradient that loss-side KL penalties follow: PG_rev (``reverse_kl``) or
    PG_fwd (``forward_kl``) of docs/audit.md when μ = π_θ (the default: ``policy`` at the evaluation point,
    detached). Pass ``state_policy`` = the behaviour policy for off-policy state distributions.
    """
    mu = state_policy if state_policy is not None else policy
    with torch.no_grad():
        d = mu.state_log_visitation(theta if state_policy is None else None).exp()
    return (d * node_divergences(policy, anchor, f_divergence, theta)).sum(-1)


# ---------------------------------------------------------------------------------------------------- objectives
def _require_bound(objective: Objective) -> Objective:
    if not isinstance(objective, Objective):
        raise ValueError(f"objective must be an rlkl.objective.Objective, got {type(objective).__name__}")
    if objective.beta is None:
        if objective.has_regularizer:
            raise ValueError(f"objective {objective.describe()} has no β: bind it (objective.bind(beta=...)) or use "
                             "Method.bound_objective()")
        objective = objective.bind(beta=0.0)
    return objective


def regularizer_value(objective: Objective, mdp: TreeMDP, policy: Policy, ref: Optional[Policy] = None,
                      behaviour: Optional[Policy] = None, state_policy: Optional[Policy] = None,
                      theta: Optional[Tensor] = None) -> Tensor:
    """D_x of an objective (see the module docstring): ``[P]`` (zeros for ``Regularizer.NONE``)."""
    reg = objective.regularizer
    if reg is Regularizer.NONE:
        return torch.zeros(mdp.num_prompts, dtype=torch.float64)
    anchor = ref if objective.anchor is Anchor.REF else behaviour
    if anchor is None:
        raise ValueError(f"objective anchored to {objective.anchor.value!r} needs the "
                         f"{'reference' if objective.anchor is Anchor.REF else 'behaviour'} policy")
    f_name = objective.f_divergence or "reverse_kl"
    if objective.level is Level.LOCAL:
        if reg in (Regularizer.REVERSE_KL, Regularizer.FORWARD_KL):
            f_name = reg.value
        return local_divergence(mdp, policy, anchor, f_name, state_policy, theta)
    if reg is Regularizer.TOKEN_F_DIVERGENCE:
        return token_f_divergence(mdp, policy, anchor, f_name, theta)
    return sequence_divergence(mdp, policy, anchor, reg.value, theta)


def objective_per_prompt(objective: Objective, mdp: TreeMDP, policy: Policy, ref: Optional[Policy] = None,
                         behaviour: Optional[Policy] = None, state_policy: Optional[Policy] = None,
                         theta: Optional[Tensor] = None) -> Tensor:
    """J_x = U(p_θ(x)) − β·D_x(θ) per prompt: ``[P]``."""
    objective = _require_bound(objective)
    if objective.needs_binary_rewards and not mdp.is_binary:
        raise ValueError(f"the {objective.utility.value} utility is defined for binary rewards (a success "
                         f"probability); {mdp.name} has real rewards")
    p = success_prob(mdp, policy, theta)
    u = utility(p, objective.utility, objective.group_size, objective.std.value, objective.eps,
                objective.utility_scale)
    if objective.beta == 0.0 or not objective.has_regularizer:
        return u
    return u - objective.beta * regularizer_value(objective, mdp, policy, ref, behaviour, state_policy, theta)


def objective_value(objective: Objective, mdp: TreeMDP, policy: Policy, ref: Optional[Policy] = None,
                    behaviour: Optional[Policy] = None, state_policy: Optional[Policy] = None,
                    theta: Optional[Tensor] = None) -> Tensor:
    """J(θ) = Σ_x ρ(x) [U(p_θ(x)) − β D_x(θ)], a 0-dim differentiable float64 tensor.

    Args:
      objective: an ``rlkl.objective.Objective`` with β bound (``Method.bound_objective(G)`` for a Method's claim;
        β may stay unbound when there is no regularizer). G, std, ε are needed for the finite-group utility.
      mdp: the tree; policy: π_θ (gradients flow to ``policy.theta`` or to ``theta``).
      ref: π_ref (for ``Anchor.REF``); behaviour: π_old (for ``Anchor.OLD``);
      state_policy: μ whose state distribution is held fixed for ``Level.LOCAL`` (default π_θ).
    Returns:
      0-dim J.
    """
    with threads_for(mdp):
        per = objective_per_prompt(objective, mdp, policy, ref, behaviour, state_policy, theta)
        return (mdp.prompt_probs * per).sum()


def objective_gradient(objective: Objective, mdp: TreeMDP, policy: Policy, ref: Optional[Policy] = None,
                       behaviour: Optional[Policy] = None, state_policy: Optional[Policy] = None) -> Tensor:
    """∇_θ J at ``policy.theta`` (exact, autograd in float64), shaped like ``policy.theta``."""
    with threads_for(mdp):
        J = objective_value(objective, mdp, policy, ref, behaviour, state_policy)
        if not J.requires_grad:
            return torch.zeros_like(policy.theta)
        (g,) = torch.autograd.grad(J, policy.theta, allow_unused=True)
        return torch.zeros_like(policy.theta) if g is None else g


# ---------------------------------------------------------------------------------------------------- fields
# Exact gradient *fields* (not necessarily gradients of a scalar) that loss-side estimators follow in expectation.


def _grad(value: Tensor, policy: Policy) -> Tensor:
    if not value.requires_grad:
        return torch.zeros_like(policy.theta)
    (g,) = torch.autograd.grad(value, policy.theta, allow_unused=True)
    return torch.zeros_like(policy.theta) if g is None else g


def local_score_field(mdp: TreeMDP, policy: Policy, anchor: Policy, coef, state_policy: Optional[Policy] = None,
                      action_policy: Optional[Policy] = None) -> Tensor:
    """F = Σ_x ρ(x) Σ_s d_μ(s) Σ_a ν(a|s)·c(δ(a|s))·∇_θ log π_θ(a|s), δ = log π_θ(a|s) − log π_a(a|s).

    What a per-token loss with per-token gradient c(δ_t)·∇log π_t follows in expectation when states come from μ
    and tokens from ν (docs/audit.md; RPG arXiv 2505.17508 §2.3). Examples with μ = ν = π_θ: c = δ → PG_rev (local
    reverse-KL gradient, k2 as a loss); c = 1 − e^{−δ} → PG_fwd (local forward KL, k3 as a loss); c = 1 → 0.

    Args:
      policy: π_θ; anchor: π_ref or π_old (detached); coef: callable δ ↦ c(δ) (elementwise on ``[P, S, V]``).
      state_policy: μ (default π_θ, held fixed); action_policy: ν (default π_θ, held fixed).
    Returns:
      θ-shaped tensor.
    """
    mu = state_policy if state_policy is not None else policy
    nu = action_policy if action_policy is not None else policy
    nlp = policy.node_log_probs()
    with torch.no_grad():
        d = mu.state_log_visitation().exp()  # [P, S]
        nu_p = nu.node_log_probs().exp()  # [P, S, V]
        delta = nlp.detach() - anchor.node_log_probs().detach()
        w = mdp.prompt_probs[:, None, None] * d[:, :, None] * nu_p * coef(delta)
        w = torch.where(nu_p > 0, w, torch.zeros_like(w))
    return _grad((w * torch.where(w != 0, nlp, torch.zeros_like(nlp))).sum(), policy)


def score_gradient(mdp: TreeMDP, policy: Policy, values: Tensor) -> Tensor:
    """∇_θ Σ_x ρ(x) Σ_y π_θ(y|x)·sg[v(x, y)]: the policy gradient of a fixed per-response value ``values [P, N]``.

    With v = a shaped reward h(r) this is what an advantage A with E[A | y] = h(r(y)) follows (FRPO arXiv
    2601.10201 Prop. 3.1); with v = Σ_t k(δ_t) it is the score-function part of E_π Σ_t k (a KL estimate placed in
    the reward).
    """
    if tuple(values.shape) != (mdp.num_prompts, mdp.num_responses):
        raise ValueError(f"values must have shape [P, N] = {[mdp.num_prompts, mdp.num_responses]}, "
                         f"got {list(values.shape)}")
    meas = policy.measure()
    return _grad((mdp.prompt_probs[:, None] * meas * values.detach()).sum(), policy)
