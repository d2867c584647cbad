"""KL estimators k1/k2/k3, the f-divergence family, exact divergences and the unnormalized KL.

Conventions (DESIGN.md): ``log_ratio = logp - logp_ref`` = log(π/π_ref) at the sampled token, samples from π.
Schulman's estimators of KL(π‖π_ref) (J. Schulman, "Approximating KL divergence", 2020; with x ~ π and
r = π_ref/π = exp(-log_ratio)):

    k1 = -log r = log_ratio                              unbiased, sign-indefinite
    k2 = ½ (log r)² = ½ log_ratio²                       biased (value), its gradient is the local reverse-KL one
    k3 = (r - 1) - log r = exp(-log_ratio) - 1 + log_ratio   unbiased, >= 0 per sample

f-divergences: D_f(P‖Q) = Σ Q f(P/Q), f convex, f(1) = 0. With P = π, Q = π_ref and u = π/π_ref the
per-token sampled estimator under π is f(u)/u (E_π[f(u)/u] = Σ π_ref f(u) = D_f(π‖π_ref)). Everything is
evaluated in the log domain (``log_u``) so that |log_ratio| up to 50 is stable in float64; in float32 the
exponentials stay finite for |log_ratio| <= 80 (exp(88.7) overflows), so float32 is safe up to |log_ratio| ~ 80
for every member except the χ² ones, whose values themselves exceed float32 beyond that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from rlkl._checks import check_choice, check_float

KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")

_SERIES_CUTOFF = 1e-3


def _expm1_minus_plus(x: Tensor) -> Tensor:
    """exp(-x) - 1 + x, accurate for small |x| (series) and large |x| (direct)."""
    x2 = x * x
    series = x2 * (0.5 - x / 6.0 + x2 / 24.0 - x2 * x / 120.0)
    direct = torch.expm1(-x) + x
    return torch.where(x.abs() < _SERIES_CUTOFF, series, direct)


def k1(log_ratio: Tensor) -> Tensor:
    """Schulman's k1 = log(π/π_ref), an unbiased estimate of KL(π‖π_ref) under x ~ π.

    As a *loss* its expected gradient is E_π[∇log π] = 0 (Tang & Munos, arXiv 2506.09477, §3): it regularizes
    nothing. In the *reward* (detached, score function) it yields ∇KL(π‖π_ref).

    Args:
      log_ratio: ``[...]`` log π − log π_ref at sampled tokens.
    Returns:
      ``[...]`` per-token k1.
    """
    check_float("log_ratio", log_ratio)
    return log_ratio


def k2(log_ratio: Tensor) -> Tensor:
    """Schulman's k2 = ½ log(π/π_ref)², biased for KL(π‖π_ref): E_π[k2] = ½Var_π(log_ratio) + ½KL² exactly,
    so E_π[k2] ≈ KL only to second order.

    As a loss, on-policy: ∇k2 = log_ratio·∇log π, so E_π[∇k2] = ∇_θ KL(π_θ‖π_ref) per state with the state
    distribution held fixed (the *local* reverse-KL gradient; Liu et al. arXiv 2510.01555).

    Args:
      log_ratio: ``[...]``.
    Returns:
      ``[...]`` per-token k2.
    """
    check_float("log_ratio", log_ratio)
    return 0.5 * log_ratio * log_ratio


def k3(log_ratio: Tensor) -> Tensor:
    """Schulman's k3 = π_ref/π − 1 − log(π_ref/π) = exp(−log_ratio) − 1 + log_ratio >= 0.

    Unbiased for KL(π‖π_ref) under x ~ π; for unnormalized measures E_π[k3] = UKL(π‖π_ref) (RPG, arXiv
    2505.17508, App. D). As a loss, on-policy: ∇k3 = (1 − π_ref/π)∇log π, so E_π[∇k3] = ∇_θ KL(π_ref‖π_θ) —
    the *forward* KL gradient (RPG §2.3 [D]; Tang & Munos 2506.09477). Computed with a series for
    |log_ratio| < 1e-3 so that the result keeps full relative precision near 0.

    Args:
      log_ratio: ``[...]``.
    Returns:
      ``[...]`` per-token k3 (>= 0).
    """
    check_float("log_ratio", log_ratio)
    return _expm1_minus_plus(log_ratio)


def straight_through(value: Tensor, grad_source: Tensor) -> Tensor:
    """Value of ``value``, gradient of ``grad_source``: sg[value] + grad_source − sg[grad_source]."""
    # sg[·] on value and on grad_source: only grad_source's gradient survives, the value is value's.
    return value.detach() + (grad_source - grad_source.detach())


def k3_straight_through(log_ratio: Tensor) -> Tensor:
    """verl's ``k3+`` (``low_var_kl+``): the value of k3 with the gradient of k2.

    Per token and on-policy its expected gradient is the local reverse-KL gradient E_π[log_ratio·∇log π]
    (verl ``kl_penalty`` with a ``+`` suffix; spec/peers.md §1.2). No future-token terms.
    """
    return straight_through(k3(log_ratio), k2(log_ratio))


def kl_estimate(log_ratio: Tensor, estimator: KLEstimator, straight_through_grad: bool = False) -> Tensor:
    """Per-token KL estimate ``k1``/``k2``/``k3`` of KL(π‖π_ref) from ``log_ratio = logp − logp_ref``.

    Args:
      log_ratio: ``[...]`` float tensor.
      estimator: which of Schulman's estimators (see :func:`k1`, :func:`k2`, :func:`k3`).
      straight_through_grad: verl's ``+`` suffix: keep the estimator's *value* but back-propagate the gradient
        of k2 (``k2+`` is plain k2).
    Returns:
      ``[...]`` per-token value; its gradient is the estimator's own, or k2's when ``straight_through_grad``.
    """
    check_choice("estimator", estimator, KL_ESTIMATORS)
    value = {"k1": k1, "k2": k2, "k3": k3}[estimator](log_ratio)
    if straight_through_grad and estimator != "k2":
        return straight_through(value, k2(log_ratio))
    return value


# ---------------------------------------------------------------------------------------------------------------
# f-divergences


@dataclass(frozen=True)
class FDivergence:
    """An f-divergence D_f(P‖Q) = Σ_x Q(x) f(P(x)/Q(x)), f convex with f(1) = 0.

    All functions take ``log_u`` = log(P/Q) (for rlkl: ``log_ratio`` = log π/π_ref) so they are stable for large
    |log_u|.

    Attributes:
      name: registry name.
      f_of_log: log_u ↦ f(u).
      f_prime_of_log: log_u ↦ f'(u) (a subgradient where f is not differentiable).
      f_over_u_of_log: log_u ↦ f(u)/u, the per-token sampled estimator of D_f(π‖π_ref) under x ~ π.
      formula: f(u) in words, for docs.
    """

    name: str
    f_of_log: Callable[[Tensor], Tensor]
    f_prime_of_log: Callable[[Tensor], Tensor]
    f_over_u_of_log: Callable[[Tensor], Tensor]
    formula: str

    def f(self, u: Tensor) -> Tensor:
        """f(u) for u > 0."""
        check_float("u", u)
        if bool((u <= 0).any()):
            raise ValueError("f-divergence generator needs u > 0")
        return self.f_of_log(torch.log(u))

    def f_prime(self, u: Tensor) -> Tensor:
        """f'(u) for u > 0."""
        check_float("u", u)
        if bool((u <= 0).any()):
            raise ValueError("f-divergence generator needs u > 0")
        return self.f_prime_of_log(torch.log(u))

    def sampled_estimate(self, log_ratio: Tensor) -> Tensor:
        """Per-token estimate f(u)/u, u = exp(log_ratio): E_{a~π}[f(u)/u] = D_f(π(·|s)‖π_ref(·|s)).

        Args:
          log_ratio: ``[...]`` log π − log π_ref at tokens sampled from π.
        Returns:
          ``[...]`` per-token value (FRPO, arXiv 2601.10201, Thm 4.1 in the standard convention; spec frpo.md §0).
        """
        check_float("log_ratio", log_ratio)
        return self.f_over_u_of_log(log_ratio)

    def exact(self, logits_p: Tensor, logits_q: Tensor, dim: int = -1) -> Tensor:
        """Exact D_f(P‖Q) = Σ_x Q(x) f(P(x)/Q(x)) between categoricals given as logits (reduced over ``dim``)."""
        check_float("logits_p", logits_p)
        check_float("logits_q", logits_q, shape=logits_p.shape)
        log_p = torch.log_softmax(logits_p, dim=dim)
        log_q = torch.log_softmax(logits_q, dim=dim)
        return (log_q.exp() * self.f_of_log(log_p - log_q)).sum(dim=dim)


