"""`rlkl bench`: run the performance benchmarks in ``benchmarks/`` (each prints ratios against a baseline measured
in the same run; speed is never asserted in tests)."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def available() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.name.startswith("_"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all); see --list")
    parser.add_argument("--list", action="store_true", help="list the benchmarks")


def main(args: argparse.Namespace) -> int:
    if not BENCH_DIR.is_dir():
        print(f"benchmarks/ not found next to the package ({BENCH_DIR}); run from a source checkout", file=sys.stderr)
        return 2
    names = args.names or available()
    if args.list:
        print("\n".join(available()))
        return 0
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmarks {unknown}; available: {available()}", file=sys.stderr)
        return 2
    for name in names:
        print(f"== {name} ==", flush=True)
        saved = sys.argv
        sys.argv = [str(BENCH_DIR / f"{name}.py")]
        try:
            runpy.run_path(str(BENCH_DIR / f"{name}.py"), run_name="__main__")
        finally:
            sys.argv = saved
    return 0
