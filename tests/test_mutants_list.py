"""The curated planted bugs of scripts/mutants.py still apply to this tree (so the list cannot rot silently).

The planted-bug score itself (each mutant through `rlkl verify --full` and the default pytest run) is its own
command, not part of the default run: docs/mutation.md.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def mutants():
    spec = importlib.util.spec_from_file_location("rlkl_mutants_script", ROOT / "scripts" / "mutants.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules[spec.name]


def test_every_curated_snippet_occurs_once_and_the_mutated_file_compiles(mutants):
    assert mutants.check_all(mutants.MUTANTS) == []


def test_the_list_covers_the_core(mutants):
    assert len(mutants.MUTANTS) >= 45
    files = {m.path for m in mutants.MUTANTS}
    assert set(mutants.TESTS_BY_MODULE) == files  # every mutated module has its mapped test files
    for tests in mutants.TESTS_BY_MODULE.values():
        assert all((ROOT / t).is_file() for t in tests), tests
    # the rollout corrections and the engine's sampler are planted into as well (rlkl/sampling.py, components)
    assert "rlkl/sampling.py" in files
    ids = {m.id for m in mutants.MUTANTS}
    assert {"tis-cap-direction", "mis-lower-bound-direction", "seq-tis-token-ratio", "mask-replay-not-renormalized",
            "sampler-kept-mass-untempered"} <= ids


def test_a_rotten_snippet_is_refused(mutants, tmp_path):
    (tmp_path / "rlkl").mkdir()
    (tmp_path / "rlkl" / "x.py").write_text("a = 1\na = 1\n")
    twice = mutants.Mutant("twice", "rlkl/x.py", "a = 1", "a = 2", "occurs twice")
    gone = mutants.Mutant("gone", "rlkl/x.py", "b = 1", "b = 2", "does not occur")
    problems = mutants.check_all([twice, gone], tmp_path)
    assert len(problems) == 2 and "2 times" in problems[0] and "0 times" in problems[1]
    with pytest.raises(mutants.MutantRot):
        mutants.mutated_text(twice, tmp_path)
