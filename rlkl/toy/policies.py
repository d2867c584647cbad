"""Policies on a `TreeMDP`: tabular softmax, log-linear softmax, and unnormalized positive measures.

Every policy maps each node s = (x, a_<t) to per-token log-weights ``log π(a|s)`` (``[P, S, V]``); the
log-probability of a response is the sum over its tokens. For all enumerated responses the policy gives
token log-probs ``[P·N, T]`` (0 on padding, the `[B, T]` layout of `rlkl/`), sequence log-probs ``[P·N]``,
and samples (vectorized, seeded).

* `TabularPolicy`: π(a|s) = softmax(θ[x, s])_a, one free logit vector per node.
* `LogLinearPolicy`: π(a|s) ∝ exp(φ(x, s, a)·θ) with shared θ ∈ ℝ^d and fixed (seeded) features φ — so
  results are not an artefact of the tabular parameterization.
* `UnnormalizedPolicy`: π(a|s) = exp θ[x, s, a] without normalization, so the sequence measure
  π(y) = Π_t π(a_t|s_t) has total mass Z = Σ_y π(y) ≠ 1 (RPG's UKL setting, arXiv 2505.17508 §3).
  With T = 1 this is exactly RPG's π_θ(x) = exp θ_x on a finite X.

Parameters live in one leaf tensor ``policy.theta`` (float64, ``requires_grad=True``); every method takes an
optional ``theta`` to evaluate at other parameters. Gradients "w.r.t. the policy" are w.r.t. ``theta``.
"""

from __future__ import annotations

from typing import Optional

import torch

from rlkl.toy.mdp import TreeMDP

Tensor = torch.Tensor


