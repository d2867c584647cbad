"""Methods: a KL-regularized policy-gradient method as typed components, the claim it makes, and the registry.

A :class:`Method` is an advantage (:class:`~rlkl.components.Advantage`), a policy loss
(:class:`~rlkl.components.PolicyLoss`), a KL term (:class:`~rlkl.components.KLTerm`), an aggregation
(:class:`~rlkl.components.Aggregation`), the coefficient β, and the :class:`~rlkl.objective.Objective` the method
*intends* to optimize. ``Method.loss(logp, batch)`` is the single implementation run by the exact engine
(``rlkl.toy``), the Monte Carlo simulator, the LM trainer (``rlkl.lm``) and the TRL / verl plug-ins.

The registry (``REGISTRY``, ``get_method``) writes every method out by name. Framework flag sets translate into
Methods in ``rlkl.integrations.flags``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import torch
from torch import Tensor

from rlkl._checks import (check_float, check_group_size, check_real, check_token_tensors, deferring, require, trusted,
                          validated, values_trusted)
from rlkl.components import (CISPO, GSPO, RPG, Advantage, AggMode, Aggregation, BatchStandardized, Estimator,
                             FutureReturn, GPGAdvantage, GroupCentered, GroupStandardized, KLLoss, KLReward, KLTerm,
                             LeaveOneOut, LengthWeightedCentered, NoKL, PassAtK, PolicyLoss, PPOClip, Raw, Reinforce,
                             RewardForm, RPGClip, RPGDivergence, RPGForm, RPGLevel, Std, TokenWhitened,
                             component_from_dict, component_to_dict)
from rlkl.components import NoCorrection, RolloutCorrection, SequenceMIS, TokenTIS
from rlkl.divergences import kl_estimate
from rlkl.losses import PolicyLossOutput, _mask_as, masked_mean
from rlkl.objective import (NO_REGULARIZER, REVERSE_KL_TO_REF, Anchor, Level, Objective, Regularizer, Utility)

__all__ = ["Method", "RolloutBatch", "Objective", "REGISTRY", "get_method", "list_methods"]


@dataclass(frozen=True)
class RolloutBatch:
    """A batch of sampled responses in the ``[B, T]`` + mask layout of verl/TRL.

    Attributes:
      logp_old: ``[B, T]`` log π_old(a_t|s_t) of the sampled tokens under the behaviour (rollout) policy.
      logp_ref: ``[B, T]`` log π_ref(a_t|s_t) under the reference policy.
      mask: ``[B, T]`` bool, True on response tokens (EOS included), False on padding.
      rewards: ``[B]`` sequence-level (verifier) rewards.
      group_size: G; groups are contiguous blocks of G rows (B divisible by G).
      logp_rollout: ``[B, T]`` the log-probs the inference engine *reported* for the sampled tokens (processed
        log q or raw, ``rlkl.sampling``), finite on response tokens; None = the engine sampled from π_old itself
        (no mismatch: every rollout correction gives w = 1).
      kept_logmass: ``[B, T]`` log S_t = log Σ_{a∈K_t} π_old(a|s_t), the trainer's π_old mass on the sampler's kept
        set K_t at each response token (<= 0; 0 where nothing was cut; computed before any replay); required
        with :class:`~rlkl.components.MaskReplay`, optional otherwise (the ``rollout/kept_mass`` diagnostic).
    """

    logp_old: Tensor
    logp_ref: Tensor
    mask: Tensor
    rewards: Tensor
    group_size: int
    logp_rollout: Tensor | None = None
    kept_logmass: Tensor | None = None

    def __post_init__(self):
        validated(self._check, self.logp_old, self.logp_ref, self.rewards, mask=self.mask,
                  also=self._rollout_fields_ok)  # one host sync for every value condition

    def _check(self) -> None:
        B, _ = check_token_tensors(self.mask, logp_old=self.logp_old, logp_ref=self.logp_ref)
        check_float("rewards", self.rewards, shape=(B,))
        if self.rewards.dtype != self.logp_old.dtype:
            raise ValueError(f"rewards dtype {self.rewards.dtype} differs from logp_old dtype {self.logp_old.dtype}")
        check_group_size(B, self.group_size)
        for name in ("logp_rollout", "kept_logmass"):
            self._check_rollout_field(name)
        if self.kept_logmass is not None and not values_trusted() and bool(self._positive_kept().any()):
            raise ValueError("kept_logmass must be <= 0 (the log of a kept probability mass); got a positive value")

    def _unscored(self, x: Tensor) -> Tensor:
        """``[B, T]`` True on the response tokens where the rollout field ``x`` is not finite (an error)."""
        return self.mask & ~torch.isfinite(x)

    def _positive_kept(self) -> Tensor:
        """``[B, T]`` True where ``kept_logmass`` is positive (an error; 1e-9 of round-off allowed)."""
        return self.kept_logmass > 1e-9

    def _rollout_fields_ok(self) -> Tensor:
        """0-dim bool: the value conditions of the rollout fields that :meth:`_check` tests when not trusted (finite
        on response tokens; ``kept_logmass`` <= 0), for :func:`validated`'s one sync."""
        ok = torch.ones((), dtype=torch.bool, device=self.mask.device)
        for x in (self.logp_rollout, self.kept_logmass):
            if x is not None:
                ok = ok & ~self._unscored(x).any()
        if self.kept_logmass is not None:
            ok = ok & ~self._positive_kept().any()
        return ok

    def _check_rollout_field(self, name: str) -> None:
        x = getattr(self, name)
        if x is None:
            return
        check_float(name, x, shape=self.logp_old.shape, finite=False)
        if x.dtype != self.logp_old.dtype:
            raise ValueError(f"{name} dtype {x.dtype} differs from logp_old dtype {self.logp_old.dtype}")
        if values_trusted():  # the values are :meth:`_rollout_fields_ok`'s (read in validated's one sync)
            return
        bad = self._unscored(x)
        if bool(bad.any()):
            i, t = (int(v) for v in bad.nonzero()[0])
            what = ("the sampler reports zero probability for a token it emitted (row {i}, position {t}); the "
                    "trainer needs q(a_t|s_t) > 0 to form the importance ratio — check the engine's logprobs mode "
                    "and that the reported log-probs belong to these tokens" if name == "logp_rollout" else
                    "the trainer's π_old gives the sampler's kept set zero mass (row {i}, position {t})")
            raise ValueError(f"{name} is not finite on a response token: " + what.format(i=i, t=t))

    @property
    def batch_size(self) -> int:
        return self.logp_old.shape[0]


