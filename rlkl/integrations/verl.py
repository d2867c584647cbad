"""rlkl Methods in verl's registries (``verl.trainer.ppo.core_algos``, verl 0.9.x).

Importing this module registers, under rlkl's own names, for every FRPO method (``frpo``, ``frpo_k3``,
``frpo_forward_kl``) and every RPG method (``rpg_fkl`` … ``rpg_reinforce_urkl_seq``):

* an **advantage estimator** (``register_adv_est``) — ``Method.advantages`` on the rollout batch, groups taken
  from verl's ``uid`` index (rows need not be contiguous), so ``algorithm.adv_estimator=frpo`` selects it;
* a **policy loss** (``register_policy_loss``) — the Method's per-token loss for those advantages
  (:func:`rlkl.integrations.loss_from_advantages`), reduced with verl's global-batch normalizers, so
  ``actor_rollout_ref.actor.policy_loss.loss_mode=frpo`` selects it.

Use the same name for both. Registration also happens on an explicit :func:`register_rlkl_with_verl` call
(idempotent). verl imports the module in every process (driver and Ray workers) when it is named in
``VERL_USE_EXTERNAL_MODULES=rlkl.integrations.verl`` (read by ``import verl``).

Hyper-parameters come from the verl config, structural choices from the Method (mismatches raise ValueError
rather than silently running a different method):

============================  ====================================================================
verl key                      rlkl Method field
============================  ====================================================================
algorithm.kl_ctrl.kl_coef     β of FRPO's future-KL advantage (``use_kl_in_reward`` must be False)
actor.kl_loss_coef            β of the RPG surrogates (``use_kl_loss`` must be False)
actor.clip_ratio_low / _high  PPO ε_low / ε_high (FRPO), RPG-Style Clip ε1 / ε2 (RPG)
actor.clip_ratio_c            dual-clip c, where the Method has a dual clip (RPG-Style Clip's c)
actor.loss_agg_mode           must equal ``method.aggregation`` (FRPO: seq-mean-token-sum; RPG: token-mean)
============================  ====================================================================

**FRPO needs the rollout log-probs in the advantage.** verl 0.9.1's ``compute_advantage`` forwards only
``token_level_rewards``, ``response_mask``, ``index`` and ``config`` to a registered estimator (log-probs only
to its optimal-token-baseline estimators). :func:`register_rlkl_with_verl` therefore wraps
``compute_advantage`` (in ``verl.trainer.ppo.ray_trainer`` and ``verl.trainer.ppo.v1.utils``) so that, for rlkl
estimators only, it makes ``data.batch["old_log_probs"]`` and ``data.batch["ref_log_prob"]`` visible to them;
every other estimator runs through verl's function unchanged. verl computes ``ref_log_prob`` only when a KL
is on: set ``actor.use_kl_loss=True`` with ``actor.kl_loss_coef=0`` (adds 0 × KL) for FRPO.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from rlkl.integrations import advantages_need_logprobs, loss_from_advantages
from rlkl.components import RPG, AggMode, FutureReturn, PPOClip, RPGClip
from rlkl.methods import REGISTRY, Method, RolloutBatch, get_method

__all__ = ["VERL_METHOD_NAMES", "register_rlkl_with_verl", "advantage_method", "loss_method",
           "make_adv_estimator", "make_policy_loss"]

#: rlkl methods offered to verl by name (both registries).
VERL_METHOD_NAMES: tuple[str, ...] = tuple(n for n, m in REGISTRY.items()
                                           if isinstance(m.kl, FutureReturn) or isinstance(m.policy_loss, RPG))

# (old_log_probs, ref_log_prob) of the batch whose advantage verl is computing (set by the wrapper below)
_ROLLOUT_LOGPROBS: contextvars.ContextVar[tuple[Tensor | None, Tensor | None] | None] = \
    contextvars.ContextVar("rlkl_verl_rollout_logprobs", default=None)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    getter = getattr(cfg, "get", None)
    if callable(getter):
        return getter(key, default)
    return getattr(cfg, key, default)


def _check_name(name: str) -> Method:
    if name not in VERL_METHOD_NAMES:
        raise ValueError(f"{name!r} is not an rlkl method offered to verl; choose one of {list(VERL_METHOD_NAMES)}")
    return get_method(name)


def advantage_method(name: str, algo_config: Any = None) -> Method:
    """The Method whose ``advantages`` the registered estimator ``name`` computes, given verl's ``algorithm``
    config: FRPO's β ← ``kl_ctrl.kl_coef``. Raises ValueError for ``use_kl_in_reward=True`` (the KL would be
    fused into the reward before rlkl's advantage) or an adaptive KL controller."""
    method = _check_name(name)
    if bool(_get(algo_config, "use_kl_in_reward", False)):
        raise ValueError(f"adv_estimator={name}: set algorithm.use_kl_in_reward=False; the rlkl method carries "
                         "its own KL and a reward-side KL would be fused into the reward before normalization")
    kl_ctrl = _get(algo_config, "kl_ctrl", None)
    if advantages_need_logprobs(method) and kl_ctrl is not None:
        if _get(kl_ctrl, "type", "fixed") != "fixed":
            raise ValueError(f"adv_estimator={name}: β is algorithm.kl_ctrl.kl_coef; use kl_ctrl.type=fixed")
        method = method.replace(beta=float(_get(kl_ctrl, "kl_coef", method.beta)))
    return method