class Policy:
    """Base class. Subclasses implement `node_log_probs`.

    Attributes:
      mdp: the `TreeMDP`.
      theta: leaf parameter tensor (float64, requires_grad).
      normalized: whether Σ_a π(a|s) = 1 at every node.
    """

    normalized: bool = True

    def __init__(self, mdp: TreeMDP, theta: Tensor):
        if not isinstance(mdp, TreeMDP):
            raise ValueError(f"mdp must be a TreeMDP, got {type(mdp).__name__}")
        if not isinstance(theta, Tensor) or not torch.is_floating_point(theta):
            raise ValueError(f"theta must be a float tensor, got {type(theta).__name__}")
        if torch.isnan(theta).any():
            raise ValueError("theta contains NaN")
        self.mdp = mdp
        self.theta = theta.detach().to(torch.float64).clone().requires_grad_(True)

    # ---------------------------------------------------------------- to implement
    def node_log_probs(self, theta: Optional[Tensor] = None) -> Tensor:
        """log π(a|s) for every node: ``[P, S, V]`` (log-softmax for normalized policies)."""
        raise NotImplementedError

    def _new(self, theta: Tensor) -> "Policy":
        raise NotImplementedError

    # ---------------------------------------------------------------- derived
    def with_theta(self, theta: Tensor) -> "Policy":
        """A policy of the same class and features at parameters ``theta`` (a fresh leaf)."""
        if theta.shape != self.theta.shape:
            raise ValueError(f"theta must have shape {tuple(self.theta.shape)}, got {tuple(theta.shape)}")
        return self._new(theta)

    def detached(self) -> "Policy":
        """A copy at the same parameters (a new leaf; use it as a fixed behaviour/reference policy)."""
        return self._new(self.theta.detach().clone())

    def perturbed(self, scale: float, seed: int) -> "Policy":
        """A copy at θ + scale·ε, ε ~ N(0, I) from ``torch.Generator().manual_seed(seed)``."""
        g = torch.Generator().manual_seed(int(seed))
        eps = torch.randn(self.theta.shape, generator=g, dtype=torch.float64)
        base = self.theta.detach()
        return self._new(torch.where(torch.isfinite(base), base + scale * eps, base))

    def _theta(self, theta: Optional[Tensor]) -> Tensor:
        return self.theta if theta is None else theta

    def token_logp(self, theta: Optional[Tensor] = None) -> Tensor:
        """log π(a_t|s_t) of every enumerated response: ``[P·N, T]``, 0 where the mask is False.

        Rows are prompt-major (row b = x·N + n), matching `TreeMDP.stacked`.
        """
        e = self.mdp.enumerate()
        nlp = self.node_log_probs(theta)  # [P, S, V]
        tok = nlp[:, e.node_index, e.tokens]  # [P, N, T]
        tok = torch.where(e.mask.unsqueeze(0), tok, torch.zeros((), dtype=tok.dtype))
        return tok.reshape(-1, self.mdp.horizon)

    def sequence_logp(self, theta: Optional[Tensor] = None) -> Tensor:
        """log π(y|x) = Σ_t log π(a_t|s_t) for every enumerated response: ``[P·N]``."""
        return self.token_logp(theta).sum(-1)

    def log_mass(self, theta: Optional[Tensor] = None) -> Tensor:
        """log Z(x) = log Σ_y π(y|x) per prompt: ``[P]`` (≈ 0 for normalized policies)."""
        P = self.mdp.num_prompts
        return torch.logsumexp(self.sequence_logp(theta).reshape(P, -1), dim=-1)

    def measure(self, theta: Optional[Tensor] = None) -> Tensor:
        """π(y|x) as a (possibly unnormalized) measure: ``[P, N]``."""
        P = self.mdp.num_prompts
        return self.sequence_logp(theta).reshape(P, -1).exp()

    def probs(self, theta: Optional[Tensor] = None) -> Tensor:
        """The normalized response distribution π̃(y|x) = π(y|x)/Z(x): ``[P, N]``."""
        P = self.mdp.num_prompts
        return torch.softmax(self.sequence_logp(theta).reshape(P, -1), dim=-1)

    def state_log_visitation(self, theta: Optional[Tensor] = None) -> Tensor:
        """log d_π(s) = log of the prefix probability of every node: ``[P, S]`` (root = 0).

        d_π(s) = Π_{j<t} π(a_j|s_j) along the prefix of s (the probability that a response from π passes
        through s). For normalized policies Σ_{s at depth t} d_π(s) = P(L > t).
        """
        e = self.mdp.enumerate()
        nlp = self.node_log_probs(theta)
        P, S = nlp.shape[0], nlp.shape[1]
        out = torch.zeros(P, S, dtype=nlp.dtype)
        # nodes are depth-major; fill depth by depth (T passes)
        for t in range(1, self.mdp.horizon):
            ids = (e.node_depth == t).nonzero().squeeze(1)
            par = e.node_parent[ids]
            tok = e.node_parent_token[ids]
            vals = out[:, par] + nlp[:, par, tok]
            out = out.index_put((torch.arange(P).unsqueeze(1), ids.unsqueeze(0)), vals)
        return out

    # ---------------------------------------------------------------- sampling
    def sample(self, num: int, generator: torch.Generator, prompt: Optional[int] = None) -> Tensor:
        """Sample ``num`` (prompt, response) pairs from ρ(x)·π̃(y|x) (or from prompt ``prompt`` only).

        Vectorized: one multinomial draw per prompt over the enumerated responses.
        Returns:
          ``[num]`` long row indices b = x·N + n into the stacked enumeration.
        """
        return self.sample_groups(num, 1, generator, prompt).reshape(-1)

    def sample_groups(self, num_groups: int, group_size: int, generator: torch.Generator,
                      prompt: Optional[int] = None) -> Tensor:
        """Sample ``num_groups`` groups of ``group_size`` i.i.d. responses to one prompt each.

        The prompt of each group is drawn from ρ (or fixed to ``prompt``); responses from π̃(·|x).
        Returns:
          ``[num_groups, group_size]`` long row indices into the stacked enumeration.
        """
        if num_groups < 1 or group_size < 1:
            raise ValueError(f"num_groups and group_size must be ≥ 1, got {num_groups}, {group_size}")
        P, N = self.mdp.num_prompts, self.mdp.num_responses
        with torch.no_grad():
            probs = self.probs().detach()
        if prompt is None:
            prompts = torch.multinomial(self.mdp.prompt_probs, num_groups, replacement=True, generator=generator)
        else:
            if not 0 <= prompt < P:
                raise ValueError(f"prompt must be in [0, {P}), got {prompt}")
            prompts = torch.full((num_groups,), int(prompt), dtype=torch.long)
        out = torch.empty(num_groups, group_size, dtype=torch.long)
        for x in range(P):
            sel = (prompts == x).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            draws = torch.multinomial(probs[x], sel.numel() * group_size, replacement=True, generator=generator)
            out[sel] = x * N + draws.reshape(-1, group_size)
        return out


