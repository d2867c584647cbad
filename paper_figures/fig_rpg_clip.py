"""Figure 6: RPG-Style Clip — loss shape and gradient against w = π_θ/π_old, and the bias/variance of the
clipped estimator against the off-policy distance (data: experiments/fig_rpg_clip)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from rlkl.experiments import read_json
from rlkl.plotting import FAMILY_COLORS, apply_style, save

#: (a)/(b): key in the data, legend label (registry method name, or the library loss), colour, line style; each
#: curve is named the same in both panels and drawn in every panel that has its data
CURVES = (("ppo_dual_clip", "PPO dual clip (rlkl.losses.ppo_clip_loss)", FAMILY_COLORS["grpo"], "-"),
          ("rpg_urkl_clip", "rpg_urkl: RPG-Style Clip (Alg. 1)", FAMILY_COLORS["rpg"], "--"),
          ("rpg_reinforce_urkl_clip", "rpg_reinforce_urkl: RPG-Style Clip (Alg. 2)", "#882255", (0, (1, 1.2))),
          ("rpg_urkl_noclip", "rpg_urkl, unclipped", "0.55", ":"))
LOSS_PANEL = ("ppo_dual_clip", "rpg_urkl_clip", "rpg_urkl_noclip")  # the REINFORCE value −sg(W)·log π is off-scale
GRAD_PANEL = ("ppo_dual_clip", "rpg_urkl_clip", "rpg_reinforce_urkl_clip")
#: (c)/(d): sweep variant, legend label (registry name + what was changed), colour, line style, marker
SWEEP = (("ufkl_seq_noclip", "rpg_reinforce_ufkl_seq, unclipped", FAMILY_COLORS["frpo"], "-", "o"),
         ("ufkl_seq_clip", "rpg_reinforce_ufkl_seq + RPG-Style Clip", FAMILY_COLORS["frpo"], "--", "o"),
         ("urkl_seq_noclip", "rpg_reinforce_urkl_seq, unclipped", FAMILY_COLORS["rpg"], "-", "s"),
         ("urkl_seq_clip", "rpg_reinforce_urkl_seq + RPG-Style Clip", FAMILY_COLORS["rpg"], "--", "s"),
         ("urkl_token_clip", "rpg_reinforce_urkl (token level, clipped)", FAMILY_COLORS["grpo"], "-.", "^"))


def plot(data_path, out_stem):
    d = read_json(data_path)
    w = np.array(d["w"])
    c = d["clip"]
    apply_style()
    fig = plt.figure(figsize=(6.8, 6.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1)
    ax1, ax2 = top.subplots(1, 2)
    ax3, ax4 = bottom.subplots(1, 2)
    style = {k: (lab, col, ls) for k, lab, col, ls in CURVES}
    for sign in ("pos", "neg"):
        for key in LOSS_PANEL:
            lab, col, ls = style[key]
            ax1.plot(w, d["shape"][sign][key]["loss"], color=col, ls=ls, lw=1.8, label=lab if sign == "pos" else None)
        for key in GRAD_PANEL:
            lab, col, ls = style[key]
            ax2.plot(w, d["shape"][sign][key]["grad_logp"], color=col, ls=ls, lw=1.8,
                     label=lab if sign == "pos" else None)
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
    ax1.set_title(f"(a) loss (β = {d['beta']:g}, ε₁ = {c['eps_low']:g}, ε₂ = {c['eps_high']:g}, c = {c['c']:g})",
                  pad=14)
    ax2.text(2.2, 5.0, "A = −1", color="0.2")
    ax2.text(0.45, -2.8, "A = +1", color="0.2")
    ax2.set(ylabel=r"$\partial\ell/\partial\log\pi_\theta$", ylim=(-12, 12))
    ax2.set_title("(b) gradient: zero where clipped", pad=14)
    handles = {}
    for ax in (ax1, ax2):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    top.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=2, fontsize=9, labelspacing=0.3,
               columnspacing=1.2)

    rows = d["sweep"]
    for key, label, color, ls, mk in SWEEP:
        r = [x for x in rows if x["variant"] == key]
        kl = [x["kl_old_to_theta"] for x in r]
        ax3.plot(kl, [max(x["rel_bias"], 1e-16) for x in r], color=color, ls=ls, marker=mk, label=label)
        ax4.plot(kl, [x["relative_variance"] for x in r], color=color, ls=ls, marker=mk, label=label)
    ax3.set(yscale="log", xlabel=r"off-policy distance KL($\pi_{old}$‖$\pi_\theta$)  (nats)",
            ylabel="relative bias of E[∇L]", ylim=(1e-17, 5))
    ax3.set_yticks([1e-15, 1e-10, 1e-5, 1])
    ax3.set_title("(c) bias vs the intended objective")
    ax4.set(yscale="log", xlabel=r"off-policy distance KL($\pi_{old}$‖$\pi_\theta$)  (nats)",
            ylabel="tr Cov[ĝ] / ‖∇J‖²  (per group)")
    ax4.set_title(f"(d) variance (G = {d['group_size']}, exact)")
    bottom.legend(*ax3.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=9,
               labelspacing=0.3, columnspacing=1.2)
    return save(fig, out_stem)
