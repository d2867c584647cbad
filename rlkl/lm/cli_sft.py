"""`rlkl sft`: train the reference policy π_ref of the small LM on noisy demonstrations.

    rlkl sft                                   # cpu_tiny preset, 2-digit addition, noise 0.5
    rlkl sft --task sort --noise_rate 0.4 --steps 1500 --out runs/sft/my-ref
    rlkl sft --resume runs/sft/my-ref                # continue after Ctrl-C or a kill

Any SFTConfig field can be given as ``--field value`` (or ``--field-name value``); a preset fills the rest.
The reference goes to ``OUT/reference.pt`` (default ``runs/sft/TASK-dDIFFICULTY-PRESET-sSEED``; the seed-0 one is
where ``rlkl train`` with the same task and preset looks for it). An existing reference is never overwritten
without ``--force``. Ctrl-C (or a kill) keeps ``OUT/checkpoint.pt``; ``rlkl sft --resume OUT`` continues it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from typing import Any

from rlkl.lm.sft import SFT_PRESETS, SFTConfig, sft_config_from_preset, train_sft

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def _parse_optional_float(text: str) -> float | None:
    return None if text.strip().lower() in ("none", "null", "default") else float(text)


_PARSERS = {"int": int, "float": float, "str": str, "bool": _parse_bool, "float | None": _parse_optional_float}


@functools.lru_cache(maxsize=None)
def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal right after each field in the source)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _field_doc(cls: type, name: str) -> str:
    return _field_docs(cls).get(name, "")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One ``--field`` option per dataclass field (default None = "not given"), typed from the annotation."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind not in _PARSERS:
            raise TypeError(f"no CLI parser for field {cls.__name__}.{f.name} of type {kind}")
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        default = f.default if f.default is not dataclasses.MISSING else None
        group.add_argument(*flags, dest=f.name, type=_PARSERS[kind], default=None, metavar=kind.split()[0].upper(),
                           help=f"{_field_doc(cls, f.name)} (default: preset, else {default!r})")


def config_overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The dataclass fields the user gave on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.init and getattr(args, f.name, None) is not None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__
    parser.add_argument("--preset", default="cpu_tiny", choices=sorted(SFT_PRESETS),
                        help="model size and training length (default: cpu_tiny)")
    parser.add_argument("--out", default=None,
                        help="output directory (default: runs/sft/TASK-dDIFFICULTY-PRESET-sSEED)")
    parser.add_argument("--resume", default=None, metavar="OUT",
                        help="continue the interrupted SFT run in OUT from its checkpoint (only --num_threads may "
                             "change)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite an existing OUT/reference.pt (runs trained against the old file then "
                             "refuse to resume)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also log every metric to OUT/tensorboard (pip install 'rlkl[tensorboard]')")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_arguments(parser, SFTConfig, "SFT config fields")


def _config(args: argparse.Namespace) -> tuple[SFTConfig, str]:
    """The SFT config and the output directory the command line asks for."""
    import json
    import os

    from rlkl.lm.train import PRESET_DIFFICULTY, default_ref_path

    overrides = config_overrides(args, SFTConfig)
    if args.resume:
        path = os.path.join(args.resume, "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{args.resume} is not an SFT run directory (no config.json)")
        extra = sorted(set(overrides) - {"num_threads"})
        if extra or args.force:
            raise ValueError(f"--resume continues the saved config; cannot change {extra or ['--force']} "
                             f"(only num_threads)")
        saved = json.loads(open(path).read())
        known = {f.name for f in dataclasses.fields(SFTConfig)}
        if not isinstance(saved, dict) or set(saved) - known:
            raise ValueError(f"{path} is not an SFTConfig (unknown fields "
                             f"{sorted(set(saved) - known) if isinstance(saved, dict) else saved!r})")
        return SFTConfig(**{**saved, **overrides}), args.resume
    task = overrides.get("task", "addition")
    if "difficulty" not in overrides and task in PRESET_DIFFICULTY.get(args.preset, {}):
        overrides["difficulty"] = PRESET_DIFFICULTY[args.preset][task]
    cfg = sft_config_from_preset(args.preset, **overrides)
    return cfg, args.out or os.path.dirname(default_ref_path(cfg.task, cfg.difficulty, args.preset, cfg.seed))


def main(args: argparse.Namespace) -> int:
    out = args.resume or args.out or "the output directory"
    try:
        cfg, out = _config(args)
        t0 = time.time()
        _, final = train_sft(cfg, out, progress=not args.quiet, resume=bool(args.resume), force=args.force,
                             tensorboard=args.tensorboard, graceful=True)
    except (ValueError, FileNotFoundError) as exc:
        print(f"rlkl sft: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlkl sft: interrupted; the last checkpoint is kept: continue with rlkl sft --resume {out}",
              file=sys.stderr)
        return 130
    if not final:  # stopped by Ctrl-C after a checkpoint
        print(f"rlkl sft: interrupted; continue with: rlkl sft --resume {out}", file=sys.stderr)
        return 130
    print(f"reference policy: {cfg.task} difficulty {cfg.difficulty}, noise {cfg.noise_rate}: "
          f"pass@1 {final['pass@1']:.3f}, pass@{cfg.eval_samples} {final[f'pass@{cfg.eval_samples}']:.3f}, "
          f"greedy {final['greedy_acc']:.3f}  ({time.time() - t0:.0f} s)")
    print(f"saved {out}/reference.pt; next: rlkl train --task {cfg.task} --difficulty {cfg.difficulty} "
          f"--ref {out}/reference.pt --method grpo")
    return 0