#: `_log_softmax` calls ``torch.log_softmax`` up to this many logits, or from this many tokens per node
_TORCH_LOG_SOFTMAX_NUMEL, _TORCH_LOG_SOFTMAX_V = 4096, 64


def _log_softmax(z: Tensor) -> Tensor:
    """log softmax over the last axis (the V tokens of a node).

    Small inputs (≤ 4096 logits) and long last axes (V ≥ 64): ``torch.log_softmax``, whose per-call cost is the
    lowest there. Otherwise (many nodes, short last axis) (z − c) − log Σ_a e^{z_a − c} with c = sg[max_a z_a] (the
    value does not depend on c, so the shift needs no gradient): within 4 ulp of ``torch.log_softmax`` at every
    logit scale, and faster on a short last axis, its backward reusing e^{z − c} instead of recomputing a softmax.
    z − logsumexp(z), used before, lost up to 17 ulp at logits of scale 10 and 500 at scale 600 to the
    cancellation of two large numbers. Forward + backward, 1 thread, torch 2.13, V = 10: 1.1·10^6 logits 10.9 ms
    (``torch.log_softmax`` 23.0, z − logsumexp(z) 14.2); in another run 1.1·10^4 logits 0.96 ms (``torch``
    2.36) and 39 logits 138 µs (76: hence the small-input switch). A node with no finite logit gives nan, as
    ``torch.log_softmax`` does."""
    if z.numel() <= _TORCH_LOG_SOFTMAX_NUMEL or z.shape[-1] >= _TORCH_LOG_SOFTMAX_V:
        return torch.log_softmax(z, dim=-1)
    c = z.detach().amax(-1, keepdim=True)  # sg[max]: a shift, not part of the function
    d = z - torch.where(torch.isfinite(c), c, 0.0)  # a node of −inf logits keeps its −inf (then nan below)
    return d - torch.log(torch.exp(d).sum(-1, keepdim=True))


class TabularPolicy(Policy):
    """π(a|s) = softmax(θ[x, s])_a with θ of shape ``[P, S, V]`` (entries may be −inf: zero probability)."""

    normalized = True

    def __init__(self, mdp: TreeMDP, logits: Tensor):
        logits = torch.as_tensor(logits, dtype=torch.float64)
        want = (mdp.num_prompts, mdp.num_nodes, mdp.vocab_size)
        if tuple(logits.shape) != want:
            raise ValueError(f"logits must have shape [P, S, V] = {list(want)}, got {list(logits.shape)}")
        if (~torch.isfinite(logits)).all(-1).any():
            raise ValueError("every node needs at least one finite logit")
        if (logits == float("inf")).any():
            raise ValueError("logits must not be +inf")
        super().__init__(mdp, logits)

    def node_log_probs(self, theta: Optional[Tensor] = None) -> Tensor:
        return _log_softmax(self._theta(theta))

    def _new(self, theta: Tensor) -> "TabularPolicy":
        return TabularPolicy(self.mdp, theta)

    @classmethod
    def random(cls, mdp: TreeMDP, scale: float = 1.0, seed: int = 0) -> "TabularPolicy":
        """Logits i.i.d. N(0, scale²) from ``torch.Generator().manual_seed(seed)``."""
        g = torch.Generator().manual_seed(int(seed))
        shape = (mdp.num_prompts, mdp.num_nodes, mdp.vocab_size)
        return cls(mdp, scale * torch.randn(shape, generator=g, dtype=torch.float64))

    @classmethod
    def uniform(cls, mdp: TreeMDP) -> "TabularPolicy":
        """All logits 0 (uniform next-token distribution at every node)."""
        return cls(mdp, torch.zeros(mdp.num_prompts, mdp.num_nodes, mdp.vocab_size, dtype=torch.float64))


