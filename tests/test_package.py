"""rlkl is a real package: the wheel holds derivations/, experiments/, paper_figures/ and benchmarks/ (as rlkl.*),
building it leaves nothing in the tree, and every command works from the wheel in a fresh venv, outside the checkout.

The fast tests build the wheel from a copy of the tracked files (a few seconds, offline: the current environment's
setuptools, no build isolation). The slow one installs that wheel into a fresh venv and runs the commands from an
empty directory (≈ 1 min on 2 cores: `pytest -m slow tests/test_package.py`). To stay quick and offline the fresh venv
gets its dependencies (torch, sympy, ...) from this environment's site-packages through a ``.pth`` file — the
equivalent of ``--system-site-packages`` for a venv — and the wheel itself is installed with ``--no-deps``;
``pip check`` would flag a dependency the wheel declares and this environment lacks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import rlkl

ROOT = Path(__file__).resolve().parents[1]
#: top-level folders of the checkout and the package each one is installed as
MAPPED = {"rlkl": "rlkl", "derivations": "rlkl/derivations", "experiments": "rlkl/experiments",
          "paper_figures": "rlkl/paper_figures", "benchmarks": "rlkl/benchmarks"}


#: what a tree outside git (a copy of the tracked files, e.g. the planted-bug runs' `scripts/mutants.py`) holds
#: besides its sources: environments, caches and build outputs, never part of a clone
_NOT_SOURCES = (".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "runs", ".pytest_cache", ".hypothesis",
                "mutants")


def _tracked_copy(dest: Path) -> Path:
    """The files git tracks (plus untracked, not ignored ones), copied to ``dest``: the tree a clone would have.
    Outside a git checkout: the tree without environments, caches and build outputs (`_NOT_SOURCES`)."""
    res = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True)
    if res.returncode != 0:
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*_NOT_SOURCES), dirs_exist_ok=True)
        return dest
    for rel in filter(None, res.stdout.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, Path]:
    """(the built wheel, the source copy it was built from)."""
    src = _tracked_copy(tmp_path_factory.mktemp("src"))
    dist = tmp_path_factory.mktemp("dist")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(dist)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (whl,) = dist.glob("rlkl-*.whl")
    return whl, src


def test_wheel_holds_every_package_folder(wheel):
    whl, src = wheel
    names = set(zipfile.ZipFile(whl).namelist())
    for folder, installed in MAPPED.items():
        for init in (src / folder).rglob("__init__.py"):
            rel = init.relative_to(src / folder).parent
            assert f"{installed}/{rel.as_posix() + '/' if str(rel) != '.' else ''}__init__.py" in names, init
        for py in (src / folder).rglob("*.py"):
            assert f"{installed}/{py.relative_to(src / folder).as_posix()}" in names, py
    assert f"rlkl-{rlkl.__version__}.dist-info/METADATA" in names
    assert not any(n.startswith(("tests/", "derivations/", "experiments/", "_build_backend/")) for n in names)


def test_building_leaves_no_build_dir_in_the_tree(wheel):
    _, src = wheel
    assert not (src / "build").exists()
    assert not list(src.glob("*.egg-info"))


def test_version_is_the_package_metadata_version(capsys):
    from importlib.metadata import version

    from rlkl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"rlkl {rlkl.__version__}" == f"rlkl {version('rlkl')}"


def _fresh_venv(path: Path, whl: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    vpy = path / "bin" / "python"
    purelib = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # dependencies from this environment (read after the venv's own site-packages, so the wheel's rlkl wins)
    (Path(purelib) / "_rlkl_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "--no-deps", "-q", str(whl)],
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0 and "no such option: --python" in res.stderr:  # pip < 22.3: install with the venv's pip
        subprocess.run([str(vpy), "-m", "ensurepip", "-q"], check=True, timeout=300)
        res = subprocess.run([str(vpy), "-m", "pip", "install", "--no-deps", "-q", str(whl)], capture_output=True,
                             text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return path / "bin" / "rlkl"


@pytest.mark.slow
def test_every_command_works_from_the_wheel_outside_the_checkout(wheel, tmp_path):
    whl, _ = wheel
    exe = _fresh_venv(tmp_path / "venv", whl)
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["MPLBACKEND"] = "Agg"

    def rlkl_cmd(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        res = subprocess.run([str(exe), *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, f"rlkl {' '.join(args)}\n{res.stdout}\n{res.stderr}"
        return res

    assert rlkl_cmd("--version").stdout.strip() == f"rlkl {rlkl.__version__}"
    where = subprocess.run([str(exe.parent / "python"), "-c", "import rlkl.derivations as d; print(d.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert str(tmp_path / "venv") in where and str(ROOT) not in where  # the wheel's copy, not the checkout's

    rows = json.loads(rlkl_cmd("verify", "--json").stdout)
    ran = {s: [r for r in rows if r["section"] == s and r["status"] != "SKIP"] for s in ("estimators", "derivations",
                                                                                         "audit")}
    assert all(ran.values()), {s: len(v) for s, v in ran.items()}  # every section ran, derivations included
    assert len(ran["derivations"]) >= 30
    assert all(r["status"] != "FAIL" for r in rows)

    out = rlkl_cmd("derive", "--only", "kl_estimators").stdout
    assert "PASS" in out and "0 FAIL" in out
    rlkl_cmd("figures", "--quick", "--only", "grpo_utility", "--only", "kl_estimators", "--out", "figs")
    for name in ("fig_grpo_utility", "fig_kl_estimators"):
        assert (work / "figs" / f"{name}.png").stat().st_size > 1000
    listed = rlkl_cmd("bench", "--list").stdout
    assert "exact_engine" in listed and "trainer_vs_trl" in listed
    assert sorted(p.name for p in work.iterdir()) == ["figs"]  # nothing written outside --out
