"""Run directories that survive kills, torn files, another reference or thread count, and Ctrl-C.

The SIGKILL tests run the real `rlkl train` / `rlkl sft` commands in a subprocess, kill them at seeded random
points (after a random number of metric rows plus a random delay, so a kill can land mid-step or mid-write),
resume, and compare with the uninterrupted run: every metric equal bit for bit (timing keys aside), no row lost
or duplicated.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlkl import cli
from rlkl._io import sha256_file
from rlkl.lm.sft import SFTConfig, load_reference, save_reference, train_sft
from rlkl.lm.train import TIMING_KEYS, TrainConfig, resume, train
from rlkl.methods import get_method

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in the root conftest.py
SFT_TIMING = ("wall_time",)


@pytest.fixture(scope="module")
def ref_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    cfg = SFTConfig(task="addition", difficulty=1, n_layer=1, n_head=2, d_model=16, steps=40, batch_size=32, lr=1e-2,
                    warmup_steps=5, noise_rate=0.3, eval_prompts=4, eval_samples=2, eval_every=40, num_threads=1)
    train_sft(cfg, out, progress=False)
    return str(out / "reference.pt")


def _cfg(ref_path, **kw):
    base = dict(method="grpo", task="addition", difficulty=1, ref=ref_path, steps=4, prompts_per_step=2, group_size=4,
                lr=1e-3, warmup_steps=2, eval_every=2, eval_prompts=4, eval_samples=2, checkpoint_every=2,
                num_threads=1, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _strip(rows, timing=TIMING_KEYS):
    return [{k: v for k, v in r.items() if k not in timing} for r in rows]


def _disk(run):
    return [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]


# ---- torn, lost and damaged metric logs ---------------------------------------------------------------


@pytest.mark.parametrize("damage", ["torn_last_line", "lost_tail", "damaged_middle", "deleted", "rows_after_ckpt"])
def test_resume_repairs_the_metric_log_without_a_gap(ref_path, tmp_path, capsys, damage):
    full = train(_cfg(ref_path), tmp_path / "full", progress=False)
    run = tmp_path / "part"
    train(_cfg(ref_path), run, progress=False, stop_after=2)  # checkpoint at step 2
    m = run / "metrics.jsonl"
    lines = m.read_text().splitlines(keepends=True)
    assert len(lines) == 3
    if damage == "torn_last_line":
        m.write_text("".join(lines) + lines[1][: len(lines[1]) // 2])  # a kill in the middle of the next write
    elif damage == "lost_tail":
        m.write_text(lines[0])  # rows 1, 2 lost (e.g. an old crash during a rewrite)
    elif damage == "damaged_middle":
        m.write_text(lines[0] + "garbage\n" + lines[2])
    elif damage == "deleted":
        m.unlink()
    else:  # a kill after a row was written but before its checkpoint
        m.write_text("".join(lines) + json.dumps({**json.loads(lines[2]), "step": 3}) + "\n")
    rows = resume(run, progress=False)
    err = capsys.readouterr().err
    expected_note = {"torn_last_line": "torn last line", "lost_tail": "restored from the checkpoint",
                     "damaged_middle": "rewriting it from the checkpoint", "deleted": "restored from the checkpoint",
                     "rows_after_ckpt": "dropped 1 metric row(s) after step 2"}[damage]
    assert expected_note in err
    assert [r["step"] for r in _disk(run)] == list(range(5))  # no row lost, none duplicated
    assert _strip(_disk(run)) == _strip(rows) == _strip(full)


def test_first_checkpoint_is_written_after_the_step0_evaluation(ref_path, tmp_path, monkeypatch):
    """A crash in step 1 (checkpoint_every = 100) still leaves a resumable run at step 0."""
    import rlkl.lm.train as T

    full = train(_cfg(ref_path, checkpoint_every=100), tmp_path / "full", progress=False)
    real = T._update

    def crash(*a, **k):
        raise RuntimeError("power cut")

    monkeypatch.setattr(T, "_update", crash)
    with pytest.raises(RuntimeError):
        train(_cfg(ref_path, checkpoint_every=100), tmp_path / "run", progress=False)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 0
    monkeypatch.setattr(T, "_update", real)
    assert _strip(resume(tmp_path / "run", progress=False)) == _strip(full)


# ---- what a resume refuses ------------------------------------------------------------------------------


def test_resume_refuses_a_changed_reference_with_both_hashes(ref_path, tmp_path):
    ref = tmp_path / "reference.pt"
    ref.write_bytes(Path(ref_path).read_bytes())
    train(_cfg(str(ref)), tmp_path / "run", progress=False, stop_after=1)
    old = sha256_file(ref)
    model, task, payload = load_reference(ref)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # `rlkl sft --force` retrained it, say
    save_reference(ref, model, task, SFTConfig(**payload["sft_config"]), payload["eval"])
    new = sha256_file(ref)
    assert new != old
    with pytest.raises(ValueError, match="is not the file the run started from") as e:
        resume(tmp_path / "run", progress=False)
    assert old in str(e.value) and new in str(e.value)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["ref_sha256"] == old


def test_resume_refuses_another_thread_count(ref_path, tmp_path):
    train(_cfg(ref_path), tmp_path / "run", progress=False, stop_after=1)
    with pytest.raises(ValueError, match=r"with 2 torch thread.*checkpointed with 1,.*resume with --num_threads 1"):
        resume(tmp_path / "run", progress=False, num_threads=2)
    assert len(resume(tmp_path / "run", progress=False, num_threads=1)) == 5  # the same count is fine


@pytest.mark.parametrize("content", [b"", b"\x00junk\xff" * 10, "truncated", "not_a_checkpoint"])
def test_unreadable_checkpoint_is_a_one_line_error(ref_path, tmp_path, capsys, content):
    run = tmp_path / "run"
    train(_cfg(ref_path), run, progress=False, stop_after=1)
    ck = run / "checkpoint.pt"
    if content == "truncated":
        ck.write_bytes(ck.read_bytes()[:1000])
    elif content == "not_a_checkpoint":
        torch.save({"weights": torch.zeros(2)}, ck)
    else:
        ck.write_bytes(content)
    assert cli.main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlkl train: error:") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("content", [b"junk", "torch_dict", "directory"])
def test_junk_reference_is_a_one_line_error(tmp_path, capsys, content):
    ref = tmp_path / "ref.pt"
    if content == "torch_dict":
        torch.save({"state_dict": {}}, ref)
    elif content == "directory":
        ref.mkdir()
    else:
        ref.write_bytes(content)
    argv = ["train", "--ref", str(ref), "--difficulty", "1", "--out", str(tmp_path / "r"), "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlkl train: error:") and err.count("\n") == 1, err
    assert ("not an rlkl SFT reference" if content == "torch_dict" else "cannot be read" if content == b"junk"
            else "is a directory") in err


# ---- what the run records -------------------------------------------------------------------------------


def test_config_records_the_effective_beta_and_eval_keys_are_not_doubled(ref_path, tmp_path):
    cfg = _cfg(ref_path, method="frpo", steps=2)
    assert cfg.beta == get_method("frpo").beta  # None became the registered default
    rows = train(cfg, tmp_path / "r", progress=False)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    method = json.loads((tmp_path / "r" / "method.json").read_text())
    assert saved["beta"] is not None and saved["beta"] == method["beta"] == get_method("frpo").beta
    assert json.loads((tmp_path / "r" / "config.json").read_text()) == TrainConfig.from_dict(saved).to_dict()
    assert "eval_response_len" in rows[0] and not [k for r in rows for k in r if "eval_eval" in k]
    assert _cfg(ref_path, beta=0.25).beta == 0.25


def test_progress_bar_kl_is_the_summary_kl(ref_path, tmp_path, capsys):
    """Bar and summary both show kl_seq = eval_kl_rev_seq (exact per-sequence KL(π‖π_0) at the last eval)."""
    out = tmp_path / "r"
    argv = ["train", "--ref", ref_path, "--difficulty", "1", "--steps", "2", "--eval_every", "2", "--eval_prompts",
            "4", "--eval_samples", "2", "--prompts_per_step", "2", "--group_size", "4", "--out", str(out)]
    assert cli.main(argv) == 0
    cap = capsys.readouterr()
    kl = f"{_disk(out)[-1]['eval_kl_rev_seq']:.3f}"
    assert f"kl_seq={kl}" in cap.err  # the bar's last postfix
    assert f"kl_seq = exact KL(pi||pi_0) per sequence on eval prompts {kl}" in cap.out
    assert "kl=" not in cap.err.replace("kl_seq=", "")


def test_tensorboard_logs_every_metric(ref_path, tmp_path):
    pytest.importorskip("tensorboard", reason="optional extra: pip install 'rlkl[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = train(_cfg(ref_path, steps=3), tmp_path / "r", progress=False, stop_after=2, tensorboard=True)
    rows = resume(tmp_path / "r", progress=False, tensorboard=True)
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    numeric = {k for r in rows for k, v in r.items() if k != "step" and isinstance(v, (int, float))}
    assert numeric == set(acc.Tags()["scalars"])
    for key in ("reward_mean", "eval_pass@1", "kl_rev_seq"):
        logged = {e.step: e.value for e in acc.Scalars(key)}
        want = {r["step"]: r[key] for r in rows if key in r}
        assert logged.keys() == want.keys()  # one value per step: no duplicate after the resume
        assert all(abs(logged[s] - want[s]) <= 1e-6 * max(1.0, abs(want[s])) for s in want)  # stored as float32


def test_tensorboard_missing_is_a_clear_error(ref_path, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tb(name, *a, **k):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    with pytest.raises(ValueError, match=r"pip install 'rlkl\[tensorboard\]'"):
        train(_cfg(ref_path, steps=1), tmp_path / "r", progress=False, tensorboard=True)


# ---- SFT ------------------------------------------------------------------------------------------------


def _sft(**kw):
    base = dict(task="addition", difficulty=1, n_layer=1, n_head=2, d_model=16, steps=12, batch_size=16, lr=1e-2,
                warmup_steps=2, noise_rate=0.3, eval_prompts=4, eval_samples=2, eval_every=6, checkpoint_every=4,
                num_threads=1)
    base.update(kw)
    return SFTConfig(**base)


def test_sft_refuses_to_overwrite_without_force_and_resumes_exactly(tmp_path):
    full_model, full = train_sft(_sft(), tmp_path / "full", progress=False)
    out = tmp_path / "part"
    _, final = train_sft(_sft(), out, progress=False, stop_after=5)  # stopped: checkpoint at step 5
    assert final == {} and not (out / "reference.pt").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 5
    with pytest.raises(ValueError, match="interrupted SFT run.*--resume"):
        train_sft(_sft(), out, progress=False)
    model, final2 = train_sft(_sft(), out, progress=False, resume=True)
    assert _strip([final2], SFT_TIMING) == _strip([full], SFT_TIMING) and not (out / "checkpoint.pt").exists()
    for a, b in zip(full_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert _strip(_disk(out), SFT_TIMING) == _strip(_disk(tmp_path / "full"), SFT_TIMING)
    torch.save({"stale": 1}, out / "checkpoint.pt")  # a kill between writing reference.pt and removing the checkpoint
    _, again = train_sft(_sft(), out, progress=False, resume=True)  # resuming a finished run returns its result
    assert again == final2 and not (out / "checkpoint.pt").exists()
    before = sha256_file(out / "reference.pt")
    with pytest.raises(ValueError, match=r"already exists \(sha256 .*pass --force"):
        train_sft(_sft(seed=1), out, progress=False)
    assert sha256_file(out / "reference.pt") == before
    train_sft(_sft(seed=1), out, progress=False, force=True)
    assert sha256_file(out / "reference.pt") != before


def test_sft_default_path_is_seed_specific(tmp_path, monkeypatch, capsys):
    import argparse

    from rlkl.lm import cli_sft
    from rlkl.lm.train import default_ref_path

    assert default_ref_path("addition", 2, "cpu_tiny", 3).endswith(os.path.join("addition-d2-cpu_tiny-s3", "reference.pt"))
    parser = argparse.ArgumentParser()
    cli_sft.add_arguments(parser)
    cfg, out = cli_sft._config(parser.parse_args(["--seed", "5"]))
    assert out == os.path.join("runs", "sft", "addition-d2-cpu_tiny-s5") and cfg.seed == 5
    _, out0 = cli_sft._config(parser.parse_args([]))
    assert out0 != out


# ---- Ctrl-C and SIGKILL on the real commands ---------------------------------------------------------------

TRAIN_ARGS = ["--difficulty", "1", "--steps", "6", "--prompts_per_step", "2", "--group_size", "4", "--eval_every", "3",
              "--eval_prompts", "4", "--eval_samples", "2", "--checkpoint_every", "2", "--num_threads", "1", "--quiet"]
SFT_ARGS = ["--task", "addition", "--difficulty", "1", "--n_layer", "1", "--n_head", "2", "--d_model", "16",
            "--steps", "24", "--batch_size", "16", "--eval_prompts", "4", "--eval_samples", "2", "--eval_every", "12",
            "--checkpoint_every", "4", "--num_threads", "1", "--quiet"]


def _rlkl(argv, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "rlkl", *argv], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _interrupt(proc, metrics: Path, rows: int, delay: float, sig) -> bool:
    """Send ``sig`` once ``metrics`` holds ``rows`` lines (+ ``delay`` s); False when the run ended first."""
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 120:
        if metrics.exists() and metrics.read_text().count("\n") >= rows:
            time.sleep(delay)
            if proc.poll() is not None:
                return False
            proc.send_signal(sig)
            proc.communicate(timeout=120)
            return True
        time.sleep(0.005)
    proc.communicate(timeout=120)
    return False


def _kill_and_resume(start_argv, resume_argv, out: Path, n_kills: int, n_rows: int, seed: int, cwd) -> list[str]:
    """Run, SIGKILL at ``n_kills`` random points, resume each time, let it finish; returns stderr of the last run."""
    rng = random.Random(seed)
    done = start = 0
    def started() -> bool:  # a checkpoint, or a finished SFT reference: continue with the resume command
        return (out / "checkpoint.pt").exists() or (out / "reference.pt").exists()

    for _ in range(n_kills):
        argv = resume_argv if started() else start_argv
        rows = out.joinpath("metrics.jsonl").read_text().count("\n") if (out / "metrics.jsonl").exists() else 0
        target = rng.randint(min(rows + 1, n_rows), n_rows)
        if _interrupt(_rlkl(argv, cwd), out / "metrics.jsonl", target, rng.uniform(0.0, 0.05), signal.SIGKILL):
            done += 1
        start += 1
    argv = resume_argv if started() else start_argv
    p = _rlkl(argv, cwd)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert done >= 1, "no kill landed inside the run"
    return err


def _interrupted(command, argv, out: Path, cwd):
    """Ctrl-C the real command after 2 metric rows: exit 130, the resume command named, a checkpoint kept."""
    p = _rlkl(argv, cwd)
    assert _interrupt(p, out / "metrics.jsonl", 2, 0.0, signal.SIGINT)
    assert p.returncode == 130
    assert (out / "checkpoint.pt").exists()


def _kill_train(ref_path, tmp_path, n_kills, seed, steps="6", ctrl_c=False):
    args = [a if a != "6" else steps for a in TRAIN_ARGS]
    assert cli.main(["train", "--ref", ref_path, *args, "--out", str(tmp_path / "full")]) == 0
    out = tmp_path / "killed"
    start = ["train", "--ref", ref_path, *args, "--out", str(out)]
    if ctrl_c:
        _interrupted("train", start, out, tmp_path)
    err = _kill_and_resume(start, ["train", "--resume", str(out), "--quiet"], out, n_kills, int(steps), seed,
                           tmp_path)
    assert "Traceback" not in err
    full, got = _disk(tmp_path / "full"), _disk(out)
    assert [r["step"] for r in got] == list(range(int(steps) + 1))  # no row lost, none duplicated
    assert _strip(got) == _strip(full)


def _kill_sft(tmp_path, n_kills, seed, ctrl_c=False):
    assert cli.main(["sft", *SFT_ARGS, "--out", str(tmp_path / "sft_full")]) == 0
    out = tmp_path / "sft_killed"
    start = ["sft", *SFT_ARGS, "--out", str(out)]
    if ctrl_c:
        _interrupted("sft", start, out, tmp_path)
    _kill_and_resume(start, ["sft", "--resume", str(out), "--quiet"], out, n_kills, 23, seed, tmp_path)
    assert _strip(_disk(out), SFT_TIMING) == _strip(_disk(tmp_path / "sft_full"), SFT_TIMING)
    a, b = load_reference(tmp_path / "sft_full" / "reference.pt")[0], load_reference(out / "reference.pt")[0]
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


def test_sigkill_train_then_resume_equals_the_uninterrupted_run(ref_path, tmp_path):
    _kill_train(ref_path, tmp_path, n_kills=1, seed=0)  # (a real Ctrl-C of `rlkl train`: the slow variant)


def test_sigkill_sft_then_resume_equals_the_uninterrupted_run(tmp_path):
    _kill_sft(tmp_path, n_kills=1, seed=0)  # (a real Ctrl-C of the subprocess: the slow variant)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_many_times(ref_path, tmp_path, seed):
    _kill_train(ref_path, tmp_path / "t", n_kills=4, seed=seed, steps="12", ctrl_c=True)
    _kill_sft(tmp_path / "s", n_kills=4, seed=seed, ctrl_c=True)


@pytest.mark.parametrize("command", ["train", "sft"])
def test_ctrl_c_message(ref_path, tmp_path, command, capsys, monkeypatch):
    """In-process: the interrupted command's stderr names the resume command and has no traceback."""
    import rlkl.lm.runlog as runlog

    out = tmp_path / "run"
    real = runlog.GracefulStop.__enter__

    def enter(self):  # a Ctrl-C arrives as soon as the handler is installed
        res = real(self)
        if self.enabled:
            signal.raise_signal(signal.SIGINT)  # to this thread: kill(getpid()) may land on a torch worker
        return res

    monkeypatch.setattr(runlog.GracefulStop, "__enter__", enter)
    argv = (["train", "--ref", ref_path, *TRAIN_ARGS] if command == "train" else ["sft", *SFT_ARGS]) + ["--out", str(out)]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert f"rlkl {command} --resume {out}" in err and "Traceback" not in err
    assert (out / "checkpoint.pt").exists()


def test_every_logged_key_is_documented(ref_path, tmp_path):
    """docs/metrics.md names every key a train row (K = 2, refresh, partial credit) or an SFT row carries."""
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"`([^`]+)`", doc))
    rows = train(_cfg(ref_path, method="rpg_reinforce_urkl", updates_per_batch=2, ref_refresh_every=1,
                      partial_credit=True, steps=2), tmp_path / "r", progress=False)
    sft_rows = _disk(train_sft(_sft(steps=6, eval_every=6), tmp_path / "s", progress=False) and tmp_path / "s")

    def covered(key: str) -> bool:
        key = re.sub(r"pass@\d+$", "pass@k", key)
        if key in documented:
            return True
        head, _, last = key.rpartition("/")  # `diag/ratio/mean`, `/min`, `/max` style rows
        return bool(head) and f"/{last}" in documented and any(d.startswith(head + "/") for d in documented)

    missing = sorted({k for r in rows + sft_rows for k in r if not covered(k)})
    assert not missing, f"keys without a definition in docs/metrics.md: {missing}"
