"""The pytest plugin as a user meets it: a test file in a fresh directory outside the repo, plain ``pytest``.

The plugin is found through the ``pytest11`` entry point of the installed rlkl (``pip install -e .`` /
``./setup.sh``): no conftest, no ``-p`` flag, no path to the checkout.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

USER_TEST = '''
import torch
from rlkl.objective import Objective

def rloo_loss(logp, batch):                        # REINFORCE with a leave-one-out baseline, summed over tokens
    r = batch.rewards.view(-1, batch.group_size)
    adv = (r - (r.sum(-1, keepdim=True) - r) / (batch.group_size - 1)).reshape(-1, 1)
    return -(adv * logp * batch.mask).sum(-1).mean()

def grpo_k3_loss(logp, batch, beta=0.1):           # GRPO: std-normalized advantage, k3 as the KL loss
    r = batch.rewards.view(-1, batch.group_size)
    adv = ((r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + 1e-6)).reshape(-1, 1)
    d = batch.logp_ref - logp
    tok = -adv * torch.exp(logp - batch.logp_old) + beta * (torch.exp(d) - d - 1)
    return ((tok * batch.mask).sum(-1) / batch.mask.sum(-1)).mean()

def test_rloo_optimizes_expected_reward(rlkl):
    rlkl.optimizes(rloo_loss, Objective("expected_reward", "none"))

def test_grpo_optimizes_kl_regularized_reward(rlkl):
    rlkl.optimizes(grpo_k3_loss, Objective("expected_reward", "reverse_kl", beta=0.1))
'''


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_plugin_is_registered_as_a_pytest11_entry_point():
    eps = {e.name: e.value for e in importlib.metadata.entry_points(group="pytest11")}
    assert eps.get("rlkl") == "rlkl.testing.plugin", (
        "rlkl's pytest plugin is not installed: reinstall rlkl (`./setup.sh test` or `pip install -e .`) so its "
        "pytest11 entry point is registered")


def test_plain_pytest_in_a_fresh_directory(tmp_path):
    assert ROOT not in tmp_path.parents  # outside the checkout: no conftest, no pyproject of rlkl
    (tmp_path / "test_my_loss.py").write_text(textwrap.dedent(USER_TEST))
    res = _run(tmp_path, "-q", "--rlkl-eos", "fixed")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out  # one failure
    assert "1 failed, 1 passed" in out, out
    assert "FAILED test_my_loss.py::test_grpo_optimizes_kl_regularized_reward" in out
    for words in ("does NOT optimize E[R] - 0.1*KL(pi||pi_ref)", "forward_direction", "future_kl_missing",
                  "reproduces rlkl's `grpo`"):
        assert words in out, (words, out)
    assert "test_rloo_optimizes_expected_reward" not in out.split("short test summary")[-1]


def test_ini_options_marker_and_header(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\nrlkl_seeds = 0 1\nrlkl_group_size = 3\n")
    (tmp_path / "test_settings.py").write_text(textwrap.dedent('''
        import pytest

        def test_ini(rlkl_settings, rlkl_trees):
            assert rlkl_settings.seeds == (0, 1) and rlkl_settings.group_size == 3 and rlkl_settings.off_policy
            assert len(rlkl_trees) == 4  # (fixed-length, EOS) x 2 seeds

        @pytest.mark.rlkl(eos="eos", group_size=2)
        def test_marker(rlkl_settings, rlkl_trees):
            assert rlkl_settings.group_size == 2 and all(t.has_eos for t in rlkl_trees)
    '''))
    res = _run(tmp_path, "--rlkl-off-policy", "true")  # command line over ini, marker over both
    assert res.returncode == 0, res.stdout + res.stderr
    assert "rlkl: trees V3 T3 P2 (fixed-length + EOS), seeds [0, 1], G=3, off-policy" in res.stdout, res.stdout


def test_a_bad_option_is_a_usage_error(tmp_path):
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    res = _run(tmp_path, "-q", "--rlkl-eos", "sometimes")
    assert res.returncode == 4 and "eos='sometimes'" in res.stdout + res.stderr, res.stdout + res.stderr


def test_the_docs_test_file_passes():
    """The copy-paste file of docs/testing.md, run in-process with the plugin's fixture object."""
    from rlkl.testing.plugin import RlklChecker, RlklSettings

    text = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    code = text.split("```python", 1)[1].split("```", 1)[0]
    ns: dict = {}
    exec(compile(code, "docs/testing.md", "exec"), ns)
    tests = [v for k, v in ns.items() if k.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        test(RlklChecker(RlklSettings()))


def test_loading_the_plugin_imports_no_torch():
    """Every pytest session of an environment with rlkl installed loads the plugin: it must stay light (torch, the
    engine and the adapters load when a test first uses an rlkl fixture or name)."""
    code = ("import sys, rlkl.testing.plugin, rlkl.testing\n"
            "heavy = sorted(m for m in ('torch', 'rlkl.toy', 'rlkl.testing.asserts', 'rlkl.testing.adapters') "
            "if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_public_name_of_rlkl_testing_loads_from_its_module():
    import rlkl.testing as rt
    from rlkl.testing import adapters, asserts, batches

    for name in rt.__all__:
        value = getattr(rt, name)
        assert any(getattr(mod, name, None) is value for mod in (adapters, asserts, batches)), name
    assert set(rt.__all__) <= set(dir(rt))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        rt.no_such_name  # noqa: B018
