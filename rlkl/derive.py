"""`rlkl derive`: run the executable sympy derivations and print one line per identity.

The derivations live in ``derivations/`` at the repository root (next to ``rlkl/``), not inside the package: each
module there is a chain of expressions mirroring a written derivation, every step asserted equal to the next (see
``derivations/_framework.py``). This command imports them from the source tree, runs every registered identity
and prints ``status  seconds  claim  [source]``; a failing step prints the residual lhs − rhs.

    rlkl derive                      # all identities, one line each
    rlkl derive --json               # records with claim, source, status, seconds (+ name, detail, steps)
    rlkl derive --latex FILE         # also write the derivations as Markdown with $…$ math (a handout)
    rlkl derive --only future_kl     # filter by identity name or claim (substring, repeatable)
    rlkl derive --extra my_ids.py    # also run identities registered in this file (tests seed a wrong one)
    rlkl derive --jobs 2             # run in 2 worker processes

Exit status: 0 when every identity passes (SKIP allowed), 1 when any fails, 2 when ``derivations/`` is missing
(rlkl installed without its source tree).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path

from rlkl.report import Verdict

REPO_ROOT = Path(__file__).resolve().parents[1]
DERIVATIONS_DIR = REPO_ROOT / "derivations"


class DerivationsMissing(RuntimeError):
    """``derivations/`` is not next to the installed package (e.g. installed from a wheel)."""


def _import_derivations():
    """Import the ``derivations`` package from the repository root (inserted on sys.path)."""
    if not (DERIVATIONS_DIR / "__init__.py").is_file():
        raise DerivationsMissing(
            f"rlkl derive needs the source tree: {DERIVATIONS_DIR} was not found. The derivations are not part of "
            "the installed package; run from a git checkout (pip install -e .) to use this command.")
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
    pkg = importlib.import_module("derivations")
    found = Path(pkg.__file__).resolve().parent
    if found != DERIVATIONS_DIR.resolve():
        raise DerivationsMissing(f"imported a different 'derivations' package from {found}, expected {DERIVATIONS_DIR}")
    pkg.load_all()
    return pkg


def load_extra(path: str | Path) -> None:
    """Execute a Python file whose ``@identity`` functions are added to the registry."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"--extra {path}: no such file")
    name = f"rlkl_derive_extra_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def select(registry: dict, only: list[str] | None = None, quick: bool = False):
    """Identities to run, in registration order; ``only`` filters on name or claim (case-insensitive substring)."""
    idents = sorted(registry.values(), key=lambda i: i.order)
    if only:
        keys = [o.lower() for o in only]
        idents = [i for i in idents if any(k in i.name.lower() or k in i.claim.lower() for k in keys)]
    return idents


# ------------------------------------------------------------------------------------------------------------------
# running (optionally in worker processes)

def _worker_init(extra: list[str]) -> None:
    _import_derivations()
    for e in extra:
        load_extra(e)


def _worker_run(name: str) -> dict:
    from derivations._framework import REGISTRY, as_record, run_identity

    return as_record(run_identity(REGISTRY[name]))


def run(idents, jobs: int = 1, extra: list[str] | None = None, quick: bool = False, on_result=None) -> list[dict]:
    """Run identities; returns JSON-able records (``as_record``) in the input order.

    ``quick=True`` reports identities registered with ``slow=True`` as SKIP without running them.
    ``on_result(record)`` is called as each record becomes available (for streaming output).
    """
    from derivations._framework import as_record, run_identity

    records: dict[str, dict] = {}
    todo = []
    for ident in idents:
        if quick and ident.slow:
            rec = {"name": ident.name, "module": ident.module, "claim": ident.claim, "source": ident.source,
                   "status": "SKIP", "seconds": 0.0, "detail": "slow; skipped in quick mode (run `rlkl derive`)",
                   "steps": []}
            records[ident.name] = rec
            if on_result:
                on_result(rec)
        else:
            todo.append(ident)
    if jobs <= 1 or len(todo) <= 1:
        for ident in todo:
            rec = as_record(run_identity(ident))
            records[ident.name] = rec
            if on_result:
                on_result(rec)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                                 initargs=(list(extra or []),)) as pool:
            for rec in pool.map(_worker_run, [i.name for i in todo]):
                records[rec["name"]] = rec
                if on_result:
                    on_result(rec)
    return [records[i.name] for i in idents]


