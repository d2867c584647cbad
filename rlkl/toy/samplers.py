"""Inference-engine samplers on a `TreeMDP`: the behaviour distribution q, exactly, at every node.

An engine samples from q = Sampler(π_old) (``rlkl.sampling.Sampler``: precision → temperature → top-k → top-p →
min-p → renormalize over the kept set K_s; ties by token index), node by node. Here every node's full distribution
is known, so q, the kept sets, the kept masses and the log-probs the engine reports are exact tensors:

* `SampledPolicy` — q as a `Policy` (so enumeration, exact expectations and sampling all use q);
* `TransformedPolicy` — π_θ renormalized over fixed kept sets, with a fixed logit offset and a temperature,
  differentiable in θ and sharing π_θ's parameter leaf: the trainer-side **mask replay** π_θ^K
  (`replayed_policy`) and the **deployed policy** T(π_θ) (`deployed_policy`) whose objective is the second
  reading of what a trainer behind a sampler optimizes.

T(π_θ) freezes what the sampler decided at π_old: the kept sets K_s (locally constant in θ except on the
boundaries where a token's rank changes) and the precision offset δ_s = z_e − z (bf16 rounding is piecewise
constant in θ, so its derivative is zero almost everywhere; holding the rounding *error* fixed is its first-order
model). T(π_old) = q exactly.

The engine's logits z are π_old's normalized log-probs log π_old(·|s) (rounding is not shift-invariant, so this
fixes the shift).
"""

from __future__ import annotations

from typing import Optional

import torch

from rlkl.sampling import Sampler, SamplerOutput
from rlkl.toy.policies import Policy

Tensor = torch.Tensor

__all__ = ["SampledPolicy", "TransformedPolicy", "replayed_policy", "deployed_policy"]


def _gather_tokens(policy: Policy, node_values: Tensor) -> Tensor:
    """``[P, S, V]`` → ``[P·N, T]`` at every enumerated (response, token); 0 on padding."""
    e = policy.mdp.enumerate()
    tok = node_values[:, e.node_index, e.tokens]  # [P, N, T]
    tok = torch.where(e.mask.unsqueeze(0), tok, torch.zeros((), dtype=tok.dtype))
    return tok.reshape(-1, policy.mdp.horizon)


def _gather_nodes(policy: Policy, node_values: Tensor) -> Tensor:
    """``[P, S]`` → ``[P·N, T]`` (the value at each token's node); 0 on padding."""
    e = policy.mdp.enumerate()
    tok = node_values[:, e.node_index]  # [P, N, T]
    tok = torch.where(e.mask.unsqueeze(0), tok, torch.zeros((), dtype=tok.dtype))
    return tok.reshape(-1, policy.mdp.horizon)


