"""Executable derivations (sympy) of the closed-form claims rlkl relies on.

Each module is one claim family; each ``@identity`` function walks through a written derivation and asserts every
step equal to the next (see :mod:`derivations._framework`). ``python -m rlkl derive`` runs them all; pytest runs
them through ``derivations/test_all_derivations.py``.

Modules (in document order):

* ``grpo_utility``   — GRPO's implicit utility 2·arcsin√p (FRPO arXiv 2601.10201, I2) and the Bessel factor.
* ``finite_groups``  — exact expected GRPO update for group size G (FRPO I3/I3a), closed forms, G → ∞.
* ``k3_unnormalized``— k3 is the unnormalized KL in expectation (RPG arXiv 2505.17508, App. D).
* ``loss_side_kl``   — what k1/k2/k3 as loss or in the reward differentiate to (Tang & Munos 2506.09477).
* ``rpg_surrogates`` — the eight RPG surrogates (Props. E.1, 3.2, E.3, 3.6, F.1–F.5, 4.1).
* ``future_kl``      — the future-KL term of the sequence-level KL gradient (FRPO Thm 4.1, I6).
* ``fusion``         — fusing the KL into the reward before group normalization moves the fixed point (FRPO I9–I11).
* ``kl_estimators``  — Schulman's Gaussian table for k1/k2/k3 (closed forms + Monte Carlo).
* ``npg_fisher``     — Hessian of the KL at θ_old = Fisher matrix (RPG App. B).
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
    from derivations._framework import REGISTRY

    for name in MODULES:
        importlib.import_module(f"derivations.{name}")
    return REGISTRY


def module_docs() -> dict[str, str]:
    """Module name -> module docstring (used as the section introduction of the document)."""
    out = {}
    for name in MODULES:
        mod = importlib.import_module(f"derivations.{name}")
        out[f"derivations.{name}"] = (mod.__doc__ or "").strip()
    return out
