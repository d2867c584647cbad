"""The audit's bias terms: one object per term — name, one-line doc, when the theory predicts it, how it is measured.

A `BiasTerm` has ``predicted(method, setting) -> bool`` (pure logic on the method's typed components) and
``measure(ctx) -> θ-vector | None`` (an exact expression on the tree, from `rlkl.toy.context.AuditContext`, built
with the independent formulas of `rlkl.toy.reference`; None where the term does not apply). ``TERMS`` is the
registry and the single glossary (docs/audit.md explains each term): a term registered from another module with
`register` is predicted and measured by every audit without further changes.

With c the aggregation constant, β the method's coefficient and rows drawn from π_old, the terms telescope from the
method's model expected gradient down to the target −c∇J (docs/audit.md gives the chain):

    E[∇L] = −c∇J + Σ_k term_k + residual,

and the audit judges the method by the residual (the method's own ``loss`` through `rlkl.toy.expected`, against
these expressions) and by whether the terms present are the predicted ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from rlkl.components import (CISPO, GSPO, RPG, AggMode, BatchStandardized, Estimator, FutureReturn, GPGAdvantage,
                             GroupCentered, GroupStandardized, KLLoss, KLReward, LeaveOneOut, LengthWeightedCentered,
                             NoKL, PassAtK, PPOClip, Raw, Reinforce, RewardForm, RPGForm, RPGLevel, TokenWhitened)
from rlkl.objective import Anchor, Level, Regularizer, Utility
from rlkl.toy import reference as ref_

__all__ = ["Setting", "BiasTerm", "TERMS", "register", "unregister", "predicted_terms", "measure_terms", "glossary"]


@dataclass(frozen=True)
class Setting:
    """Where a method runs, as far as the predictions care.

    Attributes:
      off_policy: rows come from π_old ≠ π_θ (K > 1 optimizer steps per batch).
      variable_length: responses have different lengths (EOS).
    """

    off_policy: bool = False
    variable_length: bool = False


@dataclass(frozen=True)
class BiasTerm:
    """One named bias term.

    Attributes:
      name: the key in audit records (``bias_terms``) and in ``Method.predicted_bias_terms``.
      doc: one line: what the term is (the glossary entry).
      formula: the vector, in the symbols of docs/audit.md.
      predicted: ``(method, Setting) -> bool``, pure logic on the method's components.
      measure: ``(AuditContext) -> θ-shaped Tensor | None`` (None: the term does not apply to this method).
    """

    name: str
    doc: str
    formula: str
    predicted: Callable[[Any, Setting], bool]
    measure: Callable[[Any], Optional[Tensor]]


#: the registry and glossary, in display order
TERMS: dict[str, BiasTerm] = {}


def register(term: BiasTerm, replace: bool = False) -> BiasTerm:
    """Add ``term`` to ``TERMS`` (ValueError on a duplicate name unless ``replace``)."""
    if not isinstance(term, BiasTerm):
        raise ValueError(f"register() takes a BiasTerm, got {type(term).__name__}")
    if term.name in TERMS and not replace:
        raise ValueError(f"bias term {term.name!r} is already registered; pass replace=True to redefine it")
    TERMS[term.name] = term
    return term


def unregister(name: str) -> None:
    TERMS.pop(name, None)


def predicted_terms(method: Any, setting: Setting) -> tuple[str, ...]:
    """The names of the registered terms the theory predicts for ``method`` in ``setting``."""
    return tuple(name for name, t in TERMS.items() if t.predicted(method, setting))


def measure_terms(ctx: Any) -> dict[str, Tensor]:
    """Every registered term that applies, measured on ``ctx`` (name → θ-vector)."""
    out = {}
    for name, t in TERMS.items():
        v = t.measure(ctx)
        if v is not None:
            out[name] = v
    return out


def glossary() -> dict[str, str]:
    """name → one-line doc of every registered term."""
    return {name: t.doc for name, t in TERMS.items()}


# ================================================================================================ predicates
def _kl_on(m) -> bool:
    return m.beta > 0 and not isinstance(m.kl, NoKL)


def _kl_loss(m) -> bool:
    return _kl_on(m) and isinstance(m.kl, KLLoss)


def _plain(kl: KLLoss) -> bool:
    return not (kl.importance_weight or kl.straight_through)


def _plain_k1(kl: KLLoss) -> bool:
    return kl.estimator is Estimator.K1 and _plain(kl)


def _reverse_field(kl: KLLoss) -> bool:
    """The loss's on-policy local field is PG_rev: k2, straight-through k, ρ·k1, ρ·k3 (`kl_loss_coefficients`)."""
    if not kl.importance_weight:
        return kl.straight_through or kl.estimator is Estimator.K2
    return not kl.straight_through and kl.estimator in (Estimator.K1, Estimator.K3)


