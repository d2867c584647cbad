"""Benchmark: loss forward + backward of rlkl's methods against verl 0.9.1's loss functions, in one run.

    rlkl bench loss_vs_verl                     # skips with a message when verl is not installed
    PYTHONPATH=. ~/.cache/rlkl/venvs/verl/bin/python benchmarks/loss_vs_verl.py  # the venv of test_integrations.sh verl

For each shape [B, T] (default [512, 1024] and [64, 256]; float32; response lengths uniform in [1, T]; groups of
G = 8 rows; binary rewards) it times the forward pass and ``backward()`` w.r.t. ``logp`` of, given the same
``[B, T]`` advantages on both sides (computed once per batch, as verl's driver does):

* ``grpo`` — rlkl ``get_method("grpo").loss_given_advantages(logp, logp_old, mask, A, logp_ref)`` (inputs validated
  at this public boundary; PPO clip with dual clip c = 3, k3 KL loss β = 0.04, seq-mean-token-mean) against verl's
  ``compute_policy_loss_vanilla`` (same clip) + β·``agg_loss(kl_penalty(logp, logp_ref, "low_var_kl"))``;
* ``frpo`` — the same for ``get_method("frpo")`` (FRPO token advantages, PPO clip, seq-mean-token-sum) against the
  same verl anchor in seq-mean-token-sum (verl has no FRPO; its GRPO loss with a KL loss is the closest thing);
* ``ppo`` — the PPO loss alone: rlkl's public ``aggregate(ppo_clip_loss(...).loss, mask, "token-mean")`` against
  verl's ``compute_policy_loss_vanilla`` in token-mean; ``ppo+metrics`` also reads the clip fractions and the ratio
  mean (rlkl computes diagnostics when read; verl's vanilla loss always computes three and calls ``.item()``);

and, as extra rows against the same anchors, ``grpo.loss`` / ``frpo.loss``: rlkl's ``Method.loss(logp, batch)``,
which also computes the advantages from the rewards on every call (verl's anchor is given them).

rlkl's ``RolloutBatch`` is built once, outside the timed region (a trainer builds one per rollout). Implementations
are interleaved: each repeat times every implementation once (``--inner`` calls each, the time per call), in
alternating order, ``--repeats`` repeats; it prints min and median per call of the process CPU time (with one
intra-op thread the work done, little affected by other processes on a shared machine) and the ratios rlkl/verl of
the minima and of the medians, for CPU and for wall time, with the load average before and after. Not a timed test: nothing is
asserted. Target: the ``grpo``, ``frpo`` and ``ppo`` rows at <= 1.0 (CPU, min and median), printed as a verdict per
row; ``ppo+metrics``, ``grpo.loss`` and ``frpo.loss`` do more work than their anchor (diagnostics read, advantages
computed from the rewards) and are printed for reference, without a verdict.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time

import torch

#: arguments of ``rlkl bench --quick``
QUICK_ARGV = ("--repeats", "3", "--inner", "2")

G, BETA, CLIP, DUAL = 8, 0.04, 0.2, 3.0


def _inputs(B: int, T: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    logp_old = -torch.rand(B, T, generator=gen) * 3.0
    logp = (logp_old + 0.1 * torch.randn(B, T, generator=gen)).clamp(max=0.0)
    logp_ref = (logp_old + 0.1 * torch.randn(B, T, generator=gen)).clamp(max=0.0)
    rewards = (torch.rand(B, generator=gen) < 0.4).float()
    return dict(logp=logp * mask, logp_old=logp_old * mask, logp_ref=logp_ref * mask, mask=mask, rewards=rewards)


def _cases(x: dict):
    """(case name, rlkl closure, verl closure); each closure runs forward + backward on a fresh leaf."""
    from verl.trainer.ppo import core_algos
    from verl.workers.config import FSDPActorConfig, PolicyLossConfig

    from rlkl.losses import aggregate, ppo_clip_loss
    from rlkl.methods import RolloutBatch, get_method

    mask, logp_old, logp_ref = x["mask"], x["logp_old"], x["logp_ref"]
    batch = RolloutBatch(logp_old, logp_ref, mask, x["rewards"], G)
    grpo, frpo = get_method("grpo"), get_method("frpo")
    adv_grpo = grpo.advantages(batch)  # [B, T], what verl's driver would hand its actor
    adv_frpo = frpo.advantages(batch)
    fmask = mask.float()

    def cfg(mode):
        return FSDPActorConfig(strategy="fsdp", rollout_n=G, ppo_micro_batch_size_per_gpu=4, clip_ratio=CLIP,
                               clip_ratio_low=CLIP, clip_ratio_high=CLIP, clip_ratio_c=DUAL, loss_agg_mode=mode,
                               use_kl_loss=True, kl_loss_coef=BETA, policy_loss=PolicyLossConfig(loss_mode="vanilla"))

    configs = {m: cfg(m) for m in ("seq-mean-token-mean", "seq-mean-token-sum", "token-mean")}
    vanilla = core_algos.get_policy_loss_fn("vanilla")

    def leaf():
        return x["logp"].clone().requires_grad_(True)

    def verl_with_kl(adv, mode):
        def run():
            lp = leaf()
            pg, _ = vanilla(logp_old, lp, adv, fmask, mode, configs[mode])
            kl = core_algos.agg_loss(core_algos.kl_penalty(lp, logp_ref, "low_var_kl"), fmask, mode)
            (pg + BETA * kl).backward()
        return run

    def rlkl_given(method, adv):
        def run():
            lp = leaf()
            loss, _ = method.loss_given_advantages(lp, logp_old, mask, adv, logp_ref)
            loss.backward()
        return run

    def rlkl_method(method):
        def run():
            lp = leaf()
            loss, _ = method.loss(lp, batch)
            loss.backward()
        return run

    def rlkl_ppo(metrics: bool):
        def run():
            lp = leaf()
            out = ppo_clip_loss(lp, logp_old, adv_grpo, mask, CLIP, CLIP, DUAL)
            aggregate(out.loss, mask, "token-mean").backward()
            if metrics:  # what verl's vanilla loss reports (.item() each): clip fractions and the ratio
                [float(v) for v in (out.clip_fraction_low + out.clip_fraction_high, out.dual_clip_fraction,
                                    out.ratio_mean)]
        return run

    def verl_ppo():
        lp = leaf()
        pg, _ = vanilla(logp_old, lp, adv_grpo, fmask, "token-mean", configs["token-mean"])
        pg.backward()

    verl_grpo, verl_frpo = verl_with_kl(adv_grpo, "seq-mean-token-mean"), verl_with_kl(adv_frpo, "seq-mean-token-sum")
    return [("grpo", rlkl_given(grpo, adv_grpo), verl_grpo), ("frpo", rlkl_given(frpo, adv_frpo), verl_frpo),
            ("ppo", rlkl_ppo(False), verl_ppo), ("ppo+metrics", rlkl_ppo(True), verl_ppo),
            ("grpo.loss", rlkl_method(grpo), verl_grpo), ("frpo.loss", rlkl_method(frpo), verl_frpo)]


TARGET_ROWS = ("grpo", "frpo", "ppo")  # the rows with a target; the others do more work than their anchor


def _time(fn, inner: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) per call, over ``inner`` calls."""
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - w0) / inner, (time.process_time() - c0) / inner


