"""Every enumerated option of rlkl, in one place: the values a Method's components and an Objective take.

Each is a ``str`` enum: its ``.value`` is the name used in configs, JSON and the CLI; its repr is that value, so a
component's repr reads as the constructor call that builds it. Library functions accept either a member or its
string value (:func:`coerce`) and compare members by identity, never option strings.
"""

from __future__ import annotations

import enum
from typing import Any


class StrEnum(str, enum.Enum):
    """A ``str`` enum whose repr is its value, so component reprs read (and paste) as constructor calls."""

    def __repr__(self) -> str:
        return repr(self.value)

    def __str__(self) -> str:
        return self.value


class Utility(StrEnum):
    """U(p) of the objective.

    EXPECTED_REWARD: U = p (E[R]). LEAVE_IN: U = (1 − 1/G)·p (a group mean that includes the sample as baseline;
    docs/audit.md ``leave_in_shrink``). LINEAR: U = c·p (``utility_scale`` c). ARCSIN: U = 2·arcsin√p (GRPO's G → ∞
    utility, FRPO arXiv 2601.10201 Prop. 3.1; binary rewards). FINITE_GROUP: U_G(p) = ∫_0^p w_G (the exact
    finite-group utility of ``rlkl.utility``; binary rewards). PASS_AT_K: U = (1 − (1 − p)^G)/G, pass@G per
    sample of the group (what a best-of-group advantage ascends, verl ``grpo_passk``; arXiv 2503.19595; binary
    rewards). NONE: U = 0.
    """

    EXPECTED_REWARD = "expected_reward"
    LEAVE_IN = "leave_in"
    LINEAR = "linear"
    ARCSIN = "arcsin"
    FINITE_GROUP = "finite_group"
    PASS_AT_K = "pass_at_k"
    NONE = "none"


class Regularizer(StrEnum):
    """D_x: REVERSE_KL KL(π‖anchor); FORWARD_KL KL(anchor‖π); UNNORMALIZED_* RPG's UKL (arXiv 2505.17508 Defs. 3.1,
    3.4); TOKEN_F_DIVERGENCE FRPO's E_{y~π} Σ_t D_f(π(·|s_t)‖anchor(·|s_t)) (arXiv 2601.10201 Thm 4.1); NONE."""

    NONE = "none"
    REVERSE_KL = "reverse_kl"
    FORWARD_KL = "forward_kl"
    UNNORMALIZED_REVERSE_KL = "unnormalized_reverse_kl"
    UNNORMALIZED_FORWARD_KL = "unnormalized_forward_kl"
    TOKEN_F_DIVERGENCE = "token_f_divergence"


class Level(StrEnum):
    """SEQUENCE: the divergence of the whole response distribution (states visited by π_θ). LOCAL: Σ_s d(s)·D(π(·|s)‖
    anchor(·|s)) with the state distribution d held fixed when differentiating — what a per-token loss-side
    penalty follows (FRPO arXiv 2601.10201 Prop. 4.3)."""

    SEQUENCE = "sequence"
    LOCAL = "local"


class Anchor(StrEnum):
    """REF: the reference policy π_ref. OLD: the behaviour policy π_old (RPG's iterative reference)."""

    REF = "ref"
    OLD = "old"


class Std(StrEnum):
    """Standard deviation of a group: BESSEL divides by G − 1 (verl, TRL), POPULATION by G (FRPO Alg. 1)."""

    BESSEL = "bessel"
    POPULATION = "population"


def coerce(enum_cls: type[enum.Enum], name: str, value: Any) -> enum.Enum:
    """``value`` as a member of ``enum_cls`` (members or their string values); ValueError listing the choices."""
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not one of {[m.value for m in enum_cls]}") from None


def set_enum(obj: Any, name: str, enum_cls: type[enum.Enum]) -> None:
    """In a frozen dataclass's ``__post_init__``: coerce field ``name`` to ``enum_cls``."""
    object.__setattr__(obj, name, coerce(enum_cls, f"{type(obj).__name__}.{name}", getattr(obj, name)))


class Estimator(StrEnum):
    """Schulman's per-token estimators of KL(π‖π_ref) from δ = log π − log π_ref: k1 = δ, k2 = δ²/2,
    k3 = e^{−δ} − 1 + δ (``rlkl.divergences``)."""

    K1 = "k1"
    K2 = "k2"
    K3 = "k3"


class AggMode(StrEnum):
    """Loss aggregation (verl ``loss_agg_mode``); see :class:`Aggregation`."""

    TOKEN_MEAN = "token-mean"
    SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"
    SEQ_MEAN_TOKEN_SUM = "seq-mean-token-sum"
    SEQ_MEAN_TOKEN_SUM_NORM = "seq-mean-token-sum-norm"


class RPGDivergence(StrEnum):
    """The KL of an RPG surrogate to π_old: forward, reverse, unnormalized forward, unnormalized reverse
    (RPG arXiv 2505.17508 Secs. 3.1–3.2)."""

    FKL = "fkl"
    RKL = "rkl"
    UFKL = "ufkl"
    URKL = "urkl"

    @property
    def is_reverse(self) -> bool:
        return self in (RPGDivergence.RKL, RPGDivergence.URKL)


class RPGForm(StrEnum):
    """DIFFERENTIABLE: the fully differentiable surrogate (RPG Tables 1, 4); REINFORCE: −sg[Weight]·log π (Table 2)."""

    DIFFERENTIABLE = "differentiable"
    REINFORCE = "reinforce"


class RPGLevel(StrEnum):
    """TOKEN: every token is a sample with its own ratio (the released code); SEQUENCE: a whole response is one
    sample with the sequence ratio π_θ(y)/π_old(y) (exact for every divergence)."""

    TOKEN = "token"
    SEQUENCE = "sequence"


class RewardForm(StrEnum):
    """FUSED: Σ_t k_t summed into the sequence reward *before* the advantage (verl ``use_kl_in_reward``).
    REWARD_TO_GO: −β·k_t as a per-token reward, its causal return added to the advantage *after* normalization
    (OpenRLHF / InstructGPT-style PPO)."""

    FUSED = "fused"
    REWARD_TO_GO = "reward_to_go"


class Scope(StrEnum):
    """Which rows a batch statistic of an advantage spans: BATCH (the whole rollout batch, as verl computes
    REINFORCE++'s whitening and GPG's α) or GROUP (the G rows of one prompt). On a batch of one group the two are
    equal, which is how the exact engine evaluates batch statistics (its unit is one group)."""

    BATCH = "batch"
    GROUP = "group"