class Diagnostics(MutableMapping):
    """The detached 0-dim diagnostics of one loss call (``str`` → ``Tensor``), computed when first read.

    Sources are functions returning dicts (:meth:`defer`), evaluated in order under ``torch.no_grad`` on the first
    access of any key; a loss computation that nobody inspects (the exact engine's) never computes them. They read
    the call's detached tensors, so read the diagnostics before modifying those inputs in place.
    """

    __slots__ = ("_pending", "_data")

    def __init__(self, *sources: Callable[[], dict]):
        self._pending: list[Callable[[], dict]] = list(sources)
        self._data: dict[str, Tensor] = {}

    def defer(self, source: Callable[[], dict]) -> None:
        """Add entries computed by ``source()`` when the diagnostics are first read."""
        self._pending.append(source)

    def _resolved(self) -> dict[str, Tensor]:
        if self._pending:
            pending, self._pending = self._pending, []
            with torch.no_grad(), trusted():  # values from a validated computation
                for source in pending:
                    self._data.update(source())
        return self._data

    def __getitem__(self, key: str) -> Tensor:
        return self._resolved()[key]

    def __setitem__(self, key: str, value: Tensor) -> None:
        self._resolved()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._resolved()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._resolved())

    def __len__(self) -> int:
        return len(self._resolved())

    def __repr__(self) -> str:
        return f"Diagnostics({self._resolved()!r})"


_FIELD_TYPES = {"advantage": Advantage, "policy_loss": PolicyLoss, "kl": KLTerm, "aggregation": Aggregation,
                "objective": Objective, "correction": RolloutCorrection}


