"""Experiments: scripts that produce the data behind every table and figure.

Each ``experiments/fig_*.py`` is an importable module with ``run(out_dir, quick: bool, seed: int) -> Path``: it
computes with rlkl's own functions, writes its numbers (JSON, plus CSV for tables) and its configuration into
``out_dir`` and returns the path of the main data file, which ``paper_figures/<same name>.py`` turns into a
figure. Same seed → same numbers. ``rlkl figures`` runs them all.

The helpers below are the one way an experiment writes its records.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence


def _clean(x: Any) -> Any:
    """JSON-safe copy: tensors/arrays → lists, non-finite floats → None."""
    try:
        import numpy as np
        import torch
    except ImportError:  # pragma: no cover
        np = torch = None
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu().tolist()
    if np is not None and isinstance(x, np.ndarray):
        x = x.tolist()
    if np is not None and isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (floats at full precision; NaN/inf → null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(data), indent=1, sort_keys=False) + "\n")
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None) -> Path:
    """Write a list of dict rows as CSV (columns: given order, else the first row's keys)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(columns) if columns is not None else (list(rows[0].keys()) if rows else [])
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in _clean(dict(r)).items()})
    return path


def write_config(out_dir: str | Path, name: str, quick: bool, seed: int, **params: Any) -> Path:
    """``out_dir/config.json``: the experiment's name, mode, seed and every parameter that shaped its numbers."""
    import torch

    import rlkl

    cfg = {"experiment": name, "quick": bool(quick), "seed": int(seed), "params": params,
           "versions": {"rlkl": rlkl.__version__, "torch": torch.__version__, "python": sys.version.split()[0],
                        "platform": platform.platform()}}
    return write_json(Path(out_dir) / "config.json", cfg)


__all__ = ["write_json", "read_json", "write_csv", "write_config"]
