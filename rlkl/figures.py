"""`rlkl figures`: regenerate every figure — run each experiment (data + config into the run dir), then its
figure script (PNG + PDF).

Layout of the run dir ``--out`` (default ``runs/figures``)::

    <out>/data/<figure>/          the experiment's json/csv and config.json (every number in the figure)
    <out>/<figure>.png, .pdf      the figure
    <out>/manifest.json           mode, seed, per-figure status, files and timings

``--quick`` is the minutes-long version CI runs (smaller grids, fewer Monte Carlo samples, a tiny LM run);
the default is the full version behind the README gallery. The same ``--seed`` reproduces the same numbers.
Experiments live in ``experiments/fig_*.py`` (``run(out_dir, quick, seed) -> data path``) and figure scripts in
``paper_figures/fig_*.py`` (``plot(data_path, out_stem)``), folders at the repository root that are installed as
``rlkl.experiments`` and ``rlkl.paper_figures`` (so the command works from a wheel too).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FigureSpec:
    name: str
    title: str
    needs: tuple[str, ...] = ()  # modules of other parts of rlkl the experiment imports


#: every figure, in the order the gallery shows them
FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("fig_grpo_utility", "GRPO's implicit utility 2·arcsin√p and the exact finite-group U_G"),
    FigureSpec("fig_kl_estimators", "k1/k2/k3 per sample; Schulman's Gaussian table, exact and Monte Carlo",
               ("rlkl.derivations.kl_estimators",)),
    FigureSpec("fig_audit_heatmap", "audit: methods × objectives, relative error of the exact expected gradient",
               ("rlkl.toy.audit",)),
    FigureSpec("fig_future_kl", "future KL: local KL losses vs the sequence-level reverse KL as T grows",
               ("rlkl.toy.expected", "rlkl.toy.objectives")),
    FigureSpec("fig_mc_convergence", "Monte Carlo error against the number of groups, with exact variances",
               ("rlkl.toy.montecarlo",)),
    FigureSpec("fig_rpg_clip", "RPG-Style Clip: loss shape, and bias/variance against off-policy distance",
               ("rlkl.toy.expected",)),
    FigureSpec("fig_length_bias", "length bias: response-length drift under each aggregation mode",
               ("rlkl.toy.expected", "rlkl.toy.objectives")),
    FigureSpec("fig_finite_groups", "finite groups: GRPO's exact expected gradient vs G → ∞, leave-in shrink",
               ("rlkl.toy.expected", "rlkl.toy.objectives")),
    FigureSpec("fig_lm_training", "LM training curves: reward, pass@k, entropy, KL drift per method",
               ("rlkl.lm",)),
    FigureSpec("fig_top_p_bias", "rollout corrections behind a sampler: exact bias (full / deployed) and variance "
               "against top-p and the engine's precision", ("rlkl.toy.mismatch",)),
    FigureSpec("fig_lm_frontier", "LM frontiers: reward, entropy, odds vs exact KL(π‖π_ref) over β, and the optimum",
               ("rlkl.lm",)),
)
FIGURE_NAMES: tuple[str, ...] = tuple(f.name for f in FIGURES)


def _resolve(only: list[str] | None) -> list[FigureSpec]:
    if not only:
        return list(FIGURES)
    picked = []
    for name in only:
        key = name if name.startswith("fig_") else f"fig_{name}"
        matches = [f for f in FIGURES if f.name == key]
        if not matches:
            raise ValueError(f"unknown figure {name!r}; choose from: {', '.join(FIGURE_NAMES)}")
        picked.extend(matches)
    return picked


def run_figure(spec: FigureSpec, out: Path, quick: bool, seed: int, plot_only: bool = False) -> dict:
    """Run one experiment and its figure script; returns the manifest record."""
    rec: dict = {"name": spec.name, "title": spec.title, "plot_only": bool(plot_only)}
    data_dir = out / "data" / spec.name
    t0 = time.perf_counter()
    try:
        if plot_only:
            data_path = Path(json.loads((data_dir / "result_path.json").read_text())["data"])
        else:
            experiment = importlib.import_module(f"rlkl.experiments.{spec.name}")
            data_dir.mkdir(parents=True, exist_ok=True)
            data_path = Path(experiment.run(data_dir, quick=quick, seed=seed))
            (data_dir / "result_path.json").write_text(json.dumps({"data": str(data_path)}) + "\n")
        t1 = time.perf_counter()
        plotter = importlib.import_module(f"rlkl.paper_figures.{spec.name}")
        stem = out / spec.name
        plotter.plot(data_path, stem)
        t2 = time.perf_counter()
    except ModuleNotFoundError as exc:  # a part of rlkl that is not built yet
        missing = exc.name or str(exc)
        rec.update(status="pending", reason=f"module {missing} is not available", seconds=time.perf_counter() - t0)
        return rec
    except Exception as exc:  # noqa: BLE001 — reported per figure, the others still run
        rec.update(status="error", reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(),
                   seconds=time.perf_counter() - t0)
        return rec
    files = [p for p in (stem.with_suffix(".png"), stem.with_suffix(".pdf")) if p.exists()]
    rec.update(status="ok", data=str(data_path.relative_to(out)) if data_path.is_relative_to(out) else str(data_path),
               files=[str(p.relative_to(out)) for p in files], experiment_seconds=round(t1 - t0, 3),
               plot_seconds=round(t2 - t1, 3), seconds=round(t2 - t0, 3))
    return rec


def _import_torch_uninterrupted() -> None:
    """Import torch with SIGINT blocked: a KeyboardInterrupt raised while torch's C++ import code runs Python
    (pybind11) aborts the process (SIGABRT) instead of unwinding. A Ctrl-C pressed meanwhile is delivered when
    the mask is restored, in plain Python code."""
    import signal

    if "torch" in sys.modules or not hasattr(signal, "pthread_sigmask"):
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        import torch  # noqa: F401
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _CtrlC:
    """Remembers a Ctrl-C even when a library swallows the KeyboardInterrupt (e.g. one raised inside an import)."""

    def __init__(self) -> None:
        self.seen = False
        self._old = None

    def _handler(self, signum, frame) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def __enter__(self) -> "_CtrlC":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
            _import_torch_uninterrupted()
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _run_all(specs: list[FigureSpec], out: Path, args: argparse.Namespace, ctrl_c: _CtrlC | None = None) -> list[dict]:
    """Run each figure under one progress bar (closed on Ctrl-C too, so no lock or semaphore is left behind)."""
    from tqdm import tqdm

    records = []
    mode = "quick" if args.quick else "full"
    with tqdm(specs, desc=f"rlkl figures ({mode})", unit="fig", file=sys.stderr, dynamic_ncols=True) as bar:
        for spec in bar:
            bar.set_postfix_str(spec.name)
            if args.plot_only and not (out / "data" / spec.name / "result_path.json").exists():
                rec = {"name": spec.name, "title": spec.title, "plot_only": True, "status": "missing",
                       "reason": f"no data in {out / 'data' / spec.name} (run it without --plot-only)", "seconds": 0.0}
            else:
                rec = run_figure(spec, out, quick=args.quick, seed=args.seed, plot_only=args.plot_only)
            if ctrl_c is not None and ctrl_c.seen:  # the interrupt was caught inside the figure: stop here
                raise KeyboardInterrupt
            records.append(rec)
            if rec["status"] != "ok":
                tqdm.write(f"[rlkl figures] {spec.name}: {rec['status'].upper()} — {rec['reason']}", file=sys.stderr)
                if rec["status"] == "error":
                    tqdm.write(rec["traceback"], file=sys.stderr)
    return records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="minutes-long version (small grids, few samples, tiny LM run); what CI runs")
    parser.add_argument("--out", default="runs/figures", help="run dir for data and figures (default: runs/figures)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help=f"only this figure (repeatable); one of: {', '.join(FIGURE_NAMES)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of every experiment (default 0)")
    parser.add_argument("--plot-only", action="store_true", help="redraw figures from the data already in --out")
    parser.add_argument("--list", action="store_true", help="list the figures and exit")


def main(args: argparse.Namespace) -> int:
    if args.list:
        for f in FIGURES:
            print(f"{f.name:22s} {f.title}")
        return 0
    try:
        specs = _resolve(args.only)
    except ValueError as exc:
        print(f"rlkl figures: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    if args.plot_only:
        missing = [s.name for s in specs if not (out / "data" / s.name / "result_path.json").exists()]
        if len(missing) == len(specs):
            print(f"rlkl figures: error: --plot-only redraws from data in {out / 'data'}, and there is none for "
                  f"{', '.join(missing)}; run `rlkl figures --out {args.out}` without --plot-only first",
                  file=sys.stderr)
            return 2
    out.mkdir(parents=True, exist_ok=True)
    mode = "quick" if args.quick else "full"
    t0 = time.perf_counter()
    try:
        with _CtrlC() as ctrl_c:
            records = _run_all(specs, out, args, ctrl_c)
    except KeyboardInterrupt:
        print(f"rlkl figures: interrupted; figures already written are in {out}", file=sys.stderr)
        return 130
    total = time.perf_counter() - t0
    manifest_path = out / "manifest.json"
    previous = {}
    if manifest_path.exists() and args.only:  # keep the records of figures not re-run
        try:
            previous = {r["name"]: r for r in json.loads(manifest_path.read_text()).get("figures", [])}
        except (ValueError, KeyError):
            previous = {}
    merged = {**previous, **{r["name"]: r for r in records}}
    ordered = [merged[n] for n in FIGURE_NAMES if n in merged]
    manifest = {"mode": mode, "seed": args.seed, "seconds": round(total, 2),
                "figures": [{k: v for k, v in r.items() if k != "traceback"} for r in ordered]}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    width = max(len(r["name"]) for r in records)
    print(f"{'figure':{width}s}  status   seconds  files")
    for r in records:
        files = ", ".join(r.get("files", [])) or r.get("reason", "")
        print(f"{r['name']:{width}s}  {r['status']:7s}  {r['seconds']:7.1f}  {files}")
    print(f"total {total:.1f}s ({mode}); data and figures in {out}")
    return 0 if all(r["status"] == "ok" for r in records) else 1


__all__ = ["FIGURES", "FIGURE_NAMES", "FigureSpec", "run_figure", "add_arguments", "main"]
