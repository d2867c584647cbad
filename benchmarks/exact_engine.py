"""Benchmark: exact expected gradient of a Method as the number N of enumerated responses grows 10^3 → 10^6.

    rlkl bench exact_engine            # full sweep (N = 10^3 … 10^6), ~1–2 min on 2 cores
    rlkl bench --quick exact_engine    # N = 10^3 … 10^5
    .venv/bin/python benchmarks/exact_engine.py [--quick]   # the same, as a script in a checkout

For each N (one prompt, V = 10, T = 3..6, so N = 10^T) it times `rlkl.toy.expected.expected_gradient` for

* ``rpg_urkl_seq`` — RPG-REINFORCE URKL at sequence level with a raw advantage (row-separable: one vectorized
  loss call per chunk of responses, the ``per_sample`` route), off-policy;
* ``grpo`` — GRPO with its k3 KL loss, G = 4, binary rewards, through the exchangeable/binomial route
  (N·G groups of G rows),

and a per-response Python loop doing the same computation one response at a time (one `Method.loss` call and one
autograd pass per response, the straightforward implementation). The loop runs on min(N, 2000) responses and is
extrapolated linearly (it is linear in N by construction). GRPO runs up to N = 10^5 (its exact route evaluates
N·G groups of G rows). Timings are reported with 1 and 2 intra-op threads: on a loaded machine the 2-thread pool
can be much slower for the many mid-size tensor ops. Target: N = 10^5 in under a second on 2 cores.
Not a timed test; it prints the ratios.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from rlkl.components import Raw
from rlkl.methods import get_method
from rlkl.toy.expected import _call, _prepare, expected_gradient, loss_spec, make_batch
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.policies import TabularPolicy

#: arguments of ``rlkl bench --quick``
QUICK_ARGV = ("--quick",)


def loop_seconds(method, mdp, pi, old, ref, limit: int = 2000) -> tuple[float, int]:
    """Per-response Python loop: E[∇L] = Σ_y q(y)∇ℓ(y), one loss call + one autograd pass per response.

    Returns (seconds extrapolated to all N responses, number actually run)."""
    spec = loss_spec(method, mdp, 1)
    data = _prepare(mdp, pi, old, ref, keep_graph=False)
    N = mdp.num_responses
    n = min(N, limit)
    t0 = time.perf_counter()
    nlp = pi.node_log_probs()  # built once; each response gathers its own T log-probs from it
    e = mdp.enumerate()
    total = torch.zeros_like(pi.theta)
    for i in range(n):
        rows = torch.tensor([i])
        batch = make_batch(data, rows, 1)
        logp = nlp[0, e.node_index[i], e.tokens[i]].unsqueeze(0)
        logp = torch.where(batch.mask, logp, torch.zeros((), dtype=logp.dtype))  # padding (none at fixed length)
        loss = _call(spec, logp, batch) * data.q[0, i]
        (g,) = torch.autograd.grad(loss, pi.theta, retain_graph=True)
        total += g
    return (time.perf_counter() - t0) * N / n, n


def _time(fn, repeats: int) -> tuple[float, float]:
    """(first-call seconds, best of the following ``repeats`` calls)."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return first, (best if repeats else first), out


def run(sizes: list[int], grpo_max: int = 5, repeats: int = 2) -> list[dict]:
    rows = []
    for T in sizes:
        N = 10**T
        mdp = TreeMDP.random(10, T, 1, reward="binary", success_rate=0.3, seed=T)
        pi = TabularPolicy.random(mdp, seed=1)
        ref = TabularPolicy.random(mdp, seed=2).detached()
        old = pi.perturbed(0.2, 3).detached()
        cases = [("rpg_urkl_seq", get_method("rpg_reinforce_urkl_seq").replace(advantage=Raw(), beta=0.1), old, 1)]
        if T <= grpo_max:
            cases.append(("grpo(G=4)", get_method("grpo").replace(beta=0.1), None, 4))
        for label, method, beh, G in cases:
            first, best, eg = _time(lambda: expected_gradient(method, mdp, pi, beh, ref, group_size=G),
                                    repeats if N <= 10**5 else 0)
            if G == 1:
                loop_s, ran = loop_seconds(method, mdp, pi, beh, ref, limit=1000)
            else:
                loop_s, ran = float("nan"), 0
            rows.append(dict(N=N, method=label, route=eg.route, groups=eg.num_groups, first=first, seconds=best,
                             loop_seconds=loop_s, loop_ran=ran, speedup=loop_s / best))
            loop_txt = (f"loop {loop_s:9.1f}s (ran {ran}, extrapolated)  ratio ×{loop_s / best:,.0f}" if G == 1 else
                        "(a per-tuple loop would need N·G·G loss calls)")
            print(f"N={N:>9,}  {label:<13} {eg.route:<21} groups={eg.num_groups:>9,}  first {first:7.3f}s  "
                  f"repeat {best:7.3f}s  {loop_txt}", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="stop at N = 10^5")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts to compare")
    args = p.parse_args(argv)
    sizes = [3, 4, 5] if args.quick else [3, 4, 5, 6]
    print(f"torch {torch.__version__}, float64, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    print("first = first call (builds and caches the enumeration); repeat = best later call")
    summary = {}
    for nt in args.threads:
        torch.set_num_threads(nt)
        print(f"--- {nt} intra-op thread(s)")
        rows = run(sizes)
        n5 = [r for r in rows if r["N"] == 10**5 and r["method"] == "rpg_urkl_seq"]
        if n5:
            summary[nt] = n5[0]["seconds"]
    for nt, sec in summary.items():
        print(f"target N=10^5 under 1 s ({nt} thread(s)): {sec:.3f}s -> {'OK' if sec < 1 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
