"""`rlkl verify`: run every verification rlkl has and print the verdict table.

Providers are modules exposing ``verify_rows(quick: bool) -> list[rlkl.report.Verdict]``. A section that cannot
run — its module is missing, it raises, or it returns no row that actually ran (only SKIPs) — becomes a FAIL row
and a line on stderr, and the command exits 1: a verification that did not happen is never reported as passed.
Single SKIP rows inside a section that ran (e.g. slow identities in quick mode) are allowed.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time

from rlkl.report import TABLE_WIDTH, Verdict, dump_json, format_table

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
    parser.add_argument("--wide", action="store_true",
                        help=f"one line per verdict, nothing wrapped (default: wrapped to {TABLE_WIDTH} columns)")


#: claim of the row that stands for a whole section that could not run
SECTION_RUNS = "this section runs"


def _section_failure(section: str, module_name: str, reason: str) -> Verdict:
    return Verdict(section, SECTION_RUNS, module_name, "FAIL", f"could not run: {reason}", expected=False)


def run_section(section: str, module_name: str, quick: bool, fresh: bool = False) -> list[Verdict]:
    """The verdicts of one section; a section that cannot run gives one FAIL row saying why."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return [_section_failure(section, module_name, f"{module_name} cannot be imported ({exc})")]
    try:
        fresh_kw = {"fresh": fresh} if "fresh" in inspect.signature(module.verify_rows).parameters else {}
        rows = list(module.verify_rows(quick=quick, **fresh_kw))
    except Exception as exc:  # noqa: BLE001 — reported as a FAIL row, the other sections still run
        return [_section_failure(section, module_name, f"{type(exc).__name__}: {exc}")]
    if not any(r.status != "SKIP" for r in rows):
        why = "; ".join(sorted({r.detail for r in rows if r.detail})) or "it returned no verdict"
        return rows + [_section_failure(section, module_name, f"nothing ran ({why})")]
    return rows


def collect(quick: bool = True, only: list[str] | None = None, fresh: bool = False) -> list[Verdict]:
    rows: list[Verdict] = []
    for section, module_name in PROVIDERS.items():
        if only and section not in only:
            continue
        t0 = time.perf_counter()
        print(f"[rlkl verify] running {section} ...", file=sys.stderr, flush=True)
        rows.extend(run_section(section, module_name, quick, fresh))
        print(f"[rlkl verify] {section}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    return rows


def main(args: argparse.Namespace) -> int:
    rows = collect(quick=not args.full, only=args.only, fresh=args.fresh)
    print(dump_json(rows) if args.json else format_table(rows, wide=args.wide))
    for r in (r for r in rows if r.status == "FAIL" and r.claim == SECTION_RUNS):
        print(f"rlkl verify: section '{r.section}' {r.detail}", file=sys.stderr)
    return 0 if all(r.ok or r.status == "SKIP" for r in rows) else 1
