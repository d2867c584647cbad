"""Regenerate docs/precision.md: max relative error of every rlkl estimator against 50-digit mpmath, per dtype.

    .venv/bin/python scripts/precision_table.py            # full grid (~20 s), rewrites docs/precision.md
    .venv/bin/python scripts/precision_table.py --check    # full grid, fails if a documented bound is exceeded
    .venv/bin/python scripts/precision_table.py --quick    # other points, coarser (what tests/test_precision.py runs)

For each function of the log ratio δ (k1/k2/k3; for every f-divergence the sampled estimate f(u)/u, the generator
f(u) that ``FDivergence.exact`` sums, and FRPO's local term f'(u) − f'(1)) and each dtype, the input grid is cast
to the dtype first and the reference is computed from that exact float value in mpmath at 50 significant digits
from the textbook formula in u = e^δ (written here, independently of rlkl's log-domain forms). Points whose true
value is outside the dtype's normal range are excluded and reported as the "finite range". The relative error is
|computed − exact|/|exact|; a nan/inf where the exact value is representable counts as an infinite error.

The bound column is the limit the test enforces: the smallest power of two ≥ 2 × the full-grid maximum, in units
of the unit round-off u (2^-24 for float32, 2^-53 for float64).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Callable

import mpmath
import numpy as np
import torch

from rlkl.divergences import get_f_divergence, k1, k2, k3

mp = mpmath.mp
DPS = 50
ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "precision.md"
DTYPES = {"float32": torch.float32, "float64": torch.float64}
UNIT_ROUNDOFF = {"float32": 2.0 ** -24, "float64": 2.0 ** -53}
# the grid reaches past each dtype's exp range; points whose value leaves the range are excluded
MAX_ABS_DELTA = {"float32": 100.0, "float64": 750.0}
REGIONS = (("|δ| ≤ 0.1", 0.0, 0.1), ("0.1 < |δ| ≤ 5", 0.1, 5.0), ("|δ| > 5", 5.0, math.inf))
MIN_ABS_DELTA = 1e-12

# ---------------------------------------------------------------------------------------------------------------
# references: f(u), f'(u) − f'(1) in the u domain (mpmath), straight from the definitions


def _alpha_ref(a: float):
    a = mpmath.mpf(a)
    return (lambda u: (u ** a - a * u - (1 - a)) / (a * (a - 1)),
            lambda u: (u ** (a - 1) - 1) / (a - 1))


F_REF: dict[str, tuple[Callable, Callable]] = {
    "reverse_kl": (lambda u: u * mpmath.log(u), lambda u: mpmath.log(u)),
    "forward_kl": (lambda u: -mpmath.log(u), lambda u: 1 - 1 / u),
    "reverse_kl_k3": (lambda u: u * mpmath.log(u) - u + 1, lambda u: mpmath.log(u)),
    "forward_kl_k3": (lambda u: -mpmath.log(u) + u - 1, lambda u: 1 - 1 / u),
    "pearson": (lambda u: (u - 1) ** 2, lambda u: 2 * (u - 1)),
    "neyman": (lambda u: (u - 1) ** 2 / u, lambda u: 1 - 1 / u ** 2),
    "hellinger": (lambda u: (mpmath.sqrt(u) - 1) ** 2, lambda u: 1 - 1 / mpmath.sqrt(u)),
    "jensen_shannon": (lambda u: (u * mpmath.log(u) - (u + 1) * mpmath.log((u + 1) / 2)) / 2,
                       lambda u: mpmath.log(2 * u / (u + 1)) / 2),
    "total_variation": (lambda u: abs(u - 1) / 2, lambda u: mpmath.sign(u - 1) / 2),
    "alpha=0.5": _alpha_ref(0.5),
    "alpha=2": _alpha_ref(2.0),
    "alpha=-1": _alpha_ref(-1.0),
    "alpha=0.3": _alpha_ref(0.3),
    "alpha=0.99": _alpha_ref(0.99),
}


def rows() -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor], Callable]]:
    """(row name, rlkl function of δ, mpmath reference of δ)."""
    out = [("k1 = δ", k1, lambda d: d), ("k2 = δ²/2", k2, lambda d: d * d / 2),
           ("k3 = e^{−δ} − 1 + δ", k3, lambda d: mpmath.exp(-d) - 1 + d)]
    for name, (f, fp) in F_REF.items():
        div = get_f_divergence(name)
        out.append((f"{name}: f(u)/u", div.sampled_estimate, lambda d, f=f: f(mpmath.exp(d)) / mpmath.exp(d)))
        out.append((f"{name}: f(u)", div.f_of_log, lambda d, f=f: f(mpmath.exp(d))))
        if name != "total_variation":  # ½ sign(δ): exact
            out.append((f"{name}: f'(u) − f'(1)", div.f_prime_centered, lambda d, fp=fp: fp(mpmath.exp(d))))
    return out


# ---------------------------------------------------------------------------------------------------------------
# grids


def grid(dtype: str, quick: bool) -> np.ndarray:
    """Log-spaced magnitudes in [1e-12, MAX_ABS_DELTA] of both signs plus uniform points in [−5, 5]."""
    hi = MAX_ABS_DELTA[dtype]
    if quick:  # other points than the full grid: a random log-uniform sample
        rng = np.random.default_rng(20250611)
        mags = 10.0 ** rng.uniform(math.log10(MIN_ABS_DELTA), math.log10(hi), 100)
        uni = rng.uniform(-5.0, 5.0, 40)
    else:
        mags = np.logspace(math.log10(MIN_ABS_DELTA), math.log10(hi), 1400)
        uni = np.linspace(-5.0, 5.0, 1001)
    pts = np.concatenate([mags, -mags, uni])
    return pts[np.abs(pts) >= MIN_ABS_DELTA]


def _representable(v, finfo) -> bool:
    return v != 0 and finfo.tiny <= abs(v) <= finfo.max


def _edge(ref: Callable, inside: float, outside: float, finfo) -> float:
    """Bisect (in mpmath) for the δ between ``inside`` and ``outside`` where the exact value leaves the range."""
    a, b = mpmath.mpf(inside), mpmath.mpf(outside)
    for _ in range(60):
        m = (a + b) / 2
        if _representable(ref(m), finfo):
            a = m
        else:
            b = m
    return float(a)


def measure(quick: bool = False) -> dict[str, dict[str, dict]]:
    """{row: {dtype: {"max": [per region], "range": (lo, hi) of δ with a representable value}}}."""
    mp.dps = DPS
    result: dict[str, dict[str, dict]] = {}
    for name, fn, ref in rows():
        result[name] = {}
        for dname, dtype in DTYPES.items():
            finfo = torch.finfo(dtype)
            x = torch.tensor(grid(dname, quick), dtype=dtype)
            with torch.no_grad():
                got = fn(x).double().tolist()
            errs = [0.0] * len(REGIONS)
            inside, outside = [], []
            for d, g in zip(x.tolist(), got):
                exact = ref(mpmath.mpf(d))
                if not _representable(exact, finfo):
                    outside.append(d)
                    continue
                inside.append(d)
                err = math.inf if not math.isfinite(g) else float(abs((mpmath.mpf(g) - exact) / exact))
                region = next(i for i, (_, a, b) in enumerate(REGIONS) if a < abs(d) <= b or (a == 0 and abs(d) <= b))
                errs[region] = max(errs[region], err)
            lo, hi = min(inside), max(inside)
            below, above = [d for d in outside if d < lo], [d for d in outside if d > hi]
            lo = _edge(ref, lo, max(below), finfo) if below else -math.inf
            hi = _edge(ref, hi, min(above), finfo) if above else math.inf
            result[name][dname] = {"max": errs, "range": (lo, hi)}
    return result


def bound_in_u(max_err: float, dname: str) -> int:
    """Smallest power of two >= 2 × max_err / u (at least 1)."""
    ratio = 2.0 * max_err / UNIT_ROUNDOFF[dname]
    if not math.isfinite(ratio):
        raise ValueError("a non-finite relative error cannot be documented as a bound")
    return 1 if ratio <= 1 else 2 ** math.ceil(math.log2(ratio))


# ---------------------------------------------------------------------------------------------------------------
# markdown


def _fmt(e: float) -> str:
    # below 1e-25 the difference is the 50-digit reference's own round-off: the function is exact
    return "0" if e < 1e-25 else ("inf" if math.isinf(e) else f"{e:.1e}")


def _range(r: tuple[float, float], dname: str) -> str:
    lo = "…" if math.isinf(r[0]) else f"{math.ceil(r[0] * 100) / 100:.2f}"
    hi = "…" if math.isinf(r[1]) else f"{math.floor(r[1] * 100) / 100:.2f}"
    return f"[{lo}, {hi}]"


HEADER = """# Numerical precision of the estimators

