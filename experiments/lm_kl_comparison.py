"""Does the small LM reproduce the big-model behaviour of KL-regularized GRPO variants?

Trains the cpu_tiny LM (2-digit reversed addition, noisy-SFT reference at ~45% pass@1) with each method
below, over several seeds, and compares final reward, pass@k, exact entropy and exact sequence- and
token-level KL drift to π_ref (mean and 95% Student-t confidence interval over seeds). Then states, for
four claims from the literature, whether they reproduce here, with the numbers.

    .venv/bin/python experiments/lm_kl_comparison.py            # 3 seeds, ~15-30 min on 2 cores
    .venv/bin/python -m rlkl.experiments.lm_kl_comparison --seeds 0 1 --steps 60 --workers 2 --out runs/exp/quick

(The second form works from an installed wheel too.)

Variants (one shared β for every method that has a KL term, ``--beta``; methods without KL ignore it):
  no_kl, grpo (k3 loss), grpo_k1_loss, grpo_k2_loss, grpo_is_k3 (ρ·k3 loss), ppo_k1_rtg (PPO-style −β·k1
  per-token reward, reward-to-go), frpo (future-KL return), dr_grpo, and rpg_reinforce_{urkl,ufkl} with
  RPG-Style Clip at K = ``--rpg_k`` optimizer steps per batch, next to the same losses unclipped.

Outputs in the run directory: one sub-directory per run (config.json, metrics.jsonl, checkpoint.pt),
``results.json`` (every run's summary, the aggregates and the claim verdicts), ``results.csv``
(aggregates, one row per variant) and ``claims.md`` (the verdicts in words).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

# (variant name, method, extra TrainConfig fields)
def variants(rpg_k: int) -> list[tuple[str, str, dict]]:
    return [
        ("no_kl", "no_kl", {}),
        ("grpo_k3_loss", "grpo", {}),
        ("grpo_k1_loss", "grpo_k1_loss", {}),
        ("grpo_k2_loss", "grpo_k2_loss", {}),
        ("grpo_is_k3", "grpo_is_k3", {}),
        ("ppo_k1_rtg", "ppo_k1_rtg", {}),
        ("frpo", "frpo", {}),
        ("dr_grpo", "dr_grpo", {}),
        (f"rpg_reinforce_urkl_clip_K{rpg_k}", "rpg_reinforce_urkl", {"updates_per_batch": rpg_k}),
        (f"rpg_reinforce_ufkl_clip_K{rpg_k}", "rpg_reinforce_ufkl", {"updates_per_batch": rpg_k}),
        (f"rpg_reinforce_urkl_noclip_K{rpg_k}", "rpg_reinforce_urkl", {"updates_per_batch": rpg_k, "unclipped": True}),
        (f"rpg_reinforce_ufkl_noclip_K{rpg_k}", "rpg_reinforce_ufkl", {"updates_per_batch": rpg_k, "unclipped": True}),
    ]


# summary quantities aggregated over seeds: key -> (source, description)
SUMMARY_KEYS = {
    "pass@1": "final eval pass@1 (temperature 1)",
    "pass@8": "final eval pass@8 (unbiased, 8 samples)",
    "greedy_acc": "final eval greedy accuracy",
    "reward_last10": "training reward, mean of the last 10 steps",
    "entropy": "final exact token entropy on eval prompts (π samples)",
    "kl_rev_seq": "final exact sequence KL(π‖π_ref) (Σ_t token KL along π samples of eval prompts)",
    "kl_fwd_seq": "final exact sequence KL(π_ref‖π) (Σ_t token KL along π_ref samples)",
    "kl_rev_tok": "final exact token KL(π‖π_ref) (token mean, π samples)",
    "kl_fwd_tok": "final exact token KL(π_ref‖π) (token mean, π_ref samples)",
    "grad_norm_max": "largest pre-clip gradient norm during training",
    "reward_drop": "peak minus final of the 10-step moving-average training reward",
    "clip_frac": "mean total clip fraction over training (low + high + dual)",
}


def summarize(rows: list[dict]) -> dict[str, float]:
    evals = [r for r in rows if "eval_pass@1" in r]
    last = evals[-1]
    train = [r for r in rows if "reward_mean" in r]
    rewards = [r["reward_mean"] for r in train]
    ma = [sum(rewards[max(0, i - 9): i + 1]) / len(rewards[max(0, i - 9): i + 1]) for i in range(len(rewards))]
    clip = [r.get("diag/clip_fraction/low", 0.0) + r.get("diag/clip_fraction/high", 0.0) +
            r.get("diag/clip_fraction/dual", 0.0) for r in train]
    return {
        "pass@1": last["eval_pass@1"],
        "pass@8": last.get("eval_pass@8", math.nan),
        "greedy_acc": last["eval_greedy_acc"],
        "reward_last10": sum(rewards[-10:]) / len(rewards[-10:]),
        "entropy": last["eval_entropy"],
        "kl_rev_seq": last["eval_kl_rev_seq"],
        "kl_fwd_seq": last["eval_kl_fwd_seq"],
        "kl_rev_tok": last["eval_kl_rev_tok"],
        "kl_fwd_tok": last["eval_kl_fwd_tok"],
        "grad_norm_max": max(r["grad_norm"] for r in train),
        "reward_drop": max(ma) - ma[-1],
        "clip_frac": sum(clip) / len(clip),
        "ref_pass@1": evals[0]["eval_pass@1"],
        "wall_time": rows[-1]["wall_time"],
    }


def _run_one(job: dict) -> dict:
    import torch

    from rlkl.lm.train import config_from_preset, train

    torch.set_num_threads(1)
    out = Path(job["out"])
    rows_path = out / "metrics.jsonl"
    if (out / "checkpoint.pt").exists() and rows_path.exists():  # finished earlier (re-running the script resumes)
        rows = [json.loads(x) for x in rows_path.read_text().splitlines() if x.strip()]
        if rows and rows[-1]["step"] == job["config"]["steps"]:
            return {"variant": job["variant"], "seed": job["seed"], **summarize(rows)}
        from rlkl.lm.train import resume

        rows = resume(out, progress=False)
    else:
        cfg = config_from_preset("cpu_tiny", **job["config"])
        rows = train(cfg, out, progress=False)
    return {"variant": job["variant"], "seed": job["seed"], **summarize(rows)}


def aggregate(results: list[dict], names: list[str]) -> dict[str, dict[str, list[float]]]:
    from rlkl.lm.metrics import mean_ci

    agg: dict[str, dict[str, list[float]]] = {}
    for name in names:
        runs = [r for r in results if r["variant"] == name]
        agg[name] = {k: list(mean_ci([r[k] for r in runs])) for k in list(SUMMARY_KEYS) + ["ref_pass@1", "wall_time"]}
        agg[name]["n_seeds"] = [len(runs)] * 3
    return agg


def _fmt(ci: list[float], digits: int = 3) -> str:
    m, lo, hi = ci
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def claims(agg: dict, rpg_k: int) -> list[dict]:
    """The four claims of the issue, each with a verdict computed from the measured means.

    A claim whose variants were not run (``--only``) is left out.
    """
    out: list[dict] = []
    for claim in (_claim_k1, _claim_k3_direction, _claim_frpo, _claim_rpg_clip):
        try:
            out.append(claim(agg, rpg_k))
        except KeyError:
            continue
    return out


def _means(agg: dict) -> dict:
    return {name: {k: v[0] for k, v in d.items()} for name, d in agg.items()}


def _disjoint(agg: dict, a: str, b: str, key: str) -> bool:
    """True when the 95% intervals of ``key`` for variants a and b do not overlap (a separation over seeds)."""
    (_, alo, ahi), (_, blo, bhi) = agg[a][key], agg[b][key]
    return bool(ahi < blo or bhi < alo)


def _claim_k1(agg: dict, rpg_k: int) -> dict:
    m = _means(agg)

    # (1) k1 as a loss leaves KL uncontrolled, like no KL
    k1, nokl, k2, k3 = m["grpo_k1_loss"], m["no_kl"], m["grpo_k2_loss"], m["grpo_k3_loss"]
    ok = k1["kl_rev_seq"] >= 0.75 * nokl["kl_rev_seq"] and k1["kl_rev_seq"] > max(k2["kl_rev_seq"], k3["kl_rev_seq"])
    return {"claim": "k1 as a loss leaves KL uncontrolled (like no KL)", "reproduces": bool(ok),
            "numbers": {**{f"kl_rev_seq[{n}]": _fmt(agg[n]["kl_rev_seq"]) for n in
                           ("no_kl", "grpo_k1_loss", "grpo_k2_loss", "grpo_k3_loss")},
                        "95% CIs of k1 and k3 disjoint": _disjoint(agg, "grpo_k1_loss", "grpo_k3_loss", "kl_rev_seq"),
                        "95% CIs of k1 and k2 disjoint": _disjoint(agg, "grpo_k1_loss", "grpo_k2_loss", "kl_rev_seq")},
            "rule": "KL(k1) >= 0.75 KL(no_kl) and KL(k1) > max(KL(k2), KL(k3)) (sequence reverse KL, means)"}


def _claim_k3_direction(agg: dict, rpg_k: int) -> dict:
    """(2) k3 as a loss holds the forward KL down more than the reverse KL."""
    m = _means(agg)
    nokl = m["no_kl"]

    def reduction(name: str, key: str) -> float:
        return 1.0 - m[name][key] / nokl[key] if nokl[key] > 0 else math.nan

    fwd_red, rev_red = reduction("grpo_k3_loss", "kl_fwd_seq"), reduction("grpo_k3_loss", "kl_rev_seq")
    k2_fwd, k2_rev = reduction("grpo_k2_loss", "kl_fwd_seq"), reduction("grpo_k2_loss", "kl_rev_seq")
    return {"claim": "k3 as a loss holds the forward KL down more than the reverse KL",
                "reproduces": bool(fwd_red > rev_red),
                "numbers": {"k3: forward-KL reduction vs no_kl": f"{fwd_red:.3f}",
                            "k3: reverse-KL reduction vs no_kl": f"{rev_red:.3f}",
                            "k2 (reverse-KL gradient), forward reduction": f"{k2_fwd:.3f}",
                            "k2, reverse reduction": f"{k2_rev:.3f}",
                            "kl_fwd_seq[no_kl]": _fmt(agg["no_kl"]["kl_fwd_seq"]),
                            "kl_rev_seq[no_kl]": _fmt(agg["no_kl"]["kl_rev_seq"]),
                            "95% CIs of k3 and no_kl disjoint (forward KL)":
                                _disjoint(agg, "grpo_k3_loss", "no_kl", "kl_fwd_seq"),
                            "95% CIs of k3 and no_kl disjoint (reverse KL)":
                                _disjoint(agg, "grpo_k3_loss", "no_kl", "kl_rev_seq"),
                            "kl_fwd_seq[grpo_k3_loss]": _fmt(agg["grpo_k3_loss"]["kl_fwd_seq"]),
                            "kl_rev_seq[grpo_k3_loss]": _fmt(agg["grpo_k3_loss"]["kl_rev_seq"])},
                "rule": "1 - KLfwd(k3)/KLfwd(no_kl) > 1 - KLrev(k3)/KLrev(no_kl) (sequence level, means)"}


def _claim_frpo(agg: dict, rpg_k: int) -> dict:
    """(3) FRPO: lower reverse-KL drift and higher entropy than loss-side k3 at similar reward, better pass@k."""
    m = _means(agg)
    fr, g = m["frpo"], m["grpo_k3_loss"]
    parts = {"lower reverse KL": fr["kl_rev_seq"] < g["kl_rev_seq"], "higher entropy": fr["entropy"] > g["entropy"],
             "similar reward (|Δ| <= 0.05)": abs(fr["reward_last10"] - g["reward_last10"]) <= 0.05,
             "better pass@8": fr["pass@8"] > g["pass@8"]}
    return {"claim": "FRPO keeps lower reverse-KL drift and higher entropy than loss-side k3 at similar reward, "
                     "and better pass@k", "reproduces": bool(all(parts.values())),
                "parts": {k: bool(v) for k, v in parts.items()},
                "numbers": {f"{k}[{n}]": _fmt(agg[n][k]) for n in ("frpo", "grpo_k3_loss")
                            for k in ("kl_rev_seq", "entropy", "reward_last10", "pass@1", "pass@8")},
                "rule": "all four parts hold for the means"}


def _claim_rpg_clip(agg: dict, rpg_k: int) -> dict:
    """(4) RPG-Style Clip keeps K > 1 off-policy training stable where unclipped REINFORCE-style losses degrade."""
    m = _means(agg)
    verdict_parts = {}
    nums = {}
    for div in ("urkl", "ufkl"):
        c, u = f"rpg_reinforce_{div}_clip_K{rpg_k}", f"rpg_reinforce_{div}_noclip_K{rpg_k}"
        verdict_parts[f"{div}: clipped is stable (reward drop <= 0.05 and final pass@1 >= reference)"] = \
            m[c]["reward_drop"] <= 0.05 and m[c]["pass@1"] >= m[c]["ref_pass@1"]
        verdict_parts[f"{div}: unclipped degrades (final pass@1 <= clipped - 0.05, or reward drop >= clipped "
                      f"+ 0.05)"] = (m[u]["pass@1"] <= m[c]["pass@1"] - 0.05
                                     or m[u]["reward_drop"] >= m[c]["reward_drop"] + 0.05)
        for k in ("pass@1", "reward_last10", "reward_drop", "grad_norm_max", "kl_rev_seq"):
            nums[f"{k}[{c}]"] = _fmt(agg[c][k])
            nums[f"{k}[{u}]"] = _fmt(agg[u][k])
    return {"claim": f"RPG-Style Clip keeps K={rpg_k} off-policy training stable where unclipped "
                     "REINFORCE-style losses degrade", "reproduces": bool(all(verdict_parts.values())),
            "parts": {k: bool(v) for k, v in verdict_parts.items()}, "numbers": nums,
            "rule": "all parts hold for the means"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=150, help="RL steps per run (cpu_tiny default 150)")
    p.add_argument("--beta", type=float, default=0.05, help="β for every method with a KL term")
    p.add_argument("--rpg_k", type=int, default=4, help="optimizer steps per batch for the RPG variants")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: cpu_tiny's)")
    p.add_argument("--ref", default=None, help="SFT reference (default: runs/sft/addition-d2-cpu_tiny/reference.pt, "
                                                "trained into OUT/ref when missing)")
    p.add_argument("--workers", type=int, default=2, help="parallel runs (each uses one thread)")
    p.add_argument("--only", nargs="*", default=None, help="run only these variants")
    p.add_argument("--out", default=None, help="run directory (default: runs/experiments/lm_kl_comparison-TIME)")
    p.add_argument("--reanalyze", default=None, metavar="RUN_DIR",
                   help="recompute aggregates, claims.md and results.* of a finished run directory (no training)")
    args = p.parse_args(argv)
    if args.reanalyze:
        saved = json.loads((Path(args.reanalyze) / "experiment.json").read_text())
        args = argparse.Namespace(**{**saved["args"], "out": args.reanalyze})
        results = [_run_one(job) for job in saved["jobs"]]  # finished runs are only read back
        return _report(args, Path(args.out), results, time.time())

    from rlkl.lm.train import default_ref_path
    from rlkl.methods import get_method

    out = Path(args.out or f"runs/experiments/lm_kl_comparison-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    ref = args.ref or default_ref_path("addition", 2, "cpu_tiny")
    if not Path(ref).exists():
        from rlkl.lm.sft import sft_config_from_preset, train_sft

        print(f"no reference at {ref}: training the cpu_tiny SFT reference into {out / 'ref'}")
        train_sft(sft_config_from_preset("cpu_tiny", difficulty=2), out / "ref", progress=True)
        ref = str(out / "ref" / "reference.pt")

    vs = variants(args.rpg_k)
    if args.only:
        vs = [v for v in vs if v[0] in args.only]
    jobs = []
    for name, method, extra in vs:
        m = get_method(method)
        has_kl = m.has_kl
        for seed in args.seeds:
            cfg = {"method": method, "seed": seed, "steps": args.steps, "ref": ref, "difficulty": 2, **extra}
            if has_kl:
                cfg["beta"] = args.beta
            if args.lr is not None:
                cfg["lr"] = args.lr
            jobs.append({"variant": name, "seed": seed, "config": cfg, "out": str(out / "runs" / f"{name}-s{seed}")})
    (out / "experiment.json").write_text(json.dumps({"args": vars(args), "ref": ref, "jobs": jobs}, indent=2) + "\n")

    from tqdm.auto import tqdm

    t0 = time.time()
    results = []
    if args.workers > 1:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for res in tqdm(pool.imap_unordered(_run_one, jobs), total=len(jobs), desc="runs"):
                results.append(res)
    else:
        for job in tqdm(jobs, desc="runs"):
            results.append(_run_one(job))
    return _report(args, out, results, t0)


def _report(args: argparse.Namespace, out: Path, results: list[dict], t0: float) -> int:
    names = list(dict.fromkeys(r["variant"] for r in sorted(
        results, key=lambda r: [v[0] for v in variants(args.rpg_k)].index(r["variant"]))))
    results.sort(key=lambda r: (names.index(r["variant"]), r["seed"]))
    agg = aggregate(results, names)
    verdicts = claims(agg, args.rpg_k)

    (out / "results.json").write_text(json.dumps({"summary_keys": SUMMARY_KEYS, "runs": results, "aggregate": agg,
                                                  "claims": verdicts, "wall_time": time.time() - t0}, indent=2) + "\n")
    cols = list(SUMMARY_KEYS) + ["ref_pass@1", "wall_time"]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "n_seeds"] + [f"{c}_{s}" for c in cols for s in ("mean", "ci_low", "ci_high")])
        for name in names:
            w.writerow([name, agg[name]["n_seeds"][0]] + [f"{x:.6g}" for c in cols for x in agg[name][c]])

    lines = [f"# LM KL comparison ({len(args.seeds)} seeds, {args.steps} steps, beta={args.beta}, RPG K={args.rpg_k})", "",
             "| variant | pass@1 | pass@8 | reward (last 10) | entropy | KL(π‖ref) seq | KL(ref‖π) seq | reward drop |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        a = agg[name]
        lines.append(f"| {name} | " + " | ".join(_fmt(a[k], 3) for k in
                     ("pass@1", "pass@8", "reward_last10", "entropy", "kl_rev_seq", "kl_fwd_seq", "reward_drop")) + " |")
    lines += ["", f"Reference pass@1: {agg[names[0]]['ref_pass@1'][0]:.3f}. Mean [95% t-interval over seeds].", ""]
    for c in verdicts:
        lines.append(f"## {c['claim']}: {'REPRODUCES' if c['reproduces'] else 'does NOT reproduce'}")
        lines.append(f"Rule: {c['rule']}.")
        for k, v in c.get("parts", {}).items():
            lines.append(f"- {k}: {v}")
        for k, v in c["numbers"].items():
            lines.append(f"- {k} = {v}")
        lines.append("")
    (out / "claims.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"results in {out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
