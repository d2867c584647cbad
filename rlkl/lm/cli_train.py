"""`rlkl train`: RL-train the small LM with any registered method.

    rlkl sft                                                     # once: the reference policy
    rlkl train --task addition --method frpo --preset cpu_tiny --beta 0.01 --seed 0 --out runs/frpo-s0
    rlkl train --resume runs/frpo-s0                             # continue after Ctrl-C
    rlkl train --method rpg_reinforce_urkl --updates_per_batch 4 --ref_refresh_every 10
    rlkl train --method-file method.json                         # any Method (Method.to_dict(), e.g. a run's)
    rlkl train --verl ppo.yaml algorithm.adv_estimator=grpo      # the Method a verl config translates to
    rlkl train --trl grpo.yaml                                   # ... or a TRL GRPOConfig (YAML/JSON)

Any TrainConfig field can be given as ``--field value`` (or ``--field-name value``); the preset fills the
rest. Outputs in the run directory: config.json, method.json, metrics.jsonl (docs/metrics.md),
run.json (reference sha256, thread count), checkpoint.pt (after the step-0 evaluation, every checkpoint_every
steps, at the end). Ctrl-C finishes the current step, writes a checkpoint and stops; after a kill, --resume
continues from the last checkpoint and reproduces the uninterrupted run's metrics. The progress bar's kl_seq is
the summary's: exact KL(π‖π_0) per sequence on the eval prompts, at the last evaluation.
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
                             "may change; the reference file must be the one the run started from)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also log every metric to RUN_DIR/tensorboard (pip install 'rlkl[tensorboard]')")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    src = parser.add_argument_group("train a Method that is not a registered name (instead of --method)")
    src.add_argument("--method-file", default=None, metavar="METHOD.json",
                     help="a Method as JSON (Method.to_dict(): `rlkl methods --json` records, a run's method.json)")
    src.add_argument("--verl", nargs="+", default=None, metavar=("CONFIG.yaml", "KEY=VALUE"),
                     help="the Method of a verl config and/or Hydra-style overrides (as `rlkl audit --verl`)")
    src.add_argument("--verl-overrides", default=None, metavar='"KEY=VALUE ..."', help="verl overrides as one string")
    src.add_argument("--trl", default=None, metavar="CONFIG.yaml|JSON", help="the Method of TRL GRPOConfig arguments")
    src.add_argument("--trl-version", default=None, help="TRL version whose defaults apply (default 1.16)")
    add_config_arguments(parser, TrainConfig, "train config fields")


def _method_source(args: argparse.Namespace, overrides: dict) -> None:
    """Put the Method of --method-file / --verl / --trl into ``overrides`` (method_json, and G from the config)."""
    given = [o for o in ("method_file", "verl", "verl_overrides", "trl") if getattr(args, o, None)]
    if not given:
        return
    if "method" in overrides or (len(given) > 1 and given != ["verl", "verl_overrides"]):
        raise ValueError("give one of --method, --method-file, --verl/--verl-overrides, --trl")
    if args.method_file:
        from rlkl.methods import Method

        with open(args.method_file, encoding="utf-8") as fh:
            try:
                method = Method.from_dict(json.load(fh))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{args.method_file}:{exc.lineno}:{exc.colno}: malformed JSON: {exc.msg}") from None
    else:
        from rlkl.integrations.explain import translation_from_args

        t = translation_from_args(args)
        method = t.require_method("rlkl train")
        if t.group_size and "group_size" not in overrides:
            overrides["group_size"] = t.group_size  # G is part of the objective
        _sampler_overrides(t.sampler, overrides)
    overrides["method_json"] = json.dumps(method.to_dict())


def _sampler_overrides(sampler, overrides: dict) -> None:
    """The config's inference-engine truncation (top-k / top-p / min-p, reported log-probs) as the trainer's
    sampler fields, unless given on the command line. The translated sampler is relative to the τ-tempered π the
    framework's trainer differentiates, so its temperature is 1 and carries over as the trainer's default."""
    fields = {"top_k": sampler.top_k or 0, "top_p": sampler.top_p, "min_p": sampler.min_p,
              "logprobs": getattr(sampler.logprobs, "value", sampler.logprobs)}
    for key, value in fields.items():
        if key not in overrides:
            overrides[key] = value


def _run(args: argparse.Namespace, overrides: dict) -> tuple[list[dict], str]:
    if args.resume:
        if any(getattr(args, o, None) for o in ("method_file", "verl", "verl_overrides", "trl")):
            raise ValueError("--resume continues the saved Method; --method-file/--verl/--trl do not apply")
        allowed = {"steps", "num_threads", "compile"}
        extra = sorted(set(overrides) - allowed)
        if extra:
            raise ValueError(f"--resume continues the saved config; cannot change {extra} (only {sorted(allowed)})")
        return (resume(args.resume, progress=not args.quiet, tensorboard=args.tensorboard, graceful=True, **overrides),
                args.resume)
    _method_source(args, overrides)
    cfg = config_from_preset(args.preset, **overrides)
    out = args.out or os.path.join("runs", "train", f"{cfg.task}-d{cfg.difficulty}-{cfg.method}-s{cfg.seed}")
    return train(cfg, out, progress=not args.quiet, tensorboard=args.tensorboard, graceful=True), out


def main(args: argparse.Namespace) -> int:
    overrides = config_overrides(args, TrainConfig)
    t0 = time.time()
    out = args.resume or args.out or "the run directory"
    try:
        rows, out = _run(args, overrides)
    except (ValueError, OSError) as exc:
        print(f"rlkl train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlkl train: interrupted; the last checkpoint is kept: continue with rlkl train --resume {out}",
              file=sys.stderr)
        return 130
    s = final_summary(rows)
    steps = rows[-1]["step"] if rows else 0
    cfg = json.loads(open(os.path.join(out, "config.json")).read())
    if "eval_pass@1" in s:
        print(f"eval pass@1: reference {s['ref_eval_pass@1']:.3f} -> trained {s['eval_pass@1']:.3f} "
              f"(greedy {s.get('eval_greedy_acc', float('nan')):.3f}); kl_seq = exact KL(pi||pi_0) per sequence "
              f"on eval prompts {s.get('eval_kl_rev_seq', float('nan')):.3f}; {cfg['method']} beta={cfg['beta']:g}; "
              f"step {steps}, {time.time() - t0:.0f} s this invocation")
    print(f"run directory: {out}")
    if steps < cfg["steps"]:  # stopped by Ctrl-C (a checkpoint was written)
        print(f"interrupted at step {steps} of {cfg['steps']}; continue with: rlkl train --resume {out}",
              file=sys.stderr)
        return 130
    return 0