Maximum relative error |computed − exact| / |exact| of every per-token function of the log ratio δ = log u,
u = π/π_ref, against the textbook formula evaluated in 50-digit mpmath at the same (dtype-rounded) input.
Regenerate with `.venv/bin/python scripts/precision_table.py` ({n_points} points per dtype: 1400 log-spaced
magnitudes from 1e-12 to {max32:g} (float32) / {max64:g} (float64), both signs, and 1001 uniform points in
[−5, 5]); `tests/test_precision.py` reruns it on other points ({n_quick} per dtype) and fails if a row exceeds its
bound. u₃₂ = 2⁻²⁴ ≈ 6.0e-8 and u₆₄ = 2⁻⁵³ ≈ 1.1e-16 are the unit round-offs; a few u is the best any
floating-point evaluation of these functions can promise.

- *finite range*: the δ interval on which the exact value fits the dtype (between its smallest normal number and
  its largest; bisected in mpmath and rounded inwards); "…": no limit on the grid. Outside it the value itself is
  not representable, so the function returns ±inf (or underflows towards 0); inside it every row is finite.
- *f(u)/u*: `FDivergence.sampled_estimate`, the per-token estimate of D_f(π‖π_ref) under π (FRPO's future terms).
  *f(u)*: `FDivergence.f_of_log`, what `FDivergence.exact` sums (as Q·f(u) for u ≤ 1 and P·f(u)/u above).
  *f'(u) − f'(1)*: `FDivergence.f_prime_centered`, FRPO's local score-function term. k3 equals
  `reverse_kl_k3: f(u)/u`; the straight-through k3+ has k3's value.
- How: every quantity that vanishes at u = 1 is evaluated without cancellation (expm1/log1p forms; k3 and the
  Amari family with a Taylor series below |δ| = 0.5, 9 terms in float32 and 15 in float64; Jensen–Shannon with
  the form e^h (h sinh h − cosh h log cosh h), h = δ/2, near 0), and overflow-prone branches are never evaluated
  where they are not selected (so gradients stay finite too).

"""


FOOTER = """
## Guards and conventions (deliberate, each tested in tests/test_numerics.py)

- **Masked logits.** `FDivergence.exact`, `exact_kl` and `unnormalized_kl` accept −inf (a category of
  probability 0): P = Q = 0 contributes 0, P = 0 < Q contributes Q·f(0), Q = 0 < P contributes P·lim f(u)/u
  (inf for KL-like f). nan and +inf are refused. `FDivergence.exact` computes in float64 and returns the input
  dtype, so float32 logits 90 apart give the float32-representable answer (Pearson 3.05e38) instead of inf.
- **Amari α.** u^α is formed from an exact product α·δ (Dekker's product in float64, a float64 product for float32
  inputs), so non-dyadic α such as 0.3 keep a few u even at |δ| = 700 (a rounded α·δ alone would cost |αδ|·u);
  near u = 1 the forms are chosen so that at most a factor ~8 cancels for any α (the α = 0.3 and 0.99 rows).
- **FRPO.** The strictly-future sum Σ_{j>t} is summed on its own (never Σ_{j≥t} − own term); a regularizer that
  leaves the dtype's range raises a ValueError naming `log_ratio` and the divergence (e.g. Neyman in float32 below
  δ = −44.36) instead of passing inf on.
