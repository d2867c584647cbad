"""Measurements behind the rows of docs/claims.md that need a trained LM (the rest are `rlkl verify`, `rlkl derive`,
the tests and the frontier experiment). Each sub-command prints the numbers its ledger row quotes.

    .venv/bin/python experiments/claims_ledger.py rb_kl RUN_DIR...      # Rao-Blackwell vs Monte Carlo KL, exactly
    .venv/bin/python experiments/claims_ledger.py k3_gap RUN_DIR...     # on-policy ∇k3 vs ∇(ρ·k3) on the LM
    .venv/bin/python experiments/claims_ledger.py groups RUN_DIR...     # group std (update size) and silent groups

RUN_DIR is an `rlkl train` run directory (its final checkpoint is the policy, its reference π_ref); `rb_kl` needs the
divisor task (every response enumerated). Results are printed as one line per run; ``--over_seeds`` then prints,
per (method, β, K, unclipped), the mean and 95 % percentile-bootstrap interval over the runs' seeds of every number:

    .venv/bin/python experiments/claims_ledger.py k3_gap runs/exp/frontier/runs/grpo-b*-s* --over_seeds
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def _settings(run_dir: str) -> dict:
    """K (updates per batch) and the clip switch of a run, from its config.json (to group runs over seeds)."""
    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    return {"K": int(cfg.get("updates_per_batch") or 1), "unclipped": bool(cfg.get("unclipped"))}


def _load(run_dir: str):
    from rlkl.lm.sft import load_reference
    from rlkl.lm.train import _read_config, load_policy

    policy, task = load_policy(run_dir)
    ref, _, _ = load_reference(_read_config(Path(run_dir)).ref)
    return policy.eval(), ref.eval(), task, json.loads((Path(run_dir) / "config.json").read_text())


@torch.no_grad()
def rb_vs_mc(run_dir: str) -> dict:
    """Exact mean and variance, over y ~ π on the training problems, of the Rao-Blackwellized and the Monte Carlo
    estimators of KL(π‖π_ref) (``rlkl.divergences``), by enumerating every response (divisor task)."""
    from rlkl.divergences import monte_carlo_kl, rao_blackwell_kl
    from rlkl.lm import exact as E
    from rlkl.lm.model import token_logprobs
    from rlkl.lm.train import policy_logits

    policy, ref, task, cfg = _load(run_dir)
    if not E.enumerable(task):
        raise ValueError(f"{run_dir}: rb_kl needs an enumerable task (divisor), got {task.name}")
    prompts = task.encode_prompts(task.split_problems("train"))
    V, R, eos = task.vocab_size, task.max_response_len, task.eos_id
    lp, resp, mask = E.sequence_logprobs(policy, prompts, V, R, eos)  # [n, M]
    M = resp.shape[0]
    stats = {"mean_rb": 0.0, "mean_mc": 0.0, "var_rb": 0.0, "var_mc": 0.0, "kl": 0.0, "neg_mc": 0.0}
    for i in range(prompts.shape[0]):
        rows = prompts[i : i + 1]
        lg, lg_ref = policy_logits(policy, rows, resp, M).double(), policy_logits(ref, rows, resp, M).double()
        rb = rao_blackwell_kl(lg, lg_ref, mask)  # [M]
        mc = monte_carlo_kl(token_logprobs(lg, resp), token_logprobs(lg_ref, resp), mask)  # [M]
        w = lp[i].exp()  # π(y|x)
        for name, est in (("rb", rb), ("mc", mc)):
            mean = (w * est).sum()
            stats[f"mean_{name}"] += float(mean)
            stats[f"var_{name}"] += float((w * (est - mean) ** 2).sum())
        stats["neg_mc"] += float((w * (mc < 0)).sum())
    n = prompts.shape[0]
    lq, _, _ = E.sequence_logprobs(ref, prompts, V, R, eos)
    out = {k: v / n for k, v in stats.items()}
    out["kl"] = float(E.kl(lp, lq).mean())
    out.update(method=cfg["method"], beta=cfg["beta"])
    return out


def k3_gradient_gap(run_dir: str, n_prompts: int = 64, group: int = 8, seed: int = 0) -> dict:
    """On-policy expected gradients of the per-token k3 loss and of ρ·k3 (π_old = π_θ) over the full vocabulary at
    the states the policy visits (rollouts of its training prompts), in parameter space; their relative gap, and
    each against the exact local KL gradient it should equal: ∇k3 ↔ ∇KL(π_ref‖π), ∇(ρ·k3) ↔ ∇KL(π‖π_ref)."""
    from rlkl.losses import kl_loss
    from rlkl.lm.metrics import token_kl
    from rlkl.lm.model import sample
    from rlkl.lm.train import policy_logits

    policy, ref, task, cfg = _load(run_dir)
    prompts = task.sample_prompts(n_prompts, torch.Generator().manual_seed(seed))
    resp, mask, _ = sample(policy, prompts, task.max_response_len, task.eos_id, torch.Generator().manual_seed(seed),
                           group_size=group)
    params = [p for p in policy.parameters()]
    logits = policy_logits(policy, prompts, resp, group)  # [B, R, V] with grad
    with torch.no_grad():
        logits_ref = policy_logits(ref, prompts, resp, group)
    lp = torch.log_softmax(logits, -1)  # [B, R, V]
    lq = torch.log_softmax(logits_ref, -1)
    states = mask.sum()

    def expected(importance_weight: bool) -> torch.Tensor:  # Σ_s Σ_v sg[π(v|s)] · loss(v|s) / #states
        flat_lp, flat_lq = lp.reshape(-1, 1), lq.reshape(-1, 1)  # every (state, token) as one "sampled token"
        ones = torch.ones_like(flat_lp, dtype=torch.bool)
        per = kl_loss(flat_lp, flat_lq, ones, "k3", False, flat_lp.detach(), importance_weight).view_as(lp)
        return ((lp.exp().detach() * per).sum(-1) * mask).sum() / states  # sg[π]: the sampling weights are data

    def grad(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(x, params, retain_graph=True)])

    g_k3, g_rk3 = grad(expected(False)), grad(expected(True))
    g_fwd = grad((token_kl(logits_ref, logits) * mask).sum() / states)  # ∇ local KL(π_ref‖π), states fixed
    g_rev = grad((token_kl(logits, logits_ref) * mask).sum() / states)  # ∇ local KL(π‖π_ref)
    rel = lambda a, b: float((a - b).norm() / b.norm().clamp_min(1e-30))  # noqa: E731
    kl_tok = float((token_kl(logits.detach(), logits_ref) * mask).sum() / states)
    return {"method": cfg["method"], "beta": cfg["beta"], "kl_rev_tok": kl_tok,
            "gap_k3_vs_rho_k3": rel(g_k3, g_rk3), "k3_vs_forward_kl": rel(g_k3, g_fwd),
            "rho_k3_vs_reverse_kl": rel(g_rk3, g_rev)}


def groups(run_dir: str) -> dict:
    """Mean over RL steps of the group std (the GRPO update size, Bay & Yearick) and of the silent-group fraction."""
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in rows if "group_std_mean" in r]
    if not train:
        raise ValueError(f"{run_dir}: no group_std_mean in metrics.jsonl (a run from before the metric existed)")
    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    mean = lambda k: sum(r[k] for r in train) / len(train)  # noqa: E731
    return {"method": cfg["method"], "beta": cfg["beta"], "group_std_mean": mean("group_std_mean"),
            "zero_adv_group_frac": mean("zero_adv_group_frac"), "first10_group_std": sum(
                r["group_std_mean"] for r in train[:10]) / 10, "last10_group_std": sum(
                r["group_std_mean"] for r in train[-10:]) / 10}


def over_seeds(results: list[dict]) -> list[dict]:
    """One row per configuration (method, β, K, unclipped): every numeric field as (mean, low, high) over seeds."""
    from rlkl.experiments.lm_frontier import bootstrap_ci

    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["beta"], r.get("K", 1), r.get("unclipped", False)), []).append(r)
    out = []
    for (method, beta, k, unclipped), rows in groups.items():
        nums = {f: bootstrap_ci([x[f] for x in rows]) for f, v in rows[0].items()
                if isinstance(v, float) and f != "beta"}
        out.append({"method": method, "beta": beta, "K": k, "unclipped": unclipped, "n_seeds": len(rows), **nums})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["rb_kl", "k3_gap", "groups"])
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--over_seeds", action="store_true", help="also print mean [95%% bootstrap interval] per config")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    fn = {"rb_kl": rb_vs_mc, "k3_gap": k3_gradient_gap, "groups": groups}[args.what]
    res = [{"run": r, **_settings(r), **fn(r)} for r in args.run_dirs]
    for r in res:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    agg = over_seeds(res) if args.over_seeds else []
    for a in agg:
        print(f"{a['method']} β={a['beta']:g} K={a['K']}{' unclipped' if a['unclipped'] else ''} "
              f"({a['n_seeds']} seeds): " + "  ".join(f"{k}={v[0]:.4g} [{v[1]:.4g}, {v[2]:.4g}]" for k, v in
                                                      a.items() if isinstance(v, tuple)))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": res, "over_seeds": agg} if agg else res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
