"""Frontiers, not points: reward against exact KL(π‖π_ref) for every method, over a β sweep and several seeds.

Equal β is no fair comparison of regularizers of different strength (a k3 loss averaged per token and FRPO's
summed future KL pull with different force at the same β). This experiment sweeps β for each method, trains
``--seeds`` seeds per point (cpu_tiny, 150 RL steps) and compares the methods **on the frontier**: reward, pass@k,
entropy and forward KL *at matched reverse KL*, and KL *at matched reward*, with percentile-bootstrap intervals
over seeds. On the default task, ``divisor`` (any divisor of N is right: many correct answers), every number is
exact (``rlkl.lm.exact``: the whole sequence distribution is enumerated on the training problems), and the
analytic optimum π*_β ∝ π_ref·e^{R/β} traces the best frontier any policy can reach, so each method's distance
from it — and from π_ref's odds among equally rewarded answers (GX-Chen et al. arXiv 2510.20817) — is measured.

    .venv/bin/python experiments/lm_frontier.py                         # divisor, 11 variants × 4 β × 5 seeds
    .venv/bin/python experiments/lm_frontier.py --workers 1 --out runs/exp/frontier --only no_kl grpo grpo_k1_loss \
        grpo_k2_loss grpo_is_k3 grpo_k1_reward frpo rloo rpg_reinforce_urkl_K4 rpg_reinforce_urkl_K4_noclip
                                            # docs/claims.md's run: 185 runs, ≈ 50 min on one (shared) core
    .venv/bin/python experiments/lm_frontier.py --seeds 0 1 --betas 0.03 0.3 --only grpo frpo --out runs/exp/f
    .venv/bin/python experiments/lm_frontier.py --reanalyze runs/experiments/lm_frontier-…    # no training
    .venv/bin/python experiments/lm_frontier.py --task addition                 # sampled (RB) KL, no optimum

Variants: no_kl (one point per seed), grpo (k3 loss), grpo_k1_loss, grpo_k2_loss, grpo_is_k3, grpo_k1_reward,
frpo, rloo, ppo_k1_rtg, and rpg_reinforce_urkl at K = ``--rpg_k`` updates per batch with and without RPG-Style
Clip (its KL is to π_old, so β shapes its trust region, not its distance to π_ref).

Outputs (run dir): ``runs/<variant>-b<β>-s<seed>/`` (each run), ``experiment.json`` (the jobs), ``results.json``
(every run's final metrics, the per-point bootstrap aggregates, the matched-KL / matched-reward comparisons, the
analytic optimum frontier and the verdicts), ``results.csv`` (one row per variant and β) and ``claims.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

#: β grid on the divisor task: from β = 3 (KL(π‖π_ref) ≈ 0.03, next to π_ref) to β = 0.1 (KL ≈ 1, next to no_kl's
#: 1.2); a pilot at β = 0.01 landed on no_kl's point for frpo and RPG (KL 1.24 / 1.31 vs 1.21)
DEFAULT_BETAS = (0.1, 0.3, 1.0, 3.0)
EXACT_KEYS = {"reward": "exact_reward", "pass@1": "exact_pass@1", "pass@8": "exact_pass@8",
              "kl_rev_seq": "exact_kl_rev_seq", "kl_rev_tok": "exact_kl_rev_tok", "kl_fwd_seq": "exact_kl_fwd_seq",
              "entropy_seq": "exact_entropy_seq", "entropy_tok": "exact_entropy_tok", "odds_tv": "exact_odds_tv",
              "entropy_correct": "exact_entropy_correct", "kl_to_opt_rev": "exact_kl_to_opt_rev",
              "kl_to_opt_ug": "exact_kl_to_opt_ug", "kl_to_opt_fwd": "exact_kl_to_opt_fwd",
              "tv_to_opt_rev": "exact_tv_to_opt_rev", "tv_to_opt_fwd": "exact_tv_to_opt_fwd",
              "tv_to_opt_ug": "exact_tv_to_opt_ug"}
SAMPLED_KEYS = {"reward": "eval_pass@1", "pass@1": "eval_pass@1", "pass@8": "eval_pass@8",
                "kl_rev_seq": "eval_kl_rev_seq", "kl_rev_tok": "eval_kl_rev_tok", "kl_fwd_seq": "eval_kl_fwd_seq",
                "entropy_tok": "eval_entropy"}


def variants(rpg_k: int) -> list[tuple[str, str, dict]]:
    """(variant name, registry method, extra TrainConfig fields)."""
    return [("no_kl", "no_kl", {}), ("grpo", "grpo", {}), ("grpo_k1_loss", "grpo_k1_loss", {}),
            ("grpo_k2_loss", "grpo_k2_loss", {}), ("grpo_is_k3", "grpo_is_k3", {}),
            ("grpo_k1_reward", "grpo_k1_reward", {}), ("frpo", "frpo", {}), ("rloo", "rloo", {}),
            ("ppo_k1_rtg", "ppo_k1_rtg", {}),
            (f"rpg_reinforce_urkl_K{rpg_k}", "rpg_reinforce_urkl", {"updates_per_batch": rpg_k}),
            (f"rpg_reinforce_urkl_K{rpg_k}_noclip", "rpg_reinforce_urkl", {"updates_per_batch": rpg_k,
                                                                           "unclipped": True})]


# ---------------------------------------------------------------------------------------------------------------
# the runs


def summarize(rows: list[dict], keys: dict[str, str]) -> dict[str, float]:
    """A run's final metrics under the frontier's names (``keys``), plus training-curve statistics."""
    last = [r for r in rows if "eval_pass@1" in r][-1]
    train = [r for r in rows if "reward_mean" in r]
    rewards = [r["reward_mean"] for r in train]
    ma = [float(np.mean(rewards[max(0, i - 9): i + 1])) for i in range(len(rewards))]
    out = {name: last.get(src, math.nan) for name, src in keys.items()}
    out.update(reward_last10=float(np.mean(rewards[-10:])), reward_drop=max(ma) - ma[-1],
               eval_pass1=last["eval_pass@1"], wall_time=rows[-1]["wall_time"],
               clip_frac=float(np.mean([r.get("diag/clip_fraction/low", 0.0) + r.get("diag/clip_fraction/high", 0.0)
                                        + r.get("diag/clip_fraction/dual", 0.0) for r in train])))
    return out


def _run_one(job: dict) -> dict:
    import torch

    from rlkl.lm.train import config_from_preset, resume, train

    torch.set_num_threads(1)
    out = Path(job["out"])
    rows_path = out / "metrics.jsonl"
    if (out / "checkpoint.pt").exists() and rows_path.exists():  # re-running the script continues
        rows = [json.loads(x) for x in rows_path.read_text().splitlines() if x.strip()]
        if not rows or rows[-1]["step"] != job["config"]["steps"]:
            rows = resume(out, progress=False)
    else:
        rows = train(config_from_preset("cpu_tiny", **job["config"]), out, progress=False)
    return {"variant": job["variant"], "beta": job["beta"], "seed": job["seed"], **summarize(rows, job["keys"])}


def make_jobs(args: argparse.Namespace, ref: str, out: Path) -> list[dict]:
    from rlkl.methods import get_method

    keys = EXACT_KEYS if args.task == "divisor" else SAMPLED_KEYS
    jobs = []
    for name, method, extra in variants(args.rpg_k):
        if args.only and name not in args.only:
            continue
        betas = list(args.betas) if get_method(method).has_kl else [0.0]
        for beta in betas:
            for seed in args.seeds:
                cfg = {"method": method, "task": args.task, "seed": seed, "steps": args.steps, "ref": ref,
                       "eval_every": args.eval_every, "eval_samples": 8, **extra}
                if get_method(method).has_kl:
                    cfg["beta"] = beta
                jobs.append({"variant": name, "beta": beta, "seed": seed, "config": cfg, "keys": keys,
                             "out": str(out / "runs" / f"{name}-b{beta:g}-s{seed}")})
    return jobs


# ---------------------------------------------------------------------------------------------------------------
# statistics over seeds: percentile bootstrap


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean over seeds and its percentile-bootstrap interval (resampling seeds)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    if x.size == 1:
        return (float(x[0]),) * 3
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def points(results: list[dict], variant: str, metric: str) -> dict[float, list[float]]:
    """β -> the metric's values over seeds, for one variant."""
    out: dict[float, list[float]] = {}
    for r in results:
        if r["variant"] == variant and np.isfinite(r.get(metric, math.nan)):
            out.setdefault(r["beta"], []).append(r[metric])
    return dict(sorted(out.items()))


