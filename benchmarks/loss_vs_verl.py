"""Benchmark: loss forward + backward of rlkl's methods against verl 0.9.1's loss functions, in one run.

    rlkl bench loss_vs_verl                     # skips with a message when verl is not installed
    ~/.cache/rlkl/venvs/verl/bin/python benchmarks/loss_vs_verl.py     # the venv of scripts/test_integrations.sh verl

For each shape [B, T] (default [512, 1024] and [64, 256]; float32; response lengths uniform in [1, T]; groups of
G = 8 rows; binary rewards) it times the forward pass and ``backward()`` w.r.t. ``logp`` of

* ``grpo`` — rlkl ``get_method("grpo").loss(logp, batch)`` (group-standardized advantages computed inside, PPO clip
  with dual clip c = 3, k3 KL loss β = 0.04, seq-mean-token-mean) against verl's ``compute_policy_loss_vanilla``
  (same clip, precomputed advantages) + β·``agg_loss(kl_penalty(logp, logp_ref, "low_var_kl"))``;
* ``frpo`` — rlkl ``get_method("frpo").loss(logp, batch)`` (FRPO token advantages — group standardization minus β
  times the future sum of log-ratios — computed inside, PPO clip, seq-mean-token-sum) against the same verl
  anchor in seq-mean-token-sum (verl has no FRPO; its GRPO loss with a KL loss is the closest thing it runs);
* ``ppo`` — the PPO loss alone: rlkl's public ``aggregate(ppo_clip_loss(...).loss, mask, "token-mean")`` (inputs
  validated at this public boundary) against verl's ``compute_policy_loss_vanilla`` in token-mean.

rlkl's ``RolloutBatch`` is built once, outside the timed region (a trainer builds one per rollout and calls the loss
on it); verl's advantages are precomputed likewise. verl's vanilla loss calls ``.item()`` on three metrics; rlkl's
``Method.loss`` returns its diagnostics lazily (computed when read), so neither side pays for metrics it is not
asked for beyond that. Implementations are interleaved: each repeat times every implementation once
(``--inner`` calls each, the time per call), ``--repeats`` repeats; it prints min and median per call and the ratios
rlkl/verl of the minima and of the medians, with the load average before and after (the machine is shared). Not a
timed test: nothing is asserted. Target: every ratio <= 1.0.
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

    def rlkl_method(method):
        def run():
            lp = leaf()
            loss, _ = method.loss(lp, batch)
            loss.backward()
        return run

    def rlkl_ppo():
        lp = leaf()
        out = ppo_clip_loss(lp, logp_old, adv_grpo, mask, CLIP, CLIP, DUAL)
        aggregate(out.loss, mask, "token-mean").backward()

    def verl_ppo():
        lp = leaf()
        pg, _ = vanilla(logp_old, lp, adv_grpo, fmask, "token-mean", configs["token-mean"])
        pg.backward()

    return [("grpo", rlkl_method(grpo), verl_with_kl(adv_grpo, "seq-mean-token-mean")),
            ("frpo", rlkl_method(frpo), verl_with_kl(adv_frpo, "seq-mean-token-sum")),
            ("ppo", rlkl_ppo, verl_ppo)]


def _time(fn, inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


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
            tr, tv = times[(name, "rlkl")], times[(name, "verl")]
            row = dict(shape=(B, T), case=name, rlkl_min=min(tr), rlkl_median=statistics.median(tr),
                       verl_min=min(tv), verl_median=statistics.median(tv))
            row["ratio_min"] = row["rlkl_min"] / row["verl_min"]
            row["ratio_median"] = row["rlkl_median"] / row["verl_median"]
            rows.append(row)
            print(f"[{B:>4}, {T:>4}]  {name:<5} rlkl min {1e3 * row['rlkl_min']:8.2f} ms  median "
                  f"{1e3 * row['rlkl_median']:8.2f} ms | verl min {1e3 * row['verl_min']:8.2f} ms  median "
                  f"{1e3 * row['verl_median']:8.2f} ms | ratio rlkl/verl: min {row['ratio_min']:.2f}×  median "
                  f"{row['ratio_median']:.2f}×", flush=True)
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
    run(shapes, args.repeats, args.inner)
    print(f"load average after: {os.getloadavg()[0]:.1f}; target: every ratio <= 1.0")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