def _rev_kl() -> FDivergence:
    return FDivergence("reverse_kl", lambda l: l.exp() * l, lambda l: l + 1.0, lambda l: l, "u log u  (KL(π‖π_ref))")


def _fwd_kl() -> FDivergence:
    return FDivergence("forward_kl", lambda l: -l, lambda l: -torch.exp(-l), lambda l: -l * torch.exp(-l),
                       "−log u  (KL(π_ref‖π))")


def _rev_kl_k3() -> FDivergence:
    # f(u) = u log u − u + 1; f(u)/u = log u − 1 + 1/u = k3(log u); f'(u) = log u
    return FDivergence("reverse_kl_k3", lambda l: l.exp() * l - torch.expm1(l), lambda l: l, _expm1_minus_plus,
                       "u log u − u + 1  (reverse KL, k3 generator; FRPO Eq. 4.6)")


def _fwd_kl_k3() -> FDivergence:
    # f(u) = −log u + u − 1; f(u)/u = (−log u + u − 1)/u; f'(u) = 1 − 1/u
    return FDivergence("forward_kl_k3", lambda l: torch.expm1(l) - l, lambda l: -torch.expm1(-l),
                       lambda l: torch.exp(-l) * (torch.expm1(l) - l), "−log u + u − 1  (forward KL, k3 generator)")