def interp_at(xs_by_beta: dict, ys_by_beta: dict, x0: float) -> float:
    """y at x = x0 on the variant's curve: linear interpolation through the per-β means sorted by x (NaN outside)."""
    betas = [b for b in xs_by_beta if b in ys_by_beta]
    xs = np.array([np.mean(xs_by_beta[b]) for b in betas])
    ys = np.array([np.mean(ys_by_beta[b]) for b in betas])
    if len(xs) < 2 or not xs.min() <= x0 <= xs.max():
        return math.nan
    order = np.argsort(xs)
    return float(np.interp(x0, xs[order], ys[order]))


def matched(results: list[dict], variant: str, x: str, y: str, x0: float, n_boot: int = 1000,
            seed: int = 0) -> tuple[float, float, float]:
    """y of ``variant`` at matched x = x0 (interpolated between its β points), with a bootstrap interval that
    resamples the seeds of every β point independently."""
    xs, ys = points(results, variant, x), points(results, variant, y)
    est = interp_at(xs, ys, x0)
    if not np.isfinite(est):
        return (math.nan,) * 3
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        idx = {b: rng.integers(0, len(v), len(v)) for b, v in xs.items()}
        bx = {b: list(np.asarray(v)[idx[b]]) for b, v in xs.items()}
        by = {b: list(np.asarray(ys[b])[idx[b]]) for b in ys if b in idx}
        boot.append(interp_at(bx, by, x0))
    boot = np.asarray([v for v in boot if np.isfinite(v)])
    if boot.size < n_boot // 2:  # x0 at the edge of the curve: most resamples fall outside it
        return (est, math.nan, math.nan)
    return (est, float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975)))


