"""Figure: exact bias (against the full and the deployed objective) and exact variance of each rollout correction,
against top-p and against the engine's precision, with Monte Carlo bands (data: experiments/fig_top_p_bias)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from rlkl.experiments import read_json
from rlkl.plotting import LINESTYLES, SEQUENCE_COLORS, apply_style, save

#: correction spelling → legend label
LABELS = {"none": "none (w = 1)", "token_tis:2": "token TIS, C = 2 (verl)", "seq_tis:2": "sequence TIS, C = 2",
          "seq_mis:2": "sequence MIS, C = 2 (TRL: C = 3)", "gm": "geometric mean (GMPO)",
          "mask_replay": "mask replay"}
MARKERS = ("o", "s", "^", "v", "D", "x")


def _series(rows, sweep, correction, key):
    r = [x for x in rows if x["sweep"] == sweep and x["correction"] == correction]
    return r, np.array([np.nan if x[key] is None else x[key] for x in r], dtype=float)


def plot(data_path, out_stem):
    d = read_json(data_path)
    rows = d["rows"]
    apply_style()
    fig, axes = plt.subplots(2, 3, figsize=(6.8, 5.6), layout="constrained")
    panels = (("bias_full", "mc_bias_full", "mc_se_full", "bias vs J(π_θ)"),
              ("bias_deployed", "mc_bias_deployed", "mc_se_deployed", "bias vs J(T(π_θ))"),
              ("relative_variance", "mc_relative_variance", "mc_relative_variance_se", "tr Cov[ĝ] / ‖∇J‖²"))
    for i, sweep in enumerate(("top_p", "precision")):
        first = [x for x in rows if x["sweep"] == sweep and x["correction"] == d["corrections"][0]]
        labels = [x["x"] for x in first]
        xs = np.array([float(v) for v in labels]) if sweep == "top_p" else np.arange(len(labels), dtype=float)
        for j, (key, mc_key, se_key, title) in enumerate(panels):
            ax = axes[i, j]
            for k, corr in enumerate(d["corrections"]):
                col, ls = SEQUENCE_COLORS[k], LINESTYLES[k % len(LINESTYLES)]
                _, y = _series(rows, sweep, corr, key)
                _, mc = _series(rows, sweep, corr, mc_key)
                _, se = _series(rows, sweep, corr, se_key)
                ax.plot(xs, y, color=col, ls=ls, marker=MARKERS[k], ms=3.5, lw=1.4,
                        label=LABELS.get(corr, corr) if (i, j) == (0, 0) else None)
                ax.fill_between(xs, mc - 2 * se, mc + 2 * se, color=col, alpha=0.15, lw=0)
            ax.set_title(f"({'abc'[j] if i == 0 else 'def'[j]}) {title}")
            if sweep == "top_p":
                ax.set_xlim(xs.max() + 0.03, xs.min() - 0.03)  # more truncation to the right
                ticks = [k for k in range(len(xs)) if k % 2 == 0 or len(xs) < 5]
                ax.set_xticks(xs[ticks], [f"{labels[k]}\n{first[k]['kept_mass']:.2f}" for k in ticks])
                if j == 1:
                    ax.set_xlabel("sampler top-p at τ = 1 (second line: mean kept mass)")
            else:
                ax.set_xticks(xs, labels, rotation=30)
                if j == 1:
                    ax.set_xlabel("the engine's logits: rounded, or perturbed by σ·N(0, 1) (top-p = 1)")
            if j < 2:
                ax.set_ylim(bottom=-0.03)
            elif sweep == "top_p":
                ax.set_yscale("log")
    axes[0, 0].set_ylabel("relative bias ‖E∇L + c∇J‖/‖c∇J‖")
    axes[1, 0].set_ylabel("relative bias")
    fig.legend(loc="outside lower center", ncol=3, fontsize=9, labelspacing=0.3, columnspacing=1.0)
    fig.suptitle(f"{d['method']} behind a sampler (exact lines; Monte Carlo ±2 s.e. bands, n = {d['n_mc']} groups; "
                 f"G = {d['group_size']}, {d['mdp']})", fontsize=9)
    return save(fig, out_stem)
