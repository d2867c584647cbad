"""Every verl / TRL config key, classified: it shapes the objective (translated into the Method), it shapes the
batch layout (translated into a :class:`~rlkl.integrations.microbatch.BatchLayout` and the number of optimizer
steps per rollout), it does not affect the objective (ignored, with its category), or it is not supported (named,
with the reason).

The classification is data: ordered rules ``(pattern, kind, category, reason)``; the first rule whose
``fnmatch`` pattern matches the dotted key decides. A rule may refuse some values: ``refuse(value)`` returns True
when the value changes the objective in a way no rlkl Method expresses (then the key is UNSUPPORTED with
``refuse_reason``). Keys no rule matches are UNSUPPORTED ("unknown to verl 0.9.1" / "not a field of TRL's
configs"). The lists were checked against verl 0.9.1's composed ``ppo_trainer`` config (916 keys) and TRL 1.16's
``GRPOConfig`` + transformers 5.24's ``TrainingArguments`` + TRL's ``ModelConfig`` / ``GRPOScriptArguments``
(tests/test_integrations_verl.py, tests/test_integrations_trl.py); docs/integrations.md lists the categories.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Optional

from rlkl.integrations.rollout import VERL_REFUSED as _RO_REFUSED
from rlkl.options import StrEnum

__all__ = ["Kind", "Rule", "VERL_RULES", "TRL_RULES", "classify", "CATEGORIES"]


class Kind(StrEnum):
    """TRANSLATED: read into the Method; LAYOUT: read into the batch layout / steps per rollout; IGNORED: does
    not affect the objective; UNSUPPORTED: changes the objective in a way no rlkl Method expresses."""

    TRANSLATED = "translated"
    LAYOUT = "layout"
    IGNORED = "ignored"
    UNSUPPORTED = "unsupported"


#: categories of ignored keys, with why none of them changes the expected update's direction
CATEGORIES = {
    "paths": "file paths, data sources and output locations",
    "logging": "logging, metrics, profiling, validation and tracing",
    "model": "the network (architecture, LoRA, dtype, kernels): π_θ's parameterization, not the objective",
    "parallelism": "devices, sharding, offloading and memory: the same gradient computed elsewhere",
    "optimizer": "optimizer, learning-rate schedule and gradient clipping: the step, not its expected direction",
    "rollout engine": "the inference engine's settings (vLLM/SGLang memory, batching, caching)",
    "checkpointing": "saving and resuming",
    "data loading": "dataset reading, tokenization and shuffling",
    "reward": "the reward source (rlkl audits any reward R(x, y))",
    "reference model": "where and how π_ref's log-probs are computed",
    "critic": "the value model (used by GAE only; rlkl's estimators are critic-free)",
    "framework": "framework internals (_target_ classes, Ray, transfer queues)",
    "unused": "a parameter of an option this config does not select",
}


@dataclass(frozen=True)
class Rule:
    """One classification rule (see the module docstring)."""

    pattern: str
    kind: Kind
    category: str = ""
    reason: str = ""
    refuse: Optional[Callable[[Any], bool]] = None
    refuse_reason: str = ""


def _truthy(v: Any) -> bool:
    return str(v).strip().lower() in ("true", "1", "yes", "on", "y", "t")


def _nonzero(v: Any) -> bool:
    try:
        return float(v) != 0.0
    except (TypeError, ValueError):
        return True


def _set(v: Any) -> bool:
    return v is not None and str(v).strip().lower() not in ("none", "null", "")


def _r(pattern, kind, category="", reason="", refuse=None, refuse_reason=""):
    return Rule(pattern, Kind(kind), category, reason, refuse, refuse_reason)


_A = "actor_rollout_ref.actor."
_R = "actor_rollout_ref.rollout."

# Sections that hold objective-shaping keys are listed key by key (verl 0.9.1), so that a misspelled key is
# refused as unknown instead of being ignored by a wildcard.
_ACTOR_KERNEL_KEYS = ("freeze_vision_tower", "use_prefix_grouper", "use_torch_compile", "use_fused_kernels",
                      "entropy_from_logits_with_chunking", "entropy_from_logits_chunk_size", "entropy_checkpointing",
                      "pad_to_length", "use_remove_padding")
_ROLLOUT_LEAVES = ("name", "mode", "nnodes", "n_gpus_per_node", "full_determinism", "seed", "prompt_length",
                   "dtype", "gpu_memory_utilization", "ignore_eos", "enforce_eager", "cudagraph_capture_sizes",
                   "free_cache_engine", "tensor_model_parallel_size", "data_parallel_size", "expert_parallel_size",
                   "pipeline_model_parallel_size", "max_num_batched_tokens", "max_model_len", "max_num_seqs",
                   "enable_chunked_prefill", "enable_prefix_caching", "scheduling_policy",
                   "load_format", "layered_summon", "log_prob_micro_batch_size", "log_prob_micro_batch_size_per_gpu",
                   "log_prob_use_dynamic_bsz", "log_prob_max_token_len_per_gpu", "disable_log_stats",
                   "over_sample_rate", "multi_stage_wake_up", "router_config_path", "calculate_log_probs",
                   "skip_tokenizer_init", "enable_rollout_routing_replay", "moe_load_balance_metrics_interval",
                   "quantization", "quantization_config_file", "mtp", "qat")
_ROLLOUT_SECTIONS = ("engine_kwargs", "multi_turn", "agent", "checkpoint_engine", "trace", "profiler", "prometheus",
                     "mtp", "qat", "disaggregation")
_DATA_LEAVES = ("tokenizer", "use_shm", "train_max_samples", "val_max_samples", "prompt_key", "reward_fn_key",
                "max_prompt_length", "gen_batch_size", "val_batch_size", "tool_config_path", "function_tool_path",
                "return_raw_input_ids", "return_raw_chat", "return_full_prompt", "shuffle", "seed",
                "dataloader_num_workers", "image_patch_size", "validation_shuffle", "filter_overlong_prompts",
                "filter_overlong_prompts_workers", "truncation", "image_key", "video_key", "audio_key",
                "trust_remote_code", "return_multi_modal_inputs", "apply_chat_template_kwargs", "mm_processor_kwargs")

# ------------------------------------------------------------------------------------------------ verl 0.9.1
VERL_RULES: tuple[Rule, ...] = (
    # --- the objective
    _r("algorithm.adv_estimator", "translated", reason="the advantage (critic-free estimators, rlkl plug-in names)"),
    _r("algorithm.norm_adv_by_std_in_grpo", "translated", reason="GRPO: divide by the group std (False: Dr. GRPO)"),
    _r("algorithm.use_kl_in_reward", "translated", reason="KL fused into the reward (KLReward)"),
    _r("algorithm.kl_penalty", "translated", reason="the in-reward KL estimator"),
    _r("algorithm.kl_ctrl.type", "translated", reason="fixed β (adaptive is refused)"),
    _r("algorithm.kl_ctrl.kl_coef", "translated", reason="β of the in-reward KL (and of rlkl's FRPO estimator)"),
    _r("algorithm.kl_ctrl.horizon", "ignored", "unused", "adaptive KL controller only"),
    _r("algorithm.kl_ctrl.target_kl", "ignored", "unused", "adaptive KL controller only"),
    _r("algorithm.gamma", "translated", reason="discount of REINFORCE++'s return (1: the outcome reward on every "
       "token; group estimators do not read it)"),
    _r("algorithm.lam", "ignored", "unused", "GAE's λ"),
    _r("algorithm.filter_groups.enable", "ignored", "unused", "DAPO dynamic sampling off", refuse=_truthy,
       refuse_reason="dynamic sampling re-draws prompts until a group's rewards differ: the prompt distribution "
       "becomes ρ(x)·P(group not all-equal | x), which no rlkl objective models"),
    _r("algorithm.filter_groups.*", "ignored", "unused", "DAPO dynamic sampling settings"),
    _r("algorithm.use_pf_ppo", "ignored", "unused", "PF-PPO off", refuse=_truthy,
       refuse_reason="PF-PPO resamples the batch by reward: the sampling distribution is no longer π_old"),
    _r("algorithm.pf_ppo.*", "ignored", "unused", "PF-PPO settings"),
    _r("algorithm.rollout_correction.rollout_is", "translated", reason="the Method's rollout correction: token / "
       "sequence importance weights π_old/q (null: none)"),
    _r("algorithm.rollout_correction.rollout_is_threshold", "translated", reason="C of TIS (w = min(ρ, C)) or "
       "'L_U' of IcePop (w = ρ·1[L <= ρ <= U])"),
    _r("algorithm.rollout_correction.rollout_rs", "translated", reason="null: no rejection sampling", refuse=_set,
       refuse_reason=_RO_REFUSED["rollout_rs"]),
    _r("algorithm.rollout_correction.rollout_rs_threshold", "ignored", "unused", "rollout_rs only"),
    _r("algorithm.rollout_correction.rollout_is_batch_normalize", "translated", reason="False: raw weights",
       refuse=_truthy, refuse_reason=_RO_REFUSED["rollout_is_batch_normalize"]),
    _r("algorithm.rollout_correction.bypass_mode", "translated", reason="False: decoupled (π_old recomputed)",
       refuse=_truthy, refuse_reason=_RO_REFUSED["bypass_mode"]),
    _r("algorithm.rollout_correction.loss_type", "ignored", "unused", "bypass_mode only"),
    _r(_A + "use_kl_loss", "translated", reason="KL as a loss (KLLoss)"),
    _r(_A + "kl_loss_type", "translated", reason="the KL-loss estimator (k1/k2/k3, '+' straight-through)"),
    _r(_A + "kl_loss_coef", "translated", reason="β of the KL loss (and of rlkl's RPG surrogates)"),
    _r(_A + "clip_ratio", "translated", reason="PPO ε (fallback of clip_ratio_low/high)"),
    _r(_A + "clip_ratio_low", "translated", reason="PPO ε_low"),
    _r(_A + "clip_ratio_high", "translated", reason="PPO ε_high (clip-higher)"),
    _r(_A + "clip_ratio_c", "translated", reason="dual-clip c"),
    _r(_A + "loss_agg_mode", "translated", reason="the aggregation"),
    _r(_A + "loss_scale_factor", "translated", reason="C of seq-mean-token-sum-norm"),
    _r(_A + "policy_loss.loss_mode", "translated", reason="the policy loss"),
    _r(_A + "policy_loss.*", "ignored", "unused", "parameters of other loss modes"),
    _r(_A + "tau_pos", "ignored", "unused", "SAPO temperature"),
    _r(_A + "tau_neg", "ignored", "unused", "SAPO temperature"),
    _r(_A + "entropy_coeff", "translated", reason="0: no entropy bonus", refuse=_nonzero,
       refuse_reason="an entropy bonus adds c·H(π) to the objective; rlkl Methods have none"),
    _r(_R + "n", "translated", reason="G, responses per prompt"),
    _r(_A + "rollout_n", "translated", reason="G (an interpolation of rollout.n)"),
    _r(_R + "response_length", "translated", reason="the padded response width: C of seq-mean-token-sum-norm when "
       "loss_scale_factor is null"),
    _r("data.max_response_length", "translated", reason="the padded response width (rollout.response_length)"),
    # --- the batch layout
    _r("data.train_batch_size", "layout", reason="prompts per rollout (with ppo_mini_batch_size: optimizer steps "
       "per rollout; steps after the first are off-policy)"),
    _r(_A + "ppo_mini_batch_size", "layout", reason="prompts per optimizer step: token-mean is normalized over "
       "this mini-batch's tokens"),
    _r(_A + "ppo_epochs", "layout", reason="passes over each rollout (off-policy after the first step)"),
    _r(_A + "ppo_micro_batch_size", "layout", reason="no effect on the weights: verl 0.9.1 normalizes every "
       "micro-batch by the mini-batch's global token / row counts"),
    _r(_A + "ppo_micro_batch_size_per_gpu", "layout", reason="no effect on the weights (global normalizers)"),
    _r(_A + "use_dynamic_bsz", "layout", reason="no effect on the weights (global normalizers)"),
    _r(_A + "ppo_max_token_len_per_gpu", "layout", reason="no effect on the weights (global normalizers)"),
    _r(_A + "shuffle", "layout", reason="order of rows before the mini-batch split"),
    _r("trainer.balance_batch", "layout", reason="reorders rows by length across data-parallel ranks before the "
       "mini-batch split"),
    _r("trainer.n_gpus_per_node", "layout", reason="data-parallel size: no effect (global normalizers)"),
    _r("trainer.nnodes", "layout", reason="data-parallel size: no effect (global normalizers)"),
    # --- sampling: what the behaviour policy is
    _r(_R + "temperature", "translated", reason="τ of the sampler and of the actor's log-probs: π is the "
       "τ-tempered policy (the sampler's temperature relative to it is 1)"),
    _r(_R + "top_p", "translated", reason="the sampler's top-p (1.0: no truncation)"),
    _r(_R + "top_k", "translated", reason="the sampler's top-k (-1 / 0: no truncation)"),
    _r(_R + "logprobs_mode", "translated", reason="the log-probs the engine reports: processed (log q) or raw"),
    _r(_R + "do_sample", "ignored", "rollout engine", "sampling on", refuse=lambda v: not _truthy(v),
       refuse_reason="greedy decoding: the responses are not samples of π_old"),
    _r(_R + "multi_turn.enable", "ignored", "rollout engine", "single-turn", refuse=_truthy,
       refuse_reason="multi-turn tool rollouts interleave environment tokens; rlkl's trees are single-turn"),
    _r(_R + "val_kwargs.*", "ignored", "logging", "validation sampling"),
    *(_r(_R + k + ".*", "ignored", "rollout engine") for k in _ROLLOUT_SECTIONS),
    *(_r(_R + k, "ignored", "rollout engine") for k in _ROLLOUT_LEAVES),
    _r("distillation.enabled", "ignored", "unused", "distillation off", refuse=_truthy,
       refuse_reason="a distillation loss adds a teacher-KL term no rlkl Method carries"),
    _r("distillation.*", "ignored", "unused", "distillation settings"),
    # --- everything that does not touch the objective
    _r("*._target_", "ignored", "framework"),
    _r(_A + "optim.*", "ignored", "optimizer"),
    _r(_A + "grad_clip", "ignored", "optimizer", "rescales the whole update; its direction is unchanged"),
    _r(_A + "fsdp_config.*", "ignored", "parallelism"),
    _r(_A + "megatron.*", "ignored", "parallelism"),
    _r(_A + "strategy", "ignored", "parallelism"),
    _r(_A + "ulysses_sequence_parallel_size", "ignored", "parallelism"),
    _r(_A + "checkpoint.*", "ignored", "checkpointing"),
    _r(_A + "profiler.*", "ignored", "logging"),
    _r(_A + "qat.*", "ignored", "model", "quantization-aware training"),
    _r(_A + "data_loader_seed", "ignored", "data loading"),
    _r(_A + "calculate_entropy", "ignored", "logging", "entropy metric (the bonus is entropy_coeff)"),
    _r(_A + "calculate_sum_pi_squared", "ignored", "unused", "statistics of the optimal-token-baseline estimators"),
    *(_r(_A + k, "ignored", "model", "kernels, padding, compilation and memory of the actor's forward pass")
      for k in _ACTOR_KERNEL_KEYS),
    _r("actor_rollout_ref.ref.*", "ignored", "reference model"),
    _r("actor_rollout_ref.model.*", "ignored", "model"),
    _r("actor_rollout_ref.hybrid_engine", "ignored", "parallelism"),
    _r("actor_rollout_ref.nccl_timeout", "ignored", "parallelism"),
    _r("critic.*", "ignored", "critic"),
    _r("reward.*", "ignored", "reward"),
    _r("reward_model.*", "ignored", "reward"),
    _r("custom_reward_function.*", "ignored", "reward"),
    _r("sandbox_fusion.*", "ignored", "reward"),
    _r("data.train_files", "ignored", "paths"),
    _r("data.val_files", "ignored", "paths"),
    _r("data.custom_cls.*", "ignored", "data loading"),
    *(_r("data." + k, "ignored", "data loading") for k in _DATA_LEAVES),
    _r("trainer.default_local_dir", "ignored", "paths"),
    _r("trainer.default_hdfs_dir", "ignored", "paths"),
    _r("trainer.*_data_dir", "ignored", "paths"),
    _r("trainer.logger", "ignored", "logging"),
    _r("trainer.project_name", "ignored", "logging"),
    _r("trainer.experiment_name", "ignored", "logging"),
    _r("trainer.*", "ignored", "logging", "trainer loop (epochs, checkpoints, validation, devices)"),
    _r("global_profiler.*", "ignored", "logging"),
    _r("ray_kwargs.*", "ignored", "framework"),
    _r("transfer_queue.*", "ignored", "framework"),
    _r("skip.*", "ignored", "framework", "rollout caching for debugging"),
    _r("model_engine", "ignored", "parallelism", "training engine (dp/megatron/...)"),
    _r("hydra.*", "ignored", "framework"),
)

# ------------------------------------------------------------------------------------------------ TRL
#: transformers.TrainingArguments fields (transformers 5.24, with TRL 1.16) that do not affect the objective
_TRAINING_ARGS_OPTIMIZER = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
                            "max_grad_norm", "optim", "optim_args", "optim_target_modules", "lr_scheduler_type",
                            "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "num_train_epochs", "max_steps")
_TRAINING_ARGS = (
    "accelerator_config", "activation_checkpointing", "activation_checkpointing_kwargs", "adam_beta1",
    "adam_beta2", "adam_epsilon", "auto_find_batch_size", "average_tokens_across_devices", "batch_eval_metrics",
    "bf16", "bf16_full_eval", "data_seed", "dataloader_drop_last", "dataloader_in_order",
    "dataloader_multiprocessing_context", "dataloader_num_workers", "dataloader_persistent_workers",
    "dataloader_pin_memory", "dataloader_prefetch_factor", "ddp_backend", "ddp_broadcast_buffers",
    "ddp_bucket_cap_mb", "ddp_find_unused_parameters", "ddp_static_graph", "ddp_timeout", "debug", "deepspeed",
    "disable_tqdm", "do_eval", "do_predict", "do_train", "enable_jit_checkpoint", "eval_accumulation_steps",
    "eval_delay", "eval_do_concat_batches", "eval_on_start", "eval_steps", "eval_strategy", "eval_use_gather_object",
    "fp16", "fp16_full_eval", "fsdp", "fsdp_config", "full_determinism", "gradient_accumulation_steps",
    "gradient_checkpointing", "gradient_checkpointing_kwargs", "greater_is_better", "hub_always_push",
    "hub_model_id", "hub_private_repo", "hub_revision", "hub_strategy", "hub_token", "ignore_data_skip",
    "include_for_metrics", "include_num_input_tokens_seen", "label_names", "label_smoothing_factor",
    "learning_rate", "length_column_name", "liger_kernel_config", "load_best_model_at_end", "local_rank",
    "log_level", "log_level_replica", "log_on_each_node", "logging_dir", "logging_first_step",
    "logging_nan_inf_filter", "logging_steps", "logging_strategy", "lr_scheduler_kwargs", "lr_scheduler_type",
    "max_grad_norm", "max_steps", "metric_for_best_model", "neftune_noise_alpha", "num_train_epochs", "optim",
    "optim_args", "optim_target_modules", "output_dir", "overwrite_output_dir", "parallelism_config",
    "per_device_eval_batch_size", "per_device_train_batch_size", "prediction_loss_only", "project",
    "push_to_hub", "remove_unused_columns", "report_to", "restore_callback_states_from_checkpoint",
    "resume_from_checkpoint", "run_name", "save_on_each_node", "save_only_model", "save_steps", "save_strategy",
    "save_total_limit", "seed", "skip_memory_metrics", "tf32", "torch_compile", "torch_compile_backend",
    "torch_compile_mode", "torch_empty_cache_steps", "trackio_bucket_id", "trackio_space_id",
    "trackio_static_space_id", "train_sampling_strategy", "use_cache", "use_cpu", "use_liger_kernel",
    "warmup_ratio", "warmup_steps", "weight_decay",
)
#: TRL's ModelConfig and GRPOScriptArguments fields (the ``trl grpo --config`` YAML also holds them)
_TRL_MODEL_ARGS = ("model_name_or_path", "model_revision", "dtype", "torch_dtype", "attn_implementation",
                   "use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                   "lora_target_parameters", "lora_modules_to_save", "lora_task_type", "use_rslora", "use_dora",
                   "load_in_8bit", "load_in_4bit", "bnb_4bit_quant_type", "use_bnb_nested_quant",
                   "bnb_4bit_quant_storage", "trust_remote_code")
_TRL_SCRIPT_ARGS = ("dataset_name", "dataset_config", "dataset_train_split", "dataset_test_split",
                    "dataset_streaming", "ignore_bias_buffers", "reward_model_name_or_path", "reward_funcs")


def _trl_training_rule(name: str) -> Rule:
    if name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        return _r(name, "layout", reason="rows per micro-batch × micro-batches per optimizer step")
    if name in _TRAINING_ARGS_OPTIMIZER:
        return _r(name, "ignored", "optimizer")
    if name in ("output_dir", "logging_dir", "resume_from_checkpoint", "hub_model_id", "run_name", "project"):
        return _r(name, "ignored", "paths")
    if name.startswith(("save_", "hub_", "push_to_hub", "restore_")):
        return _r(name, "ignored", "checkpointing")
    if name.startswith(("log", "report_to", "eval", "disable_tqdm", "trackio", "include_", "batch_eval",
                        "prediction_loss", "metric_for", "greater_is", "load_best", "per_device_eval",
                        "do_", "skip_memory", "debug")):
        return _r(name, "ignored", "logging")
    if name.startswith(("dataloader_", "data_seed", "length_column", "label_names", "train_sampling",
                        "remove_unused", "ignore_data")):
        return _r(name, "ignored", "data loading")
    if name == "auto_find_batch_size":
        return _r(name, "ignored", "parallelism", "refused by TRL for GRPO when True")
    if name in ("label_smoothing_factor", "neftune_noise_alpha"):
        return _r(name, "ignored", "unused", "not used by GRPOTrainer's loss")
    return _r(name, "ignored", "parallelism", "precision, devices, sharding, compilation (TrainingArguments)")


TRL_RULES: tuple[Rule, ...] = (
    # --- the objective
    _r("beta", "translated", reason="β of the k3 KL loss"),
    _r("loss_type", "translated", reason="the aggregation (and the loss for cispo/sapo/vespo/luspo)"),
    _r("epsilon", "translated", reason="PPO ε_low"),
    _r("epsilon_high", "translated", reason="PPO ε_high (null: ε)"),
    _r("delta", "translated", reason="two-sided clip of the ratio (null: off)"),
    _r("scale_rewards", "translated", reason="group std normalization of the advantage"),
    _r("importance_sampling_level", "translated", reason="token ratios (PPO) or the sequence ratio (GSPO)"),
    _r("use_bias_correction_kl", "translated", reason="ρ·k3 (True) or k3 (False) as the KL loss"),
    _r("max_completion_length", "translated", reason="C of dr_grpo's constant normalizer"),
    _r("num_generations", "translated", reason="G, completions per prompt"),
    _r("mask_truncated_completions", "translated", reason="False: truncated completions keep their loss",
       refuse=_truthy, refuse_reason="truncated completions are dropped from the loss: responses that reach the "
       "horizon carry no gradient, which changes the objective"),
    _r("top_entropy_quantile", "translated", reason="1.0: every token trains", refuse=lambda v: float(v) < 1.0,
       refuse_reason="only the highest-entropy tokens keep their loss (data-dependent token mask)"),
    _r("entropy_coef", "translated", reason="0: no entropy bonus", refuse=_nonzero,
       refuse_reason="an entropy bonus adds c·H(π) to the objective; rlkl Methods have none"),
    _r("use_adaptive_entropy", "translated", reason="False: no entropy bonus", refuse=_truthy,
       refuse_reason="an adaptive entropy bonus adds c_t·H(π) to the objective"),
    _r("off_policy_mask_threshold", "translated", reason="null: no off-policy sequence masking", refuse=_set,
       refuse_reason="sequences whose KL to the sampler exceeds the threshold are masked (data-dependent mask)"),
    _r("sapo_temperature_*", "ignored", "unused", "loss_type=sapo only"),
    _r("vespo_*", "ignored", "unused", "loss_type=vespo only"),
    _r("entropy_coef_*", "ignored", "unused", "use_adaptive_entropy only"),
    _r("entropy_target", "ignored", "unused", "use_adaptive_entropy only"),
    # --- the batch layout
    _r("num_iterations", "layout", reason="optimizer passes per generation (off-policy after the first)"),
    _r("steps_per_generation", "layout", reason="micro-batches per generation batch (null: "
       "gradient_accumulation_steps)"),
    _r("generation_batch_size", "layout", reason="rows per generation batch (dapo's token-mean pool)"),
    # --- sampling: what the behaviour policy is
    _r("temperature", "translated", reason="τ of the sampler and of the trainer's log-probs: π is the τ-tempered "
       "policy (the sampler's temperature relative to it is 1)"),
    _r("top_p", "translated", reason="the sampler's top-p (1.0: no truncation)"),
    _r("top_k", "translated", reason="the sampler's top-k (0: no truncation)"),
    _r("min_p", "translated", reason="the sampler's min-p (null: no truncation)"),
    _r("repetition_penalty", "ignored", "rollout engine", "1.0: off", refuse=lambda v: float(v) != 1.0,
       refuse_reason="a repetition penalty samples from a modified π: the behaviour policy is not π_old"),
    _r("use_vllm", "translated", reason="the sampler: vLLM (with its importance-sampling correction) or "
       "transformers generation (no correction)"),
    _r("vllm_importance_sampling_correction", "translated", reason="with use_vllm: weight the policy loss by "
       "π_old/q (the Method's rollout correction)"),
    _r("vllm_importance_sampling_mode", "translated", reason="the correction's level and bound: token/sequence "
       "× truncate/mask"),
    _r("vllm_importance_sampling_clip_max", "translated", reason="C_max of the correction (TRL >= 1.6)"),
    _r("vllm_importance_sampling_clip_min", "translated", reason="C_min of the correction (TRL >= 1.6)"),
    _r("vllm_importance_sampling_cap", "translated", reason="C_max (TRL <= 1.5; deprecated from 1.6, overrides "
       "clip_max when set)"),
    _r("vllm_*", "ignored", "rollout engine"),
    _r("generation_kwargs", "ignored", "rollout engine", "extra sampler arguments (not inspected)"),
    _r("cache_implementation", "ignored", "rollout engine"),
    _r("use_transformers_paged", "ignored", "rollout engine"),
    _r("use_transformers_continuous_batching", "ignored", "rollout engine"),
    _r("transformers_continuous_batching_config", "ignored", "rollout engine"),
    _r("ds3_gather_for_generation", "ignored", "parallelism"),
    _r("pad_to_multiple_of", "ignored", "parallelism"),
    # --- the rest of GRPOConfig
    _r("reward_weights", "ignored", "reward"),
    _r("multi_objective_aggregation", "ignored", "reward", "how several reward functions combine (one reward R)"),
    _r("sync_ref_model", "ignored", "reference model", "π_ref is refreshed every ref_model_sync_steps; each "
       "step's objective uses the current π_ref"),
    _r("ref_model_*", "ignored", "reference model"),
    _r("router_aux_loss_coef", "ignored", "model", "MoE router auxiliary loss (model-specific)"),
    _r("model_init_kwargs", "ignored", "model"),
    _r("disable_dropout", "ignored", "model"),
    _r("cast_lm_head_to_fp32", "ignored", "model"),
    _r("chat_template_kwargs", "ignored", "data loading"),
    _r("shuffle_dataset", "ignored", "data loading"),
    _r("max_tool_calling_iterations", "ignored", "rollout engine", "tools are passed to the trainer, not the config"),
    _r("num_generations_eval", "ignored", "logging"),
    _r("log_*", "ignored", "logging"),
    _r("num_completions_to_print", "ignored", "logging"),
    _r("env", "ignored", "framework", "TrlParser's environment variables section"),
    *(_r(k, "ignored", "model") for k in _TRL_MODEL_ARGS),
    *(_r(k, "ignored", "paths" if k.startswith(("dataset", "reward_model")) else "reward") for k in _TRL_SCRIPT_ARGS),
    *(_trl_training_rule(k) for k in _TRAINING_ARGS),
)


def classify(key: str, value: Any, rules: tuple[Rule, ...], unknown: str) -> tuple[Kind, str, str]:
    """(kind, category, reason) of ``key=value`` by the first matching rule; ``unknown`` is the UNSUPPORTED
    reason for keys no rule matches."""
    for rule in rules:
        if rule.pattern == key or fnmatch.fnmatchcase(key, rule.pattern):
            if rule.refuse is not None:
                try:
                    refused = rule.refuse(value)
                except (TypeError, ValueError):
                    refused = True
                if refused:
                    return Kind.UNSUPPORTED, rule.category, rule.refuse_reason
            return rule.kind, rule.category, rule.reason or CATEGORIES.get(rule.category, "")
    return Kind.UNSUPPORTED, "", unknown