# ---------------------------------------------------------------------------------------------------------------
# aggregates, the analytic frontier, comparisons at matched KL / reward


def aggregate(results: list[dict], names: list[str], metrics: list[str]) -> list[dict]:
    """One row per (variant, β): the mean and bootstrap interval of every metric over seeds."""
    rows = []
    for name in names:
        for beta in sorted({r["beta"] for r in results if r["variant"] == name}):
            runs = [r for r in results if r["variant"] == name and r["beta"] == beta]
            row = {"variant": name, "beta": beta, "n_seeds": len(runs)}
            for m in metrics:
                row[m] = list(bootstrap_ci([r.get(m, math.nan) for r in runs]))
            rows.append(row)
    return rows


def optimum_frontier(ref: str, task_name: str) -> dict | None:
    """The analytic frontiers from π_ref's exact distribution on the training problems (divisor only):
    π*_β ∝ π_ref e^{R/β} (reward vs KL(π‖π_ref)) and the forward-KL optimum (reward vs KL(π_ref‖π))."""
    import torch

    from rlkl.lm import exact as E
    from rlkl.lm.sft import load_reference

    if task_name != "divisor":
        return None
    base, task, _ = load_reference(ref, "cpu")
    ys = E.Yardstick.build(base.eval(), task, "cpu")
    out: dict = {"beta": [], "rev": {}, "fwd": {}}
    for beta in np.logspace(-2.5, 1.5, 40):
        out["beta"].append(float(beta))
        for kind, opt in (("rev", E.reverse_kl_optimum(ys.logp_ref, ys.rewards, float(beta))),
                          ("fwd", E.forward_kl_optimum(ys.logp_ref, ys.rewards, float(beta)))):
            m = E.sequence_metrics(opt, ys.logp_ref, ys.rewards, ys.lengths, 0.0, (1, 8))
            for k, v in m.items():
                out[kind].setdefault(k, []).append(v)
    p_ref = (ys.logp_ref.exp() * ys.rewards).sum(-1).clamp(1e-6, 1 - 1e-6)  # [n] π_ref's success rate per prompt
    out["p_ref"] = p_ref.tolist()
    out["kl_to_correct_only"] = float((-torch.log(p_ref)).mean())  # KL of π_ref|C: the least KL for reward 1
    return out


def frontier_reward(front: dict, kl: float) -> float:
    """The optimum's reward at reverse KL = kl (interpolated on the π*_β curve)."""
    xs, ys = np.asarray(front["rev"]["kl_rev_seq"]), np.asarray(front["rev"]["reward"])
    order = np.argsort(xs)
    return float(np.interp(kl, xs[order], ys[order]))