def _fused(m) -> bool:
    return _kl_on(m) and isinstance(m.kl, KLReward) and m.kl.form is RewardForm.FUSED


def _claims_sequence_kl(obj) -> bool:
    return obj.regularizer is Regularizer.REVERSE_KL and obj.level is Level.SEQUENCE and obj.anchor is Anchor.REF


def _future_return_matches(kl: FutureReturn, obj) -> bool:
    reverse = ref_.generates_reverse_kl(kl.divergence)
    if obj.regularizer is Regularizer.TOKEN_F_DIVERGENCE:
        same = obj.f_divergence == kl.divergence or (reverse and ref_.generates_reverse_kl(obj.f_divergence))
        return obj.anchor is Anchor.REF and obj.level is Level.SEQUENCE and same
    return _claims_sequence_kl(obj) and reverse


def _token_level(pl) -> bool:
    return isinstance(pl, (Reinforce, PPOClip, CISPO)) or (isinstance(pl, RPG) and pl.level is RPGLevel.TOKEN)


def _length_normalizing(agg) -> bool:
    return agg.mode in (AggMode.TOKEN_MEAN, AggMode.SEQ_MEAN_TOKEN_MEAN)


# ================================================================================================ aggregation & clip
def _pred_length(m, s: Setting) -> bool:
    return s.variable_length and _length_normalizing(m.aggregation)


def _varies(ctx) -> bool:
    return not ctx.mdp.fixed_length and _length_normalizing(ctx.method.aggregation)


def _measure_length(ctx) -> Optional[Tensor]:
    """E[(ω − c)·Σ_t (∂l_t/∂log π_t + β κ_t) ∇log π_t] of the unclipped surrogate (rows from π_old)."""
    if not _varies(ctx):
        return None
    per = [(ctx.length_weight(x).unsqueeze(-1) * (ctx.derivative(x, clipped=False)
                                                   + ctx.beta * ctx.kl_loss_kappa[x].unsqueeze(1))).sum(1)
           for x in range(ctx.shape[0])]
    return ctx.on_old_rows(torch.stack(per))


register(BiasTerm(
    "length_normalization",
    "1/|y| (seq-mean-token-mean) or one token count per group (token-mean) weights responses by their length "
    "(Dr. GRPO arXiv 2503.20783)",
    "E_{π_old}[(ω − c) Σ_t (∂l_t/∂log π_t + β κ_t) ∇log π_t], ω = 1/|y_1| or G/Σ_j |y_j|, unclipped l",
    _pred_length, _measure_length))


def _measure_clipping(ctx) -> Optional[Tensor]:
    """E[ω Σ_t (∂l^clip_t − ∂l_t)/∂log π_t ∇log π_t]: the gradient the clip rule removes (or changes), with the
    aggregation weight ω each token carries in the update."""
    if not ctx.method.policy_loss.clips:
        return None
    per = []
    for x in range(ctx.shape[0]):
        weight = ctx.c * ctx.group(x)[1].unsqueeze(0)  # [1, M]
        if _varies(ctx):
            weight = weight + ctx.length_weight(x)  # ω·P(m)
        change = ctx.derivative(x, clipped=True) - ctx.derivative(x, clipped=False)  # [N, M, T]
        per.append((weight.unsqueeze(-1) * change).sum(1))
    return ctx.on_old_rows(torch.stack(per))


def _pred_clipping(m, s: Setting) -> bool:
    pl = m.policy_loss
    alg1 = isinstance(pl, RPG) and pl.clip is not None and pl.form is RPGForm.DIFFERENTIABLE and m.beta > 0
    return pl.clips and (s.off_policy or (alg1 and _pred_length(m, s)))


