"""Reference formulas of the audit, written from the papers — independently of rlkl's method code.

The audit (`rlkl.toy.audit`) judges g = E[∇ loss] computed by running a method's own ``loss``; it explains g
with bias terms (`rlkl.toy.terms`) built from the expressions below. None of them calls a component, a loss of
``rlkl.losses``, an advantage of ``rlkl.advantages`` or an estimator of ``rlkl.divergences``: the group
statistics, clip rules, RPG weights and KL estimators are written out here again, so that a bug in either side
shows up as an unexplained residual instead of cancelling.

Symbols (docs/audit.md): a group is G rows y_1..y_G ~ π_old(·|x); row 1's value v_1 (the reward, or the reward
with a KL fused into it); ρ_t = π_θ(a_t|s_t)/π_old(a_t|s_t); w(y) = Π_t ρ_t the sequence ratio;
s(y) = w(y)^{1/|y|} GSPO's geometric mean; δ_t = log π_θ(a_t|s_t) − log π_ref(a_t|s_t); A the advantage.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from rlkl.components import (CISPO, GSPO, RPG, AggMode, Aggregation, BatchStandardized, Estimator, GPGAdvantage,
                             GroupCentered, GroupStandardized, KLLoss, LeaveOneOut, LengthWeightedCentered, PassAtK,
                             PolicyLoss, PPOClip, Raw, Reinforce, RPGDivergence, RPGForm, RPGLevel, Std, TokenWhitened)

__all__ = ["GroupLaw", "group_law", "group_advantage", "whitened_token_advantages", "finite_group_weight_reference",
           "aggregation_constant",
           "aggregation_weight", "sample_ratio", "rpg_weight", "policy_derivative", "k_value", "k_grad",
           "kl_loss_coefficients", "f_terms", "generates_reverse_kl"]


# ================================================================================================ group law
@dataclass(frozen=True)
class GroupLaw:
    """The law of the other G − 1 rows of a group, for one prompt: multisets of value classes.

    Attributes:
      values: ``[K]`` class values v_k (the advantage's input).
      lengths: ``[K]`` class response lengths (None when the law ignores lengths).
      counts: ``[M, K]`` how many of the G − 1 other rows fall in each class, one row per multiset.
      probs: ``[M]`` multinomial probability (G−1)!/Π c_k! · Π q_k^{c_k}, q_k = π_old(class k).
    """

    values: Tensor
    lengths: Optional[Tensor]
    counts: Tensor
    probs: Tensor

    @property
    def others_length(self) -> Tensor:
        """``[M]`` Σ_{j>1} |y_j| of each multiset."""
        return self.counts @ self.lengths


@functools.lru_cache(maxsize=64)
def _multiset_counts(num_classes: int, size: int) -> Tensor:
    rows = list(itertools.combinations_with_replacement(range(num_classes), size))
    counts = torch.zeros(len(rows), num_classes, dtype=torch.float64)
    for m, combo in enumerate(rows):
        for k in combo:
            counts[m, k] += 1.0
    return counts


def group_law(values: Tensor, q: Tensor, group_size: int, lengths: Optional[Tensor] = None) -> GroupLaw:
    """Multinomial law of the G − 1 other rows of a group (i.i.d. from q), by class of (value[, length]).

    Args:
      values: ``[N]`` per-response value; q: ``[N]`` π_old(y|x); lengths: ``[N]`` |y| (classes split by length
        too, for aggregations whose weight depends on the other rows' lengths).
    """
    key = values.unsqueeze(1) if lengths is None else torch.stack([values, lengths.to(values.dtype)], 1)
    uniq, inv = torch.unique(key, dim=0, return_inverse=True)
    K = uniq.shape[0]
    qk = torch.zeros(K, dtype=torch.float64).index_add_(0, inv, q.to(torch.float64))
    counts = _multiset_counts(K, group_size - 1)
    log_coef = math.lgamma(group_size) - torch.lgamma(counts + 1.0).sum(-1)
    probs = log_coef.exp() * torch.pow(qk.unsqueeze(0), counts).prod(-1)
    return GroupLaw(uniq[:, 0], None if lengths is None else uniq[:, 1], counts, probs)


def _std(advantage, v1: Tensor, law: GroupLaw, mean: Tensor, G: int) -> Tensor:
    """``[N, M]`` σ of the G values: sqrt(Σ_j (v_j − m̄)²/(G − 1)) (Bessel) or /G (population)."""
    vals, cnt = law.values, law.counts
    dev = (v1.unsqueeze(1) - mean) ** 2 + (cnt.unsqueeze(0) * (vals.view(1, 1, -1) - mean.unsqueeze(-1)) ** 2).sum(-1)
    return (dev / (G - 1 if advantage.std is Std.BESSEL else G)).sqrt()


def group_advantage(advantage, v1: Tensor, law: GroupLaw, group_size: int, length: Optional[Tensor] = None) -> Tensor:
    """Row 1's advantage a[n, m] when row 1 has value ``v1[n]`` (and length ``length[n]``) and the others are
    multiset m of ``law``.

    GRPO (DeepSeekMath arXiv 2402.03300 §4.1.2): a = (v_1 − m̄)/(σ + ε), m̄ = (1/G)Σ_j v_j,
    σ² = Σ_j (v_j − m̄)²/(G − 1) (Bessel) or /G (population); a group of equal values gets a = 0.
    Dr. GRPO (arXiv 2503.20783): a = v_1 − m̄. RLOO (arXiv 2402.14740): a = v_1 − Σ_{j>1} v_j/(G − 1).
    Raw: a = v_1. Batch standardization is the GRPO formula over the engine's unit, one group. OPO (arXiv
    2505.23585): a = v_1 − Σ_j |y_j| v_j/Σ_j |y_j|. Best of group (verl grpo_passk, arXiv 2503.19595):
    a = [v_1 − max_{j>1} v_j]_+, ÷ (σ + ε) when normalized. GPG (arXiv 2504.02546): a = α(v_1 − m̄),
    α = G/max(1, #{j: v_j ≠ 0}) over the group (the engine's unit).
    """
    G = group_size
    vals, cnt = law.values, law.counts  # [K], [M, K]
    base = v1.unsqueeze(1).expand(-1, cnt.shape[0])  # [N, M]
    if isinstance(advantage, Raw):
        return base.clone()
    others = cnt @ vals  # [M] Σ_{j>1} v_j
    if isinstance(advantage, LeaveOneOut):
        return base - others.unsqueeze(0) / (G - 1)
    mean = (base + others.unsqueeze(0)) / G
    if isinstance(advantage, GroupCentered):
        return base - mean
    if isinstance(advantage, LengthWeightedCentered):
        if law.lengths is None or length is None:  # equal lengths: the group mean
            L1, Lk = torch.ones_like(v1).unsqueeze(1), torch.ones_like(vals)
        else:
            L1, Lk = length.to(v1.dtype).unsqueeze(1), law.lengths  # [N, 1], [K]
        weighted = (L1 * base + (cnt @ (Lk * vals)).unsqueeze(0)) / (L1 + (cnt @ Lk).unsqueeze(0))
        return base - weighted
    if isinstance(advantage, GPGAdvantage):
        nonzero = (base != 0).to(vals.dtype) + (cnt @ (vals != 0).to(vals.dtype)).unsqueeze(0)
        return G / torch.clamp(nonzero, min=1.0) * (base - mean)
    equal = ((vals.view(1, 1, -1) == v1.view(-1, 1, 1)) | (cnt == 0).unsqueeze(0)).all(-1)
    if isinstance(advantage, PassAtK):
        best_other = torch.where(cnt > 0, vals.view(1, -1), torch.full_like(cnt, -math.inf)).amax(-1)  # [M]
        a = torch.clamp(base - best_other.unsqueeze(0), min=0.0)
        if not advantage.normalize:
            return a
        return torch.where(a > 0, a / (_std(advantage, v1, law, mean, G) + advantage.eps), torch.zeros_like(a))
    if isinstance(advantage, (GroupStandardized, BatchStandardized)):
        a = (base - mean) / (_std(advantage, v1, law, mean, G) + advantage.eps)
        return torch.where(equal, torch.zeros_like(a), a)
    raise ValueError(f"the audit has no reference formula for the advantage {advantage!r}")


def whitened_token_advantages(advantage: TokenWhitened, v1: Tensor, x1_tokens: Tensor, mask1: Tensor, law: GroupLaw,
                              class_tokens: Tensor, class_mask: Tensor, group_size: int) -> Tensor:
    """REINFORCE++'s token advantages A[n, m, t] = (x_{1,t} − μ)/sqrt(σ² + ε) over the valid tokens of the group.

    x_{i,t} = s_i + x^tok_{i,t}: s_i = v_i, or v_i − m̄ with the group mean (``group_mean``), and x^tok the
    per-token part (−β·tp_t of a reward-to-go KL); μ = Σ_{i,t} x/Σ_i |y_i|, σ² = Σ_{i,t} (x − μ)²/(n − 1)
    (Bessel over the n tokens) or /n; all-equal tokens give 0 (Hu arXiv 2501.03262 eqs. 8–10).

    Args:
      v1: ``[N]`` row 1's value; x1_tokens, mask1: ``[N, T]``; law: classes of the others with values ``[K]``;
      class_tokens, class_mask: ``[K, T]`` each class's per-token part and mask.
    """
    cnt, vals = law.counts, law.values  # [M, K], [K]
    m1, mk = mask1.to(v1.dtype), class_mask.to(v1.dtype)
    if advantage.group_mean:
        mean = (v1.unsqueeze(1) + (cnt @ vals).unsqueeze(0)) / group_size  # [N, M]
        s1, sk = v1.unsqueeze(1) - mean, vals.view(1, 1, -1) - mean.unsqueeze(-1)  # [N, M], [N, M, K]
    else:
        s1, sk = v1.unsqueeze(1), vals.view(1, 1, -1)
    x1 = (s1.unsqueeze(-1) + x1_tokens.unsqueeze(1)) * m1.unsqueeze(1)  # [N, M, T]
    xk = (sk.unsqueeze(-1) + class_tokens.view(1, 1, *class_tokens.shape)) * mk  # [., ., K, T]
    w = cnt.view(1, cnt.shape[0], -1, 1) * mk  # [1, M, K, T] multiplicity of each class token
    n = m1.sum(-1).unsqueeze(1) + (cnt @ mk.sum(-1)).unsqueeze(0)  # [N, M] valid tokens of the group
    mu = (x1.sum(-1) + (w * xk).sum((-1, -2))) / n
    dev = (m1.unsqueeze(1) * (x1 - mu.unsqueeze(-1)) ** 2).sum(-1) \
        + (w * (xk - mu.view(*mu.shape, 1, 1)) ** 2).sum((-1, -2))
    var = dev / (n - 1 if advantage.std is Std.BESSEL else n)
    inf = torch.tensor(math.inf, dtype=v1.dtype)
    present = w > 0
    valid1 = m1.unsqueeze(1) > 0
    hi = torch.maximum(torch.where(valid1, x1, -inf).amax(-1), torch.where(present, xk, -inf).amax((-1, -2)))
    lo = torch.minimum(torch.where(valid1, x1, inf).amin(-1), torch.where(present, xk, inf).amin((-1, -2)))
    a = (x1 - mu.unsqueeze(-1)) / torch.sqrt(var + advantage.eps).unsqueeze(-1)
    return torch.where((hi == lo).unsqueeze(-1), torch.zeros_like(a), a) * m1.unsqueeze(1)


def finite_group_weight_reference(p: float, group_size: int, std: Std, eps: float) -> float:
    """w_G(p) = E[A_1 | r_1 = 1] − E[A_1 | r_1 = 0] for binary rewards, as the binomial sum written out.

    With k successes among the other G − 1 rows (probability C(G−1, k) p^k (1 − p)^{G−1−k}): m̄ = (r_1 + k)/G,
    population variance m̄(1 − m̄), Bessel variance G/(G − 1) times it, A_1 = (r_1 − m̄)/(σ + ε), 0 when all G
    rewards are equal. GRPO ascends U_G(p) = ∫_0^p w_G (FRPO arXiv 2601.10201 Prop. 3.1).
    """
    G = group_size
    h = {}
    for r1 in (0, 1):
        total = 0.0
        for k in range(G):
            prob = math.comb(G - 1, k) * p**k * (1.0 - p) ** (G - 1 - k)
            if r1 + k in (0, G):
                continue  # all rewards equal: A = 0
            mean = (r1 + k) / G
            var = mean * (1.0 - mean) * (G / (G - 1) if std is Std.BESSEL else 1.0)
            total += prob * (r1 - mean) / (math.sqrt(var) + eps)
        h[r1] = total
    return h[1] - h[0]


# ================================================================================================ aggregation
def aggregation_constant(aggregation: Aggregation, horizon: int) -> float:
    """c with E[∇ aggregate] = c·E[∇ Σ_t l_t] for responses of fixed length T = ``horizon``.

    seq-mean-token-sum: 1; seq-mean-token-sum-norm: 1/C (C = ``aggregation.horizon`` or T); token-mean and
    seq-mean-token-mean: 1/T.
    """
    mode = aggregation.mode
    if mode is AggMode.SEQ_MEAN_TOKEN_SUM:
        return 1.0
    if mode is AggMode.SEQ_MEAN_TOKEN_SUM_NORM:
        return 1.0 / float(aggregation.horizon or horizon)
    return 1.0 / float(horizon)


def aggregation_weight(aggregation: Aggregation, length: Tensor, others_length: Optional[Tensor], group_size: int,
                       horizon: int) -> Tensor:
    """ω[n, m]: the weight of row 1's per-token loss gradient in one group's aggregated loss, times G.

    seq-mean-token-mean: 1/|y_1| (the 1/|y| of Dr. GRPO arXiv 2503.20783); token-mean: G/Σ_j |y_j| (one
    normalizer for the group's tokens); the sum modes: c. ``length`` ``[N]``; ``others_length`` ``[M]`` or None.
    """
    L1 = length.to(torch.float64).unsqueeze(1)  # [N, 1]
    mode = aggregation.mode
    if mode is AggMode.SEQ_MEAN_TOKEN_MEAN:
        return 1.0 / L1
    if mode is AggMode.TOKEN_MEAN:
        if others_length is None:
            raise ValueError("token-mean needs the other rows' lengths")
        return group_size / (L1 + others_length.unsqueeze(0))
    return torch.full_like(L1, aggregation_constant(aggregation, horizon))


# ================================================================================================ policy losses
def sample_ratio(policy_loss: PolicyLoss, rho: Tensor, w: Tensor, s: Tensor) -> Tensor:
    """φ: the importance weight on −A·∇log π_t of the unclipped surrogate (its slope in A).

    REINFORCE (Williams 1992): 1; PPO (arXiv 1707.06347 eq. 7), CISPO (arXiv 2506.13585 eqs. 4-5) and token-level
    RPG: ρ_t; GSPO (arXiv
    2507.18071): s(y); sequence-level RPG (arXiv 2505.17508): w(y). ``rho`` ``[..., T]``; ``w``, ``s`` ``[..., 1]``.
    """
    if isinstance(policy_loss, Reinforce):
        return torch.ones_like(rho)
    if isinstance(policy_loss, (PPOClip, CISPO)):
        return rho
    if isinstance(policy_loss, GSPO):
        return s.expand_as(rho)
    if isinstance(policy_loss, RPG):
        return rho if policy_loss.level is RPGLevel.TOKEN else w.expand_as(rho)
    raise ValueError(f"the audit has no reference formula for the policy loss {policy_loss!r}")


def rpg_weight(divergence: RPGDivergence, w: Tensor, log_w: Tensor, A: Tensor, beta: float) -> Tensor:
    """RPG's Weight with ∇J = E_{π_old}[Weight·∇log π_θ] per sample (arXiv 2505.17508, Z_old = 1):
    fkl wA + β (Prop. E.1); rkl w(A − β(log w + 1)) (Prop. E.3); ufkl wA − β(w − 1) (Prop. 3.2);
    urkl w(A − β log w) (Prop. 3.6)."""
    if divergence is RPGDivergence.FKL:
        return w * A + beta
    if divergence is RPGDivergence.RKL:
        return w * (A - beta * (log_w + 1.0))
    if divergence is RPGDivergence.UFKL:
        return w * A - beta * (w - 1.0)
    return w * (A - beta * log_w)


def _ppo_active(pl: PPOClip, A: Tensor, rho: Tensor) -> Tensor:
    """PPO keeps a token's gradient when A > 0, ρ ≤ 1 + ε_high or A < 0, 1 − ε_low ≤ ρ (≤ c with dual clip)."""
    neg = (A < 0) & (rho >= 1.0 - pl.low)
    if pl.dual is not None:
        neg = neg & (rho <= pl.dual)
    return ((A > 0) & (rho <= 1.0 + pl.high)) | neg


def _gspo_active(pl: GSPO, A: Tensor, s: Tensor) -> Tensor:
    return ((A > 0) & (s <= 1.0 + pl.high)) | ((A < 0) & (s >= 1.0 - pl.low))


def _rpg_alg1(pl: RPG, w: Tensor, log_w: Tensor, A: Tensor, beta: float) -> Tensor:
    """∂ℓ/∂log π of RPG-Style Clip on the differentiable surrogate (arXiv 2505.17508 Alg. 1).

    ℓ = max(−wÂ, −clip(w, 1 − ε1, 1 + ε2)·Â), then min(ℓ, −cÂ) where Â < 0, with the θ-dependent regularized
    advantage Â (urkl A − β log w; rkl A − β(log w + 1); ufkl A − β(1 − 1/w); fkl A + β/w). With
    Â_l = ∂Â/∂log w: on the kept branch ∂(−wÂ)/∂log π = −(wÂ + w·Â_l); a clipped branch −k·Â (k = 1 + ε2,
    1 − ε1 or c) still carries −k·Â_l.
    """
    div, clip = pl.divergence, pl.clip
    if div is RPGDivergence.URKL:
        a_hat, a_l = A - beta * log_w, torch.full_like(w, -beta)
    elif div is RPGDivergence.RKL:
        a_hat, a_l = A - beta * (log_w + 1.0), torch.full_like(w, -beta)
    elif div is RPGDivergence.UFKL:
        a_hat, a_l = A - beta * (1.0 - 1.0 / w), -beta / w
    else:
        a_hat, a_l = A + beta / w, -beta / w
    neg = a_hat < 0
    active = ((~neg) & (w <= 1.0 + clip.eps_high)) | (neg & (w >= 1.0 - clip.eps_low) & (w <= clip.c))
    k = torch.where(~neg, torch.full_like(w, 1.0 + clip.eps_high),
                    torch.where(w < 1.0 - clip.eps_low, torch.full_like(w, 1.0 - clip.eps_low),
                                torch.full_like(w, clip.c)))
    return torch.where(active, -(w * a_hat + w * a_l), -k * a_l)


def _rpg_alg2_active(pl: RPG, w: Tensor, weight: Tensor) -> Tensor:
    """RPG-REINFORCE with RPG-Style Clip (arXiv 2505.17508 Alg. 2): gradient −Weight·∇log π on
    {A' ≥ 0, w < 1 + ε2} ∪ {A' < 0, 1 − ε1 < w < c}, A' = Weight/w; 0 elsewhere."""
    clip = pl.clip
    pos = weight / w >= 0
    return (pos & (w < 1.0 + clip.eps_high)) | ((~pos) & (w > 1.0 - clip.eps_low) & (w < clip.c))


def policy_derivative(policy_loss: PolicyLoss, A: Tensor, rho: Tensor, log_rho: Tensor, w: Tensor, log_w: Tensor,
                      s: Tensor, beta: float, clipped: bool) -> Tensor:
    """∂l_t/∂log π_θ(a_t|s_t) of the surrogate for a token with advantage A (all arguments broadcast).

    Unclipped: −φ·A (REINFORCE, PPO, GSPO) and −Weight(φ, A) (RPG), φ = `sample_ratio`. ``clipped=True``
    applies the clip rule (PPO, GSPO: 0 outside the kept set; CISPO: the capped weight; RPG: Algs. 1–2).
    """
    phi = sample_ratio(policy_loss, rho, w, s)
    if isinstance(policy_loss, RPG):
        token = policy_loss.level is RPGLevel.TOKEN
        lw = log_rho if token else log_w.expand_as(rho)
        weight = rpg_weight(policy_loss.divergence, phi, lw, A, beta)
        if not clipped or policy_loss.clip is None:
            return -weight
        if policy_loss.form is RPGForm.DIFFERENTIABLE:
            return _rpg_alg1(policy_loss, phi, lw, A, beta)
        return torch.where(_rpg_alg2_active(policy_loss, phi, weight), -weight, torch.zeros_like(weight))
    d = -phi * A
    if not clipped:
        return d
    if isinstance(policy_loss, PPOClip):
        return torch.where(_ppo_active(policy_loss, A, rho), d, torch.zeros_like(d))
    if isinstance(policy_loss, GSPO):
        return torch.where(_gspo_active(policy_loss, A, phi), d, torch.zeros_like(d))
    if isinstance(policy_loss, CISPO):  # the weight sg[clip(ρ_t, 1 − ε_low, 1 + ε_high)] replaces ρ_t
        low = 0.0 if policy_loss.low is None else 1.0 - policy_loss.low
        return -torch.clamp(rho, min=low, max=1.0 + policy_loss.high) * A
    return d


# ================================================================================================ KL estimators
def k_value(estimator: Estimator, delta: Tensor) -> Tensor:
    """Schulman's estimators of KL(π‖π_ref) at δ = log π − log π_ref: k1 = δ, k2 = δ²/2, k3 = e^{−δ} − 1 + δ."""
    if estimator is Estimator.K1:
        return delta.clone()
    if estimator is Estimator.K2:
        return 0.5 * delta**2
    return torch.exp(-delta) - 1.0 + delta


def k_grad(estimator: Estimator, delta: Tensor) -> Tensor:
    """∂k/∂log π: k1 → 1, k2 → δ, k3 → 1 − e^{−δ}."""
    if estimator is Estimator.K1:
        return torch.ones_like(delta)
    if estimator is Estimator.K2:
        return delta.clone()
    return 1.0 - torch.exp(-delta)


def kl_loss_coefficients(kl: KLLoss, delta: Tensor, log_rho: Tensor) -> tuple[Tensor, Tensor]:
    """(κ, c̄) of a KL loss β·k(δ_t)[·ρ_t]: its gradient is β·κ·∇log π_t on a token drawn from π_old, and
    E_{a~π_old}[κ ∇log π] = E_{a~π_θ}[c̄ ∇log π] when importance-weighted.

    Plain: κ = c̄ = ∂k/∂log π (k2's δ under verl's straight-through "+"). With ρ (RPG arXiv 2505.17508 §2.2):
    ∇(ρ·k) = ρ(k + ∂k/∂log π)∇log π, so κ = ρ·c̄ with c̄ = k + ∂k/∂log π.
    """
    g = delta.clone() if kl.straight_through else k_grad(kl.estimator, delta)
    if not kl.importance_weight:
        return g, g
    cbar = k_value(kl.estimator, delta) + g
    return torch.exp(log_rho) * cbar, cbar


def f_terms(f_of_log: Callable[[Tensor], Tensor], log_u: Tensor) -> tuple[Tensor, Tensor, float]:
    """(f'(u) − f'(1), f(u)/u, f'(1)) from the generator f alone (f' by autograd of f(e^l) in l).

    FRPO's future return of an f-divergence (arXiv 2601.10201 Thm 4.1): ∇ Σ_s d_π(s) D_f(π(·|s)‖π_ref(·|s)) =
    E_π[Σ_t ∇log π_t (f'(u_t) + Σ_{j>t} f(u_j)/u_j)], u = π/π_ref; f'(1) is a baseline.
    """
    def fprime(l: Tensor) -> Tensor:
        x = l.detach().clone().requires_grad_(True)
        (dl,) = torch.autograd.grad(f_of_log(x).sum(), x)
        return dl * torch.exp(-x.detach())  # df/du = (df/dl)/u

    f1 = float(fprime(torch.zeros(1, dtype=torch.float64))[0])
    with torch.no_grad():
        f_over_u = f_of_log(log_u) * torch.exp(-log_u)
    return fprime(log_u) - f1, f_over_u, f1


@functools.lru_cache(maxsize=32)
def generates_reverse_kl(f_name: str) -> bool:
    """True when D_f = KL(π‖π_ref): f(u) − u log u is a multiple of (u − 1) (checked on a grid of u)."""
    from rlkl.divergences import get_f_divergence

    f = get_f_divergence(f_name).f_of_log
    logs = torch.tensor([-2.0, -0.7, 0.3, 1.1, 2.5], dtype=torch.float64)
    g = f(logs) - logs * logs.exp()
    slope = g / torch.expm1(logs)
    return bool((slope - slope[0]).abs().max() < 1e-12 * max(1.0, float(slope.abs().max())))
