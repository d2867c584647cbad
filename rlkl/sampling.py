"""What an inference engine samples from, and the importance weights that correct for it.

A trainer computes π_old(a|s) = softmax(z)(a) from its own logits z (full vocabulary, training precision). The
engine that produced the rollout sampled from a *transformed* distribution q (docs/theory.md §7).
:class:`Sampler` is that transformation, applied per state to a ``[..., V]`` logit tensor, in this order:

1. **precision**: z_e = round_dtype(z + σ·ε) — an optional seeded perturbation ε ~ N(0, 1) (a different kernel),
   then rounding to the engine's ``dtype`` (round to nearest even; ``float64`` leaves z as it is);
2. **temperature**: π̃ = softmax(z_e/τ);
3. **top-k**: keep the k most probable tokens of π̃; ties are broken by token index (the lower index ranks
   first), so exactly k tokens are kept;
4. **top-p**: on π̃ renormalized over the tokens still kept, sort descending (same tie rule) and keep the
   smallest prefix whose cumulative mass reaches p — the token that crosses p is kept (vLLM's and HF's rule;
   ``top_p = 1`` keeps every token of positive probability);
5. **min-p**: keep a with π̃(a) >= min_p · max_b π̃(b) (scale-free, so renormalization before it does not matter);
6. renormalize over the kept set K_s: q(a|s) = π̃(a|s)·1[a ∈ K_s] / S_s with the kept mass S_s = Σ_{a∈K_s} π̃(a|s).

The most probable token is always kept. vLLM applies min-p before top-k/top-p; the two orders differ only when
min-p and top-p are both active. **Kept-mass identity**: at τ = 1 without a precision change, π̃ = π_old and
π_old(a|s)/q(a|s) = S_s for every kept token a — a trainer that divides by the reported (processed) log-probs
gets importance ratios equal to the kept mass, not 1.

The engine *reports* log q (``logprobs="processed"``) or log softmax(z_e) (``"raw"``, before temperature and
truncation). The rollout-correction weights below turn ρ_t = π_old(a_t|s_t)/q_reported(a_t|s_t) into the detached
per-token weights w that multiply the policy loss (verl ``rollout_is_weights``; TRL
``vllm_importance_sampling_*``); the components are in ``rlkl.components`` (:class:`~rlkl.components.TokenTIS`,
…). All functions are device-agnostic pure functions on tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from rlkl._checks import check_float, check_int, check_real, check_token_tensors
from rlkl.losses import LOG_RATIO_CLAMP
from rlkl.options import LogprobsMode, SamplerDtype, set_enum

__all__ = ["Sampler", "SamplerOutput", "kept_set", "rollout_log_ratio", "token_is_weights",
           "sequence_is_weights", "masked_is_weights", "geometric_mean_weights", "mismatch_diagnostics",
           "effective_sample_size", "kept_log_softmax", "kept_logmass", "exact_mismatch_kl"]

_TORCH_DTYPES = {SamplerDtype.FLOAT32: torch.float32, SamplerDtype.BFLOAT16: torch.bfloat16,
                 SamplerDtype.FLOAT16: torch.float16}


class SamplerOutput(NamedTuple):
    """What :meth:`Sampler.transform` returns for ``[..., V]`` logits.

    Attributes:
      log_q: ``[..., V]`` log q(a|s), −inf outside the kept set.
      kept: ``[..., V]`` bool, the kept set K_s.
      log_kept_mass: ``[...]`` log S_s = log Σ_{a∈K_s} π̃(a|s) (π̃ = softmax(z_e/τ)); 0 when nothing is cut.
      log_reported: ``[..., V]`` the log-probs the engine reports: ``log_q`` (processed) or log softmax(z_e) (raw).
      engine_logits: ``[..., V]`` z_e, the engine's logits after the precision step (before temperature).
    """

    log_q: Tensor
    kept: Tensor
    log_kept_mass: Tensor
    log_reported: Tensor
    engine_logits: Tensor


def kept_set(log_p: Tensor, top_k: int | None = None, top_p: float = 1.0, min_p: float = 0.0) -> Tensor:
    """The kept set K of top-k → top-p → min-p truncation of the distribution ``exp(log_p)``: ``[..., V]`` bool.

    Ties in probability are broken by token index (the lower index ranks first: a stable descending sort).
    Tokens of zero probability are never kept; the most probable token always is.

    Args:
      log_p: ``[..., V]`` normalized log-probabilities (−inf allowed).
      top_k: k >= 1 or None; top_p: p in (0, 1]; min_p: in [0, 1].
    """
    p = log_p.exp()
    V = p.shape[-1]
    order = torch.sort(log_p, dim=-1, descending=True, stable=True).indices  # [..., V] token ids by rank
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(V, device=p.device).expand_as(order))
    keep = p > 0
    if top_k is not None and top_k < V:
        keep = keep & (rank < top_k)
    if top_p < 1.0:
        ps = torch.gather(torch.where(keep, p, torch.zeros_like(p)), -1, order)  # sorted, renormalized below
        ps = ps / ps.sum(-1, keepdim=True)
        before = torch.cumsum(ps, -1) - ps  # mass strictly before each rank
        keep = keep & torch.gather(before < top_p, -1, rank)
    if min_p > 0.0:
        keep = keep & (p >= min_p * p.amax(-1, keepdim=True))
    return keep


@dataclass(frozen=True)
class Sampler:
    """An inference engine's sampling transformation of π_old (order and tie rule: module docstring).

    Attributes:
      temperature: τ > 0.
      top_k: k >= 1, or None (no top-k).
      top_p: p in (0, 1]; 1 = no top-p.
      min_p: in [0, 1); 0 = no min-p.
      dtype: the engine's logit precision (:class:`~rlkl.options.SamplerDtype`); ``float64`` = the trainer's.
      noise: σ >= 0 of a seeded Gaussian perturbation of the logits (a different implementation); 0 = none.
      seed: seed of that perturbation (``torch.Generator().manual_seed(seed)``, float64 on the CPU).
      logprobs: which log-probs the engine reports (:class:`~rlkl.options.LogprobsMode`).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    dtype: SamplerDtype = SamplerDtype.FLOAT64
    noise: float = 0.0
    seed: int = 0
    logprobs: LogprobsMode = LogprobsMode.PROCESSED

    def __post_init__(self):
        object.__setattr__(self, "temperature", check_real("Sampler.temperature", self.temperature, low=0,
                                                           low_open=True))
        object.__setattr__(self, "top_k", check_int("Sampler.top_k", self.top_k, low=1, allow_none=True))
        object.__setattr__(self, "top_p", check_real("Sampler.top_p", self.top_p, low=0, high=1, low_open=True))
        object.__setattr__(self, "min_p", check_real("Sampler.min_p", self.min_p, low=0, high=1, high_open=True))
        object.__setattr__(self, "noise", check_real("Sampler.noise", self.noise, low=0))
        check_int("Sampler.seed", self.seed, low=0)
        set_enum(self, "dtype", SamplerDtype)
        set_enum(self, "logprobs", LogprobsMode)

    @property
    def truncates(self) -> bool:
        """True when some tokens can be cut (top-k, top-p < 1 or min-p > 0)."""
        return self.top_k is not None or self.top_p < 1.0 or self.min_p > 0.0

    @property
    def changes_precision(self) -> bool:
        """True when the engine's logits differ from the trainer's (rounding or perturbation)."""
        return self.dtype is not SamplerDtype.FLOAT64 or self.noise > 0.0

    @property
    def is_identity(self) -> bool:
        """True when q = π_old (τ = 1, no truncation, no precision change)."""
        return self.temperature == 1.0 and not self.truncates and not self.changes_precision

    def replace(self, **changes) -> "Sampler":
        import dataclasses

        return dataclasses.replace(self, **changes)

    def noise_like(self, shape: tuple[int, ...]) -> Tensor | None:
        """The seeded perturbation ε·σ of shape ``shape`` (float64, CPU), or None when ``noise == 0``."""
        if self.noise == 0.0:
            return None
        g = torch.Generator().manual_seed(int(self.seed))
        return self.noise * torch.randn(tuple(shape), generator=g, dtype=torch.float64)

    def engine_logits(self, logits: Tensor, perturbation: Tensor | None = None) -> Tensor:
        """z_e = round_dtype(z + perturbation) in the dtype of ``logits`` (−inf stays −inf)."""
        z = logits if perturbation is None else logits + perturbation.to(logits)  # −inf stays −inf
        if self.dtype is SamplerDtype.FLOAT64:
            return z
        return z.to(_TORCH_DTYPES[self.dtype]).to(logits.dtype)

    def transform(self, logits: Tensor, perturbation: Tensor | None = None) -> SamplerOutput:
        """Apply the sampler to ``[..., V]`` logits (any shift: only differences matter up to the rounding step).

        Args:
          logits: ``[..., V]`` float logits z of π_old (−inf = a token of zero probability).
          perturbation: ``[..., V]`` additive logit perturbation; None: :meth:`noise_like` of the logits' shape
            (nothing when ``noise == 0``).
        Returns:
          :class:`SamplerOutput`.
        """
        check_float("logits", logits, finite=False)
        if bool(torch.isnan(logits).any()) or bool((logits == float("inf")).any()):
            raise ValueError("logits must not contain NaN or +inf")
        if perturbation is None:
            perturbation = self.noise_like(tuple(logits.shape))
        z_e = self.engine_logits(logits, perturbation)
        scaled = z_e / self.temperature
        log_tilde = torch.log_softmax(scaled, dim=-1)  # π̃
        kept = kept_set(log_tilde, self.top_k, self.top_p, self.min_p)
        masked = torch.where(kept, scaled, torch.full_like(scaled, float("-inf")))
        lse_kept = torch.logsumexp(masked, dim=-1, keepdim=True)
        log_q = masked - lse_kept
        log_kept_mass = (lse_kept - torch.logsumexp(scaled, dim=-1, keepdim=True)).squeeze(-1)
        raw = torch.log_softmax(z_e, dim=-1)
        reported = log_q if self.logprobs is LogprobsMode.PROCESSED else raw
        return SamplerOutput(log_q, kept, log_kept_mass, reported, z_e)

    def describe(self) -> str:
        """A short label, e.g. ``top_p=0.8`` or ``tau=0.7,top_k=2,bf16,raw`` (``identity`` when q = π_old)."""
        parts = []
        if self.temperature != 1.0:
            parts.append(f"tau={self.temperature:g}")
        if self.top_k is not None:
            parts.append(f"top_k={self.top_k}")
        if self.top_p < 1.0:
            parts.append(f"top_p={self.top_p:g}")
        if self.min_p > 0.0:
            parts.append(f"min_p={self.min_p:g}")
        if self.dtype is not SamplerDtype.FLOAT64:
            parts.append(self.dtype.value)
        if self.noise > 0.0:
            parts.append(f"noise={self.noise:g}")
        if self.logprobs is LogprobsMode.RAW:
            parts.append("raw")
        return ",".join(parts) or "identity"