def _pearson() -> FDivergence:
    return FDivergence("pearson", lambda l: torch.expm1(l) ** 2, lambda l: 2.0 * torch.expm1(l),
                       lambda l: torch.expm1(l) * (-torch.expm1(-l)), "(u − 1)²  (Pearson χ²(π‖π_ref))")


def _neyman() -> FDivergence:
    # f(u) = (u−1)²/u ; f/u = (1 − 1/u)² ; f'(u) = 1 − 1/u²
    return FDivergence("neyman", lambda l: torch.expm1(l) * (-torch.expm1(-l)), lambda l: -torch.expm1(-2.0 * l),
                       lambda l: torch.expm1(-l) ** 2, "(u − 1)²/u  (Neyman χ²(π‖π_ref))")


def _hellinger() -> FDivergence:
    # f(u) = (√u − 1)²; f/u = (1 − u^{-1/2})²; f'(u) = 1 − u^{-1/2}
    return FDivergence("hellinger", lambda l: torch.expm1(0.5 * l) ** 2, lambda l: -torch.expm1(-0.5 * l),
                       lambda l: torch.expm1(-0.5 * l) ** 2, "(√u − 1)²  (squared Hellinger, Σ(√π − √π_ref)²)")


def _js() -> FDivergence:
    log2 = math.log(2.0)

    def f(l: Tensor) -> Tensor:  # ½[u log u − (u+1) log((u+1)/2)]
        log_m = torch.logaddexp(l, torch.zeros_like(l)) - log2  # log((u+1)/2)
        return 0.5 * (l.exp() * (l - log_m) - log_m)

    def f_over_u(l: Tensor) -> Tensor:  # ½[log u − (1 + 1/u) log((u+1)/2)]
        log_m = torch.logaddexp(l, torch.zeros_like(l)) - log2
        return 0.5 * (l - log_m - torch.exp(-l) * log_m)

    def f_prime(l: Tensor) -> Tensor:  # ½ log(2u/(u+1))
        return 0.5 * (l + log2 - torch.logaddexp(l, torch.zeros_like(l)))

    return FDivergence("jensen_shannon", f, f_prime, f_over_u, "½[u log u − (u+1) log((u+1)/2)]  (Jensen–Shannon)")


