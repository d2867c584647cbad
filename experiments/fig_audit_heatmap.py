"""Figure 3 data: the audit heatmap — every registered method × candidate objectives.

For each method, ``rlkl.toy.audit.audit_one`` computes (float64, exact enumeration) the expected gradient g of
the method's own loss and audits it against the objective the method *intends* (its verdict and the named bias
terms are stored). The same g is then compared with −c·∇J for every candidate objective J of a grid
(utility × regularizer; ``rlkl.toy.objectives.objective_gradient``; c = the audit's aggregation constant):
relative error ‖g + c∇J‖/‖c∇J‖. A cell at round-off (≤ 1e-8) is an objective the method optimizes *exactly*.

(a) on-policy, all methods, KL to π_ref; (b) off-policy (π_old = π_θ + 0.3·noise), the RPG family and the
importance-weighted GRPO loss, KL to π_old (RPG's iterative reference). β = 0.1 for every method with a KL term
(registry β's are tiny), the same β in every objective with a regularizer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import write_config, write_csv, write_json
from rlkl.methods import REGISTRY
from rlkl.toy.audit import DEFAULT_TOL, aggregation_scale, audit_one, make_setup
from rlkl.toy.mdp import TreeMDP
from rlkl.objective import Objective
from rlkl.toy.objectives import objective_gradient

BETA = 0.1
UTILITIES = (("E[R]", "expected_reward"), ("(1-1/G)E[R]", "leave_in"), ("U_G(p)", "finite_group"))
REGS_ON = (("no KL", "none", "sequence", None),
           ("KL(pi||ref) seq", "reverse_kl", "sequence", None),
           ("KL(pi||ref) local", "reverse_kl", "local", None),
           ("KL(ref||pi) local", "forward_kl", "local", None),
           ("sum_t KL(ref||pi) seq", "token_f_divergence", "sequence", "forward_kl"))
REGS_OFF = (("KL(pi||old)", "reverse_kl"), ("KL(old||pi)", "forward_kl"),
            ("UKL(pi||old)", "unnormalized_reverse_kl"), ("UKL(old||pi)", "unnormalized_forward_kl"))
OFF_METHODS = ("rpg_fkl", "rpg_rkl", "rpg_ufkl", "rpg_urkl", "rpg_reinforce_fkl", "rpg_reinforce_rkl",
               "rpg_reinforce_ufkl", "rpg_reinforce_urkl", "rpg_reinforce_fkl_seq", "rpg_reinforce_rkl_seq",
               "rpg_reinforce_ufkl_seq", "rpg_reinforce_urkl_seq")


def _columns_on():
    cols = []
    for ul, u in UTILITIES:
        for rl, reg, level, f in REGS_ON:
            cols.append({"label": f"{ul} - b*{rl}" if reg != "none" else ul, "utility": u, "regularizer": reg,
                         "level": level, "anchor": "ref", "f_divergence": f or "reverse_kl"})
    return cols


def _columns_off():
    cols = []
    for ul, u in UTILITIES[:2]:
        for rl, reg in REGS_OFF:
            cols.append({"label": f"{ul} - b*{rl}", "utility": u, "regularizer": reg, "level": "sequence",
                         "anchor": "old", "f_divergence": "reverse_kl"})
    return cols


def _spec(col, method, G):
    f = col["f_divergence"] if col["regularizer"] == "token_f_divergence" else None
    obj = Objective(col["utility"], col["regularizer"], col["level"], col["anchor"], f)
    return method.replace(objective=obj).bound_objective(G).bind(beta=BETA if obj.has_regularizer else 0.0)


def _intended_column(m, columns, off_policy):
    """Index of the method's intended objective in ``columns`` (None if the grid has no such column).

    On-policy, a regularizer anchored to π_old = π_θ has zero gradient: its intended cell is the utility alone."""
    o = m.objective
    reg, level, f = o.regularizer, o.level, o.f_divergence or "reverse_kl"
    if m.beta == 0 or reg == "none" or (o.anchor == "old" and not off_policy):
        reg, level, f = "none", "sequence", "reverse_kl"
    for i, c in enumerate(columns):
        if c["utility"] != o.utility or c["regularizer"] != reg:
            continue
        if reg == "none" or (c["level"] == level and c["anchor"] == o.anchor
                             and (reg != "token_f_divergence" or c["f_divergence"] == f)):
            return i
    return None


def _panel(names, columns, mdp, G, off_policy, seed):
    pi, old, ref = make_setup(mdp, seed, off_policy)
    rows = []
    for name in names:
        m = REGISTRY[name]
        if m.beta > 0:
            m = m.replace(beta=BETA)
        res = audit_one(m, mdp, pi, old if off_policy else None, ref, G, setup={"seed": seed, "policy": "tabular"})
        g = res.grad
        c = aggregation_scale(m, mdp)
        beh = old if off_policy else pi.detached()
        errs = []
        for col in columns:
            target = -c * objective_gradient(_spec(col, m, G), mdp, pi, ref, beh)
            errs.append(float((g - target).norm() / target.norm()))
        rec = res.record
        rows.append({"method": name, "family_citation": m.citation, "intended": rec["objective"],
                     "audit_rel_error": rec["rel_error"], "audit_exact": rec["exact"],
                     "bias_terms": {k: v["rel_norm"] for k, v in rec["bias_terms"].items()},
                     "as_predicted": rec.get("as_predicted"), "rel_error": errs,
                     "intended_column": _intended_column(m, columns, off_policy),
                     "exact": [e <= DEFAULT_TOL for e in errs]})
    return rows


def run(out_dir, quick: bool = False, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    if quick:
        mdp, G = TreeMDP.random(2, 3, 2, reward="binary", seed=11 + seed), 3
    else:
        mdp, G = TreeMDP.random(3, 3, 2, reward="binary", seed=11 + seed), 4
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cols_on, cols_off = _columns_on(), _columns_off()
    on = _panel(list(REGISTRY), cols_on, mdp, G, False, seed)
    off = _panel(list(OFF_METHODS), cols_off, mdp, G, True, seed)
    csv_rows = []
    for panel, rows, cols in (("on_policy", on, cols_on), ("off_policy", off, cols_off)):
        for r in rows:
            for col, e in zip(cols, r["rel_error"]):
                csv_rows.append({"panel": panel, "method": r["method"], "objective": col["label"], "rel_error": e,
                                 "exact": e <= DEFAULT_TOL, "intended": r["intended"]})
    write_csv(out_dir / "audit_grid.csv", csv_rows)
    write_config(out_dir, "fig_audit_heatmap", quick, seed, mdp=mdp.describe(), group_size=G, beta=BETA,
                 exact_tol=DEFAULT_TOL, off_policy_scale=0.3, policy="tabular (rlkl.toy.audit.make_setup)")
    data = {"mdp": mdp.name, "group_size": G, "beta": BETA, "tol": DEFAULT_TOL,
            "on_policy": {"columns": cols_on, "rows": on}, "off_policy": {"columns": cols_off, "rows": off}}
    return write_json(out_dir / "audit_heatmap.json", data)
