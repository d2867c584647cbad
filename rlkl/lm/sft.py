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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rlkl.lm.metrics import evaluate
from rlkl.lm.model import GPT, GPTConfig, autocast, resolve_device, response_logits, unwrap
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
    seed: int = 0
    """Seed of the initialisation, the demonstrations and the noise."""
    device: str = "auto"
    """``auto`` (cuda if available, else cpu), ``cpu`` or ``cuda``."""
    num_threads: int = 0
    """torch intra-op CPU threads while training (0 = leave torch's default; restored afterwards)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.noise_rate <= 1.0:
            raise ValueError(f"noise_rate must be in [0, 1], got {self.noise_rate}")
        for name in ("steps", "batch_size", "eval_prompts", "eval_samples", "eval_every", "difficulty"):
            if getattr(self, name) < 1:
                raise ValueError(f"SFTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_threads < 0:
            raise ValueError(f"SFTConfig.num_threads must be >= 0, got {self.num_threads}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        make_task(self.task, self.difficulty, self.split_seed)  # raises on an unknown task
        GPTConfig(n_layer=self.n_layer, n_head=self.n_head, d_model=self.d_model)  # raises on bad shapes


SFT_PRESETS: dict[str, dict] = {
    # minutes on 2 CPU cores; 2-digit addition reaches ~40-55% pass@1 with noise 0.5
    # One thread: at this size intra-op parallelism costs more than it saves (and collapses when the
    # cores are shared with other processes).
    "cpu_tiny": dict(n_layer=2, n_head=4, d_model=64, steps=1000, batch_size=128, lr=3e-3, num_threads=1),
    "gpu_small": dict(n_layer=4, n_head=4, d_model=128, steps=5000, batch_size=512, lr=1e-3, difficulty=3),
    "gpu_medium": dict(n_layer=6, n_head=8, d_model=256, steps=10000, batch_size=512, lr=6e-4, difficulty=5),
}


def sft_config_from_preset(preset: str, **overrides) -> SFTConfig:
    if preset not in SFT_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(SFT_PRESETS)}")
    return SFTConfig(**{**SFT_PRESETS[preset], **overrides})


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
    task's budget of R - 1 symbols + EOS), so exactly the corrupted demonstrations are wrong.
    """
    prompts = task.sample_prompts(n, generator, split="train")  # [n, P]
    clean, clean_mask = task.target_responses(prompts)  # [n, R]
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


def train_sft(cfg: SFTConfig, out: str | os.PathLike | None = None, progress: bool = True) -> tuple[GPT, dict]:
    """Train the reference policy; save it under ``out`` when given. Returns ``(model, final_eval)``."""
    threads = torch.get_num_threads()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train_sft(cfg, out, progress)
    finally:
        torch.set_num_threads(threads)


def _train_sft(cfg: SFTConfig, out: str | os.PathLike | None, progress: bool) -> tuple[GPT, dict]:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    task = make_task(cfg.task, cfg.difficulty, cfg.split_seed)
    mcfg = GPTConfig(vocab_size=task.vocab_size, block_size=task.prompt_len + task.max_response_len,
                     n_layer=cfg.n_layer, n_head=cfg.n_head, d_model=cfg.d_model)
    model = GPT(mcfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)  # demonstrations + noise (CPU)
    eval_prompts = task.eval_prompts(cfg.eval_prompts).to(device)
    ks = sorted({1, min(4, cfg.eval_samples), cfg.eval_samples})

    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        log = open(out_dir / "metrics.jsonl", "w")
    t0 = time.time()
    bar = tqdm(range(cfg.steps), desc=f"sft {cfg.task}-{cfg.difficulty}", disable=not progress, dynamic_ncols=True)
    final: dict = {}
    for step in bar:
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
        row = {"step": step + 1, "loss": loss.item(), "lr": _lr_at(step, cfg), "wall_time": time.time() - t0}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            row.update(evaluate(model, task, eval_prompts, cfg.eval_samples, ks, seed=cfg.seed + 7919))
            final = row
            bar.set_postfix(loss=f"{loss.item():.3f}", pass1=f"{row['pass@1']:.3f}")
        if out_dir is not None:
            log.write(json.dumps(row) + "\n")
            log.flush()
    bar.close()
    if out_dir is not None:
        log.close()
        save_reference(out_dir / "reference.pt", model, task, cfg, final)
    return model, final


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
    tmp = str(path) + ".tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_reference(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[GPT, Task, dict]:
    """Load a checkpoint written by :func:`train_sft`: ``(model, task, payload)``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no reference checkpoint at {path}; create it with "
                                f"`rlkl sft --out {path.parent}` (see `rlkl sft --help`)")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if payload.get("kind") != "rlkl-sft-reference":
        raise ValueError(f"{path} is not an rlkl SFT reference checkpoint")
    model = GPT(GPTConfig(**payload["model_config"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(device), task_from_dict(payload["task"]), payload