def _tv() -> FDivergence:
    return FDivergence("total_variation", lambda l: 0.5 * torch.expm1(l).abs(), lambda l: 0.5 * torch.sign(l),
                       lambda l: 0.5 * torch.expm1(-l).abs(), "½|u − 1|  (total variation; f' is a subgradient)")


def _alpha(alpha: float) -> FDivergence:
    a = float(alpha)
    if a in (0.0, 1.0):
        raise ValueError("alpha must differ from 0 and 1 (the limits are forward_kl_k3 and reverse_kl_k3)")
    c = 1.0 / (a * (a - 1.0))

    def f(l: Tensor) -> Tensor:  # (u^α − α u − (1 − α)) / (α(α − 1))
        return c * (torch.exp(a * l) - a * l.exp() - (1.0 - a))

    def f_over_u(l: Tensor) -> Tensor:
        return c * (torch.exp((a - 1.0) * l) - a - (1.0 - a) * torch.exp(-l))

    def f_prime(l: Tensor) -> Tensor:  # (u^{α−1} − 1)/(α − 1)
        return torch.expm1((a - 1.0) * l) / (a - 1.0)

    return FDivergence(f"alpha={a:g}", f, f_prime, f_over_u,
                       f"(u^α − αu − (1−α))/(α(α−1)), α={a:g}  (Amari α-divergence)")


_F_FACTORIES: dict[str, Callable[[], FDivergence]] = {
    "reverse_kl": _rev_kl,
    "forward_kl": _fwd_kl,
    "reverse_kl_k3": _rev_kl_k3,
    "forward_kl_k3": _fwd_kl_k3,
    "pearson": _pearson,
    "neyman": _neyman,
    "hellinger": _hellinger,
    "jensen_shannon": _js,
    "total_variation": _tv,
}
F_DIVERGENCE_NAMES: tuple[str, ...] = tuple(_F_FACTORIES) + ("alpha",)


def get_f_divergence(name: str, alpha: float | None = None) -> FDivergence:
    """Look up an f-divergence by name (see ``F_DIVERGENCE_NAMES``); ``alpha`` is required for ``"alpha"``.

    ``"alpha=0.5"`` style names are accepted too.
    """
    if name.startswith("alpha="):
        return _alpha(float(name.split("=", 1)[1]))
    if name == "alpha":
        if alpha is None:
            raise ValueError("the alpha-divergence needs alpha=<float>")
        return _alpha(alpha)
    if name not in _F_FACTORIES:
        raise ValueError(f"unknown f-divergence {name!r}; choose from {list(F_DIVERGENCE_NAMES)}")
    return _F_FACTORIES[name]()


# ---------------------------------------------------------------------------------------------------------------
# exact divergences


def exact_kl(logits_p: Tensor, logits_q: Tensor, dim: int = -1) -> Tensor:
    """KL(p‖q) = Σ_x p(x) (log p(x) − log q(x)) between categoricals given as logits, reduced over ``dim``."""
    check_float("logits_p", logits_p)
    check_float("logits_q", logits_q, shape=logits_p.shape)
    log_p = torch.log_softmax(logits_p, dim=dim)
    log_q = torch.log_softmax(logits_q, dim=dim)
    return (log_p.exp() * (log_p - log_q)).sum(dim=dim)


