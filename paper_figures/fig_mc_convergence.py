"""Figure 5: Monte Carlo error against the number of sampled groups, with the exact prediction
√(tr Cov/n) and the exact per-group variances (data: experiments/fig_mc_convergence)."""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import NullFormatter

from rlkl.experiments import read_json
from rlkl.plotting import method_styles, new_figure, panel_label, save


def plot(data_path, out_stem):
    d = read_json(data_path)
    names = list(d["methods"])
    st = method_styles(names)
    n = np.array(d["n"])
    fig, (ax1, ax2) = new_figure(ncols=2, height=2.8, gridspec_kw={"width_ratios": [1.35, 1]})
    for name in names:
        m = d["methods"][name]
        s = st[name]
        ax1.plot(n, m["rms_rel_error"], color=s["color"], marker=s["marker"], ls="none", ms=4, label=name)
        ax1.plot(n, m["predicted"], color=s["color"], ls=s["linestyle"], lw=1.0)
    ax1.plot([], [], color="0.3", lw=1.0, label="exact √(tr Cov / n)")
    ax1.set(xscale="log", yscale="log", xlabel="number of sampled groups n",
            ylabel="RMS relative error of MC mean")
    lo = min(min(d["methods"][k]["rms_rel_error"]) for k in names)
    ax1.set_ylim(lo / 8, None)
    ticks = [t for t in (0.003, 0.01, 0.03, 0.1, 0.3, 1.0) if t >= lo / 8]
    ax1.yaxis.set_minor_formatter(NullFormatter())
    ax1.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax1.legend(loc="lower left", fontsize=9, labelspacing=0.2, ncol=3, columnspacing=0.6, handlelength=1.2, handletextpad=0.3)
    ax1.set_title(f"MC → exact E[∇L] as 1/√n ({d['replicates']} seeds)")
    x = np.arange(len(names))
    exact = [d["methods"][k]["relative_variance"] for k in names]
    mc = [d["methods"][k]["mc_trace_cov_mean"] / d["methods"][k]["grad_norm"] ** 2 for k in names]
    se = [d["methods"][k]["mc_trace_cov_se"] / d["methods"][k]["grad_norm"] ** 2 for k in names]
    ax2.bar(x, exact, color=[st[k]["color"] for k in names], alpha=0.75, label="exact (enumerated)")
    ax2.errorbar(x, mc, yerr=se, fmt="o", color="k", ms=4, capsize=2, label="Monte Carlo ± s.e.")
    ax2.set_xticks(x, names, rotation=40, ha="right", rotation_mode="anchor")
    ax2.set(ylabel="tr Cov[ĝ] / ‖E ĝ‖²  (per group)")
    ax2.grid(axis="x", visible=False)
    ax2.set_ylim(0, 1.5 * max(max(exact), max(m + e for m, e in zip(mc, se))))  # headroom: the legend hides no bar
    ax2.legend(loc="upper right", fontsize=9, handlelength=1.2)
    ax2.set_title(f"relative variance, G = {d['group_size']}")
    panel_label(ax1, "a")
    panel_label(ax2, "b")
    return save(fig, out_stem)
