"""Per-token policy losses, KL losses, the eight RPG surrogates with RPG-Style Clip, and loss aggregation.

Every loss returns a ``[B, T]`` per-token loss (zero where ``mask`` is False) that :func:`aggregate` reduces to
a scalar. Sign convention: losses are minimized; a surrogate is correct for an objective J when its (expected)
gradient is −∇J. Each docstring says which gradient the loss yields, under which sampling and which sg[·].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from rlkl._checks import (check_bool, check_choice, check_float, check_int, check_mask, check_real, check_same_dtype,
                          check_token_tensors, require, validated, values_trusted)
from rlkl.divergences import KLEstimator, _k3, kl_estimate

AggregationMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
AGGREGATION_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                      "seq-mean-token-sum-norm")
RPGDivergence = Literal["fkl", "rkl", "ufkl", "urkl"]
RPG_DIVERGENCES: tuple[str, ...] = ("fkl", "rkl", "ufkl", "urkl")
RPGForm = Literal["differentiable", "reinforce"]
RPGLevel = Literal["token", "sequence"]

LOG_RATIO_CLAMP = 20.0  # verl/OpenRLHF guard: log ρ clamped to ±20 before exp (rlkl also guards RPG's sequence ratio)


class PolicyLossOutput:
    """Per-token loss and diagnostics (0-dim tensors, masked means over valid tokens), read like a named tuple
    ``(loss, clip_fraction_low, clip_fraction_high, dual_clip_fraction, ratio_mean, ratio_min, ratio_max)``.

    The diagnostics are computed on first read (all six at once, from the loss call's detached tensors): a caller
    that uses only ``loss`` pays for no diagnostic. Read them before modifying the call's inputs in place.

    Attributes:
      loss: ``[B, T]`` per-token loss, 0 where mask is False.
      clip_fraction_low: fraction of tokens clipped at the lower bound (A < 0, ρ < 1 − ε_low): no gradient.
      clip_fraction_high: fraction clipped at the upper bound (A > 0, ρ > 1 + ε_high): no gradient.
      dual_clip_fraction: fraction cut by the dual clip (A < 0, ρ > c): no gradient.
      ratio_mean, ratio_min, ratio_max: statistics of the importance ratio ρ = π/π_old over valid tokens.
    """

    _fields = ("loss", "clip_fraction_low", "clip_fraction_high", "dual_clip_fraction", "ratio_mean", "ratio_min",
               "ratio_max")
    __slots__ = ("loss", "_diagnostics", "_source")

    def __init__(self, loss: Tensor, *diagnostics: Tensor):
        if len(diagnostics) != 6:
            raise ValueError(f"PolicyLossOutput takes the loss and 6 diagnostics, got {1 + len(diagnostics)} values")
        self.loss = loss
        self._diagnostics: list[Tensor | None] = list(diagnostics)
        self._source = None

    @classmethod
    def lazy(cls, loss: Tensor, diagnostics: "DiagnosticsThunk") -> "PolicyLossOutput":
        """The loss now; diagnostic i (0–5, in field order) from ``diagnostics(i)`` when first read."""
        out = cls.__new__(cls)
        out.loss, out._diagnostics, out._source = loss, [None] * 6, diagnostics
        return out

    def _field(self, i: int) -> Tensor:
        value = self._diagnostics[i]
        if value is None:
            value = self._diagnostics[i] = self._source(i)
        return value

    def _values(self) -> tuple[Tensor, ...]:
        return (self.loss,) + tuple(self._field(i) for i in range(6))

    clip_fraction_low = property(lambda self: self._field(0))
    clip_fraction_high = property(lambda self: self._field(1))
    dual_clip_fraction = property(lambda self: self._field(2))
    ratio_mean = property(lambda self: self._field(3))
    ratio_min = property(lambda self: self._field(4))
    ratio_max = property(lambda self: self._field(5))

    def __iter__(self):
        return iter(self._values())

    def __getitem__(self, index):
        return self._values()[index]

    def __len__(self) -> int:
        return 7

    def _asdict(self) -> dict[str, Tensor]:
        return dict(zip(self._fields, self._values()))

    def __repr__(self) -> str:
        return "PolicyLossOutput(" + ", ".join(f"{k}={v!r}" for k, v in self._asdict().items()) + ")"


def _mask_as(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A bool mask as 0/1 in ``dtype``: the values of ``mask.to(dtype)``, bit for bit, converted through the mask's
    bytes (a bool tensor's bytes are 0 / 1). On CPU the uint8 conversion is vectorized and the bool one is not: 37
    vs 148 µs on a ``[43690, 6]`` mask, and a float × bool product costs 3× a float × float one (torch 2.13, 1
    thread)."""
    return mask.view(torch.uint8).to(dtype)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Σ m x / Σ m over all entries; an all-False mask gives 0 (defined, not nan: a diagnostic over no token).

    Args:
      x: float tensor; mask: bool tensor of the same shape. No host sync (shapes and dtypes are checked, values
        are not: callers validate them once at their own boundary).
    Returns:
      0-dim mean in x's dtype.
    """
    check_float("x", x, finite=False)
    check_mask("mask", mask, x.shape, require_nonempty=False)
    return _masked_mean(x, mask)


def _mean_weights(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """m/Σm with Σm clamped to >= 1: the weights of a masked mean (shared by several means of one mask)."""
    m = _mask_as(mask, dtype)
    return m / m.sum().clamp_min(1.0)


def _masked_mean(x: Tensor, mask: Tensor, weights: Tensor | None = None) -> Tensor:
    w = _mean_weights(mask, x.dtype) if weights is None else weights
    return (torch.where(mask, x, 0.0) * w).sum()  # scaled before summing: no overflow


def _ratio_min_max(ratio: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """min and max over the valid entries in one pass: invalid entries are filled with the value at the first valid
    entry, which changes neither (no boolean indexing); inf/−inf when there is no valid entry."""
    flat_r, flat_m = ratio.detach().reshape(-1), mask.reshape(-1)
    first = flat_r.gather(0, flat_m.to(torch.uint8).argmax().reshape(1))  # a valid entry (index 0 if none)
    lo, hi = torch.aminmax(torch.where(flat_m, flat_r, first))
    some = flat_m.any()
    return torch.where(some, lo, float("inf")), torch.where(some, hi, float("-inf"))


def _frac(cond: Tensor, mask: Tensor, dtype: torch.dtype, weights: Tensor | None = None) -> Tensor:
    """Fraction of valid tokens where ``cond`` holds, in the loss dtype (Σ m·1[cond]·(1/Σm), as a masked mean)."""
    w = _mean_weights(mask, dtype) if weights is None else weights
    return ((cond & mask).to(dtype) * w).sum()


class _TokenDiagnostics:
    """The six diagnostics of a loss over the valid entries of ``mask`` — clip fractions low, high, dual (from
    zero-argument functions giving the bool conditions; None: 0) and ratio mean, min, max (``ratio`` a tensor or a
    function giving it) — each computed on first request (``self(i)``), sharing the mean weights; no host sync."""

    __slots__ = ("mask", "dtype", "_ratio", "conds", "_w", "_stats")

    def __init__(self, mask: Tensor, dtype: torch.dtype, ratio: Tensor | Callable[[], Tensor],
                 *conds: Callable[[], Tensor] | None):
        self.mask, self.dtype, self._ratio = mask, dtype, ratio
        self.conds = conds + (None,) * (3 - len(conds))
        self._w = self._stats = None

    @property
    def ratio(self) -> Tensor:
        if callable(self._ratio):  # computed on first use
            self._ratio = self._ratio()
        return self._ratio

    def weights(self) -> Tensor:
        if self._w is None:
            self._w = _mean_weights(self.mask, self.dtype)
        return self._w

    def __call__(self, i: int) -> Tensor:
        with torch.no_grad():
            if i < 3:
                cond = self.conds[i]
                if cond is None:
                    return torch.zeros((), dtype=self.dtype, device=self.mask.device)
                return _frac(cond(), self.mask, self.dtype, self.weights())
            if i == 3:
                return _masked_mean(self.ratio, self.mask, self.weights())
            if self._stats is None:
                self._stats = _ratio_min_max(self.ratio, self.mask)
            return self._stats[i - 4]


#: a loss kernel's diagnostics: ``diagnostics(i)`` is field i + 1 of :class:`PolicyLossOutput`, computed when asked
DiagnosticsThunk = Callable[[int], Tensor]


# ---------------------------------------------------------------------------------------------------------------
# aggregation


def aggregate(loss: Tensor, mask: Tensor, mode: AggregationMode, horizon: int | None = None) -> Tensor:
    """Reduce a ``[B, T]`` per-token loss to a scalar (verl ``agg_loss``; docs/integrations.md).

    - ``token-mean``: Σ_{i,t} m l / Σ m (DAPO; verl default; TRL ``dapo``/``bnpo``).
    - ``seq-mean-token-mean``: (1/B') Σ_i (Σ_t m l / |y_i|) (original GRPO; TRL ``grpo``): the 1/|y_i| factor
      is Dr. GRPO's length bias (arXiv 2503.20783).
    - ``seq-mean-token-sum``: (1/B') Σ_i Σ_t m l.
    - ``seq-mean-token-sum-norm``: Σ_i Σ_t m l / (B · C), C = ``horizon`` (Dr. GRPO's constant MAX_TOKENS; TRL
      ``dr_grpo`` uses ``max_completion_length``). ``horizon=None`` uses the padded width T, as verl does by
      default — then C is a constant only if T is.
    B' counts sequences with at least one valid token. Invariant to extra padding columns (except the
    ``seq-mean-token-sum-norm`` default C = T).

    Args:
      loss: ``[B, T]`` per-token loss, or ``[B, 1]``: one value per response, the loss of each of its tokens (a
        sequence-level loss spread over the response; the same result as its ``[B, T]`` broadcast, without the
        ``[B, T]`` passes); mask: ``[B, T]`` bool.
      mode: one of ``AGGREGATION_MODES``.
      horizon: constant C for ``seq-mean-token-sum-norm``.
    Returns:
      0-dim loss.
    """
    def check():
        check_choice("aggregation", mode, AGGREGATION_MODES)
        check_float("loss", loss, ndim=2)
        per_row = loss.shape[1] == 1 and isinstance(mask, Tensor) and mask.dim() == 2
        check_mask("mask", mask, (loss.shape[0], mask.shape[1]) if per_row else loss.shape)
        return check_int("horizon", horizon, low=1, allow_none=True)

    return _aggregate(loss, mask, mode, validated(check, loss, mask=mask))


def _aggregate(loss: Tensor, mask: Tensor, mode: str, horizon: int | None) -> Tensor:
    """:func:`aggregate` on validated inputs."""
    # Overflow-safe: every reduction divides before it sums (Σ l·(m/N), not (Σ l·m)/N), so per-token losses that
    # are finite give a finite token-mean / seq-mean-token-mean even when Σ l·m exceeds the dtype; only a value
    # that itself exceeds the dtype (a token *sum* beyond float32's 3.4e38) overflows. No boolean indexing.
    # Each mode builds only what it reads (the float mask, the lengths, B'): the same values, fewer passes.
    if loss.shape[1] == 1 and mask.shape[1] != 1:
        return _aggregate_rows(loss, mask, mode, horizon)
    lx = torch.where(mask, loss, 0.0)
    if mode == "token-mean":
        m = _mask_as(mask, loss.dtype)
        return (lx * (m / m.sum())).sum()
    if mode == "seq-mean-token-mean":
        lengths = torch.count_nonzero(mask, dim=-1).unsqueeze(1).to(loss.dtype)  # [B, 1] |y_i| (exact counts)
        n_seq = (lengths > 0).to(loss.dtype).sum()  # B': sequences with a valid token (>= 1: mask is non-empty)
        # [B] Σ_t m l / |y_i|: lx is 0 on padding, so lx·(1/|y_i|) has the values of lx·(m/|y_i|), bit for bit
        per_seq = (lx * (1.0 / lengths.clamp_min(1.0))).sum(-1)
        return (per_seq / n_seq).sum()
    if mode == "seq-mean-token-sum":
        # B' (an exact count, as from the lengths): a row's largest mask byte is 1 iff it holds a token
        n_seq = mask.view(torch.uint8).amax(-1).sum(dtype=loss.dtype)
        # [B] token sums first (a row's sum overflows only if it exceeds the dtype), then divided: one [B, T] pass
        # less than dividing every token, each way; the gradient 1/B' per valid token is the same
        return (lx.sum(-1) / n_seq).sum()
    C = loss.shape[1] if horizon is None else horizon
    return (lx / (loss.shape[0] * C)).sum()


def _aggregate_rows(loss: Tensor, mask: Tensor, mode: str, horizon: int | None) -> Tensor:
    """:func:`_aggregate` of a ``[B, 1]`` loss x_i on each of the response's k_i = Σ_t m_{i,t} tokens: Σ_t m x_i =
    k_i x_i, so the only ``[B, T]`` pass is the count k (forward and backward run on ``[B, 1]``). Rows without a
    token contribute 0 whatever x_i holds there (as the masked ``[B, T]`` sums)."""
    k = mask.view(torch.uint8).sum(-1, keepdim=True, dtype=loss.dtype)  # [B, 1] k_i, exact counts
    has = k > 0
    x = torch.where(has, loss, 0.0)  # [B, 1]
    if mode == "token-mean":
        return (x * (k / k.sum())).sum()  # Σ_i k_i x_i / Σ_i k_i, scaled before summing
    n_seq = has.sum(dtype=loss.dtype)  # B'
    if mode == "seq-mean-token-mean":
        return (x / n_seq).sum()  # (Σ_t m x_i)/k_i = x_i
    if mode == "seq-mean-token-sum":
        return (x * k / n_seq).sum()
    C = mask.shape[1] if horizon is None else horizon
    return (x * (k / (loss.shape[0] * C))).sum()


# ---------------------------------------------------------------------------------------------------------------
# policy losses


def _check_adv(advantages: Tensor, logp: Tensor) -> Tensor:
    check_float("advantages", advantages, shape=logp.shape)
    check_same_dtype(logp=logp, advantages=advantages)
    return advantages


def reinforce_loss(logp: Tensor, advantages: Tensor, mask: Tensor, logp_old: Tensor | None = None) -> PolicyLossOutput:
    """REINFORCE: l_t = −sg[A_t]·log π_θ(a_t|s_t).

    Williams (1992); RPG (arXiv 2505.17508) eq. C.2. With tokens sampled from π_θ (on-policy) the expected
    gradient is −E_π[Σ_t A_t ∇log π_θ(a_t|s_t)] = −∇J whenever A_t is an unbiased return with a state-only
    baseline. Off-policy (samples from π_old ≠ π_θ) it has no importance weight and is biased.

    Args:
      logp: ``[B, T]`` log π_θ of sampled tokens (differentiable).
      advantages: ``[B, T]`` (detached inside).
      mask: ``[B, T]`` bool.
      logp_old: optional ``[B, T]`` behaviour log-probs, only for the ratio diagnostics.
    Returns:
      PolicyLossOutput (no clipping: clip fractions 0).
    """
    def check():
        shape = check_token_tensors(mask, logp=logp)
        _check_adv(advantages, logp)
        if logp_old is not None:
            check_float("logp_old", logp_old, shape=shape)
            check_same_dtype(logp=logp, logp_old=logp_old)

    validated(check, logp, advantages, *(() if logp_old is None else (logp_old,)), mask=mask)
    loss, diagnostics = _reinforce(logp, advantages, mask, logp_old)
    return PolicyLossOutput.lazy(loss * _mask_as(mask, loss.dtype), diagnostics)


def _reinforce(logp: Tensor, advantages: Tensor, mask: Tensor, logp_old: Tensor | None
               ) -> tuple[Tensor, DiagnosticsThunk]:
    """:func:`reinforce_loss` on validated inputs: (per-token loss, diagnostics thunk); the loss is
    not masked (padding entries are whatever the formula gives there): the caller masks it."""
    loss = -advantages.detach() * logp  # sg[A]: the advantage is a constant weight on the score
    lp = logp.detach()
    ratio = (lambda: torch.ones_like(lp)) if logp_old is None else (lambda: torch.exp(lp - logp_old))
    return loss, _TokenDiagnostics(mask, lp.dtype, ratio)


def ppo_clip_loss(logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, clip_low: float = 0.2,
                  clip_high: float = 0.2, dual_clip: float | None = None) -> PolicyLossOutput:
    """PPO clipped surrogate with asymmetric (clip-higher) and dual clip.

    l_t = max(−ρ_t A_t, −clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t), and for A_t < 0 with dual clip c > 1:
    l_t = min(l_t, −c A_t). ρ_t = exp(clamp(log π_θ − log π_old, ±20)) (verl's guard).
    Schulman et al. (arXiv 1707.06347) eq. 7; clip-higher: DAPO (arXiv 2503.14476); dual clip: Ye et al. (2020),
    RPG eq. Sec. 3.3; verl ``vanilla`` loss (docs/integrations.md).

    Gradient: −A_t ρ_t ∇log π_θ on unclipped tokens and 0 on clipped ones; at ρ ≡ 1 (first step after sampling,
    samples from π_old = π_θ) it equals REINFORCE's −A_t∇log π_θ.

    Args:
      logp: ``[B, T]`` log π_θ (differentiable); logp_old: ``[B, T]`` log π_old (data).
      advantages: ``[B, T]`` (detached inside); mask: ``[B, T]`` bool.
      clip_low, clip_high: ε_low, ε_high > 0 (ε_low < 1). dual_clip: c > 1 or None.
    Returns:
      PolicyLossOutput.
    """
    def check():
        check_token_tensors(mask, logp=logp, logp_old=logp_old)
        _check_adv(advantages, logp)
        low, high = _check_clip(clip_low, clip_high)
        return low, high, check_real("dual_clip", dual_clip, low=1.0, low_open=True, allow_none=True)

    low, high, dual = validated(check, logp, logp_old, advantages, mask=mask)
    loss, diagnostics = _ppo_clip(logp, logp_old, advantages, mask, low, high, dual)
    return PolicyLossOutput.lazy(loss * _mask_as(mask, loss.dtype), diagnostics)


def _ppo_clip(logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, clip_low: float, clip_high: float,
              dual_clip: float | None) -> tuple[Tensor, DiagnosticsThunk]:
    """:func:`ppo_clip_loss` on validated inputs: (per-token loss, diagnostics thunk); the loss is
    not masked (padding entries are whatever the formula gives there): the caller masks it."""
    A = advantages.detach()  # sg[A]
    if A.stride(-1) == 0:  # one value per row (`Method.loss`'s stride-0 view): [B, 1], broadcast by each product
        A = A[:, :1]
    neg_a = -A
    log_ratio = torch.clamp(logp - logp_old.detach(), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = neg_a * ratio
    # sg[clipped surrogate]: where it is the larger, the clamp is active (ratio outside [1 − ε_low, 1 + ε_high]) and
    # carries no gradient; elsewhere (ties included: the clamp is the identity there) the gradient is −A ρ ∇log π_θ,
    # what torch.maximum gives (its tie split 1/2 + 1/2 adds up exactly), with a one-pass select as its backward
    clipped = (neg_a * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)).detach()
    loss = torch.where(clipped > unclipped, clipped, unclipped)
    dual = None
    if dual_clip is not None:
        dual_loss = neg_a * dual_clip  # data: no gradient
        dual_on = (A < 0) & (loss.detach() > dual_loss)  # min(l, −cA) picks −cA (an exact tie keeps l)
        loss = torch.where(dual_on, dual_loss, loss)
        dual = lambda: dual_on  # noqa: E731
    r = ratio.detach()

    diagnostics = _TokenDiagnostics(mask, r.dtype, r, lambda: (A < 0) & (r < 1.0 - clip_low),
                                    lambda: (A > 0) & (r > 1.0 + clip_high), dual)
    return loss, diagnostics  # unmasked: the caller masks (aggregation, or × mask)


def _check_clip(clip_low, clip_high) -> tuple[float, float]:
    """ε_low in (0, 1) (1 − ε_low must stay a positive ratio), ε_high > 0."""
    return (check_real("clip_low", clip_low, low=0.0, high=1.0, low_open=True, high_open=True),
            check_real("clip_high", clip_high, low=0.0, low_open=True))


def gspo_loss(logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, clip_low: float = 3e-4,
              clip_high: float = 4e-4) -> PolicyLossOutput:
    """GSPO with the sequence-level ratio s_i = exp(mean_t log(π_θ/π_old)) (GSPO-token form).

    Zheng et al. (arXiv 2507.18071) eq. for GSPO-token: s_{i,t} = sg[s_i]·π_θ(a_t)/sg[π_θ(a_t)];
    l_t = max(−s_{i,t} A_t, −clip(s_{i,t}, 1 − ε_low, 1 + ε_high) A_t). With A constant along the sequence its
    gradient is −A_i s_i (1/|y_i|) Σ_t ∇log π_θ(a_t) per unclipped sequence (verl ``gspo``; use
    ``seq-mean-token-mean`` aggregation, as verl forces).

    Args:
      logp, logp_old, advantages: ``[B, T]``; mask: ``[B, T]`` bool; clip_low, clip_high: ε's (GSPO: 3e-4, 4e-4),
        0 < ε_low < 1 and ε_high > 0.
    Returns:
      PolicyLossOutput (ratio statistics are of s_i per token).
    """
    def check():
        shape = check_token_tensors(mask, logp=logp, logp_old=logp_old)
        _check_adv(advantages, logp)
        out = _check_clip(clip_low, clip_high)
        check_mask("mask", mask, shape, require_nonempty_rows=True)
        return out

    low, high = validated(check, logp, logp_old, advantages, mask=mask, rows=True)
    loss, diagnostics = _gspo(logp, logp_old, advantages, mask, low, high)
    return PolicyLossOutput.lazy(loss * _mask_as(mask, loss.dtype), diagnostics)


def _require_rows(mask: Tensor, lengths: Tensor | None = None) -> None:
    """Inside a trusted computation (whose caller validated the mask as a whole), every row must hold a token
    (a deferred check, :func:`rlkl._checks.require`); public callers validated it already. ``lengths``: the rows'
    token counts when the caller has them (then no pass over the mask)."""
    if values_trusted():
        rows_ok = mask.any(-1).all() if lengths is None else (lengths > 0).all()
        require(rows_ok, lambda: check_mask("mask", mask, mask.shape, require_nonempty_rows=True))


def _gspo(logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, clip_low: float, clip_high: float
          ) -> tuple[Tensor, DiagnosticsThunk]:
    """:func:`gspo_loss` on validated inputs: (per-token loss, diagnostics thunk); the loss is
    not masked (padding entries are whatever the formula gives there): the caller masks it."""
    _require_rows(mask)
    A = advantages.detach()  # sg[A]
    m = _mask_as(mask, logp.dtype)
    seq_log_ratio = ((logp - logp_old.detach()) * m).sum(-1) / m.sum(-1)  # [B] mean_t log ρ
    seq_log_ratio = torch.clamp(seq_log_ratio, max=10.0)  # verl's guard
    # s_{i,t} = sg[s_i]·π_θ/sg[π_θ]: value s_i, gradient of log π_θ(a_t) scaled by s_i
    s_token = torch.exp(seq_log_ratio.detach()[:, None] + logp - logp.detach())  # [B, T]
    neg_a = -A
    loss = torch.maximum(neg_a * s_token, neg_a * torch.clamp(s_token, 1.0 - clip_low, 1.0 + clip_high))
    s_sg = s_token.detach()

    diagnostics = _TokenDiagnostics(mask, s_sg.dtype, s_sg, lambda: (A < 0) & (s_sg < 1.0 - clip_low),
                                    lambda: (A > 0) & (s_sg > 1.0 + clip_high))
    return loss, diagnostics  # unmasked: the caller masks (aggregation, or × mask)


# ---------------------------------------------------------------------------------------------------------------
# KL losses


def kl_loss(logp: Tensor, logp_ref: Tensor, mask: Tensor, estimator: KLEstimator, straight_through: bool = False,
            logp_old: Tensor | None = None, importance_weight: bool = False) -> Tensor:
    """Per-token KL penalty used *as a loss*: k(log π_θ − log π_ref), optionally × ρ = π_θ/π_old.

    Expected gradients, tokens sampled from π_old (RPG arXiv 2505.17508 §2.3; Tang & Munos arXiv 2506.09477;
    FRPO arXiv 2601.10201 Prop. 4.3), per state s with the state distribution held fixed ("local"):
      - k1: on-policy E[∇k1] = 0 — no regularization at all.
      - k2 (and any ``straight_through`` k+): on-policy ∇KL(π_θ(·|s)‖π_ref(·|s)), the local reverse-KL gradient.
      - k3 (GRPO default, verl ``low_var_kl``): on-policy ∇KL(π_ref(·|s)‖π_θ(·|s)), the local *forward* KL.
      - ρ·k3 (``importance_weight=True``; DeepSeek-V3.2, TRL ``use_bias_correction_kl``): ∇(ρ k3) =
        ρ·log(π_θ/π_ref)·∇log π_θ, so E_{π_old}[·] = local ∇KL(π_θ‖π_ref) for any θ (RPG §2.3).
    None of them has the future-KL term of the sequence-level KL (FRPO arXiv 2601.10201 Prop. 4.3).

    Args:
      logp: ``[B, T]`` log π_θ (differentiable); logp_ref: ``[B, T]`` log π_ref (data); mask: ``[B, T]`` bool.
      estimator: ``"k1" | "k2" | "k3"``; straight_through: verl's ``+`` (value of k, gradient of k2).
      logp_old: ``[B, T]`` log π_old, required when ``importance_weight``.
      importance_weight: multiply by ρ = exp(log π_θ − log π_old), differentiable (TRL's ``coef_1``).
    Returns:
      ``[B, T]`` per-token penalty (multiply by β and aggregate like the policy loss).
    """
    shape = check_token_tensors(mask, logp=logp, logp_ref=logp_ref)
    check_bool("straight_through", straight_through)
    check_bool("importance_weight", importance_weight)
    value = kl_estimate(logp - logp_ref.detach(), estimator, straight_through)
    if importance_weight:
        if logp_old is None:
            raise ValueError("importance_weight=True needs logp_old")
        check_float("logp_old", logp_old, shape=shape)
        check_same_dtype(logp=logp, logp_old=logp_old)
        value = _importance_weighted(value, logp, logp_old)
    return torch.where(mask, value, 0.0)


def _importance_weighted(value: Tensor, logp: Tensor, logp_old: Tensor) -> Tensor:
    ratio = torch.exp(torch.clamp(logp - logp_old.detach(), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    return ratio * value


def _kl_loss(logp: Tensor, logp_ref: Tensor, estimator: str, straight_through: bool, logp_old: Tensor | None,
             importance_weight: bool) -> Tensor:
    """:func:`kl_loss` on validated inputs, not masked (the caller masks it)."""
    log_ratio = logp - logp_ref.detach()
    value = _KL_VALUES[estimator](log_ratio)
    if straight_through and estimator != "k2":  # value of k, gradient of k2 (verl's "+")
        grad_source = 0.5 * log_ratio * log_ratio
        value = value.detach() + (grad_source - grad_source.detach())
    return _importance_weighted(value, logp, logp_old) if importance_weight else value


_KL_VALUES: dict[str, Callable[[Tensor], Tensor]] = {"k1": lambda x: x, "k2": lambda x: 0.5 * x * x, "k3": _k3}


# ---------------------------------------------------------------------------------------------------------------
# RPG surrogates


@dataclass(frozen=True)
class RPGClip:
    """RPG-Style Clip (dual clip) parameters (RPG arXiv 2505.17508 Sec. 3.3, Alg. 2; paper (ε1, ε2) = (0.2, 0.28)).

    Attributes:
      eps_low: ε1 in (0, 1): for negative advantage no gradient below w = 1 − ε1.
      eps_high: ε2 > 0: for positive advantage no gradient above w = 1 + ε2.
      c: dual-clip constant > 1: for negative advantage no gradient above w = c (never given in the paper; the
        released code uses 10).
    """

    eps_low: float = 0.2
    eps_high: float = 0.28
    c: float = 10.0

    def __post_init__(self):
        check_real("RPGClip.eps_low", self.eps_low, low=0.0, high=1.0, low_open=True, high_open=True)
        check_real("RPGClip.eps_high", self.eps_high, low=0.0, low_open=True)
        check_real("RPGClip.c", self.c, low=1.0, low_open=True)


def rpg_weight(w: Tensor, log_w: Tensor, adv: Tensor, divergence: RPGDivergence, beta: float,
               z_old: float = 1.0) -> Tensor:
    """Weight(x) with ∇J = E_samp[Weight·∇lp] (RPG arXiv 2505.17508, with R → R − b).

    fkl: wA + β (Prop. E.1); rkl: w(A − β(log w + 1)) (Prop. E.3); ufkl: Z(wA − β(w − 1)) (Prop. 3.2);
    urkl: Z·w(A − β log w) (Prop. 3.6).

    Args:
      w, log_w, adv: broadcastable float tensors (w = e^{log_w} = π_θ/π_old, adv = R − b), one dtype.
      divergence: ``"fkl" | "rkl" | "ufkl" | "urkl"``; beta: β >= 0; z_old: Z_old > 0.
    """
    _check_rpg_tensors(w=w, log_w=log_w, adv=adv)
    _check_rpg_scalars(divergence, beta, z_old)
    return _rpg_weight(w, log_w, adv, divergence, float(beta), float(z_old))


def _rpg_weight(w: Tensor, log_w: Tensor, adv: Tensor, divergence: str, beta: float, z_old: float) -> Tensor:
    if divergence == "fkl":
        return w * adv + beta
    if divergence == "rkl":
        return w * (adv - beta * (log_w + 1.0))
    if divergence == "ufkl":
        return z_old * (w * adv - beta * (w - 1.0))
    return z_old * w * (adv - beta * log_w)


def rpg_differentiable_surrogate(w: Tensor, log_w: Tensor, lp: Tensor, adv: Tensor, divergence: RPGDivergence,
                                 beta: float, z_old: float = 1.0) -> Tensor:
    """Fully differentiable per-sample surrogate ℓ(x; θ) (RPG arXiv 2505.17508, Tables 1 and 4).

    fkl: −wA − β lp; rkl: w(−A + β log w); ufkl: Z(−wA + β(w − log w − 1)); urkl: Z(−wA + β(w log w − w)).
    Per sample, ∇ℓ = −Weight·∇lp (RPG §3, the per-sample gradient identity; :func:`rpg_weight`).

    Args:
      w, log_w, lp, adv: broadcastable float tensors of one dtype (lp = log π_θ(x)); divergence, beta, z_old: as
        in :func:`rpg_weight`.
    """
    _check_rpg_tensors(w=w, log_w=log_w, lp=lp, adv=adv)
    _check_rpg_scalars(divergence, beta, z_old)
    return _rpg_surrogate(w, log_w, lp, adv, divergence, float(beta), float(z_old))


def _rpg_surrogate(w: Tensor, log_w: Tensor, lp: Tensor, adv: Tensor, divergence: str, beta: float,
                   z_old: float) -> Tensor:
    if divergence == "fkl":
        return -w * adv - beta * lp
    if divergence == "rkl":
        return w * (-adv + beta * log_w)
    if divergence == "ufkl":
        return z_old * (-w * adv + beta * (w - log_w - 1.0))
    return z_old * (-w * adv + beta * (w * log_w - w))


def _check_rpg_tensors(**tensors: Tensor) -> None:
    for k, v in tensors.items():
        check_float(k, v)
    check_same_dtype(**tensors)


def _check_rpg_scalars(divergence: str, beta: float, z_old: float) -> None:
    check_choice("divergence", divergence, RPG_DIVERGENCES)
    check_real("beta", beta, low=0.0)
    check_real("z_old", z_old, low=0.0, low_open=True)


def _dual_clip(w: Tensor, adv_hat: Tensor, clip: RPGClip) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Alg. 1 / G.1 loss max(−wÂ, −clip(w)Â), then min(·, −cÂ) for Â < 0; returns (loss, low, high, dual)."""
    clipped_w = torch.clamp(w, 1.0 - clip.eps_low, 1.0 + clip.eps_high)
    loss = torch.maximum(-w * adv_hat, -clipped_w * adv_hat)
    neg = adv_hat < 0
    loss = torch.where(neg, torch.minimum(loss, -clip.c * adv_hat), loss)
    return loss, neg & (w < 1 - clip.eps_low), (~neg) & (w > 1 + clip.eps_high), neg & (w > clip.c)


def rpg_loss(logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, divergence: RPGDivergence,
             form: RPGForm, beta: float, level: RPGLevel = "token", clip: RPGClip | None = None,
             z_old: float = 1.0) -> PolicyLossOutput:
    """The eight RPG surrogates (FKL/RKL/UFKL/URKL × differentiable/REINFORCE-style) with optional RPG-Style Clip.

    RPG (Zhang et al., arXiv 2505.17508): the KL anchor is π_old, the sampling policy (iterative reference).
    w = π_θ/π_old, lp = log π_θ, A = R − b. Samples x ~ π_old. Without clipping:
      - ``form="differentiable"``: ℓ = Tables 1/4 (see :func:`rpg_differentiable_surrogate`);
      - ``form="reinforce"``: ℓ = −sg[Weight]·lp (Table 2, eq. F.1; Props F.1, F.3, F.4, F.5, 4.1).
    Both give, per sample, ∇ℓ = −Weight·∇lp, so E_{π_old}[∇ℓ] = −∇J for J = E_{π_θ}[R] − β·D with D the
    forward/reverse, normalized/unnormalized KL to π_old (Z_old = ``z_old``) — exactly at ``level="sequence"``
    (x = a whole response). ``level="token"`` (the released code) treats each token as a sample with its own w_t,
    lp_t: exact for the forward directions (chain rule under π_old), not for the reverse ones (their identities need
    the sequence ratio, not the token ratios w_t).

    With ``clip``:
      - ``form="differentiable"``: Alg. 1 / App. G.1 dual clip on w with the θ-dependent regularized advantage
        Â (urkl: A − β log w; rkl: A − β(log w + 1); ufkl: A − β(1 − 1/w); fkl: A + β/w); gradient flows through
        w and Â.
      - ``form="reinforce"``: Alg. 2 (the recommended RPG-REINFORCE + RPG-Style Clip): gradient
        −(w A + C_KL)∇lp on the active set {A' ≥ 0, w < 1 + ε2} ∪ {A' < 0, 1 − ε1 < w < c}, A' = A + C_KL/w,
        C_KL = Weight − wA, and 0 elsewhere (the loss value there is Alg. 2's constant).

    Sequence-level losses are spread as ℓ_i/|y_i| over the response's tokens, so ``seq-mean-token-sum``
    aggregation gives (1/N) Σ_i ℓ_i.

    Guard (a deliberate difference from the paper, which uses the raw ratio): log w is clamped to ±20
    (``LOG_RATIO_CLAMP``, verl's per-token guard) at both levels. At sequence level log w = Σ_t log ρ_t grows with
    the length — 100 float32 tokens at log ρ = 1, or 16 float64 tokens at 50, overflow exp — so without the clamp
    valid inputs would give inf/nan rows. Inside |log w| <= 20 (w in [2e-9, 4.9e8]) nothing changes; beyond it the
    weight is held at e^{±20} and the differentiable forms get no gradient through w (clamp), as verl's token
    guard does. The exact-engine checks run well inside the clamp.

    Args:
      logp, logp_old: ``[B, T]``; advantages: ``[B, T]`` baselined reward R − b (detached; constant along a
        response for sequence level — the first valid token's value is used); mask: ``[B, T]`` bool.
      divergence: ``"fkl" | "rkl" | "ufkl" | "urkl"``; form: ``"differentiable" | "reinforce"``; beta: β >= 0.
      level: ``"token" | "sequence"``; clip: :class:`RPGClip` or None; z_old: Z_old (1 for LLMs).
    Returns:
      PolicyLossOutput; clip fractions are per token (token level) or per response (sequence level).
    """
    def check():
        check_token_tensors(mask, logp=logp, logp_old=logp_old)
        _check_adv(advantages, logp)
        check_choice("divergence", divergence, RPG_DIVERGENCES)
        check_choice("form", form, ("differentiable", "reinforce"))
        check_choice("level", level, ("token", "sequence"))
        _check_rpg_scalars(divergence, beta, z_old)
        if clip is not None and not isinstance(clip, RPGClip):
            raise ValueError(f"clip must be an RPGClip or None, got {type(clip).__name__}")
        if level == "sequence":
            check_mask("mask", mask, mask.shape, require_nonempty_rows=True)

    validated(check, logp, logp_old, advantages, mask=mask, rows=level == "sequence")
    loss, diagnostics = _rpg(logp, logp_old, advantages, mask, divergence, form, float(beta), level, clip,
                             float(z_old))
    if level == "sequence":  # [B, 1] → [B, T]: each token's ℓ_i/|y_i|, 0 on padding (the token level is masked)
        loss = torch.where(mask, loss, 0.0)
    return PolicyLossOutput.lazy(loss, diagnostics)


def _rpg_samples(logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, m: Tensor, level: str,
                 lengths: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The samples of :func:`_rpg`: (log w, lp, A, sample mask) per token ``[B, T]`` or per sequence ``[B, 1]``
    (``lengths``: ``[B, 1]`` |y_i|, sequence level)."""
    A = advantages.detach()  # A = R − b is data (sg)
    if level == "token":
        log_w = torch.clamp(logp - logp_old.detach(), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
        return log_w, logp, A, mask
    _require_rows(mask, lengths)
    # [B, 1] log π_θ(y)/π_old(y), guarded like the token ratio (deliberate difference, see the docstring)
    log_w = torch.clamp(((logp - logp_old.detach()) * m).sum(-1, keepdim=True), -LOG_RATIO_CLAMP,
                        LOG_RATIO_CLAMP)
    lp = (logp * m).sum(-1, keepdim=True)  # [B, 1] log π_θ(y)
    if A.stride(-1) == 0:  # one value per row (`Method.loss` passes a stride-0 view): every token's is the first's
        return log_w, lp, A[:, :1], torch.ones_like(lp, dtype=torch.bool)
    # the first valid token: max over the mask's bytes (no copy) returns the first maximal index, as argmax does
    # (both documented), ~25% faster than argmax on a short last axis on CPU
    first = mask.view(torch.uint8).max(-1, keepdim=True).indices
    adv = torch.gather(A, 1, first)  # [B, 1]
    return log_w, lp, adv, torch.ones_like(lp, dtype=torch.bool)


def _rpg_alg2(w: Tensor, log_w: Tensor, lp: Tensor, adv: Tensor, divergence: str, beta: float, z_old: float,
              clip: RPGClip) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RPG-Style Clip for the REINFORCE form (arXiv 2505.17508 Alg. 2): (per-sample loss, low, high, dual)."""
    weight = _rpg_weight(w, log_w, adv, divergence, beta, z_old).detach()  # sg[Weight]
    w_sg = w.detach()  # sg[w]
    c_kl = weight - z_old * w_sg * adv  # C_KL = Weight − w(R − b)
    adv_eff = z_old * adv + c_kl / w_sg  # A' = A_R + sg(C_KL)/sg(w)
    ell = -lp.detach()  # sg[ℓ], ℓ = −log π_θ >= 0
    a_r = z_old * adv
    pos = adv_eff >= 0
    high = pos & (w_sg >= 1.0 + clip.eps_high)
    low = (~pos) & (w_sg <= 1.0 - clip.eps_low)
    dual = (~pos) & (w_sg >= clip.c)
    active = ~(high | low | dual)
    const = torch.where(  # Alg. 2's constant values on the clipped branches (no gradient)
        high, (a_r + c_kl / (1.0 + clip.eps_high)) * ell * (1.0 + clip.eps_high),
        torch.where(low, (a_r + c_kl / (1.0 - clip.eps_low)) * ell * (1.0 - clip.eps_low),
                    a_r * ell * clip.c + c_kl * ell))
    return torch.where(active, -weight * lp, const), low, high, dual


def _rpg(logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, divergence: str, form: str, beta: float,
         level: str, clip: RPGClip | None, z_old: float) -> tuple[Tensor, DiagnosticsThunk]:
    """:func:`rpg_loss` on validated inputs: (loss, diagnostics thunk). Token level: the ``[B, T]`` per-token loss,
    0 where ``mask`` is False. Sequence level: ``[B, 1]`` ℓ_i/|y_i|, the loss of each of the response's tokens (the
    caller broadcasts it over the mask, or aggregates it as is: ``aggregate`` takes a ``[B, 1]`` loss)."""
    m = _mask_as(mask, logp.dtype)
    lengths = None if level == "token" else m.sum(-1, keepdim=True)  # [B, 1] |y_i|
    log_w, lp, adv, sample_mask = _rpg_samples(logp, logp_old, advantages, mask, m, level, lengths)
    w = torch.exp(log_w)
    low = high = dual = torch.zeros_like(w, dtype=torch.bool)

    if form == "differentiable" and clip is None:
        per_sample = _rpg_surrogate(w, log_w, lp, adv, divergence, beta, z_old)
    elif form == "reinforce" and clip is None:
        weight = _rpg_weight(w, log_w, adv, divergence, beta, z_old)
        per_sample = -weight.detach() * lp  # −sg[Weight]·lp: SG stops the weight's own θ-dependence (eq. F.1)
    elif form == "differentiable":
        # Â(x; θ): for the reverse KLs the gradient flows through log w, as Alg. 1 does (∇(−wÂ) = −Weight∇lp − βw∇lp,
        # exact in expectation under π_old since E_old[w∇lp] = 0). For the forward KLs (Â not given in the paper) a
        # θ-dependent KL term would cancel the KL gradient (−w(A + β/w) = −wA − β): it is held fixed, sg[β/w],
        # so ∇(−wÂ) = −Weight∇lp per sample
        adv_hat = {
            "urkl": lambda: adv - beta * log_w,
            "rkl": lambda: adv - beta * (log_w + 1.0),
            "ufkl": lambda: adv - beta * (1.0 - torch.exp(-log_w)).detach(),  # sg[1 − 1/w]
            "fkl": lambda: adv + beta * torch.exp(-log_w).detach(),  # sg[1/w]
        }[divergence]()
        per_sample, low, high, dual = _dual_clip(w, z_old * adv_hat, clip)
    else:
        per_sample, low, high, dual = _rpg_alg2(w, log_w, lp, adv, divergence, beta, z_old, clip)

    # sequence: ℓ_i/|y_i| on each of its tokens, one [B, 1] value per row: the aggregation multiplies it by the
    # row's token count (no [B, T] pass forward or backward); rpg_loss broadcasts it over the mask
    loss = per_sample * m if level == "token" else per_sample / lengths
    w_sg = w.detach()

    conds = () if clip is None else (lambda: low, lambda: high, lambda: dual)
    stats = _TokenDiagnostics(sample_mask, w_sg.dtype, w_sg, *conds)
    if level == "token" or clip is None:
        return loss, stats

    def diagnostics(i):  # sequence level with a clip: fractions of responses
        if i < 3:
            with torch.no_grad():
                return (low, high, dual)[i].to(w_sg.dtype).mean()
        return stats(i)

    return loss, diagnostics


def cispo_loss(logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, clip_low: float | None = None,
               clip_high: float = 0.2) -> PolicyLossOutput:
    """CISPO: l_t = −sg[ŵ_t]·A_t·log π_θ(a_t|s_t), ŵ_t = clip(ρ_t, 1 − ε_low, 1 + ε_high) (one-sided: min(ρ_t, 1 + ε_high)).

    MiniMax-M1 arXiv 2506.13585 eqs. 4–5: the importance weight is clipped and held constant, so no token loses
    its gradient — each gets −ŵ_t A_t ∇log π_θ (a REINFORCE term weighted by the capped ratio); the paper bounds
    only the top (``clip_low=None``), verl ``compute_policy_loss_cispo`` clamps both sides. ρ_t =
    exp(clamp(log π_θ − log π_old, ±20)) (verl's guard). Unclipped, the gradient is −ρ_t A_t ∇log π_θ, the
    per-token importance-weighted policy gradient.

    Args:
      logp: ``[B, T]`` log π_θ (differentiable); logp_old: ``[B, T]`` (data); advantages: ``[B, T]`` (detached
        inside); mask: ``[B, T]`` bool; clip_low: ε_low in (0, 1) or None; clip_high: ε_high > 0.
    Returns:
      PolicyLossOutput (``clip_fraction_high``: ρ > 1 + ε_high, ``clip_fraction_low``: ρ < 1 − ε_low, any A).
    """
    def check():
        check_token_tensors(mask, logp=logp, logp_old=logp_old)
        _check_adv(advantages, logp)
        return (check_real("clip_low", clip_low, low=0, high=1, low_open=True, high_open=True, allow_none=True),
                check_real("clip_high", clip_high, low=0, low_open=True))

    low, high = validated(check, logp, logp_old, advantages, mask=mask)
    loss, diagnostics = _cispo(logp, logp_old, advantages, mask, low, high)
    return PolicyLossOutput.lazy(loss * _mask_as(mask, loss.dtype), diagnostics)


def _cispo(logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, clip_low: float | None,
           clip_high: float) -> tuple[Tensor, DiagnosticsThunk]:
    """:func:`cispo_loss` on validated inputs: (per-token loss, diagnostics thunk); the loss is
    not masked (padding entries are whatever the formula gives there): the caller masks it."""
    A = advantages.detach()  # sg[A]
    ratio = torch.exp(torch.clamp(logp - logp_old.detach(), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    low = 0.0 if clip_low is None else 1.0 - clip_low
    weight = torch.clamp(ratio, min=low, max=1.0 + clip_high)
    loss = -weight.detach() * A * logp  # sg[ŵ]: the capped IS weight is a constant; the gradient flows via log π
    r = ratio.detach()
    return loss, _TokenDiagnostics(mask, r.dtype, r, lambda: r < low, lambda: r > 1.0 + clip_high)