def unnormalized_kl(log_p: Tensor, log_q: Tensor, dim: int = -1) -> Tensor:
    """UKL(p‖q) = Σ p log(p/q) + Σ (q − p) for positive measures p, q given by their logs.

    RPG (arXiv 2505.17508) Def. 3.1 / 3.4: generalized KL plus the mass correction. Equals KL(p‖q) when both
    are normalized; always >= 0, = 0 iff p = q.

    Args:
      log_p, log_q: ``[..., X]`` log-masses (need not be normalized).
    Returns:
      ``[...]`` the unnormalized KL, reduced over ``dim``.
    """
    check_float("log_p", log_p)
    check_float("log_q", log_q, shape=log_p.shape)
    p = log_p.exp()
    return (p * (log_p - log_q)).sum(dim=dim) + (log_q.exp() - p).sum(dim=dim)


# ---------------------------------------------------------------------------------------------------------------
# sequence-level KL from sampled sequences: Monte Carlo and Rao-Blackwellized


def rao_blackwell_kl(logits: Tensor, logits_ref: Tensor, mask: Tensor) -> Tensor:
    """Rao-Blackwellized estimate of the sequence KL(π‖π_ref), one per sampled sequence.

    KL_RB(y) = Σ_t m_t · KL(π(·|s_t) ‖ π_ref(·|s_t)),  s_t = (x, y_<t),  y ~ π
    (Amini, Vieira & Cotterell, arXiv 2504.10637, the Rao-Blackwellized estimator): the conditional expectation,
    given the prefixes, of the Monte Carlo estimator KL_MC(y) = Σ_t m_t log(π(y_t|s_t)/π_ref(y_t|s_t)). So
    E_π[KL_RB] = E_π[KL_MC] = KL(π‖π_ref) over sequences (chain rule) and Var_π[KL_RB] ≤ Var_π[KL_MC]
    (Rao-Blackwell); unlike KL_MC it is never negative.

    Args:
      logits, logits_ref: ``[B, T, V]`` next-token logits of π and π_ref at the visited states.
      mask: ``[B, T]`` bool, True on the response tokens.
    Returns:
      ``[B]`` per-sequence estimates. A value estimator: differentiating it gives the gradient of the per-state
      KLs along fixed prefixes only (no score-function term for the prefixes).
    """
    check_float("logits", logits, ndim=3)
    check_float("logits_ref", logits_ref, shape=logits.shape)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"mask must be a bool tensor of shape {tuple(logits.shape[:2])}, got "
                         f"{getattr(mask, 'dtype', type(mask))} {tuple(getattr(mask, 'shape', ()))}")
    per_state = exact_kl(logits, logits_ref, dim=-1)  # [B, T] KL(π(·|s_t)‖π_ref(·|s_t))
    return (per_state * mask).sum(dim=-1)  # [B]


def monte_carlo_kl(logp: Tensor, logp_ref: Tensor, mask: Tensor) -> Tensor:
    """Monte Carlo estimate of the sequence KL(π‖π_ref): KL_MC(y) = Σ_t m_t (log π(y_t|s_t) − log π_ref(y_t|s_t)).

    Unbiased under y ~ π, can be negative (Amini, Vieira & Cotterell, arXiv 2504.10637, the MC estimator).

    Args:
      logp, logp_ref: ``[B, T]`` log-probs of the sampled tokens; mask ``[B, T]`` bool.
    Returns:
      ``[B]`` per-sequence estimates (the sampled sequence log ratio).
    """
    check_float("logp", logp, ndim=2)
    check_float("logp_ref", logp_ref, shape=logp.shape)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(logp.shape):
        raise ValueError(f"mask must be a bool tensor of shape {tuple(logp.shape)}")
    return torch.where(mask, logp - logp_ref, torch.zeros_like(logp)).sum(dim=-1)  # [B]
