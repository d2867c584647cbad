"""`rlkl plot RUN_DIR...`: training curves of any runs of `rlkl train`, one line per run.

A run dir holds ``config.json`` (the ``TrainConfig``: method, β, seed, ...), ``method.json`` (the resolved Method,
with the β actually used) and ``metrics.jsonl`` (one JSON row per step; evaluation rows carry ``eval_*`` keys;
definitions in docs/metrics.md). The default panels are the training reward, eval pass@1 and pass@k (largest k
logged), the exact sequence KL(π‖π_ref) and the exact token entropy on the eval prompts, and the total clip fraction
(low + high + dual). ``--keys`` plots any logged keys instead. The legend names each run by its registry method and
β (with K and "unclipped" where the run set them; and its seed, and the run dir when those are not unique).

    rlkl plot runs/train/grpo runs/train/frpo                 # -> runs/plot/curves.png and .pdf
    rlkl plot runs/exp/*/runs/* --out runs/plot/all --smooth 10
    rlkl plot runs/train/grpo --keys reward_mean eval_kl_fwd_seq diag/ratio/max
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

#: clip-fraction keys of metrics.jsonl (Method diagnostics, averaged over the K updates of a step)
CLIP_KEYS = ("diag/clip_fraction/low", "diag/clip_fraction/high", "diag/clip_fraction/dual")
#: default panels: (key, y-axis label); "pass@max" is the largest k logged, "clip_fraction" the sum of CLIP_KEYS
DEFAULT_PANELS = (("reward_mean", "training reward"),
                  ("eval_pass@1", "eval pass@1"),
                  ("pass@max", "eval pass@k"),
                  ("eval_kl_rev_seq", r"exact KL(π‖$\pi_{ref}$) per sequence (nats)"),
                  ("eval_entropy", "exact entropy (nats/token)"),
                  ("clip_fraction", "clip fraction (low + high + dual)"))


@dataclass(frozen=True)
class Run:
    """One run dir as read back: its name, the method and β it trained with, its seed and metric rows; ``settings``
    names the TrainConfig choices that change the method's loss (K updates per batch, the clip removed)."""

    path: Path
    method: str
    beta: float | None
    seed: int | None
    rows: tuple[dict, ...]
    settings: tuple[str, ...] = ()

    def label(self, with_seed: bool, with_dir: bool) -> str:
        beta = "β=?" if self.beta is None else f"β={self.beta:g}"
        name = f"{self.method} ({', '.join(self.settings)})" if self.settings else self.method
        out = f"{name}, {beta}"
        if with_seed and self.seed is not None:
            out += f", seed {self.seed}"
        if with_dir:
            out += f" ({self.path.name})"
        return out


def load_run(run_dir: str | Path) -> Run:
    """Read a run dir written by `rlkl train` (``ValueError`` naming what is missing otherwise)."""
    path = Path(run_dir)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ValueError(f"{path} is not a run dir of `rlkl train` (no metrics.jsonl); pass the --out of a run")
    rows = []
    for i, line in enumerate(metrics.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{metrics}:{i} is not a JSON row ({exc.msg})") from None
    if not rows:
        raise ValueError(f"{metrics} has no rows yet")
    config = _read_json(path / "config.json")
    method = _read_json(path / "method.json")
    name = config.get("method") or method.get("name") or path.name
    beta = config.get("beta")
    if beta is None:  # config.json keeps None when the registry default was used: the β is in method.json
        beta = method.get("beta")
    return Run(path, str(name), None if beta is None else float(beta), config.get("seed"), tuple(rows),
               _settings(config))


def _settings(config: dict) -> tuple[str, ...]:
    """The loss-changing TrainConfig choices of a run, as legend text: ``K=4`` (updates per batch), ``unclipped``."""
    out = []
    if int(config.get("updates_per_batch") or 1) > 1:
        out.append(f"K={int(config['updates_per_batch'])}")
    if config.get("unclipped"):
        out.append("unclipped")
    return tuple(out)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg})") from None
    return data if isinstance(data, dict) else {}


