"""Figure 4: the future-KL term — error of per-token KL losses against the sequence-level reverse KL as the
horizon grows, FRPO at round-off (data: experiments/fig_future_kl)."""

from __future__ import annotations

import numpy as np

from rlkl.experiments import read_json
from rlkl.plotting import SEQUENCE_COLORS, method_styles, new_figure, panel_label, save

#: what each registry method does with the KL (appended to its name in the legend)
ROLE = {"grpo_k1_loss": "k1 loss", "grpo_k2_loss": "k2 loss", "grpo": "k3 loss", "grpo_k3_plus": "k3+ loss",
        "grpo_is_k3": "ρ·k3 loss", "ppo_k1_rtg": "k1 reward-to-go", "frpo": "future return",
        "frpo_k3": "k3 future terms"}


def coincident_groups(d: dict, tol: float = 1e-9) -> list[list[str]]:
    """Methods whose KL parts agree on every tree and horizon (to ``tol``), grouped, in the data's order: one
    line is drawn per group and the legend names every member."""
    def values(name):
        rows = sorted((r for r in d["rows"] if r["method"] == name), key=lambda r: (r["T"], r.get("seed", 0)))
        return np.array([[r["rel_error_kl_part"], r["cosine"]] for r in rows])

    groups: list[list[str]] = []
    for name in d["methods"]:
        for g in groups:
            a, b = values(g[0]), values(name)
            if a.shape == b.shape and np.max(np.abs(a - b)) <= tol:
                g.append(name)
                break
        else:
            groups.append([name])
    return groups


def _label(group: list[str]) -> str:
    return " = ".join(f"{n} ({ROLE[n]})" if n in ROLE else n for n in group)


def plot(data_path, out_stem):
    d = read_json(data_path)
    T = np.array(d["horizons"])
    groups = coincident_groups(d)
    st = method_styles([g[0] for g in groups])
    for i, g in enumerate(groups):  # one colour per line (and its band): the bands must not share a colour
        st[g[0]]["color"] = SEQUENCE_COLORS[i % len(SEQUENCE_COLORS)]
    fig, (ax1, ax2) = new_figure(ncols=2, height=3.6)
    for group in groups:
        name = group[0]
        rows = [r for r in d["rows"] if r["method"] == name]
        err = np.array([[r["rel_error_kl_part"] for r in rows if r["T"] == t] for t in T])  # [T, seeds]
        cos = np.array([[r["cosine"] for r in rows if r["T"] == t] for t in T])
        s = st[name]
        label = _label(group) + (" — identical" if len(group) > 1 else "")
        ax1.plot(T, np.median(err, 1), color=s["color"], ls=s["linestyle"], marker=s["marker"], label=label)
        ax1.fill_between(T, err.min(1), err.max(1), color=s["color"], alpha=0.15, lw=0)
        ax2.plot(T, np.median(cos, 1), color=s["color"], ls=s["linestyle"], marker=s["marker"])
        ax2.fill_between(T, cos.min(1), cos.max(1), color=s["color"], alpha=0.15, lw=0)
    n_trees = len(d["seeds"])
    ax1.fill_between([], [], [], color="0.5", alpha=0.3, lw=0, label=f"shaded: range over the {n_trees} random trees (β = {d['beta']:g}, G = {d['group_size']})")
    top = max(r["rel_error_kl_part"] for r in d["rows"])
    ax1.set(xlabel="horizon T (tokens)", ylabel=r"rel. error of KL part vs $\beta\nabla$KL$_{seq}$",
            ylim=(-0.05, max(1.15, top * 1.08)))
    exact = [n for n in d["methods"] if max(r["rel_error_kl_part"] for r in d["rows"] if r["method"] == n) < 1e-10]
    if exact:
        worst = max(r["rel_error_kl_part"] for r in d["rows"] if r["method"] in exact)
        ax1.text(0.97, 0.06, f"{', '.join(exact)}: ≤ {worst:.0e}", transform=ax1.transAxes, ha="right", va="bottom",
                 fontsize=9, color="0.2")
    ax2.set(xlabel="horizon T (tokens)", ylabel="cosine(KL part, ∇KL$_{seq}$)", ylim=(-1.05, 1.05))
    for ax in (ax1, ax2):
        ax.set_xticks(T)
    fig.legend(*ax1.get_legend_handles_labels(), loc="outside lower center", ncol=1, fontsize=9,
               handlelength=2.0, labelspacing=0.3)
    ax1.set_title("KL losses miss the future term")
    ax2.set_title(f"direction ({n_trees} trees: median, range)")
    panel_label(ax1, "a")
    panel_label(ax2, "b")
    return save(fig, out_stem)