register(BiasTerm(
    "clipping",
    "clipped tokens (or sequences) lose their gradient: PPO (arXiv 1707.06347), GSPO (arXiv 2507.18071), "
    "RPG-Style Clip (arXiv 2505.17508 Algs. 1-2; Alg. 1's −w·Â also differentiates Â, which shows on-policy "
    "where ω varies)",
    "E_{π_old}[ω Σ_t (∂l^clip_t − ∂l_t)/∂log π_t ∇log π_t], the clip rule applied to ρ_t (s(y), w) and sign(A)",
    _pred_clipping, _measure_clipping))


# ================================================================================================ ratios
def _measure_ratio(ctx, applies: Callable[[Any], bool]) -> Optional[Tensor]:
    """−c·E_{π_old}[Σ_t (φ_t − w(y)) Ā_t(y) ∇log π_t]: the surrogate's ratio φ instead of the sequence ratio w."""
    if not applies(ctx.method.policy_loss):
        return None
    w = ctx.log_w.exp()
    return -ctx.c * ctx.on_old_rows((ctx.phi - w) * ctx.mean_advantage)


register(BiasTerm(
    "token_level_ratio",
    "off-policy: per-token ratios ρ_t (or none, REINFORCE) weight the advantage instead of the sequence ratio w(y)",
    "−c·E_{π_old}[Σ_t (φ_t − w(y)) Ā_t ∇log π_t], φ_t = ρ_t (PPO, token RPG) or 1 (REINFORCE)",
    lambda m, s: s.off_policy and _token_level(m.policy_loss),
    lambda ctx: _measure_ratio(ctx, _token_level)))

register(BiasTerm(
    "geometric_mean_ratio",
    "off-policy GSPO: the geometric mean s(y) = w(y)^{1/|y|} weights the advantage instead of the sequence "
    "ratio w(y) (arXiv 2507.18071)",
    "−c·E_{π_old}[Σ_t (s(y) − w(y)) Ā_t ∇log π_t]",
    lambda m, s: s.off_policy and isinstance(m.policy_loss, GSPO),
    lambda ctx: _measure_ratio(ctx, lambda pl: isinstance(pl, GSPO))))


# ================================================================================================ advantages
def _measure_utility(ctx, kinds: tuple) -> Optional[Tensor]:
    """−c(H_r − ∇U): the shaped reward h(y) = E[A_1 | y_1 = y] (others from π_old) against the intended utility."""
    if not isinstance(ctx.method.advantage, kinds):
        return None
    return -ctx.c * (ctx.score(ctx.shaped(fused=False)) - ctx.grad_u)


def _pred_standardized(m, s: Setting, kind) -> bool:
    return isinstance(m.advantage, kind) and (m.objective.utility is not Utility.FINITE_GROUP or s.off_policy)


register(BiasTerm(
    "finite_group_utility",
    "group standardization ascends Σπ·h(r), U_G(p) for binary rewards (→ 2·arcsin√p as G → ∞), not the intended "
    "utility; off-policy w_G is taken at π_old's p (FRPO arXiv 2601.10201 Prop. 3.1)",
    "−c(∇_θ Σ_x ρ Σ_y π_θ(y) sg[h(y)] − ∇U), h(y) = E[A_1 | y_1 = y] as a multinomial sum over the others",
    lambda m, s: _pred_standardized(m, s, GroupStandardized),
    lambda ctx: _measure_utility(ctx, (GroupStandardized,))))

register(BiasTerm(
    "leave_in_shrink",
    "a group mean that includes the sample: the reward gradient shrinks by 1 − 1/G (Dr. GRPO arXiv 2503.20783)",
    "−c(∇_θ Σ π_θ sg[h] − ∇U), h(y) = (1 − 1/G)(r(y) − E_{π_old} r)",
    lambda m, s: isinstance(m.advantage, GroupCentered) and m.objective.utility is not Utility.LEAVE_IN,
    lambda ctx: _measure_utility(ctx, (GroupCentered,))))

