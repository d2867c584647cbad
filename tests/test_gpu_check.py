"""scripts/gpu_check.sh and its helper: the CPU dry path of the GPU check (the GPU path itself needs a CUDA
machine; none was available when this was written)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _helper():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_parity_on_cpu_passes_and_a_missing_device_is_a_clear_error(capsys, one_thread):
    mod = _helper()
    assert mod.main(["parity", "--device", "cpu", "--methods", "grpo", "frpo"]) == 0
    out = capsys.readouterr().out
    assert "parity grpo" in out and "parity GPT logits" in out and "FAIL" not in out
    import torch

    if not torch.cuda.is_available():
        assert mod.main(["parity", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_throughput_reads_a_run(tmp_path, capsys, one_thread):
    import json

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"prompts_per_step": 2, "group_size": 4, "device": "cpu",
                                                 "compile": False}))
    rows = [{"step": 0}] + [{"step": i, "time/step": 0.5, "response_tokens": 16} for i in range(1, 6)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert _helper().main(["throughput", str(run)]) == 0
    assert "16 completions/s, 32 response tokens/s over 2 steps" in capsys.readouterr().out  # steps 4, 5


@pytest.mark.slow
def test_gpu_check_script_dry_path_on_cpu(tmp_path):
    """The whole script on CPU with tiny step counts (a few minutes on 2 loaded cores)."""
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--quick", "--out",
                          str(tmp_path / "gc"), "--python", sys.executable], cwd=ROOT, capture_output=True, text=True,
                         timeout=1800)
    assert res.returncode == 0, res.stdout + res.stderr
    log = (tmp_path / "gc" / "log.txt").read_text()
    assert "gpu_check passed on cpu" in log and "completions/s" in log and "FAIL" not in log
