"""Figure 2: k1/k2/k3 per sample against the log ratio, and Schulman's Gaussian table (data: experiments/fig_kl_estimators)."""

from __future__ import annotations

from rlkl.experiments import read_json
from rlkl.plotting import ESTIMATOR_COLORS, new_figure, panel_label, save

FORMULAS = {"k1": r"k1 $= \log u$", "k2": r"k2 $= \frac{1}{2}\log^2 u$", "k3": r"k3 $= u^{-1} - 1 + \log u$"}
GRADS = {"k1": "k1: 1  (zero mean)", "k2": r"k2: $\log u$  (reverse KL)", "k3": r"k3: $1 - u^{-1}$  (forward KL)"}


def _pm(x, se):
    return f"{x:.4f} ± {se:.4f}" if abs(x) < 0.1 else f"{x:.3f} ± {se:.3f}"


def plot(data_path, out_stem):
    d = read_json(data_path)
    c = d["curves"]
    fig = new_figure(width=6.8, height=4.9)[0]
    fig.clear()
    gs = fig.add_gridspec(2, 2, height_ratios=[1.35, 1.0])
    ax1, ax2 = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1])
    ax3 = fig.add_subplot(gs[1, :])
    for k in ("k1", "k2", "k3"):
        ax1.plot(c["log_ratio"], c["value"][k], color=ESTIMATOR_COLORS[k], label=FORMULAS[k])
        ax2.plot(c["log_ratio"], c["grad"][k], color=ESTIMATOR_COLORS[k], label=GRADS[k])
    ax1.set(xlabel=r"log ratio $\log u = \log\,\pi_\theta/\pi_{ref}$  (nats)", ylabel="per-sample estimate (nats)",
            ylim=(-2.5, 6))
    ax2.set(xlabel=r"log ratio $\log u = \log\,\pi_\theta/\pi_{ref}$  (nats)",
            ylabel=r"$\partial k\,/\,\partial \log\pi_\theta$", ylim=(-3, 3))
    ax1.legend(loc="upper left", labelspacing=0.3, handlelength=1.5)
    ax2.legend(loc="lower right", labelspacing=0.3, handlelength=1.5)
    ax1.set_title(r"value (estimates KL(π‖$\pi_{ref}$))")
    ax2.set_title("gradient as a loss, per sample")
    for ax in (ax1, ax2):
        ax.axhline(0, color="0.5", lw=0.6)
        ax.axvline(0, color="0.5", lw=0.6)
    panel_label(ax1, "a")
    panel_label(ax2, "b")

    ax3.axis("off")
    ax3.grid(False)
    n = d["table"][0]["n_samples"]
    header = ["μ  (KL)", "est.", "bias/KL\nexact", "bias/KL\nMonte Carlo", "std/KL\nexact", "std/KL\nMonte Carlo"]
    cells, colours = [], []
    for r in d["table"]:
        cells.append([f"{r['mu']:g}  ({r['kl']:g})", r["estimator"], f"{r['bias_over_kl_exact']:.4g}",
                      _pm(r["bias_over_kl_mc"], r["bias_over_kl_se_mc"]), f"{r['std_over_kl_exact']:.4g}",
                      _pm(r["std_over_kl_mc"], r["std_over_kl_se_mc"])])
        colours.append(["white", ESTIMATOR_COLORS[r["estimator"]] + "33"] + ["white"] * 4)
    tab = ax3.table(cellText=cells, colLabels=header, cellColours=colours, loc="center", cellLoc="center",
                    colWidths=[0.14, 0.07, 0.13, 0.22, 0.13, 0.22], bbox=[0.0, 0.0, 1.0, 0.86])
    tab.auto_set_font_size(False)
    tab.set_fontsize(9)
    for (row, _), cell in tab.get_celld().items():
        cell.set_linewidth(0.4)
        if row == 0:
            cell.set_text_props(fontweight="bold")
            cell.set_height(cell.get_height() * 1.7)
    ax3.text(0.5, 0.9, f"Schulman's example: π = N(0,1), $\\pi_{{ref}}$ = N(μ,1), KL = μ²/2; "
             f"Monte Carlo n = {n:,} per μ (± 1 s.e.)", transform=ax3.transAxes, ha="center", va="bottom")
    panel_label(ax3, "c")
    return save(fig, out_stem)
