"""Figure 1 data: GRPO's implicit utility.

For binary rewards GRPO's expected update of a prompt is w_G(p)·∇p, so it ascends U_G(p) = ∫_0^p w_G
(rlkl.utility); as G → ∞ (population std, ε = 0) U_G → 2·arcsin√p and w_G(p)·√(p(1−p)) → 1.
Computed exactly (binomial count of successes, Gauss–Legendre) by rlkl.utility — no sampling, the seed is unused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import write_config, write_csv, write_json
from rlkl.utility import effective_weight, finite_group_utility, finite_group_weight, grpo_utility

GROUP_SIZES = (2, 4, 8, 16, 64)


def run(out_dir, quick: bool = False, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    n = 201 if quick else 1001
    p = np.linspace(0.0, 1.0, n)
    p_open = p[1:-1]  # w_G·√(p(1−p)) at the endpoints is 0·finite; plot the open interval
    data = {"p": p, "p_open": p_open, "arcsin": grpo_utility(p), "group_sizes": list(GROUP_SIZES),
            "std": "population", "eps": 0.0, "U": {}, "effective_weight": {}, "w": {},
            "U_bessel": {}, "effective_weight_bessel": {}}
    rows = []
    for G in GROUP_SIZES:
        U = finite_group_utility(p, G, "population", 0.0)
        ew = effective_weight(p_open, G, "population", 0.0)
        data["U"][str(G)] = U
        data["effective_weight"][str(G)] = ew
        data["w"][str(G)] = finite_group_weight(p_open, G, "population", 0.0)
        data["U_bessel"][str(G)] = finite_group_utility(p, G, "bessel", 0.0)
        data["effective_weight_bessel"][str(G)] = effective_weight(p_open, G, "bessel", 0.0)
        rows.append({"G": G, "U_G(1)": float(U[-1]), "U_G(0.5)": float(finite_group_utility(0.5, G)),
                     "w_G(0.5)*0.5": float(effective_weight(0.5, G)),
                     "w_G(0.01)*sqrt(0.01*0.99)": float(effective_weight(0.01, G))})
    rows.append({"G": "inf", "U_G(1)": float(grpo_utility(1.0)), "U_G(0.5)": float(grpo_utility(0.5)),
                 "w_G(0.5)*0.5": 1.0, "w_G(0.01)*sqrt(0.01*0.99)": 1.0})
    write_csv(out_dir / "summary.csv", rows)
    write_config(out_dir, "fig_grpo_utility", quick, seed, grid_points=n, group_sizes=list(GROUP_SIZES),
                 std="population (bessel also stored)", eps=0.0)
    return write_json(out_dir / "grpo_utility.json", data)
