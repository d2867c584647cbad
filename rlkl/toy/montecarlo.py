"""Monte Carlo: the same Method on sampled groups, mean gradient with standard errors.

Groups of G responses are sampled from the behaviour policy (prompt x ~ ρ, then y_1..y_G ~ π̃_old(·|x) i.i.d.,
`Policy.sample_groups`), the method's own ``loss`` is evaluated on a `RolloutBatch` holding many groups at once
(vectorized), and the per-group gradients ĝ_k = ∇_θ L(group k) are recovered exactly from the batch gradient
(per-group normalization as in `rlkl.toy.expected`) and the Jacobian of the enumerated token log-probs. The
estimate is the mean of ĝ_k with the standard error std(ĝ)/√n per coordinate; by construction its expectation
is `rlkl.toy.expected.expected_gradient`, and its error shrinks like 1/√n.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from rlkl.toy.expected import (DEFAULT_CHUNK_SLOTS, _call, _group_factors, _prepare, loss_spec, make_batch,
                               replays_kept_set, threads_for)
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.policies import Policy

Tensor = torch.Tensor


@dataclass
class MonteCarloGradient:
    """Result of `mc_gradient`.

    Attributes:
      mean: mean per-group gradient, shaped like ``policy.theta``.
      stderr: standard error of the mean per coordinate (sample std with n − 1, / √n), same shape.
      num_groups: n; seconds: wall time; per_group: ``[n, numel(θ)]`` per-group gradients (if kept).
    """

    mean: Tensor
    stderr: Tensor
    num_groups: int
    seconds: float
    per_group: Optional[Tensor] = None

    def z_scores(self, exact: Tensor) -> Tensor:
        """(mean − exact)/stderr per coordinate (coordinates with stderr 0 give 0 when equal, inf otherwise)."""
        diff = self.mean - exact
        se = self.stderr
        return torch.where(se > 0, diff / torch.where(se > 0, se, torch.ones_like(se)),
                           torch.where(diff.abs() < 1e-12, torch.zeros_like(diff), torch.full_like(diff, float("inf"))))


def token_logp_jacobian(policy: Policy) -> Tensor:
    """∂ log π(a_t|s_t)/∂θ for every enumerated (response, token): ``[P·N·T, numel(θ)]`` (float64)."""
    theta0 = policy.theta.detach()

    def f(th: Tensor) -> Tensor:
        return policy.token_logp(th.view_as(theta0)).reshape(-1)

    return torch.func.jacrev(f)(theta0.reshape(-1))


def mc_gradient(method: Any, mdp: TreeMDP, policy: Policy, num_groups: int, seed: int = 0,
                behaviour: Optional[Policy] = None, ref: Optional[Policy] = None, group_size: Optional[int] = None,
                keep_per_group: bool = False, chunk_slots: int = DEFAULT_CHUNK_SLOTS,
                jacobian: Optional[Tensor] = None, sampler: Any = None) -> MonteCarloGradient:
    """Monte Carlo estimate of E[∇_θ L] from ``num_groups`` sampled groups.

    Args:
      method: Method, `LossSpec` or callable (as in `rlkl.toy.expected.expected_gradient`).
      mdp, policy: tree and π_θ; behaviour: π_old (default π_θ); ref: π_ref (default π_old).
      num_groups: n ≥ 2; seed: seed of the ``torch.Generator`` that samples prompts and responses.
      group_size: G; keep_per_group: return the ``[n, numel(θ)]`` matrix of per-group gradients.
      jacobian: precomputed `token_logp_jacobian(policy)` (reuse across calls; for a mask-replaying Method, of
        the replayed policy).
      sampler: an ``rlkl.sampling.Sampler``: groups are drawn from q = sampler(π_old) (as in
        `rlkl.toy.expected.expected_gradient`).
    Returns:
      `MonteCarloGradient` (mean and standard error shaped like ``policy.theta``).
    """
    if num_groups < 2:
        raise ValueError(f"num_groups must be >= 2 for a standard error, got {num_groups}")
    with threads_for(mdp):
        return _mc_gradient(method, mdp, policy, num_groups, seed, behaviour, ref, group_size, keep_per_group,
                            chunk_slots, jacobian, sampler)


def _mc_gradient(method, mdp, policy, num_groups, seed, behaviour, ref, group_size, keep_per_group, chunk_slots,
                 jacobian, sampler=None):
    t0 = time.perf_counter()
    spec = loss_spec(method, mdp, group_size)
    G = spec.group_size
    beh = behaviour if behaviour is not None else policy
    data = _prepare(mdp, policy, beh, ref, keep_graph=False, sampler=sampler, replay=replays_kept_set(spec))
    gen = torch.Generator().manual_seed(int(seed))
    source = data.sampled if data.sampled is not None else beh  # the distribution the groups come from
    groups = source.sample_groups(num_groups, G, gen)  # [n, G] stacked row indices
    J = jacobian if jacobian is not None else token_logp_jacobian(data.chain_policy)  # [P·N·T, d]
    T = data.T
    d = J.shape[1]
    per_group = torch.empty(num_groups, d, dtype=torch.float64)
    per = max(1, chunk_slots // max(1, G * T))
    for a in range(0, num_groups, per):
        b = min(num_groups, a + per)
        rows = groups[a:b].reshape(-1)
        if spec.aggregation is None or spec.coupling == "batch":
            coef = torch.empty(rows.shape[0], T, dtype=torch.float64)
            for k in range(b - a):
                r = rows[k * G:(k + 1) * G]
                batch = make_batch(data, r, G)
                leaf = data.logp[r].requires_grad_(True)
                loss = _call(spec, leaf, batch)
                (g,) = torch.autograd.grad(loss, leaf, allow_unused=True)
                coef[k * G:(k + 1) * G] = 0.0 if g is None else g
        else:
            batch = make_batch(data, rows, G)
            leaf = data.logp[rows].requires_grad_(True)
            loss = _call(spec, leaf, batch)
            (g,) = torch.autograd.grad(loss, leaf, allow_unused=True)
            if g is None:
                g = torch.zeros_like(leaf)
            coef = g * _group_factors(spec, batch.mask, G, per_row_unit=False).unsqueeze(1)
        # per-group θ-gradient: Σ_{rows in group, t} coef · ∂logp/∂θ
        flat_idx = (rows.unsqueeze(1) * T + torch.arange(T)).reshape(-1)  # [rows·T]
        contrib = J[flat_idx] * coef.reshape(-1, 1)  # [rows·T, d]
        per_group[a:b] = contrib.view(b - a, G * T, d).sum(1)
    mean = per_group.mean(0)
    stderr = per_group.std(0, correction=1) / num_groups**0.5
    shape = policy.theta.shape
    return MonteCarloGradient(mean.view(shape), stderr.view(shape), num_groups, time.perf_counter() - t0,
                              per_group if keep_per_group else None)
