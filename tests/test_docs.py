"""The user docs stay true: the API reference matches the docstrings, citations resolve inside the repo or to a
paper, and the tutorial's commands run as written (short variants of the slow ones, in-process, in an empty dir)."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: references to files a clone does not have (the project's private notes)
OUTSIDE = re.compile(r"rpg\.md|frpo\.md|peers\.md|mismatch\.md|DESIGN\.md|spec/|\.\./shared|spec (rpg|frpo|peers)")
#: every user doc (the generated ones too: reference.md from the docstrings, derivations.md from derivations/)
DOCS = tuple(sorted(p.name for p in (ROOT / "docs").glob("*.md")))
#: the source folders a clone has: their comments and docstrings must not cite the private notes either
SOURCE_DIRS = ("rlkl", "tests", "scripts", "examples", "experiments", "paper_figures", "derivations", "benchmarks")


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_api_reference", ROOT / "scripts" / "gen_api_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_is_current():
    gen = _load_generator()
    assert (ROOT / "docs" / "reference.md").read_text(encoding="utf-8") == gen.render(), \
        "docs/reference.md is stale: run .venv/bin/python scripts/gen_api_reference.py"


def test_api_reference_covers_the_library():
    text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    for name in ("rlkl.divergences.kl_estimate", "rlkl.losses.kl_loss", "rlkl.advantages.frpo_advantages",
                 "rlkl.utility.finite_group_weight", "rlkl.methods.get_method", "rlkl.toy.expected_gradient",
                 "rlkl.plot.load_run"):
        assert f"### `{name}`" in text, name
    assert "straight_through_grad" in text  # the documented argument is the real one
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert "internal API contract" not in api and "check_same_shape" not in api
    assert "straight_through_grad=False" in api


@pytest.mark.parametrize("doc", DOCS)
def test_docs_cite_nothing_outside_the_repo(doc):
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    hits = [line for line in text.splitlines() if OUTSIDE.search(line)]
    assert not hits, hits
    for target in re.findall(r"\]\(([^)#]+\.md)", text):  # relative links resolve
        assert (ROOT / "docs" / target).is_file(), target


def test_sources_cite_nothing_outside_the_repo():
    hits = []
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in (".py", ".md", ".sh", ".yaml", ".toml") or path.name == "test_docs.py":
                continue
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if OUTSIDE.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    hits += [f"README.md: {line}" for line in readme.splitlines() if OUTSIDE.search(line)]
    assert not hits, "\n".join(hits)


def test_estimator_rows_of_verify_cite_papers_and_theory():
    from rlkl.selfcheck import verify_rows

    theory = (ROOT / "docs" / "theory.md").read_text(encoding="utf-8")
    for row in verify_rows(quick=True):
        assert not OUTSIDE.search(row.source), row.source
        ids = re.findall(r"docs/theory\.md (T\d+)", row.source)
        assert ids and all(f"**{i} —" in theory for i in ids), row.source


# ---- the tutorial ---------------------------------------------------------------------------------------------------

#: every command of docs/tutorial.md, in order, and the short variant this test runs (None: run as written);
#: a command added to or removed from the tutorial must be added here too
TUTORIAL = {
    "./setup.sh": "skip",  # the test suite runs inside the environment it makes
    ".venv/bin/rlkl verify": "verify --only estimators --only audit",
    ".venv/bin/python examples/k3_loss_is_forward_kl.py": "example",  # run and checked in tests/test_examples.py
    ".venv/bin/rlkl audit --method grpo,frpo --beta 0.1": None,
    ".venv/bin/rlkl sft --task addition --preset cpu_tiny":
        "sft --task addition --preset cpu_tiny --steps 30 --eval-prompts 8 --eval-every 30 --quiet",
    ".venv/bin/rlkl train --task addition --method grpo --preset cpu_tiny --seed 0 --out runs/train/grpo":
        "train --task addition --method grpo --preset cpu_tiny --seed 0 --out runs/train/grpo --steps 3 "
        "--prompts-per-step 4 --eval-every 3 --eval-prompts 8 --quiet",
    ".venv/bin/rlkl train --task addition --method frpo --preset cpu_tiny --seed 0 --out runs/train/frpo":
        "train --task addition --method frpo --preset cpu_tiny --seed 0 --out runs/train/frpo --steps 3 "
        "--prompts-per-step 4 --eval-every 3 --eval-prompts 8 --quiet",
    ".venv/bin/rlkl plot runs/train/grpo runs/train/frpo --out runs/plot/grpo_vs_frpo": None,
    ".venv/bin/rlkl figures --quick": "figures --quick --only grpo_utility",  # all of them: tests/test_figures.py
}


def _tutorial_commands() -> list[str]:
    text = (ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line:
                commands.append(line)
    return commands


def test_tutorial_lists_exactly_the_tested_commands():
    assert _tutorial_commands() == list(TUTORIAL)


def test_tutorial_commands_run(tmp_path, monkeypatch, capsys, one_thread):
    from rlkl.cli import main

    monkeypatch.chdir(tmp_path)  # an empty directory: every path the commands write is relative to it
    outputs = {}
    for command, variant in TUTORIAL.items():
        if variant == "skip":
            continue
        if variant == "example":
            assert (ROOT / command.split()[-1]).is_file(), command
            continue
        args = shlex.split(variant) if variant else shlex.split(command)[1:]
        status = main(args)
        out = capsys.readouterr().out
        assert status == 0, (command, out)
        outputs[args[0] + (args[args.index("--method") + 1] if args[0] == "train" else "")] = out
    assert "verdicts as predicted" in outputs["verify"]
    assert re.search(r"grpo\s+V3T3P2-binary-s0\s+BIASED", outputs["audit"])
    assert re.search(r"frpo\s+V3T3P2-binary-s0\s+EXACT", outputs["audit"])
    assert "eval pass@1: reference" in outputs["traingrpo"] and "eval pass@1: reference" in outputs["trainfrpo"]
    assert "grpo, β=" in outputs["plot"] and "frpo, β=" in outputs["plot"]
    assert (tmp_path / "runs" / "plot" / "grpo_vs_frpo.png").stat().st_size > 1000
    assert (tmp_path / "runs" / "figures" / "fig_grpo_utility.png").stat().st_size > 1000


def test_functions_in_the_library_are_at_most_60_lines():
    # the project's rule (functions in rlkl/ ≤ 60 lines, docstring included): counted from `def` to the last line
    import ast

    long = []
    for path in sorted((ROOT / "rlkl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, long
