"""Supervised fine-tuning of the reference policy π_ref on deliberately noisy demonstrations.

A fresh tiny GPT is trained by next-token cross-entropy on (prompt, answer) pairs of a task, where a
fraction ``noise_rate`` of the demonstrations is corrupted (one digit substituted, deleted or inserted,
chosen uniformly). A model that fits this data reproduces the noise when sampled at temperature 1, so
its pass@1 sits near ``1 - noise_rate`` times its clean accuracy: an *imperfect* base policy (target
30–60% pass@1) that RL can improve and against which KL-to-reference means what it means at full scale.

Output (``out`` directory): ``reference.pt`` (model config, task, SFT config, weights, final eval),
``config.json`` and ``metrics.jsonl``. :func:`load_reference` reads the checkpoint back.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rlkl.lm.metrics import evaluate
from rlkl.lm.model import GPT, GPTConfig, autocast, resolve_device, response_logits, unwrap
from rlkl.lm.optim import AdamW
from rlkl.lm.tasks import Task, make_task, task_from_dict


@dataclass(frozen=True)
class SFTConfig:
    """Configuration of the reference-policy SFT run."""

    task: str = "addition"
    """Task name (``addition`` or ``sort``)."""
    difficulty: int = 2
    """Task difficulty: digits per operand (addition) or list length (sort)."""
    split_seed: int = 0
    """Seed of the task's train/eval split (RL must use the same split; it is read from the checkpoint)."""
    noise_rate: float = 0.5
    """Fraction of demonstrations corrupted by one random digit substitution/deletion/insertion."""
    n_layer: int = 2
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block."""
    d_model: int = 64
    """Residual width."""
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 256
    """Demonstrations per step (fresh problems and fresh noise every step)."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, then cosine decay to lr/10)."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    eval_prompts: int = 200
    """Held-out prompts for the final evaluation."""
    eval_samples: int = 8
    """Samples per eval prompt (pass@k uses the unbiased estimator over these)."""
    eval_every: int = 500
    """Evaluate every this many steps (and at the end)."""
    checkpoint_every: int = 200
    """Write ``checkpoint.pt`` every this many steps (also after step 1 and on Ctrl-C); resume with
    ``rlkl sft --resume OUT``."""
    seed: int = 0
    """Seed of the initialisation, the demonstrations and the noise."""
    device: str = "auto"
    """``auto`` (cuda if available, else cpu), ``cpu`` or ``cuda``."""
    num_threads: int = 0
    """torch intra-op CPU threads while training (0 = leave torch's default; restored afterwards)."""

    def __post_init__(self) -> None:
        from rlkl._checks import check_int, check_real

        check_real("noise_rate", self.noise_rate, low=0.0, high=1.0)
        for name in ("steps", "batch_size", "eval_prompts", "eval_samples", "eval_every", "difficulty",
                     "checkpoint_every", "n_layer", "n_head", "d_model"):
            check_int(name, getattr(self, name), low=1)
        for name in ("num_threads", "warmup_steps", "split_seed"):
            check_int(name, getattr(self, name), low=0)
        check_int("seed", self.seed, low=0, high=2**32 - 1)
        check_real("lr", self.lr, low=0.0, low_open=True)
        check_real("weight_decay", self.weight_decay, low=0.0)
        check_real("grad_clip", self.grad_clip, low=0.0, low_open=True)
        if not isinstance(self.task, str) or not isinstance(self.device, str):
            raise ValueError(f"task and device must be strings, got {self.task!r}, {self.device!r}")
        resolve_device(self.device)
        make_task(self.task, self.difficulty, self.split_seed)  # raises on an unknown task
        GPTConfig(n_layer=self.n_layer, n_head=self.n_head, d_model=self.d_model)  # raises on bad shapes


SFT_PRESETS: dict[str, dict] = {
    # minutes on 2 CPU cores; 2-digit addition reaches ~40-55% pass@1 with noise 0.5
    # One thread: at this size intra-op parallelism costs more than it saves (and collapses when the
    # cores are shared with other processes).
    "cpu_tiny": dict(n_layer=2, n_head=4, d_model=64, steps=1000, batch_size=128, lr=3e-3, num_threads=1),
    # ~1.0M parameters, 3-digit addition, two threads: SFT + one RL run within ~10 minutes on 2 quiet cores
    "cpu_small": dict(n_layer=4, n_head=4, d_model=144, steps=800, batch_size=128, lr=2e-3, difficulty=3,
                      num_threads=2),
    "gpu_small": dict(n_layer=4, n_head=4, d_model=128, steps=5000, batch_size=512, lr=1e-3, difficulty=3),
    "gpu_medium": dict(n_layer=6, n_head=8, d_model=256, steps=10000, batch_size=512, lr=6e-4, difficulty=5),
}