def overlap_grid(results: list[dict], a: str, b: str, x: str, n: int = 3) -> list[float]:
    """n matched x values inside the x ranges of both variants' curves (25/50/75 % of the overlap)."""
    ra = [np.mean(v) for v in points(results, a, x).values()]
    rb = [np.mean(v) for v in points(results, b, x).values()]
    if len(ra) < 2 or len(rb) < 2:
        return []
    lo, hi = max(min(ra), min(rb)), min(max(ra), max(rb))
    return [] if not hi > lo else [float(lo + q * (hi - lo)) for q in np.linspace(0.25, 0.75, n)]


def compare(results: list[dict], a: str, b: str, x: str, y: str) -> list[dict]:
    """y of a and of b at matched x (bootstrap intervals) on the shared x range; ``a_lower`` when a's interval
    lies wholly below b's, ``a_higher`` when wholly above."""
    out = []
    for x0 in overlap_grid(results, a, b, x):
        ya, yb = matched(results, a, x, y, x0), matched(results, b, x, y, x0)
        out.append({"x": x0, a: ya, b: yb, "a_lower": bool(ya[2] < yb[1]), "a_higher": bool(ya[1] > yb[2]),
                    "a_mean_lower": bool(ya[0] < yb[0])})
    return out


# ---------------------------------------------------------------------------------------------------------------
# verdicts at matched KL


def _verdict(parts: dict[str, str]) -> str:
    """'reproduced' when every part holds with separated intervals, 'qualified' when some do, 'not separated' when
    none does but some hold on the means (the intervals overlap: inconclusive), 'not reproduced' when none holds
    even on the means; parts are 'yes' / 'partly' (separated at some matched points) / 'means' / 'no'."""
    v = list(parts.values())
    if v and all(p == "yes" for p in v):
        return "reproduced"
    if any(p in ("yes", "partly") for p in v):
        return "qualified"
    if any(p == "means" for p in v):
        return "not separated"
    return "not reproduced"


def _part(rows: list[dict], want: str) -> str:
    """'yes' if ``want`` ('a_lower'/'a_higher') holds with separated intervals at every matched point, 'partly' if
    the means agree at every point and the intervals separate at some, 'means' if only the means agree, else 'no'
    (also with no overlap to compare on)."""
    if not rows:
        return "no"
    if all(r[want] for r in rows):
        return "yes"
    mean_ok = [r["a_mean_lower"] if want == "a_lower" else not r["a_mean_lower"] for r in rows]
    if all(mean_ok) and any(r[want] for r in rows):
        return "partly"  # the means agree everywhere, the intervals separate at some matched points only
    return "means" if all(mean_ok) else "no"


def _fmt(ci) -> str:
    m, lo, hi = ci
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else f"{m:.3f}"


def claim_k1(results, agg, names) -> dict | None:
    """k1 as a loss leaves KL uncontrolled: its KL at the largest β stays near no_kl's, unlike the k3 loss."""
    if not {"no_kl", "grpo_k1_loss", "grpo"} <= set(names):
        return None
    at = {n: next((r for r in reversed(agg) if r["variant"] == n), None) for n in ("no_kl", "grpo_k1_loss", "grpo")}
    k1, k3, nk = (at[n]["kl_rev_seq"] for n in ("grpo_k1_loss", "grpo", "no_kl"))
    parts = {"k1 KL at the largest β >= 0.75 × no_kl's": "yes" if k1[1] >= 0.75 * nk[0] else
             ("means" if k1[0] >= 0.75 * nk[0] else "no"),
             "k3 (grpo) KL at the largest β below k1's": "yes" if k3[2] < k1[1] else ("means" if k3[0] < k1[0] else "no")}
    return {"claim": "k1 as a loss leaves KL uncontrolled (like no KL), unlike the k3 loss", "parts": parts,
            "verdict": _verdict(parts), "numbers": {f"KL(π‖π_ref) seq, {n} at β={at[n]['beta']:g}":
                                                    _fmt(at[n]["kl_rev_seq"]) for n in at}}


def claim_k3_forward(results, agg, names) -> dict | None:
    """At matched reverse KL, the k3 loss (grpo) keeps the forward KL lower than the k2 loss (reverse-KL gradient)."""
    if not {"grpo", "grpo_k2_loss"} <= set(names):
        return None
    rows = compare(results, "grpo", "grpo_k2_loss", "kl_rev_seq", "kl_fwd_seq")
    parts = {"forward KL of k3 < k2 at matched reverse KL": _part(rows, "a_lower")}
    return {"claim": "k3 as a loss holds the forward KL down more than the reverse KL (vs the k2 loss, whose "
                     "gradient is the reverse-KL one)", "parts": parts, "verdict": _verdict(parts),
            "numbers": {f"KL(π_ref‖π) at KL(π‖π_ref)={r['x']:.3f}: grpo / grpo_k2_loss":
                        f"{_fmt(r['grpo'])} / {_fmt(r['grpo_k2_loss'])}" for r in rows}}