def _stats(xs: list[float]) -> tuple[float, float]:
    return min(xs), statistics.median(xs)


def run(shapes: list[tuple[int, int]], repeats: int, inner: int) -> list[dict]:
    rows = []
    for B, T in shapes:
        cases = _cases(_inputs(B, T))
        times = {(name, who): [] for name, _, _ in cases for who in ("rlkl", "verl")}
        for name, r, v in cases:  # warm-up (first autograd call, allocator)
            r(), v()
        for rep in range(repeats):
            for name, r, v in cases:
                order = (("rlkl", r), ("verl", v)) if rep % 2 == 0 else (("verl", v), ("rlkl", r))
                for who, fn in order:
                    times[(name, who)].append(_time(fn, inner))
        for name, _, _ in cases:
            row = dict(shape=(B, T), case=name)
            for k, clock in enumerate(("wall", "cpu")):
                r_min, r_med = _stats([t[k] for t in times[(name, "rlkl")]])
                v_min, v_med = _stats([t[k] for t in times[(name, "verl")]])
                row[clock] = dict(rlkl_min=r_min, rlkl_median=r_med, verl_min=v_min, verl_median=v_med,
                                  ratio_min=r_min / v_min, ratio_median=r_med / v_med)
            rows.append(row)
            c, w = row["cpu"], row["wall"]
            print(f"[{B:>4}, {T:>4}]  {name:<11} CPU ms rlkl {1e3 * c['rlkl_min']:7.2f} / {1e3 * c['rlkl_median']:7.2f}  "
                  f"verl {1e3 * c['verl_min']:7.2f} / {1e3 * c['verl_median']:7.2f}  ratio {c['ratio_min']:.2f}× / "
                  f"{c['ratio_median']:.2f}×  | wall ratio {w['ratio_min']:.2f}× / {w['ratio_median']:.2f}×", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7, help="interleaved repeats (min and median over them)")
    p.add_argument("--inner", type=int, default=3, help="calls per timing")
    p.add_argument("--shapes", nargs="+", default=["512x1024", "64x256"], help="BxT shapes")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if importlib.util.find_spec("verl") is None:
        print("loss_vs_verl: verl is not installed, skipping (build its venv with scripts/test_integrations.sh verl "
              "and run this file with that venv's python, PYTHONPATH=<checkout>)")
        return 0
    import verl

    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    print(f"torch {torch.__version__}, verl {verl.__version__}, float32, {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    print("per call: min / median over the repeats; CPU = this process's CPU time (robust to a loaded machine), "
          "wall = elapsed")
    rows = run(shapes, args.repeats, args.inner)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    for row in rows:
        if row["case"] in TARGET_ROWS:
            c = row["cpu"]
            worst = max(c["ratio_min"], c["ratio_median"])
            print(f"target {row['case']} {list(row['shape'])} <= 1.0× verl (CPU, min and median): {worst:.2f}× -> "
                  + ("met" if worst <= 1.0 else "MISSED"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
