"""Figure 10: frontiers of the small LM (data: experiments/fig_lm_frontier). For every method, one point per β
(mean over seeds, bars = 95 % percentile-bootstrap intervals in both coordinates), joined in order of β: (a) exact
reward against exact sequence KL(π‖π_ref) and (b) against the per-token KL, with the analytic optimum π*_β ∝
π_ref·e^{R/β} as the best reachable frontier (black); (c) sequence entropy, (d) the odds distance among correct
answers (0 at every KL-regularized optimum), (e) forward against reverse KL, all against the reverse KL; (f) each
method's KL to the optimum of its own claimed objective against β. Legends use registry method names; panel (a)
writes β next to the grpo points (all variants share the β grid, named in the legend title)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import LogFormatterSciNotation, NullFormatter

from rlkl.experiments import read_json
from rlkl.plotting import MIN_FONT, apply_style, panel_label, save

PALETTE = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#882255", "#44AA99",
           "#999933", "#AA4499", "#6699CC")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def legend_label(variant: str, method: str) -> str:
    """Registry method name, plus K and 'unclipped' where the variant sets them."""
    extra = []
    if "_K" in variant:
        extra.append("K=" + variant.split("_K")[1].split("_")[0])
    if variant.endswith("_noclip"):
        extra.append("unclipped")
    return method + (f" ({', '.join(extra)})" if extra else "")


def _series(d: dict, name: str, key: str):
    rows = sorted((r for r in d["aggregate"] if r["variant"] == name), key=lambda r: r["beta"])
    get = lambda k: np.array([r[k] if isinstance(r.get(k), list) else [np.nan] * 3 for r in rows], dtype=float)  # noqa
    return np.array([r["beta"] for r in rows]), get(key)


def _errorbar(ax, x, y, style, label=None):
    xerr = np.abs(np.stack([x[:, 0] - x[:, 1], x[:, 2] - x[:, 0]]))
    yerr = np.abs(np.stack([y[:, 0] - y[:, 1], y[:, 2] - y[:, 0]]))
    ax.errorbar(x[:, 0], y[:, 0], xerr=np.nan_to_num(xerr), yerr=np.nan_to_num(yerr), label=label, lw=1.1,
                capsize=1.5, ms=4, elinewidth=0.7, **style)


PANELS = (("kl_rev_seq", "reward", "exact KL(π‖π_ref) per sequence (nats)", "exact reward E_π[R]"),
          ("kl_rev_tok", "reward", "exact KL(π‖π_ref) per token (nats)", "exact reward E_π[R]"),
          ("kl_rev_seq", "entropy_seq", "exact KL(π‖π_ref) per sequence", "sequence entropy H(π) (nats)"),
          ("kl_rev_seq", "odds_tv", "exact KL(π‖π_ref) per sequence", "odds distance among correct answers"),
          ("kl_rev_seq", "kl_fwd_seq", "exact KL(π‖π_ref) per sequence", "exact KL(π_ref‖π) per sequence"))
OPT_KEY = {"reward": "reward", "entropy_seq": "entropy_seq", "kl_fwd_seq": "kl_fwd_seq", "odds_tv": "odds_tv"}


def _optimum(ax, front, xkey, ykey, x_max):
    """π*_β's curve; past its largest KL (reward 1 reached) it is continued flat to the data's largest x."""
    if not front or ykey not in OPT_KEY or xkey not in front["rev"]:
        return
    xs, ys = np.asarray(front["rev"][xkey]), np.asarray(front["rev"][OPT_KEY[ykey]])
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    if x_max > xs[-1]:
        xs, ys = np.append(xs, x_max), np.append(ys, ys[-1])
    ax.plot(xs, ys, color="black", lw=1.4, ls="--", label="optimum π*_β ∝ π_ref e^{R/β}", zorder=5)


def _own_optimum(ax, d, styles, labels):
    for name in d["names"]:
        rows = sorted((r for r in d["own_optimum"] if r["variant"] == name), key=lambda r: r["beta"])
        if rows:
            y = np.array([r["kl_to_own_optimum"] for r in rows])
            ax.errorbar([r["beta"] for r in rows], y[:, 0], yerr=np.abs(np.stack([y[:, 0] - y[:, 1], y[:, 2] - y[:, 0]])),
                        label=labels[name], lw=1.1, capsize=1.5, ms=4, **styles[name])
    ax.set(xscale="log", yscale="log", xlabel="β", ylabel="KL(π‖π_opt), own objective")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(LogFormatterSciNotation())


#: the variant whose points carry their β in panel (a) (every variant shares the β grid; the legend names it)
BETA_LABELLED = "grpo"


def _beta_labels(ax, d, name, styles):
    """Write β next to each point of one variant (panel a), so the order of β along every curve is readable."""
    _, x = _series(d, name, "kl_rev_seq")
    betas, y = _series(d, name, "reward")
    for b, xi, yi in zip(betas, x[:, 0], y[:, 0]):
        if np.isfinite(xi) and np.isfinite(yi):
            ax.annotate(f"β={b:g}", (xi, yi), xytext=(4, -10), textcoords="offset points", fontsize=MIN_FONT,
                        color=styles[name]["color"])


def plot(data_path, out_stem):
    d = read_json(data_path)
    names, front = d["names"], d.get("optimum_frontier")
    labels = {n: legend_label(n, d["methods"].get(n, n)) for n in names}
    styles = {n: {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)]} for i, n in enumerate(names)}
    apply_style()
    fig, axes = plt.subplots(2, 3, figsize=(10.0, 6.6), layout="constrained")
    for (xkey, ykey, xl, yl), ax, letter in zip(PANELS, axes.flat, "abcde"):
        x_max, y_max = 0.0, 0.0
        for n in names:
            _, x = _series(d, n, xkey)
            _, y = _series(d, n, ykey)
            if np.isfinite(x[:, 0]).any() and np.isfinite(y[:, 0]).any():
                _errorbar(ax, x, y, styles[n], labels[n])
                x_max, y_max = max(x_max, np.nanmax(x)), max(y_max, np.nanmax(y))
        _optimum(ax, front, xkey, ykey, x_max)
        if letter == "a":
            _beta_labels(ax, d, BETA_LABELLED if BETA_LABELLED in names else names[-1], styles)
        if ykey == "kl_fwd_seq":  # the optimum's forward KL explodes as β -> 0: keep the data in view
            ax.set_ylim(0, 1.25 * y_max if y_max > 0 else 1)
        ax.set(xlabel=xl, ylabel=yl)
        panel_label(ax, letter)
    if d["own_optimum"]:
        _own_optimum(axes.flat[5], d, styles, labels)
    else:
        axes.flat[5].axis("off")
    panel_label(axes.flat[5], "f")
    handles, labs = axes.flat[0].get_legend_handles_labels()
    betas = ", ".join(f"{b:g}" for b in d["args"]["betas"])
    fig.legend(handles, labs, loc="outside lower center", ncol=4, fontsize=8,
               title=f"registry method; one point per β ∈ {{{betas}}} (no_kl: one point), β written on {BETA_LABELLED} in (a)",
               title_fontsize=8)
    a = d["args"]
    quick = "quick" in d.get("mode", "")
    fig.suptitle(("QUICK SMOKE RUN (not evidence): " if quick else "") +
                 f"small LM, {a['task']} task (cpu_tiny), {a['steps']} RL steps, β ∈ {{{', '.join(f'{b:g}' for b in a['betas'])}}}, "
                 f"{len(a['seeds'])} seeds; points: mean, bars: 95% bootstrap intervals", fontsize=9)
    return save(fig, out_stem)
