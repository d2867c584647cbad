"""Translate verl / TRL flag sets into rlkl Methods, with the frameworks' defaults.

``from_verl`` reads a verl PPO/GRPO config (nested dict or dotted keys); ``from_trl`` reads TRL ``GRPOConfig``
arguments. The result is an ordinary :class:`rlkl.methods.Method` whose components say what the flags amount
to, and whose claimed objective is what the framework's documentation claims (E[R] − β·KL(π‖π_ref) when a KL is
on, E[R] otherwise), so ``rlkl audit`` can tell the user what the config really optimizes.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from rlkl.components import (GSPO, AggMode, Aggregation, Estimator, GroupCentered, GroupStandardized, KLLoss,
                             KLReward, KLTerm, LeaveOneOut, NoKL, PPOClip, Reinforce, RewardForm, Std)
from rlkl.methods import Method
from rlkl.objective import NO_REGULARIZER, REVERSE_KL_TO_REF

__all__ = ["from_verl", "from_trl"]


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _mapping(cfg: Any, who: str) -> dict[str, Any]:
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{who} needs a mapping of flags (a dict / JSON object), got {type(cfg).__name__} {cfg!r}")
    return _flatten(cfg)


_VERL_KL = {"kl": Estimator.K1, "k1": Estimator.K1, "mse": Estimator.K2, "k2": Estimator.K2,
            "low_var_kl": Estimator.K3, "k3": Estimator.K3}


def _verl_kl(name: Any) -> tuple[Estimator, bool]:
    """verl's KL type name → (estimator, straight-through); ``k2+`` is plain k2."""
    if not isinstance(name, str):
        raise ValueError(f"verl KL type must be a string, got {name!r}")
    plus = name.endswith("+")
    base = name[:-1] if plus else name
    if base not in _VERL_KL:
        raise ValueError(f"verl KL type {name!r} has no rlkl equivalent (supported: kl/k1, mse/k2, low_var_kl/k3, "
                         "with optional '+')")
    est = _VERL_KL[base]
    return est, plus and est is not Estimator.K2


_VERL_KNOWN = {"algorithm.adv_estimator", "algorithm.norm_adv_by_std_in_grpo", "algorithm.use_kl_in_reward",
               "algorithm.kl_penalty", "algorithm.kl_ctrl.kl_coef", "algorithm.kl_ctrl.type", "actor.use_kl_loss",
               "actor.kl_loss_type", "actor.kl_loss_coef", "actor.clip_ratio", "actor.clip_ratio_low",
               "actor.clip_ratio_high", "actor.clip_ratio_c", "actor.loss_agg_mode", "actor.policy_loss.loss_mode",
               "actor.loss_scale_factor", "actor.ppo_epochs", "algorithm.gamma", "algorithm.lam"}


def _verl_kl_term(g) -> tuple[KLTerm, float]:
    in_reward = bool(g("algorithm.use_kl_in_reward", False))
    in_loss = bool(g("actor.use_kl_loss", False))
    if in_reward and in_loss:
        raise ValueError("use_kl_in_reward and use_kl_loss together: rlkl Methods take one KL term")
    if g("algorithm.kl_ctrl.type", "fixed") != "fixed":
        raise ValueError("only algorithm.kl_ctrl.type='fixed' is translatable (adaptive β changes over training)")
    if in_reward:
        est, plus = _verl_kl(g("algorithm.kl_penalty", "kl"))
        if plus:
            raise ValueError("a '+' KL type only changes gradients; in the reward it is detached")
        return KLReward(est, RewardForm.FUSED), float(g("algorithm.kl_ctrl.kl_coef", 0.001))
    if in_loss:
        est, plus = _verl_kl(g("actor.kl_loss_type", "low_var_kl"))
        return KLLoss(est, straight_through=plus), float(g("actor.kl_loss_coef", 0.001))
    return NoKL(), 0.0


def _verl_policy_loss(g):
    mode = g("actor.policy_loss.loss_mode", "vanilla")
    clip = float(g("actor.clip_ratio", 0.2))
    low = float(g("actor.clip_ratio_low", None) or clip)
    high = float(g("actor.clip_ratio_high", None) or clip)
    if mode == "vanilla":
        return PPOClip(low, high, dual=float(g("actor.clip_ratio_c", 3.0))), mode
    if mode == "gspo":
        return GSPO(low, high), mode
    if mode == "gpg":
        return Reinforce(), mode
    raise ValueError(f"loss_mode={mode!r} is not translatable (supported: vanilla, gspo, gpg)")


