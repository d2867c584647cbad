"""Figure 2 data: Schulman's KL estimators k1, k2, k3.

(a) per-sample value and (b) per-sample gradient d k / d log π_θ of ``rlkl.divergences.kl_estimate`` against the
log ratio log(π/π_ref) (autograd through the library function: 1, log ratio, 1 − π_ref/π — the last is the
forward-KL score, why k3 as a loss is a forward-KL gradient).
(c) Schulman's Gaussian example: π = q = N(0, 1), π_ref = p = N(μ, 1), KL(q‖p) = μ²/2, estimators evaluated at
x ~ q with log_ratio = log q(x) − log p(x) = μ²/2 − μx. Exact bias/KL and std/KL from the closed forms
(``derivations.kl_estimators.schulman_table``) next to a seeded Monte Carlo of the library estimators with
standard errors.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rlkl.derivations.kl_estimators import schulman_table
from . import write_config, write_csv, write_json
from rlkl.divergences import kl_estimate

MUS = (0.1, 1.0)
ESTIMATORS = ("k1", "k2", "k3")


def _monte_carlo(mu: float, n: int, gen: torch.Generator, chunk: int = 1_000_000) -> dict:
    kl = mu * mu / 2
    sums = {k: torch.zeros(4, dtype=torch.float64) for k in ESTIMATORS}  # Σ (k−KL)^j, j = 1..4 (shifted moments)
    done = 0
    while done < n:
        m = min(chunk, n - done)
        x = torch.randn(m, dtype=torch.float64, generator=gen)
        log_ratio = mu * mu / 2 - mu * x
        for k in ESTIMATORS:
            v = kl_estimate(log_ratio, k) - kl
            sums[k] += torch.stack([v.sum(), (v**2).sum(), (v**3).sum(), (v**4).sum()])
        done += m
    out = {}
    for k in ESTIMATORS:
        s1, s2, s3, s4 = (float(t) / n for t in sums[k])
        mean = s1  # E[k − KL] = bias
        var = s2 - s1**2
        m4 = s4 - 4 * s1 * s3 + 6 * s1**2 * s2 - 3 * s1**4  # 4th central moment
        std = math.sqrt(var)
        se_bias = std / math.sqrt(n)
        se_std = math.sqrt(max(m4 - var * var, 0.0) / n) / (2 * std)  # delta method on √var
        out[k] = {"bias_over_kl": mean / kl, "bias_over_kl_se": se_bias / kl,
                  "std_over_kl": std / kl, "std_over_kl_se": se_std / kl}
    return out


def run(out_dir, quick: bool = False, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    n_mc = 200_000 if quick else 20_000_000
    grid = torch.linspace(-2.5, 2.5, 201 if quick else 1001, dtype=torch.float64)
    curves = {"log_ratio": grid, "value": {}, "grad": {}}
    for k in ESTIMATORS:
        lr = grid.clone().requires_grad_(True)  # d/d log π_θ of k(log π_θ − log π_ref) = d/d log_ratio
        val = kl_estimate(lr, k)
        (g,) = torch.autograd.grad(val.sum(), lr)
        curves["value"][k] = val.detach()
        curves["grad"][k] = g
    gen = torch.Generator().manual_seed(seed)
    table, rows = [], []
    for mu in MUS:
        exact = schulman_table(mu)
        mc = _monte_carlo(mu, n_mc, gen)
        for k in ESTIMATORS:
            rec = {"mu": mu, "kl": mu * mu / 2, "estimator": k, "bias_over_kl_exact": exact[k][0],
                   "std_over_kl_exact": exact[k][1], **{f"{a}_mc": b for a, b in mc[k].items()}, "n_samples": n_mc}
            rec["bias_z"] = (rec["bias_over_kl_mc"] - rec["bias_over_kl_exact"]) / rec["bias_over_kl_se_mc"]
            rec["std_z"] = (rec["std_over_kl_mc"] - rec["std_over_kl_exact"]) / rec["std_over_kl_se_mc"]
            table.append(rec)
            rows.append(rec)
    write_csv(out_dir / "schulman_table.csv", rows)
    write_config(out_dir, "fig_kl_estimators", quick, seed, mc_samples_per_mu=n_mc, mus=list(MUS),
                 setup="pi = N(0,1), pi_ref = N(mu,1), x ~ pi, log_ratio = mu^2/2 - mu x",
                 log_ratio_grid=[-2.5, 2.5, int(grid.numel())])
    return write_json(out_dir / "kl_estimators.json", {"curves": curves, "table": table})
