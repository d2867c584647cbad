"""`AuditContext`: the exact quantities of one audit that the bias terms (`rlkl.toy.terms`) are measured from.

It holds the tree, π_θ, π_old, π_ref, G, the aggregation constant c and the bound objective, and exposes, in
float64 and lazily (each computed once): per-response probabilities and token log-probs of the three policies,
state visitations, the ratios ρ_t, w(y), s(y), the independent group law of the advantage (`rlkl.toy.reference`)
and the chain rule Σ coef·∇_θ log π_θ. Nothing here runs the audited method's code: only its components' *data*
(β, clip bounds, std, ε, estimator, …) are read.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import torch
from torch import Tensor

from rlkl.components import (AggMode, FutureReturn, KLLoss, KLReward, LengthWeightedCentered, NoKL, RewardForm,
                             TokenWhitened)
from rlkl.objective import Objective, Utility
from rlkl.toy import reference as ref_
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.objectives import objective_gradient, regularizer_value, success_prob
from rlkl.toy.policies import Policy

cached = functools.cached_property


def _reverse_cumsum(x: Tensor) -> Tensor:
    return x.flip(-1).cumsum(-1).flip(-1)


class AuditContext:
    """Everything a bias term may measure from (see the module docstring).

    Args:
      method: the audited ``rlkl.methods.Method`` (only its components' data are read).
      mdp, policy, behaviour, ref: the tree, π_θ (gradients w.r.t. ``policy.theta``), π_old, π_ref.
      group_size: G; scale: c; objective: the bound objective (β, G, std, ε filled in).
      off_policy: whether π_old ≠ π_θ. extras: anything a term registered elsewhere needs.
    Shapes: P prompts, N responses, T horizon, S nodes, V vocabulary; token tensors ``[P, N, T]``.
    """

    def __init__(self, method: Any, mdp: TreeMDP, policy: Policy, behaviour: Policy, ref: Policy, group_size: int,
                 scale: float, objective: Objective, off_policy: bool, extras: Optional[dict] = None):
        self.method, self.mdp, self.policy, self.behaviour, self.ref = method, mdp, policy, behaviour, ref
        self.G, self.c, self.objective, self.off_policy = int(group_size), float(scale), objective, off_policy
        self.beta = float(getattr(method, "beta", 0.0) or 0.0)
        self.extras = dict(extras or {})
        P, N, T = mdp.num_prompts, mdp.num_responses, mdp.horizon
        self.shape = (P, N, T)
        e = mdp.enumerate()
        self.mask = e.mask  # [N, T]
        self.fmask = e.mask.to(torch.float64)
        self.lengths = e.lengths.to(torch.float64)  # [N]
        self.rho_x = mdp.prompt_probs  # [P]
        self._groups: dict = {}

    # ------------------------------------------------------------------------------------ policies on the tree
    @cached
    def _token_graph(self) -> Tensor:
        with torch.enable_grad():
            return self.policy.token_logp()  # [P·N, T], differentiable in θ

    @cached
    def _node_graph(self) -> Tensor:
        with torch.enable_grad():
            return self.policy.node_log_probs()  # [P, S, V]

    def _tokens(self, pol: Policy) -> Tensor:
        with torch.no_grad():
            return pol.token_logp().reshape(self.shape)

    @cached
    def lt(self) -> Tensor:
        """``[P, N, T]`` log π_θ(a_t|s_t) (0 on padding)."""
        return self._token_graph.detach().reshape(self.shape)

    @cached
    def lo(self) -> Tensor:
        return self._tokens(self.behaviour)

    @cached
    def lr(self) -> Tensor:
        return self._tokens(self.ref)

    @cached
    def q_old(self) -> Tensor:
        """``[P, N]`` π_old(y|x)."""
        return self.behaviour.probs().detach()

    @cached
    def q_theta(self) -> Tensor:
        return self.policy.probs().detach()

    @cached
    def log_rho(self) -> Tensor:
        """``[P, N, T]`` log ρ_t = log π_θ − log π_old (0 on padding)."""
        return (self.lt - self.lo) * self.fmask

    @cached
    def rho(self) -> Tensor:
        return torch.exp(self.log_rho)

    @cached
    def log_w(self) -> Tensor:
        """``[P, N, 1]`` log w(y) = Σ_t log ρ_t."""
        return self.log_rho.sum(-1, keepdim=True)

    @cached
    def log_s(self) -> Tensor:
        """``[P, N, 1]`` log s(y) = (1/|y|) Σ_t log ρ_t (GSPO)."""
        return self.log_w / self.lengths.view(1, -1, 1)

    def visitation(self, pol: Policy) -> Tensor:
        """``[P, S]`` d(s) of ``pol`` (π_θ or π_old), the probability that a response passes through s."""
        with torch.no_grad():
            return pol.state_log_visitation().exp()

    def node_probs(self, pol: Policy) -> Tensor:
        """``[P, S, V]`` π(a|s) of ``pol`` (π_θ, π_old or π_ref)."""
        with torch.no_grad():
            return pol.node_log_probs().exp() if pol is not self.policy else self._node_graph.detach().exp()

    @cached
    def node_delta(self) -> Tensor:
        """``[P, S, V]`` δ(a|s) = log π_θ(a|s) − log π_ref(a|s)."""
        with torch.no_grad():
            return self._node_graph.detach() - self.ref.node_log_probs()

    @cached
    def node_log_rho(self) -> Tensor:
        with torch.no_grad():
            return self._node_graph.detach() - self.behaviour.node_log_probs()

    # ------------------------------------------------------------------------------------ chain rule
    def _grad(self, out: Tensor) -> Tensor:
        (g,) = torch.autograd.grad(out, self.policy.theta, retain_graph=True, allow_unused=True)
        return torch.zeros_like(self.policy.theta) if g is None else g

    def chain(self, coef: Tensor) -> Tensor:
        """Σ_{x,y,t} coef[x, y, t]·∇_θ log π_θ(a_t|s_t) (``coef`` ``[P, N, T]``, masked here)."""
        c = (coef * self.fmask).reshape(-1, self.shape[2])
        return self._grad((c * self._token_graph).sum())

    def chain_nodes(self, weight: Tensor) -> Tensor:
        """Σ_{x,s,a} weight[x, s, a]·∇_θ log π_θ(a|s) (``weight`` ``[P, S, V]``)."""
        return self._grad((weight * self._node_graph).sum())

    def on_old_rows(self, per_token: Tensor) -> Tensor:
        """Σ_x ρ(x) Σ_y π_old(y|x) Σ_t per_token·∇log π_t: an expectation over rows drawn from π_old."""
        return self.chain((self.rho_x.view(-1, 1, 1) * self.q_old.unsqueeze(-1)) * per_token)

    def on_theta_rows(self, per_token: Tensor) -> Tensor:
        """Σ_x ρ(x) Σ_y π_θ(y|x) Σ_t per_token·∇log π_t (score-function expectation under π_θ)."""
        return self.chain((self.rho_x.view(-1, 1, 1) * self.q_theta.unsqueeze(-1)) * per_token)

    def score(self, values: Tensor) -> Tensor:
        """∇_θ Σ_x ρ Σ_y π_θ(y)·sg[v(y)] = Σ ρ π_θ v ∇log π_θ(y) (``values`` ``[P, N]``)."""
        return self.on_theta_rows(values.unsqueeze(-1).expand(self.shape))

    def node_field(self, states: Policy, actions: Policy, coef: Tensor) -> Tensor:
        """F = Σ_x ρ Σ_s d_states(s) Σ_a π_actions(a|s)·coef(a|s)·∇log π_θ(a|s)."""
        d = self.visitation(states)
        weight = self.rho_x.view(-1, 1, 1) * d.unsqueeze(-1) * self.node_probs(actions) * coef
        return self.chain_nodes(weight)

    # ------------------------------------------------------------------------------------ target
    @cached
    def grad_u(self) -> Tensor:
        """∇_θ Σ_x ρ U(p_θ(x)); the finite-group U_G through `reference.finite_group_weight_reference`."""
        obj = self.objective
        if obj.utility is not Utility.FINITE_GROUP:
            return objective_gradient(obj.bind(beta=0.0), self.mdp, self.policy, self.ref, self.behaviour)
        if not self.mdp.is_binary:
            raise ValueError(f"the finite_group utility is defined for binary rewards; {self.mdp.name} has real "
                             "rewards")
        p = success_prob(self.mdp, self.policy)
        G = obj.group_size or self.G
        w = torch.tensor([ref_.finite_group_weight_reference(float(px), G, obj.std, obj.eps) for px in p.detach()],
                         dtype=torch.float64)
        return self._grad((self.rho_x * w * p).sum())

    @cached
    def grad_d(self) -> Tensor:
        """∇_θ Σ_x ρ D_x of the objective's regularizer (zeros without one or with β = 0)."""
        obj = self.objective
        if not (obj.has_regularizer and obj.beta):
            return torch.zeros_like(self.policy.theta)
        reg = regularizer_value(obj, self.mdp, self.policy, self.ref, self.behaviour, self.behaviour)
        return self._grad((self.rho_x * reg).sum())

    @cached
    def target(self) -> Tensor:
        """−c·∇J = −c(∇U − β∇D)."""
        return -self.c * (self.grad_u - float(self.objective.beta or 0.0) * self.grad_d)

    # ------------------------------------------------------------------------------------ the method's data
    @cached
    def kl_on(self) -> bool:
        """A KL term to π_ref takes part in the update (β > 0 and a KL component)."""
        return self.beta > 0 and not isinstance(self.method.kl, NoKL)

    @cached
    def fused(self) -> bool:
        kl = self.method.kl
        return self.kl_on and isinstance(kl, KLReward) and kl.form is RewardForm.FUSED

    def kl_values(self, stale: bool) -> Tensor:
        """``[P, N, T]`` δ_t at the sampled tokens: the rollout's log π_old − log π_ref (``stale``), else
        log π_θ − log π_ref."""
        top = self.lo if stale else self.lt
        return (top - self.lr) * self.fmask

    def fused_penalty(self, stale: bool) -> Tensor:
        """``[P, N]`` K(y) = Σ_t k(δ_t) of a fused KLReward (zeros otherwise)."""
        if not self.fused:
            return torch.zeros(self.shape[:2], dtype=torch.float64)
        return (ref_.k_value(self.method.kl.estimator, self.kl_values(stale)) * self.fmask).sum(-1)

    def token_penalty(self, stale: bool) -> Tensor:
        """``[P, N, T]`` the per-token KL subtracted (× β) from the advantage: Σ_{j≥t} k(δ_j) for a reward-to-go
        KLReward (Ziegler et al. arXiv 1909.08593), [f'(u_t) − f'(1)] + Σ_{j>t} f(u_j)/u_j for FutureReturn
        (FRPO arXiv 2601.10201 Eq. 4.5, Thm 4.1), zeros otherwise."""
        kl, m = self.method.kl, self.fmask
        if self.kl_on and isinstance(kl, KLReward) and kl.form is RewardForm.REWARD_TO_GO:
            return _reverse_cumsum(ref_.k_value(kl.estimator, self.kl_values(stale)) * m) * m
        if self.kl_on and isinstance(kl, FutureReturn):
            from rlkl.divergences import get_f_divergence

            local, f_over_u, _ = ref_.f_terms(get_f_divergence(kl.divergence).f_of_log, self.kl_values(stale))
            future = _reverse_cumsum(f_over_u * m) - f_over_u * m
            return (local + future) * m
        return torch.zeros(self.shape, dtype=torch.float64)

    @cached
    def sequence_values(self) -> Tensor:
        """``[P, N]`` the value the advantage standardizes: r − β·K_old(y) when a KL is fused, else r."""
        return self.mdp.rewards - self.beta * self.fused_penalty(stale=True)

    @cached
    def _law_lengths(self) -> bool:
        """The others' lengths matter: token-mean's one normalizer per group, or OPO's length-weighted baseline."""
        reads = self.method.aggregation.mode is AggMode.TOKEN_MEAN or isinstance(self.method.advantage,
                                                                                 LengthWeightedCentered)
        return reads and not self.mdp.fixed_length

    @cached
    def whitened(self) -> bool:
        """REINFORCE++: the advantage whitens token values, so the others enter through their tokens."""
        return isinstance(self.method.advantage, TokenWhitened)

    def group(self, x: int, fused: bool = True) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """Row 1's advantage a ``[N, M]``, the law's probabilities ``[M]`` and Σ_{j>1}|y_j| ``[M]`` (prompt x).

        For REINFORCE++ (token whitening) ``a`` is the raw value v_1 that the whitening acts on."""
        key = (x, fused and self.fused)
        if key not in self._groups:
            v = (self.sequence_values if key[1] else self.mdp.rewards)[x]
            if self.whitened:
                law = self._whitening_law(x, v)
                self._groups[key] = (v.unsqueeze(1).expand(-1, law.probs.shape[0]), law.probs, None)
                self._groups[("law", key)] = law
                return self._groups[key]
            L = self.lengths if self._law_lengths else None
            law = ref_.group_law(v, self.q_old[x], self.G, L)
            a = ref_.group_advantage(self.method.advantage, v, law, self.G, self.lengths)
            self._groups[key] = (a, law.probs, law.others_length if L is not None else None)
        return self._groups[key]

    def _whitening_law(self, x: int, v: Tensor):
        """Classes of responses when the others' lengths or token penalties enter the statistics, else of values."""
        by_response = not self.mdp.fixed_length or bool(self.token_penalty(stale=True).abs().max() > 0)
        law = ref_.group_law(torch.arange(v.shape[0], dtype=torch.float64) if by_response else v, self.q_old[x],
                             self.G, self.lengths if by_response else None)
        vals = v if by_response else law.values
        return ref_.GroupLaw(vals, law.lengths, law.counts, law.probs)

    def shaped(self, fused: bool = True) -> Tensor:
        """``[P, N]`` h(y) = E[A_1 | y_1 = y] (others from π_old) of the fused (or plain) sequence values."""
        rows = []
        for x in range(self.shape[0]):
            a, probs, _ = self.group(x, fused)
            rows.append(a @ probs)
        return torch.stack(rows)

    @cached
    def mean_advantage(self) -> Tensor:
        """``[P, N, T]`` Ā_t(y) = E[A_{1,t} | y_1 = y] = h(y) − β·tp_t^old(y) (token whitening: Σ_m P(m) A[·, m, t])."""
        if self.whitened:
            return torch.stack([(self.group(x)[1].view(1, -1, 1) * self.token_advantages(x)).sum(1)
                                for x in range(self.shape[0])])
        return (self.shaped(True).unsqueeze(-1) - self.beta * self.token_penalty(stale=True)) * self.fmask

    def token_advantages(self, x: int) -> Tensor:
        """``[N, M, T]`` A_{1,t} for every multiset of the others (prompt x)."""
        a, _, _ = self.group(x)
        tokens = -self.beta * self.token_penalty(stale=True)[x]  # [N, T]
        if not self.whitened:
            return a.unsqueeze(-1) + tokens.unsqueeze(1)
        law = self._groups[("law", (x, self.fused))]
        by_response = law.lengths is not None
        K, T = law.values.shape[0], self.shape[2]
        cls_tok = tokens if by_response else torch.zeros(K, T, dtype=torch.float64)
        cls_mask = self.fmask if by_response else torch.ones(K, T, dtype=torch.float64)
        return ref_.whitened_token_advantages(self.method.advantage, a[:, 0], tokens, self.fmask, law, cls_tok,
                                              cls_mask, self.G)

    def derivative(self, x: int, clipped: bool) -> Tensor:
        """``[N, M, T]`` ∂l_t/∂log π_t of the policy surrogate for each multiset of the others (prompt x)."""
        key = ("derivative", x, clipped)
        if key not in self._groups:
            pl = self.method.policy_loss
            self._groups[key] = ref_.policy_derivative(
                pl, self.token_advantages(x), self.rho[x].unsqueeze(1), self.log_rho[x].unsqueeze(1),
                self.log_w[x].exp().unsqueeze(1), self.log_w[x].unsqueeze(1), self.log_s[x].exp().unsqueeze(1),
                self.beta, clipped)
        return self._groups[key]

    def length_weight(self, x: int) -> Tensor:
        """``[N, M]`` (ω − c)·P(m): the aggregation's length weight minus c, times the law of the others."""
        _, probs, others_len = self.group(x)
        omega = ref_.aggregation_weight(self.method.aggregation, self.lengths, others_len, self.G, self.shape[2])
        return (omega - self.c) * probs

    @cached
    def kl_loss_kappa(self) -> Tensor:
        """``[P, N, T]`` κ_t of a KL loss at the sampled tokens (zeros without one)."""
        kl = self.method.kl
        if not (self.kl_on and isinstance(kl, KLLoss)):
            return torch.zeros(self.shape, dtype=torch.float64)
        kappa, _ = ref_.kl_loss_coefficients(kl, (self.lt - self.lr) * self.fmask, self.log_rho)
        return kappa * self.fmask

    @cached
    def phi(self) -> Tensor:
        """``[P, N, T]`` φ_t, the surrogate's importance weight (`reference.sample_ratio`)."""
        return ref_.sample_ratio(self.method.policy_loss, self.rho, self.log_w.exp(), self.log_s.exp())
