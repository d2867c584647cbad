"""Advantages: group standardization (GRPO), centring (Dr. GRPO), leave-one-out (RLOO), batch standardization,
reward-to-go, the future return of any per-token quantity, and FRPO's token advantages.

Layout: rewards ``[B]`` with groups as contiguous blocks of ``group_size`` rows; token tensors ``[B, T]`` with a
bool ``mask``. Outputs carry no gradient unless the inputs do: callers put sg[·] (``.detach()``) where the
equation has it (rlkl.methods does).
"""

from __future__ import annotations

import math

from typing import Literal

import torch
from torch import Tensor

from rlkl._checks import (check_bool, check_choice, check_float, check_group_size, check_int, check_real,
                          check_same_dtype, check_token_tensors, require)
from rlkl.divergences import FDivergence, get_f_divergence

StdKind = Literal["population", "bessel"]
AdvantageKind = Literal["group_standardized", "group_centered", "leave_one_out", "batch_standardized", "raw"]
ADVANTAGE_KINDS: tuple[str, ...] = ("group_standardized", "group_centered", "leave_one_out", "batch_standardized",
                                    "raw")


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    check_float("rewards", rewards, ndim=1)
    check_group_size(rewards.shape[0], group_size)
    if group_size < 2:
        raise ValueError("a group-based advantage needs group_size >= 2 (a group of one has no baseline)")
    return rewards.view(-1, group_size)  # [B/G, G]


def _standardize(x: Tensor, std: StdKind, eps: float, dim: int = -1) -> Tensor:
    """(x − mean)/(std + ε) along ``dim``, exactly 0 for all-equal slices; finite, with a finite gradient, for
    every finite input and every ε >= 0 (ε = 0 included)."""
    check_choice("std", std, ("population", "bessel"))
    eps = check_real("eps", eps, low=0.0)
    # all-equal groups: advantage exactly 0 (verl/TRL give 0/(0+ε) = 0; with ε = 0 this avoids 0/0). Decided by
    # max == min, not by s > 0: the float mean of equal values can differ from them by round-off.
    degenerate = x.amax(dim=dim, keepdim=True) == x.amin(dim=dim, keepdim=True)
    with torch.no_grad():  # a power of two in (max|x|/2, max|x|] per slice: dividing by it is exact
        mag = x.abs().amax(dim=dim, keepdim=True)
        scale = torch.ldexp(torch.ones_like(mag), torch.frexp(mag).exponent - 1)
    # z in (−2, 2): squares of tiny rewards (5.9e-204) do not underflow, sums of huge ones do not overflow
    z = torch.where(degenerate, torch.zeros_like(x), x / scale)
    centred = z - z.mean(dim=dim, keepdim=True)
    centred = centred - centred.mean(dim=dim, keepdim=True)  # second pass removes the first mean's round-off
    n = x.shape[dim] - (1 if std == "bessel" else 0)
    var = (centred * centred).sum(dim=dim, keepdim=True) / n
    s = torch.sqrt(torch.where(degenerate, torch.ones_like(var), var))  # > 0 off degenerate slices
    eps_scaled = torch.full_like(scale, eps) / scale  # tensor / tensor: a python scalar / tensor is computed as
    # scalar·reciprocal(tensor), which is 0·inf = nan for a subnormal scale
    return torch.where(degenerate, torch.zeros_like(centred), centred / (s + eps_scaled))


def group_standardized(rewards: Tensor, group_size: int, eps: float = 1e-6, std: StdKind = "bessel") -> Tensor:
    """GRPO advantage A_i = (R_i − mean_g R)/(std_g R + ε); all-equal groups give 0.

    DeepSeekMath (arXiv 2402.03300) eq. for outcome supervision; verl ``grpo`` (ε = 1e-6, Bessel std), TRL
    ``scale_rewards="group"`` (ε = 1e-4, Bessel std), FRPO Alg. 1 (population std).

    Args:
      rewards: ``[B]`` sequence rewards, groups of ``group_size`` contiguous rows.
      group_size: G >= 2, dividing B.
      eps: ε in the denominator.
      std: ``"bessel"`` (divide by G − 1) or ``"population"`` (by G).
    Returns:
      ``[B]`` advantages.
    """
    return _standardize(_groups(rewards, group_size), std, eps).reshape(-1)