def loss_method(name: str, actor_config: Any = None, loss_agg_mode: str | None = None) -> Method:
    """The Method whose policy loss the registered loss ``name`` computes, given verl's actor config.

    Clip ranges from ``clip_ratio_low``/``clip_ratio_high``/``clip_ratio_c`` (PPO clip, dual clip where the Method
    has one, RPG-Style Clip), RPG's β from ``kl_loss_coef``. Raises ValueError when ``loss_agg_mode`` differs
    from the Method's aggregation, or when verl's own KL loss is on with a non-zero coefficient (it would add a
    second KL term).
    """
    method = _check_name(name)
    agg = method.aggregation.mode.value
    if loss_agg_mode is not None and loss_agg_mode != agg:
        raise ValueError(f"loss_mode={name} aggregates with {agg!r}; set "
                         f"actor_rollout_ref.actor.loss_agg_mode={agg} (got {loss_agg_mode!r})")
    if actor_config is None:
        return method
    if bool(_get(actor_config, "use_kl_loss", False)) and float(_get(actor_config, "kl_loss_coef", 0.0)) != 0.0:
        raise ValueError(f"loss_mode={name}: verl's KL loss would add a second KL term; set use_kl_loss=False "
                         "or kl_loss_coef=0 (FRPO's KL is in the advantage, RPG's in the surrogate)")
    clip = _get(actor_config, "clip_ratio", 0.2)
    low = _get(actor_config, "clip_ratio_low", None)
    high = _get(actor_config, "clip_ratio_high", None)
    low = float(clip if low is None else low)
    high = float(clip if high is None else high)
    c = float(_get(actor_config, "clip_ratio_c", 3.0))
    pl = method.policy_loss
    if isinstance(pl, RPG):
        return method.replace(beta=float(_get(actor_config, "kl_loss_coef", method.beta)),
                              policy_loss=dataclasses.replace(pl, clip=RPGClip(low, high, c) if pl.clip else None))
    if isinstance(pl, PPOClip):
        return method.replace(policy_loss=PPOClip(low, high, c if pl.dual is not None else None))
    raise ValueError(f"{name}: rlkl offers verl only PPO-clip and RPG losses, not {type(pl).__name__}")