def sft_config_from_preset(preset: str, **overrides) -> SFTConfig:
    if preset not in SFT_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(SFT_PRESETS)}")
    values = {**SFT_PRESETS[preset], **overrides}
    if overrides.get("eval_prompts") is None:  # a small task (divisor): at most its whole eval split
        from rlkl.lm.tasks import n_problems

        t = make_task(values.get("task", "addition"), values.get("difficulty", 2), values.get("split_seed", 0))
        if n_problems(t) <= 200_000:
            values["eval_prompts"] = min(values.get("eval_prompts", 200), len(t.split_problems("eval")))
    return SFTConfig(**values)


def corrupt(answer: list[int], symbols: list[int], generator: torch.Generator, max_len: int | None = None) -> list[int]:
    """One random edit of an answer (token ids): substitute, delete or insert a symbol, uniformly.

    The result always differs from ``answer``: a substitution always changes the token; a deletion of a
    one-token answer, or an insertion that would exceed ``max_len``, falls back to a substitution.
    """
    kind = int(torch.randint(0, 3, (1,), generator=generator))
    pos = int(torch.randint(0, len(answer), (1,), generator=generator))
    if kind == 1 and len(answer) > 1:  # delete
        return answer[:pos] + answer[pos + 1 :]
    if kind == 2 and (max_len is None or len(answer) < max_len):  # insert a random symbol before position pos (or at the end)
        pos = int(torch.randint(0, len(answer) + 1, (1,), generator=generator))
        sym = symbols[int(torch.randint(0, len(symbols), (1,), generator=generator))]
        return answer[:pos] + [sym] + answer[pos:]
    others = [s for s in symbols if s != answer[pos]]  # substitute
    return answer[:pos] + [others[int(torch.randint(0, len(others), (1,), generator=generator))]] + answer[pos + 1 :]


