"""One figure style for the whole project.

Every figure in ``paper_figures/`` goes through this module: :func:`apply_style` (fonts >= 9 pt at the paper's
3.3 in column width, so a figure stays readable when shown at half size), :func:`new_figure` (sizes in inches,
single or double column), :func:`save` (PNG and PDF side by side) and one colour per method family
(:func:`method_color`), so GRPO is the same colour in every figure. Uses matplotlib's Agg backend (no display).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

#: paper column widths (inches)
SINGLE_COLUMN = 3.3
DOUBLE_COLUMN = 6.8
#: smallest font used anywhere (points)
MIN_FONT = 9
#: PNG resolution (3.3 in → 660 px)
PNG_DPI = 200

#: colour of each method family (colour-blind-safe Okabe–Ito palette)
FAMILY_COLORS: dict[str, str] = {
    "grpo": "#0072B2",      # GRPO and its KL-loss variants
    "frpo": "#009E73",      # future-KL return (exact sequence KL)
    "rpg": "#D55E00",       # RPG surrogates
    "baseline": "#CC79A7",  # REINFORCE / RLOO / PPO with reward-side KL
    "dr_grpo": "#E69F00",   # centred advantages, no std (Dr. GRPO, DAPO, GSPO)
    "reference": "#000000",  # exact / limit curves
    "other": "#56B4E9",
}
#: a sequence of distinguishable colours for curves that are not methods (group sizes, estimators, ...)
SEQUENCE_COLORS: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
                                    "#000000")
#: estimator colours (k1, k2, k3) used by every KL-estimator figure
ESTIMATOR_COLORS: dict[str, str] = {"k1": "#0072B2", "k2": "#D55E00", "k3": "#009E73"}
LINESTYLES: tuple = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 1)))


def method_family(name: str) -> str:
    """Family of a registry method name (``grpo_k2_loss`` → ``grpo``, ``rpg_reinforce_fkl`` → ``rpg``)."""
    n = name.lower()
    if n.startswith("frpo"):
        return "frpo"
    if n.startswith("rpg"):
        return "rpg"
    if n in ("dr_grpo", "dapo", "gspo", "no_kl"):
        return "dr_grpo"
    if n.startswith("grpo"):
        return "grpo"
    if n in ("reinforce", "rloo") or n.startswith("ppo"):
        return "baseline"
    return "other"


def method_color(name: str) -> str:
    """The colour of a method's family (see ``FAMILY_COLORS``)."""
    return FAMILY_COLORS[method_family(name)]


def method_styles(names: Sequence[str]) -> dict[str, dict]:
    """``{name: {"color", "linestyle", "marker"}}``: family colour, and a distinct line style / marker for the
    members of one family, so several GRPO variants on one plot stay apart."""
    markers = ("o", "s", "^", "D", "v", "P", "X", "*")
    seen: dict[str, int] = {}
    out = {}
    for name in names:
        fam = method_family(name)
        i = seen.get(fam, 0)
        seen[fam] = i + 1
        out[name] = {"color": FAMILY_COLORS[fam], "linestyle": LINESTYLES[i % len(LINESTYLES)],
                     "marker": markers[i % len(markers)]}
    return out


def apply_style() -> None:
    """Set the project's rcParams (idempotent)."""
    plt.rcParams.update({
        "font.size": MIN_FONT,
        "axes.titlesize": MIN_FONT + 1,
        "axes.labelsize": MIN_FONT,
        "xtick.labelsize": MIN_FONT,
        "ytick.labelsize": MIN_FONT,
        "legend.fontsize": MIN_FONT,
        "legend.title_fontsize": MIN_FONT,
        "figure.titlesize": MIN_FONT + 1,
        "font.family": "DejaVu Sans",
        "mathtext.fontset": "dejavusans",
        "axes.linewidth": 0.8,
        "lines.linewidth": 1.6,
        "lines.markersize": 4.5,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "grid.linewidth": 0.6,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "legend.frameon": False,
        "legend.handlelength": 2.2,
        "figure.dpi": 100,
        "savefig.dpi": PNG_DPI,
        "savefig.bbox": "tight",
        "savefig.pad_inches": 0.03,
        "pdf.fonttype": 42,  # embed TrueType (editable text in the PDF)
        "ps.fonttype": 42,
        "axes.prop_cycle": matplotlib.cycler(color=list(SEQUENCE_COLORS)),
        "svg.hashsalt": "rlkl",
        "pdf.compression": 6,
    })


def new_figure(ncols: int = 1, nrows: int = 1, width: float | None = None, height: float | None = None,
               panel_height: float = 2.4, **subplot_kw):
    """A styled figure with a grid of axes.

    Args:
      ncols, nrows: panel grid.
      width: inches; default one column (3.3 in) per panel, capped at the double-column width.
      height: inches; default ``panel_height`` per row.
      subplot_kw: passed to ``plt.subplots`` (``sharex``, ``gridspec_kw``, ...).
    Returns:
      (fig, axes) — ``axes`` is a single Axes for a 1×1 grid, otherwise a numpy array (squeezed).
    """
    apply_style()
    if width is None:
        width = min(SINGLE_COLUMN * ncols, DOUBLE_COLUMN) if ncols > 1 else SINGLE_COLUMN
    if height is None:
        height = panel_height * nrows
    subplot_kw.setdefault("constrained_layout", True)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), **subplot_kw)
    return fig, axes


def panel_label(ax, label: str) -> None:
    """Bold panel letter ("a", "b", ...) at the axes' top-left corner."""
    ax.text(-0.02, 1.02, f"({label})", transform=ax.transAxes, fontsize=MIN_FONT + 1, fontweight="bold",
            ha="right", va="bottom")


def save(fig, path_stem: str | Path) -> list[Path]:
    """Write ``<path_stem>.png`` and ``<path_stem>.pdf`` (parents created) and close the figure.

    PDF metadata carries no creation date, so the same data gives the same file.
    Returns:
      the two paths.
    """
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    # Lay the figure out once for both files: the constrained layout and the tight box are computed here, then
    # the layout engine is switched off, so each savefig draws once instead of twice (a layout pass, then the
    # rendering) and the PNG and the PDF get the same positions and crop
    fig.draw_without_rendering()
    box = fig.get_tightbbox().padded(plt.rcParams["savefig.pad_inches"])
    fig.set_layout_engine("none")
    fig.savefig(paths[0], bbox_inches=box, metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches=box, metadata={"CreationDate": None, "Producer": None, "Creator": None})
    plt.close(fig)
    return paths


__all__ = [
    "SINGLE_COLUMN", "DOUBLE_COLUMN", "MIN_FONT", "FAMILY_COLORS", "SEQUENCE_COLORS", "ESTIMATOR_COLORS",
    "LINESTYLES", "apply_style", "new_figure", "panel_label", "save", "method_family", "method_color",
    "method_styles",
]
