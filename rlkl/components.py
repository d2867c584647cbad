"""The typed components a :class:`rlkl.methods.Method` is made of — one per orthogonal choice.

* :class:`Advantage` — the sequence-level advantage of the task reward: :class:`GroupStandardized`,
  :class:`GroupCentered`, :class:`LeaveOneOut`, :class:`BatchStandardized`, :class:`Raw`; and verl's other
  estimators: :class:`LengthWeightedCentered` (OPO), :class:`PassAtK` (grpo_passk), :class:`GPGAdvantage`,
  :class:`TokenWhitened` (REINFORCE++ and its baseline variant).
* :class:`PolicyLoss` — the per-token surrogate: :class:`Reinforce`, :class:`PPOClip`, :class:`GSPO` (the
  GSPO-token form), :class:`RPG`, :class:`CISPO`.
* :class:`KLTerm` — where a KL to π_ref enters: :class:`NoKL`, :class:`KLLoss` (a per-token loss),
  :class:`KLReward` (a detached reward, fused before the advantage or as a reward-to-go), :class:`FutureReturn`
  (FRPO's future return of an f-divergence estimate).
* :class:`Aggregation` — how the ``[B, T]`` per-token loss becomes a scalar.

Each component is a frozen dataclass that validates its own values, documents its formula and citation, and
answers what the rest of rlkl needs to know about it (does the advantage couple the rows of a group? does the
KL term read the rollout log-probs? what is the unclipped loss?) — so no other module compares option strings.
Enumerated options are ``str`` enums (their ``.value`` is the name used in configs and JSON).

Symbols (docs/theory.md): r_i the reward of row i of a group of G rows; ρ_t = π_θ(a_t|s_t)/π_old(a_t|s_t);
δ_t = log π_θ(a_t|s_t) − log π_ref(a_t|s_t) (rollout values δ_t^old use π_old); A the advantage; sg[·] a
stop-gradient (``.detach()``).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from rlkl import advantages as _adv
from rlkl import losses as _loss
from rlkl._checks import check_float, check_int, check_real
from rlkl.divergences import get_f_divergence, kl_estimate
from rlkl.options import (AggMode, Estimator, RewardForm, RPGDivergence, RPGForm, RPGLevel, Scope, Std,  # noqa: F401
                          set_enum)

__all__ = [
    "Estimator", "AggMode", "RPGDivergence", "RPGForm", "RPGLevel", "RewardForm", "Std",
    "Advantage", "GroupStandardized", "GroupCentered", "LeaveOneOut", "BatchStandardized", "Raw",
    "PolicyLoss", "Reinforce", "PPOClip", "GSPO", "RPG", "RPGClip",
    "KLTerm", "NoKL", "KLLoss", "KLReward", "FutureReturn", "Aggregation",
    "component_to_dict", "component_from_dict",
    "Scope", "LengthWeightedCentered", "PassAtK", "GPGAdvantage", "TokenWhitened", "CISPO",
]

RPGClip = _loss.RPGClip


def _set_real(obj: Any, name: str, **bounds: Any) -> None:
    object.__setattr__(obj, name, check_real(f"{type(obj).__name__}.{name}", getattr(obj, name), **bounds))


# ================================================================================================== advantages
@dataclass(frozen=True)
class Advantage:
    """A sequence-level advantage A_i of the task reward (``[B]`` rewards → ``[B]`` advantages, no gradient).

    Class attributes: ``couples_group`` — A_i depends on the other rows of its group (needs G >= 2);
    ``couples_batch`` — A_i depends on other groups too (batch statistics).
    """

    couples_group: ClassVar[bool] = True
    couples_batch: ClassVar[bool] = False

    def __call__(self, rewards: Tensor, group_size: int) -> Tensor:
        raise NotImplementedError

    @property
    def min_group_size(self) -> int:
        return 2 if self.couples_group else 1

    # -- hooks for the advantages of other frameworks (defaults: the sequence-level rule above, nothing more) --
    def compute(self, rewards: Tensor, group_size: int, lengths: Tensor | None) -> Tensor:
        """``[B]`` sequence advantages given the ``[B]`` response lengths (what :class:`rlkl.methods.Method`
        calls); the default ignores the lengths (``None`` when :attr:`reads_lengths` is False)."""
        return self(rewards, group_size)

    @property
    def reads_lengths(self) -> bool:
        """True when :meth:`compute` may read the lengths — its class overrides it (the default ignores them), so
        :class:`rlkl.methods.Method` counts the tokens of each row only then."""
        return type(self).compute is not Advantage.compute

    def token_step(self, advantages: Tensor, mask: Tensor, group_size: int) -> Tensor:
        """``[B, T]`` → ``[B, T]``: a step on the token advantages after the KL token penalty (identity, except
        for REINFORCE++'s token whitening)."""
        return advantages

    @property
    def steps_tokens(self) -> bool:
        """True when :meth:`token_step` may change the token advantages — its class overrides it (the default is
        the identity)."""
        return type(self).token_step is not Advantage.token_step

    def couples_beyond_rewards(self, fixed_length: bool, token_penalty: bool) -> bool:
        """True when A_i reads the other rows' lengths or token values, not only their rewards (the exact
        engine then enumerates groups by response, not by reward)."""
        return False

    def per_group(self) -> "Advantage":
        """The same rule with batch statistics taken per group: equal to ``self`` on a batch of one group."""
        return self


@dataclass(frozen=True)
class GroupStandardized(Advantage):
    """GRPO: A_i = (r_i − mean_g r)/(std_g r + ε); all-equal groups give A = 0.

    DeepSeekMath arXiv 2402.03300 §4.1.2 (outcome supervision); verl ``grpo`` (Bessel, ε = 1e-6); TRL
    ``scale_rewards="group"`` (Bessel, ε = 1e-4); FRPO arXiv 2601.10201 Alg. 1 (population std). In expectation
    it ascends the finite-group utility U_G(p), not p (FRPO Prop. 3.1).
    """

    std: Std = Std.BESSEL
    eps: float = 1e-6

    def __post_init__(self):
        set_enum(self, "std", Std)
        _set_real(self, "eps", low=0)

    def __call__(self, rewards: Tensor, group_size: int) -> Tensor:
        return _adv.group_standardized(rewards, group_size, self.eps, self.std.value)


@dataclass(frozen=True)
class GroupCentered(Advantage):
    """Dr. GRPO: A_i = r_i − mean_g r (the mean includes r_i, so E[A_i | r_i] = (1 − 1/G)(r_i − E r)).

    Liu et al. arXiv 2503.20783 (Dr. GRPO); RPG's released code (arXiv 2505.17508).
    """

    def __call__(self, rewards: Tensor, group_size: int) -> Tensor:
        return _adv.group_centered(rewards, group_size)


@dataclass(frozen=True)
class LeaveOneOut(Advantage):
    """RLOO: A_i = r_i − (1/(G−1)) Σ_{j≠i} r_j (an unbiased baseline: E[A_i | y_i] = r_i − E r).

    Kool et al. 2019; Ahmadian et al. arXiv 2402.14740.
    """

    def __call__(self, rewards: Tensor, group_size: int) -> Tensor:
        return _adv.leave_one_out(rewards, group_size)


@dataclass(frozen=True)
class BatchStandardized(Advantage):
    """A_i = (r_i − mean_B r)/(std_B r + ε) over the whole batch (couples prompts; REINFORCE++-style whitening,
    Hu arXiv 2501.03262)."""

    couples_batch: ClassVar[bool] = True
    std: Std = Std.BESSEL
    eps: float = 1e-6

    def __post_init__(self):
        set_enum(self, "std", Std)
        _set_real(self, "eps", low=0)

    def __call__(self, rewards: Tensor, group_size: int) -> Tensor:
        return _adv.batch_standardized(rewards, self.eps, self.std.value)

    @property
    def min_group_size(self) -> int:
        return 1


@dataclass(frozen=True)
class Raw(Advantage):
    """A_i = r_i: no baseline (REINFORCE, Williams 1992)."""

    couples_group: ClassVar[bool] = False

    def __call__(self, rewards: Tensor, group_size: int) -> Tensor:
        return check_float("rewards", rewards, ndim=1)


# ================================================================================================== policy losses
@dataclass(frozen=True)
class PolicyLoss:
    """A per-token policy surrogate l_t(θ) for given advantages (``rlkl.losses``).

    Class attributes: ``carries_kl`` — the surrogate holds its own KL (RPG, anchored to π_old; β is its
    coefficient); ``uses_ratio`` — its gradient is weighted by π_θ/π_old (importance ratio);
    ``reads_padding_advantages`` — its loss where ``mask`` holds may read the advantages where it does not (True,
    the safe default: ``Method.loss`` then hands it advantages that are 0 on padding; the built-in losses read a
    token's own advantage, or the first valid token's, and set it False).
    """

    carries_kl: ClassVar[bool] = False
    uses_ratio: ClassVar[bool] = True
    reads_padding_advantages: ClassVar[bool] = True

    def __call__(self, logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor,
                 beta: float) -> _loss.PolicyLossOutput:
        raise NotImplementedError

    def terms(self, logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor,
              beta: float) -> tuple[Tensor, _loss.DiagnosticsThunk]:
        """(``[B, T]`` per-token loss, ``diagnostics(i)`` giving field i + 1 of :class:`rlkl.losses.PolicyLossOutput`)
        on inputs the caller validated — what ``Method.loss`` runs: the diagnostics cost nothing until read, and
        the loss's entries where ``mask`` is False are unspecified (the aggregation masks them), and so are the
        advantages' when ``reads_padding_advantages`` is False (a response's own value, read through a stride-0
        view). A loss that is one value per response may return it ``[B, 1]`` (each token's loss; sequence-level
        RPG does). The default evaluates ``__call__``; the built-in losses run their kernels directly."""
        out = self(logp, logp_old, advantages, mask, beta)
        return out.loss, lambda i: out[i + 1]

    @property
    def clips(self) -> bool:
        """True when some samples can lose their gradient to a clip rule."""
        return False

    def unclipped(self) -> "PolicyLoss":
        """The same surrogate with every clip rule removed (itself when it has none)."""
        return self


@dataclass(frozen=True)
class Reinforce(PolicyLoss):
    """REINFORCE: l_t = −sg[A_t]·log π_θ(a_t|s_t), no importance ratio (Williams 1992; RPG arXiv 2505.17508 eq. C.2).

    On-policy E[∇l] = −E_π[Σ_t A_t ∇log π_t]; off-policy (samples from π_old) it is biased: no ratio.
    """

    uses_ratio: ClassVar[bool] = False
    reads_padding_advantages: ClassVar[bool] = False  # A_t of each token, elementwise

    def __call__(self, logp, logp_old, advantages, mask, beta):
        return _loss.reinforce_loss(logp, advantages, mask, logp_old=logp_old)

    def terms(self, logp, logp_old, advantages, mask, beta):
        return _loss._reinforce(logp, advantages, mask, logp_old)


#: bounds that no ratio can reach: ρ = exp(clamp(log ρ, ±20)) lies in [2.1e-9, 4.9e8] (``rlkl.losses``)
_NO_CLIP_LOW, _NO_CLIP_HIGH = 1.0 - 1e-12, 1e12


@dataclass(frozen=True)
class PPOClip(PolicyLoss):
    """PPO clip: l_t = max(−ρ_t A_t, −clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t); dual clip: for A_t < 0,
    l_t = min(l_t, −c·A_t).

    Schulman et al. arXiv 1707.06347 eq. 7; clip-higher (ε_high > ε_low): DAPO arXiv 2503.14476; dual clip:
    Ye et al. arXiv 1912.09729 (dual-clip PPO). Gradient −A_t ρ_t ∇log π_t on tokens the rule keeps, 0 on clipped ones.

    Attributes:
      low: ε_low in (0, 1); high: ε_high > 0; dual: c > 1, or None (no dual clip).
    """

    reads_padding_advantages: ClassVar[bool] = False  # A_t of each token, elementwise

    low: float = 0.2
    high: float = 0.2
    dual: float | None = None

    def __post_init__(self):
        _set_real(self, "low", low=0, high=1, low_open=True, high_open=True)
        _set_real(self, "high", low=0, low_open=True)
        _set_real(self, "dual", low=1, low_open=True, allow_none=True)

    def __call__(self, logp, logp_old, advantages, mask, beta):
        return _loss.ppo_clip_loss(logp, logp_old, advantages, mask, self.low, self.high, self.dual)

    def terms(self, logp, logp_old, advantages, mask, beta):
        return _loss._ppo_clip(logp, logp_old, advantages, mask, self.low, self.high, self.dual)

    @property
    def clips(self) -> bool:
        return (self.low, self.high) != (_NO_CLIP_LOW, _NO_CLIP_HIGH) or self.dual is not None

    def unclipped(self) -> "PPOClip":
        """−ρ_t A_t on every token (Schulman et al. 2017's L^CPI): bounds outside the guarded ratio's range."""
        return PPOClip(_NO_CLIP_LOW, _NO_CLIP_HIGH, None)


@dataclass(frozen=True)
class GSPO(PolicyLoss):
    """GSPO-token: s_i = exp(mean_t log ρ_{i,t}); l_t = max(−s_{i,t} A_i, −clip(s_{i,t}, 1 − ε_low, 1 + ε_high) A_i)
    with s_{i,t} = sg[s_i]·π_θ(a_t)/sg[π_θ(a_t)] (Zheng et al. arXiv 2507.18071, GSPO-token).

    Attributes:
      low: ε_low in (0, 1); high: ε_high > 0 (GSPO: 3e-4, 4e-4).
    """

    reads_padding_advantages: ClassVar[bool] = False  # A_t of each token, elementwise

    low: float = 3e-4
    high: float = 4e-4

    def __post_init__(self):
        _set_real(self, "low", low=0, high=1, low_open=True, high_open=True)
        _set_real(self, "high", low=0, low_open=True)

    def __call__(self, logp, logp_old, advantages, mask, beta):
        return _loss.gspo_loss(logp, logp_old, advantages, mask, self.low, self.high)

    def terms(self, logp, logp_old, advantages, mask, beta):
        return _loss._gspo(logp, logp_old, advantages, mask, self.low, self.high)

    @property
    def clips(self) -> bool:
        return (self.low, self.high) != (_NO_CLIP_LOW, _NO_CLIP_HIGH)

    def unclipped(self) -> "GSPO":
        """−s_{i,t} A_i on every token (s_i <= e^10 by the guard, so the upper bound is never reached)."""
        return GSPO(_NO_CLIP_LOW, _NO_CLIP_HIGH)


@dataclass(frozen=True)
class RPG(PolicyLoss):
    """An RPG surrogate: KL to π_old inside the loss, β its coefficient (RPG arXiv 2505.17508 Tables 1, 2, 4).

    Per sample ∇ℓ = −Weight·∇log π_θ with Weight = wA + β (fkl, Prop. E.1), w(A − β(log w + 1)) (rkl, Prop. E.3),
    wA − β(w − 1) (ufkl, Prop. 3.2), w(A − β log w) (urkl, Prop. 3.6), w = π_θ/π_old; so E_{π_old}[∇ℓ] = −∇J for
    J = E_π[R] − β·D(π‖π_old) at the sequence level. ``clip``: RPG-Style Clip (Sec. 3.3, Algs. 1–2).

    Attributes:
      divergence: :class:`RPGDivergence`; form: :class:`RPGForm`; level: :class:`RPGLevel`;
      clip: :class:`RPGClip` or None.
    """

    carries_kl: ClassVar[bool] = True
    reads_padding_advantages: ClassVar[bool] = False  # A_t per token (token level), the first valid one's (sequence)
    divergence: RPGDivergence = RPGDivergence.URKL
    form: RPGForm = RPGForm.REINFORCE
    level: RPGLevel = RPGLevel.TOKEN
    clip: RPGClip | None = None

    def __post_init__(self):
        set_enum(self, "divergence", RPGDivergence)
        set_enum(self, "form", RPGForm)
        set_enum(self, "level", RPGLevel)
        if self.clip is not None and not isinstance(self.clip, RPGClip):
            raise ValueError(f"RPG.clip must be an RPGClip or None, got {type(self.clip).__name__}")

    def __call__(self, logp, logp_old, advantages, mask, beta):
        return _loss.rpg_loss(logp, logp_old, advantages, mask, self.divergence.value, self.form.value, beta,
                              self.level.value, self.clip)

    def terms(self, logp, logp_old, advantages, mask, beta):
        return _loss._rpg(logp, logp_old, advantages, mask, self.divergence.value, self.form.value, float(beta),
                          self.level.value, self.clip, 1.0)

    @property
    def clips(self) -> bool:
        return self.clip is not None

    def unclipped(self) -> "RPG":
        return dataclasses.replace(self, clip=None)


# ================================================================================================== KL terms
@dataclass(frozen=True)
class KLTerm:
    """Where a KL to π_ref enters the update (β from the Method).

    Class attributes: ``reads_rollout_logprobs`` — the advantages read the rollout log-probs (log π_old,
    log π_ref): the KL is a detached reward; ``in_loss`` — a differentiable per-token KL loss is added.
    Methods (each returns None when the term has no such part): :meth:`sequence_penalty` (``[B]``, subtracted
    from the reward before the advantage), :meth:`token_penalty` (``[B, T]``, subtracted from the token
    advantages), :meth:`loss_term` (``[B, T]``, added to the per-token loss). Multiply each by β.
    """

    reads_rollout_logprobs: ClassVar[bool] = False
    in_loss: ClassVar[bool] = False

    def sequence_penalty(self, log_ratio_old: Tensor, mask: Tensor) -> Tensor | None:
        return None

    def token_penalty(self, log_ratio_old: Tensor, mask: Tensor) -> Tensor | None:
        return None

    def loss_term(self, logp: Tensor, logp_ref: Tensor, logp_old: Tensor, mask: Tensor) -> Tensor | None:
        return None

    def loss_terms(self, logp: Tensor, logp_ref: Tensor, logp_old: Tensor, mask: Tensor) -> Tensor | None:
        """:meth:`loss_term` on inputs the caller validated (what ``Method.loss`` runs); its entries where ``mask``
        is False are unspecified (the aggregation masks them)."""
        return self.loss_term(logp, logp_ref, logp_old, mask)

    @property
    def penalizes_sequences(self) -> bool:
        """True when :meth:`sequence_penalty` may return one — its class overrides it (the default returns None),
        so a caller builds the rollout log-ratio it reads only then."""
        return type(self).sequence_penalty is not KLTerm.sequence_penalty

    @property
    def penalizes_tokens(self) -> bool:
        """True when :meth:`token_penalty` may return one — its class overrides it (the default returns None)."""
        return type(self).token_penalty is not KLTerm.token_penalty


@dataclass(frozen=True)
class NoKL(KLTerm):
    """No KL to π_ref."""


@dataclass(frozen=True)
class KLLoss(KLTerm):
    """β·k(δ_t) added to the per-token loss, optionally × ρ_t (``rlkl.losses.kl_loss``).

    On-policy, per state with the state distribution held fixed: k1 → zero expected gradient; k2 and any
    straight-through k (verl's ``+``) → local ∇KL(π‖π_ref); k3 (GRPO) → local ∇KL(π_ref‖π), the forward KL;
    ρ·k3 → local ∇KL(π‖π_ref) for any π_old (RPG arXiv 2505.17508 §2.3; Tang & Munos arXiv 2506.09477). None has
    the future-KL term of the sequence KL (FRPO arXiv 2601.10201 Prop. 4.3).

    Attributes:
      estimator: :class:`Estimator`; straight_through: value of k, gradient of k2 (verl ``k1+``/``k3+``; not for
      k2, whose gradient already is k2's); importance_weight: × ρ = π_θ/π_old (DeepSeek-V3.2, TRL
      ``use_bias_correction_kl``).
    """

    in_loss: ClassVar[bool] = True
    estimator: Estimator = Estimator.K3
    straight_through: bool = False
    importance_weight: bool = False

    def __post_init__(self):
        set_enum(self, "estimator", Estimator)
        for name in ("straight_through", "importance_weight"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"KLLoss.{name} must be a bool, got {getattr(self, name)!r}")
        if self.straight_through and self.estimator is Estimator.K2:
            raise ValueError("KLLoss(estimator=k2, straight_through=True): k2's gradient already is k2's; "
                             "use straight_through=False")

    def loss_term(self, logp, logp_ref, logp_old, mask):
        return _loss.kl_loss(logp, logp_ref, mask, self.estimator.value, self.straight_through, logp_old,
                             self.importance_weight)

    def loss_terms(self, logp, logp_ref, logp_old, mask):
        return _loss._kl_loss(logp, logp_ref, self.estimator.value, self.straight_through, logp_old,
                              self.importance_weight)


@dataclass(frozen=True)
class KLReward(KLTerm):
    """A detached KL estimate k(δ_t^old) from the rollout log-probs, used as a (negative) reward.

    FUSED: r_i ← r_i − β Σ_t k_t before the advantage (verl ``use_kl_in_reward``; with a standardized advantage
    the KL is normalized too, FRPO arXiv 2601.10201 Prop. 3.2). REWARD_TO_GO: A_{i,t} ← A_i − β Σ_{j>=t} k_j
    (causal return; Ziegler et al. arXiv 1909.08593). With k1 on-policy the score-function gradient is exactly
    ∇KL(π‖π_ref) of the sequence (Tang & Munos arXiv 2506.09477); k2/k3 in the reward are not.

    Attributes:
      estimator: :class:`Estimator`; form: :class:`RewardForm`.
    """

    reads_rollout_logprobs: ClassVar[bool] = True
    estimator: Estimator = Estimator.K1
    form: RewardForm = RewardForm.FUSED

    def __post_init__(self):
        set_enum(self, "estimator", Estimator)
        set_enum(self, "form", RewardForm)

    def sequence_penalty(self, log_ratio_old, mask):
        if self.form is not RewardForm.FUSED:
            return None
        return (kl_estimate(log_ratio_old, self.estimator.value) * mask).sum(-1)  # [B]

    def token_penalty(self, log_ratio_old, mask):
        if self.form is not RewardForm.REWARD_TO_GO:
            return None
        return _adv.reward_to_go(kl_estimate(log_ratio_old, self.estimator.value), mask)  # [B, T]


@dataclass(frozen=True)
class FutureReturn(KLTerm):
    """FRPO: A_{i,t} ← A_i − β·reg_t, reg_t = [f'(u_t) − f'(1)] + Σ_{j>t} f(u_j)/u_j, u = π_old/π_ref at the
    sampled tokens (``rlkl.advantages.frpo_regularizer``; FRPO arXiv 2601.10201 Eq. 4.5, Thm 4.1).

    On-policy its score-function gradient is ∇ Σ_t E D_f(π(·|s_t)‖π_ref(·|s_t)) exactly — the sequence reverse KL
    for ``reverse_kl`` (inclusive k1 sum) and ``reverse_kl_k3``.

    Attributes:
      divergence: an f-divergence name of ``rlkl.divergences`` (``reverse_kl``, ``reverse_kl_k3``, ``forward_kl``…).
    """

    reads_rollout_logprobs: ClassVar[bool] = True
    divergence: str = "reverse_kl"

    def __post_init__(self):
        if not isinstance(self.divergence, str):
            raise ValueError(f"FutureReturn.divergence must be an f-divergence name, got {self.divergence!r}")
        get_f_divergence(self.divergence)  # ValueError naming the choices

    def token_penalty(self, log_ratio_old, mask):
        return _adv.frpo_regularizer(log_ratio_old, mask, self.divergence, include_local=True)  # [B, T]


# ================================================================================================== aggregation
@dataclass(frozen=True)
class Aggregation:
    """Reduce the ``[B, T]`` per-token loss to a scalar (verl ``agg_loss``; ``rlkl.losses.aggregate``).

    token-mean: Σ m·l/Σ m; seq-mean-token-mean: mean_i (Σ_t m l)/|y_i| (the 1/|y_i| length bias, Dr. GRPO arXiv
    2503.20783); seq-mean-token-sum: mean_i Σ_t m l; seq-mean-token-sum-norm: Σ m l/(B·C), C = ``horizon``
    (None: the padded width T).

    Attributes:
      mode: :class:`AggMode`; horizon: the constant C of seq-mean-token-sum-norm (None elsewhere).
    """

    mode: AggMode = AggMode.SEQ_MEAN_TOKEN_MEAN
    horizon: int | None = None

    def __post_init__(self):
        set_enum(self, "mode", AggMode)
        check_int("Aggregation.horizon", self.horizon, low=1, allow_none=True)
        if self.horizon is not None and self.mode is not AggMode.SEQ_MEAN_TOKEN_SUM_NORM:
            raise ValueError(f"Aggregation(horizon={self.horizon}) only applies to mode=seq-mean-token-sum-norm, "
                             f"not {self.mode.value}")

    def __call__(self, loss: Tensor, mask: Tensor) -> Tensor:
        return _loss.aggregate(loss, mask, self.mode.value, self.horizon)

    @property
    def normalizes_by_length(self) -> bool:
        """True when a response's weight depends on its own length (token-mean, seq-mean-token-mean)."""
        return self.mode in (AggMode.TOKEN_MEAN, AggMode.SEQ_MEAN_TOKEN_MEAN)

    @property
    def couples_rows(self) -> bool:
        """True when a row's weight depends on the other rows' lengths (token-mean: Σ m over the batch)."""
        return self.mode is AggMode.TOKEN_MEAN

    def scale(self, horizon: int) -> float:
        """c with E[∇aggregate] = c·E[∇ Σ_t l_t] for fixed-length responses of ``horizon`` tokens."""
        if self.mode is AggMode.SEQ_MEAN_TOKEN_SUM:
            return 1.0
        if self.mode is AggMode.SEQ_MEAN_TOKEN_SUM_NORM:
            return 1.0 / float(self.horizon or horizon)
        return 1.0 / float(horizon)


# ================================================================================================== other frameworks
# Advantages and a policy loss of verl 0.9.1's estimators rlkl had no component for (restated from verl's rules and
# the papers; the pure functions live in rlkl.advantages / rlkl.losses).


@dataclass(frozen=True)
class LengthWeightedCentered(Advantage):
    """OPO: A_i = r_i − Σ_j |y_j| r_j / Σ_j |y_j| over the group (``rlkl.advantages.length_weighted_centered``).

    Hao et al. arXiv 2505.23585 (OPO); verl ``adv_estimator=opo``. With equal lengths it is Dr. GRPO's group
    mean (the baseline includes the sample: a (1 − 1/G) shrink of the update); with EOS the lengths also enter.
    Called without lengths (``advantage(rewards, G)``) it is the equal-length rule.
    """

    def __call__(self, rewards: Tensor, group_size: int) -> Tensor:
        return _adv.group_centered(rewards, group_size)

    def compute(self, rewards: Tensor, group_size: int, lengths: Tensor | None) -> Tensor:
        return _adv.length_weighted_centered(rewards, lengths.to(rewards.dtype), group_size)

    def couples_beyond_rewards(self, fixed_length: bool, token_penalty: bool) -> bool:
        return not fixed_length  # the other rows' lengths enter the baseline


@dataclass(frozen=True)
class PassAtK(Advantage):
    """grpo_passk: A_i = [r_i − max_{j≠i} r_j]_+, ÷ (std_g r + ε) when ``normalize`` (``rlkl.advantages.pass_at_k_advantage``).

    Only the strict best response of a group learns (verl ``adv_estimator=grpo_passk``, after Chen et al. arXiv
    2503.19595). Unnormalized and on-policy it ascends E[max of G rewards]/G — pass@G/G for binary rewards
    (``Utility.PASS_AT_K``); the std multiplies that by κ_G = 1/(σ_G + ε) for binary rewards.

    Attributes:
      normalize: verl's ``norm_adv_by_std_in_grpo`` (default True); std: bessel (torch, verl) | population;
      eps: ε (verl 1e-6).
    """

    normalize: bool = True
    std: Std = Std.BESSEL
    eps: float = 1e-6

    def __post_init__(self):
        if not isinstance(self.normalize, bool):
            raise ValueError(f"PassAtK.normalize must be a bool, got {self.normalize!r}")
        set_enum(self, "std", Std)
        _set_real(self, "eps", low=0)

    def __call__(self, rewards: Tensor, group_size: int) -> Tensor:
        return _adv.pass_at_k_advantage(rewards, group_size, self.normalize, self.eps, self.std.value)


@dataclass(frozen=True)
class GPGAdvantage(Advantage):
    """GPG: A_i = α·(r_i − mean_g r), α = n/max(1, #{r_j ≠ 0}) over the n rows of the scope (``rlkl.advantages.gpg_advantage``).

    Chu et al. arXiv 2504.02546 (GPG); verl ``adv_estimator=gpg`` (α over the whole batch: ``scope=batch``). α ≥ 1
    rescales every group by a batch statistic of the rewards.

    Attributes:
      scope: :class:`Scope` of the count behind α (verl: batch).
    """

    scope: Scope = Scope.BATCH

    def __post_init__(self):
        set_enum(self, "scope", Scope)

    @property
    def couples_batch(self) -> bool:  # type: ignore[override]
        return self.scope is Scope.BATCH

    def __call__(self, rewards: Tensor, group_size: int) -> Tensor:
        return _adv.gpg_advantage(rewards, group_size, self.scope.value)

    def per_group(self) -> "GPGAdvantage":
        return GPGAdvantage(Scope.GROUP)


@dataclass(frozen=True)
class TokenWhitened(Advantage):
    """REINFORCE++: token advantages whitened over the batch's valid tokens, A_{i,t} = (x_{i,t} − μ)/sqrt(σ² + ε).

    x_{i,t} = r_i (``group_mean=False``, verl ``reinforce_plus_plus``: the γ = 1 return of an outcome reward, with
    a KL reward-to-go subtracted first when ``kl=KLReward(form=reward_to_go)``) or r_i − mean_g r
    (``group_mean=True``, ``reinforce_plus_plus_baseline``; a fused KL enters r). Hu arXiv 2501.03262 eqs. 8–10
    (v2) and its group-baseline variant; ``rlkl.advantages.masked_whiten`` (token-weighted μ, Bessel σ² over
    tokens, ε = 1e-8 inside the root). The whitening runs in :meth:`token_step`; the sequence part in
    :meth:`compute` (``advantage(rewards, G)`` alone raises: the rule needs the token layout).

    Attributes:
      group_mean: subtract the group mean first; std: bessel | population (over tokens); eps: ε inside the root;
      scope: :class:`Scope` of the statistics (verl: batch).
    """

    group_mean: bool = False
    std: Std = Std.BESSEL
    eps: float = 1e-8
    scope: Scope = Scope.BATCH

    def __post_init__(self):
        if not isinstance(self.group_mean, bool):
            raise ValueError(f"TokenWhitened.group_mean must be a bool, got {self.group_mean!r}")
        set_enum(self, "std", Std)
        _set_real(self, "eps", low=0)
        set_enum(self, "scope", Scope)

    @property
    def couples_group(self) -> bool:  # type: ignore[override]
        return self.group_mean or self.scope is Scope.GROUP

    @property
    def couples_batch(self) -> bool:  # type: ignore[override]
        return self.scope is Scope.BATCH

    @property
    def min_group_size(self) -> int:
        return 2 if self.group_mean else 1

    def __call__(self, rewards: Tensor, group_size: int) -> Tensor:
        raise ValueError("TokenWhitened is a token-level advantage: it needs the mask (Method.advantages(batch)); "
                         "compute() gives its sequence part, token_step() the whitening")

    def compute(self, rewards: Tensor, group_size: int, lengths: Tensor | None) -> Tensor:
        return _adv.group_centered(rewards, group_size) if self.group_mean else check_float("rewards", rewards, ndim=1)

    @property
    def reads_lengths(self) -> bool:
        return False  # the whitening reads the mask in token_step, not the lengths

    def token_step(self, advantages: Tensor, mask: Tensor, group_size: int) -> Tensor:
        G = None if self.scope is Scope.BATCH else group_size
        return _adv.masked_whiten(advantages, mask, self.eps, self.std.value, G)

    def couples_beyond_rewards(self, fixed_length: bool, token_penalty: bool) -> bool:
        return (not fixed_length) or token_penalty  # token-weighted statistics of the others' lengths / penalties

    def per_group(self) -> "TokenWhitened":
        return dataclasses.replace(self, scope=Scope.GROUP)


@dataclass(frozen=True)
class CISPO(PolicyLoss):
    """CISPO: l_t = −sg[clip(ρ_t, 1 − ε_low, 1 + ε_high)]·A_t·log π_θ(a_t|s_t) (``rlkl.losses.cispo_loss``).

    MiniMax-M1 arXiv 2506.13585 eqs. 4–5 (one-sided: ``low=None``); verl ``policy_loss.loss_mode=cispo`` (both
    sides, ``clip_ratio_low`` / ``clip_ratio_high``). Every token keeps a gradient −ŵ_t A_t ∇log π_θ; the cap
    changes its weight (``clips``: True; ``unclipped()``: weight ρ_t, the per-token importance-weighted gradient).

    Attributes:
      low: ε_low in (0, 1), or None (no lower bound, the paper); high: ε_high > 0 (the paper leaves it unstated;
      0.2 is verl's ``clip_ratio_high`` default).
    """

    reads_padding_advantages: ClassVar[bool] = False  # A_t of each token, elementwise

    low: float | None = None
    high: float = 0.2

    def __post_init__(self):
        _set_real(self, "low", low=0, high=1, low_open=True, high_open=True, allow_none=True)
        _set_real(self, "high", low=0, low_open=True)

    def __call__(self, logp, logp_old, advantages, mask, beta):
        return _loss.cispo_loss(logp, logp_old, advantages, mask, self.low, self.high)

    def terms(self, logp, logp_old, advantages, mask, beta):
        return _loss._cispo(logp, logp_old, advantages, mask, self.low, self.high)

    @property
    def clips(self) -> bool:
        return (self.low, self.high) != (None, _NO_CLIP_HIGH)

    def unclipped(self) -> "CISPO":
        """Weight ρ_t on every token (ε_high beyond the guarded ratio's range)."""
        return CISPO(None, _NO_CLIP_HIGH)


# ================================================================================================== serialization
_BASES = (Advantage, PolicyLoss, KLTerm)


def _all_components() -> dict[str, type]:
    out: dict[str, type] = {"Aggregation": Aggregation, "RPGClip": RPGClip}
    todo = list(_BASES)
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if not sub.__name__.startswith("_"):  # private bases (e.g. _TruncatedIS) are not kinds
                out[sub.__name__] = sub
            todo.append(sub)
    return out


def component_to_dict(c: Any) -> dict:
    """``{"kind": ClassName, field: value, ...}`` with enum values as strings and nested components as dicts."""
    out: dict[str, Any] = {"kind": type(c).__name__}
    for f in dataclasses.fields(c):
        v = getattr(c, f.name)
        if dataclasses.is_dataclass(v):
            v = component_to_dict(v)
        elif isinstance(v, enum.Enum):
            v = v.value
        out[f.name] = v
    return out


def component_from_dict(d: Any, base: type | None = None) -> Any:
    """Inverse of :func:`component_to_dict`; ``base`` restricts the admissible kinds (ValueError otherwise)."""
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError(f"a component must be a dict with a 'kind' key, got {d!r}")
    classes = _all_components()
    kind = d["kind"]
    cls = classes.get(kind)
    if cls is None or (base is not None and not issubclass(cls, base)):
        allowed = sorted(k for k, v in classes.items() if base is None or issubclass(v, base))
        raise ValueError(f"unknown component kind {kind!r}; expected one of {allowed}")
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k != "kind"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"{kind} has no fields {unknown}; fields: {sorted(fields)}")
    if "clip" in kwargs and isinstance(kwargs["clip"], dict):
        kwargs["clip"] = component_from_dict(kwargs["clip"], RPGClip)
    return cls(**kwargs)


