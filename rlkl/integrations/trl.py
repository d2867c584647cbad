"""rlkl Methods as the loss of TRL's ``GRPOTrainer`` (tested with TRL 1.16).

:class:`RLKLGRPOTrainer` is a ``trl.GRPOTrainer`` subclass: TRL's data pipeline, generation, reward functions,
reference model, gradient accumulation, logging and distributed set-up are untouched; two methods are replaced.

* ``_generate_and_score_completions`` (after TRL's own): reads the raw rewards (the weighted sum of the reward
  functions, exactly what TRL normalizes), and, on the whole local generation batch where every group of
  ``num_generations`` completions is complete, puts ``method.advantages(batch)`` (``[B, T]``) into
  ``inputs["advantages"]`` — the extension point TRL documents for token-level advantages. Methods whose
  advantage reads the rollout log-probs (FRPO's future-KL return, KL in the reward) get ``logp_old`` from one
  extra no-grad forward pass when TRL has not computed ``old_per_token_logps`` (on-policy runs).
* ``_compute_loss``: TRL's own forward (``_get_per_token_logps_and_entropies``) gives ``logp``; the loss is
  :func:`rlkl.integrations.loss_from_advantages` — ``Method.loss`` with those advantages — on the micro-batch,
  divided by the gradient-accumulation steps as TRL's ``grpo`` loss is. With one micro-batch per generation
  batch the returned loss *is* ``method.loss(logp, RolloutBatch(...))`` (parity test in
  ``tests/test_integrations_trl.py``); with several, the accumulated gradient is the micro-batch mean, which
  equals the full-batch ``Method.loss`` gradient for the ``seq-mean-*`` aggregations and equal micro-batches.

TRL's own loss options (``beta``, ``loss_type``, ``epsilon*``, ``scale_rewards``, …) are *not* used; to avoid a
config that silently says something else, the trainer raises ``ValueError`` if any of them is set away from
its default. β, clipping and aggregation come from the Method (``method.replace(beta=..., policy_loss=PPOClip(0.2, 0.28))``).
TRL's ``beta`` is set internally to ``method.beta`` when the Method needs π_ref (so TRL loads the reference
model and computes ``ref_per_token_logps``), else to 0.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer

from rlkl.integrations import advantages_need_logprobs, loss_from_advantages, resolve_method
from rlkl.methods import Method, RolloutBatch

__all__ = ["RLKLGRPOTrainer", "IGNORED_TRL_OPTIONS"]

# GRPOConfig fields that only shape TRL's own loss/advantage; an rlkl Method replaces them, so they must stay at
# their defaults (name -> why).
IGNORED_TRL_OPTIONS: dict[str, str] = {
    "beta": "β is method.beta (use method.replace(beta=...))",
    "loss_type": "aggregation is method.aggregation (an rlkl Aggregation)",
    "epsilon": "clip range is method.policy_loss (e.g. PPOClip(low, high))",
    "epsilon_high": "clip range is method.policy_loss (e.g. PPOClip(low, high))",
    "delta": "two-sided clip is not an rlkl policy loss",
    "scale_rewards": "the advantage is method.advantage (e.g. GroupStandardized)",
    "importance_sampling_level": "sequence-level ratios are method.policy_loss=GSPO(...)",
    "use_bias_correction_kl": "the ρ-weighted KL is method.kl=KLLoss(importance_weight=True)",
    "top_entropy_quantile": "entropy masking is not part of an rlkl Method",
    "off_policy_mask_threshold": "off-policy sequence masking is not part of an rlkl Method",
    "entropy_coef": "an entropy bonus is not part of an rlkl Method",
    "use_adaptive_entropy": "an entropy bonus is not part of an rlkl Method",
    "multi_objective_aggregation": "rlkl takes the weighted sum of the reward functions as the reward",
}

# keyword arguments of TRL's forward helper that carry multimodal inputs (passed through unchanged)
_FORWARD_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                 "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")


def _check_trl_args(args: GRPOConfig) -> None:
    """Raise ValueError when ``args`` sets a TRL loss option that an rlkl Method would silently override."""
    defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    bad = []
    for name, why in IGNORED_TRL_OPTIONS.items():
        if name not in defaults:  # option absent in this TRL version
            continue
        value, default = getattr(args, name, defaults[name]), defaults[name]
        if name == "scale_rewards" and value in (True, "group"):
            continue
        if name == "epsilon_high" and value in (None, getattr(args, "epsilon", None)):
            continue
        if value != default:
            bad.append(f"{name}={value!r} (default {default!r}): {why}")
    if getattr(args, "use_vllm", False) and getattr(args, "vllm_importance_sampling_correction", False):
        bad.append("use_vllm with vllm_importance_sampling_correction=True: the vLLM/trainer mismatch correction "
                   "is not part of an rlkl Method; set vllm_importance_sampling_correction=False")
    if bad:
        raise ValueError("RLKLGRPOTrainer: these GRPOConfig options shape TRL's own loss, which an rlkl Method "
                         "replaces; leave them at their defaults and set the Method's fields instead:\n  "
                         + "\n  ".join(bad))


class RLKLGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` whose loss is an rlkl :class:`~rlkl.methods.Method` (e.g. ``frpo``, ``grpo_k2_loss``,
    ``grpo_is_k3``, ``rpg_reinforce_fkl``).

    Each optimizer step descends ``method.loss``: −∇ of the returned loss w.r.t. the policy parameters is
    Σ_t (−∂L/∂logp_t)·∇log π_θ(a_t|s_t), the Method's update on the sampled batch (see its docstring and
    ``rlkl.toy.audit`` for which objective that ascends). The reference and old log-probs are the ones TRL
    computes (``ref_per_token_logps``, ``old_per_token_logps``).

    Args:
      model, reward_funcs, args, **kwargs: as for ``trl.GRPOTrainer``; ``args`` (a ``GRPOConfig``) is required.
      method: an rlkl Method or a registry name (``rlkl.methods.list_methods()``).

    Raises:
      ValueError: ``args`` sets one of ``IGNORED_TRL_OPTIONS``; a group-based method with
        ``num_generations < 2``; at run time, a local generation batch that is not made of whole groups
        (``per_device_train_batch_size × steps_per_generation`` must be a multiple of ``num_generations``)
        or a completion no reward function scored.
    """

    def __init__(self, model: Any, reward_funcs: Any, args: GRPOConfig | None = None, *pos: Any,
                 method: Method | str, **kwargs: Any):
        if not isinstance(args, GRPOConfig):
            raise ValueError(f"RLKLGRPOTrainer needs args=GRPOConfig(...), got {type(args).__name__}")
        self.rlkl_method = resolve_method(method)
        _check_trl_args(args)
        if self.rlkl_method.is_group_based and args.num_generations < 2:
            raise ValueError(f"method {self.rlkl_method.name!r} uses a group advantage: num_generations must be "
                             f">= 2, got {args.num_generations}")
        args = copy.copy(args)  # do not mutate the caller's config
        # TRL loads the reference model and computes ref_per_token_logps iff beta != 0
        args.beta = float(self.rlkl_method.beta) if self.rlkl_method.uses_reference else 0.0
        self._rlkl_rewards_per_func = None
        super().__init__(model, reward_funcs, args, *pos, **kwargs)

    # -- generation side: rewards and advantages on whole groups -------------------------------------------------
    def _calculate_rewards(self, *args: Any, **kwargs: Any):
        rewards_per_func = super()._calculate_rewards(*args, **kwargs)
        self._rlkl_rewards_per_func = rewards_per_func  # [global B, n_funcs], gathered over processes
        return rewards_per_func

    def _rlkl_forward_logps(self, model, out: dict, batch_size: int | None) -> torch.Tensor:
        input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        fwd = {k: out[k] for k in _FORWARD_KEYS if k in out}
        with torch.no_grad():
            logps, _, _ = self._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, out["completion_ids"].size(1), batch_size=batch_size, **fwd)
        return logps

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        method = self.rlkl_method
        mode = "train" if self.model.training else "eval"
        G = self.num_generations if mode == "train" else self.num_generations_eval
        B = out["completion_ids"].size(0)
        if B % G != 0:
            raise ValueError(f"RLKLGRPOTrainer: the local generation batch has {B} completions, not a multiple of "
                             f"num_generations={G}; rlkl advantages need whole groups on each process (make "
                             "per_device_*_batch_size × steps_per_generation a multiple of num_generations)")
        rpf = self._rlkl_rewards_per_func
        if rpf is None:
            raise ValueError("RLKLGRPOTrainer: TRL did not call _calculate_rewards; this TRL version is unsupported")
        start = self.accelerator.process_index * B
        rpf = rpf[start:start + B]
        if bool(torch.isnan(rpf).all(dim=1).any()):
            raise ValueError("RLKLGRPOTrainer: a completion got no reward from any reward function (all None); "
                             "rlkl Methods need a reward for every completion")
        rewards = (rpf * self.reward_weights.to(rpf.device).unsqueeze(0)).nansum(dim=1)

        mask = out["completion_mask"].bool()
        if "tool_mask" in out:
            mask = mask & out["tool_mask"].bool()
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        logp_old = out.get("old_per_token_logps")
        logp_ref = out.get("ref_per_token_logps")
        if advantages_need_logprobs(method):
            if logp_old is None:  # on-policy: π_old = the current model, one no-grad forward
                logp_old = self._rlkl_forward_logps(self.model, out, batch_size)
                out["old_per_token_logps"] = logp_old
            if logp_ref is None:
                raise ValueError(f"method {method.name!r} needs reference log-probs but TRL computed none")
            dtype = logp_old.dtype
        else:  # the advantage reads rewards and mask only (advantages_need_logprobs): zero placeholders
            dtype = next(self.model.parameters()).dtype
            if dtype not in (torch.float32, torch.float64):
                dtype = torch.float32  # bf16/fp16 models: advantages in float32, cast to logp's dtype in the loss
            logp_old = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
            logp_ref = logp_old
        rewards = rewards.to(dtype=dtype, device=mask.device)
        batch = RolloutBatch(logp_old=logp_old.to(dtype), logp_ref=logp_ref.to(dtype), mask=mask, rewards=rewards,
                             group_size=G)
        out["advantages"] = method.advantages(batch)  # [B, T], detached
        out["rlkl_rewards"] = rewards
        return out

    # -- loss side ----------------------------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        method = self.rlkl_method
        mask = inputs["completion_mask"].bool()
        if "tool_mask" in inputs:
            mask = mask & inputs["tool_mask"].bool()
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        fwd = {k: inputs.get(k) for k in _FORWARD_KEYS}
        logp, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, inputs["completion_ids"].size(1), compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled, **fwd)
        # rlkl's losses take float32/float64 only: a bf16/fp16 model's log-probs are upcast before the loss, as
        # TRL's own loss computes in float32 (the gradient flows back through the cast)
        if logp.dtype not in (torch.float32, torch.float64):
            logp = logp.float()
        advantages = inputs["advantages"]
        if advantages.dim() != 2:
            raise ValueError("RLKLGRPOTrainer: inputs['advantages'] is not [B, T]; the rlkl generation step did "
                             "not run (unsupported TRL version?)")
        logp_old = inputs.get("old_per_token_logps")
        logp_old = logp.detach() if logp_old is None else logp_old.to(logp.dtype)
        logp_ref = inputs.get("ref_per_token_logps")
        if logp_ref is not None:
            logp_ref = logp_ref.to(logp.dtype)
        mode = "train" if self.model.training else "eval"
        if not bool(mask.any()):  # every completion of this micro-batch is masked out: no signal
            return (logp * 0.0).sum()
        loss, diagnostics = loss_from_advantages(method, logp, logp_old, logp_ref, mask,
                                                 advantages.to(logp.dtype))
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        loss = loss / normalizer  # GRPOTrainer scales for gradient accumulation itself (loss_is_scaled_for_ga)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / normalizer
        self._rlkl_log(mode, diagnostics, entropies, mask)
        return loss

    def _rlkl_log(self, mode: str, diagnostics: dict, entropies: torch.Tensor, mask: torch.Tensor) -> None:
        """Log every diagnostic (mean over processes, nan-skipping as TRL's metrics) and the token-mean entropy: one
        gather and one reduce across processes, one device → host copy (not one of each per diagnostic)."""
        keys = list(diagnostics)
        # [processes, K] each process's 0-dim diagnostics, then their mean over processes
        per_process = self.accelerator.gather(torch.stack([diagnostics[k].detach().float() for k in keys])[None])
        m = mask.to(entropies.dtype)
        totals = self.accelerator.reduce(torch.stack([(entropies.detach() * m).sum(), m.sum()]), reduction="sum")
        entropy = totals[0] / totals[1].clamp(min=1.0)
        # float64 for the copy: the float32 diagnostics and the entropy in its own dtype, both exactly
        values = torch.cat([per_process.nanmean(0).double(), entropy.double()[None]]).tolist()
        for k, v in zip(keys, values):
            self._metrics[mode][f"rlkl/{k}"].append(v)
        self._metrics[mode]["entropy"].append(values[-1])