def claim_frpo(results, agg, names) -> dict | None:
    """FRPO vs the k3 loss: lower reverse KL at matched reward; higher entropy and pass@8 at matched KL."""
    if not {"frpo", "grpo"} <= set(names):
        return None
    ent = "entropy_seq" if any("entropy_seq" in r for r in results) else "entropy_tok"
    kl_at_reward = compare(results, "frpo", "grpo", "reward", "kl_rev_seq")
    ent_at_kl = compare(results, "frpo", "grpo", "kl_rev_seq", ent)
    pk_at_kl = compare(results, "frpo", "grpo", "kl_rev_seq", "pass@8")
    parts = {"lower KL(π‖π_ref) at matched reward": _part(kl_at_reward, "a_lower"),
             "higher entropy at matched KL": _part(ent_at_kl, "a_higher"),
             "higher pass@8 at matched KL": _part(pk_at_kl, "a_higher")}
    nums = {f"KL at reward={r['x']:.3f}: frpo / grpo": f"{_fmt(r['frpo'])} / {_fmt(r['grpo'])}" for r in kl_at_reward}
    nums.update({f"{ent} at KL={r['x']:.3f}: frpo / grpo": f"{_fmt(r['frpo'])} / {_fmt(r['grpo'])}" for r in ent_at_kl})
    nums.update({f"pass@8 at KL={r['x']:.3f}: frpo / grpo": f"{_fmt(r['frpo'])} / {_fmt(r['grpo'])}" for r in pk_at_kl})
    return {"claim": "FRPO: lower reverse-KL drift at matched reward, higher entropy and pass@k at matched KL than "
                     "the loss-side k3 KL", "parts": parts, "verdict": _verdict(parts), "numbers": nums}


def claim_rpg_clip(results, agg, names) -> dict | None:
    """RPG-Style Clip at K > 1: reward at matched KL at least the unclipped loss's, and a smaller reward drop."""
    clip = next((n for n in names if n.startswith("rpg_") and not n.endswith("_noclip")), None)
    if clip is None or f"{clip}_noclip" not in names:
        return None
    noclip = f"{clip}_noclip"
    rows = compare(results, clip, noclip, "kl_rev_seq", "reward")
    drops = [(r["beta"], r["reward_drop"], next(q["reward_drop"] for q in agg if q["variant"] == noclip and
                                                q["beta"] == r["beta"])) for r in agg if r["variant"] == clip]
    drop_part = ("yes" if all(c[2] < u[1] for _, c, u in drops) else
                 "means" if all(c[0] <= u[0] for _, c, u in drops) else "no")
    parts = {"reward at matched KL: clipped >= unclipped": _part(rows, "a_higher") if rows else "no",
             "smaller reward drop (peak − final, 10-step average) at every β": drop_part}
    nums = {f"reward at KL={r['x']:.3f}: {clip} / noclip": f"{_fmt(r[clip])} / {_fmt(r[noclip])}" for r in rows}
    nums.update({f"reward drop at β={b:g}: clip / noclip": f"{_fmt(c)} / {_fmt(u)}" for b, c, u in drops})
    return {"claim": f"RPG-Style Clip keeps K > 1 off-policy training stable ({clip})", "parts": parts,
            "verdict": _verdict(parts), "numbers": nums}


def claim_equal_odds(results, agg, names, front) -> dict | None:
    """GX-Chen et al.: the KL-regularized optimum keeps π_ref's odds among equal-reward answers; do trained
    policies? (odds TV = 0 at the optimum; the trained policies' odds TV and their reward gap to the frontier)."""
    if front is None:
        return None
    nums, gaps = {}, []
    for n in names:
        for r in agg:
            if r["variant"] == n and np.isfinite(r["odds_tv"][0]):
                gap = frontier_reward(front, r["kl_rev_seq"][0]) - r["reward"][0]
                gaps.append(gap)
                nums[f"{n} β={r['beta']:g}: odds TV / KL / reward / gap to π*"] = (
                    f"{_fmt(r['odds_tv'])} / {r['kl_rev_seq'][0]:.3f} / {r['reward'][0]:.3f} / {gap:.3f}")
    worst = max((r["odds_tv"][0] for r in agg if np.isfinite(r["odds_tv"][0])), default=math.nan)
    parts = {"the optimum keeps the odds (odds TV = 0, exact)": "yes",
             "trained policies keep them too (odds TV < 0.05 for every point)": "yes" if worst < 0.05 else "no"}
    return {"claim": "equal-reward answers keep π_ref's odds (reverse-KL optimum π* ∝ π_ref e^{R/β}; GX-Chen et al. "
                     "2510.20817)", "parts": parts, "verdict": _verdict(parts), "numbers": nums,
            "note": "the optimum's frontier is reward(KL) of π*_β; 'gap' = its reward at the point's KL minus the "
                    "point's reward"}


