"""Figure 1: GRPO's implicit utility U_G(p) and its effective weight w_G(p)·√(p(1−p)) (data: experiments/fig_grpo_utility)."""

from __future__ import annotations

import numpy as np

from rlkl.experiments import read_json
from rlkl.plotting import FAMILY_COLORS, SEQUENCE_COLORS, new_figure, panel_label, save


def plot(data_path, out_stem):
    d = read_json(data_path)
    p, p_open = np.array(d["p"]), np.array(d["p_open"])
    fig, (ax1, ax2) = new_figure(ncols=2, height=2.6)
    for i, G in enumerate(d["group_sizes"]):
        U = np.array(d["U"][str(G)])
        ax1.plot(p, U, color=SEQUENCE_COLORS[i])
        ax1.annotate(f"G={G}", (1.0, U[-1]), xytext=(3, 0), textcoords="offset points", va="center",
                     color=SEQUENCE_COLORS[i], annotation_clip=False)
        ax2.plot(p_open, d["effective_weight"][str(G)], color=SEQUENCE_COLORS[i], label=f"G = {G}")
    ax1.plot(p, d["arcsin"], color=FAMILY_COLORS["reference"], ls="--", label=r"$2\arcsin\sqrt{p}$  (G → ∞)")
    ax1.plot([], [], color="0.4", label=r"$U_G(p)=\int_0^p w_G$  ($U_2 = p$)")
    ax2.axhline(1.0, color=FAMILY_COLORS["reference"], ls="--", label="G → ∞")
    ax1.set(xlabel="success probability p", ylabel="implicit utility U(p)", xlim=(0, 1), ylim=(0, 3.3))
    ax2.set(xlabel="success probability p", ylabel=r"$w_G(p)\,\sqrt{p(1-p)}$", xlim=(0, 1), ylim=(0, 1.08))
    ax1.legend(loc="upper left", handlelength=1.6, labelspacing=0.25)
    ax2.legend(loc="lower center", ncol=2, handlelength=1.6, labelspacing=0.25, columnspacing=0.8)
    ax1.set_title("utility GRPO ascends")
    ax2.set_title("update weight relative to G → ∞")
    panel_label(ax1, "a")
    panel_label(ax2, "b")
    return save(fig, out_stem)
