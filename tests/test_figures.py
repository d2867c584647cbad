"""`rlkl figures --quick` produces every figure (PNG + PDF) with its data and config; `rlkl plot` draws the curves of
the LM runs that run wrote.

The quick figures run (~20–50 s on 2 cores) happens once per test session (module fixture ``quick_figures``) and every
test here reads its output; it runs as a subprocess, as a user would run it.
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


def _run(args: list[str], timeout: float, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_figures(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("figs")
    res = _run(["-m", "rlkl", "figures", "--quick", "--out", str(out)], timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def test_figures_quick_produces_every_figure(quick_figures):
    out = quick_figures
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


def test_lm_figure_names_registry_methods_and_beta(quick_figures):
    from rlkl.methods import REGISTRY
    from rlkl.paper_figures.fig_lm_training import legend_entries

    data = json.loads((quick_figures / "data" / "fig_lm_training" / "lm_training.json").read_text())
    entries = legend_entries(data)
    assert entries, "no curve"
    for variant, label in entries.items():
        method = data["variants"][variant]["method"]
        assert method in REGISTRY and label.startswith(method), (variant, label)
    betas = {v["beta"] for v in data["variants"].values()}
    assert betas == {0.0, 0.05}  # no_kl has no KL term; grpo and frpo ran at the quick β
    assert "β" in data["config_line"] and "G=" in data["config_line"]


def test_figures_cli_list_and_unknown_name(capsys):
    from rlkl.cli import main

    assert main(["figures", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(f.name in listed for f in FIGURES)
    assert main(["figures", "--only", "no_such_figure", "--out", "unused"]) == 2
    assert "unknown figure" in capsys.readouterr().err


# ---- rlkl plot on the LM runs of the quick figures -----------------------------------------------------------------

def _lm_runs(quick_figures: Path) -> list[Path]:
    runs = sorted((quick_figures / "data" / "fig_lm_training" / "lm_quick" / "runs").iterdir())
    assert len(runs) == 6  # 3 methods x 2 seeds
    return runs


def test_plot_reads_runs_as_rlkl_train_writes_them(quick_figures):
    from rlkl.plot import load_run, series

    for rd in _lm_runs(quick_figures):
        run = load_run(rd)
        cfg = json.loads((rd / "config.json").read_text())
        assert run.method == cfg["method"] and run.seed == cfg["seed"]
        expected_beta = cfg["beta"] if cfg["beta"] is not None else json.loads((rd / "method.json").read_text())["beta"]
        assert run.beta == expected_beta
        rows = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines() if x.strip()]
        steps, values = series(run, "eval_kl_rev_seq")
        assert values == [r["eval_kl_rev_seq"] for r in rows if "eval_kl_rev_seq" in r]
        assert steps == [r["step"] for r in rows if "eval_kl_rev_seq" in r] and steps[0] == 0
        steps, values = series(run, "clip_fraction")
        train = [r for r in rows if "diag/clip_fraction/low" in r]
        assert values == [r["diag/clip_fraction/low"] + r["diag/clip_fraction/high"] + r["diag/clip_fraction/dual"]
                          for r in train]
        ks = sorted(int(k.split("@")[1]) for k in rows[0] if k.startswith("eval_pass@"))
        assert series(run, "pass@max")[1] == [r[f"eval_pass@{ks[-1]}"] for r in rows if "eval_pass@1" in r]


def test_plot_labels_runs_by_method_beta_and_seed(quick_figures):
    from rlkl.plot import labels, load_run

    runs = [load_run(rd) for rd in _lm_runs(quick_figures)]
    got = labels(runs)
    assert len(set(got)) == len(runs)
    for run, label in zip(runs, got):
        assert label == f"{run.method}, β={run.beta:g}, seed {run.seed}"
    assert labels(runs[:1]) == [f"{runs[0].method}, β={runs[0].beta:g}"]  # one run: no seed needed


def test_plot_cli_writes_png_and_pdf(quick_figures, tmp_path):
    runs = [str(p) for p in _lm_runs(quick_figures)]
    res = _run(["-m", "rlkl", "plot", *runs, "--out", str(tmp_path / "curves"), "--smooth", "2"], timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    for ext in (".png", ".pdf"):
        assert (tmp_path / f"curves{ext}").stat().st_size > 1000
    assert "grpo, β=0.05, seed 0" in res.stdout


def test_plot_rejects_what_is_not_a_run_dir(tmp_path, capsys):
    from rlkl.cli import main

    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a run dir" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\nnot json\n')
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "metrics.jsonl:2 is not a JSON row" in capsys.readouterr().err


def test_plot_labels_name_k_and_unclipped(tmp_path):
    """Frontier runs of one RPG method with and without its clip get distinct labels without the dir name."""
    from rlkl.plot import labels, load_run

    dirs = []
    for name, extra in (("clip", {"updates_per_batch": 4}), ("noclip", {"updates_per_batch": 4, "unclipped": True}),
                        ("k1", {})):
        d = tmp_path / name
        d.mkdir()
        cfg = {"method": "rpg_reinforce_urkl", "beta": 0.3, "seed": 0, "updates_per_batch": 1, "unclipped": False}
        (d / "config.json").write_text(json.dumps({**cfg, **extra}))
        (d / "metrics.jsonl").write_text('{"step": 0, "eval_pass@1": 0.5}\n')
        dirs.append(d)
    got = labels([load_run(d) for d in dirs])
    assert got == ["rpg_reinforce_urkl (K=4), β=0.3", "rpg_reinforce_urkl (K=4, unclipped), β=0.3",
                   "rpg_reinforce_urkl, β=0.3"]