def series(run: Run, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one key over a run's rows; ``pass@max`` and ``clip_fraction`` as in DEFAULT_PANELS."""
    if key == "pass@max":
        ks = [int(k.split("@")[1]) for k in run.rows[0] if k.startswith("eval_pass@")] or [1]
        key = f"eval_pass@{max(ks)}"
    steps, values = [], []
    for r in run.rows:
        if key == "clip_fraction":
            if not any(k in r for k in CLIP_KEYS):
                continue
            v = sum(float(r.get(k, 0.0)) for k in CLIP_KEYS)
        elif key in r and r[key] is not None:
            v = float(r[key])
        else:
            continue
        steps.append(int(r["step"]))
        values.append(v)
    return steps, values


def labels(runs: list[Run]) -> list[str]:
    """Legend entry of each run: "method, β=…", plus the seed when runs share method and β, plus the run dir
    name when that is still not unique."""
    seeds_differ = len({(r.method, r.settings, r.beta) for r in runs}) < len(runs)
    out = [r.label(with_seed=seeds_differ, with_dir=False) for r in runs]
    if len(set(out)) < len(out):
        out = [r.label(with_seed=seeds_differ, with_dir=True) for r in runs]
    return out


def _smooth(y: list[float], k: int) -> list[float]:
    return [sum(y[max(0, i - k + 1): i + 1]) / len(y[max(0, i - k + 1): i + 1]) for i in range(len(y))]


def _pass_label(runs: list[Run]) -> str:
    ks = sorted({int(k.split("@")[1]) for r in runs for k in r.rows[0] if k.startswith("eval_pass@")})
    return f"eval pass@{ks[-1]}" if ks else "eval pass@k"


def plot_runs(runs: list[Run], out_stem: str | Path, keys: list[str] | None = None, smooth: int = 1) -> list[Path]:
    """Draw one panel per key (default: DEFAULT_PANELS), one line per run; returns the PNG and PDF paths.

    Args:
      runs: loaded runs (``load_run``).
      out_stem: output path without suffix.
      keys: metric keys of metrics.jsonl to plot instead of the default panels.
      smooth: moving-average window over training steps (1 = raw); evaluation keys are never smoothed.
    """
    from rlkl.plotting import method_styles, new_figure, panel_label, save

    if not runs:
        raise ValueError("no run to plot")
    if smooth < 1:
        raise ValueError(f"--smooth must be >= 1, got {smooth}")
    panels = [(k, k) for k in keys] if keys else [(k, _pass_label(runs) if k == "pass@max" else lbl)
                                                    for k, lbl in DEFAULT_PANELS]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = new_figure(ncols=ncols, nrows=nrows, width=6.8 if ncols > 1 else 3.3, height=2.1 * nrows + 0.5 +
                           0.2 * math.ceil(len(runs) / 2), squeeze=False)
    names = labels(runs)
    keyed = [f"{r.method}|{i}" for i, r in enumerate(runs)]  # family colour; each run its own line style
    styles = method_styles(keyed)
    for idx, ((key, label), ax) in enumerate(zip(panels, axes.flat)):
        drawn = 0
        for run, name, lab in zip(runs, keyed, names):
            x, y = series(run, key)
            if not x:
                continue
            if smooth > 1 and not key.startswith("eval_") and key != "pass@max":
                y = _smooth(y, smooth)
            st = styles[name]
            ax.plot(x, y, color=st["color"], ls=st["linestyle"], marker=st["marker"] if len(x) <= 12 else None,
                    label=lab)
            drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, f"{key}\nnot logged", transform=ax.transAxes, ha="center", va="center")
        ax.set(xlabel="RL step", ylabel=label + (f" (moving avg. {smooth})" if smooth > 1 and key == "reward_mean"
                                                  else ""))
        panel_label(ax, "abcdefghijklmnopqrstuvwxyz"[idx])
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labs = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labs:
                handles.append(h)
                labs.append(lab)
    fig.legend(handles, labs, loc="outside lower center", ncol=min(2, len(labs)))
    return save(fig, out_stem)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dirs written by `rlkl train --out`")
    parser.add_argument("--out", default="runs/plot/curves", metavar="STEM",
                        help="output path without suffix; writes STEM.png and STEM.pdf (default runs/plot/curves)")
    parser.add_argument("--keys", nargs="+", metavar="KEY", help="plot these metrics.jsonl keys instead")
    parser.add_argument("--smooth", type=int, default=1, metavar="N",
                        help="moving average over N training steps (default 1: raw)")


def main(args: argparse.Namespace) -> int:
    runs = [load_run(d) for d in args.run_dirs]
    paths = plot_runs(runs, args.out, keys=args.keys, smooth=args.smooth)
    for r in runs:
        print(f"{r.path}: {r.label(with_seed=True, with_dir=False)}, {len(r.rows)} rows")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


__all__ = ["Run", "load_run", "series", "labels", "plot_runs", "DEFAULT_PANELS", "CLIP_KEYS", "add_arguments", "main"]
