"""Methods: an explicit, typed choice of advantage, KL estimator, KL placement, importance weighting, policy loss,
clipping and aggregation — plus the objective the method *intends* to optimize and the one rlkl predicts it
actually follows.

``Method.loss(logp, batch)`` is the single implementation run by the exact engine (``rlkl.toy``), the Monte
Carlo simulator and the LM trainer (``rlkl.lm``). ``from_verl`` / ``from_trl`` translate those frameworks' flag
sets (spec/peers.md, with their defaults) into Methods, so a user can ask what their config really optimizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import torch
from torch import Tensor

from rlkl._checks import check_choice, check_float, check_group_size, check_token_tensors
from rlkl.advantages import ADVANTAGE_KINDS, compute_advantages, frpo_regularizer, reward_to_go
from rlkl.divergences import F_DIVERGENCE_NAMES, KL_ESTIMATORS, kl_estimate
from rlkl.losses import (AGGREGATION_MODES, RPG_DIVERGENCES, PolicyLossOutput, RPGClip, aggregate, gspo_loss,
                         kl_loss, masked_mean, ppo_clip_loss, reinforce_loss, rpg_loss)

KLPlacement = Literal["none", "reward", "reward_to_go", "loss", "future_return"]
KL_PLACEMENTS: tuple[str, ...] = ("none", "reward", "reward_to_go", "loss", "future_return")
PolicyLossKind = Literal["reinforce", "ppo_clip", "gspo", "rpg"]
POLICY_LOSSES: tuple[str, ...] = ("reinforce", "ppo_clip", "gspo", "rpg")
GROUP_ADVANTAGES = ("group_standardized", "group_centered", "leave_one_out")

UTILITIES = ("expected_reward", "leave_in", "arcsin", "finite_group", "none")
REGULARIZERS = ("none", "reverse_kl", "forward_kl", "unnormalized_reverse_kl", "unnormalized_forward_kl",
                "token_f_divergence")

# Named bias terms the specs predict (see docs/audit.md); `Method.predicted_bias_terms` returns a subset.
BIAS_TERMS = {
    "finite_group_utility": "GRPO std-normalization ascends U_G(p) (→ 2·arcsin√p), not p (FRPO Prop. 3.1; frpo.md §0)",
    "leave_in_shrink": "group mean includes the sample: reward gradient × (1 − 1/G) (rpg.md §1.8(2))",
    "no_kl_gradient": "k1 as a loss has zero expected gradient (Tang & Munos 2506.09477)",
    "forward_direction": "k3 as a loss follows ∇KL(π_ref‖π), the forward direction (rpg.md §2.3)",
    "future_kl_missing": "per-token KL loss misses the future-KL score term of the sequence KL (FRPO Prop. 4.3)",
    "missing_importance_weight": "KL loss under π_old without ρ = π/π_old (RPG §2.2; verl §1.10(3))",
    "fusion_before_normalization": "KL fused into the reward before group standardization (FRPO Prop. 3.2)",
    "k_in_reward": "k2/k3 as a detached reward is not the score-function form of KL (frpo.md §4.5)",
    "token_level_reverse": "token-level reverse-KL RPG surrogate ≠ sequence reverse KL off-policy (rpg.md §1.8(5))",
    "length_normalization": "1/|y| per-sequence normalization weights responses by length (Dr. GRPO 2503.20783)",
    "clipping": "off-policy clipping zeroes the gradient of clipped samples (rpg.md §8.28)",
    "batch_normalization": "batch-level std normalization couples prompts",
    "token_level_ratio": "off-policy: per-token ratios w_t (or none) instead of the sequence ratio (rpg.md §8.32)",
    "stale_kl_reward": "off-policy: the reward-side KL uses π_old's log-ratios, not π_θ's",
}


@dataclass(frozen=True)
class Objective:
    """An objective J(θ) = utility(success probability / reward) − β · regularizer (β, G, std, ε from the Method).

    Attributes:
      utility: ``expected_reward`` (E[R]); ``leave_in`` ((1 − 1/G)·E[R], a leave-in group-mean baseline);
        ``arcsin`` (E_x 2·arcsin√p_x, GRPO's G → ∞ utility; binary rewards); ``finite_group`` (E_x U_G(p_x), the
        exact finite-group utility of ``rlkl.utility``; binary rewards); ``none``.
      regularizer: ``reverse_kl`` KL(π‖anchor), ``forward_kl`` KL(anchor‖π), their ``unnormalized_*`` versions
        (RPG's UKL), ``token_f_divergence`` (FRPO: E_{y~π} Σ_t D_f(π(·|s_t)‖anchor(·|s_t))), or ``none``.
      level: ``sequence`` — the divergence of the whole response distribution (states visited by π); ``local`` —
        Σ_s d(s) D(π(·|s)‖anchor(·|s)) with the state distribution d held fixed when differentiating (what a
        per-token loss-side penalty follows).
      anchor: ``ref`` (π_ref) or ``old`` (the behaviour policy π_old, RPG's iterative reference).
      f_divergence: f name for ``token_f_divergence``.
    """

    utility: str = "expected_reward"
    regularizer: str = "reverse_kl"
    level: str = "sequence"
    anchor: str = "ref"
    f_divergence: str | None = None

    def __post_init__(self):
        check_choice("utility", self.utility, UTILITIES)
        check_choice("regularizer", self.regularizer, REGULARIZERS)
        check_choice("level", self.level, ("sequence", "local"))
        check_choice("anchor", self.anchor, ("ref", "old"))
        if self.regularizer == "token_f_divergence" and self.f_divergence is None:
            raise ValueError("token_f_divergence needs f_divergence")

    def describe(self) -> str:
        u = {"expected_reward": "E[R]", "leave_in": "(1-1/G)E[R]", "arcsin": "E 2asin(sqrt p)",
             "finite_group": "E U_G(p)", "none": "0"}[self.utility]
        if self.regularizer == "none":
            return u
        anchor = "pi_ref" if self.anchor == "ref" else "pi_old"
        reg = {"reverse_kl": f"KL(pi||{anchor})", "forward_kl": f"KL({anchor}||pi)",
               "unnormalized_reverse_kl": f"UKL(pi||{anchor})", "unnormalized_forward_kl": f"UKL({anchor}||pi)",
               "token_f_divergence": f"sum_t D_{self.f_divergence}(pi||{anchor})"}[self.regularizer]
        lvl = "" if self.level == "sequence" else " [local]"
        return f"{u} - beta*{reg}{lvl}"


@dataclass(frozen=True)
class RolloutBatch:
    """A batch of sampled responses in the ``[B, T]`` + mask layout of verl/TRL.

    Attributes:
      logp_old: ``[B, T]`` log π_old(a_t|s_t) of the sampled tokens under the behaviour (rollout) policy.
      logp_ref: ``[B, T]`` log π_ref(a_t|s_t) under the reference policy.
      mask: ``[B, T]`` bool, True on response tokens (EOS included), False on padding.
      rewards: ``[B]`` sequence-level (verifier) rewards.
      group_size: G; groups are contiguous blocks of G rows (B divisible by G).
    """

    logp_old: Tensor
    logp_ref: Tensor
    mask: Tensor
    rewards: Tensor
    group_size: int

    def __post_init__(self):
        B, _ = check_token_tensors(self.mask, logp_old=self.logp_old, logp_ref=self.logp_ref)
        check_float("rewards", self.rewards, shape=(B,))
        if self.rewards.dtype != self.logp_old.dtype:
            raise ValueError(f"rewards dtype {self.rewards.dtype} differs from logp_old dtype {self.logp_old.dtype}")
        check_group_size(B, self.group_size)

    @property
    def batch_size(self) -> int:
        return self.logp_old.shape[0]


@dataclass(frozen=True)
class Method:
    """A KL-regularized policy-gradient method, one typed field per orthogonal choice.

    Attributes:
      name: registry name.
      advantage: sequence-level advantage: ``group_standardized`` (GRPO), ``group_centered`` (Dr. GRPO, RPG code),
        ``leave_one_out`` (RLOO), ``batch_standardized``, ``raw`` (no baseline).
      adv_std: ``bessel`` (verl, TRL) or ``population`` (FRPO Alg. 1) std for standardization.
      adv_eps: ε in the standardization denominator (verl 1e-6, TRL 1e-4).
      kl_estimator: ``k1`` | ``k2`` | ``k3`` for ``loss``/``reward``/``reward_to_go`` placements.
      kl_straight_through: verl's ``+`` suffix (value of the estimator, gradient of k2); loss placement only.
      kl_placement: ``none``; ``reward`` (summed over the response and fused into the reward *before* the
        advantage, verl's GRPO ``use_kl_in_reward``); ``reward_to_go`` (per-token −β·k in the reward, future
        return, advantage of the task reward added after normalization: OpenRLHF/PPO style); ``loss`` (β·k added
        to the per-token loss); ``future_return`` (FRPO: advantage − β·future return of the f-divergence estimate).
      kl_importance_weight: multiply the KL loss by ρ = π/π_old (DeepSeek-V3.2; TRL ``use_bias_correction_kl``).
      kl_divergence: f-divergence of the ``future_return`` placement (see ``rlkl.divergences``).
      policy_loss: ``reinforce`` | ``ppo_clip`` | ``gspo`` | ``rpg`` (RPG surrogates; KL inside the surrogate,
        anchored to π_old, so ``kl_placement`` must be ``none``).
      rpg_divergence, rpg_form, rpg_level: RPG surrogate choice (see ``rlkl.losses.rpg_loss``).
      rpg_clip: RPG-Style Clip parameters, or None for the unclipped surrogate.
      clip_low, clip_high, dual_clip: PPO ε_low, ε_high and dual-clip c (None: off); GSPO uses clip_low/high.
      aggregation: loss aggregation mode (``rlkl.losses.AGGREGATION_MODES``); ``horizon``: its constant C.
      beta: β, the KL coefficient.
      objective: what the method *intends* to optimize (its documentation's claim).
      citation: where the method comes from.
      description: one line on what it is.
    """

    name: str
    advantage: str = "group_standardized"
    adv_std: str = "bessel"
    adv_eps: float = 1e-6
    kl_estimator: str = "k3"
    kl_straight_through: bool = False
    kl_placement: str = "none"
    kl_importance_weight: bool = False
    kl_divergence: str = "reverse_kl"
    policy_loss: str = "ppo_clip"
    rpg_divergence: str | None = None
    rpg_form: str = "reinforce"
    rpg_level: str = "token"
    rpg_clip: RPGClip | None = None
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    aggregation: str = "seq-mean-token-mean"
    horizon: int | None = None
    beta: float = 0.0
    objective: Objective = field(default_factory=Objective)
    citation: str = ""
    description: str = ""

    def __post_init__(self):
        check_choice("advantage", self.advantage, ADVANTAGE_KINDS)
        check_choice("adv_std", self.adv_std, ("bessel", "population"))
        check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        check_choice("kl_placement", self.kl_placement, KL_PLACEMENTS)
        check_choice("policy_loss", self.policy_loss, POLICY_LOSSES)
        check_choice("aggregation", self.aggregation, AGGREGATION_MODES)
        if self.kl_divergence not in F_DIVERGENCE_NAMES and not self.kl_divergence.startswith("alpha="):
            raise ValueError(f"kl_divergence={self.kl_divergence!r} is not one of {list(F_DIVERGENCE_NAMES)}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.adv_eps < 0:
            raise ValueError(f"adv_eps must be >= 0, got {self.adv_eps}")
        if self.kl_straight_through and self.kl_placement != "loss":
            raise ValueError("kl_straight_through only applies to kl_placement='loss'")
        if self.kl_importance_weight and self.kl_placement != "loss":
            raise ValueError("kl_importance_weight only applies to kl_placement='loss'")
        if self.policy_loss == "rpg":
            check_choice("rpg_divergence", self.rpg_divergence, RPG_DIVERGENCES)
            check_choice("rpg_form", self.rpg_form, ("differentiable", "reinforce"))
            check_choice("rpg_level", self.rpg_level, ("token", "sequence"))
            if self.kl_placement != "none":
                raise ValueError("RPG surrogates carry their own KL (anchored to π_old): kl_placement must be 'none'")
            if self.rpg_level == "sequence" and self.aggregation != "seq-mean-token-sum":
                raise ValueError("sequence-level RPG losses are spread over tokens: use aggregation='seq-mean-token-sum'")
        elif self.rpg_divergence is not None:
            raise ValueError("rpg_divergence is set but policy_loss is not 'rpg'")
        if not (0 < self.clip_low < 1 and self.clip_high > 0):
            raise ValueError(f"need 0 < clip_low < 1 and clip_high > 0, got {self.clip_low}, {self.clip_high}")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1, got {self.dual_clip}")

    # -- descriptive properties ------------------------------------------------------------------------------
    @property
    def is_group_based(self) -> bool:
        """True when the advantage needs groups of G >= 2 responses per prompt."""
        return self.advantage in GROUP_ADVANTAGES

    @property
    def uses_reference(self) -> bool:
        """True when the method needs π_ref log-probs (a KL to the reference with β > 0)."""
        return self.policy_loss != "rpg" and self.kl_placement != "none" and self.beta > 0

    def replace(self, **changes: Any) -> "Method":
        """A copy with some fields changed (``dataclasses.replace``); validation runs again."""
        return dataclasses.replace(self, **changes)

    def kl_description(self) -> str:
        if self.policy_loss == "rpg":
            return f"{self.rpg_divergence} to pi_old ({self.rpg_form}, {self.rpg_level})"
        if self.kl_placement == "none" or self.beta == 0:
            return "none"
        if self.kl_placement == "future_return":
            return f"{self.kl_divergence} future return"
        est = self.kl_estimator + ("+" if self.kl_straight_through else "")
        return f"{est} {self.kl_placement}"

    # -- the computation -------------------------------------------------------------------------------------
    def _check(self, logp: Tensor, batch: RolloutBatch) -> None:
        if not isinstance(batch, RolloutBatch):
            raise ValueError(f"batch must be a RolloutBatch, got {type(batch).__name__}")
        check_float("logp", logp, shape=batch.logp_old.shape)
        if logp.dtype != batch.logp_old.dtype:
            raise ValueError(f"logp dtype {logp.dtype} differs from the batch's {batch.logp_old.dtype}")
        if self.is_group_based and batch.group_size < 2:
            raise ValueError(f"method {self.name!r} uses a group-based advantage ({self.advantage}) and needs "
                             f"group_size >= 2, got {batch.group_size}")

    def sequence_advantages(self, batch: RolloutBatch) -> Tensor:
        """``[B]`` sequence-level advantage, including a KL fused into the reward (``kl_placement='reward'``)."""
        rewards = batch.rewards
        if self.kl_placement == "reward" and self.beta > 0:
            # rollout-time KL estimate (verl: log π_old − log π_ref), detached, summed over the response
            log_ratio = (batch.logp_old - batch.logp_ref).detach()
            seq_kl = (kl_estimate(log_ratio, self.kl_estimator) * batch.mask).sum(-1)  # [B]
            rewards = rewards - self.beta * seq_kl
        return compute_advantages(self.advantage, rewards, batch.group_size, self.adv_eps, self.adv_std)

    def advantages(self, batch: RolloutBatch, sequence_advantages: Tensor | None = None) -> Tensor:
        """``[B, T]`` token advantages used by the policy loss (no gradient; zero on padding).

        Includes the reward-side KL placements (``reward``, ``reward_to_go``, ``future_return``), computed from
        the rollout log-probs ``logp_old`` as verl/OpenRLHF/FRPO do. ``sequence_advantages`` lets a caller that
        already has :meth:`sequence_advantages` for this batch pass it instead of recomputing it.
        """
        mask = batch.mask
        seq_adv = self.sequence_advantages(batch) if sequence_advantages is None else sequence_advantages
        adv = seq_adv[:, None].expand_as(batch.logp_old) * mask  # [B, T]
        if self.beta > 0 and self.policy_loss != "rpg":
            log_ratio = (batch.logp_old - batch.logp_ref).detach()  # sg[·]: a reward, not a loss
            if self.kl_placement == "reward_to_go":
                per_token = kl_estimate(log_ratio, self.kl_estimator)  # [B, T]
                adv = adv - self.beta * reward_to_go(per_token, mask)
            elif self.kl_placement == "future_return":
                adv = adv - self.beta * frpo_regularizer(log_ratio, mask, self.kl_divergence, include_local=True)
        return adv.detach()

    def policy_loss_terms(self, logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor) -> PolicyLossOutput:
        """The per-token policy-loss part for given ``[B, T]`` advantages (before the KL loss and aggregation).

        Dispatches to :func:`rlkl.losses.reinforce_loss`, :func:`~rlkl.losses.ppo_clip_loss`,
        :func:`~rlkl.losses.gspo_loss` or :func:`~rlkl.losses.rpg_loss` with this Method's clip / RPG fields.
        """
        if self.policy_loss == "reinforce":
            return reinforce_loss(logp, advantages, mask, logp_old=logp_old)
        if self.policy_loss == "ppo_clip":
            return ppo_clip_loss(logp, logp_old, advantages, mask, self.clip_low, self.clip_high, self.dual_clip)
        if self.policy_loss == "gspo":
            return gspo_loss(logp, logp_old, advantages, mask, self.clip_low, self.clip_high)
        return rpg_loss(logp, logp_old, advantages, mask, self.rpg_divergence, self.rpg_form, self.beta,
                        self.rpg_level, self.rpg_clip)

    def loss_given_advantages(self, logp: Tensor, logp_old: Tensor, mask: Tensor, advantages: Tensor,
                              logp_ref: Tensor | None = None, token_weights: Tensor | None = None
                              ) -> tuple[Tensor, dict[str, Tensor]]:
        """aggregate(policy loss + β·KL loss) for ``[B, T]`` advantages computed elsewhere.

        The composition behind :meth:`loss`, for callers that see only part of a group (a trainer's micro-batch:
        the advantages come from :meth:`advantages` on the whole rollout). With
        ``advantages = self.advantages(batch)`` it equals ``self.loss(logp, batch)`` exactly.

        Args:
          logp: ``[B, T]`` log π_θ (differentiable); logp_old: ``[B, T]`` behaviour log-probs (data);
          mask: ``[B, T]`` bool; advantages: ``[B, T]`` (data).
          logp_ref: ``[B, T]`` reference log-probs; required for a KL loss (``kl_placement='loss'``, β > 0),
            otherwise used only for the ``kl/*`` diagnostics.
          token_weights: optional ``[B, T]`` non-negative data weights on the per-token *policy* loss (verl's
            ``rollout_is_weights``).
        Returns:
          (scalar loss, detached diagnostics: ``loss/policy``, ``loss/kl``, ``clip_fraction/*``, ``ratio/*`` and,
          when ``logp_ref`` is given, ``kl/k1|k2|k3``).
        """
        check_token_tensors(mask, logp=logp, logp_old=logp_old, advantages=advantages)
        out = self.policy_loss_terms(logp, logp_old, advantages, mask)
        per_token = out.loss
        if token_weights is not None:
            check_float("token_weights", token_weights, shape=logp.shape)
            if bool((token_weights < 0).any()):
                raise ValueError("token_weights must be non-negative")
            per_token = per_token * token_weights.detach()  # data weights, no gradient
        kl_in_loss = self.kl_placement == "loss" and self.beta > 0
        if logp_ref is None and kl_in_loss:
            raise ValueError(f"method {self.name!r} has a KL loss towards π_ref: logp_ref is required")
        if logp_ref is not None:
            check_token_tensors(mask, logp=logp, logp_ref=logp_ref)
        kl_value = torch.zeros((), dtype=logp.dtype, device=logp.device)
        if kl_in_loss:
            kl_tok = kl_loss(logp, logp_ref, mask, self.kl_estimator, self.kl_straight_through, logp_old,
                             self.kl_importance_weight)  # [B, T]
            per_token = per_token + self.beta * kl_tok
            kl_value = aggregate(kl_tok.detach(), mask, self.aggregation, self.horizon)
        total = aggregate(per_token, mask, self.aggregation, self.horizon)
        with torch.no_grad():
            diagnostics = {
                "loss/policy": aggregate(out.loss.detach(), mask, self.aggregation, self.horizon),
                "loss/kl": kl_value,
                "clip_fraction/low": out.clip_fraction_low.detach(),
                "clip_fraction/high": out.clip_fraction_high.detach(),
                "clip_fraction/dual": out.dual_clip_fraction.detach(),
                "ratio/mean": out.ratio_mean.detach(),
                "ratio/min": out.ratio_min.detach(),
                "ratio/max": out.ratio_max.detach(),
            }
            if logp_ref is not None:
                log_ratio = (logp - logp_ref).detach()
                for k in ("k1", "k2", "k3"):
                    diagnostics[f"kl/{k}"] = masked_mean(kl_estimate(log_ratio, k), mask)
        return total, diagnostics

    def loss(self, logp: Tensor, batch: RolloutBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The method's scalar loss on a batch, and diagnostics.

        Args:
          logp: ``[B, T]`` log π_θ(a_t|s_t) of the sampled tokens under the current policy (differentiable).
          batch: the rollout (behaviour and reference log-probs, mask, rewards, group size).
        Returns:
          (loss, diagnostics). −∇_θ loss is the method's update direction; which objective it ascends (in
          expectation over rollouts) is ``self.objective`` when the method is exact, otherwise the terms of
          ``predicted_bias_terms`` describe the gap (checked exactly by ``rlkl.toy.audit``). Diagnostics are
          detached 0-dim tensors: ``loss/policy``, ``loss/kl`` (aggregated penalty before β), clip fractions,
          ratio statistics, ``kl/k1|k2|k3`` (token means of the estimates of log π_θ − log π_ref),
          ``advantage/mean|std``, ``zero_advantage_group_fraction``.
        """
        self._check(logp, batch)
        seq_adv = self.sequence_advantages(batch)
        total, diagnostics = self.loss_given_advantages(logp, batch.logp_old, batch.mask,
                                                        self.advantages(batch, seq_adv), batch.logp_ref)
        with torch.no_grad():
            G = batch.group_size
            per_group_max = seq_adv.view(-1, G).abs().amax(-1)
            diagnostics["advantage/mean"] = seq_adv.mean()
            diagnostics["advantage/std"] = seq_adv.std(correction=0)
            diagnostics["zero_advantage_group_fraction"] = (per_group_max == 0).to(logp.dtype).mean()
        return total, diagnostics

    # -- what rlkl predicts ---------------------------------------------------------------------------------
    def predicted_bias_terms(self, off_policy: bool = False, variable_length: bool = False) -> tuple[str, ...]:
        """The named bias terms (``BIAS_TERMS``) the specs predict between the expected update and −∇objective.

        Args:
          off_policy: samples come from π_old ≠ π_θ (K > 1 optimizer steps per batch).
          variable_length: responses have different lengths (EOS).
        """
        terms: list[str] = []
        obj = self.objective
        if self.advantage == "group_standardized" and (obj.utility != "finite_group" or off_policy):
            # finite G is never arcsin; off-policy the weight w_G is evaluated at π_old's success probability
            terms.append("finite_group_utility")
        if self.advantage == "group_centered" and obj.utility != "leave_in":
            terms.append("leave_in_shrink")
        if self.advantage == "batch_standardized":
            terms.append("batch_normalization")
        kl_on = self.beta > 0 and obj.regularizer != "none"
        if self.policy_loss == "rpg":
            if self.rpg_level == "token" and self.rpg_divergence in ("rkl", "urkl") and off_policy:
                terms.append("token_level_reverse")
            if self.rpg_clip is not None and off_policy:
                terms.append("clipping")
        elif kl_on:
            if self.kl_placement == "loss":
                if self.kl_estimator == "k1" and not self.kl_importance_weight and not self.kl_straight_through:
                    terms.append("no_kl_gradient")
                else:
                    if self.kl_estimator == "k3" and not self.kl_importance_weight and not self.kl_straight_through:
                        terms.append("forward_direction")
                    if obj.level == "sequence":
                        terms.append("future_kl_missing")
                if off_policy and not self.kl_importance_weight:
                    terms.append("missing_importance_weight")
            elif self.kl_placement in ("reward", "reward_to_go"):
                if self.kl_estimator != "k1":
                    terms.append("k_in_reward")
                if self.kl_placement == "reward" and self.advantage in ("group_standardized", "batch_standardized"):
                    terms.append("fusion_before_normalization")
            if off_policy and self.kl_placement in ("reward", "reward_to_go", "future_return"):
                terms.append("stale_kl_reward")  # the reward-side KL is computed from π_old's log-ratios
        if off_policy and (self.policy_loss in ("reinforce", "ppo_clip", "gspo")
                           or (self.policy_loss == "rpg" and self.rpg_level == "token")):
            terms.append("token_level_ratio")  # per-token (or no) ratios instead of the sequence ratio
        if off_policy and self.policy_loss in ("ppo_clip", "gspo"):
            terms.append("clipping")
        if variable_length and self.aggregation in ("seq-mean-token-mean", "token-mean"):
            terms.append("length_normalization")
        return tuple(dict.fromkeys(terms))

    def row(self) -> dict[str, str]:
        """The registry-table row of ``rlkl methods``."""
        loss = self.policy_loss
        if self.policy_loss == "ppo_clip":
            loss = f"ppo_clip({self.clip_low:g},{self.clip_high:g}" + (f",c={self.dual_clip:g})" if self.dual_clip else ")")
        elif self.policy_loss == "rpg":
            loss = f"rpg_{self.rpg_form}" + (f"+clip({self.rpg_clip.eps_low:g},{self.rpg_clip.eps_high:g},c={self.rpg_clip.c:g})"
                                            if self.rpg_clip else "")
        return {
            "name": self.name,
            "advantage": self.advantage + (f"({self.adv_std})" if "standardized" in self.advantage else ""),
            "kl": self.kl_description(),
            "is_weight": "yes" if self.kl_importance_weight else "-",
            "loss": loss,
            "aggregation": self.aggregation,
            "beta": f"{self.beta:g}",
            "intended objective": self.objective.describe(),
            "citation": self.citation,
        }


# ---------------------------------------------------------------------------------------------------------------
# registry

_REV_SEQ = Objective("expected_reward", "reverse_kl", "sequence", "ref")
_NO_KL = Objective("expected_reward", "none")


def _grpo(name: str, **kw) -> Method:
    base = dict(advantage="group_standardized", adv_std="bessel", adv_eps=1e-6, kl_estimator="k3",
                kl_placement="loss", policy_loss="ppo_clip", clip_low=0.2, clip_high=0.2, dual_clip=3.0,
                aggregation="seq-mean-token-mean", beta=0.04, objective=_REV_SEQ)
    base.update(kw)
    return Method(name=name, **base)


def _rpg(div: str, form: str, level: str = "token", clip: RPGClip | None = RPGClip(), **kw) -> Method:
    reg = {"fkl": "forward_kl", "rkl": "reverse_kl", "ufkl": "unnormalized_forward_kl",
           "urkl": "unnormalized_reverse_kl"}[div]
    prefix = "rpg_reinforce_" if form == "reinforce" else "rpg_"
    name = prefix + div + ("_seq" if level == "sequence" else "")
    props = {"fkl": ("E.1", "F.1"), "rkl": ("E.3", "F.4"), "ufkl": ("3.2", "F.3"), "urkl": ("3.6", "F.5")}[div]
    prop = props[0] if form == "differentiable" else props[1]
    base = dict(advantage="group_centered", policy_loss="rpg", rpg_divergence=div, rpg_form=form, rpg_level=level,
                rpg_clip=clip, aggregation="token-mean" if level == "token" else "seq-mean-token-sum", beta=1e-4,
                objective=Objective("expected_reward", reg, "sequence", "old"),
                citation=f"RPG arXiv 2505.17508 Prop. {prop}" + (", Alg. 2" if form == "reinforce" and clip else
                                                                  (", Alg. 1" if clip else "")),
                description=f"RPG {div.upper()} {form} surrogate, {level} level" + (" + RPG-Style Clip" if clip else ""))
    base.update(kw)
    return Method(name=name, **base)


def _build_registry() -> dict[str, Method]:
    methods = [
        Method("reinforce", advantage="raw", policy_loss="reinforce", aggregation="seq-mean-token-sum",
               objective=_NO_KL, citation="Williams 1992", description="REINFORCE on the sequence reward, no baseline"),
        Method("rloo", advantage="leave_one_out", policy_loss="reinforce", kl_estimator="k1", kl_placement="reward",
               aggregation="seq-mean-token-sum", beta=0.05, objective=_REV_SEQ,
               citation="Ahmadian et al. arXiv 2402.14740; TRL RLOOTrainer",
               description="leave-one-out baseline, k1 summed into the reward (unbiased: no std normalization)"),
        _grpo("no_kl", kl_placement="none", beta=0.0, objective=_NO_KL, citation="GRPO without KL (DAPO/Dr. GRPO practice)",
              description="GRPO advantage + PPO clip, no KL term"),
        _grpo("grpo", citation="DeepSeekMath arXiv 2402.03300 eq. 3; verl use_kl_loss low_var_kl; TRL beta>0",
              description="GRPO default: std-normalized advantage, PPO clip, k3 as a loss"),
        _grpo("grpo_k1_loss", kl_estimator="k1", citation="verl kl_loss_type=kl",
              description="GRPO with k1 as the KL loss"),
        _grpo("grpo_k2_loss", kl_estimator="k2", citation="verl kl_loss_type=mse; Liu et al. arXiv 2510.01555",
              description="GRPO with k2 as the KL loss"),
        _grpo("grpo_k3_plus", kl_straight_through=True, citation="verl kl_loss_type=low_var_kl+",
              description="GRPO with verl's k3+ (value k3, gradient k2)"),
        _grpo("grpo_is_k3", kl_importance_weight=True,
              citation="DeepSeek-V3.2; TRL use_bias_correction_kl; RPG arXiv 2505.17508 §2.2",
              description="GRPO with importance-weighted k3 loss (ρ·k3)"),
        _grpo("grpo_k1_reward", kl_estimator="k1", kl_placement="reward", beta=0.001,
              citation="verl use_kl_in_reward with adv_estimator=grpo (spec peers.md §1.3)",
              description="k1 summed into the reward before group standardization (fused)"),
        Method("ppo_k1_rtg", advantage="leave_one_out", kl_estimator="k1", kl_placement="reward_to_go",
               policy_loss="ppo_clip", aggregation="seq-mean-token-sum", beta=0.04, objective=_REV_SEQ,
               citation="Ziegler et al. arXiv 1909.08593; OpenRLHF kl in reward; Tang & Munos arXiv 2506.09477",
               description="per-token −β·k1 in the reward, causal reward-to-go, leave-one-out baseline"),
        _grpo("dr_grpo", advantage="group_centered", kl_placement="none", beta=0.0,
              aggregation="seq-mean-token-sum-norm", dual_clip=None, objective=_NO_KL,
              citation="Liu et al. arXiv 2503.20783 (Dr. GRPO); TRL loss_type=dr_grpo",
              description="group-centred advantage, constant normalizer, no KL"),
        _grpo("dapo", kl_placement="none", beta=0.0, clip_high=0.28, dual_clip=None, aggregation="token-mean",
              objective=_NO_KL, citation="Yu et al. arXiv 2503.14476 (DAPO); TRL default loss_type=dapo",
              description="clip-higher (0.2, 0.28), token-mean loss, no KL"),
        _grpo("gspo", kl_placement="none", beta=0.0, policy_loss="gspo", clip_low=3e-4, clip_high=4e-4,
              dual_clip=None, objective=_NO_KL, citation="Zheng et al. arXiv 2507.18071 (GSPO)",
              description="sequence-level ratio exp(mean log ρ), tiny clip range"),
        _grpo("frpo", adv_std="population", kl_placement="future_return", kl_divergence="reverse_kl",
              aggregation="seq-mean-token-sum", dual_clip=None, beta=0.01,
              objective=Objective("finite_group", "reverse_kl", "sequence", "ref"),
              citation="Yao et al. arXiv 2601.10201 (FRPO) Eq. 4.5, Alg. 1",
              description="GRPO advantage minus β × inclusive future sum of log ratios; no KL loss"),
        _grpo("frpo_k3", adv_std="population", kl_placement="future_return", kl_divergence="reverse_kl_k3",
              aggregation="seq-mean-token-sum", dual_clip=None, beta=0.01,
              objective=Objective("finite_group", "reverse_kl", "sequence", "ref"),
              citation="FRPO arXiv 2601.10201 Eq. 4.6 (k3 future terms, local δ_t)",
              description="FRPO with the k3 generator: local log ratio + strictly-future k3 sum"),
        _grpo("frpo_forward_kl", adv_std="population", kl_placement="future_return", kl_divergence="forward_kl",
              aggregation="seq-mean-token-sum", dual_clip=None, beta=0.01,
              objective=Objective("finite_group", "token_f_divergence", "sequence", "ref", "forward_kl"),
              citation="FRPO arXiv 2601.10201 Thm 4.1 (general f)",
              description="FRPO with the token-wise forward KL(π_ref‖π) summed along the trajectory"),
    ]
    for div in RPG_DIVERGENCES:
        methods.append(_rpg(div, "differentiable"))
    for div in RPG_DIVERGENCES:
        methods.append(_rpg(div, "reinforce"))
    for div in RPG_DIVERGENCES:
        methods.append(_rpg(div, "reinforce", level="sequence", clip=None, advantage="leave_one_out"))
    return {m.name: m for m in methods}


REGISTRY: dict[str, Method] = _build_registry()


def get_method(name: str) -> Method:
    """The registered Method called ``name`` (see ``rlkl methods``)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def list_methods() -> list[str]:
    return list(REGISTRY)


# ---------------------------------------------------------------------------------------------------------------
# translations of peer flag sets


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


_VERL_KL = {"kl": ("k1", False), "k1": ("k1", False), "mse": ("k2", False), "k2": ("k2", False),
            "low_var_kl": ("k3", False), "k3": ("k3", False)}


def _verl_kl(name: str) -> tuple[str, bool]:
    plus = name.endswith("+")
    base = name[:-1] if plus else name
    if base not in _VERL_KL:
        raise ValueError(f"verl KL type {name!r} has no rlkl equivalent (supported: kl/k1, mse/k2, low_var_kl/k3, "
                         "with optional '+')")
    est, _ = _VERL_KL[base]
    return est, plus and est != "k2"


def from_verl(cfg: Mapping[str, Any], name: str = "verl_config") -> Method:
    """Translate a verl PPO/GRPO config (nested dict or dotted keys) into a Method, with verl's defaults.

    Keys read (defaults from verl ``1dda039``, spec/peers.md §1): ``algorithm.adv_estimator`` (``gae``; rlkl has
    no critic, so only ``grpo``, ``rloo`` are accepted), ``algorithm.norm_adv_by_std_in_grpo`` (True),
    ``algorithm.use_kl_in_reward`` (False), ``algorithm.kl_penalty`` (``kl``), ``algorithm.kl_ctrl.kl_coef``
    (0.001), ``actor_rollout_ref.actor.{use_kl_loss (False), kl_loss_type (low_var_kl), kl_loss_coef (0.001),
    clip_ratio (0.2), clip_ratio_low, clip_ratio_high, clip_ratio_c (3.0), loss_agg_mode (token-mean),
    policy_loss.loss_mode (vanilla), loss_scale_factor}``. ``actor.`` is accepted as a short prefix.

    The intended objective is what verl's docs claim: E[R] − β·KL(π‖π_ref).
    """
    flat = _flatten(cfg)
    flat = {k.replace("actor_rollout_ref.actor.", "actor."): v for k, v in flat.items()}
    known = {"algorithm.adv_estimator", "algorithm.norm_adv_by_std_in_grpo", "algorithm.use_kl_in_reward",
             "algorithm.kl_penalty", "algorithm.kl_ctrl.kl_coef", "algorithm.kl_ctrl.type", "actor.use_kl_loss",
             "actor.kl_loss_type", "actor.kl_loss_coef", "actor.clip_ratio", "actor.clip_ratio_low",
             "actor.clip_ratio_high", "actor.clip_ratio_c", "actor.loss_agg_mode", "actor.policy_loss.loss_mode",
             "actor.loss_scale_factor", "actor.ppo_epochs", "algorithm.gamma", "algorithm.lam"}
    unknown = sorted(set(flat) - known)
    if unknown:
        raise ValueError(f"from_verl does not know the keys {unknown}; known: {sorted(known)}")
    g = flat.get
    adv_est = g("algorithm.adv_estimator", "gae")
    if adv_est == "grpo":
        advantage = "group_standardized" if g("algorithm.norm_adv_by_std_in_grpo", True) else "group_centered"
    elif adv_est == "rloo":
        advantage = "leave_one_out"
    else:
        raise ValueError(f"adv_estimator={adv_est!r} is not translatable (rlkl has no critic/value model); "
                         "use 'grpo' or 'rloo'")
    in_reward = bool(g("algorithm.use_kl_in_reward", False))
    in_loss = bool(g("actor.use_kl_loss", False))
    if in_reward and in_loss:
        raise ValueError("use_kl_in_reward and use_kl_loss together: rlkl Methods take one KL placement")
    if g("algorithm.kl_ctrl.type", "fixed") != "fixed":
        raise ValueError("only algorithm.kl_ctrl.type='fixed' is translatable (adaptive β changes over training)")
    est, plus, placement, beta = "k3", False, "none", 0.0
    if in_reward:
        est, plus = _verl_kl(g("algorithm.kl_penalty", "kl"))
        if plus:
            raise ValueError("a '+' KL type only changes gradients; in the reward it is detached")
        placement, beta = "reward", float(g("algorithm.kl_ctrl.kl_coef", 0.001))
    elif in_loss:
        est, plus = _verl_kl(g("actor.kl_loss_type", "low_var_kl"))
        placement, beta = "loss", float(g("actor.kl_loss_coef", 0.001))
    mode = g("actor.policy_loss.loss_mode", "vanilla")
    clip = float(g("actor.clip_ratio", 0.2))
    clip_low = float(g("actor.clip_ratio_low", None) or clip)
    clip_high = float(g("actor.clip_ratio_high", None) or clip)
    if mode == "vanilla":
        policy, dual = "ppo_clip", float(g("actor.clip_ratio_c", 3.0))
    elif mode == "gspo":
        policy, dual = "gspo", None
    elif mode == "gpg":
        policy, dual = "reinforce", None
    else:
        raise ValueError(f"loss_mode={mode!r} is not translatable (supported: vanilla, gspo, gpg)")
    agg = "seq-mean-token-mean" if mode == "gspo" else g("actor.loss_agg_mode", "token-mean")
    if agg == "token-sum":
        raise ValueError("loss_agg_mode='token-sum' is not supported (it depends on the data-parallel size)")
    horizon = g("actor.loss_scale_factor", None)
    return Method(name=name, advantage=advantage, adv_std="bessel", adv_eps=1e-6, kl_estimator=est,
                  kl_straight_through=plus, kl_placement=placement, policy_loss=policy, clip_low=clip_low,
                  clip_high=clip_high, dual_clip=dual, aggregation=agg,
                  horizon=int(horizon) if horizon is not None else None, beta=beta,
                  objective=_REV_SEQ if beta > 0 else _NO_KL, citation="verl config",
                  description=f"translated from verl flags: {dict(sorted(flat.items()))}")


def from_trl(cfg: Mapping[str, Any], name: str = "trl_config", trl_version: str = "1.16") -> Method:
    """Translate TRL ``GRPOConfig`` arguments (a dict) into a Method, with TRL's defaults.

    Keys read (defaults from TRL 1.10–1.16, spec/peers.md §2.1): ``beta`` (0.0), ``loss_type`` (``dapo``),
    ``epsilon`` (0.2), ``epsilon_high`` (None → epsilon), ``scale_rewards`` (``group``; True/False → group/none),
    ``importance_sampling_level`` (``token``), ``use_bias_correction_kl`` (True from TRL 1.11 on — PR #6503 —,
    False before: pass ``trl_version="1.10"`` for the old default), ``max_completion_length`` (512, the Dr. GRPO
    constant), ``num_generations`` (8, informational), ``delta`` (None). TRL's KL is always k3 as a loss;
    advantage ε = 1e-4 with the Bessel std.
    """
    major, minor = (int(x) for x in trl_version.split(".")[:2])
    bias_correction_default = (major, minor) >= (1, 11)
    flat = _flatten(cfg)
    known = {"beta", "loss_type", "epsilon", "epsilon_high", "scale_rewards", "importance_sampling_level",
             "use_bias_correction_kl", "max_completion_length", "num_generations", "delta", "num_iterations",
             "learning_rate", "temperature"}
    unknown = sorted(set(flat) - known)
    if unknown:
        raise ValueError(f"from_trl does not know the keys {unknown}; known: {sorted(known)}")
    g = flat.get
    if g("delta") is not None:
        raise ValueError("delta (two-sided clip) is not translatable yet")
    loss_type = g("loss_type", "dapo")
    agg_map = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dapo": "token-mean",
               "dr_grpo": "seq-mean-token-sum-norm"}
    if loss_type not in agg_map:
        raise ValueError(f"loss_type={loss_type!r} is not translatable (supported: {list(agg_map)})")
    scale = g("scale_rewards", "group")
    scale = {True: "group", False: "none"}.get(scale, scale)
    if scale == "group":
        advantage = "group_standardized"
    elif scale == "none":
        advantage = "group_centered"
    else:
        raise ValueError(f"scale_rewards={scale!r} is not translatable (TRL 'batch' keeps the group mean but uses "
                         "the batch std; supported: group, none)")
    level = g("importance_sampling_level", "token")
    check_choice("importance_sampling_level", level, ("token", "sequence"))
    beta = float(g("beta", 0.0))
    eps = float(g("epsilon", 0.2))
    eps_high = g("epsilon_high", None)
    return Method(name=name, advantage=advantage, adv_std="bessel", adv_eps=1e-4, kl_estimator="k3",
                  kl_placement="loss" if beta > 0 else "none",
                  kl_importance_weight=bool(g("use_bias_correction_kl", bias_correction_default)) and beta > 0,
                  policy_loss="gspo" if level == "sequence" else "ppo_clip", clip_low=eps,
                  clip_high=float(eps_high) if eps_high is not None else eps, dual_clip=None,
                  aggregation=agg_map[loss_type],
                  horizon=int(g("max_completion_length", 512)) if loss_type == "dr_grpo" else None, beta=beta,
                  objective=_REV_SEQ if beta > 0 else _NO_KL, citation="TRL GRPOConfig",
                  description=f"translated from TRL GRPOConfig: {dict(sorted(flat.items()))}")
