"""Benchmark: the exact audit of a plain verl-signature policy loss on the default trees, probed vs declared.

    rlkl bench callable_audit            # ~10–30 s on 2 cores
    rlkl bench --quick callable_audit
    .venv/bin/python benchmarks/callable_audit.py [--quick]   # the same, as a script in a checkout

The loss is a custom policy loss with verl 0.9.1's signature ``fn(old_log_prob, log_prob, advantages,
response_mask, loss_agg_mode, config, rollout_is_weights)`` (PPO clip with dual clip, token-mean, written here in
torch: verl is not needed), wrapped with ``rlkl.testing.from_verl(fn, advantage=GroupStandardized())`` (verl's
``grpo`` estimator). On `rlkl.toy.audit.default_mdps()` (V = 3, T = 3, two prompts, 27 responses each), G = 4,
it times:

* **probed** — ``rlkl.testing.check_optimizes(loss, E[R])`` on the callable: probe its coupling
  (`rlkl.toy.probe`), take the exact route it allows, compare with −c∇J (the audit, without the explanation);
* **declared** (the anchor) — the same callable as ``LossSpec(fn, 4, "token-mean", "rewards")`` through
  `rlkl.toy.expected.expected_gradient`: the fast route a user gets by declaring the coupling by hand;
* **undeclared** — what the engine does with a callable it knows nothing about: one loss call per ordered
  G-tuple (2·27⁴ ≈ 1.06 M calls), timed on a sample of calls and extrapolated linearly (linear by construction).

Each after a warm-up call (the first autograd call of a process imports part of torch, ≈ 1 s). It prints the
seconds and the ratios against the declared anchor, and checks that the probed and declared gradients agree.
Target: the probed audit in <= 1 s. Not a timed test.
"""

from __future__ import annotations

import argparse
import time

import torch

from rlkl.components import GroupStandardized
from rlkl.losses import aggregate
from rlkl.objective import Objective
from rlkl.testing import check_optimizes, from_verl
from rlkl.toy.audit import default_mdps, make_setup
from rlkl.toy.expected import LossSpec, _accumulate_single, _Coef, _prepare, _tuples_for_prompt, expected_gradient

#: arguments of ``rlkl bench --quick``
QUICK_ARGV = ("--quick",)


def custom_policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
                       rollout_is_weights=None):
    """A user's verl-signature PPO policy loss (clip ε = 0.2 both sides, dual clip c = 3)."""
    ratio = torch.exp(torch.clamp(log_prob - old_log_prob, -20.0, 20.0))
    l1 = -advantages * ratio
    l2 = -advantages * torch.clamp(ratio, 1.0 - config.clip_ratio_low, 1.0 + config.clip_ratio_high)
    clipped = torch.maximum(l1, l2)
    pg = torch.where(advantages < 0, torch.minimum(-advantages * config.clip_ratio_c, clipped), clipped)
    if rollout_is_weights is not None:
        pg = pg * rollout_is_weights
    return aggregate(pg * response_mask, response_mask, loss_agg_mode), {}


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def undeclared_seconds(loss, mdp, pi, ref, G: int, sample: int) -> tuple[float, int]:
    """One call per ordered G-tuple (the engine's route for an unknown callable): (extrapolated s, tuples)."""
    spec = LossSpec(loss, G, None, "full", "undeclared")
    data = _prepare(mdp, pi, None, ref)
    coef = _Coef(data, dense=True)  # the [P·N, T] coefficients the engine's loop route accumulates
    rows, probs = _tuples_for_prompt(data, 0, G, 10**9)
    total = rows.shape[0] * mdp.num_prompts
    n = min(sample, rows.shape[0])
    t0 = time.perf_counter()
    for k in range(n):
        _accumulate_single(spec, data, rows[k], probs[k].expand(G), coef, G)
    return (time.perf_counter() - t0) * total / n, total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a smaller extrapolation sample")
    args = parser.parse_args(argv)
    repeats, sample = (2, 200) if args.quick else (5, 1000)
    torch.set_num_threads(1)
    (mdp,) = default_mdps()
    G = 4
    loss = from_verl(custom_policy_loss, advantage=GroupStandardized(), name="custom_policy_loss")
    objective = Objective("expected_reward", "none")
    pi, _, ref = make_setup(mdp, 0)
    declared = LossSpec(loss, G, "token-mean", "rewards", "declared")

    check_optimizes(loss, objective, G, trees=[mdp], explain=False)  # warm-up (torch's lazy imports)
    t_probed = _best(lambda: check_optimizes(loss, objective, G, trees=[mdp], explain=False), repeats)
    t_declared = _best(lambda: expected_gradient(declared, mdp, pi, None, ref, G), repeats)
    report = check_optimizes(loss, objective, G, trees=[mdp], explain=False)
    g_probed = expected_gradient(declared, mdp, pi, None, ref, G).grad
    from rlkl.toy.probe import probed_expected_gradient

    g_fast, p = probed_expected_gradient(loss, mdp, pi, None, ref, G)
    agree = float((g_fast.grad - g_probed).norm() / g_probed.norm())
    t_loop, n_tuples = undeclared_seconds(loss, mdp, pi, ref, G, sample)

    print(f"custom verl-signature policy loss on {mdp.name}, G={G}, 1 thread (best of {repeats}):")
    print(f"  probed audit (check_optimizes): {t_probed:8.3f} s   route {p.route}"
          f"{'[' + p.class_by + ']' if p.class_by else ''}, {p.groups:,} groups; probe {p.probe.calls} calls")
    print(f"  declared LossSpec (anchor):     {t_declared:8.3f} s   ratio probed/declared = {t_probed / t_declared:.2f}")
    print(f"  undeclared, one call per tuple: {t_loop:8.1f} s   ({n_tuples:,} calls, extrapolated from {sample}); "
          f"ratio undeclared/probed = {t_loop / t_probed:,.0f}")
    print(f"  probed vs declared gradient: relative difference {agree:.1e}; verdict: rel error "
          f"{report.records[0]['rel_error']:.3g} against {objective.describe()} (GRPO's advantage: not exact)")
    return 0 if agree < 1e-12 else 1


if __name__ == "__main__":
    raise SystemExit(main())
