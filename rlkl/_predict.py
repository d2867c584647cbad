"""Which named bias terms the theory predicts for a Method (interim home; the audit's term objects replace it).

Each term's meaning is in ``BIAS_TERMS`` (and docs/audit.md).
"""

from __future__ import annotations

from rlkl.components import (CISPO, GSPO, RPG, AggMode, BatchStandardized, Estimator, FutureReturn, GPGAdvantage,
                             GroupCentered, GroupStandardized, KLLoss, KLReward, LengthWeightedCentered, PassAtK,
                             PPOClip, Reinforce, RewardForm, RPGLevel, TokenWhitened)
from rlkl.objective import Level, Regularizer, Utility

BIAS_TERMS = {
    "finite_group_utility": "GRPO std-normalization ascends U_G(p) (→ 2·arcsin√p), not p (FRPO arXiv 2601.10201 Prop. 3.1)",
    "leave_in_shrink": "group mean includes the sample: reward gradient × (1 − 1/G)",
    "no_kl_gradient": "k1 as a loss has zero expected gradient (Tang & Munos arXiv 2506.09477)",
    "forward_direction": "k3 as a loss follows ∇KL(π_ref‖π), the forward direction (RPG arXiv 2505.17508 §2.3)",
    "future_kl_missing": "per-token KL loss misses the future-KL score term of the sequence KL (FRPO Prop. 4.3)",
    "missing_importance_weight": "KL loss under π_old without ρ = π/π_old (RPG arXiv 2505.17508 §2.2)",
    "fusion_before_normalization": "KL fused into the reward before group standardization (FRPO Prop. 3.2)",
    "k_in_reward": "k2/k3 as a detached reward is not the score-function form of KL",
    "token_level_reverse": "token-level reverse-KL RPG surrogate ≠ sequence reverse KL off-policy",
    "length_normalization": "1/|y| per-sequence normalization weights responses by length (Dr. GRPO arXiv 2503.20783)",
    "clipping": "off-policy clipping zeroes the gradient of clipped samples",
    "batch_normalization": "batch-level std normalization couples prompts",
    "token_level_ratio": "off-policy: per-token ratios w_t (or none) instead of the sequence ratio",
    "stale_kl_reward": "off-policy: the reward-side KL uses π_old's log-ratios, not π_θ's",
    "utility_mismatch": "the advantage's shaped reward E[A | r] is not the intended utility's derivative",
}


def _advantage_terms(m, off_policy: bool) -> list[str]:
    adv, obj = m.advantage, m.objective
    if isinstance(adv, GroupStandardized) and (obj.utility is not Utility.FINITE_GROUP or off_policy):
        return ["finite_group_utility"]  # finite G is never arcsin; off-policy w_G is evaluated at π_old's p
    if isinstance(adv, GroupCentered) and obj.utility is not Utility.LEAVE_IN:
        return ["leave_in_shrink"]
    if isinstance(adv, (BatchStandardized, TokenWhitened)):
        return ["batch_normalization"]
    if isinstance(adv, PassAtK) and (obj.utility is not Utility.PASS_AT_K or adv.normalize):
        return ["utility_mismatch"]  # pass@G/G times κ_G = 1/(σ_G + ε) with the std
    if isinstance(adv, (LengthWeightedCentered, GPGAdvantage)) and obj.utility is not Utility.LEAVE_IN:
        return ["utility_mismatch"]  # OPO: the leave-in group mean on equal lengths; GPG: × α
    return []


def _kl_terms(m, off_policy: bool) -> list[str]:
    pl, kl, obj = m.policy_loss, m.kl, m.objective
    terms: list[str] = []
    if isinstance(pl, RPG):
        if pl.level is RPGLevel.TOKEN and pl.divergence.is_reverse and off_policy:
            terms.append("token_level_reverse")
        if pl.clip is not None and off_policy:
            terms.append("clipping")
        return terms
    if not (m.beta > 0 and obj.regularizer is not Regularizer.NONE):
        return terms
    if isinstance(kl, KLLoss):
        plain = not (kl.importance_weight or kl.straight_through)
        if kl.estimator is Estimator.K1 and plain:
            terms.append("no_kl_gradient")
        else:
            if kl.estimator is Estimator.K3 and plain:
                terms.append("forward_direction")
            if obj.level is Level.SEQUENCE:
                terms.append("future_kl_missing")
        if off_policy and not kl.importance_weight:
            terms.append("missing_importance_weight")
    elif isinstance(kl, KLReward):
        if kl.estimator is not Estimator.K1:
            terms.append("k_in_reward")
        if kl.form is RewardForm.FUSED and isinstance(m.advantage, (GroupStandardized, BatchStandardized)):
            terms.append("fusion_before_normalization")
    if off_policy and isinstance(kl, (KLReward, FutureReturn)):
        terms.append("stale_kl_reward")
    return terms


def predicted_bias_terms(m, off_policy: bool = False, variable_length: bool = False) -> tuple[str, ...]:
    """The names (keys of ``BIAS_TERMS``) predicted for Method ``m`` in the given setting."""
    terms = _advantage_terms(m, off_policy) + _kl_terms(m, off_policy)
    pl = m.policy_loss
    if off_policy and (isinstance(pl, (Reinforce, PPOClip, GSPO, CISPO)) or
                       (isinstance(pl, RPG) and pl.level is RPGLevel.TOKEN)):
        terms.append("token_level_ratio")  # per-token (or no) ratios instead of the sequence ratio
    if off_policy and isinstance(pl, (PPOClip, GSPO, CISPO)):
        terms.append("clipping")
    if variable_length and m.aggregation.mode in (AggMode.TOKEN_MEAN, AggMode.SEQ_MEAN_TOKEN_MEAN):
        terms.append("length_normalization")
    return tuple(dict.fromkeys(terms))
