"""Benchmark: exact expected gradient of a Method as the number N of enumerated responses grows 10^3 → 10^6.

    rlkl bench exact_engine            # full sweep (N = 10^3 … 10^6), ~1–2 min on 2 cores
    rlkl bench --quick exact_engine    # N = 10^3 … 10^5
    .venv/bin/python benchmarks/exact_engine.py [--quick]   # the same, as a script in a checkout

For each N (one prompt, V = 10, T = 3..6, so N = 10^T) it times `rlkl.toy.expected.expected_gradient` for

* ``rpg_urkl_seq`` — RPG-REINFORCE URKL at sequence level with a raw advantage (row-separable: one vectorized
  loss call per chunk of responses, the ``per_sample`` route), off-policy;
* ``grpo`` — GRPO with its k3 KL loss, G = 4, binary rewards, through the exchangeable/binomial route
  (N·G groups of G rows),

The first call builds and caches the tree's enumeration and the fixed policies' node tables (π_old, π_ref: reused
while their θ holds the same values, docs/audit.md); the repeats are what a training loop or a sweep against a fixed
π_ref pays per evaluation. Before a large enumeration the engine lets glibc keep freed memory
(`rlkl._memory.retain_freed_memory`; ``RLKL_MALLOC_DEFAULTS=1`` to measure without it). Each row is compared with
a per-response Python loop doing the same computation one response at a time (one `Method.loss` call and one
autograd pass per response, the straightforward implementation). The loop runs on min(N, 2000) responses and is
extrapolated linearly (it is linear in N by construction). GRPO runs up to N = 10^5 (its exact route evaluates
N·G groups of G rows). Timings are reported with 1 and 2 intra-op threads (on a loaded machine the engine itself
drops to 1 thread: `rlkl.toy.mdp.threads_for`).

The anchor: the machine's copy bandwidth, measured in the same run (best over the thread counts), and the minimal
bytes each evaluation must touch (`minimal_bytes`); each row prints seconds / (bytes / bandwidth). Targets:
``rpg_urkl_seq`` at N = 10^6 within 20× of that limit, ``grpo`` (G = 4) at N = 10^5 within 50×.
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
from rlkl.toy.mdp import TreeMDP, other_cores_busy
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


def copy_bandwidth(mbytes: int = 256, repeats: int = 5) -> float:
    """The machine's copy bandwidth in bytes/s, measured now: best of ``repeats`` copies of a ``mbytes`` MB float64
    buffer into another (each copy reads and writes it: 2·size bytes moved)."""
    src = torch.rand(mbytes * 2**20 // 8, dtype=torch.float64)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch of the pages
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 8 / best


def minimal_bytes(label: str, mdp: TreeMDP, pi: TabularPolicy, G: int) -> int:
    """The bytes an exact evaluation must touch at least (its bandwidth limit = bytes / copy bandwidth).

    ``rpg_urkl_seq``: three ``[N, T]`` float64 log-prob arrays (π_θ, π_old, π_ref), the bool mask, the float64
    rewards, the three policies' parameters and the gradient. ``grpo``: N·G (response, success count of the other
    rows) rows of five ``[T]`` float64 arrays (log π_θ, log π_old, log π_ref, advantage, gradient)."""
    N, T = mdp.num_responses, mdp.horizon
    if label.startswith("grpo"):
        return N * G * 5 * T * 8
    params = pi.theta.numel() * 8
    return 3 * N * T * 8 + N * T + N * 8 + 3 * params + params


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


def run(sizes: list[int], grpo_max: int = 5, repeats: int = 3, bandwidth: float | None = None) -> list[dict]:
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
            busy = torch.get_num_threads() > 1 and other_cores_busy()  # then threads_for runs it on 1 thread
            first, best, eg = _time(lambda: expected_gradient(method, mdp, pi, beh, ref, group_size=G), repeats)
            if G == 1:
                loop_s, ran = loop_seconds(method, mdp, pi, beh, ref, limit=1000)
            else:
                loop_s, ran = float("nan"), 0
            limit = minimal_bytes(label, mdp, pi, G) / bandwidth if bandwidth else float("nan")
            rows.append(dict(N=N, method=label, route=eg.route, groups=eg.num_groups, first=first, seconds=best,
                             loop_seconds=loop_s, loop_ran=ran, speedup=loop_s / best, limit=limit,
                             over_limit=best / limit))
            loop_txt = (f"loop {loop_s:9.1f}s (ran {ran}, extrapolated)  ratio ×{loop_s / best:,.0f}" if G == 1 else
                        "(a per-tuple loop would need N·G·G loss calls)")
            print(f"N={N:>9,}  {label:<13} {eg.route:<21} groups={eg.num_groups:>9,}  first {first:7.3f}s  "
                  f"repeat {best:7.3f}s  ×{best / limit:6.1f} the bandwidth limit  {loop_txt}"
                  + ("  [other processes busy: the engine ran on 1 thread]" if busy else ""),
                  flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="stop at N = 10^5")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts to compare")
    p.add_argument("--sizes", type=int, nargs="+", help="exponents T of N = 10^T (default 3 4 5 6; --quick: 3 4 5)")
    args = p.parse_args(argv)
    sizes = args.sizes or ([3, 4, 5] if args.quick else [3, 4, 5, 6])
    print(f"torch {torch.__version__}, float64, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    print("first = first call (builds and caches the enumeration and the fixed policies' tables); repeat = best of 3 "
          "later calls; bandwidth limit = the minimal bytes (benchmarks/exact_engine.py: minimal_bytes) at the copy "
          "bandwidth measured now")
    targets = {"rpg_urkl_seq": (10**6, 20.0), "grpo(G=4)": (10**5, 50.0)}
    results = []
    measured = {}
    for nt in args.threads:  # the anchor: the best copy bandwidth over the thread counts (the strictest limit)
        torch.set_num_threads(nt)
        measured[nt] = copy_bandwidth()
    bandwidth = max(measured.values())
    print("copy bandwidth " + ", ".join(f"{b / 1e9:.1f} GB/s ({nt} thread(s))" for nt, b in measured.items())
          + f"; the limits use {bandwidth / 1e9:.1f} GB/s")
    if other_cores_busy():
        print("other processes hold the other cores (rlkl.toy.mdp.other_cores_busy): the engine runs large "
              "enumerations on 1 thread (rlkl.toy.mdp.threads_for), so the thread counts below differ little")
    for nt in args.threads:
        torch.set_num_threads(nt)
        print(f"--- {nt} intra-op thread(s)")
        results += [dict(r, threads=nt) for r in run(sizes, bandwidth=bandwidth)]
    for label, (N, factor) in targets.items():
        for r in (r for r in results if r["method"] == label and r["N"] == N):
            verdict = "OK" if r["over_limit"] <= factor else "MISSED"
            own = r["over_limit"] * measured[r["threads"]] / bandwidth  # against this thread count's own bandwidth
            print(f"target {label} N={N:,} within {factor:.0f}× the bandwidth limit ({r['threads']} thread(s)): "
                  f"{r['seconds']:.3f}s = {r['over_limit']:.1f}× -> {verdict}  ({own:.1f}× at the "
                  f"{measured[r['threads']] / 1e9:.1f} GB/s of {r['threads']} thread(s))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
