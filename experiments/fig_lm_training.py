"""Figure 9 data: LM training curves from the LM experiment (``experiments/lm_kl_comparison.py``).

Full mode runs that experiment (cpu_tiny, 2-digit addition, noisy-SFT reference; every variant × 3 seeds,
150 RL steps; 15–30 min on 2 cores) into ``<out_dir>/lm_run`` — or, when the environment variable
``RLKL_LM_RUN`` names a finished run dir of it (with ``experiment.json`` and ``runs/``), reads that instead.
Quick mode trains a tiny version with the same library calls: a short SFT reference (``rlkl.lm.sft``), then
three methods × two seeds × a few RL steps (``rlkl.lm.train``) — the curves are then only a smoke test of the
pipeline, not evidence.
The curves (training reward; eval pass@1 and pass@8; exact entropy; exact KL(π‖π_ref) per sequence and per
token) are collected per variant and seed from each run's ``metrics.jsonl`` into one JSON, with what each variant
ran (registry method, the β actually used, K optimizer steps per batch, clipping) from its ``config.json`` and
``method.json``, and one line describing the shared configuration (task, G, prompts per step, steps, lr).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import write_config, write_json

TRAIN_KEYS = ("reward_mean",)
EVAL_KEYS = ("eval_pass@1", "eval_pass@8", "eval_entropy", "eval_kl_rev_seq", "eval_kl_rev_tok", "eval_kl_fwd_seq")
QUICK_METHODS = ("no_kl", "grpo", "frpo")


def _curves(run_dir: Path) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in rows if "reward_mean" in r]
    evals = [r for r in rows if "eval_pass@1" in r]
    out = {"train_step": [r["step"] for r in train], "eval_step": [r["step"] for r in evals]}
    for k in TRAIN_KEYS:
        out[k] = [r[k] for r in train]
    for k in EVAL_KEYS:
        out[k] = [r.get(k) for r in evals]
    return out


def _run_info(run_dir: Path) -> dict:
    """What a run trained with: registry method, β used (config.json, else the Method's in method.json), K, clip."""
    cfg = json.loads((run_dir / "config.json").read_text())
    method = json.loads((run_dir / "method.json").read_text()) if (run_dir / "method.json").exists() else {}
    beta = cfg.get("beta")
    if beta is None:
        beta = method.get("beta", 0.0)
    keys = ("task", "difficulty", "group_size", "prompts_per_step", "steps", "lr")
    return {"method": cfg["method"], "beta": float(beta), "K": int(cfg.get("updates_per_batch", 1)),
            "unclipped": bool(cfg.get("unclipped", False)), "config": {k: cfg.get(k) for k in keys}}


def config_line(variants: dict) -> str:
    """One line with the configuration every variant shares (and the β of the variants with a KL term)."""
    cfgs = [v["config"] for v in variants.values()]
    c = cfgs[0]
    betas = sorted({v["beta"] for v in variants.values() if v["beta"] > 0})
    n_seeds = max(len(v["seeds"]) for v in variants.values())
    beta_txt = "β=" + "/".join(f"{b:g}" for b in betas) + " (every method with a KL term)" if betas else "β=0"
    steps = "/".join(str(s) for s in sorted({x["steps"] for x in cfgs}))
    lr = f"{c['lr']:.0e}".replace("e-0", "e-")
    return (f"{c['task']} (difficulty {c['difficulty']}), G={c['group_size']}, {c['prompts_per_step']} prompts/step, "
            f"{steps} RL steps, lr {lr},\n{beta_txt}; {n_seeds} seed{'s' if n_seeds > 1 else ''}")


def _add(variants: dict, name: str, seed: int, run_dir: Path) -> None:
    info = _run_info(run_dir)
    v = variants.setdefault(name, {**info, "seeds": {}})
    v["seeds"][str(seed)] = _curves(run_dir)


def _collect(lm_run: Path) -> dict:
    exp = json.loads((lm_run / "experiment.json").read_text())
    variants: dict = {}
    for job in exp["jobs"]:
        rd = Path(job["out"])
        if not rd.is_absolute() and not rd.exists():
            rd = lm_run / "runs" / rd.name
        if not (rd / "metrics.jsonl").exists():
            continue
        _add(variants, job["variant"], job["seed"], rd)
    return {"source": str(lm_run), "args": exp.get("args", {}), "variants": variants}


def _quick(out_dir: Path, seed: int) -> dict:
    from rlkl.lm.sft import sft_config_from_preset, train_sft
    from rlkl.lm.train import config_from_preset, train

    import shutil

    shutil.rmtree(out_dir / "lm_quick", ignore_errors=True)  # a fresh run every time (same seed → same numbers)
    ref_dir = out_dir / "lm_quick" / "ref"
    train_sft(sft_config_from_preset("cpu_tiny", difficulty=2, steps=60, eval_prompts=16, eval_every=60,
                                     seed=seed), ref_dir, progress=False)
    variants: dict = {}
    for method in QUICK_METHODS:
        for s in (seed, seed + 1):
            cfg = config_from_preset("cpu_tiny", method=method, seed=s, steps=8, ref=str(ref_dir / "reference.pt"),
                                     prompts_per_step=8, eval_every=4, eval_prompts=16, eval_samples=8,
                                     checkpoint_every=8,
                                     beta=0.05 if method != "no_kl" else None)
            rd = out_dir / "lm_quick" / "runs" / f"{method}-s{s}"
            train(cfg, rd, progress=False)
            _add(variants, method, s, rd)
    return {"source": "quick: sft 60 steps, 8 RL steps x 8 prompts x G=8, beta=0.05", "args": {},
            "variants": variants}


def run(out_dir, quick: bool = False, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    env = os.environ.get("RLKL_LM_RUN")
    if quick:
        data = _quick(out_dir, seed)
        mode = "quick tiny run"
    elif env:
        data = _collect(Path(env))
        mode = f"read from RLKL_LM_RUN={env}"
    else:
        from . import lm_kl_comparison as lm

        lm_run = out_dir / "lm_run"
        lm.main(["--out", str(lm_run), "--workers", "2", "--seeds", str(seed), str(seed + 1), str(seed + 2)])
        data = _collect(lm_run)
        mode = "full lm_kl_comparison run"
    data["mode"] = mode
    data["config_line"] = config_line(data["variants"]) if data["variants"] else ""
    write_config(out_dir, "fig_lm_training", quick, seed, mode=mode, source=data["source"],
                 lm_args=data.get("args", {}), quick_methods=list(QUICK_METHODS) if quick else None)
    return write_json(out_dir / "lm_training.json", data)
