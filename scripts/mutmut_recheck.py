"""Re-run mutmut mutants one at a time outside mutmut: no timeout, any test files, a temporary copy of the tree.

mutmut 3 classifies a mutant whose tests run past 15× their clean time as "timeout"; on a loaded machine an
equivalent mutant can time out too, and after tests are added its "survived" results are stale. This script applies
the diff ``mutmut show NAME`` prints to a fresh copy of the working tree (``git ls-files``: tracked and
untracked-not-ignored files; the tree itself is never modified) and runs ``pytest -x -q`` on the given test files
with ``PYTHONPATH=<copy>``; it prints KILLED (with the first failing test) or SURVIVED per mutant (docs/mutation.md).

Usage::

    .venv/bin/mutmut results | grep survived | cut -d: -f1 > /tmp/names.txt
    .venv/bin/python scripts/mutmut_recheck.py /tmp/names.txt tests/test_sampling.py tests/test_mutation_survivors.py
    .venv/bin/python scripts/mutmut_recheck.py --fork /tmp/names.txt -n 0 tests/test_divergences.py ...

``--fork``: one pytest process for all the mutants instead of one per mutant (far faster when there are many). The
copy gets mutmut's own trampolined version of each mutated file (``mutants/<path>``, which must come from a mutmut
run over the same source), the tests are collected once, and each mutant runs them in a forked child with
``MUTANT_UNDER_TEST`` set (mutmut's trampolines read it at call time), stopping at the first failure; an unmutated
baseline runs first and must pass. Module-level values computed at import (before any mutant is active) are the
unmutated ones; a mutant seen only through such a value is reported SURVIVED, never falsely KILLED.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _changed_lines(name: str) -> tuple[str, list[str], list[str]]:
    """(path, removed lines, added lines) of the one hunk ``mutmut show NAME`` prints."""
    out = subprocess.run([str(REPO / ".venv/bin/mutmut"), "show", name], cwd=REPO, capture_output=True,
                         text=True).stdout.splitlines()
    path = next(line[4:] for line in out if line.startswith("--- "))
    body = out[next(i for i, line in enumerate(out) if line.startswith("@@")) + 1:]
    return path, [line[1:] for line in body if line[:1] == "-"], [line[1:] for line in body if line[:1] == "+"]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def recheck(name: str, copy: Path, tests: list[str]) -> str:
    """Apply the mutant (its removed lines, matched ignoring indentation — mutmut shows methods dedented — must occur
    exactly once), run the tests, restore the file."""
    path, removed, added = _changed_lines(name)
    text = (copy / path).read_text(encoding="utf-8")
    lines = text.split("\n")
    key = [r.strip() for r in removed]
    hits = [i for i in range(len(lines) - len(key) + 1) if [x.strip() for x in lines[i:i + len(key)]] == key]
    if not removed or len(hits) != 1:
        return f"{name}: CANNOT APPLY (the changed lines occur {len(hits)} times in {path})"
    shift = _indent(lines[hits[0]]) - _indent(removed[0])
    new = [(" " * shift + a) if shift >= 0 else a[-shift:] for a in added]
    (copy / path).write_text("\n".join(lines[:hits[0]] + new + lines[hits[0] + len(key):]), encoding="utf-8")
    try:
        env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
        p = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], cwd=copy,
                           env=env, capture_output=True, text=True)
    finally:
        (copy / path).write_text(text, encoding="utf-8")
    failed = [line for line in p.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    if p.returncode == 0:
        return f"{name}: SURVIVED"
    return f"{name}: KILLED {failed[0] if failed else f'exit {p.returncode}'}"


# --fork: this module is also the pytest plugin (``-p mutmut_recheck``) that runs the collected tests per mutant.


def _run_items(items, name: str) -> str:
    from _pytest.runner import runtestprotocol

    os.environ["MUTANT_UNDER_TEST"] = name
    for i, item in enumerate(items):
        reports = runtestprotocol(item, nextitem=items[i + 1] if i + 1 < len(items) else None, log=False)
        if any(r.failed for r in reports):
            return item.nodeid
    return ""


def pytest_runtestloop(session):
    if "RLKL_RECHECK_NAMES" not in os.environ:
        return None
    import torch

    torch.set_num_threads(1)
    names = Path(os.environ["RLKL_RECHECK_NAMES"]).read_text().split()
    for name in ["BASELINE"] + names:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: run the tests with this mutant active, report the first failure through the pipe
            os.close(r)
            try:
                failed = _run_items(session.items, "" if name == "BASELINE" else name)
            except BaseException as exc:  # noqa: BLE001 -- a crash of the run is a kill, reported by name
                failed = f"crash {type(exc).__name__}"
            os.write(w, failed.encode() or b"-")
            os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        with os.fdopen(r) as pipe:
            msg = pipe.read()
        msg = "" if msg == "-" else (msg or "the child died")
        if name == "BASELINE":
            if msg:
                print(f"BASELINE FAILED {msg}: the unmutated tree must pass", flush=True)
                session.testsfailed = 1
                return True
            continue
        print(f"{name}: KILLED {msg}" if msg else f"{name}: SURVIVED", flush=True)
    return True


def fork_main(names_file: str, tests: list[str], copy: Path) -> int:
    names = [line.strip() for line in Path(names_file).read_text().splitlines() if line.strip()]
    for path in sorted({_changed_lines(n)[0] for n in names}):
        tramp = REPO / "mutants" / path
        if not tramp.is_file():
            print(f"no {tramp}: --fork needs the mutants/ tree of a mutmut run", file=sys.stderr)
            return 2
        shutil.copy2(tramp, copy / path)
    listed = copy / ".recheck-names.txt"
    listed.write_text("\n".join(names) + "\n")
    env = dict(os.environ, PYTHONPATH=f"{copy}{os.pathsep}{REPO / 'scripts'}", PYTHONDONTWRITEBYTECODE="1",
               RLKL_RECHECK_NAMES=str(listed))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "mutmut_recheck",
                        *tests, "-n", "0"], cwd=copy, env=env, capture_output=True, text=True)
    lines = [line for line in p.stdout.splitlines() if line.startswith(("rlkl", "BASELINE"))]
    print("\n".join(lines), flush=True)
    if len(lines) != len(names) or any(line.startswith("BASELINE") for line in lines):
        print(p.stdout[-3000:] + p.stderr[-3000:], file=sys.stderr)
        return 2
    return 1 if any(" SURVIVED" in line for line in lines) else 0


def main(argv: list[str]) -> int:
    fork = "--fork" in argv[:1]
    argv = argv[1:] if fork else argv
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    names = [line.strip() for line in Path(argv[0]).read_text().splitlines() if line.strip()]
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    copy = Path(tempfile.mkdtemp(prefix="rlkl-mutmut-recheck-"))
    try:
        for rel in files:
            if rel and (REPO / rel).is_file():
                (copy / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, copy / rel)
        if fork:
            return fork_main(argv[0], argv[1:], copy)
        survived = 0
        for name in names:
            line = recheck(name, copy, argv[1:])
            survived += " SURVIVED" in line or "CANNOT" in line
            print(line, flush=True)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
