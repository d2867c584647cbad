"""Figure 9: the small LM trained with each method — curves of training reward, eval pass@1 and exact sequence
KL(π‖π_ref), and the final pass@1, pass@8, entropy and KL of every variant with its range over seeds, so that
variants whose curves coincide stay readable (data: experiments/fig_lm_training). Legends use registry method names
(plus K and clipping where a variant changes them); the title gives the configuration and β."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from rlkl.experiments import read_json
from rlkl.plotting import apply_style, method_styles, panel_label, save

CURVES = (("reward_mean", "train_step", "training reward\n(moving avg. 5)"),
          ("eval_pass@1", "eval_step", "eval pass@1"),
          ("eval_kl_rev_seq", "eval_step", r"exact KL(π‖$\pi_{ref}$)" "\nper sequence (nats)"))
FINALS = (("eval_pass@1", "final pass@1"), ("eval_pass@8", "final pass@8"), ("eval_entropy", "final entropy\n(nats/token)"),
          ("eval_kl_rev_seq", "final KL(π‖$\\pi_{ref}$)\nper seq. (nats)"))


def legend_entries(d: dict) -> dict[str, str]:
    """Variant → legend label: its registry method name, plus "K=…" / "unclipped" where the variant sets them."""
    out = {}
    for name, v in d["variants"].items():
        extra = []
        if v.get("K", 1) > 1:
            extra.append(f"K={v['K']}")
        if v.get("unclipped"):
            extra.append("unclipped")
        out[name] = v["method"] + (f" ({', '.join(extra)})" if extra else "")
    return out


def _styles(d: dict) -> dict[str, dict]:
    names = list(d["variants"])
    base = method_styles(names)
    out = {}
    for n in names:
        s = dict(base[n])
        v = d["variants"][n]
        if v["method"].startswith("rpg"):  # the RPG variants: shade = divergence, dotted = unclipped
            s["color"] = "#D55E00" if "urkl" in v["method"] else "#882255"
            s["linestyle"] = ":" if v.get("unclipped") else "-"
        out[n] = s
    return out


def _smooth(y, k=5):
    y = np.asarray(y, dtype=float)
    return np.array([np.nanmean(y[max(0, i - k + 1): i + 1]) for i in range(len(y))])


def _stack(v: dict, key: str, xkey: str):
    seeds = list(v["seeds"].values())
    n = min(len(s[key]) for s in seeds)
    x = np.array(seeds[0][xkey][:n])
    ys = np.array([[np.nan if y is None else y for y in s[key][:n]] for s in seeds], dtype=float)
    return x, ys


def plot(data_path, out_stem):
    d = read_json(data_path)
    names = list(d["variants"])
    labels, st = legend_entries(d), _styles(d)
    n_seeds = max(len(v["seeds"]) for v in d["variants"].values())
    apply_style()
    dots_h = 0.17 * len(names) + 0.75
    legend_h = 0.2 * int(np.ceil(len(names) / 3)) + 0.15
    fig = plt.figure(figsize=(6.8, 2.2 + dots_h + legend_h + 0.45), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.2 + legend_h, dots_h])
    curve_axes = top.subplots(1, len(CURVES))
    for (key, xkey, ylabel), ax, letter in zip(CURVES, curve_axes, "abc"):
        for name in names:
            x, ys = _stack(d["variants"][name], key, xkey)
            if key == "reward_mean":
                ys = np.array([_smooth(y) for y in ys])
            s = st[name]
            ax.plot(x, np.nanmean(ys, 0), color=s["color"], ls=s["linestyle"], label=labels[name])
            if len(ys) > 1:
                ax.fill_between(x, np.nanmin(ys, 0), np.nanmax(ys, 0), color=s["color"], alpha=0.12, lw=0)
        ax.set(xlabel="RL step", ylabel=ylabel)
        panel_label(ax, letter)
    top.legend(*curve_axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=9,
               columnspacing=1.0, handlelength=2.2)
    dot_axes = bottom.subplots(1, len(FINALS), sharey=True)
    rows = np.arange(len(names))[::-1]  # first variant on top
    for (key, xlabel), ax, letter in zip(FINALS, dot_axes, "defg"):
        for name, y in zip(names, rows):
            _, ys = _stack(d["variants"][name], key, "eval_step")
            final = ys[:, -1]
            s = st[name]
            ax.plot([np.nanmin(final), np.nanmax(final)], [y, y], color=s["color"], lw=2.2, alpha=0.45,
                    solid_capstyle="butt")
            ax.plot(np.nanmean(final), y, marker=s["marker"], color=s["color"], ms=5, ls="none")
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", alpha=0.15)
        ax.tick_params(axis="y", length=0)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=2, min_n_ticks=2))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.2g"))
        panel_label(ax, letter)
    dot_axes[0].set_yticks(rows, [labels[n] for n in names], fontsize=9)
    dot_axes[0].set_ylim(-0.6, len(names) - 0.4)
    quick = "quick" in d.get("mode", "")
    fig.suptitle(("QUICK SMOKE RUN (not evidence): " if quick else "") + (d.get("config_line") or "") +
                 f"\ncurves: mean over {n_seeds} seed{'s' if n_seeds > 1 else ''}, band = range; (d)–(g): final "
                 "evaluation, marker = mean, bar = range over seeds", fontsize=9)
    return save(fig, out_stem)