def noisy_demonstrations(
    task: Task, n: int, noise_rate: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` training demonstrations: ``(prompts [n, P], responses [n, R], mask [n, R], corrupted [n])``.

    Each answer is corrupted with probability ``noise_rate`` (see :func:`corrupt`; answers stay within the
    task's budget of R - 1 symbols + EOS), so exactly the corrupted demonstrations are wrong — except on a
    multi-answer task (``divisor``), where an edit can land on another correct answer.
    """
    prompts = task.sample_prompts(n, generator, split="train")  # [n, P]
    clean, clean_mask = task.demonstration_responses(prompts, generator)  # [n, R] (a multi-answer task draws one)
    R, eos = task.max_response_len, task.eos_id
    symbols = task.tokenizer.encode(task.answer_symbols)
    corrupted = torch.rand(n, generator=generator) < noise_rate  # [n]
    responses, mask = clean.clone(), clean_mask.clone()
    for i in torch.nonzero(corrupted).flatten().tolist():
        ans = clean[i][clean_mask[i]].tolist()[:-1]  # without EOS
        new = corrupt(ans, symbols, generator, max_len=R - 1) + [eos]
        responses[i] = eos
        responses[i, : len(new)] = torch.tensor(new)
        mask[i] = False
        mask[i, : len(new)] = True
    return prompts, responses, mask, corrupted


def sft_loss(model: torch.nn.Module, prompts: torch.Tensor, responses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean cross-entropy of the response tokens (prompt tokens are not trained on)."""
    logits = response_logits(model, prompts, responses)  # [B, R, V]
    nll = F.cross_entropy(logits.flatten(0, 1), responses.flatten(), reduction="none").view_as(mask)  # [B, R]
    return (nll * mask).sum() / mask.sum()


def _lr_at(step: int, cfg: SFTConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def train_sft(cfg: SFTConfig, out: str | os.PathLike | None = None, progress: bool = True, resume: bool = False,
              force: bool = False, stop_after: int | None = None, tensorboard: bool = False,
              graceful: bool = False) -> tuple[GPT, dict]:
    """Train the reference policy; save it under ``out`` when given. Returns ``(model, final_eval)``.

    With ``out``, the run checkpoints like ``rlkl train`` (``checkpoint.pt`` after step 1, every
    ``checkpoint_every`` steps and on Ctrl-C; removed once ``reference.pt`` is written) and ``resume=True``
    continues it so that the reference equals the uninterrupted run's. An existing ``reference.pt`` is never
    overwritten unless ``force`` (which starts the run afresh). ``stop_after`` stops (with a checkpoint) after
    that many steps of this invocation; the model is then returned with ``final_eval = {}``. ``graceful``: the
    first Ctrl-C finishes the step and checkpoints (``rlkl sft``); otherwise Ctrl-C raises KeyboardInterrupt.
    """
    threads = torch.get_num_threads()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train_sft(cfg, Path(out) if out is not None else None, progress, resume, force, stop_after,
                          tensorboard, graceful, torch.get_num_threads())
    finally:
        torch.set_num_threads(threads)


def _open_sft_run(cfg: SFTConfig, out: Path, resume: bool, force: bool, threads: int, device) -> dict | None:
    """Check the output directory; returns the checkpoint to resume from (None: a fresh run)."""
    from rlkl._io import sha256_file
    from rlkl.lm.runlog import load_checkpoint

    ref, ckpt = out / "reference.pt", out / "checkpoint.pt"
    if ref.exists() and resume and not force:
        return {"complete": True}  # resuming a finished run (a kill may have left its last checkpoint behind)
    if ref.exists() and not force:
        raise ValueError(f"{ref} already exists (sha256 {sha256_file(ref)[:16]}…); runs trained against it would no "
                         f"longer match it if it were replaced: pass --force to overwrite it, or choose another --out")
    if force or not resume:
        if ckpt.exists() and not force:
            raise ValueError(f"{out} holds an interrupted SFT run (checkpoint.pt); continue it with "
                             f"`rlkl sft --resume {out}`, or pass --force to start it again")
        for name in ("checkpoint.pt", "metrics.jsonl"):
            (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        return None
    if not ckpt.exists():
        raise FileNotFoundError(f"cannot resume: no SFT checkpoint at {ckpt}")
    saved = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else None
    diff = sorted(k for k, v in asdict(cfg).items() if saved is not None and k != "num_threads" and saved.get(k) != v)
    if diff:
        raise ValueError(f"cannot change {diff} when resuming {out}; only num_threads may change")
    ck = load_checkpoint(ckpt, device, what="SFT checkpoint")
    if device.type == "cpu" and ck.get("num_threads") != threads:
        raise ValueError(f"cannot resume {out} with {threads} torch thread(s): it was checkpointed with "
                         f"{ck.get('num_threads')} (another count changes the numbers); resume with --num_threads "
                         f"{ck.get('num_threads')}")
    return ck


def _train_sft(cfg: SFTConfig, out: Path | None, progress: bool, resume: bool, force: bool, stop_after: int | None,
               tensorboard: bool, graceful: bool, threads: int) -> tuple[GPT, dict]:
    from rlkl._io import atomic_write_json
    from rlkl.lm.runlog import GracefulStop, MetricLog, restore_rows, save_checkpoint

    device = resolve_device(cfg.device)
    ck = _open_sft_run(cfg, out, resume, force, threads, device) if out is not None else None
    if ck is not None and ck.get("complete"):
        return _completed_sft(out, device)
    task, model, opt, gen = _sft_state(cfg, device)
    start, wall0, rows = 0, 0.0, []
    if ck is not None:  # resume: model, optimizer, sampling generator and torch RNG as they were at the checkpoint
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["torch_rng"])
        start, wall0, rows = int(ck["step"]), float(ck["wall_time"]), restore_rows(out, ck, "rlkl sft")
    eval_prompts = task.eval_prompts(cfg.eval_prompts).to(device)
    ks = sorted({1, min(4, cfg.eval_samples), cfg.eval_samples})
    if out is not None:
        atomic_write_json(out / "config.json", asdict(cfg))
    t0 = time.time() - wall0
    log = MetricLog(out, rows, tensorboard) if out is not None else None

    def checkpoint(step: int) -> None:
        save_checkpoint(out / "checkpoint.pt", log, {
            "step": step, "wall_time": time.time() - t0, "config": asdict(cfg), "num_threads": threads,
            "model": unwrap(model).state_dict(), "optimizer": opt.state_dict(), "gen": gen.get_state(),
            "torch_rng": torch.get_rng_state()})

    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"sft {cfg.task}-{cfg.difficulty}",
               disable=not progress, dynamic_ncols=True)
    step, stopped = start, False
    try:
        with GracefulStop(enabled=graceful) as stop:
            for step in bar:
                row = _sft_step(cfg, model, opt, task, gen, step, device, t0)
                if row["step"] % cfg.eval_every == 0 or row["step"] == cfg.steps:
                    row.update(evaluate(model, task, eval_prompts, cfg.eval_samples, ks, seed=cfg.seed + 7919))
                    bar.set_postfix(loss=f"{row['loss']:.3f}", pass1=f"{row['pass@1']:.3f}")
                if log is not None:
                    log.log(row)
                stopped = stop.requested or (stop_after is not None and row["step"] - start >= stop_after)
                if log is not None and row["step"] < cfg.steps and (
                        row["step"] == 1 or row["step"] % cfg.checkpoint_every == 0 or stopped):
                    checkpoint(row["step"])
                if stopped:
                    break
        bar.close()
        all_rows = log.rows if log is not None else [row]
    finally:
        if log is not None:
            log.close()
    if stopped and step + 1 < cfg.steps:
        if stop.requested:
            tqdm.write(f"stopped at step {step + 1}; continue with: rlkl sft --resume {out}", file=sys.stderr)
        return model, {}
    return model, _finish_sft(out, model, task, cfg, all_rows)


def _finish_sft(out: Path | None, model: GPT, task, cfg: SFTConfig, rows: list[dict]) -> dict:
    """The last evaluation row; with a run folder, write reference.pt (the run's result) and drop the checkpoint."""
    final = next((r for r in reversed(rows) if "pass@1" in r), {})
    if out is not None:
        save_reference(out / "reference.pt", model, task, cfg, final)
        (out / "checkpoint.pt").unlink(missing_ok=True)  # the run is complete: reference.pt is its result
    return final


def _completed_sft(out: Path, device) -> tuple[GPT, dict]:
    """A run whose reference.pt is written: drop a stale checkpoint, load the reference, say so."""
    from rlkl.lm.runlog import note

    (out / "checkpoint.pt").unlink(missing_ok=True)
    model, _, payload = load_reference(out / "reference.pt", device)
    note("rlkl sft", f"{out} is complete (reference.pt written); nothing to resume")
    return model, payload["eval"]


def _sft_state(cfg: SFTConfig, device):
    """The task, a freshly initialised model (seeded), its optimizer and the demonstration generator."""
    torch.manual_seed(cfg.seed)
    task = make_task(cfg.task, cfg.difficulty, cfg.split_seed)
    mcfg = GPTConfig(vocab_size=task.vocab_size, block_size=task.prompt_len + task.max_response_len,
                     n_layer=cfg.n_layer, n_head=cfg.n_head, d_model=cfg.d_model)
    model = GPT(mcfg).to(device)
    opt = AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)  # fused, no dynamo
    return task, model, opt, torch.Generator().manual_seed(cfg.seed)  # the generator: demonstrations + noise (CPU)


def _sft_step(cfg: SFTConfig, model, opt, task: Task, gen: torch.Generator, step: int, device, t0: float) -> dict:
    """One optimizer step on fresh noisy demonstrations; returns the step's metric row."""
    prompts, responses, mask, _ = noisy_demonstrations(task, cfg.batch_size, cfg.noise_rate, gen)
    prompts, responses, mask = prompts.to(device), responses.to(device), mask.to(device)
    for group in opt.param_groups:
        group["lr"] = _lr_at(step, cfg)
    with autocast(device):
        loss = sft_loss(model, prompts, responses, mask)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return {"step": step + 1, "loss": loss.item(), "lr": _lr_at(step, cfg), "wall_time": time.time() - t0}


def save_reference(path: str | os.PathLike, model: torch.nn.Module, task: Task, cfg: SFTConfig, final: dict) -> None:
    m = unwrap(model)
    payload = {
        "kind": "rlkl-sft-reference",
        "model_config": m.cfg.to_dict(),
        "task": task.to_dict(),
        "sft_config": asdict(cfg),
        "eval": final,
        "state_dict": {k: v.detach().cpu() for k, v in m.state_dict().items()},
    }
    from rlkl._io import atomic_torch_save

    atomic_torch_save(payload, path)


def load_reference(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[GPT, Task, dict]:
    """Load a checkpoint written by :func:`train_sft`: ``(model, task, payload)``."""
    from rlkl._io import load_torch_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no reference checkpoint at {path}; create it with "
                                f"`rlkl sft --out {path.parent}` (see `rlkl sft --help`)")
    payload = load_torch_file(path, "reference checkpoint")
    if not isinstance(payload, dict) or payload.get("kind") != "rlkl-sft-reference":
        raise ValueError(f"{path} is not an rlkl SFT reference checkpoint (write one with `rlkl sft`)")
    try:
        model = GPT(GPTConfig(**payload["model_config"]))
        model.load_state_dict(payload["state_dict"])
        task = task_from_dict(payload["task"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path} is a damaged SFT reference checkpoint ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]})") from None
    return model.to(device), task, payload
