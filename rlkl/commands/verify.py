"""`rlkl verify`: run every verification rlkl has and print the verdict table.

Providers are modules exposing ``verify_rows(quick: bool) -> list[rlkl.report.Verdict]``; a provider whose
module is not present is reported as SKIP, never silently dropped.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time

from rlkl.report import Verdict, dump_json, format_table

PROVIDERS: dict[str, str] = {
    "estimators": "rlkl.selfcheck",
    "derivations": "rlkl.derive",
    "audit": "rlkl.toy.audit",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--full", action="store_true", help="more seeds / larger grids (slower)")
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON records")
    parser.add_argument("--only", choices=sorted(PROVIDERS), action="append", help="run only these sections")
    parser.add_argument("--fresh", action="store_true",
                        help="recompute the derivation verdicts even when their sources are unchanged")


def collect(quick: bool = True, only: list[str] | None = None, fresh: bool = False) -> list[Verdict]:
    rows: list[Verdict] = []
    for section, module_name in PROVIDERS.items():
        if only and section not in only:
            continue
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                rows.append(Verdict(section, f"{section} checks", module_name, "SKIP", "module not available"))
                continue
            raise
        print(f"[rlkl verify] running {section} ...", file=sys.stderr, flush=True)
        fresh_kw = {"fresh": fresh} if "fresh" in inspect.signature(module.verify_rows).parameters else {}
        rows.extend(module.verify_rows(quick=quick, **fresh_kw))
        print(f"[rlkl verify] {section}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    return rows


def main(args: argparse.Namespace) -> int:
    rows = collect(quick=not args.full, only=args.only, fresh=args.fresh)
    print(dump_json(rows) if args.json else format_table(rows))
    return 0 if all(r.ok or r.status == "SKIP" for r in rows) else 1