def group_centered(rewards: Tensor, group_size: int) -> Tensor:
    """Dr. GRPO advantage A_i = R_i − mean_g R (Liu et al., arXiv 2503.20783; verl ``norm_adv_by_std_in_grpo=False``).

    The group mean includes the sample itself ("leave-in"): its expected on-policy update is (1 − 1/G)·∇E[R].

    Returns:
      ``[B]`` advantages.
    """
    g = _groups(rewards, group_size)
    return (g - g.mean(dim=-1, keepdim=True)).reshape(-1)


def leave_one_out(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO advantage A_i = R_i − mean_{j≠i} R_j = G/(G−1)·(R_i − mean_g R) (Ahmadian et al., arXiv 2402.14740).

    Unbiased: the baseline does not depend on sample i, so E[A_i ∇log π(y_i)] = ∇E[R].

    Returns:
      ``[B]`` advantages.
    """
    g = _groups(rewards, group_size)
    G = group_size
    return ((g - g.mean(dim=-1, keepdim=True)) * (G / (G - 1))).reshape(-1)


def batch_standardized(rewards: Tensor, eps: float = 1e-6, std: StdKind = "bessel") -> Tensor:
    """A_i = (R_i − mean_batch R)/(std_batch R + ε) over the whole batch (REINFORCE++-style whitening).

    Returns:
      ``[B]`` advantages (all zero if every reward is equal).
    """
    check_float("rewards", rewards, ndim=1)
    if rewards.shape[0] < 2:
        raise ValueError("batch standardization needs at least 2 rewards")
    return _standardize(rewards, std, eps, dim=0)


def compute_advantages(kind: AdvantageKind, rewards: Tensor, group_size: int, eps: float = 1e-6,
                       std: StdKind = "bessel") -> Tensor:
    """Dispatch to one of the sequence-level advantages above (``raw`` = the reward itself, no baseline)."""
    check_choice("advantage", kind, ADVANTAGE_KINDS)
    check_int("group_size", group_size, low=1)  # validated for every kind, also those that ignore it
    if kind == "group_standardized":
        return group_standardized(rewards, group_size, eps, std)
    if kind == "group_centered":
        return group_centered(rewards, group_size)
    if kind == "leave_one_out":
        return leave_one_out(rewards, group_size)
    if kind == "batch_standardized":
        return batch_standardized(rewards, eps, std)
    check_float("rewards", rewards, ndim=1)
    return rewards


def future_return(values: Tensor, mask: Tensor, include_current: bool) -> Tensor:
    """Masked reverse cumulative sum S_t = Σ_{j ≥ t} m_j v_j (``include_current``) or Σ_{j > t} m_j v_j.

    FRPO (arXiv 2601.10201) Alg. 1 uses the inclusive sum of k1 log-ratios; the general f-divergence identity
    (FRPO arXiv 2601.10201, Thm 4.1) needs the strictly-future sum of f(u_j)/u_j. Tang & Munos (arXiv 2506.09477): the
    sequence-level reverse-KL gradient is E[Σ_t ∇log π_t Σ_{j≥t} log(π/π_ref)_j].

    Args:
      values: ``[B, T]`` per-token quantity (entries under ``mask = False`` are ignored).
      mask: ``[B, T]`` bool.
      include_current: include the token's own value (j ≥ t) or not (j > t). Explicit on purpose: the wrong
        choice double-counts or drops the local term.
    Returns:
      ``[B, T]``, zero where ``mask`` is False.
    """
    check_token_tensors(mask, values=values)
    check_bool("include_current", include_current)
    return _future_return(values, mask, include_current)


def _future_return(values: Tensor, mask: Tensor, include_current: bool) -> Tensor:
    v = torch.where(mask, values, 0.0)  # [B, T]
    inclusive = v.flip(-1).cumsum(-1).flip(-1)  # [B, T] Σ_{j>=t}
    if include_current:
        out = inclusive
    else:  # Σ_{j>t} is the inclusive sum one step later, summed on its own (not Σ_{j>=t} − v_t, which loses the
        # future terms to round-off whenever v_t dominates them)
        out = torch.cat([inclusive[:, 1:], torch.zeros_like(inclusive[:, :1])], dim=-1)
    return torch.where(mask, out, 0.0)


def reward_to_go(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """G_t = Σ_{j ≥ t, m_j} γ^{(# masked-in steps from t to j)} r_j, skipping tokens with mask = False.

    With γ = 1 it equals ``future_return(token_rewards, mask, include_current=True)``. REINFORCE with returns
    (RPG arXiv 2505.17508, Sec. 2): ∇J = E[Σ_t G_t ∇log π(a_t|s_t)].

    Args:
      token_rewards: ``[B, T]`` per-token rewards (e.g. −β·k1 on every token plus R on the last).
      mask: ``[B, T]`` bool.
      gamma: discount in [0, 1].
    Returns:
      ``[B, T]`` returns, zero where ``mask`` is False.
    """
    check_token_tensors(mask, token_rewards=token_rewards)
    gamma = check_real("gamma", gamma, low=0.0, high=1.0)
    if gamma == 1.0:
        return _future_return(token_rewards, mask, include_current=True)
    B, T = token_rewards.shape
    out = torch.zeros_like(token_rewards)
    running = torch.zeros(B, dtype=token_rewards.dtype, device=token_rewards.device)
    for t in range(T - 1, -1, -1):
        m = mask[:, t]
        running = torch.where(m, token_rewards[:, t] + gamma * running, running)
        out[:, t] = torch.where(m, running, torch.zeros_like(running))
    return out


def frpo_regularizer(log_ratio: Tensor, mask: Tensor, divergence: str | FDivergence = "reverse_kl",
                     include_local: bool = True) -> Tensor:
    """FRPO's per-token regularizer reg_t = [f'(u_t) − f'(1)] + Σ_{j>t} f(u_j)/u_j, u = π/π_ref.

    For the token-wise regularizer R = E_{y~π} Σ_t D_f(π(·|s_t)‖π_ref(·|s_t)),
    ∇R = E[Σ_t ∇log π(a_t|s_t)·(f'(u_t) + Σ_{j>t} f(u_j)/u_j)] (FRPO arXiv 2601.10201 Thm 4.1
    in the standard convention). The constant f'(1) is a baseline (E_π[∇log π] = 0) and is dropped, so for
    reverse KL reg_t = δ_t + Σ_{j>t} δ_j = Σ_{j≥t} δ_j, FRPO's default inclusive k1 sum (Eq. 4.5).
    ``include_local=False`` keeps only the strictly-future part, for use when the local gradient comes from a
    loss term (k2 as loss, verl's k3+); including both double-counts it.

    Args:
      log_ratio: ``[B, T]`` log π − log π_ref at sampled tokens (pass it detached).
      mask: ``[B, T]`` bool.
      divergence: f-divergence name (see ``rlkl.divergences.F_DIVERGENCE_NAMES``) or an ``FDivergence``.
      include_local: add the score-function local term f'(u_t) − f'(1).
    Returns:
      ``[B, T]`` reg_t, zero where ``mask`` is False.
    """
    check_token_tensors(mask, log_ratio=log_ratio)
    check_bool("include_local", include_local)
    div = _divergence(divergence)
    est = torch.where(mask, div.f_over_u_of_log(log_ratio), 0.0)  # f(u)/u; padding ignored
    future = _future_return(est, mask, include_current=False)
    if not include_local:
        reg, what = future, "future sum of f(u)/u"
    else:
        local = torch.where(mask, div._f_prime_centered(log_ratio), 0.0)  # f'(u_t) − f'(1)
        reg, what = local + future, "f'(u) + future sum"
    # one check for both (sums: no extra tensor; an inf/nan entry makes its sum non-finite), deferred inside a
    # trusted computation; the error names the first term that overflowed
    with torch.no_grad():
        ok = torch.isfinite(torch.stack([est.sum(), reg.sum()])).all()
    require(ok, lambda: (_finite_terms(est, log_ratio, mask, div, "f(u)/u"),
                         _finite_terms(reg, log_ratio, mask, div, what)))
    return reg


def _divergence(divergence: str | FDivergence) -> FDivergence:
    if isinstance(divergence, FDivergence):
        return divergence
    if not isinstance(divergence, str):
        raise ValueError(f"divergence must be an f-divergence name or an FDivergence, got {divergence!r}")
    return get_f_divergence(divergence)


def _finite_terms(x: Tensor, log_ratio: Tensor, mask: Tensor, div: FDivergence, what: str) -> Tensor:
    """Raise a ValueError that names log_ratio (not an internal tensor) when FRPO's terms overflow the dtype."""
    if not bool(torch.isfinite(x).all()):
        lr = log_ratio[mask]
        raise ValueError(
            f"log_ratio: FRPO's {div.name} regularizer ({what}) overflows {log_ratio.dtype} for log-ratios in "
            f"[{lr.min().item():.4g}, {lr.max().item():.4g}]: the true value exceeds the dtype's range "
            "(docs/precision.md lists each divergence's finite range); use float64 or a divergence that stays "
            "bounded there")
    return x


def frpo_advantages(rewards: Tensor, logp: Tensor, logp_ref: Tensor, mask: Tensor, group_size: int, beta: float,
                    divergence: str | FDivergence = "reverse_kl", include_local: bool = True, eps: float = 1e-6,
                    std: StdKind = "population") -> Tensor:
    """FRPO token advantage A_{i,t} = (R_i − mean_g R)/(std_g R + ε) − β·reg_{i,t}.

    FRPO (arXiv 2601.10201) Eq. 4.5 / Alg. 1: the GRPO advantage of the *unmodified* reward minus β times the
    future return of the per-token divergence estimate (:func:`frpo_regularizer`); used inside a PPO/REINFORCE
    surrogate as sg[A] with **no** separate KL loss. With the score-function surrogate −sg[A]·log π its expected
    on-policy gradient is −∇[U_G(p) − β·Σ_t E D_f(π(·|s_t)‖π_ref(·|s_t))] (U_G: ``rlkl.utility``), i.e. exact
    for the sequence-level reverse KL when ``divergence="reverse_kl"``.

    Args:
      rewards: ``[B]``; logp, logp_ref: ``[B, T]`` (detached inside); mask: ``[B, T]`` bool.
      group_size: G >= 2; beta: β >= 0.
      divergence, include_local: see :func:`frpo_regularizer`.
      eps, std: GRPO standardization (FRPO Alg. 1: population std).
    Returns:
      ``[B, T]`` advantages (no gradient), zero where ``mask`` is False.
    """
    B, T = check_token_tensors(mask, logp=logp, logp_ref=logp_ref)
    check_float("rewards", rewards, shape=(B,))
    check_same_dtype(logp=logp, rewards=rewards)
    beta = check_real("beta", beta, low=0.0)
    a_out = group_standardized(rewards, group_size, eps, std)  # [B]
    # sg[·]: the regularizer enters as an advantage (FRPO: Â = sg(Â − βS))
    log_ratio = (logp - logp_ref).detach()
    reg = frpo_regularizer(log_ratio, mask, divergence, include_local)  # [B, T]
    return (a_out.detach()[:, None] - beta * reg) * mask


# ---------------------------------------------------------------------------------------------------------------
# outcome advantages of verl 0.9.1's other estimators (trainer/ppo/core_algos.py), restated from their rules


def length_weighted_centered(rewards: Tensor, lengths: Tensor, group_size: int) -> Tensor:
    """OPO: A_i = r_i − b_g, b_g = Σ_{j∈g} |y_j| r_j / Σ_{j∈g} |y_j| (the group's length-weighted mean reward).

    Hao et al. arXiv 2505.23585 (OPO, the optimal baseline with the squared score norm approximated by the response
    length); verl ``compute_opo_outcome_advantage``. The baseline includes r_i itself, so (as the group mean of
    Dr. GRPO, which it equals for equal lengths) it is not independent of the sample.

    Args:
      rewards: ``[B]``; lengths: ``[B]`` |y_i| (valid token counts, > 0); group_size: G >= 2.
    Returns:
      ``[B]`` advantages.
    """
    g = _groups(rewards, group_size)  # [B/G, G]
    check_float("lengths", lengths, shape=rewards.shape)
    check_same_dtype(rewards=rewards, lengths=lengths)
    require((lengths > 0).all(), _raise_lengths)
    L = lengths.view(-1, group_size)
    baseline = (L * g).sum(-1, keepdim=True) / L.sum(-1, keepdim=True)  # [B/G, 1]
    return (g - baseline).reshape(-1)


def _raise_lengths() -> None:
    raise ValueError("lengths must be positive (every response has at least one token)")


def pass_at_k_advantage(rewards: Tensor, group_size: int, normalize: bool = True, eps: float = 1e-6,
                        std: StdKind = "bessel") -> Tensor:
    """Best-of-group advantage A_i = [r_i − max_{j≠i} r_j]_+ (÷ (std_g r + ε) when ``normalize``).

    Only a group's unique best response gets a non-zero advantage, r_max − r_second (verl
    ``compute_grpo_passk_outcome_advantage``, after Chen et al. arXiv 2503.19595; ``norm_adv_by_std_in_grpo``
    = ``normalize``, torch's Bessel std). On-policy, with the score-function surrogate and sequence-level
    aggregation, E[∇L] = −(1/G)·∇E[max_i r_i] without normalization — for binary rewards −∇[(1 − (1 − p)^G)/G],
    pass@G per sample; the std makes that κ_G = 1/(σ_G + ε) times larger (σ_G: the std of one success in G).

    Args:
      rewards: ``[B]``; group_size: G >= 2; normalize: divide by the group std; eps: ε; std: bessel | population.
    Returns:
      ``[B]`` advantages (zero for all but the strict best of each group).
    """
    g = _groups(rewards, group_size)  # [K, G]
    check_bool("normalize", normalize)
    eps = check_real("eps", eps, low=0)
    check_choice("std", std, ("population", "bessel"))
    G = group_size
    eye = torch.eye(G, dtype=torch.bool, device=g.device)
    others = g.unsqueeze(1).expand(-1, G, G).masked_fill(eye, float("-inf")).amax(-1)  # [K, G] max_{j≠i} r_j
    adv = torch.clamp(g - others, min=0.0)
    if normalize:
        s = g.std(dim=-1, correction=1 if std == "bessel" else 0, keepdim=True)
        adv = torch.where(adv > 0, adv / (s + eps), torch.zeros_like(adv))  # adv > 0 implies s > 0
    return adv.reshape(-1)


def gpg_advantage(rewards: Tensor, group_size: int, scope: str = "batch") -> Tensor:
    """GPG: A_i = α·(r_i − mean_g r), α = n / max(1, #{j: r_j ≠ 0}) over the n rows of the scope.

    Chu et al. arXiv 2504.02546 (GPG); the rule of verl ``compute_gpg_outcome_advantage`` (f_norm = 1, α from the
    count of non-zero rewards in the batch). ``scope="group"`` takes the count per group (equal on a batch of one
    group — the exact engine's unit).

    Args:
      rewards: ``[B]``; group_size: G >= 2; scope: ``"batch"`` | ``"group"``.
    Returns:
      ``[B]`` advantages.
    """
    g = _groups(rewards, group_size)
    check_choice("scope", scope, ("batch", "group"))
    centred = g - g.mean(dim=-1, keepdim=True)
    if scope == "batch":
        alpha = g.numel() / torch.clamp((g != 0).sum().to(g.dtype), min=1.0)
    else:
        alpha = group_size / torch.clamp((g != 0).sum(-1, keepdim=True).to(g.dtype), min=1.0)  # [K, 1]
    return (alpha * centred).reshape(-1)


def _raise_whiten_count() -> None:
    raise ValueError("Bessel-corrected whitening needs at least 2 valid tokens per batch (or group)")


_WHITEN_R_MAX = 1e15  # r² = 1e30 stays finite in float32 (max 3.4e38)


def masked_whiten(values: Tensor, mask: Tensor, eps: float = 1e-8, std: StdKind = "bessel",
                  group_size: int | None = None) -> Tensor:
    """Token whitening A_{i,t} = (x_{i,t} − μ)/sqrt(σ² + ε) over the valid tokens of the batch (or of each group).

    μ = Σ m·x/Σ m, σ² = Σ m·(x − μ)²/(Σ m − 1) (Bessel, verl's ``masked_var``) or /Σ m (population): REINFORCE++'s
    global advantage normalization (Hu arXiv 2501.03262 eq. 10; verl ``masked_whiten`` inside
    ``reinforce_plus_plus`` and ``reinforce_plus_plus_baseline``). A response weighs by its number of tokens. verl's
    ``masked_mean`` also adds 1e-8 to the token count (a relative 1e-8/Σ m difference, not reproduced). All-equal
    values give 0 (not round-off/√ε). Computed in float64 in a scale-free form, so no spread underflows; with ε = 0
    the result is scale-invariant and its gradient grows as 1/spread (it overflows only below ~1e-300).

    Args:
      values: ``[B, T]``; mask: ``[B, T]`` bool; eps: ε inside the square root (verl: 1e-8); std: bessel |
      population; group_size: None (statistics over the batch) or G (per contiguous group of G rows).
    Returns:
      ``[B, T]``, zero where ``mask`` is False.
    """
    B, T = check_token_tensors(mask, values=values)
    check_choice("std", std, ("population", "bessel"))
    eps = check_real("eps", eps, low=0)
    G = B if group_size is None else check_group_size(B, group_size)
    x = values.reshape(B // G, G * T).to(torch.float64)  # float64 inside: every float32 input's square fits
    m = mask.reshape(B // G, G * T).to(torch.float64)
    n = m.sum(-1, keepdim=True)  # [K, 1] valid tokens per scope
    if std == "bessel":
        require((n >= 2).all(), _raise_whiten_count)
    mu = (x * m).sum(-1, keepdim=True) / n
    d = (x - mu) * m  # [K, G·T] centred, 0 on padding
    # scale-free form: y = d/max|d| has max |y| = 1, so var_y >= 1/n never underflows (subnormal spreads, ε = 0):
    # (x − μ)/sqrt(σ² + ε) = y/sqrt(var_y + r²), r = sqrt(ε)/scale (formed in logs: no overflow in r or its
    # gradient). When ε dominates (r > 1e15) the value is d/sqrt(ε) to a relative 1e-30, computed that way.
    # All-equal scopes (scale 0) give exactly 0; every where's untaken side is finite, so gradients are too.
    scale = d.abs().amax(-1, keepdim=True)
    live = scale > 0
    direct = (math.sqrt(eps) >= _WHITEN_R_MAX * scale.detach()) if eps > 0 else torch.zeros_like(live)
    safe = torch.where(live & ~direct, scale, torch.ones_like(scale))  # the y branch's scale; 1 where unused
    y = d / safe
    var_y = (y * y).sum(-1, keepdim=True) / (n - 1 if std == "bessel" else n)
    if eps == 0:
        out = y / torch.sqrt(torch.where(live, var_y, torch.ones_like(var_y)))
    else:
        r = torch.exp(0.5 * math.log(eps) - torch.log(safe))
        out = torch.where(direct, d / math.sqrt(eps), y / torch.sqrt(var_y + r * r))
    out = torch.where(live, out * m, torch.zeros_like(out)).to(values.dtype)
    return out.reshape(B, T)