def claim_fused(results, agg, names) -> dict | None:
    """FRPO §6: the KL fused into the reward before group normalization (grpo_k1_reward) collapses training —
    here: a lower reward than the loss-side k3 KL (grpo) at matched KL, and a larger reward drop (peak − final)."""
    if not {"grpo_k1_reward", "grpo"} <= set(names):
        return None
    rows = compare(results, "grpo_k1_reward", "grpo", "kl_rev_seq", "reward")
    drops = [(r["beta"], r["reward_drop"], next(q["reward_drop"] for q in agg if q["variant"] == "grpo" and
                                                q["beta"] == r["beta"])) for r in agg if r["variant"] == "grpo_k1_reward"]
    drop_part = ("yes" if any(f[1] > g[2] for _, f, g in drops) else
                 "means" if any(f[0] > g[0] + 0.02 for _, f, g in drops) else "no")
    parts = {"lower reward than grpo at matched KL": _part(rows, "a_lower"),
             "a larger reward drop (peak − final, 10-step average) than grpo at some β": drop_part}
    nums = {f"reward at KL={r['x']:.3f}: grpo_k1_reward / grpo": f"{_fmt(r['grpo_k1_reward'])} / {_fmt(r['grpo'])}"
            for r in rows}
    nums.update({f"reward drop at β={b:g}: grpo_k1_reward / grpo": f"{_fmt(f)} / {_fmt(g)}" for b, f, g in drops})
    nums.update({f"final reward at β={r['beta']:g}: {r['variant']}": _fmt(r["reward"]) for r in agg
                 if r["variant"] in ("grpo_k1_reward", "grpo")})
    return {"claim": "KL fused into the reward before normalization (grpo_k1_reward) collapses training", "parts": parts,
            "verdict": _verdict(parts), "numbers": nums}


def distance_table(agg: list[dict], names: list[str]) -> list[dict]:
    """Every (variant, β) point's exact distances to the three optima at its β: π*_β (reverse KL), the forward-KL
    optimum and the finite-group (U_G) optimum, as KL(π‖π_opt) and total variation."""
    keys = ("kl_to_opt_rev", "tv_to_opt_rev", "kl_to_opt_fwd", "tv_to_opt_fwd", "kl_to_opt_ug", "tv_to_opt_ug")
    return [{"variant": r["variant"], "beta": r["beta"], **{k: r[k] for k in keys if k in r}}
            for n in names for r in agg if r["variant"] == n and r["beta"] > 0 and "kl_to_opt_rev" in r]


def claim_is_k3_equals_k2(results, agg, names) -> dict | None:
    """On-policy (K = 1) ρ·k3 and k2 give the same gradient per sample, so the runs coincide."""
    if not {"grpo_is_k3", "grpo_k2_loss"} <= set(names):
        return None
    key = lambda r: (r["beta"], r["seed"])  # noqa: E731
    a = {key(r): r for r in results if r["variant"] == "grpo_is_k3"}
    b = {key(r): r for r in results if r["variant"] == "grpo_k2_loss"}
    diffs = [abs(a[k][m] - b[k][m]) for k in a if k in b for m in ("reward", "kl_rev_seq") if np.isfinite(a[k][m])]
    worst = max(diffs, default=math.nan)
    return {"claim": "at K = 1 the ρ·k3 loss and the k2 loss train identically (∇(ρ·k3) = ∇k2 per sample at ρ = 1)",
            "parts": {"max |Δ| of final reward and KL over matched runs < 1e-4": "yes" if worst < 1e-4 else "no"},
            "verdict": "reproduced" if worst < 1e-4 else "not reproduced", "numbers": {"max |Δ|": f"{worst:.2e}"}}