class LogLinearPolicy(Policy):
    """π(a|s) ∝ exp(φ(x, s, a)·θ): shared parameters θ ∈ ℝ^d, fixed features φ ``[P, S, V, d]``."""

    normalized = True

    def __init__(self, mdp: TreeMDP, features: Tensor, theta: Tensor):
        features = torch.as_tensor(features, dtype=torch.float64)
        want = (mdp.num_prompts, mdp.num_nodes, mdp.vocab_size)
        if features.ndim != 4 or tuple(features.shape[:3]) != want:
            raise ValueError(f"features must have shape [P, S, V, d] with [P, S, V] = {list(want)}, "
                             f"got {list(features.shape)}")
        theta = torch.as_tensor(theta, dtype=torch.float64)
        if theta.shape != (features.shape[3],):
            raise ValueError(f"theta must have shape [d] = [{features.shape[3]}], got {list(theta.shape)}")
        if not torch.isfinite(features).all():
            raise ValueError("features must be finite")
        self.features = features
        super().__init__(mdp, theta)

    def node_log_probs(self, theta: Optional[Tensor] = None) -> Tensor:
        return _log_softmax(self.features @ self._theta(theta))

    def _new(self, theta: Tensor) -> "LogLinearPolicy":
        return LogLinearPolicy(self.mdp, self.features, theta)

    @classmethod
    def random(cls, mdp: TreeMDP, dim: int = 4, scale: float = 1.0, seed: int = 0) -> "LogLinearPolicy":
        """Features φ ~ N(0, 1) and θ ~ N(0, scale²), both from ``torch.Generator().manual_seed(seed)``."""
        g = torch.Generator().manual_seed(int(seed))
        shape = (mdp.num_prompts, mdp.num_nodes, mdp.vocab_size, dim)
        feats = torch.randn(shape, generator=g, dtype=torch.float64)
        theta = scale * torch.randn(dim, generator=g, dtype=torch.float64)
        return cls(mdp, feats, theta)


class UnnormalizedPolicy(Policy):
    """Positive measure π(a|s) = exp θ[x, s, a] (no normalization); π(y) = Π_t π(a_t|s_t), mass Z ≠ 1.

    The RPG UKL objectives (arXiv 2505.17508, Defs. 3.1/3.4) are defined for such measures; expectations
    "under π" sample from π̃ = π/Z and carry the factor Z (RPG §0).
    """

    normalized = False

    def __init__(self, mdp: TreeMDP, log_measure: Tensor):
        log_measure = torch.as_tensor(log_measure, dtype=torch.float64)
        want = (mdp.num_prompts, mdp.num_nodes, mdp.vocab_size)
        if tuple(log_measure.shape) != want:
            raise ValueError(f"log_measure must have shape [P, S, V] = {list(want)}, got {list(log_measure.shape)}")
        if (log_measure == float("inf")).any():
            raise ValueError("log_measure must not be +inf")
        super().__init__(mdp, log_measure)

    def node_log_probs(self, theta: Optional[Tensor] = None) -> Tensor:
        return self._theta(theta)

    def _new(self, theta: Tensor) -> "UnnormalizedPolicy":
        return UnnormalizedPolicy(self.mdp, theta)

    @classmethod
    def random(cls, mdp: TreeMDP, scale: float = 1.0, log_mass: float = 0.0, seed: int = 0) -> "UnnormalizedPolicy":
        """θ ~ N(0, scale²) then shifted so that log Z(x) = ``log_mass`` for every prompt (shift spread over
        the T levels of the tree; exact for T = 1 and for fixed-length trees)."""
        g = torch.Generator().manual_seed(int(seed))
        shape = (mdp.num_prompts, mdp.num_nodes, mdp.vocab_size)
        theta = scale * torch.randn(shape, generator=g, dtype=torch.float64)
        pol = cls(mdp, theta)
        if mdp.fixed_length:
            with torch.no_grad():
                shift = (log_mass - pol.log_mass()) / mdp.horizon  # [P]
                theta = theta + shift.reshape(-1, 1, 1)
            pol = cls(mdp, theta)
        return pol

    @classmethod
    def from_policy(cls, policy: Policy, log_mass: float = 0.0) -> "UnnormalizedPolicy":
        """The measure Z·π for a normalized ``policy`` on a fixed-length tree (log Z = ``log_mass``)."""
        if not policy.mdp.fixed_length:
            raise ValueError("from_policy needs a fixed-length tree (the mass shift is spread over T tokens)")
        nlp = policy.node_log_probs().detach()
        return cls(policy.mdp, nlp + log_mass / policy.mdp.horizon)
