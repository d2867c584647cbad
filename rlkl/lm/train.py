"""RL training of the small LM with any registered Method (the same ``Method.loss`` the exact engine audits).

One step: draw ``prompts_per_step`` training prompts, sample ``group_size`` completions of each at
temperature 1 (groups are contiguous rows), score them with the task's verifier, compute the behaviour
log-probs (π_old = the policy that sampled) and reference log-probs, then take ``updates_per_batch`` (K)
AdamW steps on ``method.loss(logp, RolloutBatch(...))``. Every step logs one JSON line to
``metrics.jsonl`` (formulas in ``docs/metrics.md``); every ``eval_every`` steps adds pass@k on held-out
prompts; after the step-0 evaluation, every ``checkpoint_every`` steps and on Ctrl-C it writes
``checkpoint.pt`` atomically (with the metric rows so far, the reference file's sha256 and the thread count),
from which ``resume`` continues so that the metrics equal the uninterrupted run's, step for step, on CPU
(run files: ``rlkl.lm.runlog``, docs/metrics.md).

How this departs from full-scale GRPO / RPG training (verl, TRL, the RPG repo):

1. **Scale and task.** A ~0.1M-parameter GPT (``rlkl.lm.model``) on a synthetic task with an exact
   verifier (``rlkl.lm.tasks``); no chat template, all prompts of a task have one length, responses are
   a few tokens long. The reference policy is our own noisy-SFT model (``rlkl.lm.sft``).
2. **Sampling.** By default pure temperature-1 sampling (no top-p/top-k) by the training model itself (with a
   KV cache; the G samples of a prompt share its prefix, which is computed once — also in the π_ref, π_0 and
   policy forwards), no inference engine: there is no training/inference mismatch, so no rollout importance
   correction.
   π_old log-probs are recomputed by one full forward after sampling (as verl does; here that forward is
   the first update's own, detached), so the first of the K updates is exactly on-policy (ratio 1).
   The ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``sampler_dtype`` and ``logprobs`` fields make the
   sampler an inference engine instead (``rlkl.sampling.Sampler`` on the same model's logits): responses come
   from q ≠ π_old, the batch carries the log-probs the engine reports and the kept sets, and
   ``rollout_correction`` chooses the correction (``mask_replay`` renormalizes π_θ and π_old over the kept
   sets in the loss). π_θ and π_old in the loss stay the untempered full softmax (TRL and verl divide the
   trainer's logits by τ as well); evaluation samples at temperature 1 without the engine.
3. **One mini-batch.** Each of the K optimizer steps uses the whole rollout batch (verl/TRL split a batch
   into mini-batches and epochs; K stands for mini-batches × epochs). Steps 2..K are off-policy.
4. **Nothing else in the loss.** No critic/value model, no entropy bonus, no format or overlong reward
   shaping, no DAPO dynamic sampling (zero-advantage groups are kept, and counted), a fixed β (no
   adaptive KL controller). A response that never emits EOS within the task's budget gets reward 0.
5. **Reference refresh (RPG).** ``ref_refresh_every = N > 0`` hard-copies π_θ into π_ref every N steps
   (RPG's iterative reference). The KL-drift metrics are always measured against the *initial*
   reference π_0 (the SFT model), so runs with and without refresh are comparable.
6. **Precision and parallelism.** float32 on CPU (bf16 autocast on CUDA forwards); single process, no
   sequence packing, no gradient accumulation, no dynamic batch size.
7. **Schedule.** Linear learning-rate warm-up over ``warmup_steps`` optimizer updates, then constant.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from rlkl._io import atomic_write_json, sha256_file
from rlkl.lm.exact import Yardstick, enumerable
from rlkl.lm.metrics import evaluate, mismatch_metrics, rollout_metrics, seq_sum, token_kl, tokens_per_second
from rlkl.lm.model import (autocast, maybe_compile, resolve_device, sample, sample_engine, shared_prefix_logits,
                           token_logprobs, unwrap)
from rlkl.lm.optim import AdamW
from rlkl.lm.runlog import GracefulStop, MetricLog, load_checkpoint, restore_rows, save_checkpoint
from rlkl.lm.sft import load_reference
from rlkl.lm.tasks import TASKS, Task

# Metric keys that measure time, not training; they differ between a resumed and an uninterrupted run.
TIMING_KEYS = ("time/rollout", "time/update", "time/step", "time/eval", "wall_time", "tokens_per_s")

# Task difficulty used by a preset when none is given (shared by `rlkl sft` and `rlkl train`).
PRESET_DIFFICULTY: dict[str, dict[str, int]] = {
    "cpu_tiny": {"addition": 2, "sort": 4, "divisor": 2},
    "cpu_small": {"addition": 3, "sort": 6, "divisor": 2},
    "gpu_small": {"addition": 3, "sort": 6, "divisor": 3},
    "gpu_medium": {"addition": 5, "sort": 10, "divisor": 3},
}


def default_ref_path(task: str, difficulty: int, preset: str, seed: int = 0) -> str:
    """Where ``rlkl sft --seed SEED`` writes the reference of a task and preset (one path per SFT seed).

    ``rlkl train`` without ``--ref`` uses the seed-0 reference of its task and preset (the RL seed is not the
    SFT seed: every RL seed of a comparison starts from the same π_ref).
    """
    return os.path.join("runs", "sft", f"{task}-d{difficulty}-{preset}-s{seed}", "reference.pt")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines an RL run; saved as ``config.json`` in the run directory."""

    method: str = "grpo"
    """Registered method name (``rlkl methods`` lists them); with ``method_json``, that Method's name."""
    method_json: str = ""
    """A Method that is not a registered name, as JSON (``Method.to_dict()``): what ``rlkl train --method-file /
    --verl / --trl`` and ``train(cfg, method=...)`` record; empty = the registered ``method``."""
    beta: float | None = None
    """KL coefficient β; None = the method's registered default, which the config then holds (config.json
    records the β the run used)."""
    unclipped: bool = False
    """Remove the method's clipping: RPG-Style Clip off for ``rpg*`` methods; PPO/GSPO clip ranges opened
    to (1e-6, 1e6) with no dual clip. Used to show what clipping buys when K > 1."""
    task: str = "addition"
    """Task name; must match the reference checkpoint's task."""
    difficulty: int = 2
    """Task difficulty; must match the reference checkpoint's."""
    ref: str = ""
    """Path of the SFT reference checkpoint (``reference.pt``); empty = the preset's default path."""
    steps: int = 150
    """RL steps (rollout batches)."""
    prompts_per_step: int = 16
    """Distinct prompts per rollout batch."""
    group_size: int = 8
    """Completions per prompt G (batch size B = prompts_per_step × G; groups are contiguous rows)."""
    updates_per_batch: int = 1
    """Optimizer steps K on each rollout batch (K > 1 makes steps 2..K off-policy)."""
    ref_refresh_every: int = 0
    """Copy π_θ into π_ref every this many steps (RPG iterative reference); 0 = never."""
    partial_credit: bool = False
    """Reward = fraction of correct answer digits instead of the binary verifier (pass@k stays binary)."""
    lr: float = 3e-4
    """Peak AdamW learning rate."""
    adam_beta1: float = 0.9
    """AdamW β1."""
    adam_beta2: float = 0.99
    """AdamW β2."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 = no clipping; the norm is logged either way)."""
    warmup_steps: int = 10
    """Linear learning-rate warm-up, in optimizer updates."""
    eval_every: int = 25
    """Evaluate on held-out prompts every this many steps (also at step 0 and at the last step)."""
    eval_prompts: int = 200
    """Held-out eval prompts."""
    eval_samples: int = 8
    """Samples per eval prompt; pass@k is reported for k = 1, 2, 4, … up to this."""
    checkpoint_every: int = 50
    """Write ``checkpoint.pt`` every this many steps (also after the step-0 evaluation, at the end and on
    Ctrl-C, so a kill never loses a whole run)."""
    seed: int = 0
    """Seed of the prompt stream and the sampling generator."""
    device: str = "auto"
    """``auto`` (cuda if available, else cpu), ``cpu`` or ``cuda``."""
    compile: bool = False
    """``torch.compile`` the policy for the update forward passes."""
    num_threads: int = 0
    """torch intra-op CPU threads (0 = leave torch's default). A CPU run resumes only with the thread count
    it was checkpointed with: another count splits reductions differently and changes the numbers."""
    temperature: float = 1.0
    """Rollout sampler temperature τ > 0 (the loss's π_θ and π_old stay the untempered softmax)."""
    top_k: int = 0
    """Rollout sampler top-k (0 = off; ties broken by token index)."""
    top_p: float = 1.0
    """Rollout sampler top-p in (0, 1] (1 = off)."""
    min_p: float = 0.0
    """Rollout sampler min-p in [0, 1) (0 = off)."""
    sampler_dtype: str = "float32"
    """The rollout engine's logit precision: ``float32`` (the trainer's) or ``bfloat16`` (logits rounded)."""
    logprobs: str = "processed"
    """Log-probs the engine reports: ``processed`` (log q of what it sampled) or ``raw`` (before temperature
    and truncation)."""
    rollout_correction: str = ""
    """Rollout correction, e.g. ``none``, ``token_tis:2``, ``seq_mis:3``, ``mask_replay`` (docs/audit.md);
    empty = the method's own (``none`` for most)."""

    def __post_init__(self) -> None:
        from rlkl._checks import check_int, check_real
        from rlkl.methods import get_method

        if not isinstance(self.method_json, str):
            raise ValueError(f"method_json must be a JSON string (Method.to_dict()), got {type(self.method_json).__name__}")
        method = _method_from_json(self.method_json) if self.method_json else get_method(self.method)
        object.__setattr__(self, "method", method.name)  # ValueError above lists the registered names
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; known tasks: {', '.join(sorted(TASKS))}")
        for name in ("steps", "prompts_per_step", "eval_every", "eval_prompts", "eval_samples",
                     "checkpoint_every", "difficulty", "group_size"):
            check_int(name, getattr(self, name), low=1)
        check_int("updates_per_batch (K)", self.updates_per_batch, low=1)
        for name in ("ref_refresh_every", "warmup_steps", "num_threads", "top_k"):
            check_int(name, getattr(self, name), low=0)
        check_int("seed", self.seed, low=0, high=2**32 - 1)
        if method.is_group_based and self.group_size < 2:
            raise ValueError(f"method {self.method!r} uses a group-based advantage ({type(method.advantage).__name__}); "
                             f"group_size must be >= 2, got {self.group_size}")
        check_real("lr", self.lr, low=0.0, low_open=True)
        check_real("adam_beta1", self.adam_beta1, low=0.0, high=1.0, high_open=True)
        check_real("adam_beta2", self.adam_beta2, low=0.0, high=1.0, high_open=True)
        check_real("weight_decay", self.weight_decay, low=0.0)
        check_real("grad_clip", self.grad_clip, low=0.0)
        if self.beta is None:  # record the effective β (config.json then says which β the run used)
            object.__setattr__(self, "beta", float(method.beta))
        check_real("beta", self.beta, low=0.0)
        for name in ("unclipped", "partial_credit", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.partial_credit and TASKS[self.task].multi_answer:
            raise ValueError(f"task {self.task!r} has no partial credit (several answers are correct); drop "
                             f"partial_credit")
        if not isinstance(self.ref, str) or not isinstance(self.device, str):
            raise ValueError(f"ref and device must be strings, got {self.ref!r}, {self.device!r}")
        resolve_device(self.device)  # ValueError for an unknown device or CUDA requested but absent
        build_sampler(self)  # ValueError for a bad temperature / top-k / top-p / min-p / dtype / logprobs
        build_method(self)  # ValueError for an unknown rollout correction

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**d)


TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # ~1-2 minutes on 2 CPU cores: 16 prompts x 8 completions, 150 steps, 2-digit addition
    # (one thread: at this size intra-op parallelism costs more than it saves)
    "cpu_tiny": dict(steps=150, prompts_per_step=16, group_size=8, lr=3e-4, warmup_steps=10, eval_every=25,
                     eval_prompts=200, eval_samples=8, checkpoint_every=50, num_threads=1),
    # ~1.0M parameters (the cpu_small SFT preset), 3-digit addition, 2 threads: about a minute per run on 2 cores
    "cpu_small": dict(steps=150, prompts_per_step=16, group_size=8, lr=2e-4, warmup_steps=10, eval_every=50,
                      eval_prompts=200, eval_samples=8, checkpoint_every=50, num_threads=2),
    "gpu_small": dict(steps=500, prompts_per_step=64, group_size=8, lr=1e-4, warmup_steps=20, eval_every=50,
                      eval_prompts=500, eval_samples=16, checkpoint_every=100),
    "gpu_medium": dict(steps=1000, prompts_per_step=128, group_size=16, lr=5e-5, warmup_steps=50, eval_every=100,
                       eval_prompts=1000, eval_samples=16, checkpoint_every=100),
}


def config_from_preset(preset: str, **overrides: Any) -> TrainConfig:
    """A preset's TrainConfig with overrides; fills ``difficulty`` and ``ref`` defaults for the preset."""
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(TRAIN_PRESETS)}")
    values = {**TRAIN_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None or k == "beta"}}
    task = values.get("task", "addition")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(sorted(TASKS))}")
    values.setdefault("difficulty", PRESET_DIFFICULTY[preset][task])
    if "eval_prompts" not in overrides or overrides["eval_prompts"] is None:  # a small task: its whole eval split
        from rlkl.lm.tasks import make_task, n_problems

        t = make_task(task, values["difficulty"])
        if n_problems(t) <= 200_000:
            values["eval_prompts"] = min(values["eval_prompts"], len(t.split_problems("eval")))
    if not values.get("ref"):
        values["ref"] = default_ref_path(task, values["difficulty"], preset)
    return TrainConfig(**values)