def claim_mroueh(results, agg, names, front) -> dict | None:
    """Mroueh's fixed point p*(p_ref, β) of GRPO's success recursion against GRPO's exact final reward."""
    if front is None or "grpo" not in names:
        return None
    from rlkl.utility import mroueh_fixed_point

    nums = {}
    for r in agg:
        if r["variant"] == "grpo":
            pred = float(np.mean([mroueh_fixed_point(p, r["beta"], 1e-6) for p in front["p_ref"]]))
            nums[f"β={r['beta']:g}: predicted p* (mean over prompts) / grpo's exact reward"] = \
                f"{pred:.3f} / {_fmt(r['reward'])}"
    return {"claim": "GRPO amplifies the success rate to the fixed point p* > p_ref of p_n = h(p_{n−1}) (Mroueh "
                     "2503.06639)", "parts": {}, "verdict": "qualified", "numbers": nums,
            "note": "p* is the limit of exact KL-to-π_ref-regularized steps with population whitening; rlkl's grpo "
                    "takes finite clipped steps with a k3 loss (forward-KL gradient) and G = 8 groups"}


def own_optimum_table(agg: list[dict], names: list[str]) -> list[dict]:
    """Each variant's distance KL(π‖π_opt) to the optimum of the objective its Method claims (the LM-scale version
    of the exact audit): E[R] − β KL(π‖π_ref) → π*_β; U_G(p) − β KL → the finite-group optimum; methods whose claim
    anchors π_old (RPG) or has no KL are left out."""
    from rlkl.methods import get_method
    from rlkl.objective import Anchor, Regularizer, Utility

    rows = []
    for n in names:
        method = dict((v[0], v[1]) for v in variants(4) + variants(8) + variants(2)).get(n, n)
        obj = get_method(method).objective
        if obj.anchor is not Anchor.REF or obj.regularizer is not Regularizer.REVERSE_KL:
            continue
        key = "kl_to_opt_ug" if obj.utility is Utility.FINITE_GROUP else "kl_to_opt_rev"
        for r in agg:
            if r["variant"] == n and key in r and np.isfinite(r[key][0]):
                rows.append({"variant": n, "beta": r["beta"], "objective": obj.describe(), "distance": key,
                             "kl_to_own_optimum": r[key]})
    return rows


CLAIMS = (claim_k1, claim_k3_forward, claim_frpo, claim_rpg_clip, claim_fused, claim_is_k3_equals_k2)
CLAIMS_WITH_FRONT = (claim_equal_odds, claim_mroueh)


def analyze(results: list[dict], args, front: dict | None) -> dict:
    order = [v[0] for v in variants(args.rpg_k)]
    names = [n for n in order if any(r["variant"] == n for r in results)]
    metrics = sorted({k for r in results for k in r if k not in ("variant", "beta", "seed")})
    agg = aggregate(results, names, metrics)
    verdicts = [c(results, agg, names) for c in CLAIMS] + [c(results, agg, names, front) for c in CLAIMS_WITH_FRONT]
    return {"names": names, "aggregate": agg, "claims": [v for v in verdicts if v is not None],
            "own_optimum": own_optimum_table(agg, names), "distances": distance_table(agg, names),
            "optimum_frontier": front}


