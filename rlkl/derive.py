"""`rlkl derive`: run the executable sympy derivations and print one line per identity.

The derivations are the package ``rlkl.derivations`` (in a source checkout: the ``derivations/`` directory at the
repository root, which the wheel installs under that name). Each module there is a chain of expressions mirroring a
written derivation, every step asserted equal to the next (see ``rlkl.derivations._framework``). This command runs
every registered identity and prints ``status  seconds  kind  claim  [source]``; a failing step prints the residual
lhs − rhs. The kind says how general the check is: ``symbolic-general``, ``symbolic-instance (sizes)``,
``numeric (tolerance)`` or ``counterexample``.

    rlkl derive                      # all identities, one line each, and the counts per kind
    rlkl derive --quick              # skip the slow ones (CI)
    rlkl derive --json               # records with claim, source, kind, status, seconds (+ name, detail, steps)
    rlkl derive --latex FILE         # also write the derivations as Markdown with $…$ math (a handout)
    rlkl derive --only future_kl     # filter by identity name or claim (substring, repeatable)
    rlkl derive --extra my_ids.py    # also run identities registered in this file (tests seed a wrong one)
    rlkl derive --jobs 2             # run in 2 worker processes

Exit status: 0 when every identity passes (SKIP allowed), 1 when any fails, 2 when the derivations cannot be
imported or an ``--extra`` file is unusable.

`rlkl verify` reuses the previous verdicts (``verify_rows``) when the derivation sources, every ``rlkl/**/*.py`` and
the sympy/mpmath/numpy/torch versions are byte-identical to the last run (a SHA-256 content hash, never a timestamp),
and says so; ``rlkl verify --fresh`` recomputes. The cache lives in ``$XDG_CACHE_HOME/rlkl`` (default
``~/.cache/rlkl``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from rlkl.report import Verdict

PACKAGE = "rlkl.derivations"
REPO_ROOT = Path(__file__).resolve().parents[1]
DERIVATIONS_DIR = REPO_ROOT / "derivations"
KIND_ORDER = ("symbolic-general", "symbolic-instance", "numeric", "counterexample")


class DerivationsMissing(RuntimeError):
    """Neither ``rlkl.derivations`` nor a source tree's ``derivations/`` could be imported."""


class ExtraFileError(RuntimeError):
    """An ``--extra`` file could not be loaded (one line: what went wrong)."""


def load_package():
    """Import the derivations as ``rlkl.derivations`` and register every identity; returns the package.

    Installed from a wheel the subpackage exists; in a source checkout whose install predates that mapping, the
    ``derivations/`` directory next to ``rlkl/`` is imported under the same name (its imports are relative).
    """
    pkg = sys.modules.get(PACKAGE)
    if pkg is None:
        try:
            pkg = importlib.import_module(PACKAGE)
        except ModuleNotFoundError as exc:
            if exc.name != PACKAGE:
                raise
            pkg = _import_source_tree()
    pkg.load_all()
    return pkg