def _method_from_json(text: str):
    """The Method of ``TrainConfig.method_json`` (ValueError naming what is wrong)."""
    from rlkl.methods import Method

    try:
        return Method.from_dict(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ValueError(f"method_json is not JSON: {exc}") from None
    except TypeError as exc:
        raise ValueError(f"method_json is not a Method (Method.to_dict()): {exc}") from None


def build_method(cfg: TrainConfig):
    """The config's Method (registered, or ``method_json``) with the config's β, clipping and rollout correction
    applied."""
    from rlkl.components import correction_from_spec
    from rlkl.methods import get_method

    method = _method_from_json(cfg.method_json) if cfg.method_json else get_method(cfg.method)
    if cfg.beta is not None:
        method = dataclasses.replace(method, beta=float(cfg.beta))
    if cfg.unclipped:
        method = method.replace(policy_loss=method.policy_loss.unclipped())
    if cfg.rollout_correction:
        method = method.replace(correction=correction_from_spec(cfg.rollout_correction))
    return method


_SAMPLER_DTYPES = {"float32": "float64", "bfloat16": "bfloat16"}  # float32 = the trainer's logits, unrounded


def build_sampler(cfg: TrainConfig):
    """The rollout engine's ``rlkl.sampling.Sampler``, or None when it samples from π_old itself."""
    from rlkl.sampling import Sampler

    if cfg.sampler_dtype not in _SAMPLER_DTYPES:
        raise ValueError(f"sampler_dtype must be one of {sorted(_SAMPLER_DTYPES)}, got {cfg.sampler_dtype!r}")
    top_k = None if cfg.top_k == 0 else cfg.top_k
    s = Sampler(temperature=cfg.temperature, top_k=top_k, top_p=cfg.top_p, min_p=cfg.min_p,
                dtype=_SAMPLER_DTYPES[cfg.sampler_dtype], logprobs=cfg.logprobs)
    return None if s.is_identity else s


# ---------------------------------------------------------------------------------------------------
# Rollout and loss
# ---------------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One rollout batch (B = prompts × G rows, groups contiguous) and its per-batch metrics.

    ``logp_old`` and ``metrics`` are filled by :meth:`set_behaviour` from the policy's logits on the sampled
    responses; the trainer takes those logits from the first update's forward pass (so π_old costs no extra
    forward and the first update is exactly on-policy), :func:`collect_rollout` can also compute them.
    """

    prompts: torch.Tensor  # [B, P] long (row i answers prompt i // G)
    responses: torch.Tensor  # [B, R] long
    mask: torch.Tensor  # [B, R] bool
    logp_sample: torch.Tensor  # [B, R] log-probs recorded while sampling (0 on padding)
    logp_ref: torch.Tensor  # [B, R] reference log-probs (the loss's π_ref)
    rewards: torch.Tensor  # [B] float32
    group_size: int
    logits_base: torch.Tensor  # [B, R, V] logits of π_0 (the KL-drift metrics' reference)
    logits_ref: torch.Tensor  # [B, R, V] logits of π_ref (the same tensor as logits_base without refresh)
    logp_old: torch.Tensor | None = None  # [B, R] behaviour log-probs (one full forward of π_old)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    sampler: Any = None  # the engine's rlkl.sampling.Sampler; None: π_old sampled (logp_sample = π_old's)
    kept: torch.Tensor | None = None  # [B, R, V] the engine's kept sets (with a sampler)
    replay: bool = False  # mask replay: π_θ and π_old renormalized over the kept sets in the loss
    kept_logmass: torch.Tensor | None = None  # [B, R] log Σ_{a∈K} π_old(a|s) (with a sampler)

    @property
    def group_prompts(self) -> torch.Tensor:
        """``[n, P]``: the prompt of each group (every G-th row of ``prompts``)."""
        return self.prompts[:: self.group_size]

    @torch.no_grad()
    def set_behaviour(self, logits: torch.Tensor, logp: torch.Tensor | None = None) -> None:
        """Record π_old from its response logits ``[B, R, V]`` and compute the rollout metrics.

        ``logp`` ``[B, R]``: ``token_logprobs(logits, responses)`` when the caller has computed it already (the
        first update's forward pass); it is detached and used as is.
        """
        from rlkl.sampling import kept_log_softmax, kept_logmass

        logits = logits.detach().float()  # [B, R, V]
        self.logp_old = (token_logprobs(logits, self.responses) if logp is None  # [B, R]
                         else logp.detach())  # sg[log π_θ]: π_old is the policy that sampled, a constant
        logp_base = (self.logp_ref if self.logits_ref is self.logits_base  # [B, R] (π_ref = π_0: the same numbers)
                     else token_logprobs(self.logits_base, self.responses))
        self.metrics.update(rollout_metrics(logits, self.logits_base, self.logp_old, logp_base, self.mask,
                                            self.rewards, self.group_size))
        if self.logits_ref is not self.logits_base:
            self.metrics["kl_rev_tok_to_ref"] = float((token_kl(logits, self.logits_ref) * self.mask).sum()
                                                      / self.mask.sum())
        if self.sampler is None:
            return
        self.kept_logmass = kept_logmass(logits, self.kept) * self.mask  # [B, R] log S_t, 0 on padding
        log_old = kept_log_softmax(logits, self.kept) if self.replay else torch.log_softmax(logits, -1)  # [B, R, V]
        if self.replay:  # the trainer's π_old renormalized over the engine's kept sets
            self.logp_old = log_old.gather(-1, self.responses.unsqueeze(-1)).squeeze(-1)  # [B, R]
        self.metrics.update(mismatch_metrics(logits, log_old, self.sampler, self.kept, self.mask))

    def batch(self, group_size: int | None = None):
        from rlkl.methods import RolloutBatch

        if self.logp_old is None:
            raise ValueError("the rollout has no behaviour log-probs yet; call set_behaviour(logits) first")
        engine = self.sampler is not None  # the engine's reported log-probs and kept-set mass
        return RolloutBatch(logp_old=self.logp_old, logp_ref=self.logp_ref, mask=self.mask,
                            rewards=self.rewards, group_size=group_size or self.group_size,
                            logp_rollout=self.logp_sample if engine else None,
                            kept_logmass=self.kept_logmass if engine else None)


def policy_logits(model: torch.nn.Module, prompts: torch.Tensor, responses: torch.Tensor,
                  group_size: int = 1) -> torch.Tensor:
    """Response logits (differentiable): ``prompts [n, P]``, ``responses [n·G, R]`` -> ``[n·G, R, V]`` float32.

    Each prompt's positions are computed once for its G responses (:func:`rlkl.lm.model.shared_prefix_logits`).
    """
    with autocast(prompts.device):
        return shared_prefix_logits(model, prompts, responses, group_size).float()  # [B, R, V]


def policy_logp(model: torch.nn.Module, prompts: torch.Tensor, responses: torch.Tensor,
                group_size: int = 1) -> torch.Tensor:
    """log π(sampled token) for every response position (differentiable): ``[n·G, R]``."""
    return token_logprobs(policy_logits(model, prompts, responses, group_size), responses)  # [B, R]


@torch.no_grad()
def collect_rollout(
    policy: torch.nn.Module,
    ref: torch.nn.Module,
    base: torch.nn.Module,
    task: Task,
    prompts: torch.Tensor,
    group_size: int,
    generator: torch.Generator,
    partial_credit: bool = False,
    with_behaviour: bool = True,
    sampler: Any = None,
    replay: bool = False,
) -> Rollout:
    """Sample G completions per prompt from ``policy`` and compute everything the update needs.

    ``ref`` gives ``logp_ref`` for the loss; ``base`` (π_0, the initial reference) is what the KL-drift
    metrics are measured against (the same module as ``ref`` unless the reference is refreshed).
    ``with_behaviour=False`` leaves ``logp_old`` to the caller (:meth:`Rollout.set_behaviour`).
    ``sampler``: an ``rlkl.sampling.Sampler`` the engine samples through (:func:`rlkl.lm.model.sample_engine`);
    ``replay``: renormalize π_θ and π_old over its kept sets in the loss (mask replay).
    """
    G = group_size
    rep = prompts.repeat_interleave(G, dim=0)  # [B, P]  rows i*G .. i*G+G-1 share prompt i
    with torch.inference_mode():  # sampling and the reference forwards record nothing for autograd
        out = _sample_and_score(policy, ref, base, task, prompts, G, generator, partial_credit, sampler)
    # plain copies of the inference tensors (those cannot be saved for the update's backward); a shared π_ref =
    # π_0 tensor stays one tensor
    responses, mask, logp_sample, logp_ref, rewards, logits_base, kept = (None if t is None else t.clone()
                                                                          for t in out[:7])
    logits_ref = logits_base if out[7] is out[5] else out[7].clone()  # [B, R, V]
    ro = Rollout(rep, responses, mask, logp_sample, logp_ref, rewards.float(), G, logits_base, logits_ref,
                 sampler=sampler, kept=kept, replay=replay and kept is not None)
    if partial_credit:  # the binary pass rate next to the partial-credit reward
        ro.metrics["pass_rate"] = float(task.score_groups(prompts, responses, G).mean())
    if with_behaviour:
        ro.set_behaviour(policy_logits(policy, prompts, responses, G))
    return ro


def _sample_and_score(policy: torch.nn.Module, ref: torch.nn.Module, base: torch.nn.Module, task: Task,
                      prompts: torch.Tensor, G: int, generator: torch.Generator, partial_credit: bool, sampler):
    """The tensors of :func:`collect_rollout`: ``(responses, mask, logp_sample, logp_ref, rewards, logits_base,
    kept, logits_ref)`` — ``[B, R]`` x4, ``[B]``, ``[B, R, V]``, ``[B, R, V]`` bool or None, ``[B, R, V]``."""
    # the G samples of a prompt share its prefix (one prompt pass per group, its KV cache repeated G times)
    kept = None
    if sampler is None:
        responses, mask, logp_sample = sample(policy, prompts, task.max_response_len, task.eos_id, generator,
                                              group_size=G)  # [B, R] x3
    else:  # an inference engine: q = sampler(π_old), reported log-probs, kept sets [B, R, V]
        responses, mask, logp_sample, kept = sample_engine(policy, prompts, task.max_response_len, task.eos_id,
                                                           generator, sampler, group_size=G)
    rewards = task.score_groups(prompts, responses, G, partial_credit)  # [B] on the device
    logits_base = policy_logits(base, prompts, responses, G)  # [B, R, V]
    logits_ref = logits_base if ref is base else policy_logits(ref, prompts, responses, G)  # [B, R, V]
    logp_ref = token_logprobs(logits_ref, responses)  # [B, R]
    return responses, mask, logp_sample, logp_ref, rewards, logits_base, kept, logits_ref


def compute_loss(model: torch.nn.Module, method, rollout: Rollout, group_size: int):
    """The trainer's loss: ``method.loss`` on the policy's log-probs of the rollout's tokens.

    When the rollout has no behaviour log-probs yet, this forward pass provides them (π_old = π_θ now).
    """
    logits = policy_logits(model, rollout.group_prompts, rollout.responses, rollout.group_size)  # [B, R, V] grad
    logp = None if rollout.replay else token_logprobs(logits, rollout.responses)  # [B, R] log π_θ (grad)
    if rollout.logp_old is None:
        rollout.set_behaviour(logits, logp)  # π_old = sg[π_θ now]: the same log-probs, detached
    if rollout.replay:  # mask replay: π_θ renormalized over the engine's kept sets (no gradient to cut tokens)
        from rlkl.sampling import kept_log_softmax

        logits = kept_log_softmax(logits, rollout.kept)  # [B, R, V] log π_θ^K
        logp = token_logprobs(logits, rollout.responses)  # [B, R]
    return method.loss(logp, rollout.batch(group_size))


@dataclass(frozen=True)
class ReferenceSamples:
    """One response per eval prompt sampled from π_0 once per run, with π_0's logits on them (π_0 is frozen)."""

    prompts: torch.Tensor  # [n, P]
    responses: torch.Tensor  # [n, R]
    mask: torch.Tensor  # [n, R] bool
    logits: torch.Tensor  # [n, R, V] π_0's logits at the visited states


@torch.no_grad()
def reference_samples(base: torch.nn.Module, task: Task, prompts: torch.Tensor, seed: int) -> ReferenceSamples:
    """Draw the π_0 samples of the forward-KL metric (a private generator seeded by ``seed``)."""
    gen = torch.Generator(device=prompts.device).manual_seed(int(seed))
    resp, mask, _ = sample(base, prompts, task.max_response_len, task.eos_id, gen)  # [n, R]
    return ReferenceSamples(prompts, resp, mask, policy_logits(base, prompts, resp))  # [n, R, V]


@torch.no_grad()
def forward_kl_metrics(policy: torch.nn.Module, ref_samples: ReferenceSamples) -> dict[str, float]:
    """Exact forward KL on the π_0 samples of the eval prompts.

    ``eval_kl_fwd_seq`` = mean_i Σ_t KL(π_0‖π)(s_t) over y_i ~ π_0 (= sequence KL(π_0‖π) in expectation);
    ``eval_kl_fwd_tok`` = the token mean of KL(π_0‖π)(s_t) on the same samples.
    """
    rs = ref_samples
    lp = policy_logits(policy, rs.prompts, rs.responses)  # [n, R, V]
    kl = token_kl(rs.logits, lp) * rs.mask  # [n, R]
    return {"eval_kl_fwd_seq": float(seq_sum(kl, rs.mask).mean()), "eval_kl_fwd_tok": float(kl.sum() / rs.mask.sum())}


def evaluate_policy(policy: torch.nn.Module, base: torch.nn.Module, task: Task, prompts: torch.Tensor,
                    n_samples: int, ks: list[int], seed: int, ref_samples: ReferenceSamples) -> dict[str, float]:
    """Every ``eval_…`` metric: pass@k, greedy accuracy and length, and the exact drift from π_0.

    Reverse KL and entropy come from the same ``n_samples`` samples per prompt as pass@k
    (:func:`rlkl.lm.metrics.evaluate`), the forward KL from the fixed π_0 samples (:func:`forward_kl_metrics`).
    """
    res = evaluate(policy, task, prompts, n_samples, ks, seed, reference=base)
    res = {k if k.startswith("eval_") else f"eval_{k}": v for k, v in res.items()}  # eval_pass@k, eval_kl_rev_seq, …
    res.update(forward_kl_metrics(policy, ref_samples))
    return res


# ---------------------------------------------------------------------------------------------------
# The run's state: models, optimizer, random streams; checkpoints
# ---------------------------------------------------------------------------------------------------


@dataclass
class _State:
    """Everything a checkpoint restores; every change to it is visible in :func:`_train`."""

    base: torch.nn.Module  # π_0, the SFT reference (frozen; the KL-drift metrics' reference)
    policy: torch.nn.Module  # π_θ (trained)
    ref: torch.nn.Module  # π_ref of the loss (= base unless ref_refresh_every > 0)
    train_model: torch.nn.Module  # the policy, compiled when cfg.compile
    opt: AdamW
    prompt_gen: torch.Generator  # the prompt stream (CPU)
    sample_gen: torch.Generator  # the sampling stream (on the device)
    step: int = 0
    wall0: float = 0.0  # wall time of the run before this invocation


def _build_state(cfg: TrainConfig, device: torch.device) -> tuple[_State, Task]:
    base, task, _ = load_reference(cfg.ref, device)
    if task.name != cfg.task or task.difficulty != cfg.difficulty:
        raise ValueError(f"reference {cfg.ref} was trained on {task.name} difficulty {task.difficulty}, but the "
                         f"config asks for {cfg.task} difficulty {cfg.difficulty}")
    base.requires_grad_(False).eval()
    policy = copy.deepcopy(base).requires_grad_(True).train()
    ref = base if cfg.ref_refresh_every == 0 else copy.deepcopy(base)
    opt = AdamW(policy.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                weight_decay=cfg.weight_decay)  # torch's fused AdamW kernel, without the torch._dynamo import
    st = _State(base, policy, ref, maybe_compile(policy, cfg.compile), opt,
                torch.Generator().manual_seed(cfg.seed), torch.Generator(device=device).manual_seed(cfg.seed + 1))
    return st, task


def _payload(st: _State, wall_time: float, ref_sha256: str, threads: int, cfg: TrainConfig) -> dict:
    return {
        "step": st.step,
        "wall_time": wall_time,
        "config": cfg.to_dict(),
        "ref_sha256": ref_sha256,
        "num_threads": threads,
        "policy": unwrap(st.policy).state_dict(),
        "ref": None if st.ref is st.base else st.ref.state_dict(),
        "optimizer": st.opt.state_dict(),
        "prompt_gen": st.prompt_gen.get_state(),
        "sample_gen": st.sample_gen.get_state(),
    }


def _check_resumable(ck: dict, cfg: TrainConfig, out: Path, ref_sha256: str, threads: int, device) -> None:
    """Refuse a resume that could not continue the checkpointed run exactly (other reference, other threads)."""
    if ck.get("ref_sha256") != ref_sha256:
        raise ValueError(f"cannot resume {out}: the reference {cfg.ref} is not the file the run started from "
                         f"(sha256 {ref_sha256} now, {ck.get('ref_sha256')} in the checkpoint); restore that file "
                         f"or start a new run")
    if device.type == "cpu" and ck.get("num_threads") != threads:
        raise ValueError(f"cannot resume {out} with {threads} torch thread(s): it was checkpointed with "
                         f"{ck.get('num_threads')}, and another count splits CPU reductions differently (the "
                         f"resumed numbers would differ from an uninterrupted run's); resume with --num_threads "
                         f"{ck.get('num_threads')}")


def _restore(st: _State, ck: dict) -> None:
    st.policy.load_state_dict(ck["policy"])
    if ck["ref"] is not None:
        st.ref.load_state_dict(ck["ref"])
    st.opt.load_state_dict(ck["optimizer"])
    st.prompt_gen.set_state(ck["prompt_gen"])
    st.sample_gen.set_state(ck["sample_gen"])
    st.step, st.wall0 = int(ck["step"]), float(ck["wall_time"])


def _open_run(cfg: TrainConfig, out: Path, resume: bool, st: _State, ref_sha256: str, threads: int,
              device) -> list[dict]:
    """Check the run directory, restore the checkpoint on resume; returns the metric rows so far."""
    ckpt = out / "checkpoint.pt"
    if not resume:
        if ckpt.exists():
            raise ValueError(f"{out} already holds a run (checkpoint.pt); resume it with --resume {out} "
                             f"or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        return []
    if not ckpt.exists():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt}" + (
            " (the run stopped before its first checkpoint, the step-0 evaluation; start it again without "
            "--resume)" if (out / "config.json").exists() else ""))
    saved = _read_config(out)
    free = {"steps", "num_threads", "compile"}  # the device is fixed: RNG states are per device
    diff = [f.name for f in fields(TrainConfig) if f.name not in free and getattr(saved, f.name) != getattr(cfg, f.name)]
    if diff:
        raise ValueError(f"cannot change {diff} when resuming {out}; only {sorted(free)} may change")
    ck = load_checkpoint(ckpt, device, what="checkpoint")
    _check_resumable(ck, cfg, out, ref_sha256, threads, device)
    if int(ck["step"]) > cfg.steps:
        raise ValueError(f"{out} is at step {ck['step']}; --steps {cfg.steps} cannot shorten it")
    _restore(st, ck)
    return restore_rows(out, ck, "rlkl train")


