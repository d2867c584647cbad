"""Figure 8 data: finite groups.

(a) GRPO's exact expected gradient (``rlkl.toy.expected.expected_gradient`` of the registry's ``no_kl`` method —
GRPO advantage, PPO clip, on-policy — on a binary tree, exact for any G via the binomial count of successes)
against −c∇E_x[2·arcsin√p_x], the G → ∞ utility gradient, and against −c∇E_x[U_G(p_x)], the exact finite-group
utility (rlkl.utility via rlkl.toy.objectives), for population and Bessel std.
(b) The leave-in baseline: with the group mean including the sample (Dr. GRPO's centred advantage),
E[A_1|r_1=1] − E[A_1|r_1=0] = 1 − 1/G for every p (``rlkl.utility.conditional_advantage_means`` with
``rlkl.advantages.group_centered``; leave-one-out gives 1), and the exact expected gradient of ``dr_grpo`` /
``rloo``-style REINFORCE on the tree projected on −c∇E[R] (fitted scale).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import write_config, write_csv, write_json
from rlkl.advantages import group_centered, leave_one_out
from rlkl.methods import REGISTRY
from rlkl.toy.audit import aggregation_scale, make_setup
from rlkl.toy.expected import expected_gradient
from rlkl.toy.mdp import TreeMDP
from rlkl.components import GroupCentered, GroupStandardized, LeaveOneOut
from rlkl.objective import Objective
from rlkl.toy.objectives import objective_gradient
from rlkl.utility import conditional_advantage_means


def _rel(g, t):
    return float((g - t).norm() / t.norm())


def run(out_dir, quick: bool = False, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    Gs = [2, 3, 4, 6, 8, 12, 16] if quick else [2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    mdp = TreeMDP.random(3, 3, 3, reward="binary", seed=21 + seed)
    pi, _, ref = make_setup(mdp, seed)
    beh = pi.detached()
    rows = []
    for std in ("population", "bessel"):
        m = REGISTRY["no_kl"].replace(advantage=GroupStandardized(std, 0.0))
        c = aggregation_scale(m, mdp)
        t_arcsin = -c * objective_gradient(Objective("arcsin", "none"), mdp, pi, ref, beh)
        for G in Gs:
            g = expected_gradient(m, mdp, pi, group_size=G).grad
            t_fg = -c * objective_gradient(Objective("finite_group", "none", group_size=G, std=std, eps=0.0), mdp, pi,
                                           ref, beh)
            cos = float((g * t_arcsin).sum() / (g.norm() * t_arcsin.norm()))
            rows.append({"panel": "a", "std": std, "G": G, "rel_error_vs_arcsin": _rel(g, t_arcsin),
                         "cosine_vs_arcsin": cos, "norm_ratio_vs_arcsin": float(g.norm() / t_arcsin.norm()),
                         "rel_error_vs_finite_group": _rel(g, t_fg)})
    # (b) leave-in shrink
    p_grid = np.array([0.1, 0.3, 0.5, 0.9])
    G_dense = list(range(2, 65))
    shrink = {"G": G_dense, "p": p_grid.tolist(), "centered": [], "leave_one_out": []}
    for G in G_dense:
        s1, f1 = conditional_advantage_means(p_grid, G, lambda r: group_centered(r.reshape(-1), G).view_as(r))
        s2, f2 = conditional_advantage_means(p_grid, G, lambda r: leave_one_out(r.reshape(-1), G).view_as(r))
        shrink["centered"].append((s1 - f1).tolist())
        shrink["leave_one_out"].append((s2 - f2).tolist())
    engine = []
    for name, adv in (("dr_grpo", GroupCentered()), ("dr_grpo+leave_one_out", LeaveOneOut())):
        m = REGISTRY["dr_grpo"].replace(advantage=adv, name=name)
        c = aggregation_scale(m, mdp)
        t = -c * objective_gradient(Objective("expected_reward", "none"), mdp, pi, ref, beh)
        for G in Gs:
            g = expected_gradient(m, mdp, pi, group_size=G).grad
            fitted = float((g * t).sum() / (t * t).sum())
            engine.append({"panel": "b", "method": name, "G": G, "fitted_scale": fitted,
                           "one_minus_1_over_G": 1 - 1 / G, "rel_error_vs_scaled": _rel(g, fitted * t)})
    write_csv(out_dir / "finite_groups_a.csv", rows)
    write_csv(out_dir / "finite_groups_b.csv", engine)
    write_config(out_dir, "fig_finite_groups", quick, seed, mdp=mdp.describe(), group_sizes=Gs,
                 methods="no_kl with adv_eps=0 (population / bessel); dr_grpo and its leave-one-out twin",
                 policy="tabular (rlkl.toy.audit.make_setup)")
    return write_json(out_dir / "finite_groups.json", {"mdp": mdp.name, "a": rows, "shrink": shrink, "engine": engine})