- **RPG sequence level.** log w = Σ_t log ρ_t is clamped to ±20 like verl's token ratio (a deliberate difference
  from the paper, which uses the raw ratio; `rlkl.losses.rpg_loss`): 100 float32 tokens at log ρ = 1 no longer give
  inf/nan rows. Inside the clamp nothing changes.
- **Aggregation.** `aggregate` divides before it sums, so finite per-token losses never aggregate to inf except
  when the aggregate itself exceeds the dtype (only possible for the token-*sum* modes). No boolean indexing.
- **Standardization.** Group/batch standardization rescales each group by a power of two before centring (exact),
  centres twice and gives all-equal groups exactly 0 with a finite (zero) gradient, so ε = 0 is safe for any finite
  rewards (5.9e-204 and 1e308 alike).
- **Binomial weights.** `finite_group_weight` / `finite_group_utility` have their exact polynomial derivative at
  p ∈ {0, 1}.
- **dtypes.** Only float32 and float64 tensors are accepted; float16/bfloat16 raise a ValueError asking to cast
  to float32 (float16 overflows at e^11, bfloat16 keeps 3 digits). Meta tensors raise a ValueError.
- **Empty masks.** `masked_mean` of an all-False mask is 0 (a diagnostic over no token); the losses and
  `aggregate` refuse a mask that selects no token.