def _measure_batch(ctx) -> Optional[Tensor]:
    """−c(H_r − ∇U) for a batch statistic on the sequence advantage; for token whitening (REINFORCE++)
    −c(E_θ[Σ_t Ā^W_t ∇_t] − E_θ[Σ_t (v − β tp^old_t) ∇_t]): the whitened against the raw token returns."""
    if not ctx.whitened:
        return _measure_utility(ctx, (BatchStandardized, GPGAdvantage))
    raw = ctx.shaped(fused=True).unsqueeze(-1) - ctx.beta * ctx.token_penalty(stale=True)
    return -ctx.c * (ctx.on_theta_rows(ctx.mean_advantage) - ctx.on_theta_rows(raw))


register(BiasTerm(
    "batch_normalization",
    "a batch statistic in the advantage (batch standardization, GPG's α = G/#{r ≠ 0}, REINFORCE++'s token "
    "whitening); the exact engine's unit is one group, so it is measured over that group (the coupling across "
    "prompts is not modelled)",
    "−c(∇_θ Σ π_θ sg[h] − ∇U), the statistic over one group; whitening: "
    "−c(E_θ[Σ_t Ā^W_t ∇_t] − E_θ[Σ_t (v − β tp_t) ∇_t])",
    lambda m, s: (_pred_standardized(m, s, BatchStandardized)
                  or isinstance(m.advantage, (GPGAdvantage, TokenWhitened))),
    _measure_batch))


def _pred_mismatch(m, s: Setting) -> bool:
    adv, u = m.advantage, m.objective.utility
    if isinstance(adv, (LeaveOneOut, Raw)):
        return u is not Utility.EXPECTED_REWARD
    if isinstance(adv, LengthWeightedCentered):  # equal lengths: the leave-in group mean
        return u is not Utility.LEAVE_IN or s.variable_length
    if isinstance(adv, PassAtK):  # unnormalized, on-policy: pass@G/G exactly
        return u is not Utility.PASS_AT_K or adv.normalize or s.off_policy
    return False


register(BiasTerm(
    "utility_mismatch",
    "the advantage's shaped reward h is not the claimed utility's: an unbiased baseline (leave-one-out, none) "
    "ascends E[R]; OPO's length-weighted mean includes the sample (arXiv 2505.23585); the best-of-group advantage "
    "ascends pass@G/G, ×1/(σ + ε) with the std, at π_old's p off-policy (arXiv 2503.19595)",
    "−c(∇_θ Σ π_θ sg[h] − ∇U)",
    _pred_mismatch,
    lambda ctx: _measure_utility(ctx, (LeaveOneOut, Raw, LengthWeightedCentered, PassAtK))))


# ================================================================================================ KL in the reward
def _score_penalties(ctx, stale: bool) -> Tensor:
    """S + T: Σ ρ π_θ(y) K(y) ∇log π(y) + Σ ρ π_θ(y) Σ_t tp_t(y) ∇log π_t, with δ from π_old (stale) or π_θ."""
    return ctx.score(ctx.fused_penalty(stale)) + ctx.on_theta_rows(ctx.token_penalty(stale))


def _measure_fusion(ctx) -> Optional[Tensor]:
    """−c(H_v − H_r + β S_old): the advantage of r − βK against its advantage of r minus βK."""
    if not ctx.fused:
        return None
    H_v = ctx.score(ctx.shaped(fused=True))
    H_r = ctx.score(ctx.shaped(fused=False))
    return -ctx.c * (H_v - H_r + ctx.beta * ctx.score(ctx.fused_penalty(stale=True)))


register(BiasTerm(
    "fusion_before_normalization",
    "a KL fused into the reward before a group advantage is normalized with it (FRPO arXiv 2601.10201 Prop. 3.2; "
    "a leave-in mean shrinks it by 1 − 1/G)",
    "−c(∇Σπ_θ sg[h_{r−βK}] − ∇Σπ_θ sg[h_r] + β∇_score Σπ_θ K)",
    lambda m, s: _fused(m) and not isinstance(m.advantage, (LeaveOneOut, Raw, TokenWhitened)),
    _measure_fusion))


def _measure_stale(ctx) -> Optional[Tensor]:
    if not (ctx.kl_on and isinstance(ctx.method.kl, (KLReward, FutureReturn))):
        return None
    return ctx.c * ctx.beta * (_score_penalties(ctx, True) - _score_penalties(ctx, False))