def _read_config(run_dir: Path) -> TrainConfig:
    path = run_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a TrainConfig ({exc})") from None


def load_policy(run_dir: str | os.PathLike, device: str = "cpu"):
    """The trained policy of a run (its latest checkpoint) and the task: ``(model, task)``."""
    run_dir = Path(run_dir)
    cfg = _read_config(run_dir)
    model, task, _ = load_reference(cfg.ref, device)
    ck = load_checkpoint(run_dir / "checkpoint.pt", device)
    model.load_state_dict(ck["policy"])
    return model, task


_GracefulStop = GracefulStop  # the name the tests and older code use


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------


def _group_of(method, cfg: TrainConfig) -> tuple[int, str, float] | None:
    """(G, std, ε) of a GRPO-style standardized advantage (its finite-group utility U_G), else None."""
    from rlkl.components import GroupStandardized

    adv = method.advantage
    return (cfg.group_size, adv.std.value, float(adv.eps)) if isinstance(adv, GroupStandardized) else None


def _lr_at(update: int, cfg: TrainConfig) -> float:
    if cfg.warmup_steps == 0:
        return cfg.lr
    return cfg.lr * min(1.0, (update + 1) / cfg.warmup_steps)


def _pass_ks(n: int) -> list[int]:
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    tensorboard: bool = False,
    graceful: bool = False,
    method: Any = None,
) -> list[dict]:
    """Run (or resume) RL training; returns the metric rows written to ``metrics.jsonl``.

    Args:
        cfg: the run's configuration (on resume it must equal the saved ``config.json``, except ``steps``,
            which may be raised to extend a run, and ``num_threads``/``compile``; a CPU run must keep its
            effective thread count).
        out_dir: run directory (``config.json``, ``method.json``, ``run.json``, ``metrics.jsonl``,
            ``checkpoint.pt``; ``tensorboard/`` with ``tensorboard``).
        resume: continue from ``out_dir/checkpoint.pt``; refused when the reference file's sha256 differs
            from the one the run started with.
        progress: show the tqdm bar.
        stop_after: stop (with a checkpoint) after this many steps of *this* invocation, as Ctrl-C would.
        tensorboard: also log every metric to ``out_dir/tensorboard`` (needs ``pip install 'rlkl[tensorboard]'``).
        graceful: the first Ctrl-C finishes the step, checkpoints and returns (what ``rlkl train`` does);
            otherwise Ctrl-C raises KeyboardInterrupt at once and the last checkpoint is the saved state.
        method: train this ``rlkl.methods.Method`` (any, e.g. ``get_method("grpo").replace(...)`` or a translated
            verl/TRL config) instead of ``cfg.method``: the config then holds its name, its β and the Method itself
            (``method_json``), and a resume refuses any other Method.
    """
    if method is not None:
        from rlkl.methods import Method

        if not isinstance(method, Method):
            raise ValueError(f"method must be an rlkl Method, got {type(method).__name__}")
        cfg = dataclasses.replace(cfg, method=method.name, method_json=json.dumps(method.to_dict()),
                                  beta=float(method.beta))
    threads = torch.get_num_threads()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(cfg, Path(out_dir), resume, progress, stop_after, tensorboard, graceful, torch.get_num_threads())
    finally:
        torch.set_num_threads(threads)