# ------------------------------------------------------------------------------------------------------------------
# output


def format_line(rec: dict) -> str:
    line = f"{rec['status']:<5} {rec['seconds']:6.2f}s  {rec['claim']}  [{rec['source']}]"
    if rec["status"] != "PASS":
        line += f"\n{'':14}-> {rec['detail']}"
    return line


def _md_escape_table(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(records: list[dict], module_docs: dict[str, str], total_seconds: float) -> str:
    """The derivations as a Markdown document with $…$ / $$…$$ math (renders on GitHub and in most viewers)."""
    import platform

    import sympy

    from derivations._framework import REGISTRY

    out: list[str] = []
    n_pass = sum(r["status"] == "PASS" for r in records)
    out.append("# rlkl — executable derivations")
    out.append("")
    out.append("Generated by `rlkl derive --latex docs/derivations.md` from the sympy scripts in `derivations/`. Every "
               "`=` below was *checked* when this file was generated, by the method named after it:")
    out.append("")
    out.append("* **symbolic: rational** — $\\mathrm{lhs}-\\mathrm{rhs}$ over a common denominator has the zero "
               "polynomial as numerator, with every $\\log(\\cdot)$, $f(\\cdot)$ and $f'(\\cdot)$ treated as an "
               "independent symbol (logarithms are first split where their arguments are known positive). Zero for "
               "*all* values of those symbols implies zero for the actual ones, so this is a proof; an undefined $f$ "
               "makes the identity hold for every differentiable $f$.")
    out.append("* **symbolic: structural** — both sides are the same expression once sympy has evaluated them (e.g. an "
               "integral or a derivative computed by sympy equals the stated closed form).")
    out.append("* **symbolic: simplify** — `sympy.simplify(lhs - rhs) == 0`.")
    out.append("* **exact arithmetic** — exact evaluation at stated rational points (reason given).")
    out.append("* **numeric** — floating point (float64 library code, mpmath, Monte Carlo), tolerance and reason "
               "given; never used for an identity that sympy can prove.")
    out.append("* **counterexample** — a residual shown non-zero at a concrete point (30-digit evaluation).")
    out.append("")
    out.append("Concrete instances are small (three actions, binary trees of depth 2–3, groups of 2–8) with "
               "*symbolic* entries (logits, rewards, β, ε, the reference and behaviour policies). A softmax policy is "
               "written through its probabilities, with the gradient taken by the softmax Jacobian (proven from the "
               "logit form at the start of each module that uses it); constraints such as $\\pi_3=1-\\pi_1-\\pi_2$ are "
               "imposed after the logarithms have been made atoms.")
    out.append("")
    out.append(f"**{n_pass}/{len(records)} identities pass**, {total_seconds:.1f} s in total "
               f"(sympy {sympy.__version__}, Python {platform.python_version()}).")
    out.append("")
    out.append("| # | claim | source | status | s |")
    out.append("|---|---|---|---|---|")
    numbering: dict[str, str] = {}
    section_of: dict[str, int] = {}
    modules = []
    for r in records:
        if r["module"] not in modules:
            modules.append(r["module"])
    for r in records:
        sec = modules.index(r["module"]) + 1
        k = sum(1 for q in records[: records.index(r)] if q["module"] == r["module"]) + 1
        numbering[r["name"]] = f"{sec}.{k}"
        section_of[r["name"]] = sec
        out.append(f"| {sec}.{k} | {_md_escape_table(r['claim'])} | {_md_escape_table(r['source'])} | {r['status']} | "
                   f"{r['seconds']:.2f} |")
    out.append("")
    for sec, mod in enumerate(modules, start=1):
        doc = module_docs.get(mod, "")
        title, _, body = doc.partition("\n")
        out.append(f"## {sec}. {title.strip() or mod}")
        out.append("")
        out.append(f"*Module* `{mod.replace('.', '/')}.py`")
        out.append("")
        if body.strip():
            out.append(body.strip())
            out.append("")
        for r in records:
            if r["module"] != mod:
                continue
            out.append(f"### {numbering[r['name']]} {r['claim']}")
            out.append("")
            out.append(f"*Source:* {r['source']} · *Status:* **{r['status']}** ({r['seconds']:.2f} s) · "
                       f"*Identity:* `{r['name']}`")
            out.append("")
            if r["status"] != "PASS":
                out.append(f"> {r['detail']}")
                out.append("")
            ident = REGISTRY.get(r["name"])
            doc_i = (ident.func.__doc__ or "").strip() if ident else ""
            if doc_i:
                out.append(doc_i)
                out.append("")
            k = 0
            for st in r["steps"]:
                if st["method"] == "text":
                    out.append(st["note"])
                    out.append("")
                    continue
                k += 1
                mark = "✓" if st["ok"] else "✗"
                out.append(f"**({k})** {st['label']} — *{st['method']}* {mark}")
                out.append("")
                if st["tex"]:
                    out.append("$$")
                    out.append(st["tex"])
                    out.append("$$")
                    out.append("")
                elif st["concrete"] and st["method"] != "assumption":
                    out.append("$$")
                    out.append(st["concrete"])
                    out.append("$$")
                    out.append("")
                if st["note"]:
                    out.append(f"<sub>{st['note']}</sub>")
                    out.append("")
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print records (claim, source, status, seconds, ...) as JSON")
    parser.add_argument("--latex", metavar="FILE", help="also write the derivations as Markdown with $…$ math to FILE")
    parser.add_argument("--only", action="append", metavar="TEXT",
                        help="run only identities whose name or claim contains TEXT (repeatable)")
    parser.add_argument("--extra", action="append", metavar="FILE", default=[],
                        help="also run the identities registered in this Python file (repeatable)")
    parser.add_argument("--quick", action="store_true", help="skip identities marked slow")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes (default 1)")


def main(args: argparse.Namespace) -> int:
    try:
        pkg = _import_derivations()
        for e in args.extra:
            load_extra(e)
    except (DerivationsMissing, FileNotFoundError) as exc:
        print(f"rlkl derive: {exc}", file=sys.stderr)
        return 2
    from derivations._framework import REGISTRY

    idents = select(REGISTRY, args.only)
    if not idents:
        print(f"rlkl derive: no identity matches {args.only}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    stream = None if args.json else (lambda rec: print(format_line(rec), flush=True))
    records = run(idents, jobs=max(1, args.jobs), extra=args.extra, quick=args.quick, on_result=stream)
    total = time.perf_counter() - t0
    if args.json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
    else:
        counts = {s: sum(r["status"] == s for r in records) for s in ("PASS", "FAIL", "SKIP")}
        print(f"\n{len(records)} identities: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP "
              f"in {total:.1f}s wall ({sum(r['seconds'] for r in records):.1f}s summed)")
    if args.latex:
        out = Path(args.latex)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_markdown(records, pkg.module_docs() | _extra_docs(records), total), encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 1 if any(r["status"] == "FAIL" for r in records) else 0


def _extra_docs(records: list[dict]) -> dict[str, str]:
    docs = {}
    for r in records:
        mod = sys.modules.get(r["module"])
        if mod is not None and r["module"] not in docs:
            docs[r["module"]] = (mod.__doc__ or "").strip()
    return docs


def verify_rows(quick: bool) -> list[Verdict]:
    """Every identity as a ``Verdict`` (section "derivations") for `rlkl verify`; slow ones are SKIP when quick."""
    try:
        _import_derivations()
    except DerivationsMissing as exc:
        return [Verdict("derivations", "symbolic derivations", str(DERIVATIONS_DIR), "SKIP", str(exc))]
    from derivations._framework import REGISTRY

    rows = []
    for rec in run(select(REGISTRY), quick=quick):
        rows.append(Verdict("derivations", rec["claim"], rec["source"], rec["status"], rec["detail"],
                            float(rec["seconds"])))
    return rows