# ================================================================================================== rollout corrections
@dataclass(frozen=True)
class RolloutCorrection:
    """The detached per-token weight w that multiplies the policy loss to correct for the engine's sampler.

    ρ_t = π_old(a_t|s_t)/q_reported(a_t|s_t) is the ratio of the trainer's log-prob to the one the inference engine
    reported (``RolloutBatch.logp_rollout``); ``weights(log ρ, mask)`` maps it to w (``[B, T]``, no gradient), which
    multiplies the per-token policy loss, not the KL loss (verl ``rollout_is_weights``, TRL
    ``importance_sampling_ratio``). Every correction gives w = 1 when ρ = 1 (bounds must contain 1). None can
    reach the tokens the sampler cut (q = 0): against the objective of the full π_θ every one is biased by the
    missing mass (docs/theory.md §7, T21).

    Class attributes: ``replays_kept_set`` — the trainer must renormalize π_θ and π_old over the sampler's kept
    set (:class:`MaskReplay`); ``bound_term`` — the name of the bias term its bound adds
    (``cap_truncation`` for a cap, ``rejection`` for a mask), None when unbounded.
    """

    replays_kept_set: ClassVar[bool] = False
    bound_term: ClassVar[str | None] = None

    def weights(self, log_ratio: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def bounded(self) -> bool:
        """True when a cap or a mask can change some weight away from ρ."""
        return False

    def uncapped(self) -> "RolloutCorrection":
        """The same correction without its cap / mask (plain IS at its level; itself when unbounded)."""
        return self

    def spec(self) -> str:
        """The short spelling :func:`correction_from_spec` reads back (``token_tis:2``, ``seq_mis:3``, ``none``)."""
        raise NotImplementedError


def _check_cap(obj: Any, name: str) -> None:
    v = getattr(obj, name)
    if v is None:
        return
    label = f"{type(obj).__name__}.{name}"
    v = check_real(label, v)
    if v <= 1:
        raise ValueError(f"{label} must be > 1, got {v:g}: an upper bound <= 1 cuts or drops even the on-policy "
                         "weight ρ = 1 (use None for no bound)")
    object.__setattr__(obj, name, v)


def _check_floor(obj: Any, name: str) -> None:
    if getattr(obj, name) is not None:
        _set_real(obj, name, low=0, high=1, low_open=True, high_open=True)


def _fmt(*values: float | None) -> str:
    return "_".join("" if v is None else f"{v:g}" for v in values)


@dataclass(frozen=True)
class NoCorrection(RolloutCorrection):
    """w = 1: the sampler's tokens are used as if π_old had sampled them (verl ``rollout_is: null``)."""

    def weights(self, log_ratio, mask):
        return _loss._mask_as(mask, log_ratio.dtype)

    def spec(self) -> str:
        return "none"


@dataclass(frozen=True)
class _TruncatedIS(RolloutCorrection):
    """Truncated IS, w = clamp(ratio, floor, cap), at the level of the subclass (shared fields and answers).

    Attributes:
      cap: C > 1 or None; floor: in (0, 1) or None.
    """

    bound_term: ClassVar[str | None] = "cap_truncation"
    _spec_name: ClassVar[str] = ""
    cap: float | None = 2.0
    floor: float | None = None

    def __post_init__(self):
        _check_cap(self, "cap")
        _check_floor(self, "floor")

    @property
    def bounded(self) -> bool:
        return self.cap is not None or self.floor is not None

    def uncapped(self) -> "_TruncatedIS":
        return type(self)(None, None)

    def spec(self) -> str:
        if not self.bounded:
            return f"{self._spec_name}_is"
        return f"{self._spec_name}_tis:{_fmt(self.cap) if self.floor is None else _fmt(self.floor, self.cap)}"


@dataclass(frozen=True)
class TokenTIS(_TruncatedIS):
    """Token-level truncated IS: w_t = clamp(ρ_t, floor, cap) (``rlkl.sampling.token_is_weights``).

    verl ``algorithm.rollout_correction.rollout_is=token`` with ``rollout_is_threshold`` = cap (default 2.0); TRL
    ``vllm_importance_sampling_mode="token_truncate"`` (cap = ``vllm_importance_sampling_clip_max``). ``cap=None``:
    plain per-token IS (w_t = ρ_t), which corrects each token's own distribution but not the states it reached.

    Attributes:
      cap: C > 1 or None; floor: in (0, 1) or None.
    """

    _spec_name: ClassVar[str] = "token"

    def weights(self, log_ratio, mask):
        return _sampling().token_is_weights(log_ratio, mask, self.cap, self.floor)


@dataclass(frozen=True)
class SequenceTIS(_TruncatedIS):
    """Sequence-level truncated IS: w_i = clamp(Π_t ρ_{i,t}, floor, cap) on every token of row i.

    verl ``rollout_is=sequence``; TRL ``vllm_importance_sampling_mode="sequence_truncate"``. ``cap=None``: plain
    sequence IS (w = π_old(y)/q(y): exact on the sampler's support for a per-sample loss).

    Attributes:
      cap: C > 1 or None; floor: in (0, 1) or None.
    """

    _spec_name: ClassVar[str] = "seq"

    def weights(self, log_ratio, mask):
        return _sampling().sequence_is_weights(log_ratio, mask, self.cap, self.floor)


@dataclass(frozen=True)
class TokenMIS(RolloutCorrection):
    """Token-level masked IS: w_t = ρ_t·1[lower <= ρ_t <= upper] (``rlkl.sampling.masked_is_weights``).

    verl ``rollout_is=token`` with threshold ``"lower_upper"`` (IcePop); TRL ``token_mask``
    (upper = ``clip_max``, lower = ``clip_min``, None = absent).

    Attributes:
      upper: > 1 or None; lower: in (0, 1) or None (not both None).
    """

    bound_term: ClassVar[str | None] = "rejection"
    upper: float | None = 2.0
    lower: float | None = None

    def __post_init__(self):
        _check_cap(self, "upper")
        _check_floor(self, "lower")
        if self.upper is None and self.lower is None:
            raise ValueError(f"{type(self).__name__} needs a bound (upper or lower); without one use the plain IS "
                             "correction (TokenTIS(cap=None) / SequenceTIS(cap=None))")

    def weights(self, log_ratio, mask):
        return _sampling().masked_is_weights(log_ratio, mask, False, self.upper, self.lower)

    @property
    def bounded(self) -> bool:
        return True

    def uncapped(self) -> RolloutCorrection:
        return TokenTIS(None, None)

    def spec(self) -> str:
        return f"token_mis:{_fmt(self.upper) if self.lower is None else _fmt(self.lower, self.upper)}"


@dataclass(frozen=True)
class SequenceMIS(TokenMIS):
    """Sequence-level masked IS ("Seq-MIS"): w_i = Π_t ρ_{i,t} if lower <= Π_t ρ_{i,t} <= upper, else 0.

    TRL's default ``vllm_importance_sampling_mode="sequence_mask"`` with ``vllm_importance_sampling_clip_max`` 3.0
    (no lower bound); verl ``rollout_is=sequence`` with threshold ``"lower_upper"``.

    Attributes:
      upper: > 1 or None; lower: in (0, 1) or None (not both None).
    """

    def weights(self, log_ratio, mask):
        return _sampling().masked_is_weights(log_ratio, mask, True, self.upper, self.lower)

    def uncapped(self) -> RolloutCorrection:
        return SequenceTIS(None, None)

    def spec(self) -> str:
        return f"seq_mis:{_fmt(self.upper) if self.lower is None else _fmt(self.lower, self.upper)}"


@dataclass(frozen=True)
class GeometricMeanIS(RolloutCorrection):
    """Geometric-mean sequence ratio: w_i = min(exp(mean_t log ρ_{i,t}), cap) on every token of row i.

    The length-normalized ratio of GMPO (Zhao et al. arXiv 2507.20673) as a rollout correction
    (``rlkl.sampling.geometric_mean_weights``). Attributes: cap: > 1 or None.
    """

    bound_term: ClassVar[str | None] = "cap_truncation"
    cap: float | None = None

    def __post_init__(self):
        _check_cap(self, "cap")

    def weights(self, log_ratio, mask):
        return _sampling().geometric_mean_weights(log_ratio, mask, self.cap)

    @property
    def bounded(self) -> bool:
        return self.cap is not None

    def uncapped(self) -> "GeometricMeanIS":
        return GeometricMeanIS(None)

    def spec(self) -> str:
        return "gm" if self.cap is None else f"gm:{_fmt(self.cap)}"


@dataclass(frozen=True)
class MaskReplay(RolloutCorrection):
    """Mask replay: the trainer renormalizes π_θ and π_old over the sampler's kept set K_s; w = 1.

    The caller computes ``logp`` and ``RolloutBatch.logp_old`` as log π(a_t|s_t) − log Σ_{a∈K_{s_t}} π(a|s_t)
    (masked log-softmax; ``rlkl.toy.samplers.TransformedPolicy`` in the exact engine) and passes
    ``RolloutBatch.kept_logmass``. At τ = 1 with processed log-probs the replayed π_old equals q, so ρ = 1 and the
    update is on-policy for the truncated policy T(π_θ) (docs/theory.md §7, T22).
    """

    replays_kept_set: ClassVar[bool] = True

    def weights(self, log_ratio, mask):
        return _loss._mask_as(mask, log_ratio.dtype)

    def spec(self) -> str:
        return "mask_replay"


def _sampling():
    from rlkl import sampling

    return sampling


_CORRECTION_SPECS = {"none": lambda a: NoCorrection(), "mask_replay": lambda a: MaskReplay(),
                     "token_is": lambda a: TokenTIS(None), "seq_is": lambda a: SequenceTIS(None),
                     "token_tis": lambda a: TokenTIS(*a), "seq_tis": lambda a: SequenceTIS(*a),
                     "token_mis": lambda a: TokenMIS(a[-1], a[0] if len(a) > 1 else None),
                     "seq_mis": lambda a: SequenceMIS(a[-1], a[0] if len(a) > 1 else None),
                     "gm": lambda a: GeometricMeanIS(*a)}


def correction_from_spec(spec: str) -> RolloutCorrection:
    """A :class:`RolloutCorrection` from its short spelling: ``none``, ``mask_replay``, ``token_is``, ``seq_is``,
    ``token_tis:C``, ``seq_tis:C``, ``token_mis:U`` or ``token_mis:L_U``, ``seq_mis:U`` / ``seq_mis:L_U``, ``gm`` or
    ``gm:C`` (the inverse of :meth:`RolloutCorrection.spec`; a TIS ``:F_C`` sets a floor F and cap C)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a rollout correction must be a non-empty string, got {spec!r}")
    name, _, arg = spec.strip().partition(":")
    if name not in _CORRECTION_SPECS:
        raise ValueError(f"unknown rollout correction {name!r}; choose one of {sorted(_CORRECTION_SPECS)}")
    takes = name in ("token_tis", "seq_tis", "token_mis", "seq_mis", "gm")
    if arg and not takes:
        raise ValueError(f"rollout correction {name!r} takes no argument, got {spec!r}")
    if not arg and name in ("token_tis", "seq_tis", "token_mis", "seq_mis"):
        raise ValueError(f"rollout correction {name!r} needs a bound, e.g. {name}:2")
    try:
        # an empty side is an absent bound: spec() spells TokenTIS(None, 0.5) "token_tis:0.5_"
        values = [None if v == "" else float(v) for v in arg.split("_")] if arg else []
    except ValueError:
        raise ValueError(f"rollout correction {spec!r}: the bound must be a number or LOWER_UPPER") from None
    if len(values) > 2 or (name == "gm" and len(values) > 1):
        raise ValueError(f"rollout correction {spec!r}: too many bounds")
    if name in ("token_tis", "seq_tis") and len(values) == 2:
        values = [values[1], values[0]]  # spelled floor_cap, constructed (cap, floor)
    return _CORRECTION_SPECS[name](values)


_BASES = (*_BASES, RolloutCorrection)
__all__ += ["RolloutCorrection", "NoCorrection", "TokenTIS", "SequenceTIS", "TokenMIS", "SequenceMIS",
            "GeometricMeanIS", "MaskReplay", "correction_from_spec"]