register(BiasTerm(
    "stale_kl_reward",
    "off-policy: a KL used as a reward holds π_old's log-ratios, not π_θ's",
    "cβ[(S + T)(δ^old) − (S + T)(δ^θ)], S = ∇_score Σπ_θ K, T = E_{π_θ}[Σ_t tp_t ∇log π_t]",
    lambda m, s: s.off_policy and _kl_on(m) and isinstance(m.kl, (KLReward, FutureReturn)),
    _measure_stale))


def _measure_reward_kl(ctx, kind) -> Optional[Tensor]:
    if not (ctx.kl_on and isinstance(ctx.method.kl, kind)):
        return None
    return ctx.c * ctx.beta * (_score_penalties(ctx, False) - ctx.grad_d)


register(BiasTerm(
    "k_in_reward",
    "a KL estimate as a detached reward follows its own score-function gradient, ∇KL only for k1 (Tang & Munos "
    "arXiv 2506.09477)",
    "cβ((S + T)(δ^θ) − ∇D)",
    lambda m, s: (_kl_on(m) and isinstance(m.kl, KLReward)
                  and (m.kl.estimator is not Estimator.K1 or not _claims_sequence_kl(m.objective))),
    lambda ctx: _measure_reward_kl(ctx, KLReward)))

register(BiasTerm(
    "regularizer_mismatch",
    "FRPO's future return of an f-divergence follows ∇Σ_t E D_f, not the claimed regularizer (FRPO arXiv "
    "2601.10201 Thm 4.1)",
    "cβ(T(δ^θ) − ∇D), T = E_{π_θ}[Σ_t ∇log π_t ([f'(u_t) − f'(1)] + Σ_{j>t} f(u_j)/u_j)]",
    lambda m, s: _kl_on(m) and isinstance(m.kl, FutureReturn) and not _future_return_matches(m.kl, m.objective),
    lambda ctx: _measure_reward_kl(ctx, FutureReturn)))


# ================================================================================================ KL as a loss
@dataclass(frozen=True)
class _KLFields:
    """The local fields F[d, ν, c] = Σ_x ρ Σ_s d(s) Σ_a ν(a|s) c(a|s) ∇log π_θ(a|s) of a KL loss, times cβ.

    d* is the objective's state distribution: π_θ's (sequence level), or π_old's for a local objective."""

    old_old: Tensor  # cβ F[d_old, π_old, κ]: what the loss follows on π_old's tokens
    old_theta: Tensor  # cβ F[d_old, π_θ, c̄]
    star_theta: Tensor  # cβ F[d*, π_θ, c̄]
    star_reverse: Tensor  # cβ F[d*, π_θ, δ] = cβ PG_rev
    grad_d: Tensor  # cβ ∇D
    plain_k1: bool
    local: bool


def _kl_fields(ctx) -> Optional[_KLFields]:
    kl = ctx.method.kl
    if not (ctx.kl_on and isinstance(kl, KLLoss)):
        return None
    if "kl_fields" not in ctx.extras:
        kappa, cbar = ref_.kl_loss_coefficients(kl, ctx.node_delta, ctx.node_log_rho)
        local = ctx.objective.level is Level.LOCAL
        old, theta = ctx.behaviour, ctx.policy
        star = old if local else theta
        cb = ctx.c * ctx.beta
        ctx.extras["kl_fields"] = _KLFields(
            cb * ctx.node_field(old, old, kappa), cb * ctx.node_field(old, theta, cbar),
            cb * ctx.node_field(star, theta, cbar), cb * ctx.node_field(star, theta, ctx.node_delta),
            cb * ctx.grad_d, _plain_k1(kl), local)
    return ctx.extras["kl_fields"]


def _measure_miw(ctx) -> Optional[Tensor]:
    F = _kl_fields(ctx)
    return None if F is None else F.old_old - F.old_theta


def _measure_state_shift(ctx) -> Optional[Tensor]:
    F = _kl_fields(ctx)
    return None if F is None or F.local else F.old_theta - F.star_theta


def _measure_no_kl(ctx) -> Optional[Tensor]:
    F = _kl_fields(ctx)
    return None if F is None or not F.plain_k1 else F.star_theta - F.grad_d


