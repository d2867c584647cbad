"""Figure 5 data: Monte Carlo convergence to the exact expected gradient.

For several estimators (registry methods, β = 0.1 where they have a KL term) on a small binary tree:
``rlkl.toy.montecarlo.mc_gradient`` estimates E[∇L] from n sampled groups (R independent seeds); the error
‖ĝ_n − E[∇L]‖/‖E[∇L]‖ against n is compared with the exact prediction √(tr Cov[ĝ]/n)/‖E[∇L]‖, where the exact
mean (``rlkl.toy.expected.expected_gradient``) and the exact per-group covariance trace come from enumerating
every ordered G-tuple of responses (:func:`exact_group_moments`, which runs the method's own ``loss``).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import torch

from . import write_config, write_csv, write_json
from rlkl.methods import REGISTRY, RolloutBatch
from rlkl.toy.audit import make_setup
from rlkl.toy.expected import expected_gradient
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.montecarlo import mc_gradient, token_logp_jacobian

METHODS = ("reinforce", "rloo", "dr_grpo", "grpo", "grpo_k2_loss", "frpo")
BETA = 0.1


def exact_group_moments(method, mdp, policy, ref, group_size, behaviour=None, jacobian=None):
    """Exact mean and covariance trace of the per-group gradient ĝ = ∇_θ L(y_1..y_G) of ``method.loss``.

    Enumerates every prompt and ordered G-tuple (fixed-length trees; seq-mean / token-mean aggregations, for which
    the gradient of one group equals (#groups) × its share of the batch gradient).
    Returns:
      (mean ``[d]``, tr Cov, E‖ĝ‖²).
    """
    if not mdp.fixed_length:
        raise ValueError("exact_group_moments needs a fixed-length tree")
    G = group_size
    beh = behaviour if behaviour is not None else policy
    J = jacobian if jacobian is not None else token_logp_jacobian(policy)
    with torch.no_grad():
        logp = policy.token_logp().detach()
        logp_old = beh.token_logp().detach()
        logp_ref = ref.token_logp().detach()
        q = beh.probs().detach()  # [P, N]
    _, _, mask, rewards = mdp.stacked()
    P, N, T = mdp.num_prompts, mdp.num_responses, mdp.horizon
    tuples = torch.tensor(list(itertools.product(range(N), repeat=G)), dtype=torch.long)  # [N^G, G]
    d = J.shape[1]
    mean = torch.zeros(d, dtype=torch.float64)
    second = 0.0
    for x in range(P):
        rows = (tuples + x * N).reshape(-1)
        prob = float(mdp.prompt_probs[x]) * q[x][tuples].prod(-1)  # [M]
        M = tuples.shape[0]
        batch = RolloutBatch(logp_old[rows], logp_ref[rows], mask[rows], rewards[rows], G)
        leaf = logp[rows].clone().requires_grad_(True)
        loss, _ = method.loss(leaf, batch)
        (g,) = torch.autograd.grad(loss, leaf)
        coef = g * M  # per-group gradient w.r.t. its own rows' log-probs
        flat = (rows.unsqueeze(1) * T + torch.arange(T)).reshape(-1)
        per_group = (J[flat] * coef.reshape(-1, 1)).view(M, G * T, d).sum(1)  # [M, d]
        mean += (prob.unsqueeze(1) * per_group).sum(0)
        second += float((prob * (per_group * per_group).sum(1)).sum())
    return mean, second - float(mean @ mean), second


def run(out_dir, quick: bool = False, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    G, reps, n_max = (3, 5, 1000) if quick else (4, 40, 20000)
    mdp = TreeMDP.random(2, 3, 2, reward="binary", seed=31 + seed)
    pi, _, ref = make_setup(mdp, seed)
    J = token_logp_jacobian(pi)
    ns = np.unique(np.round(np.logspace(1, math.log10(n_max), 16)).astype(int))
    out = {"mdp": mdp.name, "group_size": G, "n": ns.tolist(), "replicates": reps, "methods": {}}
    rows = []
    for i, name in enumerate(METHODS):
        m = REGISTRY[name]
        if m.beta > 0:
            m = m.replace(beta=BETA)
        eg = expected_gradient(m, mdp, pi, ref=ref, group_size=G).grad.reshape(-1)
        mean, trcov, _ = exact_group_moments(m, mdp, pi, ref, G, jacobian=J)
        enum_check = float((mean - eg).norm() / eg.norm())
        errs = np.zeros((reps, len(ns)))
        mc_trcov = []
        for r in range(reps):
            mc = mc_gradient(m, mdp, pi, n_max, seed=seed * 100_003 + 1000 * i + r, ref=ref, group_size=G,
                             keep_per_group=True, jacobian=J)
            pg = mc.per_group  # [n_max, d]
            prefix = torch.cumsum(pg, 0)
            for k, n in enumerate(ns):
                errs[r, k] = float((prefix[n - 1] / n - eg).norm() / eg.norm())
            mc_trcov.append(float(pg.var(0, correction=1).sum()))
        rms = np.sqrt((errs**2).mean(0))
        pred = np.sqrt(trcov / ns) / float(eg.norm())
        out["methods"][name] = {"rms_rel_error": rms, "rel_error_replicates": errs, "predicted": pred,
                                "trace_cov": trcov, "grad_norm": float(eg.norm()),
                                "relative_variance": trcov / float(eg.norm()) ** 2,
                                "mc_trace_cov_mean": float(np.mean(mc_trcov)),
                                "mc_trace_cov_se": float(np.std(mc_trcov, ddof=1) / math.sqrt(reps)),
                                "enumeration_vs_expected_gradient": enum_check}
        rows.append({"method": name, "trace_cov_exact": trcov, "trace_cov_mc": float(np.mean(mc_trcov)),
                     "grad_norm": float(eg.norm()), "relative_variance": trcov / float(eg.norm()) ** 2,
                     "rms_rel_error_at_n_max": float(rms[-1]), "predicted_at_n_max": float(pred[-1]),
                     "enumeration_vs_expected_gradient": enum_check})
    write_csv(out_dir / "variances.csv", rows)
    write_config(out_dir, "fig_mc_convergence", quick, seed, mdp=mdp.describe(), group_size=G, beta=BETA,
                 methods=list(METHODS), replicates=reps, n_max=n_max,
                 mc_seeds="seed*100003 + 1000*method_index + replicate")
    return write_json(out_dir / "mc_convergence.json", out)
