"""Figure 7: length bias — response-length drift under each aggregation mode on the EOS toy
(data: experiments/fig_length_bias)."""

from __future__ import annotations

import numpy as np

from rlkl.experiments import read_json
from rlkl.plotting import SEQUENCE_COLORS, new_figure, panel_label, save

STYLE = {"token-mean": (SEQUENCE_COLORS[0], "-"), "seq-mean-token-mean": (SEQUENCE_COLORS[1], "-"),
         "seq-mean-token-sum": (SEQUENCE_COLORS[2], "-"), "seq-mean-token-sum-norm": ("k", ":")}


def plot(data_path, out_stem):
    d = read_json(data_path)
    fig, axes = new_figure(ncols=3, width=6.8, height=2.6)
    for mode, cur in d["curves"].items():
        color, ls = STYLE.get(mode, ("0.5", "-"))
        steps = np.arange(len(cur["length"]))
        label = mode + ("  (GRPO 1/|y|)" if mode == "seq-mean-token-mean" else "")
        axes[0].plot(steps, cur["length_correct"], color=color, ls=ls, label=label)
        axes[1].plot(steps, cur["length_incorrect"], color=color, ls=ls)
        axes[2].plot(steps, cur["success"], color=color, ls=ls)
    axes[0].set(xlabel="exact gradient step", ylabel="E[|y| | correct]  (tokens)")
    axes[1].set(xlabel="exact gradient step", ylabel="E[|y| | incorrect]  (tokens)")
    axes[2].set(xlabel="exact gradient step", ylabel="success probability p", ylim=(0, 1.02))
    axes[0].set_title("correct responses")
    axes[1].set_title("incorrect responses")
    axes[2].set_title("reward")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=9,
               title=f"aggregation (G = {d['group_size']}, horizon {d['horizon']}, reward independent of length)")
    for ax, l in zip(axes, "abc"):
        panel_label(ax, l)
    return save(fig, out_stem)
