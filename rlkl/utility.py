"""GRPO's implicit prompt-level utility: 2·arcsin√p (G → ∞) and the exact finite-group version.

For binary rewards with success probability p = p_θ(x), the expected GRPO update of a prompt is a multiple of ∇p:

    E[ A_1 ∇log π(y_1) ] = w_G(p) ∇p,   w_G(p) = E[A_1 | r_1 = 1] − E[A_1 | r_1 = 0]

(Σ_y π(y)∇log π(y) h(r(y)) = (h(1) − h(0))∇p), so GRPO ascends the utility U_G(p) = ∫_0^p w_G. With the
population std and G → ∞, w_G → 1/√(p(1−p)) and U → 2·arcsin√p (FRPO, arXiv 2601.10201, Prop. 3.1; Davis &
Recht, arXiv 2510.13651). The conditional means are exact for any G through the binomial count of successes
among the other G − 1 samples (exchangeability); w_G is a polynomial of degree G − 1 in p, so U_G is computed
exactly by Gauss–Legendre quadrature.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor

from rlkl._checks import _require_data, check_choice, check_int, check_real
from rlkl.advantages import group_standardized

StdKind = Literal["population", "bessel"]


def _as_tensor(p) -> tuple[Tensor, bool]:
    """``p`` (float, array or real tensor) as a float64 tensor of probabilities in [0, 1]; computed in float64."""
    is_tensor = isinstance(p, Tensor)
    if isinstance(p, bool) or (is_tensor and (p.dtype == torch.bool or p.is_complex())):
        raise ValueError(f"p must be a probability in [0, 1] (a real number, array or tensor), got {p!r}")
    if is_tensor:
        _require_data("p", p)
    try:
        t = p.to(torch.float64) if is_tensor else torch.as_tensor(p, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"p must be a probability in [0, 1] (a real number, array or tensor), got {p!r}") from None
    if bool(((t < 0) | (t > 1)).any()) or not bool(torch.isfinite(t).all()):
        raise ValueError("p must be a probability in [0, 1] (finite, no nan)")
    return t, is_tensor


def _out(t: Tensor, is_tensor: bool):
    return t if is_tensor else (float(t) if t.dim() == 0 else t.cpu().numpy())


def grpo_utility(p):
    """U(p) = 2·arcsin√p, GRPO's implicit utility in the large-group limit (FRPO arXiv 2601.10201, Prop. 3.1).

    Args:
      p: success probability (float, array or tensor) in [0, 1].
    Returns:
      U(p), same kind as ``p``.
    """
    t, is_tensor = _as_tensor(p)
    return _out(2.0 * torch.asin(torch.sqrt(t)), is_tensor)


def grpo_utility_grad(p):
    """U'(p) = 1/√(p(1−p)) (infinite at p ∈ {0, 1}); the large-G weight of GRPO's update on ∇p."""
    t, is_tensor = _as_tensor(p)
    return _out(1.0 / torch.sqrt(t * (1.0 - t)), is_tensor)


def _binom_pmf(n: int, p: Tensor) -> Tensor:
    """[..., n+1] Binomial(n, p) pmf, float64, stable for n up to thousands, differentiable on all of [0, 1].

    Interior p: exp(log C(n, k) + k log p + (n − k) log(1 − p)). At p ∈ {0, 1}, where log p or log(1 − p) is −inf
    and autograd would meet 0·inf, the polynomial C(n, k) p^k (1 − p)^{n−k} itself (torch.pow has the exact
    derivative at 0), restricted to the only terms that are non-zero or have a non-zero derivative there
    (k <= 1 at p = 0, k >= n − 1 at p = 1), so C(n, k) never overflows.
    """
    k = torch.arange(n + 1, dtype=torch.float64)
    log_c = torch.lgamma(torch.tensor(n + 1.0, dtype=torch.float64)) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    p = p.unsqueeze(-1)
    edge = (p == 0) | (p == 1)
    p_in = torch.where(edge, torch.full_like(p, 0.5), p)  # safe interior value where p is on the edge
    interior = torch.exp(log_c + k * torch.log(p_in) + (n - k) * torch.log1p(-p_in))
    p_edge = torch.where(edge, p, torch.zeros_like(p))
    c_edge = torch.where((k <= 1) | (k >= n - 1), torch.exp(log_c).round(), torch.zeros_like(k))  # n, 1 are exact
    at_edge = c_edge * torch.pow(p_edge, k) * torch.pow(1.0 - p_edge, n - k)
    return torch.where(edge, at_edge, interior)


def conditional_advantage_means(p, group_size: int, advantage_fn: Callable[[Tensor], Tensor]):
    """(E[A_1 | r_1 = 1], E[A_1 | r_1 = 0]) for binary rewards, exact for any group size G.

    A_1 is sample 1's advantage under a permutation-equivariant ``advantage_fn``; given r_1 it depends on the
    others only through their success count K ~ Binomial(G − 1, p) (exchangeability), so
    E[A_1 | r_1] = Σ_k P(K = k) A_1(r_1, k).

    Args:
      p: success probability, float / array / tensor of any shape ``[...]``.
      group_size: G >= 2.
      advantage_fn: maps rewards ``[N, G]`` (float64) to advantages ``[N, G]``, groups along the last axis.
    Returns:
      (mean_given_success, mean_given_failure), each shaped like ``p``.
    """
    check_int("group_size", group_size, low=2)
    if not callable(advantage_fn):
        raise ValueError(f"advantage_fn must be callable, got {type(advantage_fn).__name__}")
    t, is_tensor = _as_tensor(p)
    G = group_size
    others = torch.arange(G, dtype=torch.float64)  # k = 0..G-1 successes among the others
    cols = torch.arange(1, G, dtype=torch.float64)
    rest = (cols.unsqueeze(0) <= others.unsqueeze(1)).to(torch.float64)  # [G, G-1]: k ones then zeros
    a_given = []
    for r1 in (1.0, 0.0):
        rewards = torch.cat([torch.full((G, 1), r1, dtype=torch.float64), rest], dim=1)  # [G(k), G]
        adv = advantage_fn(rewards)
        if tuple(adv.shape) != (G, G):
            raise ValueError(f"advantage_fn must return shape {(G, G)}, got {tuple(adv.shape)}")
        a_given.append(adv[:, 0])  # [G] sample 1's advantage for k = 0..G-1
    pmf = _binom_pmf(G - 1, t)  # [..., G]
    return _out(pmf @ a_given[0], is_tensor), _out(pmf @ a_given[1], is_tensor)


def finite_group_weight(p, group_size: int, std: StdKind = "population", eps: float = 0.0):
    """w_G(p): GRPO's exact expected update per unit ∇p for binary rewards and group size G.

    w_G(p) = E[A_1 | r_1 = 1] − E[A_1 | r_1 = 0] with A_i = (r_i − mean)/(std + ε), all-equal groups giving 0
    (equivalently E_{S~Bin(G,p)}[σ̂_S²/(s_S + ε)]/(p(1−p)), σ̂_S² = S(G−S)/G²). Closed forms with
    the population std, ε = 0: w_2 = 1, w_3 = √2, w_4 = √3 + (3 − 2√3)p(1−p); w_G(0⁺) = √(G−1);
    w_G → 1/√(p(1−p)) as G → ∞.

    Args:
      p: success probability (float / array / tensor) in [0, 1].
      group_size: G >= 2.
      std: ``"population"`` (divide by G; FRPO Alg. 1) or ``"bessel"`` (G − 1; verl, TRL).
      eps: ε added to the std in the denominator (verl 1e-6, TRL 1e-4).
    Returns:
      w_G(p), same kind as ``p``.
    """
    check_int("group_size", group_size, low=2)
    check_choice("std", std, ("population", "bessel"))
    check_real("eps", eps, low=0.0)

    def advantage_fn(rewards: Tensor) -> Tensor:  # [N, G] -> [N, G], the library's own GRPO advantage
        return group_standardized(rewards.reshape(-1), group_size, eps, std).view_as(rewards)

    succ, fail = conditional_advantage_means(p, group_size, advantage_fn)
    return succ - fail


def finite_group_utility(p, group_size: int, std: StdKind = "population", eps: float = 0.0):
    """U_G(p) = ∫_0^p w_G(q) dq, the utility GRPO with G samples actually ascends (U_G(0) = 0).

    w_G is a polynomial of degree G − 1, so Gauss–Legendre quadrature with ⌈G/2⌉ + 1 nodes is exact (up to
    round-off). Closed forms (population std, ε = 0): U_2(p) = p, U_3(p) = √2·p.

    Args:
      p, group_size, std, eps: as in :func:`finite_group_weight`.
    Returns:
      U_G(p), same kind as ``p``.
    """
    check_int("group_size", group_size, low=2)
    t, is_tensor = _as_tensor(p)
    n_nodes = group_size // 2 + 2
    x, w = np.polynomial.legendre.leggauss(n_nodes)
    x = torch.as_tensor(x, dtype=torch.float64)
    w = torch.as_tensor(w, dtype=torch.float64)
    q = (t.unsqueeze(-1) * (x + 1.0) / 2.0)  # [..., n] nodes mapped to [0, p]
    wq = finite_group_weight(q, group_size, std, eps)
    u = (wq * w).sum(-1) * t / 2.0
    return _out(u, is_tensor)


def effective_weight(p, group_size: int | None, std: StdKind = "population", eps: float = 0.0):
    """w_G(p)·√(p(1−p)): the finite-group weight relative to the G → ∞ weight (→ 1 as G → ∞).

    ``group_size=None`` gives the limit itself (1 for 0 < p < 1).
    """
    check_int("group_size", group_size, low=2, allow_none=True)
    t, is_tensor = _as_tensor(p)
    if group_size is None:
        return _out(torch.ones_like(t), is_tensor)
    w = finite_group_weight(t, group_size, std, eps)
    return _out(w * torch.sqrt(t * (1 - t)), is_tensor)


__all__ = [
    "grpo_utility", "grpo_utility_grad", "finite_group_weight", "finite_group_utility",
    "conditional_advantage_means", "effective_weight",
]


# ---------------------------------------------------------------------------------------------------------------
# GRPO's success-rate recursion with a KL to π_ref (Mroueh) and the group-std update size (Bay & Yearick)


def mroueh_success_map(p_prev, p_ref: float, beta: float, eps: float = 0.0):
    """h(p) = 1 / (1 + ((1 − p_ref)/p_ref) · exp(−1/(β·√(p(1−p) + ε)))): one step of GRPO's success recursion.

    Mroueh, arXiv 2503.06639 (Thm. "probability of success" recursion): with binary rewards, the optimal policy
    of max_π E_π[A] − β·KL(π‖π_ref), A = (r − p_{n−1})/√(p_{n−1}(1 − p_{n−1}) + ε) the whitened reward under
    π_{n−1}, is π_n ∝ π_ref·exp(A/β), whose success probability is p_n = h(p_{n−1}).

    Args:
      p_prev: p_{n−1} (float / array / tensor in [0, 1]); p_ref in (0, 1); beta > 0; eps >= 0.
    Returns:
      p_n = h(p_{n−1}), same kind as ``p_prev``.
    """
    p_ref = check_real("p_ref", p_ref, low=0.0, high=1.0, low_open=True, high_open=True)
    beta = check_real("beta", beta, low=0.0, low_open=True)
    eps = check_real("eps", eps, low=0.0)
    try:
        t, is_tensor = _as_tensor(p_prev)
    except ValueError as exc:
        raise ValueError(f"p_prev: {exc}") from None
    sigma = torch.sqrt(t * (1.0 - t) + eps)
    odds = (1.0 - p_ref) / p_ref
    return _out(1.0 / (1.0 + odds * torch.exp(-1.0 / (beta * sigma))), is_tensor)


def mroueh_success_sequence(p_ref: float, beta: float, n: int, eps: float = 0.0) -> list[float]:
    """[p_0 = p_ref, p_1, …, p_n] from iterating :func:`mroueh_success_map` (arXiv 2503.06639)."""
    n = check_int("n", n, low=0)
    ps = [check_real("p_ref", p_ref, low=0.0, high=1.0, low_open=True, high_open=True)]
    for _ in range(n):
        ps.append(float(mroueh_success_map(ps[-1], p_ref, beta, eps)))
    return ps


def mroueh_fixed_point(p_ref: float, beta: float, eps: float = 0.0, tol: float = 1e-14, max_iter: int = 100_000) -> float:
    """The limit p* = h(p*) of GRPO's success recursion started at p_0 = p_ref (arXiv 2503.06639: p* > p_ref).

    Iterates :func:`mroueh_success_map` until two iterates differ by less than ``tol``; raises ValueError if that
    takes more than ``max_iter`` steps.
    """
    tol = check_real("tol", tol, low=0.0, low_open=True)
    max_iter = check_int("max_iter", max_iter, low=1)
    p = check_real("p_ref", p_ref, low=0.0, high=1.0, low_open=True, high_open=True)
    for _ in range(max_iter):
        nxt = float(mroueh_success_map(p, p_ref, beta, eps))
        if abs(nxt - p) < tol:
            return nxt
        p = nxt
    raise ValueError(f"the success recursion did not converge in {max_iter} steps (p_ref={p_ref}, beta={beta}, "
                     f"eps={eps}); raise max_iter or tol")


def group_std_update_size(successes: int, group_size: int, std: StdKind = "population", eps: float = 0.0) -> float:
    """c in (1/G) Σ_i A_i g_i = c · (ḡ_correct − ḡ_wrong) for a GRPO group with k of G binary rewards correct.

    Bay & Yearick, arXiv 2607.00152 (the group-standard-deviation identity): with A_i = (r_i − r̄)/(s + ε),
    (1/G) Σ_i A_i g_i = (k(G − k)/G²)/(s + ε) · (ḡ_correct − ḡ_wrong) for any per-sample directions g_i, so with the
    population std σ = √(k(G − k))/G and ε = 0 the update size is exactly σ; Bessel's s = σ√(G/(G − 1)) shrinks it
    to σ√((G − 1)/G). All-equal groups (k ∈ {0, G}) are silent: c = 0.

    Args:
      successes: k in [0, G]; group_size: G >= 2; std: ``"population"`` or ``"bessel"``; eps: ε >= 0.
    Returns:
      the coefficient c (a float).
    """
    check_choice("std", std, ("population", "bessel"))
    G = check_int("group_size", group_size, low=2)
    k = check_int("successes", successes, low=0, high=G)
    eps = check_real("eps", eps, low=0.0)
    if k in (0, G):
        return 0.0
    var_pop = k * (G - k) / G**2
    s = float(np.sqrt(var_pop * (G / (G - 1) if std == "bessel" else 1.0)))
    return var_pop / (s + eps)


__all__ += ["mroueh_success_map", "mroueh_success_sequence", "mroueh_fixed_point", "group_std_update_size"]
