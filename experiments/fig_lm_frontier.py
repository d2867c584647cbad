"""Figure 10 data: the LM frontiers (``experiments/lm_frontier.py``): reward, entropy, odds and forward KL against
exact KL(π‖π_ref) over a β sweep per method, with bootstrap intervals over seeds, and the analytic optimum.

Full mode runs that experiment (divisor task, cpu_tiny, 11 variants × 4 β × 5 seeds; about an hour on 2 cores)
into ``<out_dir>/frontier_run`` — or, when ``RLKL_FRONTIER_RUN`` names a finished run dir of it, re-analyses that
one (no training). Quick mode runs a tiny version with the same library calls (a 60-step SFT reference, two
variants × two β × two seeds × 4 RL steps): a smoke test of the pipeline, not evidence.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import read_json, write_config, write_json

QUICK_VARIANTS = ("grpo", "frpo")


def _quick(out_dir: Path, seed: int) -> Path:
    from rlkl.lm.sft import sft_config_from_preset, train_sft

    from . import lm_frontier

    run = out_dir / "frontier_quick"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run every time (same seed → same numbers)
    train_sft(sft_config_from_preset("cpu_tiny", task="divisor", difficulty=2, steps=60, eval_every=60, seed=seed),
              run / "ref", progress=False)
    lm_frontier.main(["--out", str(run), "--ref", str(run / "ref" / "reference.pt"), "--seeds", str(seed),
                      str(seed + 1), "--betas", "0.05", "0.5", "--steps", "4", "--eval_every", "4", "--workers", "1",
                      "--only", *QUICK_VARIANTS])
    return run


def run(out_dir, quick: bool = False, seed: int = 0) -> Path:
    from . import lm_frontier

    out_dir = Path(out_dir)
    env = os.environ.get("RLKL_FRONTIER_RUN")
    if quick:
        run_dir, mode = _quick(out_dir, seed), "quick tiny run"
    elif env:
        run_dir, mode = Path(env), f"re-analysed RLKL_FRONTIER_RUN={env}"
        lm_frontier.main(["--reanalyze", str(run_dir)])
    else:
        run_dir, mode = out_dir / "frontier_run", "full lm_frontier run"
        lm_frontier.main(["--out", str(run_dir), "--workers", "2"])
    res = read_json(run_dir / "results.json")
    data = {"mode": mode, "source": str(run_dir), "args": res["args"], "names": res["names"],
            "aggregate": res["aggregate"], "optimum_frontier": res["optimum_frontier"], "claims": res["claims"],
            "own_optimum": res["own_optimum"], "methods": {v[0]: v[1] for v in lm_frontier.variants(res["args"]["rpg_k"])}}
    write_config(out_dir, "fig_lm_frontier", quick, seed, mode=mode, source=str(run_dir), frontier_args=res["args"])
    return write_json(out_dir / "lm_frontier.json", data)