def _import_source_tree():
    init = DERIVATIONS_DIR / "__init__.py"
    if not init.is_file():
        raise DerivationsMissing(
            f"rlkl derive needs the derivations: {PACKAGE} is not installed and the source tree's {DERIVATIONS_DIR} "
            "was not found; install rlkl from a wheel that includes them, or run from a git checkout "
            "(pip install -e .)")
    spec = importlib.util.spec_from_file_location(PACKAGE, init, submodule_search_locations=[str(DERIVATIONS_DIR)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = pkg
    try:
        spec.loader.exec_module(pkg)
    except BaseException:
        del sys.modules[PACKAGE]
        raise
    parent, _, child = PACKAGE.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, pkg)
    return pkg


def _framework():
    return importlib.import_module(f"{PACKAGE}._framework")


def load_extra(path: str | Path) -> None:
    """Execute a Python file whose ``@identity`` functions (``from rlkl.derivations._framework import identity``)
    are added to the registry. Any problem raises :class:`ExtraFileError` with a one-line message."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ExtraFileError(f"--extra {path}: no such file")
    registry = _framework().REGISTRY
    before = set(registry)
    name = f"rlkl_derive_extra_{path.stem}"
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError("not a Python source file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except Exception as exc:  # a user's file: report it in one line, never a traceback
        sys.modules.pop(name, None)
        where = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) and exc.lineno else ""
        raise ExtraFileError(f"--extra {path}: {type(exc).__name__}{where}: {exc}") from None
    if set(registry) == before:
        raise ExtraFileError(f"--extra {path}: registered no identity (decorate functions with "
                             "`identity` from rlkl.derivations._framework)")


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
    load_package()
    for e in extra:
        load_extra(e)


def _worker_run(name: str) -> dict:
    fw = _framework()
    return fw.as_record(fw.run_identity(fw.REGISTRY[name]))


def _skipped(ident) -> dict:
    return {"name": ident.name, "module": ident.module, "claim": ident.claim, "source": ident.source,
            "kind": ident.declared_kind, "status": "SKIP", "seconds": 0.0,
            "detail": "slow; skipped in quick mode (run `rlkl derive`)", "steps": []}


def run(idents, jobs: int = 1, extra: list[str] | None = None, quick: bool = False, on_result=None) -> list[dict]:
    """Run identities; returns JSON-able records (``as_record``) in the input order.

    ``quick=True`` reports identities registered with ``slow=True`` as SKIP without running them.
    ``on_result(record)`` is called as each record becomes available (for streaming output).
    """
    fw = _framework()
    records: dict[str, dict] = {}
    todo = []
    for ident in idents:
        if quick and ident.slow:
            records[ident.name] = _skipped(ident)
            if on_result:
                on_result(records[ident.name])
        else:
            todo.append(ident)
    if jobs <= 1 or len(todo) <= 1:
        for ident in todo:
            rec = fw.as_record(fw.run_identity(ident))
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


def kind_counts(records: list[dict]) -> dict[str, int]:
    """Number of identities per kind family (symbolic-general, symbolic-instance, numeric, counterexample)."""
    c = Counter(next((k for k in KIND_ORDER if r["kind"].startswith(k)), r["kind"]) for r in records)
    return {k: c[k] for k in KIND_ORDER if c[k]} | {k: v for k, v in c.items() if k not in KIND_ORDER}


# ------------------------------------------------------------------------------------------------------------------
# output


def format_line(rec: dict) -> str:
    line = f"{rec['status']:<5} {rec['seconds']:6.2f}s  {rec['kind']:<17} {rec['claim']}  [{rec['source']}]"
    if rec["status"] != "PASS":
        line += f"\n{'':14}-> {rec['detail']}"
    return line


def _md_escape_table(s: str) -> str:
    return s.replace("|", "\\|")


_METHODS_DOC = [
    "* **symbolic: rational** — $\\mathrm{lhs}-\\mathrm{rhs}$ over a common denominator has the zero polynomial as "
    "numerator, with every $\\log(\\cdot)$, $f(\\cdot)$, $f'(\\cdot)$ and (canonical) sum treated as an independent "
    "symbol (logarithms are first split where their arguments are known positive). Zero for *all* values of those "
    "symbols implies zero for the actual ones, so this is a proof; an undefined $f$ makes the identity hold for every "
    "differentiable $f$.",
    "* **symbolic: sums merged per range** — sums over the same range (after splitting off boundary terms where "
    "ranges differ by integer offsets, valid under Karr's convention) are merged into one sum whose summand is proven "
    "zero as above.",
    "* **symbolic: structural / simplify / gammasimp** — equal once sympy has evaluated both sides, or "
    "`sympy.simplify` (`gammasimp`) of the difference is 0.",
    "* **exact arithmetic** — exact evaluation at stated rational points (reason given).",
    "* **numeric** — floating point (float64 library code, mpmath, Monte Carlo), tolerance and reason given.",
    "* **counterexample** — a residual shown non-zero at a concrete point (30-digit evaluation).",
]

_KINDS_DOC = [
    "* **symbolic-general** — proven at the generality of the claim: categorical distributions with a *symbolic* "
    "number of outcomes $n$ (`IndexedBase` entries and `Sum`s), a symbolic group size $G$ (binomial sums over the "
    "number of successes), any horizon $T$ (induction on the tree: the one-step recursions are proven by peeling off "
    "the first step with symbolic $T$, and the step $T\\to T+1$ is a symbolic identity), $f$ an undefined function, "
    "and *any* parametrization of the policy: $\\nabla$ is the derivative along an arbitrary parameter direction, the "
    "variations $d\\pi_a$ are free symbols (with $\\sum_a d\\pi_a=0$ for a normalized policy), so the identity holds "
    "for every component of $\\nabla_\\theta$ and every parametrization (softmax, network, shared parameters).",
    "* **symbolic-instance (sizes)** — symbolic, but on the stated finite sizes (closed forms for given $G$, "
    "brute-force enumerations, explicit trees).",
    "* **numeric (tolerance)** — the library's float64 code against the derived closed forms at exactly representable "
    "or rational inputs, Monte Carlo, and numeric examples.",
    "* **counterexample** — a claimed inequality, shown at a concrete point.",
]


def render_markdown(records: list[dict], module_docs: dict[str, str]) -> str:
    """The derivations as a Markdown document with $…$ / $$…$$ math (renders on GitHub and in most viewers)."""
    import platform

    import sympy

    registry = _framework().REGISTRY
    out: list[str] = []
    n_pass = sum(r["status"] == "PASS" for r in records)
    counts = kind_counts(records)
    out += ["# rlkl — executable derivations", "",
            "Generated by `rlkl derive --latex docs/derivations.md` from the sympy scripts in `derivations/` "
            "(installed as `rlkl.derivations`). Every `=` below was *checked* when this file was generated. Each "
            "identity states its **kind**:", "", *_KINDS_DOC, "",
            "and each step the method that proved it:", "", *_METHODS_DOC, "",
            f"**{n_pass}/{len(records)} identities pass** (sympy {sympy.__version__}, Python "
            f"{platform.python_version()}); by kind: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ". "
            "Timings are left out so that the document only changes when a derivation does; `rlkl derive` prints "
            "them.", "",
            "| # | claim | kind | source | status |", "|---|---|---|---|---|"]
    modules = list(dict.fromkeys(r["module"] for r in records))
    numbering: dict[str, str] = {}
    for r in records:
        sec = modules.index(r["module"]) + 1
        k = sum(1 for q in records[: records.index(r)] if q["module"] == r["module"]) + 1
        numbering[r["name"]] = f"{sec}.{k}"
        out.append(f"| {sec}.{k} | {_md_escape_table(r['claim'])} | {_md_escape_table(r['kind'])} | "
                   f"{_md_escape_table(r['source'])} | {r['status']} |")
    out.append("")
    for sec, mod in enumerate(modules, start=1):
        title, _, body = module_docs.get(mod, "").partition("\n")
        out += [f"## {sec}. {title.strip() or mod}", "", f"*Module* `derivations/{mod.split('.')[-1]}.py`", ""]
        if body.strip():
            out += [body.strip(), ""]
        for r in (r for r in records if r["module"] == mod):
            out += [f"### {numbering[r['name']]} {r['claim']}", "",
                    f"*Kind:* **{r['kind']}** · *Source:* {r['source']} · *Status:* **{r['status']}** · "
                    f"*Identity:* `{r['name']}`", ""]
            if r["status"] != "PASS":
                out += [f"> {r['detail']}", ""]
            ident = registry.get(r["name"])
            doc_i = (ident.func.__doc__ or "").strip() if ident else ""
            if doc_i:
                out += [doc_i, ""]
            out += _render_steps(r["steps"])
    return "\n".join(out).rstrip() + "\n"


def _render_steps(steps: list[dict]) -> list[str]:
    out: list[str] = []
    k = 0
    for st in steps:
        if st["method"] == "text":
            out += [st["note"], ""]
            continue
        k += 1
        out += [f"**({k})** {st['label']} — *{st['method']}* {'✓' if st['ok'] else '✗'}", ""]
        math = st["tex"] or (st["concrete"] if st["method"] != "assumption" else "")
        if math:
            out += ["$$", math, "$$", ""]
        if st["note"]:
            out += [f"<sub>{st['note']}</sub>", ""]
    return out


# ------------------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print records (claim, source, kind, status, seconds, ...) as JSON")
    parser.add_argument("--latex", metavar="FILE", help="also write the derivations as Markdown with $…$ math to FILE")
    parser.add_argument("--only", action="append", metavar="TEXT",
                        help="run only identities whose name or claim contains TEXT (repeatable)")
    parser.add_argument("--extra", action="append", metavar="FILE", default=[],
                        help="also run the identities registered in this Python file (repeatable)")
    parser.add_argument("--quick", action="store_true", help="skip identities marked slow (for CI)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes (default 1)")


def main(args: argparse.Namespace) -> int:
    try:
        pkg = load_package()
        for e in args.extra:
            load_extra(e)
    except (DerivationsMissing, ExtraFileError) as exc:
        print(f"rlkl derive: {exc}", file=sys.stderr)
        return 2
    idents = select(_framework().REGISTRY, args.only)
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
        kinds = ", ".join(f"{v} {k}" for k, v in kind_counts(records).items())
        print(f"\n{len(records)} identities: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP "
              f"in {total:.1f}s wall ({sum(r['seconds'] for r in records):.1f}s summed)\nby kind: {kinds}")
    if args.latex:
        out = Path(args.latex)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_markdown(records, pkg.module_docs() | _extra_docs(records)), encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 1 if any(r["status"] == "FAIL" for r in records) else 0


def _extra_docs(records: list[dict]) -> dict[str, str]:
    docs = {}
    for r in records:
        mod = sys.modules.get(r["module"])
        if mod is not None and r["module"] not in docs:
            docs[r["module"]] = (mod.__doc__ or "").strip()
    return docs


# ------------------------------------------------------------------------------------------------------------------
# `rlkl verify`: verdicts, reused while the sources are byte-identical


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/rlkl``, default ``~/.cache/rlkl``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rlkl"


def source_key(pkg, quick: bool) -> str:
    """SHA-256 over every derivation source and every rlkl/**/*.py (path and bytes), the versions of sympy, mpmath,
    numpy and torch, and the mode (quick or full)."""
    import rlkl

    h = hashlib.sha256()
    droot, rroot = Path(pkg.__file__).resolve().parent, Path(rlkl.__file__).resolve().parent
    entries = {f.resolve(): f"derivations/{f.name}" for f in droot.glob("*.py")}
    for f in rroot.rglob("*.py"):
        entries.setdefault(f.resolve(), f.relative_to(rroot.parent).as_posix())
    for f, name in sorted(entries.items(), key=lambda kv: kv[1]):
        h.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    for dist in ("sympy", "mpmath", "numpy", "torch"):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "absent"
        h.update(f"{dist}={version}\0".encode())
    h.update(b"quick" if quick else b"full")
    return h.hexdigest()


def _cache_file(quick: bool) -> Path:
    return cache_dir() / f"derive-verdicts-{'quick' if quick else 'full'}.json"


def _read_cache(path: Path, key: str) -> list[dict] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("records"), list):
        return None
    return data["records"]


def _write_cache(path: Path, key: str, records: list[dict]) -> None:
    slim = [{k: r[k] for k in ("name", "claim", "source", "kind", "status", "seconds", "detail")} for r in records]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "records": slim}, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        print(f"[rlkl verify] derivations: could not write the verdict cache {path}: {exc}", file=sys.stderr)


def verify_rows(quick: bool, fresh: bool = False) -> list[Verdict]:
    """Every identity as a ``Verdict`` (section "derivations") for `rlkl verify`; slow ones are SKIP when quick.

    Verdicts are reused from the last run when :func:`source_key` is unchanged (the derivation sources and the
    library are byte-identical) and that run had no FAIL; ``fresh=True`` recomputes. Stderr says which happened.
    """
    try:
        pkg = load_package()
    except DerivationsMissing as exc:
        return [Verdict("derivations", "symbolic derivations", PACKAGE, "SKIP", str(exc))]
    key = source_key(pkg, quick)
    path = _cache_file(quick)
    records = None if fresh else _read_cache(path, key)
    cached = records is not None
    if cached:
        print(f"[rlkl verify] derivations: reusing {len(records)} verdicts from {path} (derivation sources and rlkl "
              f"byte-identical, sha256 {key[:12]}); `rlkl verify --fresh` recomputes", file=sys.stderr, flush=True)
    else:
        records = run(select(_framework().REGISTRY), quick=quick)
        if not any(r["status"] == "FAIL" for r in records):
            _write_cache(path, key, records)
    note = " (cached)" if cached else ""
    return [Verdict("derivations", rec["claim"], rec["source"], rec["status"], f"{rec['kind']}; {rec['detail']}{note}",
                    float(rec["seconds"])) for rec in records]