def _update(cfg: TrainConfig, method, st: _State, ro: Rollout) -> dict:
    """The K optimizer updates on one rollout; returns the step's loss/gradient/diagnostic metrics."""
    diag_sum: dict[str, float] = {}
    losses, gnorms = [], []
    for k in range(cfg.updates_per_batch):
        lr = _lr_at(st.step * cfg.updates_per_batch + k, cfg)
        for group in st.opt.param_groups:
            group["lr"] = lr
        loss, diag = compute_loss(st.train_model, method, ro, cfg.group_size)
        st.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(st.opt.params,  # the policy's parameters, listed once (no module walk)
                                            cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        st.opt.step()
        keys = list(diag)  # the diagnostics are computed here, on first read
        # one host read for every scalar of the update; widened to float64 first (exact from float32/bf16, so the
        # same values float() would read one by one, whatever dtype each scalar has)
        values = torch.stack([t.detach().double() for t in (loss, gn, *(diag[key] for key in keys))]).tolist()
        losses.append(values[0])
        gnorms.append(values[1])
        for key, v in zip(keys, values[2:]):
            diag_sum[key] = diag_sum.get(key, 0.0) + v
    K = cfg.updates_per_batch
    row = {"loss": sum(losses) / K, "grad_norm": sum(gnorms) / K, "grad_norm_last": gnorms[-1], "lr": lr}
    row.update({f"diag/{key}": v / K for key, v in diag_sum.items()})
    return row


def _rl_step(cfg: TrainConfig, method, st: _State, task: Task, device) -> dict:
    """One RL step: rollout, K updates, reference refresh; advances ``st.step``; returns the step's metric row."""
    t0 = time.time()
    prompts = task.sample_prompts(cfg.prompts_per_step, st.prompt_gen).to(device)  # [n, P]
    dropout = unwrap(st.policy).cfg.dropout > 0  # eval/train differ only in dropout (RL runs: none)
    if dropout:
        st.policy.eval()  # sample without dropout (nn.Module.train walks every submodule: skipped when a no-op)
    ro = collect_rollout(st.policy, st.ref, st.base, task, prompts, cfg.group_size, st.sample_gen,
                         cfg.partial_credit, with_behaviour=False,  # π_old comes from the first update
                         sampler=build_sampler(cfg), replay=method.correction.replays_kept_set)
    if dropout:
        st.policy.train()
    t1 = time.time()
    upd = _update(cfg, method, st, ro)
    st.step += 1
    if cfg.ref_refresh_every and st.step % cfg.ref_refresh_every == 0:
        st.ref.load_state_dict(unwrap(st.policy).state_dict())
    t2 = time.time()
    n_tok = int(ro.mask.sum())
    return {"step": st.step, **ro.metrics, **upd, "response_tokens": n_tok, "time/rollout": t1 - t0,
            "time/update": t2 - t1, "time/step": t2 - t0, "tokens_per_s": tokens_per_second(n_tok, t2 - t0)}


def _train(cfg: TrainConfig, out: Path, resume: bool, progress: bool, stop_after: int | None, tensorboard: bool,
           graceful: bool, threads: int) -> list[dict]:
    device = resolve_device(cfg.device)
    method = build_method(cfg)
    st, task = _build_state(cfg, device)
    ref_sha256 = sha256_file(cfg.ref)
    rows = _open_run(cfg, out, resume, st, ref_sha256, threads, device)
    if resume and (out / "method.json").exists() and json.loads((out / "method.json").read_text()) != method.to_dict():
        raise ValueError(f"cannot resume {out}: its method.json is not the Method this config builds ({method!r}); "
                         "the run trained another Method (registry changed?)")
    atomic_write_json(out / "config.json", cfg.to_dict())
    atomic_write_json(out / "method.json", method.to_dict())
    atomic_write_json(out / "run.json", {"ref": cfg.ref, "ref_sha256": ref_sha256, "num_threads": threads,
                                         "device": str(device), "torch": torch.__version__})
    eval_prompts = task.eval_prompts(cfg.eval_prompts).to(device)
    ks = _pass_ks(cfg.eval_samples)
    ref_samples = reference_samples(st.base, task, eval_prompts, seed=(cfg.seed + 1) * 1_000_003 - 1)  # fixed per run
    yardstick = Yardstick.build(st.base, task, device) if enumerable(task) else None  # π_0 on every train problem

    def run_eval(step: int) -> dict:
        t = time.time()
        res = evaluate_policy(st.policy, st.base, task, eval_prompts, cfg.eval_samples, ks,
                              cfg.seed * 1_000_003 + step, ref_samples)
        if yardstick is not None:  # exact sequence-level metrics on the training problems (rlkl.lm.exact)
            res.update(yardstick.metrics(st.policy, float(cfg.beta), (1, cfg.eval_samples), _group_of(method, cfg)))
        res["time/eval"] = time.time() - t
        return res

    t_start = time.time() - st.wall0
    start = st.step
    ckpt = out / "checkpoint.pt"
    with MetricLog(out, rows, tensorboard) as log, GracefulStop(enabled=graceful) as stop:
        def checkpoint() -> None:
            save_checkpoint(ckpt, log, _payload(st, time.time() - t_start, ref_sha256, threads, cfg))

        if not log.rows:  # a fresh run (a resume from the step-0 checkpoint has this row already)
            log.log({"step": 0, **run_eval(0), "wall_time": time.time() - t_start})
            checkpoint()  # the first checkpoint: a kill from here on never loses the run
        last_eval = next((r for r in reversed(log.rows) if "eval_pass@1" in r), {})
        bar = tqdm(total=cfg.steps, initial=st.step, desc=f"{cfg.method} {cfg.task}-{cfg.difficulty}",
                   disable=not progress, dynamic_ncols=True)
        while st.step < cfg.steps and not stop.requested:
            row = _rl_step(cfg, method, st, task, device)  # st.step += 1
            if st.step % cfg.eval_every == 0 or st.step == cfg.steps:
                last_eval = run_eval(st.step)
                row.update(last_eval)
            row["wall_time"] = time.time() - t_start
            log.log(row)
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", pass1=f"{last_eval.get('eval_pass@1', float('nan')):.3f}",
                            kl_seq=f"{last_eval.get('eval_kl_rev_seq', float('nan')):.3f}")  # as the final summary
            stopping = stop.requested or (stop_after is not None and st.step - start >= stop_after)
            if st.step % cfg.checkpoint_every == 0 or st.step == cfg.steps or stopping:
                checkpoint()
            if stopping:
                break
        bar.close()
        if stop.requested:
            tqdm.write(f"stopped at step {st.step}; continue with: rlkl train --resume {out}", file=sys.stderr)
    return log.rows


def resume(run_dir: str | os.PathLike, progress: bool = True, stop_after: int | None = None,
           tensorboard: bool = False, graceful: bool = False, **changes: Any) -> list[dict]:
    """Continue the run in ``run_dir`` from its checkpoint (``changes`` may raise ``steps``, set threads/compile)."""
    run_dir = Path(run_dir)
    cfg = _read_config(run_dir)
    cfg = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    return train(cfg, run_dir, resume=True, progress=progress, stop_after=stop_after, tensorboard=tensorboard,
                 graceful=graceful)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def final_summary(rows: list[dict]) -> dict[str, float]:
    """The last evaluation and the last step's training metrics of a run (for experiments and the CLI)."""
    evals = [r for r in rows if "eval_pass@1" in r]
    out = {k: v for k, v in rows[-1].items() if not k.startswith("eval_")} if rows else {}
    if evals:
        out.update({k: v for k, v in evals[-1].items() if k.startswith("eval_")})
        out["ref_eval_pass@1"] = evals[0]["eval_pass@1"]
    return out
