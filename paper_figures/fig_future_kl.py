"""Figure 4: the future-KL term — error of per-token KL losses against the sequence-level reverse KL as the
horizon grows, FRPO at round-off (data: experiments/fig_future_kl)."""

from __future__ import annotations

import numpy as np

from rlkl.experiments import read_json
from rlkl.plotting import method_styles, new_figure, panel_label, save

LABELS = {"grpo_k1_loss": "k1 loss", "grpo_k2_loss": "k2 loss", "grpo": "k3 loss (GRPO)",
          "grpo_k3_plus": "k3+ loss (verl)", "grpo_is_k3": "ρ·k3 loss", "ppo_k1_rtg": "k1 reward-to-go",
          "frpo": "FRPO future return", "frpo_k3": "FRPO, k3 future terms"}


def plot(data_path, out_stem):
    d = read_json(data_path)
    T = np.array(d["horizons"])
    st = method_styles(d["methods"])
    fig, (ax1, ax2) = new_figure(ncols=2, height=2.9)
    for name in d["methods"]:
        rows = [r for r in d["rows"] if r["method"] == name]
        err = np.array([[r["rel_error_kl_part"] for r in rows if r["T"] == t] for t in T])  # [T, seeds]
        cos = np.array([[r["cosine"] for r in rows if r["T"] == t] for t in T])
        s = st[name]
        ax1.plot(T, np.median(err, 1), color=s["color"], ls=s["linestyle"], marker=s["marker"],
                 label=LABELS.get(name, name))
        ax1.fill_between(T, err.min(1), err.max(1), color=s["color"], alpha=0.12, lw=0)
        ax2.plot(T, np.median(cos, 1), color=s["color"], ls=s["linestyle"], marker=s["marker"])
        ax2.fill_between(T, cos.min(1), cos.max(1), color=s["color"], alpha=0.12, lw=0)
    exact = [n for n in d["methods"] if max(r["rel_error_kl_part"] for r in d["rows"] if r["method"] == n) < 1e-10]
    worst = max((r["rel_error_kl_part"] for r in d["rows"] if r["method"] in exact), default=0.0)
    top = max(r["rel_error_kl_part"] for r in d["rows"])
    ax1.set(xlabel="horizon T (tokens)", ylabel=r"rel. error of KL part vs $\beta\nabla$KL$_{seq}$",
            ylim=(-0.05, max(1.15, top * 1.08)))
    if exact:
        short = sorted({"FRPO" if n.startswith("frpo") else LABELS.get(n, n) for n in exact})
        ax1.text(0.97, 0.06, f"{', '.join(short)}: ≤ {worst:.0e}", transform=ax1.transAxes, ha="right",
                 va="bottom", fontsize=9, color="0.2")
    ax2.set(xlabel="horizon T (tokens)", ylabel="cosine(KL part, ∇KL$_{seq}$)", ylim=(-1.05, 1.05))
    for ax in (ax1, ax2):
        ax.set_xticks(T)
    fig.legend(*ax1.get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=9,
               columnspacing=1.0, handlelength=2.0)
    ax1.set_title("KL losses miss the future term")
    ax2.set_title(f"direction ({len(d['seeds'])} trees: median, range)")
    panel_label(ax1, "a")
    panel_label(ax2, "b")
    return save(fig, out_stem)