class SampledPolicy(Policy):
    """q = ``sampler``(π_old) at every node, as a (fixed) `Policy`.

    Args:
      base: π_old, a normalized policy (its current parameters are used; the copy is detached).
      sampler: the engine's `rlkl.sampling.Sampler`.
    """

    def __init__(self, base: Policy, sampler: Sampler):
        if not isinstance(sampler, Sampler):
            raise ValueError(f"sampler must be an rlkl.sampling.Sampler, got {type(sampler).__name__}")
        if not isinstance(base, Policy) or not base.normalized:
            raise ValueError("a sampler transforms a normalized policy π_old (an UnnormalizedPolicy has no softmax)")
        super().__init__(base.mdp, base.theta.detach())
        self.base = base.detached()
        self.sampler = sampler
        P, S, V = self.mdp.num_prompts, self.mdp.num_nodes, self.mdp.vocab_size
        self.perturbation = sampler.noise_like((P, S, V))
        self._cache: Optional[SamplerOutput] = None

    def _new(self, theta: Tensor) -> "SampledPolicy":
        return SampledPolicy(self.base.with_theta(theta), self.sampler)

    def output(self, theta: Optional[Tensor] = None) -> SamplerOutput:
        """The sampler's `SamplerOutput` for π_old's node log-probs (``[P, S, V]`` / ``[P, S]`` tensors)."""
        if theta is None and self._cache is not None:
            return self._cache
        with torch.no_grad():
            z = self.base.node_log_probs(None if theta is None else theta.detach())
            out = self.sampler.transform(z, self.perturbation)
        if theta is None:
            self._cache = out
        return out

    def node_log_probs(self, theta: Optional[Tensor] = None) -> Tensor:
        return self.output(theta).log_q

    @property
    def kept(self) -> Tensor:
        """``[P, S, V]`` bool kept sets K_s."""
        return self.output().kept

    @property
    def offset(self) -> Tensor:
        """``[P, S, V]`` precision offset δ = z_e − log π_old (0 where π_old is 0)."""
        z = self.base.node_log_probs().detach()
        d = self.output().engine_logits - z
        return torch.where(torch.isfinite(z), d, torch.zeros_like(d))

    def kept_mass(self) -> Tensor:
        """``[P, S]`` S_s = Σ_{a∈K_s} π̃(a|s), the engine's tempered mass on its kept set."""
        return self.output().log_kept_mass.exp()

    def reported_token_logp(self) -> Tensor:
        """``[P·N, T]`` the log-probs the engine reports for every enumerated token (−inf for cut tokens)."""
        return _gather_tokens(self, self.output().log_reported)

    def kept_logmass(self, policy: Policy) -> Tensor:
        """``[P·N, T]`` log Σ_{a∈K_s} ``policy``(a|s) at each token's node (the trainer's mass on the kept set)."""
        with torch.no_grad():
            nlp = policy.node_log_probs().detach()
            masked = torch.where(self.kept, nlp, torch.full_like(nlp, float("-inf")))
            return _gather_nodes(self, torch.logsumexp(masked, dim=-1))


class TransformedPolicy(Policy):
    """π_θ with fixed kept sets, logit offset and temperature: T(a|s) ∝ exp((log π_θ(a|s) + δ(a|s))/τ)·1[a ∈ K_s].

    Shares ``base``'s parameter leaf, so gradients w.r.t. ``base.theta`` flow through it.

    Args:
      base: π_θ (normalized); kept: ``[P, S, V]`` bool or None (no truncation); offset: ``[P, S, V]`` or None;
      temperature: τ > 0.
    """

    def __init__(self, base: Policy, kept: Optional[Tensor] = None, offset: Optional[Tensor] = None,
                 temperature: float = 1.0):
        if not isinstance(base, Policy) or not base.normalized:
            raise ValueError("TransformedPolicy needs a normalized base policy")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        shape = (base.mdp.num_prompts, base.mdp.num_nodes, base.mdp.vocab_size)
        for name, t in (("kept", kept), ("offset", offset)):
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape [P, S, V] = {list(shape)}, got {list(t.shape)}")
        if kept is not None and bool((~kept.any(-1)).any()):
            raise ValueError("every node needs a non-empty kept set")
        self.mdp = base.mdp
        self.theta = base.theta  # shared leaf: ∇ w.r.t. base.theta
        self.base, self.kept, self.offset, self.temperature = base, kept, offset, float(temperature)

    def node_log_probs(self, theta: Optional[Tensor] = None) -> Tensor:
        z = self.base.node_log_probs(theta)
        if self.offset is not None:
            z = z + self.offset
        z = z / self.temperature
        if self.kept is not None:
            z = torch.where(self.kept, z, torch.full_like(z, float("-inf")))  # outside K: no mass, no gradient
        return torch.log_softmax(z, dim=-1)

    def _new(self, theta: Tensor) -> "TransformedPolicy":
        return TransformedPolicy(self.base.with_theta(theta), self.kept, self.offset, self.temperature)


def replayed_policy(policy: Policy, sampled: SampledPolicy) -> TransformedPolicy:
    """π^K: ``policy`` renormalized over the sampler's kept sets (trainer-side mask replay), no temperature."""
    return TransformedPolicy(policy, sampled.kept)


def deployed_policy(policy: Policy, sampled: SampledPolicy) -> TransformedPolicy:
    """T(π_θ): the sampler applied to ``policy`` with the kept sets and precision offset frozen at π_old
    (`T(π_old) = q`)."""
    s = sampled.sampler
    offset = sampled.offset if s.changes_precision else None
    kept = sampled.kept if s.truncates else None
    return TransformedPolicy(policy, kept, offset, s.temperature)