def write_report(out: Path, results: list[dict], analysis: dict, args, seconds: float) -> None:
    from rlkl.experiments import write_csv, write_json

    write_json(out / "results.json", {"args": vars(args), "runs": results, **analysis, "wall_time": seconds})
    cols = ["variant", "beta", "n_seeds", "reward", "pass@8", "kl_rev_seq", "kl_fwd_seq", "entropy_seq",
            "entropy_tok", "odds_tv", "reward_drop"]
    write_csv(out / "results.csv", [{c: (_fmt(r[c]) if isinstance(r.get(c), list) else r.get(c)) for c in cols}
                                    for r in analysis["aggregate"]], cols)
    lines = [f"# LM frontier: {args.task}, {len(args.seeds)} seeds, β ∈ {list(args.betas)}, {args.steps} steps "
             f"({seconds / 60:.0f} min)", "",
             "Mean [95% percentile-bootstrap interval over seeds]. "
             + ("Exact sequence-level numbers on the training problems." if args.task == "divisor" else
                "Sampled eval numbers (reward = eval pass@1; KL = Rao-Blackwellized estimate)."), ""]
    for c in analysis["claims"]:
        lines.append(f"## {c['claim']}: **{c['verdict']}**")
        lines += [f"- {k}: {v}" for k, v in c["parts"].items()] + [f"- {k} = {v}" for k, v in c["numbers"].items()]
        if c.get("note"):
            lines.append(f"- note: {c['note']}")
        lines.append("")
    if analysis["own_optimum"]:
        lines += ["## Distance to the optimum of the method's own objective", "", "| variant | β | objective | KL(π‖π_opt) |",
                  "|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['beta']:g} | {r['objective']} | {_fmt(r['kl_to_own_optimum'])} |"
                  for r in analysis["own_optimum"]]
    if analysis.get("distances"):
        lines += ["", "## Exact distance to each optimum at the point's β (KL(π‖π_opt) / TV)", "",
                  "| variant | β | π*_β (reverse KL) | forward-KL optimum | U_G optimum |", "|---|---|---|---|---|"]
        cell = lambda r, a: (f"{_fmt(r['kl_to_opt_' + a])} / {r.get('tv_to_opt_' + a, [math.nan])[0]:.3f}"  # noqa
                             if np.isfinite(r.get("kl_to_opt_" + a, [math.nan])[0]) else "—")
        lines += [f"| {r['variant']} | {r['beta']:g} | {cell(r, 'rev')} | {cell(r, 'fwd')} | {cell(r, 'ug')} |"
                  for r in analysis["distances"]]
    (out / "claims.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _reference(args, out: Path) -> str:
    from rlkl.lm.train import PRESET_DIFFICULTY, default_ref_path

    ref = args.ref or default_ref_path(args.task, PRESET_DIFFICULTY["cpu_tiny"][args.task], "cpu_tiny")
    if not Path(ref).exists():
        from rlkl.lm.sft import sft_config_from_preset, train_sft

        print(f"no reference at {ref}: training the cpu_tiny SFT reference into {out / 'ref'}")
        train_sft(sft_config_from_preset("cpu_tiny", task=args.task,
                                         difficulty=PRESET_DIFFICULTY["cpu_tiny"][args.task]), out / "ref")
        ref = str(out / "ref" / "reference.pt")
    return ref


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="divisor", choices=["divisor", "addition"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--betas", type=float, nargs="+", default=list(DEFAULT_BETAS))
    p.add_argument("--steps", type=int, default=150, help="RL steps per run (cpu_tiny default 150)")
    p.add_argument("--eval_every", type=int, default=75, help="evaluations (the last one is the run's point)")
    p.add_argument("--rpg_k", type=int, default=4, help="optimizer steps per batch for the RPG variants")
    p.add_argument("--ref", default=None, help="SFT reference (default: the cpu_tiny one of the task)")
    p.add_argument("--workers", type=int, default=2, help="parallel runs (each on one thread)")
    p.add_argument("--only", nargs="*", default=None, help="run only these variants")
    p.add_argument("--out", default=None, help="run directory (default: runs/experiments/lm_frontier-TIME)")
    p.add_argument("--reanalyze", default=None, metavar="RUN_DIR", help="recompute the analysis of a finished run dir")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reanalyze:
        saved = json.loads((Path(args.reanalyze) / "experiment.json").read_text())
        args = argparse.Namespace(**{**saved["args"], "out": args.reanalyze, "reanalyze": None})
        keys = EXACT_KEYS if args.task == "divisor" else SAMPLED_KEYS  # today's metric set, not the saved one
        jobs, ref = [{**j, "keys": keys} for j in saved["jobs"]], saved["ref"]
    else:
        out = Path(args.out or f"runs/experiments/lm_frontier-{time.strftime('%Y%m%d-%H%M%S')}")
        out.mkdir(parents=True, exist_ok=True)
        ref = _reference(args, out)
        jobs = make_jobs(args, ref, out)
        (out / "experiment.json").write_text(json.dumps({"args": vars(args), "ref": ref, "jobs": jobs}, indent=1))
    out = Path(args.out)
    from tqdm.auto import tqdm

    t0 = time.time()
    if args.workers > 1:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            results = list(tqdm(pool.imap(_run_one, jobs), total=len(jobs), desc="runs"))
    else:
        results = [_run_one(j) for j in tqdm(jobs, desc="runs")]
    front = optimum_frontier(ref, args.task)
    write_report(out, results, analyze(results, args, front), args, time.time() - t0)
    print(f"results in {out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