# ================================================================================================ correction weights
def rollout_log_ratio(logp_old: Tensor, logp_rollout: Tensor, mask: Tensor) -> Tensor:
    """log ρ_t = log π_old(a_t|s_t) − log q_reported(a_t|s_t) on response tokens, 0 on padding: ``[B, T]``, detached.

    Args:
      logp_old: ``[B, T]`` the trainer's log-probs of the sampled tokens; logp_rollout: ``[B, T]`` the engine's
        reported log-probs (finite on response tokens); mask: ``[B, T]`` bool.
    """
    diff = torch.where(mask, logp_old - torch.where(mask, logp_rollout, torch.zeros_like(logp_rollout)),
                       torch.zeros_like(logp_old))
    return diff.detach()  # sg[·]: the correction changes the measure, not the objective


def _clamp_exp(log_w: Tensor) -> Tensor:
    return torch.exp(torch.clamp(log_w, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # verl's ±20 guard


def _bound(w: Tensor, cap: float | None, floor: float | None) -> Tensor:
    if cap is not None:
        w = torch.clamp(w, max=cap)
    if floor is not None:
        w = torch.clamp(w, min=floor)
    return w


def token_is_weights(log_ratio: Tensor, mask: Tensor, cap: float | None = None, floor: float | None = None) -> Tensor:
    """Token-level truncated IS: w_t = clamp(ρ_t, floor, cap) (no bound when None): ``[B, T]``, 0 on padding.

    verl ``rollout_is=token`` (w_t = min(ρ_t, C), ``rollout_is_threshold`` C = 2.0); TRL
    ``vllm_importance_sampling_mode="token_truncate"`` (clamp to [C_min, C_max]); docs/theory.md §7 (T23).
    """
    return _bound(_clamp_exp(log_ratio), cap, floor) * mask


def sequence_is_weights(log_ratio: Tensor, mask: Tensor, cap: float | None = None,
                        floor: float | None = None) -> Tensor:
    """Sequence-level truncated IS: w_i = clamp(Π_t ρ_{i,t}, floor, cap) on every token of row i: ``[B, T]``.

    verl ``rollout_is=sequence``; TRL ``vllm_importance_sampling_mode="sequence_truncate"``.
    """
    seq = (log_ratio * mask).sum(-1, keepdim=True)  # [B, 1] log Π_t ρ_t
    return _bound(_clamp_exp(seq), cap, floor).expand_as(log_ratio) * mask


def masked_is_weights(log_ratio: Tensor, mask: Tensor, sequence: bool, upper: float | None,
                      lower: float | None = None) -> Tensor:
    """Masked IS: w = ρ·1[lower <= ρ <= upper] (ρ per token, or Π_t ρ_t per row with ``sequence``): ``[B, T]``.

    A bound of None is absent. verl threshold ``"lower_upper"`` (IcePop); TRL ``vllm_importance_sampling_mode``
    ``token_mask`` / ``sequence_mask`` (default, C_max = 3.0, no lower bound): ratios outside the bounds get weight
    0 (the tokens stay in the aggregation's denominator).
    """
    lr = (log_ratio * mask).sum(-1, keepdim=True).expand_as(log_ratio) if sequence else log_ratio
    rho = _clamp_exp(lr)
    ok = torch.ones_like(mask)
    if upper is not None:
        ok = ok & (rho <= upper)
    if lower is not None:
        ok = ok & (rho >= lower)
    return torch.where(ok, rho, torch.zeros_like(rho)) * mask


def geometric_mean_weights(log_ratio: Tensor, mask: Tensor, cap: float | None = None) -> Tensor:
    """Geometric-mean sequence ratio: w_i = min(exp((1/|y_i|) Σ_t log ρ_{i,t}), cap) on every token of row i.

    The length-normalized sequence ratio of GMPO (Zhao et al. arXiv 2507.20673, the geometric-mean objective) and
    GSPO (arXiv 2507.18071 eq. 7), used here as a rollout correction.
    """
    n = mask.sum(-1, keepdim=True).clamp(min=1).to(log_ratio.dtype)
    mean = (log_ratio * mask).sum(-1, keepdim=True) / n
    return _bound(_clamp_exp(mean), cap, None).expand_as(log_ratio) * mask


# ================================================================================================ diagnostics
def effective_sample_size(weights: Tensor, mask: Tensor) -> Tensor:
    """Normalized ESS of token weights: (Σ m w)² / (N Σ m w²) ∈ (0, 1] (1 = all weights equal; verl's
    ``rollout_is_eff_sample_size``). 0 when every weight is 0."""
    w = weights * mask
    n = mask.sum().to(weights.dtype)
    s2 = (w * w).sum()
    return torch.where(s2 > 0, w.sum() ** 2 / (n * torch.where(s2 > 0, s2, torch.ones_like(s2))),
                       torch.zeros_like(s2))


def mismatch_diagnostics(logp_old: Tensor, logp_rollout: Tensor, mask: Tensor, weights: Tensor | None = None,
                         raw_weights: Tensor | None = None, kept_logmass: Tensor | None = None) -> dict[str, Tensor]:
    """Detached 0-dim statistics of the rollout–trainer mismatch on a batch (definitions: docs/metrics.md).

    With ρ_t = π_old/q_reported and ℓ_t = log ρ_t (:func:`rollout_log_ratio`), token means ⟨·⟩ over the mask:
    ``ratio_mean`` ⟨ρ⟩; ``kl_k1`` ⟨−ℓ⟩, ``kl_k2`` ⟨ℓ²/2⟩, ``kl_k3`` ⟨e^ℓ − 1 − ℓ⟩ (Schulman's estimates of the token
    KL(q‖π_old), tokens drawn from q); with ``weights`` (the applied w): ``weight_mean`` ⟨w⟩, ``ess``
    (:func:`effective_sample_size`); with ``raw_weights`` (the unbounded ratio of the same level):
    ``capped_fraction`` ⟨1[w < raw]⟩ (cut by a cap) and ``rejected_fraction`` ⟨1[w = 0 < raw]⟩ (dropped);
    with ``kept_logmass`` (log S_t of the trainer's π_old on the kept set): ``kept_mass`` ⟨S⟩.
    """
    check_token_tensors(mask, logp_old=logp_old)
    with torch.no_grad():
        lr = rollout_log_ratio(logp_old, logp_rollout, mask)
        n = mask.sum().to(lr.dtype)

        def mean(x: Tensor) -> Tensor:
            return (x.to(lr.dtype) * mask).sum() / n

        out = {"ratio_mean": mean(_clamp_exp(lr)), "kl_k1": mean(-lr), "kl_k2": mean(0.5 * lr * lr),
               "kl_k3": mean(torch.expm1(torch.clamp(lr, max=LOG_RATIO_CLAMP)) - lr)}
        if weights is not None:
            out["weight_mean"] = mean(weights)
            out["ess"] = effective_sample_size(weights, mask)
        if weights is not None and raw_weights is not None:
            out["capped_fraction"] = mean((weights < raw_weights * (1 - 1e-12)) & (weights > 0))
            out["rejected_fraction"] = mean((weights == 0) & (raw_weights > 0))
        if kept_logmass is not None:
            out["kept_mass"] = mean(kept_logmass.exp())
    return {k: v.to(logp_old.dtype) for k, v in out.items()}


# ================================================================================================ trainer side
def kept_log_softmax(logits: Tensor, kept: Tensor) -> Tensor:
    """Mask replay: log π^K(a|s) = log π(a|s) − log Σ_{b∈K_s} π(b|s) on K_s, −inf outside: ``[..., V]``.

    Differentiable in ``logits``; no gradient reaches the cut tokens. ``kept``: ``[..., V]`` bool, the engine's kept
    set (non-empty at every state).
    """
    return torch.log_softmax(torch.where(kept, logits, torch.full_like(logits, float("-inf"))), dim=-1)


def kept_logmass(logits: Tensor, kept: Tensor) -> Tensor:
    """log S = log Σ_{a∈K_s} softmax(logits)(a): ``[...]`` (the trainer's mass on the engine's kept set)."""
    masked = torch.where(kept, logits, torch.full_like(logits, float("-inf")))
    return torch.logsumexp(masked, dim=-1) - torch.logsumexp(logits, dim=-1)


def exact_mismatch_kl(log_q: Tensor, log_old: Tensor, mask: Tensor) -> Tensor:
    """⟨KL(q‖π_old)(s_t)⟩ = Σ_t m_t Σ_a q(a|s_t) (log q − log π_old)(a|s_t) / Σ_t m_t, from full distributions.

    Args:
      log_q: ``[B, T, V]`` the engine's log q (−inf outside the kept set); log_old: ``[B, T, V]`` the trainer's
        log π_old; mask: ``[B, T]`` bool.
    Returns:
      0-dim tensor (detached).
    """
    with torch.no_grad():
        q = log_q.exp()
        diff = torch.where(q > 0, log_q - log_old, torch.zeros_like(log_q))
        per_state = (q * diff).sum(-1)  # [B, T]
        return (per_state * mask).sum() / mask.sum()
