"""The teaching scripts in examples/: each runs as a plain script (as a lecturer would, in a subprocess), prints the
numbers its text claims, opens as a notebook (jupytext percent format) and imports only rlkl's public API."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
FLOAT = r"[-+]?\d+\.\d+(?:e[-+]?\d+)?"


@lru_cache(maxsize=None)
def _output(script: str) -> str:
    env = dict(os.environ, MPLBACKEND="Agg")
    res = subprocess.run([sys.executable, str(ROOT / "examples" / script)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_there_are_examples():
    assert set(EXAMPLES) >= {"k1_loss_does_nothing.py", "k3_loss_is_forward_kl.py", "future_kl_term.py",
                             "grpo_arcsin_utility.py", "rpg_surrogates_agree.py"}


@pytest.mark.parametrize("script", EXAMPLES)
def test_opens_as_a_notebook_and_says_how_to_run(script):
    jupytext = pytest.importorskip("jupytext", reason="jupytext is in the test extra: ./setup.sh test")
    text = (ROOT / "examples" / script).read_text()
    nb = jupytext.reads(text, fmt="py:percent")
    kinds = [c.cell_type for c in nb.cells]
    assert kinds[0] == "markdown" and kinds.count("code") >= 2, kinds
    assert nb.cells[0].source.startswith("# "), "the first cell is the title"
    assert f"`.venv/bin/python examples/{script}`" in nb.cells[0].source
    assert "docs/theory.md T" in nb.cells[0].source, "cite the claim it teaches"
    assert len(text.splitlines()) <= 100, "teaching examples stay short"


def _rlkl_imports(script: str) -> list[tuple[str, str]]:
    tree = ast.parse((ROOT / "examples" / script).read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rlkl":
            out += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.split(".")[0] == "rlkl"]
    return out


@pytest.mark.parametrize("script", EXAMPLES)
def test_uses_only_the_public_api(script):
    import rlkl.toy

    for module, name in _rlkl_imports(script):
        assert not any(part.startswith("_") for part in module.split(".") + [name]), (module, name)
        if module.startswith("rlkl.toy"):  # the exact engine's public surface is its package-level __all__
            assert module == "rlkl.toy" and name in rlkl.toy.__all__, (module, name)
        if name:
            assert hasattr(importlib.import_module(module), name), (module, name)


def _table(out: str, first: tuple[str, ...], ncols: int) -> dict[str, list[float]]:
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in first and len(parts) == ncols:
            rows.setdefault(parts[0], []).append([float(x) for x in parts[1:ncols]])
    return rows


def test_k1_loss_does_nothing():
    out = _output("k1_loss_does_nothing.py")
    kl = float(re.search(rf"KL\(pi\|\|pi_ref\)\s+=\s+({FLOAT})", out).group(1))
    e_k1 = float(re.search(rf"E\[k1\] \(exact\)\s+=\s+({FLOAT})", out).group(1))
    grad_k1 = float(re.search(rf"\|E\[grad k1 loss\]\|\s+=\s+({FLOAT})", out).group(1))
    grad_kl = float(re.search(rf"\|grad KL\(pi\|\|pi_ref\)\|\s+=\s+({FLOAT})", out).group(1))
    assert e_k1 == kl > 0.1  # the value is unbiased (printed to 4 decimals)
    assert grad_k1 < 1e-12 < 0.1 < grad_kl  # the expected gradient is zero, the true one is not
    mc = [float(x) for x in re.findall(rf"\|mean grad of k1 loss\| = ({FLOAT})", out)]
    assert len(mc) == 3 and mc[0] > mc[1] > mc[2]  # noise shrinking with n (1/√n: 0.08, 0.003, 0.0008)


def test_k3_loss_is_forward_kl():
    rows = {k: v[0] for k, v in _table(_output("k3_loss_is_forward_kl.py"), ("k1", "k2", "k3"), 3).items()}
    assert rows["k2"][0] < 1e-12 and rows["k2"][1] > 1e-3  # k2 loss = reverse-KL gradient
    assert rows["k3"][1] < 1e-12 and rows["k3"][0] > 1e-3  # k3 loss = forward-KL gradient
    assert min(rows["k1"]) > 1e-3  # k1 matches neither


def test_future_kl_term():
    out = _output("future_kl_term.py")
    errs = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("1", "2", "4"):
            errs[(int(parts[0]), parts[1])] = float(parts[2])
    assert len(errs) == 9
    assert all(errs[(T, "frpo")] < 1e-12 for T in (1, 2, 4))  # the future return is exact at every horizon
    assert errs[(1, "grpo_k2_loss")] < 1e-12  # no future at T = 1: the local reverse-KL gradient is exact
    assert all(errs[(T, "grpo_k2_loss")] > 0.05 for T in (2, 4))  # beyond T = 1 it misses the future term
    assert all(errs[(T, "grpo")] > 0.01 for T in (1, 2, 4))  # k3 (forward direction) is wrong even at T = 1


def test_grpo_arcsin_utility():
    out = _output("grpo_arcsin_utility.py")
    table = _table(out, ("0.01", "0.1", "0.3", "0.5", "0.7", "0.9", "0.99"), 6)
    for p_text, [(arcsin, u2, u4, u8, u64)] in table.items():
        p = float(p_text)
        assert u2 == pytest.approx(p, abs=5e-5)  # U_2(p) = p (printed to 4 decimals)
        assert u2 <= u4 <= u8 <= u64 < arcsin  # U_G grows with G toward 2·arcsin√p
    m = re.search(rf"exact w_G = ({FLOAT}), sampled = ({FLOAT}) ± ({FLOAT})", out)
    exact, sampled, se = map(float, m.groups())
    assert abs(sampled - exact) < 4 * se  # Monte Carlo within 4 standard errors
    assert 0 < se < 0.01


def test_rpg_surrogates_agree():
    out = _output("rpg_surrogates_agree.py")
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in
            ("fkl", "rkl", "ufkl", "urkl")]
    assert len(rows) == 8
    assert max(float(r[2]) for r in rows) < 1e-12  # same gradient on every sample
    assert all(abs(float(r[3]) - float(r[5])) > 1e-3 for r in rows)  # different loss values
