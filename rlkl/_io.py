"""Crash-safe files of a run: atomic rewrites (write a temporary file, fsync, rename) and JSON-lines logs.

A rename within one directory is atomic on POSIX and Windows, so a reader (or a resume after SIGKILL or a power
cut) sees either the old file or the new one, never a half-written file. ``fsync`` of the file before the rename
and of the directory after it makes the new content durable, not only visible.

The append-only ``metrics.jsonl`` is the one file that is not rewritten atomically on every step (that would be
quadratic); a kill can tear its last line, which :func:`read_jsonl` detects and reports instead of failing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = False,
                 fsync: bool = True) -> None:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file beside it, which then replaces ``path``.

    Args:
        path: the destination; its directory must exist.
        write: called with the open temporary file (text mode, UTF-8, unless ``binary``).
        fsync: flush the file and its directory to disk (durable across a power cut, not only a kill).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if fsync:
        _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = True) -> None:
    """Replace ``path`` by ``text`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text), fsync=fsync)


def atomic_write_json(path: str | os.PathLike, obj: Any, fsync: bool = True) -> None:
    """Replace ``path`` by ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n", fsync=fsync)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically and durably (a kill mid-save leaves the previous file intact)."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Replace ``path`` by one JSON object per line, atomically."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def append_jsonl(f, row: dict) -> None:
    """Append one row to an open JSON-lines file and flush it to the OS (it survives a kill of the process)."""
    f.write(json.dumps(row) + "\n")
    f.flush()


def read_jsonl(path: str | os.PathLike) -> tuple[list[dict], str | None]:
    """The complete rows of a JSON-lines file, and a note when a torn (partly written) last line was dropped.

    A line that is not valid JSON anywhere but at the end means the file was damaged, not torn by a kill:
    that raises ValueError (with the line number) rather than guessing.
    """
    path = Path(path)
    if not path.exists():
        return [], None
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    rows, note = [], None
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError:
            last = all(not x.strip() for x in lines[i + 1:])
            if last:
                note = f"{path}: dropped a torn last line (line {i + 1}, {len(line)} characters: an interrupted write)"
                break
            raise ValueError(f"{path} line {i + 1} is not a JSON object: {line[:80]!r}; the file is damaged "
                             f"(not only torn by an interruption)") from None
        rows.append(row)
    return rows, note


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (the content hash a run records for its reference checkpoint)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_torch_file(path: str | os.PathLike, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with a one-line ValueError for a truncated, garbage or non-torch file."""
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {path}")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory, not a file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)  # plain data: never runs pickled code
    except Exception as exc:  # noqa: BLE001 — untrusted bytes: the unpickler can fail in any way (struct, zip, ...)
        msg = " ".join(str(exc).split())[:160]
        raise ValueError(f"{what} {path} cannot be read ({type(exc).__name__}: {msg}); it is truncated or not a "
                         f"torch checkpoint") from None
