"""Figure 3: audit heatmap, methods × objectives, relative error of the exact expected gradient
(data: experiments/fig_audit_heatmap). Exact cells are blue with a ✓ (a hue the error scale never uses); biased
cells go from light (1e-3) to dark brown (≥ 1); a black box marks the objective the method claims. (a) on-policy and
(b) off-policy side by side; (b) shows the E[R] objectives only — with the leave-in (1 − 1/G)·E[R] no method is exact
off-policy (those numbers stay in the data file)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle

from rlkl.experiments import read_json
from rlkl.plotting import apply_style, save

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
VMIN, VMAX = -3.0, 0.5  # log10 range of the colour scale of the biased cells
EXACT_COLOR = "#0072B2"  # exact cells: one hue of their own (blue), never a shade of the error scale
INTENDED_EDGE = "black"
ERROR_CMAP = "YlOrBr"    # biased cells: light (1e-3) → dark brown (≥ 1); blue/orange-brown is colour-blind safe


def _heat(ax, panel, tol, title, columns=None):
    cols, rows = panel["columns"], panel["rows"]
    keep = list(range(len(cols))) if columns is None else [j for j, c in enumerate(cols) if columns(c)]
    cols = [cols[j] for j in keep]
    E = np.array([[max(r["rel_error"][j], 1e-16) if r["rel_error"][j] is not None else np.nan for j in keep]
                  for r in rows])
    exact = np.array([[r["exact"][j] for j in keep] for r in rows])
    import matplotlib

    cmap = matplotlib.colormaps[ERROR_CMAP]
    Z = np.ma.masked_where(exact, np.log10(E))
    im = ax.imshow(Z, cmap=cmap, norm=Normalize(VMIN, VMAX), aspect="auto", interpolation="nearest")
    ax.imshow(np.ma.masked_where(~exact, np.ones_like(E)), cmap=matplotlib.colors.ListedColormap([EXACT_COLOR]),
              aspect="auto", interpolation="nearest")
    ax.grid(False)
    for i, r in enumerate(rows):
        for jj, j in enumerate(keep):
            if r["exact"][j]:
                ax.text(jj, i, "✓", ha="center", va="center", color="white", fontsize=9, fontweight="bold")
        j = r["intended_column"]
        if j is not None and j in keep:
            ax.add_patch(Rectangle((keep.index(j) - 0.45, i - 0.45), 0.9, 0.9, fill=False, ec=INTENDED_EDGE,
                                   lw=1.6))
    ax.set_yticks(range(len(rows)), [r["method"] for r in rows])
    ax.set_xticks(range(len(cols)), [REG_LABELS[(c["regularizer"], c["level"], c["anchor"])] for c in cols],
                  rotation=90, ha="right", va="center", rotation_mode="anchor")
    ax.tick_params(length=0)
    # utility groups: separators and labels on top
    utils = [c["utility"] for c in cols]
    starts = [j for j in range(len(utils)) if j == 0 or utils[j] != utils[j - 1]]
    for k, s in enumerate(starts):
        e = starts[k + 1] if k + 1 < len(starts) else len(utils)
        if s > 0:
            ax.axvline(s - 0.5, color="white", lw=3)
        ax.text((s + e - 1) / 2, -0.7, UTIL_LABELS[utils[s]], ha="center", va="bottom", fontsize=9)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, pad=16, fontsize=9)
    return im


def plot(data_path, out_stem):
    apply_style()
    d = read_json(data_path)
    n_on, n_off = len(d["on_policy"]["rows"]), len(d["off_policy"]["rows"])
    n_cols_on = len(d["on_policy"]["columns"])
    tol = d["tol"]
    off_cols = lambda c: c["utility"] == "expected_reward"  # noqa: E731 — (1−1/G)E[R] is never exact off-policy
    n_cols_off = sum(map(off_cols, d["off_policy"]["columns"]))
    fig = plt.figure(figsize=(7.2, 0.17 * n_on + 2.3), layout="constrained")
    gs = fig.add_gridspec(2, 2, width_ratios=[n_cols_on + 5.5, n_cols_off + 6.5],
                          height_ratios=[n_off + 0.5, max(n_on - n_off, 1)])
    ax_on = fig.add_subplot(gs[:, 0])
    ax_off = fig.add_subplot(gs[0, 1])
    im = _heat(ax_on, d["on_policy"], tol, f"(a) on-policy, KL to {R}\n(β = {d['beta']:g}, G = {d['group_size']}, "
               f"tree {d['mdp']})")
    _heat(ax_off, d["off_policy"], tol, f"(b) off-policy ({O} = $\\pi_\\theta$ + noise),\nKL to {O} (RPG's anchor)",
          columns=off_cols)
    key = fig.add_subplot(gs[1, 1])
    key.axis("off")
    cax = key.inset_axes([0.05, 0.8, 0.9, 0.05])
    cb = fig.colorbar(im, cax=cax, orientation="horizontal", extend="both")
    cb.set_label("relative error ‖E[∇L] + c∇J‖ / ‖c∇J‖", fontsize=9)
    cb.set_ticks([-3, -1, 0], labels=["≤ 1e-3", "0.1", "1"])
    key.add_patch(Rectangle((0.05, 0.36), 0.07, 0.1, transform=key.transAxes, color=EXACT_COLOR, clip_on=False))
    key.text(0.085, 0.41, "✓", transform=key.transAxes, ha="center", va="center", color="white", fontsize=9,
             fontweight="bold")
    key.text(0.16, 0.41, f"exact: rel. error ≤ {tol:g}", transform=key.transAxes, va="center", fontsize=9)
    key.add_patch(Rectangle((0.05, 0.14), 0.07, 0.1, transform=key.transAxes, fill=False, ec=INTENDED_EDGE, lw=1.6,
                            clip_on=False))
    key.text(0.16, 0.19, "the objective the method\nclaims (its registry entry)", transform=key.transAxes,
             va="center", fontsize=9)
    return save(fig, out_stem)