def _group_order(index: Any, batch_size: int) -> tuple[Tensor, int]:
    """Permutation making verl's groups (equal ``index`` values) contiguous, in order of first appearance."""
    if index is None:
        raise ValueError("rlkl advantage estimators need verl's index (the uid of each prompt) to form groups")
    keys = list(index)
    if len(keys) != batch_size:
        raise ValueError(f"index has {len(keys)} entries for a batch of {batch_size}")
    groups: dict[Any, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    sizes = sorted({len(v) for v in groups.values()})
    if len(sizes) != 1:
        raise ValueError(f"rlkl advantages need equal group sizes (rollout.n); got sizes {sizes}")
    return torch.tensor([i for rows in groups.values() for i in rows], dtype=torch.long), sizes[0]


def _label(fn, name: str, kind: str, factory: str):
    """Name and document a generated verl function after the rlkl method it wraps (``fn.__rlkl__ = name``)."""
    fn.__name__ = f"rlkl_{name}_{kind}"
    fn.__qualname__ = fn.__name__
    fn.__doc__ = f"rlkl {name!r} {kind.replace('_', ' ')} for verl (see rlkl.integrations.verl.{factory})."
    fn.__rlkl__ = name
    return fn


def make_adv_estimator(name: str):
    """verl advantage estimator for rlkl method ``name`` (``register_adv_est`` signature).

    ``fn(token_level_rewards [B,T], response_mask [B,T], index, config=AlgoConfig, old_log_probs=None,
    ref_log_prob=None, **kwargs) -> (advantages, returns)``, both ``method.advantages(batch)`` with the reward
    R_i = Σ_t token_level_rewards (verl's outcome convention) and groups from ``index``. FRPO reads the rollout
    log-probs (``old_log_probs``, ``ref_log_prob``) from its arguments or, under verl's ``compute_advantage``,
    from the wrapper installed by :func:`register_rlkl_with_verl`; ValueError when neither provides them.
    """
    _check_name(name)

    def estimator(token_level_rewards: Tensor, response_mask: Tensor, index: Any = None, config: Any = None,
                  old_log_probs: Tensor | None = None, ref_log_prob: Tensor | None = None, **kwargs: Any):
        method = advantage_method(name, config)
        mask = response_mask.bool()
        dtype = token_level_rewards.dtype if token_level_rewards.dtype in (torch.float32, torch.float64) \
            else torch.float32
        B = mask.shape[0]
        order, G = _group_order(index, B)
        if method.is_group_based and G < 2:
            raise ValueError(f"adv_estimator={name} needs groups of >= 2 responses (rollout.n), got {G}")
        if advantages_need_logprobs(method):
            if old_log_probs is None or ref_log_prob is None:
                ctx = _ROLLOUT_LOGPROBS.get()
                if ctx is not None:
                    old_log_probs = ctx[0] if old_log_probs is None else old_log_probs
                    ref_log_prob = ctx[1] if ref_log_prob is None else ref_log_prob
            if old_log_probs is None or ref_log_prob is None:
                raise ValueError(
                    f"adv_estimator={name} needs old_log_probs and ref_log_prob: call "
                    "rlkl.integrations.verl.register_rlkl_with_verl() (or import the module via "
                    "VERL_USE_EXTERNAL_MODULES) so verl's compute_advantage forwards them, and set "
                    "actor.use_kl_loss=True with kl_loss_coef=0 so verl computes ref_log_prob")
            logp_old, logp_ref = old_log_probs.to(dtype), ref_log_prob.to(dtype)
        else:  # the advantage reads rewards and mask only
            logp_old = logp_ref = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        rewards = token_level_rewards.to(dtype).masked_fill(~mask, 0).sum(-1)
        o = order.to(mask.device)
        batch = RolloutBatch(logp_old=logp_old[o], logp_ref=logp_ref[o], mask=mask[o], rewards=rewards[o],
                             group_size=G)
        adv = torch.empty_like(logp_old)
        adv[o] = method.advantages(batch)
        adv = adv.to(token_level_rewards.dtype)
        return adv, adv

    return _label(estimator, name, "advantage", "make_adv_estimator")


def _global_scale(mask: Tensor, mode: AggMode, info: dict) -> Tensor | float:
    """Factor turning rlkl's micro-batch ``aggregate`` into verl's global-batch normalization (``agg_loss``):
    verl sums micro-batch gradients (× dp_size for data-parallel averaging) and divides by the global token /
    sequence count, so each micro-batch contributes (local count / global count) × dp_size of its own mean."""
    dp = float(info.get("dp_size", 1) or 1)
    if mode is AggMode.TOKEN_MEAN:
        total = info.get("batch_num_tokens")
        if total is None:
            return dp if dp != 1 else 1.0
        return mask.sum().to(torch.float64) / float(total) * dp
    rows = mask.any(-1).sum() if mode is not AggMode.SEQ_MEAN_TOKEN_SUM_NORM else mask.shape[0]
    total = info.get("global_batch_size")
    if total is None:
        return dp if dp != 1 else 1.0
    return torch.as_tensor(rows, dtype=torch.float64) / float(total) * dp


def make_policy_loss(name: str):
    """verl policy loss for rlkl method ``name`` (``register_policy_loss`` signature).

    ``fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config=ActorConfig,
    rollout_is_weights=None) -> (loss, metrics)``. The loss is :func:`rlkl.integrations.loss_from_advantages`
    (the Method's per-token policy loss; −∂loss/∂log_prob is the Method's update) with ``rollout_is_weights``
    multiplying the per-token policy loss as in verl's own losses, times the global-batch factor of verl's
    ``agg_loss`` (``config.global_batch_info``), which is 1 for a single micro-batch on one rank.
    """
    _check_name(name)

    def policy_loss(old_log_prob: Tensor, log_prob: Tensor, advantages: Tensor, response_mask: Tensor,
                    loss_agg_mode: str = "token-mean", config: Any = None,
                    rollout_is_weights: Tensor | None = None) -> tuple[Tensor, dict[str, Any]]:
        method = loss_method(name, config, loss_agg_mode)
        mask = response_mask.bool()
        if log_prob.dtype not in (torch.float32, torch.float64):
            log_prob = log_prob.float()  # rlkl's losses take float32/float64; the cast keeps the gradient path
        loss, diag = loss_from_advantages(method, log_prob, old_log_prob.to(log_prob.dtype), None, mask,
                                          advantages.to(log_prob.dtype),
                                          None if rollout_is_weights is None else rollout_is_weights.to(log_prob.dtype))
        info = dict(_get(config, "global_batch_info", None) or {})
        scale = _global_scale(mask, method.aggregation.mode, info)
        loss = loss * (scale.to(loss.dtype) if torch.is_tensor(scale) else scale)
        with torch.no_grad():
            m = mask.to(log_prob.dtype)
            ppo_kl = ((old_log_prob.to(log_prob.dtype) - log_prob) * m).sum() / m.sum()
            names = ["actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/ppo_kl", *(f"rlkl/{k}" for k in diag)]
            values = torch.stack([diag["clip_fraction/low"] + diag["clip_fraction/high"], diag["clip_fraction/dual"],
                                  ppo_kl, *diag.values()])
        # verl's metrics are Python floats: one device → host copy for all of them (verl's own losses make three)
        return loss, dict(zip(names, values.tolist()))

    return _label(policy_loss, name, "policy_loss", "make_policy_loss")


# one function object per name, so re-registration is a no-op for verl's duplicate check
_ADV_FNS = {n: make_adv_estimator(n) for n in VERL_METHOD_NAMES}
_LOSS_FNS = {n: make_policy_loss(n) for n in VERL_METHOD_NAMES}


def _wrap_compute_advantage(orig):
    """verl's ``compute_advantage``, exposing the batch's rollout log-probs to rlkl estimators only."""
    if getattr(orig, "__rlkl_wrapped__", False):
        return orig
    sig = inspect.signature(orig)

    @functools.wraps(orig)
    def compute_advantage(data, *args: Any, **kwargs: Any):
        bound = sig.bind_partial(data, *args, **kwargs)
        est = bound.arguments.get("adv_estimator")
        est = est.value if isinstance(est, Enum) else est
        if est not in _ADV_FNS or not advantages_need_logprobs(get_method(est)):
            return orig(data, *args, **kwargs)
        batch = data.batch
        token = _ROLLOUT_LOGPROBS.set((batch["old_log_probs"] if "old_log_probs" in batch.keys() else None,
                                       batch["ref_log_prob"] if "ref_log_prob" in batch.keys() else None))
        try:
            return orig(data, *args, **kwargs)
        finally:
            _ROLLOUT_LOGPROBS.reset(token)

    compute_advantage.__rlkl_wrapped__ = True
    return compute_advantage


def _patch_compute_advantage() -> list[str]:
    patched = []
    for modname in ("verl.trainer.ppo.ray_trainer", "verl.trainer.ppo.v1.utils"):
        try:
            mod = __import__(modname, fromlist=["compute_advantage"])
        except ImportError:  # e.g. v1 needs TransferQueue (verl[verl-core]); the legacy trainer still works
            continue
        if hasattr(mod, "compute_advantage"):
            mod.compute_advantage = _wrap_compute_advantage(mod.compute_advantage)
            patched.append(modname)
    return patched


def register_rlkl_with_verl(names: tuple[str, ...] | list[str] | None = None,
                            forward_logprobs: bool = True) -> dict[str, Any]:
    """Register rlkl's advantage estimators and policy losses in verl's registries (idempotent).

    Args:
      names: which of ``VERL_METHOD_NAMES`` (default all).
      forward_logprobs: wrap verl's ``compute_advantage`` so FRPO's estimator sees ``old_log_probs`` /
        ``ref_log_prob`` (see the module docstring); without it FRPO's estimator raises when called by verl.
    Returns:
      ``{"adv_estimators": [...], "policy_losses": [...], "patched": [modules]}``.
    Raises:
      ValueError: a name is not offered, or verl already has a *different* (non-rlkl) entry under that name.
    """
    from verl.trainer.ppo import core_algos

    names = list(VERL_METHOD_NAMES if names is None else names)
    for n in names:
        _check_name(n)
        for registry, kind in ((core_algos.ADV_ESTIMATOR_REGISTRY, "advantage estimator"),
                               (core_algos.POLICY_LOSS_REGISTRY, "policy loss")):
            existing = registry.get(n)
            if existing is not None and getattr(existing, "__rlkl__", None) != n:
                raise ValueError(f"verl already has a {kind} named {n!r} ({existing}); rlkl will not replace it")
    for n in names:
        if core_algos.ADV_ESTIMATOR_REGISTRY.get(n) is not _ADV_FNS[n]:
            core_algos.ADV_ESTIMATOR_REGISTRY.pop(n, None)  # an older rlkl function (module reloaded)
            core_algos.register_adv_est(n)(_ADV_FNS[n])
        core_algos.register_policy_loss(n)(_LOSS_FNS[n])
    patched = _patch_compute_advantage() if forward_logprobs else []
    return {"adv_estimators": names, "policy_losses": names, "patched": patched}


register_rlkl_with_verl()
