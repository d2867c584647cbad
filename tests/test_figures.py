"""`rlkl figures --quick` produces every figure (PNG + PDF) with its data and config; the teaching examples run.

The quick figures run is what CI runs (~50 s on 2 cores); the examples are smoke-tested as subprocesses, as a
lecturer would run them, and their key printed numbers are checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlkl.figures import FIGURE_NAMES, FIGURES

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def test_figures_quick_produces_every_figure(tmp_path):
    out = tmp_path / "figs"
    res = _run(["-m", "rlkl", "figures", "--quick", "--out", str(out)], timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mode"] == "quick"
    assert [r["name"] for r in manifest["figures"]] == list(FIGURE_NAMES)
    for rec in manifest["figures"]:
        assert rec["status"] == "ok", rec
        for ext in (".png", ".pdf"):
            f = out / f"{rec['name']}{ext}"
            assert f.exists() and f.stat().st_size > 1000, f
        data_dir = out / "data" / rec["name"]
        cfg = json.loads((data_dir / "config.json").read_text())
        assert cfg["experiment"] == rec["name"] and cfg["quick"] is True and cfg["seed"] == 0
        assert (out / rec["data"]).exists()
    assert (out / "fig_grpo_utility.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "fig_grpo_utility.pdf").read_bytes()[:5] == b"%PDF-"


def test_figures_cli_list_and_unknown_name(capsys):
    from rlkl.cli import main

    assert main(["figures", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(f.name in listed for f in FIGURES)
    assert main(["figures", "--only", "no_such_figure", "--out", "unused"]) == 2
    assert "unknown figure" in capsys.readouterr().err


EXAMPLES = {
    "k1_loss_does_nothing.py": ["zero: no regularization"],
    "k3_loss_is_forward_kl.py": ["k2 matches the reverse KL"],
    "future_kl_term.py": ["frpo"],
    "grpo_arcsin_utility.py": ["2asin(sqrt p)", "exact w_G"],
    "rpg_surrogates_agree.py": ["Same gradients"],
}


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs(script):
    path = ROOT / "examples" / script
    assert len(path.read_text().splitlines()) <= 60, "teaching examples stay short"
    res = _run([str(path)], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    for needle in EXAMPLES[script]:
        assert needle in res.stdout


def test_examples_print_the_claimed_numbers():
    out = _run([str(ROOT / "examples" / "k3_loss_is_forward_kl.py")], timeout=120).stdout
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in out.splitlines()
            if line[:2] in ("k1", "k2", "k3") and len(line.split()) == 3}
    assert rows["k2"][0] < 1e-12 and rows["k2"][1] > 1e-3  # k2 loss = reverse-KL gradient
    assert rows["k3"][1] < 1e-12 and rows["k3"][0] > 1e-3  # k3 loss = forward-KL gradient
    out = _run([str(ROOT / "examples" / "rpg_surrogates_agree.py")], timeout=120).stdout
    diffs = [float(line.split()[2]) for line in out.splitlines() if line.split()[:1] and line.split()[0] in
             ("fkl", "rkl", "ufkl", "urkl")]
    assert len(diffs) == 8 and max(diffs) < 1e-12
