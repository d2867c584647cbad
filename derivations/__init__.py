"""Executable derivations (sympy) of the closed-form claims rlkl relies on.

Each module is one claim family; each ``@identity`` function walks through a written derivation and asserts every
step equal to the next (see :mod:`._framework`), and declares its kind: ``symbolic-general`` (proven at the stated
generality: symbolic number of outcomes, group size, horizon, undefined f, any parametrization),
``symbolic-instance (sizes)``, ``numeric (tolerance)`` or ``counterexample``. ``python -m rlkl derive`` runs them
all; pytest runs them through ``test_all_derivations.py``. Installed, this directory is the subpackage
``rlkl.derivations``; in a source checkout it is also importable as ``derivations`` (all imports inside are relative).

Modules (in document order):

* ``grpo_utility``   — GRPO's implicit utility 2·arcsin√p (FRPO arXiv 2601.10201, Prop. 3.1) and the Bessel factor.
* ``finite_groups``  — the exact expected GRPO update for any group size G (a binomial sum), closed forms, G → ∞.
* ``k3_unnormalized``— k3 is the unnormalized KL in expectation (RPG arXiv 2505.17508, App. D).
* ``loss_side_kl``   — what k1/k2/k3 as loss or in the reward differentiate to (Tang & Munos arXiv 2506.09477).
* ``rpg_surrogates`` — the eight RPG surrogates (Props. E.1, 3.2, E.3, 3.6, F.1–F.5, 4.1).
* ``future_kl``      — the future-KL term of the sequence-level KL gradient, any horizon (FRPO Thm 4.1).
* ``fusion``         — fusing the KL into the reward before group normalization moves the fixed point (FRPO Prop. 3.2).
* ``kl_estimators``  — Schulman's Gaussian example for k1/k2/k3 (closed forms + Monte Carlo).
* ``npg_fisher``     — Hessian of the KL at θ_old = Fisher matrix, the NPG step (RPG App. B).
"""

from __future__ import annotations

import importlib

MODULES: tuple[str, ...] = (
    "grpo_utility",
    "finite_groups",
    "k3_unnormalized",
    "loss_side_kl",
    "rpg_surrogates",
    "future_kl",
    "fusion",
    "kl_estimators",
    "npg_fisher",
)


def load_all() -> dict:
    """Import every derivation module (registering its identities) and return the registry."""
    from ._framework import REGISTRY

    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}")
    return REGISTRY


def module_docs() -> dict[str, str]:
    """Module name -> module docstring (used as the section introduction of the document)."""
    out = {}
    for name in MODULES:
        mod = importlib.import_module(f"{__name__}.{name}")
        out[mod.__name__] = (mod.__doc__ or "").strip()
    return out
