"""The objective a method claims to optimize: J(θ) = Σ_x ρ(x) [U(p_θ(x)) − β·D_x(θ)].

One class, :class:`Objective`, serves the registry (a Method's *claim*), the exact engine (``rlkl.toy`` evaluates
it on a tree) and the user (``audit(my_loss, objective=Objective(...))``). A claim leaves the quantities the method
supplies unbound (β, the group size G, the std and ε of a finite-group utility); :meth:`Objective.bind` fills them.

Symbols (docs/theory.md): p_θ(x) = E_{y~π_θ(·|x)}[R(x, y)] (the success probability for binary rewards);
U the utility; D_x a divergence of π_θ(·|x) from an anchor (π_ref, or the behaviour policy π_old for RPG's
iterative reference).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

from rlkl._checks import check_int, check_real
from rlkl.options import Anchor, Level, Regularizer, Std, StrEnum, Utility, coerce, set_enum  # noqa: F401 (re-exported)


_BINARY_UTILITIES = (Utility.ARCSIN, Utility.FINITE_GROUP, Utility.PASS_AT_K)


@dataclass(frozen=True)
class Objective:
    """J(θ) = Σ_x ρ(x) [U(p_θ(x)) − β·D_x(θ)] (see the module docstring for the symbols).

    Attributes:
      utility: :class:`Utility`; regularizer: :class:`Regularizer`; level: :class:`Level`; anchor: :class:`Anchor`.
      f_divergence: the f of ``TOKEN_F_DIVERGENCE`` (an ``rlkl.divergences`` name), else None.
      beta: β >= 0, or None while unbound (a Method's claim: β comes from the Method).
      group_size: G for ``LEAVE_IN`` / ``FINITE_GROUP`` / ``PASS_AT_K``, or None while unbound.
      std, eps: the standardization of ``FINITE_GROUP`` (from the Method's advantage when bound by it).
      utility_scale: c of ``LINEAR``.
    """

    utility: Utility = Utility.EXPECTED_REWARD
    regularizer: Regularizer = Regularizer.REVERSE_KL
    level: Level = Level.SEQUENCE
    anchor: Anchor = Anchor.REF
    f_divergence: str | None = None
    beta: float | None = None
    group_size: int | None = None
    std: Std = Std.POPULATION
    eps: float = 0.0
    utility_scale: float = 1.0

    def __post_init__(self):
        for name, cls in (("utility", Utility), ("regularizer", Regularizer), ("level", Level), ("anchor", Anchor),
                          ("std", Std)):
            set_enum(self, name, cls)
        if self.regularizer is Regularizer.TOKEN_F_DIVERGENCE:
            if self.f_divergence is None:
                raise ValueError("Objective(regularizer=token_f_divergence) needs f_divergence (e.g. 'forward_kl')")
            from rlkl.divergences import get_f_divergence

            get_f_divergence(self.f_divergence)  # ValueError for an unknown name
        elif self.f_divergence is not None:
            raise ValueError(f"f_divergence={self.f_divergence!r} only applies to regularizer=token_f_divergence")
        if self.level is Level.LOCAL and self.regularizer not in (Regularizer.REVERSE_KL, Regularizer.FORWARD_KL,
                                                                  Regularizer.TOKEN_F_DIVERGENCE):
            raise ValueError(f"level=local is defined for reverse_kl, forward_kl, token_f_divergence; "
                             f"got {self.regularizer.value}")
        object.__setattr__(self, "beta", check_real("Objective.beta", self.beta, low=0, allow_none=True))
        object.__setattr__(self, "group_size", check_int("Objective.group_size", self.group_size, low=1,
                                                         allow_none=True))
        object.__setattr__(self, "eps", check_real("Objective.eps", self.eps, low=0))
        object.__setattr__(self, "utility_scale", check_real("Objective.utility_scale", self.utility_scale))

    @property
    def needs_binary_rewards(self) -> bool:
        """True for the utilities of a success probability (ARCSIN, FINITE_GROUP)."""
        return self.utility in _BINARY_UTILITIES

    @property
    def has_regularizer(self) -> bool:
        return self.regularizer is not Regularizer.NONE

    def bind(self, beta: float | None = None, group_size: int | None = None, std: Std | str | None = None,
             eps: float | None = None) -> "Objective":
        """A copy with the unbound quantities filled (arguments that are None keep the current value)."""
        changes: dict[str, Any] = {}
        for key, val in (("beta", beta), ("group_size", group_size), ("std", std), ("eps", eps)):
            if val is not None:
                changes[key] = val
        return dataclasses.replace(self, **changes)

    def replace(self, **changes: Any) -> "Objective":
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """A one-line formula, e.g. ``E U_4(p) - 0.1*KL(pi||pi_ref)`` (β and G shown when bound)."""
        G = "G" if self.group_size is None else str(self.group_size)
        u = {Utility.EXPECTED_REWARD: "E[R]", Utility.LEAVE_IN: f"(1-1/{G})E[R]",
             Utility.LINEAR: f"{self.utility_scale:g}E[R]", Utility.ARCSIN: "E 2asin(sqrt p)",
             Utility.FINITE_GROUP: f"E U_{G}(p)", Utility.PASS_AT_K: f"E pass@{G}/{G}",
             Utility.NONE: "0"}[self.utility]
        if self.regularizer is Regularizer.NONE or self.beta == 0:
            return u
        a = "pi_ref" if self.anchor is Anchor.REF else "pi_old"
        reg = {Regularizer.REVERSE_KL: f"KL(pi||{a})", Regularizer.FORWARD_KL: f"KL({a}||pi)",
               Regularizer.UNNORMALIZED_REVERSE_KL: f"UKL(pi||{a})", Regularizer.UNNORMALIZED_FORWARD_KL: f"UKL({a}||pi)",
               Regularizer.TOKEN_F_DIVERGENCE: f"sum_t D_{self.f_divergence}(pi||{a})"}[self.regularizer]
        b = "beta" if self.beta is None else f"{self.beta:g}"
        return f"{u} - {b}*{reg}" + (" [local]" if self.level is Level.LOCAL else "")

    def to_dict(self) -> dict:
        return {f.name: (v.value if isinstance(v, enum.Enum) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, d: dict) -> "Objective":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Objective has no fields {unknown}; fields: {sorted(known)}")
        return cls(**d)


#: the claims most methods make
REVERSE_KL_TO_REF = Objective(Utility.EXPECTED_REWARD, Regularizer.REVERSE_KL, Level.SEQUENCE, Anchor.REF)
NO_REGULARIZER = Objective(Utility.EXPECTED_REWARD, Regularizer.NONE)