def from_verl(cfg: Mapping[str, Any], name: str = "verl_config") -> Method:
    """Translate a verl PPO/GRPO config (nested dict or dotted keys) into a Method, with verl's defaults.

    Keys read (defaults of verl 0.9.1): ``algorithm.adv_estimator`` (``gae``; rlkl has no critic, so only
    ``grpo``, ``rloo`` are accepted), ``algorithm.norm_adv_by_std_in_grpo`` (True), ``algorithm.use_kl_in_reward``
    (False), ``algorithm.kl_penalty`` (``kl``), ``algorithm.kl_ctrl.kl_coef`` (0.001),
    ``actor_rollout_ref.actor.{use_kl_loss (False), kl_loss_type (low_var_kl), kl_loss_coef (0.001),
    clip_ratio (0.2), clip_ratio_low, clip_ratio_high, clip_ratio_c (3.0), loss_agg_mode (token-mean),
    policy_loss.loss_mode (vanilla), loss_scale_factor}``. ``actor.`` is accepted as a short prefix.

    The intended objective is what verl's docs claim: E[R] − β·KL(π‖π_ref).
    """
    flat = _mapping(cfg, "from_verl")
    flat = {k.replace("actor_rollout_ref.actor.", "actor."): v for k, v in flat.items()}
    unknown = sorted(set(flat) - _VERL_KNOWN)
    if unknown:
        raise ValueError(f"from_verl does not know the keys {unknown}; known: {sorted(_VERL_KNOWN)}")
    g = flat.get
    adv_est = g("algorithm.adv_estimator", "gae")
    if adv_est == "grpo":
        advantage = GroupStandardized(Std.BESSEL, 1e-6) if g("algorithm.norm_adv_by_std_in_grpo", True) \
            else GroupCentered()
    elif adv_est == "rloo":
        advantage = LeaveOneOut()
    else:
        raise ValueError(f"adv_estimator={adv_est!r} is not translatable (rlkl has no critic/value model); "
                         "use 'grpo' or 'rloo'")
    kl, beta = _verl_kl_term(g)
    policy, mode = _verl_policy_loss(g)
    agg = "seq-mean-token-mean" if mode == "gspo" else g("actor.loss_agg_mode", "token-mean")
    if agg == "token-sum":
        raise ValueError("loss_agg_mode='token-sum' is not supported (it depends on the data-parallel size)")
    horizon = g("actor.loss_scale_factor", None)
    aggregation = Aggregation(agg, int(horizon) if horizon is not None else None)
    if beta == 0:
        kl = NoKL()
    return Method(name=name, advantage=advantage, policy_loss=policy, kl=kl, aggregation=aggregation, beta=beta,
                  objective=REVERSE_KL_TO_REF if beta > 0 else NO_REGULARIZER, citation="verl config",
                  description=f"translated from verl flags: {dict(sorted(flat.items()))}")


_TRL_KNOWN = {"beta", "loss_type", "epsilon", "epsilon_high", "scale_rewards", "importance_sampling_level",
              "use_bias_correction_kl", "max_completion_length", "num_generations", "delta", "num_iterations",
              "learning_rate", "temperature"}
_TRL_AGG = {"grpo": AggMode.SEQ_MEAN_TOKEN_MEAN, "bnpo": AggMode.TOKEN_MEAN, "dapo": AggMode.TOKEN_MEAN,
            "dr_grpo": AggMode.SEQ_MEAN_TOKEN_SUM_NORM}


def _trl_version(version: Any) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\.(\d+)(?:\.\S*)?\s*", str(version))
    if m is None:
        raise ValueError(f"trl_version must look like '1.16' or '1.10.2', got {version!r}")
    return int(m.group(1)), int(m.group(2))


def _trl_advantage(scale: Any):
    scale = {True: "group", False: "none"}.get(scale, scale)
    if scale == "group":
        return GroupStandardized(Std.BESSEL, 1e-4)
    if scale == "none":
        return GroupCentered()
    raise ValueError(f"scale_rewards={scale!r} is not translatable (TRL 'batch' keeps the group mean but uses "
                     "the batch std; supported: group, none)")


def from_trl(cfg: Mapping[str, Any], name: str = "trl_config", trl_version: str = "1.16") -> Method:
    """Translate TRL ``GRPOConfig`` arguments (a dict) into a Method, with TRL's defaults.

    Keys read (defaults of TRL 1.10–1.16): ``beta`` (0.0), ``loss_type`` (``dapo``), ``epsilon`` (0.2),
    ``epsilon_high`` (None → epsilon), ``scale_rewards`` (``group``; True/False → group/none),
    ``importance_sampling_level`` (``token``), ``use_bias_correction_kl`` (True from TRL 1.11 on — PR #6503 —,
    False before: pass ``trl_version="1.10"`` for the old default), ``max_completion_length`` (512, the Dr. GRPO
    constant), ``num_generations`` (8, informational), ``delta`` (None). TRL's KL is always k3 as a loss;
    advantage ε = 1e-4 with the Bessel std.
    """
    bias_correction_default = _trl_version(trl_version) >= (1, 11)
    flat = _mapping(cfg, "from_trl")
    unknown = sorted(set(flat) - _TRL_KNOWN)
    if unknown:
        raise ValueError(f"from_trl does not know the keys {unknown}; known: {sorted(_TRL_KNOWN)}")
    g = flat.get
    if g("delta") is not None:
        raise ValueError("delta (two-sided clip) is not translatable yet")
    loss_type = g("loss_type", "dapo")
    if loss_type not in _TRL_AGG:
        raise ValueError(f"loss_type={loss_type!r} is not translatable (supported: {list(_TRL_AGG)})")
    level = g("importance_sampling_level", "token")
    if level not in ("token", "sequence"):
        raise ValueError(f"importance_sampling_level={level!r} is not one of ['token', 'sequence']")
    beta = float(g("beta", 0.0))
    eps = float(g("epsilon", 0.2))
    eps_high = g("epsilon_high", None)
    eps_high = float(eps_high) if eps_high is not None else eps
    kl = KLLoss(Estimator.K3, importance_weight=bool(g("use_bias_correction_kl", bias_correction_default))) \
        if beta > 0 else NoKL()
    mode = _TRL_AGG[loss_type]
    horizon = int(g("max_completion_length", 512)) if mode is AggMode.SEQ_MEAN_TOKEN_SUM_NORM else None
    return Method(name=name, advantage=_trl_advantage(g("scale_rewards", "group")),
                  policy_loss=GSPO(eps, eps_high) if level == "sequence" else PPOClip(eps, eps_high),
                  kl=kl, aggregation=Aggregation(mode, horizon), beta=beta,
                  objective=REVERSE_KL_TO_REF if beta > 0 else NO_REGULARIZER, citation="TRL GRPOConfig",
                  description=f"translated from TRL GRPOConfig: {dict(sorted(flat.items()))}")
