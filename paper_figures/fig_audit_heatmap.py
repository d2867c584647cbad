"""Figure 3: audit heatmap, methods × objectives, relative error of the exact expected gradient
(data: experiments/fig_audit_heatmap)."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle

from rlkl.experiments import read_json
from rlkl.plotting import new_figure, save

UTIL_LABELS = {"expected_reward": "E[R]", "leave_in": "(1−1/G)·E[R]", "finite_group": r"$U_G(p)$"}
R, O = r"$\pi_{ref}$", r"$\pi_{old}$"
REG_LABELS = {
    ("none", "sequence", "ref"): "no KL",
    ("reverse_kl", "sequence", "ref"): f"−β KL(π‖{R})",
    ("reverse_kl", "local", "ref"): f"−β KL(π‖{R}) local",
    ("forward_kl", "local", "ref"): f"−β KL({R}‖π) local",
    ("token_f_divergence", "sequence", "ref"): rf"−β $\Sigma_t$ KL({R}‖π)",
    ("reverse_kl", "sequence", "old"): f"−β KL(π‖{O})",
    ("forward_kl", "sequence", "old"): f"−β KL({O}‖π)",
    ("unnormalized_reverse_kl", "sequence", "old"): f"−β UKL(π‖{O})",
    ("unnormalized_forward_kl", "sequence", "old"): f"−β UKL({O}‖π)",
}
VMIN, VMAX = -3.0, 0.5  # colour range of the biased cells; exact cells (≤ tol) get the 'under' colour
EXACT_COLOR = "#1B1B3A"


def _heat(ax, panel, tol, title):
    cols, rows = panel["columns"], panel["rows"]
    E = np.array([[max(e, 1e-16) if e is not None else np.nan for e in r["rel_error"]] for r in rows])
    Z = np.log10(E)
    import matplotlib

    cmap = matplotlib.colormaps["YlOrRd"].copy()
    cmap.set_under(EXACT_COLOR)
    Z = np.where(E <= tol, VMIN - 1.0, Z)
    im = ax.imshow(Z, cmap=cmap, norm=Normalize(VMIN, VMAX), aspect="auto", interpolation="nearest")
    ax.grid(False)
    for i, r in enumerate(rows):
        for j, ok in enumerate(r["exact"]):
            if ok:
                ax.text(j, i, "✓", ha="center", va="center", color="white", fontsize=9, fontweight="bold")
            elif r["rel_error"][j] is not None and r["rel_error"][j] < 10 ** VMIN:
                ax.text(j, i, f"{r['rel_error'][j]:.0e}", ha="center", va="center", color="black", fontsize=6)
        j = r["intended_column"]
        if j is not None:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="#0072B2", lw=1.8))
    ax.set_yticks(range(len(rows)), [r["method"] for r in rows])
    ax.set_xticks(range(len(cols)), [REG_LABELS[(c["regularizer"], c["level"], c["anchor"])] for c in cols],
                  rotation=55, ha="right", rotation_mode="anchor")
    ax.tick_params(length=0)
    # utility groups: separators and labels on top
    utils = [c["utility"] for c in cols]
    starts = [j for j in range(len(utils)) if j == 0 or utils[j] != utils[j - 1]]
    for k, s in enumerate(starts):
        e = starts[k + 1] if k + 1 < len(starts) else len(utils)
        if s > 0:
            ax.axvline(s - 0.5, color="white", lw=2.5)
        ax.text((s + e - 1) / 2, -0.7, UTIL_LABELS[utils[s]], ha="center", va="bottom", fontsize=9)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, pad=16)
    return im


def plot(data_path, out_stem):
    d = read_json(data_path)
    n_on, n_off = len(d["on_policy"]["rows"]), len(d["off_policy"]["rows"])
    fig, axes = new_figure(nrows=2, width=6.8, height=0.19 * (n_on + n_off) + 4.4,
                           gridspec_kw={"height_ratios": [n_on + 0.5, n_off + 0.5]})
    tol = d["tol"]
    im = _heat(axes[0], d["on_policy"], tol,
               f"(a) on-policy, KL to {R}  (β = {d['beta']:g}, G = {d['group_size']}, tree {d['mdp']})")
    _heat(axes[1], d["off_policy"], tol, f"(b) off-policy, {O} = $\\pi_\\theta$ + noise, KL to {O} (RPG's anchor)")
    cb = fig.colorbar(im, ax=axes[0], shrink=0.45, aspect=25, pad=0.03, extend="both")
    cb.set_label("relative error ‖E[∇L] + c∇J‖ / ‖c∇J‖")
    cb.set_ticks([-3, -2, -1, 0], labels=["1e-3", "1e-2", "0.1", "1"])
    axes[1].text(1.03, 1.0, f"✓ / dark: exact\n(rel. error ≤ {tol:g})\n\nblue box: the\nmethod's intended\nobjective",
                 transform=axes[1].transAxes, va="top", ha="left", fontsize=9)
    return save(fig, out_stem)