@dataclass(frozen=True)
class Method:
    """A KL-regularized policy-gradient method, one typed component per orthogonal choice.

    The update on a batch is −∇_θ of ``aggregation(policy_loss(A) + β·kl.loss_term)`` with token advantages
    A_{i,t} = advantage(r − β·kl.sequence_penalty)_i − β·kl.token_penalty_{i,t} (see :meth:`loss`).

    Attributes:
      name: registry name (or a user's label).
      advantage: the sequence-level advantage (``rlkl.components``: GroupStandardized, GroupCentered, LeaveOneOut,
        BatchStandardized, Raw).
      policy_loss: Reinforce, PPOClip, GSPO or RPG (an RPG surrogate carries its own KL to π_old).
      kl: NoKL, KLLoss, KLReward or FutureReturn: where the KL to π_ref enters.
      aggregation: how per-token losses become a scalar.
      beta: β >= 0, the coefficient of the one KL the method has: of ``kl`` (to π_ref), or of the RPG surrogate's
        KL to π_old. β > 0 with neither is refused.
      objective: what the method *intends* to optimize (its documentation's claim; β and G bound at audit time).
      citation: where the method comes from (paper arXiv id + equation, or the framework flag).
      description: one line on what it is.
      correction: the rollout correction (``rlkl.components.RolloutCorrection``): the detached weight w_t on the
        per-token policy loss computed from ``batch.logp_rollout``; NoCorrection (w = 1) by default.
    """

    name: str
    advantage: Advantage = field(default_factory=GroupStandardized)
    policy_loss: PolicyLoss = field(default_factory=PPOClip)
    kl: KLTerm = field(default_factory=NoKL)
    aggregation: Aggregation = field(default_factory=Aggregation)
    beta: float = 0.0
    objective: Objective = REVERSE_KL_TO_REF
    citation: str = ""
    description: str = ""
    correction: RolloutCorrection = field(default_factory=NoCorrection)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Method.name must be a non-empty string, got {self.name!r}")
        for fname, base in _FIELD_TYPES.items():
            value = getattr(self, fname)
            if not isinstance(value, base):
                raise ValueError(f"Method.{fname} must be an rlkl {base.__name__} component "
                                 f"(see rlkl.components), got {value!r}")
        object.__setattr__(self, "beta", check_real("Method.beta", self.beta, low=0))
        self._check_combination()

    def _check_combination(self) -> None:
        pl, kl, agg = self.policy_loss, self.kl, self.aggregation
        if pl.carries_kl and not isinstance(kl, NoKL):
            raise ValueError(f"policy_loss={pl!r} carries its own KL (to π_old, coefficient β) and cannot be combined "
                             f"with kl={kl!r}: use kl=NoKL()")
        if self.beta > 0 and isinstance(kl, NoKL) and not pl.carries_kl:
            raise ValueError(f"beta={self.beta:g} has no effect: kl=NoKL() and policy_loss={pl!r} carry no KL term; "
                             "set beta=0 or choose a KL term (KLLoss, KLReward, FutureReturn)")
        if isinstance(pl, RPG) and pl.level is RPGLevel.SEQUENCE and agg.mode is not AggMode.SEQ_MEAN_TOKEN_SUM:
            raise ValueError(f"policy_loss={pl!r} spreads each response's loss over its tokens; it needs "
                             f"aggregation=Aggregation('seq-mean-token-sum'), got {agg!r}")

    # -- what consumers ask ----------------------------------------------------------------------------------
    @property
    def is_group_based(self) -> bool:
        """True when the advantage needs groups of G >= 2 responses per prompt."""
        return self.advantage.couples_group

    @property
    def has_kl(self) -> bool:
        """True when the method has a KL for β to weigh (a KL term, or an RPG surrogate's KL to π_old)."""
        return self.policy_loss.carries_kl or not isinstance(self.kl, NoKL)

    @property
    def kl_active(self) -> bool:
        """True when a KL to π_ref is part of the update (a KL term and β > 0)."""
        return self.beta > 0 and not isinstance(self.kl, NoKL)

    @property
    def uses_reference(self) -> bool:
        """True when the update needs π_ref log-probs."""
        return self.kl_active

    @property
    def advantages_read_logprobs(self) -> bool:
        """True when :meth:`advantages` reads ``batch.logp_old`` / ``batch.logp_ref`` (a KL used as a reward)."""
        return self.kl_active and self.kl.reads_rollout_logprobs

    @property
    def kl_in_loss(self) -> bool:
        return self.kl_active and self.kl.in_loss

    def replace(self, **changes: Any) -> "Method":
        """A copy with some fields changed (``dataclasses.replace``); validation runs again."""
        return dataclasses.replace(self, **changes)

    def bound_objective(self, group_size: int | None = None) -> Objective:
        """The claim with β (and G, and the advantage's std/ε for a finite-group utility) filled in."""
        std = getattr(self.advantage, "std", None)
        eps = getattr(self.advantage, "eps", None)
        return self.objective.bind(beta=self.beta, group_size=group_size, std=std, eps=eps)

    # -- the computation -------------------------------------------------------------------------------------
    def _check(self, logp: Tensor, batch: "RolloutBatch", sequence_advantages: Tensor | None = None) -> None:
        """The boundary of :meth:`loss`: logp's structure now, its values (finite) in one host sync — at the end of
        the caller's ``deferring`` block when there is one; the batch validated itself."""
        extra = () if not isinstance(sequence_advantages, Tensor) else (sequence_advantages,)
        validated(lambda: self._check_args(logp, batch, sequence_advantages), logp, *extra)

    def _check_args(self, logp: Tensor, batch: "RolloutBatch", sequence_advantages: Tensor | None) -> None:
        if not isinstance(batch, RolloutBatch):
            raise ValueError(f"batch must be a RolloutBatch, got {type(batch).__name__}")
        check_float("logp", logp, shape=batch.logp_old.shape)
        if logp.dtype != batch.logp_old.dtype:
            raise ValueError(f"logp dtype {logp.dtype} differs from the batch's {batch.logp_old.dtype}")
        if sequence_advantages is not None:
            check_float("sequence_advantages", sequence_advantages, shape=batch.logp_old.shape[:1])
            if sequence_advantages.dtype != logp.dtype:
                raise ValueError(f"sequence_advantages dtype {sequence_advantages.dtype} differs from logp's {logp.dtype}")
        elif batch.group_size < self.advantage.min_group_size:
            raise ValueError(f"method {self.name!r} uses a group-based advantage ({type(self.advantage).__name__}) and "
                             f"needs group_size >= {self.advantage.min_group_size}, got {batch.group_size}")

    def _rollout_log_ratio(self, batch: "RolloutBatch") -> Tensor:
        # rollout-time log π_old − log π_ref (verl, OpenRLHF, FRPO); sg[·]: it enters as a reward, not a loss
        return (batch.logp_old - batch.logp_ref).detach()

    def sequence_advantages(self, batch: "RolloutBatch") -> Tensor:
        """``[B]`` sequence-level advantage, including a KL fused into the reward (``KLReward(form=FUSED)``)."""
        with trusted():  # the batch validated its values
            return self._sequence_advantages(batch)

    def _sequence_advantages(self, batch: "RolloutBatch") -> Tensor:
        rewards = batch.rewards
        if self.kl_active and self.kl.penalizes_sequences:  # (a KL loss has no reward part: no [B, T] log-ratio)
            penalty = self.kl.sequence_penalty(self._rollout_log_ratio(batch), batch.mask)
            if penalty is not None:
                rewards = rewards - self.beta * penalty
        lengths = batch.mask.sum(-1).to(rewards.dtype) if self.advantage.reads_lengths else None  # [B] |y_i|
        return self.advantage.compute(rewards, batch.group_size, lengths)

    def advantages(self, batch: "RolloutBatch", sequence_advantages: Tensor | None = None) -> Tensor:
        """``[B, T]`` token advantages used by the policy loss (no gradient; zero on padding).

        Includes the reward-side KL terms (``KLReward``, ``FutureReturn``), computed from the rollout log-probs
        ``logp_old`` as verl/OpenRLHF/FRPO do. ``sequence_advantages`` lets a caller that already has
        :meth:`sequence_advantages` for this batch pass it instead of recomputing it.
        """
        with trusted():  # the batch validated its values
            return self._advantages(batch, sequence_advantages)

    def _advantages(self, batch: "RolloutBatch", sequence_advantages: Tensor | None, for_loss: bool = False
                    ) -> Tensor:
        """:meth:`advantages`; ``for_loss``: for this method's own policy loss, which may then get, where ``mask``
        is False, the row's value instead of 0 (see below)."""
        mask = batch.mask
        seq_adv = self._sequence_advantages(batch) if sequence_advantages is None else sequence_advantages
        penalty = None
        if self.kl_active and self.kl.penalizes_tokens:
            penalty = self.kl.token_penalty(self._rollout_log_ratio(batch), mask)
        if (for_loss and penalty is None and not self.advantage.steps_tokens
                and not self.policy_loss.reads_padding_advantages):
            # one value per response, A_{i,t} = A_i: a stride-0 [B, T] view of the [B] advantages (no [B, T] pass;
            # padding holds A_i, which a loss that does not read padding advantages leaves to the aggregation)
            return seq_adv.detach()[:, None].expand(mask.shape)  # sg[A]: advantages are data
        adv = seq_adv[:, None] * _mask_as(mask, seq_adv.dtype)  # [B, T], 0 on padding
        if penalty is not None:
            adv = adv - self.beta * penalty
        adv = self.advantage.token_step(adv, mask, batch.group_size)  # identity except token whitening (REINFORCE++)
        return adv.detach()  # sg[A]: advantages are data

    def policy_loss_terms(self, logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor) -> PolicyLossOutput:
        """The per-token policy-loss part for given ``[B, T]`` advantages (before the KL loss and aggregation)."""
        return self.policy_loss(logp, logp_old, advantages, mask, self.beta)

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
          logp_ref: ``[B, T]`` reference log-probs; required for a KL loss, otherwise used only for the ``kl/*``
            diagnostics.
          token_weights: optional ``[B, T]`` non-negative data weights on the per-token *policy* loss (verl's
            ``rollout_is_weights``).
        Returns:
          (scalar loss, detached diagnostics: ``loss/policy``, ``loss/kl``, ``clip_fraction/*``, ``ratio/*`` and,
          when ``logp_ref`` is given, ``kl/k1|k2|k3``).
        """
        if values_trusted():  # a trusted caller (Method.loss, the exact engine) validated the values
            self._check_given(logp, logp_old, mask, advantages, logp_ref, token_weights)  # structure only
            return self._loss_given_advantages(logp, logp_old, mask, advantages, logp_ref, token_weights)
        extra = tuple(t for t in (logp_ref, token_weights) if t is not None)
        with deferring():  # one host sync at the end: the inputs' values (first), then the loss's finiteness
            validated(lambda: self._check_given(logp, logp_old, mask, advantages, logp_ref, token_weights), logp,
                      logp_old, advantages, *extra, mask=mask,
                      also=None if token_weights is None else lambda: ~(token_weights < 0).any())
            with trusted():
                return self._loss_given_advantages(logp, logp_old, mask, advantages, logp_ref, token_weights,
                                                   check_total=True)

    def _check_given(self, logp, logp_old, mask, advantages, logp_ref, token_weights) -> None:
        """The checks of :meth:`loss_given_advantages`, in the order their errors are raised."""
        check_token_tensors(mask, logp=logp, logp_old=logp_old, advantages=advantages)
        if token_weights is not None:
            check_float("token_weights", token_weights, shape=logp.shape)
            if not values_trusted() and bool((token_weights < 0).any()):
                raise ValueError("token_weights must be non-negative")
        if logp_ref is None and self.kl_in_loss:
            raise ValueError(f"method {self.name!r} has a KL loss towards π_ref: logp_ref is required")
        if logp_ref is not None:
            check_token_tensors(mask, logp=logp, logp_ref=logp_ref)

    def _loss_given_advantages(self, logp: Tensor, logp_old: Tensor, mask: Tensor, advantages: Tensor,
                               logp_ref: Tensor | None, token_weights: Tensor | None, check_total: bool = False
                               ) -> tuple[Tensor, "Diagnostics"]:
        """:meth:`loss_given_advantages` on validated inputs (no host sync; ``check_total``: a deferred check
        that the loss is finite)."""
        # [B, T], or [B, 1]: one value per response, each of its tokens' loss (`PolicyLoss.terms`)
        per_token, policy_diagnostics = self.policy_loss.terms(logp, logp_old, advantages, mask, self.beta)
        if per_token.shape[1] != mask.shape[1] and type(self.aggregation).__call__ is not Aggregation.__call__:
            per_token = per_token.expand(mask.shape)  # a user's aggregation gets the [B, T] loss it documents
        policy_part = per_token.detach()
        if token_weights is not None:
            per_token = per_token * token_weights.detach()  # data weights, no gradient
        kl_tok = None
        if self.kl_in_loss:
            kl_tok = self.kl.loss_terms(logp, logp_ref, logp_old, mask)  # [B, T], masked by the aggregation
            per_token = per_token + self.beta * kl_tok
            kl_tok = kl_tok.detach()
        total = self.aggregation(per_token, mask)
        if check_total:  # finite inputs can still overflow a per-token loss (huge advantages): say so, never nan
            require(torch.isfinite(total), lambda: check_float("loss", per_token.detach()))
        lp = logp.detach()
        return total, Diagnostics(lambda: self._diagnostics(policy_part, policy_diagnostics, lp, logp_ref, mask,
                                                            kl_tok))

    def _diagnostics(self, policy_part: Tensor, policy_diagnostics, logp: Tensor, logp_ref: Tensor | None,
                     mask: Tensor, kl_tok: Tensor | None) -> dict[str, Tensor]:
        low, high, dual, r_mean, r_min, r_max = (policy_diagnostics(i) for i in range(6))
        kl_value = (torch.zeros((), dtype=logp.dtype, device=logp.device) if kl_tok is None
                    else self.aggregation(kl_tok, mask))
        diagnostics = {"loss/policy": self.aggregation(policy_part, mask), "loss/kl": kl_value,
                       "clip_fraction/low": low, "clip_fraction/high": high, "clip_fraction/dual": dual,
                       "ratio/mean": r_mean, "ratio/min": r_min, "ratio/max": r_max}
        if logp_ref is not None:
            log_ratio = logp - logp_ref.detach()
            for k in Estimator:
                diagnostics[f"kl/{k.value}"] = masked_mean(kl_estimate(log_ratio, k.value), mask)
        return diagnostics

    def loss(self, logp: Tensor, batch: "RolloutBatch", validate: bool = True,
             sequence_advantages: Tensor | None = None) -> tuple[Tensor, "Diagnostics"]:
        """The method's scalar loss on a batch, and diagnostics.

        Args:
          logp: ``[B, T]`` log π_θ(a_t|s_t) of the sampled tokens under the current policy (differentiable).
          batch: the rollout (behaviour and reference log-probs, mask, rewards, group size).
          validate: check ``logp`` (see below); False for a trusted caller.
          sequence_advantages: ``[B]`` the rows' sequence advantages when computed elsewhere — the batch then holds
            any rows of their groups (the exact engine's first rows; :meth:`sequence_advantages` of the whole
            groups); its ``group_size`` is only read by a token step (REINFORCE++'s whitening) and diagnostics.
        Returns:
          (loss, diagnostics). −∇_θ loss is the method's update direction; which objective it ascends (in
          expectation over rollouts) is ``self.objective`` when the method is exact, otherwise the terms of
          ``predicted_bias_terms`` describe the gap (checked exactly by ``rlkl.toy.audit``). Diagnostics are
          detached 0-dim tensors: ``loss/policy``, ``loss/kl`` (aggregated penalty before β), clip fractions,
          ratio statistics, ``kl/k1|k2|k3`` (token means of the estimates of log π_θ − log π_ref),
          ``advantage/mean|std``, ``zero_advantage_group_fraction`` — computed when first read
          (:class:`Diagnostics`), so a caller that reads none (the exact engine) pays for none.

        Validation: ``logp`` is checked here and the batch checked itself when it was built; the computation reads
        no value on the host, and one sync at the end checks ``logp``'s values (their error comes first), that the
        loss is finite (finite inputs can still overflow a per-token loss) and any check of a derived value (an
        overflowing FRPO term, an empty row of a sequence-level loss). ``validate=False`` is for trusted callers
        that validated ``logp`` themselves (the exact engine): ``logp``'s values are not read, and the derived
        checks are collected by the caller's ``rlkl._checks.deferring`` block — then the call reads no value on
        the host (the exact engine evaluates them once, at its end); outside such a block each derived check the
        method has is evaluated at once (one host sync each). The backward and the diagnostics read no value on
        the host either (tests/test_host_syncs.py counts the syncs and runs every method on meta tensors).
        """
        if not validate:
            with trusted():
                self._check(logp, batch, sequence_advantages)  # structure only
                return self._loss(logp, batch, False, sequence_advantages)
        with deferring():  # one host sync at the end: logp's values (first), then the derived checks
            self._check(logp, batch, sequence_advantages)
            with trusted():
                return self._loss(logp, batch, True, sequence_advantages)

    def _loss(self, logp: Tensor, batch: "RolloutBatch", check_total: bool, sequence_advantages: Tensor | None = None
              ) -> tuple[Tensor, "Diagnostics"]:
        seq_adv = self._sequence_advantages(batch) if sequence_advantages is None else sequence_advantages
        weights = self.rollout_weights(batch)
        total, diagnostics = self._loss_given_advantages(logp, batch.logp_old, batch.mask,
                                                         self._advantages(batch, seq_adv, for_loss=True),
                                                         batch.logp_ref, weights,
                                                         check_total)
        if weights is not None:
            diagnostics.defer(lambda: self.rollout_diagnostics(batch, weights))
        G, dtype = batch.group_size, logp.dtype
        diagnostics.defer(lambda: {
            "advantage/mean": seq_adv.mean(), "advantage/std": seq_adv.std(correction=0),
            "zero_advantage_group_fraction": (seq_adv.view(-1, G).abs().amax(-1) == 0).to(dtype).mean()})
        return total, diagnostics

    # -- rollout correction ---------------------------------------------------------------------------------
    def rollout_weights(self, batch: "RolloutBatch") -> Tensor | None:
        """``[B, T]`` detached weights w of ``self.correction`` from ρ_t = exp(logp_old − logp_rollout), or None
        when the batch has no ``logp_rollout`` (the engine sampled from π_old: every correction gives w = 1).

        Pass them as ``loss_given_advantages(..., token_weights=w)`` when calling that directly.
        """
        if batch.logp_rollout is None:
            return None
        if self.correction.replays_kept_set and batch.kept_logmass is None:
            raise ValueError(f"method {self.name!r} replays the sampler's mask ({self.correction!r}): the batch needs "
                             "kept_logmass, and logp / logp_old renormalized over the kept set")
        from rlkl.sampling import rollout_log_ratio

        log_ratio = rollout_log_ratio(batch.logp_old, batch.logp_rollout, batch.mask)
        return self.correction.weights(log_ratio, batch.mask).detach()  # sg[w]: a change of measure

    def rollout_diagnostics(self, batch: "RolloutBatch", weights: Tensor) -> dict[str, Tensor]:
        """``rollout/*`` statistics of the mismatch (``rlkl.sampling.mismatch_diagnostics``; docs/metrics.md)."""
        from rlkl.sampling import mismatch_diagnostics, rollout_log_ratio

        raw = None
        if self.correction.bounded:
            raw = self.correction.uncapped().weights(
                rollout_log_ratio(batch.logp_old, batch.logp_rollout, batch.mask), batch.mask)
        stats = mismatch_diagnostics(batch.logp_old, batch.logp_rollout, batch.mask, weights, raw,
                                     batch.kept_logmass)
        return {f"rollout/{k}": v for k, v in stats.items()}

    # -- what rlkl predicts ---------------------------------------------------------------------------------
    def predicted_bias_terms(self, off_policy: bool = False, variable_length: bool = False) -> tuple[str, ...]:
        """The named bias terms the theory predicts between the expected update and −∇objective.

        Args:
          off_policy: samples come from π_old ≠ π_θ (K > 1 optimizer steps per batch).
          variable_length: responses have different lengths (EOS).
        """
        from rlkl.toy.terms import Setting, predicted_terms  # lazy: `import rlkl.methods` stays light

        return predicted_terms(self, Setting(off_policy=off_policy, variable_length=variable_length))

    # -- serialization ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-able dict (components as ``{"kind": ..., fields}``); :meth:`from_dict` inverts it."""
        return {"name": self.name, "advantage": component_to_dict(self.advantage),
                "policy_loss": component_to_dict(self.policy_loss), "kl": component_to_dict(self.kl),
                "aggregation": component_to_dict(self.aggregation), "beta": self.beta,
                "objective": self.objective.to_dict(), "citation": self.citation, "description": self.description,
                "correction": component_to_dict(self.correction)}

    @classmethod
    def from_dict(cls, d: dict) -> "Method":
        """The Method of :meth:`to_dict`'s output (a ValueError names what is wrong)."""
        if not isinstance(d, dict):
            raise ValueError(f"a Method dict must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Method has no fields {unknown}; fields: {sorted(known)}")
        kw = dict(d)
        for key, base in (("advantage", Advantage), ("policy_loss", PolicyLoss), ("kl", KLTerm),
                          ("aggregation", Aggregation), ("correction", RolloutCorrection)):
            if key in kw:
                kw[key] = component_from_dict(kw[key], base)
        if "objective" in kw:
            kw["objective"] = Objective.from_dict(kw["objective"])
        return cls(**kw)


# ---------------------------------------------------------------------------------------------------------------
# registry: every method written out by name (grep finds each definition)

_AGG_TOKEN_MEAN = Aggregation(AggMode.TOKEN_MEAN)
_AGG_SEQ_MEAN = Aggregation(AggMode.SEQ_MEAN_TOKEN_MEAN)
_AGG_SEQ_SUM = Aggregation(AggMode.SEQ_MEAN_TOKEN_SUM)
_GRPO_ADV = GroupStandardized(Std.BESSEL, 1e-6)  # verl's grpo estimator
_FRPO_ADV = GroupStandardized(Std.POPULATION, 1e-6)  # FRPO Alg. 1
_GRPO_CLIP = PPOClip(0.2, 0.2, dual=3.0)  # verl's clip_ratio 0.2, clip_ratio_c 3
_FRPO_CLAIM = Objective(Utility.FINITE_GROUP, Regularizer.REVERSE_KL, Level.SEQUENCE, Anchor.REF)


def _rpg_claim(reg: Regularizer) -> Objective:
    return Objective(Utility.EXPECTED_REWARD, reg, Level.SEQUENCE, Anchor.OLD)


_RPG_CLAIMS = {RPGDivergence.FKL: _rpg_claim(Regularizer.FORWARD_KL), RPGDivergence.RKL: _rpg_claim(Regularizer.REVERSE_KL),
               RPGDivergence.UFKL: _rpg_claim(Regularizer.UNNORMALIZED_FORWARD_KL),
               RPGDivergence.URKL: _rpg_claim(Regularizer.UNNORMALIZED_REVERSE_KL)}


def _rpg_token(name: str, div: RPGDivergence, form: RPGForm, citation: str, description: str) -> Method:
    """Token-level RPG with RPG-Style Clip as the released code runs it: group-centred advantage, token-mean."""
    return Method(name, advantage=GroupCentered(), policy_loss=RPG(div, form, RPGLevel.TOKEN, RPGClip()),
                  aggregation=_AGG_TOKEN_MEAN, beta=1e-4, objective=_RPG_CLAIMS[div], citation=citation,
                  description=description)


def _rpg_sequence(name: str, div: RPGDivergence, citation: str, description: str) -> Method:
    """Sequence-level RPG-REINFORCE without clip: leave-one-out baseline, one sample per response."""
    return Method(name, advantage=LeaveOneOut(), policy_loss=RPG(div, RPGForm.REINFORCE, RPGLevel.SEQUENCE, None),
                  aggregation=_AGG_SEQ_SUM, beta=1e-4, objective=_RPG_CLAIMS[div], citation=citation,
                  description=description)


_FKL, _RKL, _UFKL, _URKL = RPGDivergence.FKL, RPGDivergence.RKL, RPGDivergence.UFKL, RPGDivergence.URKL
_DIFF, _REINF = RPGForm.DIFFERENTIABLE, RPGForm.REINFORCE

_METHODS = [
    Method("reinforce", advantage=Raw(), policy_loss=Reinforce(), aggregation=_AGG_SEQ_SUM, objective=NO_REGULARIZER,
           citation="Williams 1992", description="REINFORCE on the sequence reward, no baseline"),
    Method("rloo", advantage=LeaveOneOut(), policy_loss=Reinforce(), kl=KLReward(Estimator.K1, RewardForm.FUSED),
           aggregation=_AGG_SEQ_SUM, beta=0.05, objective=REVERSE_KL_TO_REF,
           citation="Ahmadian et al. arXiv 2402.14740; TRL RLOOTrainer",
           description="leave-one-out baseline, k1 summed into the reward (unbiased: no std normalization)"),
    Method("no_kl", advantage=_GRPO_ADV, policy_loss=_GRPO_CLIP, aggregation=_AGG_SEQ_MEAN, objective=NO_REGULARIZER,
           citation="GRPO without KL (DAPO / Dr. GRPO practice)", description="GRPO advantage + PPO clip, no KL term"),
    Method("grpo", advantage=_GRPO_ADV, policy_loss=_GRPO_CLIP, kl=KLLoss(Estimator.K3), aggregation=_AGG_SEQ_MEAN,
           beta=0.04, objective=REVERSE_KL_TO_REF,
           citation="DeepSeekMath arXiv 2402.03300 eq. 3; verl use_kl_loss low_var_kl; TRL beta>0",
           description="GRPO default: std-normalized advantage, PPO clip, k3 as a loss"),
    Method("grpo_k1_loss", advantage=_GRPO_ADV, policy_loss=_GRPO_CLIP, kl=KLLoss(Estimator.K1),
           aggregation=_AGG_SEQ_MEAN, beta=0.04, objective=REVERSE_KL_TO_REF, citation="verl kl_loss_type=kl",
           description="GRPO with k1 as the KL loss"),
    Method("grpo_k2_loss", advantage=_GRPO_ADV, policy_loss=_GRPO_CLIP, kl=KLLoss(Estimator.K2),
           aggregation=_AGG_SEQ_MEAN, beta=0.04, objective=REVERSE_KL_TO_REF,
           citation="verl kl_loss_type=mse; Liu et al. arXiv 2510.01555", description="GRPO with k2 as the KL loss"),
    Method("grpo_k3_plus", advantage=_GRPO_ADV, policy_loss=_GRPO_CLIP, kl=KLLoss(Estimator.K3, straight_through=True),
           aggregation=_AGG_SEQ_MEAN, beta=0.04, objective=REVERSE_KL_TO_REF, citation="verl kl_loss_type=low_var_kl+",
           description="GRPO with verl's k3+ (value k3, gradient k2)"),
    Method("grpo_is_k3", advantage=_GRPO_ADV, policy_loss=_GRPO_CLIP, kl=KLLoss(Estimator.K3, importance_weight=True),
           aggregation=_AGG_SEQ_MEAN, beta=0.04, objective=REVERSE_KL_TO_REF,
           citation="DeepSeek-V3.2; TRL use_bias_correction_kl; RPG arXiv 2505.17508 §2.2",
           description="GRPO with importance-weighted k3 loss (ρ·k3)"),
    Method("grpo_k1_reward", advantage=_GRPO_ADV, policy_loss=_GRPO_CLIP, kl=KLReward(Estimator.K1, RewardForm.FUSED),
           aggregation=_AGG_SEQ_MEAN, beta=0.001, objective=REVERSE_KL_TO_REF,
           citation="verl use_kl_in_reward with adv_estimator=grpo; FRPO arXiv 2601.10201 Prop. 3.2",
           description="k1 summed into the reward before group standardization (fused)"),
    Method("ppo_k1_rtg", advantage=LeaveOneOut(), policy_loss=PPOClip(0.2, 0.2),
           kl=KLReward(Estimator.K1, RewardForm.REWARD_TO_GO), aggregation=_AGG_SEQ_SUM, beta=0.04,
           objective=REVERSE_KL_TO_REF,
           citation="Ziegler et al. arXiv 1909.08593; OpenRLHF kl in reward; Tang & Munos arXiv 2506.09477",
           description="per-token −β·k1 in the reward, causal reward-to-go, leave-one-out baseline"),
    Method("dr_grpo", advantage=GroupCentered(), policy_loss=PPOClip(0.2, 0.2),
           aggregation=Aggregation(AggMode.SEQ_MEAN_TOKEN_SUM_NORM), objective=NO_REGULARIZER,
           citation="Liu et al. arXiv 2503.20783 (Dr. GRPO); TRL loss_type=dr_grpo",
           description="group-centred advantage, constant normalizer, no KL"),
    Method("dapo", advantage=_GRPO_ADV, policy_loss=PPOClip(0.2, 0.28), aggregation=_AGG_TOKEN_MEAN,
           objective=NO_REGULARIZER, citation="Yu et al. arXiv 2503.14476 (DAPO); TRL default loss_type=dapo",
           description="clip-higher (0.2, 0.28), token-mean loss, no KL"),
    Method("gspo", advantage=_GRPO_ADV, policy_loss=GSPO(3e-4, 4e-4), aggregation=_AGG_SEQ_MEAN,
           objective=NO_REGULARIZER, citation="Zheng et al. arXiv 2507.18071 (GSPO)",
           description="sequence-level ratio exp(mean log ρ), tiny clip range"),
    Method("frpo", advantage=_FRPO_ADV, policy_loss=PPOClip(0.2, 0.2), kl=FutureReturn("reverse_kl"),
           aggregation=_AGG_SEQ_SUM, beta=0.01, objective=_FRPO_CLAIM,
           citation="Yao et al. arXiv 2601.10201 (FRPO) Eq. 4.5, Alg. 1",
           description="GRPO advantage minus β × inclusive future sum of log ratios; no KL loss"),
    Method("frpo_k3", advantage=_FRPO_ADV, policy_loss=PPOClip(0.2, 0.2), kl=FutureReturn("reverse_kl_k3"),
           aggregation=_AGG_SEQ_SUM, beta=0.01, objective=_FRPO_CLAIM,
           citation="FRPO arXiv 2601.10201 Eq. 4.6 (k3 future terms, local δ_t)",
           description="FRPO with the k3 generator: local log ratio + strictly-future k3 sum"),
    Method("frpo_forward_kl", advantage=_FRPO_ADV, policy_loss=PPOClip(0.2, 0.2), kl=FutureReturn("forward_kl"),
           aggregation=_AGG_SEQ_SUM, beta=0.01,
           objective=Objective(Utility.FINITE_GROUP, Regularizer.TOKEN_F_DIVERGENCE, Level.SEQUENCE, Anchor.REF,
                               f_divergence="forward_kl"),
           citation="FRPO arXiv 2601.10201 Thm 4.1 (general f)",
           description="FRPO with the token-wise forward KL(π_ref‖π) summed along the trajectory"),
    _rpg_token("rpg_fkl", _FKL, _DIFF, "RPG arXiv 2505.17508 Prop. E.1, Alg. 1",
               "RPG FKL differentiable surrogate, token level + RPG-Style Clip"),
    _rpg_token("rpg_rkl", _RKL, _DIFF, "RPG arXiv 2505.17508 Prop. E.3, Alg. 1",
               "RPG RKL differentiable surrogate, token level + RPG-Style Clip"),
    _rpg_token("rpg_ufkl", _UFKL, _DIFF, "RPG arXiv 2505.17508 Prop. 3.2, Alg. 1",
               "RPG UFKL differentiable surrogate, token level + RPG-Style Clip"),
    _rpg_token("rpg_urkl", _URKL, _DIFF, "RPG arXiv 2505.17508 Prop. 3.6, Alg. 1",
               "RPG URKL differentiable surrogate, token level + RPG-Style Clip"),
    _rpg_token("rpg_reinforce_fkl", _FKL, _REINF, "RPG arXiv 2505.17508 Prop. F.1, Alg. 2",
               "RPG FKL reinforce surrogate, token level + RPG-Style Clip"),
    _rpg_token("rpg_reinforce_rkl", _RKL, _REINF, "RPG arXiv 2505.17508 Prop. F.4, Alg. 2",
               "RPG RKL reinforce surrogate, token level + RPG-Style Clip"),
    _rpg_token("rpg_reinforce_ufkl", _UFKL, _REINF, "RPG arXiv 2505.17508 Prop. F.3, Alg. 2",
               "RPG UFKL reinforce surrogate, token level + RPG-Style Clip"),
    _rpg_token("rpg_reinforce_urkl", _URKL, _REINF, "RPG arXiv 2505.17508 Prop. F.5, Alg. 2",
               "RPG URKL reinforce surrogate, token level + RPG-Style Clip"),
    _rpg_sequence("rpg_reinforce_fkl_seq", _FKL, "RPG arXiv 2505.17508 Prop. F.1",
                  "RPG FKL reinforce surrogate, sequence level"),
    _rpg_sequence("rpg_reinforce_rkl_seq", _RKL, "RPG arXiv 2505.17508 Prop. F.4",
                  "RPG RKL reinforce surrogate, sequence level"),
    _rpg_sequence("rpg_reinforce_ufkl_seq", _UFKL, "RPG arXiv 2505.17508 Prop. F.3",
                  "RPG UFKL reinforce surrogate, sequence level"),
    _rpg_sequence("rpg_reinforce_urkl_seq", _URKL, "RPG arXiv 2505.17508 Prop. F.5",
                  "RPG URKL reinforce surrogate, sequence level"),
]

_PASS_AT_K_CLAIM = Objective(Utility.PASS_AT_K, Regularizer.NONE)

# verl 0.9.1's estimators and losses that rlkl's components did not cover (so that their configs translate)
_METHODS += [
    Method("cispo", advantage=_GRPO_ADV, policy_loss=CISPO(None, 0.2), aggregation=_AGG_TOKEN_MEAN,
           objective=NO_REGULARIZER,
           citation="MiniMax-M1 arXiv 2506.13585 eqs. 4-5; verl policy_loss.loss_mode=cispo",
           description="clipped, stop-gradient IS weight on the REINFORCE term (one-sided, ε_high 0.2), token-mean"),
    Method("gspo_token", advantage=_GRPO_ADV, policy_loss=GSPO(3e-4, 4e-4), aggregation=_AGG_SEQ_MEAN,
           objective=NO_REGULARIZER,
           citation="Zheng et al. arXiv 2507.18071 eqs. 13-14 (GSPO-token); verl policy_loss.loss_mode=gspo",
           description="GSPO-token s_{i,t} = sg[s_i]·π/sg[π]: the components of `gspo` (rlkl's GSPO is the token "
                       "form; with sequence-constant advantages GSPO and GSPO-token have one loss and gradient)"),
    Method("grpo_passk", advantage=PassAtK(True, Std.BESSEL, 1e-6), policy_loss=_GRPO_CLIP,
           aggregation=_AGG_TOKEN_MEAN, objective=_PASS_AT_K_CLAIM,
           citation="Chen et al. arXiv 2503.19595 (pass@k training); verl adv_estimator=grpo_passk",
           description="only the strict best of a group learns (r_max − r_second)/(std+ε): pass@G, scaled by the std"),
    Method("opo", advantage=LengthWeightedCentered(), policy_loss=_GRPO_CLIP, aggregation=_AGG_TOKEN_MEAN,
           objective=NO_REGULARIZER,
           citation="Hao et al. arXiv 2505.23585 (OPO); verl adv_estimator=opo",
           description="baseline = the group's length-weighted mean reward (includes the sample), token-mean"),
]

#: methods whose advantage takes a statistic over the whole batch (verl's ``gpg``, ``reinforce_plus_plus``,
#: ``reinforce_plus_plus_baseline``); the exact engine's unit is one group, so their batch statistics are taken over
#: the group (docs/audit.md)
_METHODS += [
    Method("gpg", advantage=GPGAdvantage(), policy_loss=Reinforce(), aggregation=_AGG_TOKEN_MEAN,
           objective=NO_REGULARIZER,
           citation="Chu et al. arXiv 2504.02546 (GPG); verl adv_estimator=gpg, policy_loss.loss_mode=gpg",
           description="group-centred reward × α = B/#(non-zero rewards in the batch), REINFORCE without ratio"),
    Method("reinforce_pp", advantage=TokenWhitened(group_mean=False), policy_loss=PPOClip(0.2, 0.2),
           kl=KLReward(Estimator.K1, RewardForm.REWARD_TO_GO), aggregation=_AGG_SEQ_MEAN, beta=0.001,
           objective=REVERSE_KL_TO_REF,
           citation="Hu arXiv 2501.03262 eqs. 1, 8-10 (v2); verl adv_estimator=reinforce_plus_plus",
           description="k1 reward-to-go (γ = 1), returns whitened over the batch's tokens, PPO clip"),
    Method("reinforce_pp_baseline", advantage=TokenWhitened(group_mean=True), policy_loss=PPOClip(0.2, 0.2),
           kl=KLLoss(Estimator.K2), aggregation=_AGG_SEQ_MEAN, beta=0.001, objective=REVERSE_KL_TO_REF,
           citation="Hu arXiv 2501.03262 App. A (group baseline, k2 KL); verl adv_estimator="
                    "reinforce_plus_plus_baseline",
           description="group-mean baseline, then whitening over the batch's tokens; k2 as the KL loss"),
]

# rollout corrections: the frameworks' defaults for an inference engine whose sampler differs from π_old
_BASE = {m.name: m for m in _METHODS}
_METHODS += [
    _BASE["grpo"].replace(
        name="grpo_tis", correction=TokenTIS(2.0),
        citation="verl algorithm.rollout_correction.rollout_is=token, rollout_is_threshold=2.0 (TIS)",
        description="GRPO default with verl's token-level truncated IS w_t = min(π_old/q, 2) on the policy loss"),
    _BASE["dapo"].replace(
        name="dapo_seq_mis", correction=SequenceMIS(3.0),
        citation="TRL GRPOTrainer with vLLM: vllm_importance_sampling_mode=sequence_mask, clip_max=3.0 (defaults)",
        description="TRL's default: DAPO loss, sequence weight Π_t π_old/q, dropped (0) above 3"),
]
del _BASE

REGISTRY: dict[str, Method] = {m.name: m for m in _METHODS}
assert len(REGISTRY) == len(_METHODS), "duplicate registry names"


def get_method(name: str) -> Method:
    """The registered Method called ``name`` (see ``rlkl methods``)."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def list_methods() -> list[str]:
    return list(REGISTRY)
