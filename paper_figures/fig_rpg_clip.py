"""Figure 6: RPG-Style Clip — loss shape and gradient against w = π_θ/π_old, and the bias/variance of the
clipped estimator against the off-policy distance (data: experiments/fig_rpg_clip)."""

from __future__ import annotations

import numpy as np

from rlkl.experiments import read_json
from rlkl.plotting import FAMILY_COLORS, new_figure, panel_label, save

CURVES = (("ppo_dual_clip", "PPO dual clip", FAMILY_COLORS["grpo"], "-"),
          ("rpg_urkl_clip", "RPG URKL + RPG-Style Clip", FAMILY_COLORS["rpg"], "--"),
          ("rpg_urkl_noclip", "RPG URKL, no clip", "0.55", ":"))
SWEEP = (("ufkl_seq_noclip", "UFKL seq, no clip", FAMILY_COLORS["frpo"], "-", "o"),
         ("ufkl_seq_clip", "UFKL seq, clip", FAMILY_COLORS["frpo"], "--", "o"),
         ("urkl_seq_noclip", "URKL seq, no clip", FAMILY_COLORS["rpg"], "-", "s"),
         ("urkl_seq_clip", "URKL seq, clip", FAMILY_COLORS["rpg"], "--", "s"),
         ("urkl_token_clip", "URKL token-level, clip", FAMILY_COLORS["grpo"], "-.", "^"))


def plot(data_path, out_stem):
    d = read_json(data_path)
    w = np.array(d["w"])
    c = d["clip"]
    fig, axes = new_figure(ncols=2, nrows=2, width=6.8, height=5.2)
    (ax1, ax2), (ax3, ax4) = axes
    for sign, lw_ in (("pos", 1.8), ("neg", 1.8)):
        for key, label, color, ls in CURVES:
            cur = d["shape"][sign][key]
            lab = f"{label}" if sign == "pos" else None
            ax1.plot(w, cur["loss"], color=color, ls=ls, lw=lw_, label=lab)
        g = d["shape"][sign]
        ax2.plot(w, g["ppo_dual_clip"]["grad_logp"], color=FAMILY_COLORS["grpo"], ls="-",
                 label="PPO dual clip" if sign == "pos" else None)
        ax2.plot(w, g["rpg_reinforce_urkl_clip"]["grad_logp"], color=FAMILY_COLORS["rpg"], ls="--",
                 label="RPG-REINFORCE URKL + clip (Alg. 2)" if sign == "pos" else None)
    for ax in (ax1, ax2):
        for x, lab, ha in ((1 - c["eps_low"], "1−ε₁", "right"), (1 + c["eps_high"], "1+ε₂", "left"),
                           (c["c"], "c", "left")):
            ax.axvline(x, color="0.6", lw=0.7, ls=":")
            ax.text(x, 1.0, lab, transform=ax.get_xaxis_transform(), ha=ha, va="bottom", fontsize=9, color="0.35")
        ax.set_xscale("log")
        ax.set_xticks([0.3, 1, 3, 10], ["0.3", "1", "3", "10"])
        ax.set_xlabel(r"ratio $w = \pi_\theta/\pi_{old}$")
    ax1.text(0.32, 1.5, "A = −1", color="0.2")
    ax1.text(0.32, -1.6, "A = +1", color="0.2")
    ax1.set(ylabel="per-token loss ℓ", ylim=(-3.5, 12))
    ax1.legend(loc="upper left", fontsize=9, labelspacing=0.25)
    ax1.set_title(f"loss shape (β = {d['beta']:g})", pad=14)
    ax2.text(2.2, 5.0, "A = −1", color="0.2")
    ax2.text(0.45, -2.8, "A = +1", color="0.2")
    ax2.set(ylabel=r"$\partial\ell/\partial\log\pi_\theta$", ylim=(-12, 12))
    ax2.legend(loc="lower right", fontsize=9, labelspacing=0.25)
    ax2.set_title("gradient: zero where clipped", pad=14)

    rows = d["sweep"]
    for key, label, color, ls, mk in SWEEP:
        r = [x for x in rows if x["variant"] == key]
        kl = [x["kl_old_to_theta"] for x in r]
        ax3.plot(kl, [max(x["rel_bias"], 1e-16) for x in r], color=color, ls=ls, marker=mk, label=label)
        ax4.plot(kl, [x["relative_variance"] for x in r], color=color, ls=ls, marker=mk, label=label)
    ax3.set(yscale="log", xlabel=r"off-policy distance KL($\pi_{old}$‖$\pi_\theta$)  (nats)",
            ylabel="relative bias of E[∇L]", ylim=(1e-17, 5))
    ax3.set_yticks([1e-15, 1e-10, 1e-5, 1])
    ax3.legend(loc="center right", fontsize=9, labelspacing=0.2)
    ax3.set_title("bias vs intended objective")
    ax4.set(yscale="log", xlabel=r"off-policy distance KL($\pi_{old}$‖$\pi_\theta$)  (nats)",
            ylabel="tr Cov[ĝ] / ‖∇J‖²  (per group)")
    ax4.set_title(f"variance (G = {d['group_size']}, exact)")
    for ax, l in zip((ax1, ax2, ax3, ax4), "abcd"):
        panel_label(ax, l)
    return save(fig, out_stem)
