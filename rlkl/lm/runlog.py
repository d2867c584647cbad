"""What `rlkl sft` and `rlkl train` share about a run directory: the metric log, checkpoints, Ctrl-C.

A run directory survives a kill at any instant:

- ``config.json``, ``method.json``, ``run.json`` and ``checkpoint.pt`` are replaced atomically
  (:mod:`rlkl._io`: temporary file, fsync, rename), so each holds either its old or its new content;
- ``metrics.jsonl`` is appended one flushed line per step and fsynced before every checkpoint; the checkpoint
  also carries every row up to its step, so a resume rewrites the log from the checkpoint (atomically): a torn
  last line or a lost tail can never leave a gap or a duplicate, and what was repaired is reported.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from rlkl._io import append_jsonl, atomic_torch_save, load_torch_file, read_jsonl, write_jsonl

CHECKPOINT_FORMAT = 2  # 2: the checkpoint carries the metric rows, the reference hash and the thread count


def note(prog: str, message: str) -> None:
    """A one-line note on stderr that does not break a tqdm bar."""
    tqdm.write(f"{prog}: note: {message}", file=sys.stderr)


class GracefulStop:
    """First Ctrl-C: finish the current step, checkpoint, stop. Second Ctrl-C: stop now (KeyboardInterrupt)."""

    def __init__(self, what: str = "step", enabled: bool = True) -> None:
        self.requested = False
        self.what = what
        self.enabled = enabled  # False: Ctrl-C raises KeyboardInterrupt at once (the last checkpoint stays)
        self._old = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(f"Ctrl-C: finishing this {self.what} and writing a checkpoint (Ctrl-C again to abort; the last "
                   f"checkpoint is kept)", file=sys.stderr)

    def __enter__(self) -> "GracefulStop":
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class MetricLog:
    """``metrics.jsonl`` (one flushed JSON line per row) and, optionally, TensorBoard scalars of every metric.

    Args:
        out: the run directory.
        rows: rows already in the run (a resume passes the checkpoint's rows; the file is rewritten to them).
        tensorboard: also write every numeric metric to ``out/tensorboard`` (needs the ``tensorboard`` package);
            on resume, events of steps after the checkpoint are purged (TensorBoard's ``purge_step``).
    """

    def __init__(self, out: Path, rows: list[dict], tensorboard: bool = False) -> None:
        self.path = Path(out) / "metrics.jsonl"
        self.rows = list(rows)
        write_jsonl(self.path, self.rows)  # atomic: the old file stays intact until the new one is complete
        self._f = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            self._tb = open_tensorboard(Path(out) / "tensorboard",
                                        purge_step=self.rows[-1]["step"] + 1 if self.rows else None)

    def log(self, row: dict) -> None:
        self.rows.append(row)
        append_jsonl(self._f, row)
        if self._tb is not None:
            step = int(row["step"])
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)

    def sync(self) -> None:
        """Make the rows written so far durable (called before each checkpoint)."""
        self._f.flush()
        os.fsync(self._f.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> "MetricLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_tensorboard(log_dir: Path, purge_step: int | None = None):
    """A ``torch.utils.tensorboard.SummaryWriter``, or a ValueError saying how to install TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install 'rlkl[tensorboard]' "
                         "(or pip install tensorboard)") from None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def save_checkpoint(path: Path, log: MetricLog, payload: dict[str, Any]) -> None:
    """Atomically write a checkpoint carrying ``payload`` and every metric row so far (rows made durable first)."""
    log.sync()
    atomic_torch_save({"format": CHECKPOINT_FORMAT, **payload, "rows": list(log.rows)}, path)


def load_checkpoint(path: Path, device: torch.device | str, what: str = "checkpoint") -> dict:
    """A checkpoint written by :func:`save_checkpoint` (one-line ValueError when truncated or not one)."""
    ck = load_torch_file(path, what, map_location=device)
    need = {"step", "rows", "format"}
    if not isinstance(ck, dict) or not need <= set(ck):
        have = sorted(ck) if isinstance(ck, dict) else type(ck).__name__
        raise ValueError(f"{what} {path} is not an rlkl checkpoint of this version (needs {sorted(need)}, has {have})")
    return ck


def restore_rows(out: Path, ck: dict, prog: str) -> list[dict]:
    """The checkpoint's metric rows, after comparing them with ``metrics.jsonl`` and reporting any repair.

    Rows after the checkpoint's step (written before a kill) are dropped; rows the file lacks (a lost or torn
    tail, a damaged file) are restored from the checkpoint. Either way the run continues without a gap.
    """
    rows = list(ck["rows"])
    step = int(ck["step"])
    steps = [int(r["step"]) for r in rows]
    if not rows or steps[-1] != step or len(set(steps)) != len(steps):
        raise ValueError(f"checkpoint {out / 'checkpoint.pt'} is inconsistent (rows end at step "
                         f"{steps[-1] if steps else None}, checkpoint at {step}); start the run again")
    try:
        on_disk, torn = read_jsonl(out / "metrics.jsonl")
    except ValueError as exc:
        note(prog, f"{exc}; rewriting it from the checkpoint")
        return rows
    if torn:
        note(prog, torn)
    kept = [r for r in on_disk if int(r.get("step", -1)) <= step]
    later = len(on_disk) - len(kept)
    if later:
        note(prog, f"dropped {later} metric row(s) after step {step} (written after the last checkpoint; "
                   f"they are recomputed)")
    if kept != rows:
        missing = len(set(steps) - {int(r.get("step", -1)) for r in kept})
        detail = f"{missing} row(s) up to step {step} were missing" if missing else "rows differed"
        note(prog, f"metrics.jsonl restored from the checkpoint ({detail})")
    return rows