"""


def render(res: dict, n_points: int, n_quick: int) -> str:
    lines = [HEADER.format(n_points=n_points, n_quick=n_quick, max32=MAX_ABS_DELTA["float32"],
                           max64=MAX_ABS_DELTA["float64"])]
    for dname in DTYPES:
        lines.append(f"## {dname}\n")
        cols = " | ".join(r[0].replace("|", "\\|") for r in REGIONS)
        lines.append(f"| function | {cols} | finite range of δ | bound |")
        lines.append("|---" * (len(REGIONS) + 3) + "|")
        for name, per in res.items():
            d = per[dname]
            cells = " | ".join(_fmt(e) for e in d["max"])
            lines.append(f"| {name} | {cells} | {_range(d['range'], dname)} | {bound_in_u(max(d['max']), dname)} u |")
        lines.append("")
    return "\n".join(lines) + FOOTER


ROW_RE = re.compile(r"^\| (?P<name>[^|]+?) \|(?P<cells>.*)\| (?P<bound>\d+) u \|$")


def documented_bounds(text: str) -> dict[str, dict[str, float]]:
    """{row: {dtype: bound as a relative error}} parsed from docs/precision.md."""
    out: dict[str, dict[str, float]] = {}
    dname = None
    for line in text.splitlines():
        if line.startswith("## "):
            dname = line[3:].strip()
        m = ROW_RE.match(line)
        if m and dname in DTYPES:
            out.setdefault(m["name"], {})[dname] = int(m["bound"]) * UNIT_ROUNDOFF[dname]
    return out


def violations(res: dict, bounds: dict[str, dict[str, float]]) -> list[str]:
    """Rows whose measured max relative error exceeds the documented bound (or that are undocumented)."""
    bad = []
    for name, per in res.items():
        for dname, d in per.items():
            b = bounds.get(name, {}).get(dname)
            m = max(d["max"])
            if b is None:
                bad.append(f"{name} [{dname}]: no documented bound")
            elif not m <= b:
                bad.append(f"{name} [{dname}]: max relative error {m:.2e} > documented bound {b:.2e}")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="coarser grid of other points; check only")
    ap.add_argument("--check", action="store_true", help="do not rewrite the doc; fail if a bound is exceeded")
    ap.add_argument("--dump", action="store_true", help="print errors in units of u instead of writing the doc")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res = measure(quick=args.quick)
    if args.quick or args.check:
        bad = violations(res, documented_bounds(DOC.read_text()))
        print("\n".join(bad) if bad else f"all {len(res)} rows within the bounds of {DOC.relative_to(ROOT)}")
        return 1 if bad else 0
    n_points, n_quick = len(grid("float32", False)), len(grid("float32", True))
    if args.dump:
        for name, per in res.items():
            print(f"{name:40s}", "  ".join(f"{d}: " + " ".join(_fmt(e / UNIT_ROUNDOFF[d]) for e in v["max"])
                                           + f" {_range(v['range'], d)}" for d, v in per.items()))
        return 0
    DOC.write_text(render(res, n_points, n_quick))
    print(f"wrote {DOC.relative_to(ROOT)} ({len(res)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
