"""`rlkl train`: RL-train the small LM with any registered method.

    rlkl sft                                                     # once: the reference policy
    rlkl train --task addition --method frpo --preset cpu_tiny --beta 0.01 --seed 0 --out runs/frpo-s0
    rlkl train --resume runs/frpo-s0                             # continue after Ctrl-C
    rlkl train --method rpg_reinforce_urkl --updates_per_batch 4 --ref_refresh_every 10

Any TrainConfig field can be given as ``--field value`` (or ``--field-name value``); the preset fills the
rest. Outputs in the run directory: config.json, method.json, metrics.jsonl (docs/metrics.md),
checkpoint.pt. Ctrl-C finishes the current step, writes a checkpoint and stops.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from rlkl.lm.cli_sft import add_config_arguments, config_overrides
from rlkl.lm.train import TRAIN_PRESETS, TrainConfig, config_from_preset, final_summary, resume, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__
    parser.add_argument("--preset", default="cpu_tiny", choices=sorted(TRAIN_PRESETS),
                        help="batch sizes, steps and learning rate (default: cpu_tiny)")
    parser.add_argument("--out", default=None, help="run directory (default: runs/train/TASK-dDIFFICULTY-METHOD-sSEED)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its checkpoint (only --steps, --num_threads, --compile "
                             "may change)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_arguments(parser, TrainConfig, "train config fields")


def main(args: argparse.Namespace) -> int:
    overrides = config_overrides(args, TrainConfig)
    t0 = time.time()
    try:
        if args.resume:
            allowed = {"steps", "num_threads", "compile"}
            extra = sorted(set(overrides) - allowed)
            if extra:
                raise ValueError(f"--resume continues the saved config; cannot change {extra} "
                                 f"(only {sorted(allowed)})")
            rows = resume(args.resume, progress=not args.quiet, **overrides)
            out = args.resume
        else:
            cfg = config_from_preset(args.preset, **overrides)
            out = args.out or os.path.join("runs", "train", f"{cfg.task}-d{cfg.difficulty}-{cfg.method}-s{cfg.seed}")
            rows = train(cfg, out, progress=not args.quiet)
    except (ValueError, FileNotFoundError) as exc:
        print(f"rlkl train: {exc}", file=sys.stderr)
        return 2
    s = final_summary(rows)
    steps = rows[-1]["step"] if rows else 0
    target = json.loads(open(os.path.join(out, "config.json")).read())["steps"]
    if "eval_pass@1" in s:
        print(f"eval pass@1: reference {s['ref_eval_pass@1']:.3f} -> trained {s['eval_pass@1']:.3f} "
              f"(greedy {s.get('eval_greedy_acc', float('nan')):.3f}); exact KL(pi||pi_ref) per sequence "
              f"{s.get('eval_kl_rev_seq', float('nan')):.3f}; step {rows[-1]['step']}, "
              f"{time.time() - t0:.0f} s this invocation")
    print(f"run directory: {out}")
    if steps < target:  # stopped by Ctrl-C (a checkpoint was written)
        print(f"interrupted at step {steps} of {target}; continue with: rlkl train --resume {out}")
        return 130
    return 0