def _measure_forward(ctx) -> Optional[Tensor]:
    F = _kl_fields(ctx)
    return None if F is None or F.plain_k1 else F.star_theta - F.star_reverse


def _measure_future(ctx) -> Optional[Tensor]:
    F = _kl_fields(ctx)
    return None if F is None or F.plain_k1 else F.star_reverse - F.grad_d


def _pred_kl_loss(m) -> bool:
    return _kl_loss(m) and m.objective.has_regularizer


register(BiasTerm(
    "missing_importance_weight",
    "a KL loss on tokens from π_old without ρ = π_θ/π_old (RPG arXiv 2505.17508 §2.2)",
    "cβ(F[d_old, π_old, κ] − F[d_old, π_θ, c̄])",
    lambda m, s: s.off_policy and _kl_loss(m) and not m.kl.importance_weight,
    _measure_miw))

register(BiasTerm(
    "state_distribution_shift",
    "off-policy: a per-token KL loss weighs states by π_old's visitation, the sequence KL by π_θ's",
    "cβ(F[d_old, π_θ, c̄] − F[d_θ, π_θ, c̄])",
    lambda m, s: (s.off_policy and _pred_kl_loss(m) and not _plain_k1(m.kl)
                  and m.objective.level is Level.SEQUENCE),
    _measure_state_shift))

register(BiasTerm(
    "no_kl_gradient",
    "k1 as a loss has zero expected gradient: nothing regularizes (Tang & Munos arXiv 2506.09477)",
    "cβ(F[d*, π_θ, 1] − ∇D) = −cβ∇D",
    lambda m, s: _pred_kl_loss(m) and _plain_k1(m.kl),
    _measure_no_kl))

register(BiasTerm(
    "forward_direction",
    "the KL loss's local field is not the reverse-KL gradient: k3 as a loss follows ∇KL(π_ref‖π), the forward "
    "direction (RPG arXiv 2505.17508 §2.3)",
    "cβ(F[d*, π_θ, c̄] − F[d*, π_θ, δ])",
    lambda m, s: _pred_kl_loss(m) and not _plain_k1(m.kl) and not _reverse_field(m.kl),
    _measure_forward))

register(BiasTerm(
    "future_kl_missing",
    "a per-token KL loss follows the local KL gradient PG_rev (state distribution held fixed), missing the "
    "future-KL score term of the sequence KL (FRPO arXiv 2601.10201 Prop. 4.3)",
    "cβ(F[d*, π_θ, δ] − ∇D)",
    lambda m, s: _pred_kl_loss(m) and not _plain_k1(m.kl) and m.objective.level is Level.SEQUENCE,
    _measure_future))


# ================================================================================================ RPG's own KL
def _measure_rpg_kl(ctx) -> Optional[Tensor]:
    """−c·E_{π_old}[Σ_t K(φ_t)∇log π_t] − cβ∇D, K(φ) = Weight(φ, A = 0) (the RPG surrogate's KL part)."""
    pl = ctx.method.policy_loss
    if not isinstance(pl, RPG) or ctx.beta == 0:
        return None
    log_phi = ctx.log_rho if pl.level is RPGLevel.TOKEN else ctx.log_w.expand(ctx.shape)
    K = ref_.rpg_weight(pl.divergence, log_phi.exp(), log_phi, torch.zeros_like(log_phi), ctx.beta)
    return -ctx.c * ctx.on_old_rows(K) - ctx.c * ctx.beta * ctx.grad_d


register(BiasTerm(
    "token_level_reverse",
    "token-level reverse-KL RPG surrogate: each token's own ratio under π_old's states is not the sequence "
    "KL(π‖π_old) off-policy (RPG arXiv 2505.17508 §3)",
    "−c·E_{π_old}[Σ_t K(ρ_t) ∇log π_t] − cβ∇D, K(w) = RPG's Weight at A = 0",
    lambda m, s: (s.off_policy and isinstance(m.policy_loss, RPG) and m.policy_loss.level is RPGLevel.TOKEN
                  and m.policy_loss.divergence.is_reverse and m.beta > 0),
    _measure_rpg_kl))
