"""`rlkl derive`: PASS lines, --json records, --latex document, a seeded wrong identity FAILs with its residual,
`verify_rows` for `rlkl verify`, and schulman_table against Monte Carlo."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlkl import derive
from rlkl.cli import main as cli_main
from rlkl.report import Verdict

REPO = Path(__file__).resolve().parents[1]


def test_derive_prints_one_pass_line_per_identity(capsys):
    rc = cli_main(["derive", "--only", "k3_unnormalized"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = [ln for ln in out.splitlines() if ln.startswith(("PASS", "FAIL", "SKIP"))]
    assert len(lines) >= 4
    assert all(ln.startswith("PASS") for ln in lines)
    assert any("UKL(π_old‖π_θ)" in ln and "RPG arXiv 2505.17508" in ln for ln in lines)
    assert "0 FAIL" in out


def test_derive_json_records(capsys):
    rc = cli_main(["derive", "--json", "--only", "grpo_utility"])
    records = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(records) == 3
    for rec in records:
        assert {"claim", "source", "status", "seconds"} <= set(rec)
        assert rec["status"] == "PASS"
        assert isinstance(rec["seconds"], float) and rec["seconds"] >= 0
        assert rec["steps"], rec["name"]


def test_derive_latex_writes_a_markdown_document(tmp_path, capsys):
    out = tmp_path / "sub" / "derivations.md"
    rc = cli_main(["derive", "--only", "npg_fisher", "--latex", str(out)])
    capsys.readouterr()
    assert rc == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# rlkl — executable derivations")
    assert "Fisher" in text and "RPG arXiv 2505.17508" in text
    assert text.count("$$") >= 4 and text.count("$$") % 2 == 0  # display math blocks are closed
    assert "✓" in text and "✗" not in text


def test_seeded_wrong_identity_fails_with_residual(tmp_path):
    wrong = tmp_path / "wrong_identity.py"
    wrong.write_text(textwrap.dedent('''
        import sympy as sp
        from derivations._framework import identity

        @identity("deliberately wrong: (a + b)^2 = a^2 + b^2", "test seed")
        def deliberately_wrong(d):
            a, b = sp.symbols("a b", real=True)
            d.eq((a + b) ** 2, a ** 2 + b ** 2, "square without the cross term")
    '''))
    proc = subprocess.run([sys.executable, "-m", "rlkl", "derive", "--extra", str(wrong), "--only", "deliberately"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL" in proc.stdout
    assert "residual = 2*a*b" in proc.stdout
    assert "square without the cross term" in proc.stdout


def test_verify_rows_are_verdicts(monkeypatch):
    monkeypatch.setattr(derive, "select", lambda registry, only=None, quick=False: [
        registry["k3_unnormalized.k3_forward"], registry["loss_side_kl.k3_reward"]])
    rows = derive.verify_rows(quick=True)
    assert len(rows) == 2
    for r in rows:
        assert isinstance(r, Verdict)
        assert r.section == "derivations" and r.status == "PASS" and r.ok
        assert r.source and r.claim and r.seconds > 0


def test_quick_mode_skips_slow_identities(monkeypatch):
    from derivations._framework import Identity

    slow = Identity("t.slow", "a slow claim", "test", lambda d: None, "t", slow=True)
    monkeypatch.setattr(derive, "select", lambda registry, only=None, quick=False: [slow])
    rows = derive.verify_rows(quick=True)
    assert rows[0].status == "SKIP"
    rows = derive.verify_rows(quick=False)
    assert rows[0].status == "PASS"


def test_missing_source_tree_is_reported(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(derive, "DERIVATIONS_DIR", tmp_path / "derivations")
    rows = derive.verify_rows(quick=True)
    assert len(rows) == 1 and rows[0].status == "SKIP" and "source tree" in rows[0].detail
    assert cli_main(["derive"]) == 2
    assert "source tree" in capsys.readouterr().err


def test_unknown_filter_is_an_error(capsys):
    assert cli_main(["derive", "--only", "no-such-identity-xyz"]) == 2


@pytest.mark.parametrize("mu", [0.1, 1.0])
def test_schulman_table_vs_monte_carlo(mu):
    from derivations.kl_estimators import monte_carlo, schulman_table

    table = schulman_table(mu)
    mc = monte_carlo(mu, n=500_000, seed=7)
    kl = mu ** 2 / 2
    for name in ("k1", "k2", "k3"):
        bias, std = table[name]
        mc_bias = mc[name]["mean"] / kl - 1
        mc_std = mc[name]["var"] ** 0.5 / kl
        # standard errors of the ratios (delta method for the std)
        se_bias = mc[name]["se_mean"] / kl
        se_std = mc[name]["se_var"] / (2 * mc[name]["var"] ** 0.5) / kl
        assert abs(mc_bias - bias) <= 4 * se_bias, (name, mc_bias, bias)
        assert abs(mc_std - std) <= 4 * se_std, (name, mc_std, std)
    # the qualitative ordering of the note: k1 is by far the noisiest at small μ, k2 is biased, k3 is not
    if mu == 0.1:
        assert table["k1"][1] > 10 * table["k3"][1]
    assert table["k2"][0] > 0 and table["k3"][0] == 0.0
