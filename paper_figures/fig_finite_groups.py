"""Figure 8: finite groups — GRPO's exact expected gradient against the G → ∞ utility gradient, and the leave-in
baseline's (1 − 1/G) shrink (data: experiments/fig_finite_groups)."""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import NullFormatter

from rlkl.experiments import read_json
from rlkl.plotting import FAMILY_COLORS, new_figure, panel_label, save


#: registry method (and the one change made to it) behind each engine point of (b)
ENGINE_LABELS = {"dr_grpo": "dr_grpo", "dr_grpo+leave_one_out": "dr_grpo + leave-one-out"}
ENGINE_ALIASES = {"dr_grpo+leave_one_out": ("rloo_no_kl",)}  # the name in data files written by older versions


def plot(data_path, out_stem):
    d = read_json(data_path)
    fig, (ax1, ax2) = new_figure(ncols=2, height=2.7)
    styles = {"population": ("o", "-"), "bessel": ("s", "--")}
    for std, (mk, ls) in styles.items():
        rows = [r for r in d["a"] if r["std"] == std]
        G = np.array([r["G"] for r in rows])
        ax1.plot(G, [r["rel_error_vs_arcsin"] for r in rows], marker=mk, ls=ls, color=FAMILY_COLORS["grpo"],
                 label=rf"vs $2\arcsin\sqrt{{p}}$ ({std} std)")
        ax1.plot(G, [max(r["rel_error_vs_finite_group"], 1e-17) for r in rows], marker=mk, ls=ls,
                 color=FAMILY_COLORS["frpo"], label=rf"vs exact $U_G(p)$ ({std} std)")
    G = np.array(sorted({r["G"] for r in d["a"]}), dtype=float)
    ax1.plot(G, 0.5 / G, color="0.5", lw=1.0, ls=":", label="∝ 1/G")
    ax1.set_xscale("log", base=2)
    ax1.xaxis.set_minor_formatter(NullFormatter())
    ax1.set(yscale="log", xlabel="group size G", ylabel="relative error of E[∇L] of no_kl",
            ylim=(1e-17, 3))
    ax1.set_xticks([2, 4, 8, 16, 32, 64], ["2", "4", "8", "16", "32", "64"])
    ax1.legend(loc="center right", fontsize=9, labelspacing=0.25, handlelength=1.8, bbox_to_anchor=(1.0, 0.5))
    ax1.set_yticks([1e-15, 1e-12, 1e-9, 1e-6, 1e-3, 1])
    ax1.set_title("GRPO ascends $U_G$, not 2·arcsin√p")

    s = d["shrink"]
    Gd = np.array(s["G"])
    cen = np.array(s["centered"])  # [G, p]
    ax2.plot(Gd, cen[:, 0], color=FAMILY_COLORS["dr_grpo"], label="centred (leave-in)")
    ax2.plot(Gd, np.array(s["leave_one_out"])[:, 0], color=FAMILY_COLORS["baseline"],
             label="leave-one-out")
    ax2.plot(Gd, 1 - 1 / Gd, color="k", ls=":", lw=1.2, label="1 − 1/G")
    for name, color, mk in (("dr_grpo", FAMILY_COLORS["dr_grpo"], "o"),
                            ("dr_grpo+leave_one_out", FAMILY_COLORS["baseline"], "s")):
        rows = [r for r in d["engine"] if r["method"] in (name, *ENGINE_ALIASES.get(name, ()))]
        ax2.plot([r["G"] for r in rows], [r["fitted_scale"] for r in rows], ls="none", marker=mk, mfc="none",
                 color=color, ms=6, label=f"{ENGINE_LABELS[name]} (exact, tree)")
    ax2.set(xlabel="group size G", ylabel="E[A|r=1] − E[A|r=0]  (× ∇p)", ylim=(0.0, 1.05))
    ax2.set_xscale("log", base=2)
    ax2.xaxis.set_minor_formatter(NullFormatter())
    ax2.set_xticks([2, 4, 8, 16, 32, 64], ["2", "4", "8", "16", "32", "64"])
    ax2.legend(loc="lower right", fontsize=9, labelspacing=0.25, handlelength=1.6)
    ax2.set_title("leave-in baseline shrinks by 1 − 1/G")
    panel_label(ax1, "a")
    panel_label(ax2, "b")
    return save(fig, out_stem)
