"""Figure 9: LM training curves per method — reward, pass@k, exact entropy, exact KL drift (sequence and token),
mean ± range over seeds (data: experiments/fig_lm_training)."""

from __future__ import annotations

import numpy as np

from rlkl.experiments import read_json
from rlkl.plotting import method_styles, new_figure, panel_label, save

PANELS = (("reward_mean", "train_step", "training reward (moving avg. 5)"),
          ("eval_pass@1", "eval_step", "eval pass@1"),
          ("eval_pass@8", "eval_step", "eval pass@8"),
          ("eval_entropy", "eval_step", "exact entropy (nats/token)"),
          ("eval_kl_rev_seq", "eval_step", r"exact KL(π‖$\pi_{ref}$), sequence (nats)"),
          ("eval_kl_rev_tok", "eval_step", r"exact KL(π‖$\pi_{ref}$), token (nats)"))


def _label(name: str) -> str:
    """``rpg_reinforce_urkl_clip_K4`` → ``RPG URKL clip K=4``."""
    if name.startswith("rpg_reinforce_"):
        parts = name[len("rpg_reinforce_"):].split("_")
        k = parts[-1][1:] if parts[-1].startswith("K") else None
        core = " ".join(p for p in parts if not p.startswith("K"))
        return "RPG " + core.upper().replace("NOCLIP", "no clip").replace("CLIP", "clip") + (f" K={k}" if k else "")
    return name


def _styles(d):
    names = list(d["variants"])
    base = method_styles([d["variants"][n]["method"] for n in names])
    out = {}
    for n in names:
        s = dict(base[d["variants"][n]["method"]])
        if n.startswith("rpg"):  # four RPG variants: shade = divergence, line = clip
            s["color"] = "#D55E00" if "urkl" in n else "#882255"
            s["linestyle"] = ":" if "noclip" in n else "-"
        out[n] = s
    return out


def _smooth(y, k=5):
    y = np.asarray(y, dtype=float)
    return np.array([y[max(0, i - k + 1): i + 1].mean() for i in range(len(y))])


def plot(data_path, out_stem):
    d = read_json(data_path)
    names = list(d["variants"])
    st = _styles(d)
    fig, axes = new_figure(ncols=3, nrows=2, width=6.8, height=4.9)
    for (key, xkey, label), ax, letter in zip(PANELS, axes.flat, "abcdef"):
        for name in names:
            v = d["variants"][name]
            seeds = list(v["seeds"].values())
            n = min(len(s[key]) for s in seeds)
            x = np.array(seeds[0][xkey][:n])
            ys = np.array([[np.nan if y is None else y for y in s[key][:n]] for s in seeds])
            if key == "reward_mean":
                ys = np.array([_smooth(y) for y in ys])
            s = st[name]
            ax.plot(x, ys.mean(0), color=s["color"], ls=s["linestyle"], label=_label(name))
            if len(seeds) > 1:
                ax.fill_between(x, ys.min(0), ys.max(0), color=s["color"], alpha=0.12, lw=0)
        ax.set(xlabel="RL step", ylabel=label)
        panel_label(ax, letter)
    n_seeds = max(len(v["seeds"]) for v in d["variants"].values())
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside lower center", ncol=min(4, len(names)),
               fontsize=9, columnspacing=1.0, handlelength=2.0,
               title=f"mean over {n_seeds} seeds, band = range" + ("  [quick smoke run]" if "quick" in d["mode"] else ""))
    return save(fig, out_stem)
