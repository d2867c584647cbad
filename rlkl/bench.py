"""`rlkl bench`: run the performance benchmarks (``benchmarks/`` in a checkout, installed as ``rlkl.benchmarks``).

Each benchmark module exposes ``main(argv) -> int`` and prints ratios against a baseline measured in the same run
(speed is never asserted in tests); ``QUICK_ARGV`` are its arguments under ``--quick``. Every named benchmark runs,
in order, even when one fails; the exit status is the first non-zero one.

    rlkl bench --list
    rlkl bench                      # all of them
    rlkl bench --quick exact_engine
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time

PACKAGE = "rlkl.benchmarks"


def available() -> list[str]:
    """Names of the benchmark modules, sorted."""
    pkg = importlib.import_module(PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def describe(name: str) -> str:
    """First line of a benchmark's docstring."""
    doc = importlib.import_module(f"{PACKAGE}.{name}").__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all); see --list")
    parser.add_argument("--list", action="store_true", help="list the benchmarks")
    parser.add_argument("--quick", action="store_true", help="short version of each benchmark (its QUICK_ARGV)")


def run_one(name: str, quick: bool = False) -> int:
    """Run one benchmark in this process (torch's thread count restored afterwards); returns its exit status."""
    import torch

    module = importlib.import_module(f"{PACKAGE}.{name}")
    argv = list(getattr(module, "QUICK_ARGV", ())) if quick else []
    threads = torch.get_num_threads()
    try:
        status = module.main(argv)
    except SystemExit as exc:  # a benchmark's argparse error or explicit exit: report it, run the others
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        torch.set_num_threads(threads)
    return int(status or 0)


def main(args: argparse.Namespace) -> int:
    names = available()
    if args.list:
        width = max(map(len, names))
        for name in names:
            print(f"{name:<{width}}  {describe(name)}")
        return 0
    unknown = [n for n in args.names if n not in names]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(names)}")
    statuses = {}
    for name in args.names or names:
        print(f"== {name} ==", flush=True)
        t0 = time.perf_counter()
        statuses[name] = run_one(name, args.quick)
        print(f"== {name}: exit {statuses[name]}, {time.perf_counter() - t0:.1f}s ==", flush=True)
    failed = [n for n, s in statuses.items() if s != 0]
    if failed:
        print(f"rlkl bench: failed: {', '.join(failed)}", file=sys.stderr)
    return next((s for s in statuses.values() if s != 0), 0)
