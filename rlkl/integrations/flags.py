"""Translate verl / TRL configs into rlkl Methods, with the frameworks' defaults (public entry points).

``from_verl`` reads a verl PPO/GRPO config — a YAML path, a nested or dotted mapping, plus Hydra-style
``key=value`` overrides — and ``from_trl`` a TRL ``GRPOConfig`` (object, ``to_dict()``, mapping or YAML/JSON
path). Both return an ordinary :class:`rlkl.methods.Method` whose components say what the config amounts to and
whose claimed objective is what the framework's documentation claims (E[R] − β·KL(π‖π_ref) with a KL, E[R]
otherwise), or raise a ValueError naming every key rlkl cannot translate, with the reason.

The full picture — every key classified, the defaults used, the batch layout (micro-batches, mini-batches,
gradient accumulation) — is :func:`rlkl.integrations.translate.translate_verl` / ``translate_trl``; the audit of a
config with its smallest exact fix is :func:`rlkl.integrations.explain.explain`.
"""

from __future__ import annotations

from typing import Any

from rlkl.integrations.translate import translate_trl, translate_verl
from rlkl.methods import Method

__all__ = ["from_verl", "from_trl"]


def from_verl(cfg: Any = None, name: str = "verl_config", overrides: Any = ()) -> Method:
    """The Method of a verl 0.9.1 config (see :func:`rlkl.integrations.translate.translate_verl`).

    Args:
      cfg: a YAML path, a mapping (nested, or dotted keys; ``actor.`` is short for ``actor_rollout_ref.actor.``),
        or None (verl's defaults: then ``overrides`` say everything).
      name: the Method's name. overrides: ``["key=value", ...]`` or a command-line string.
    """
    return translate_verl(cfg, overrides, name=name).require_method("from_verl")


def from_trl(cfg: Any, name: str = "trl_config", trl_version: Any = None) -> Method:
    """The Method of TRL ``GRPOConfig`` arguments (see :func:`rlkl.integrations.translate.translate_trl`).

    ``trl_version`` chooses the defaults (``use_bias_correction_kl``: False before TRL 1.10, True from 1.10 on);
    default: the object's TRL version, else 1.16.
    """
    return translate_trl(cfg, name=name, trl_version=trl_version).require_method("from_trl")
