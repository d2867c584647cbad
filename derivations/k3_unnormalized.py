"""k3 is the unnormalized KL, in both directions, for arbitrary positive measures (RPG App. D).

RPG (arXiv 2505.17508) eq. 3.2 defines k3(y) = y − 1 − log y, Def. 3.1 / 3.4 the unnormalized KL
UKL(P‖Q) = Σ P log(P/Q) + Σ (Q − P) (generalized KL + mass correction), and App. D / Remark 3.5 state
E_{π_old}[k3(π_θ/π_old)] = UKL(π_old‖π_θ) and E_{π_θ}[k3(π_old/π_θ)] = UKL(π_θ‖π_old) — where "E_P" is the sum
Σ_x P(x)·(·) even when P is not normalized. The check uses three points with arbitrary positive masses
a_x = π_old(x) and b_x = π_θ(x) (symbols, no normalization), see spec rpg.md §2.2.
"""

from __future__ import annotations

import sympy as sp

from derivations._framework import Derivation, identity

A = sp.symbols("a1:4", positive=True)   # π_old(x), any positive measure
B = sp.symbols("b1:4", positive=True)   # π_θ(x), any positive measure


def k3(y):
    """k3(y) = y − 1 − log y (RPG arXiv 2505.17508, eq. 3.2; Schulman 2020)."""
    return y - 1 - sp.log(y)


def ukl(P, Q):
    """UKL(P‖Q) = Σ_x P log(P/Q) + Σ_x (Q − P) (RPG Def. 3.1 / 3.4)."""
    return sum(pp * sp.log(pp / qq) for pp, qq in zip(P, Q)) + sum(qq - pp for pp, qq in zip(P, Q))


def kl(P, Q):
    """Generalized KL Σ_x P log(P/Q) (the usual KL when both are normalized)."""
    return sum(pp * sp.log(pp / qq) for pp, qq in zip(P, Q))


@identity("E_{π_old}[k3(π_θ/π_old)] = UKL(π_old‖π_θ) for arbitrary positive measures (forward)",
          "RPG arXiv 2505.17508 App. D (a), Def. 3.1, eq. 3.2")
def k3_forward(d: Derivation):
    lhs = sum(a * k3(b / a) for a, b in zip(A, B))
    step = sum(a * (b / a - 1) for a, b in zip(A, B)) - sum(a * sp.log(b / a) for a, b in zip(A, B))
    d.eq(lhs, step, "expand k3: Σ a(b/a − 1) − Σ a log(b/a)",
         tex_="\\sum_x \\pi_{\\rm old}\\,k_3\\!\\Big(\\frac{\\pi_\\theta}{\\pi_{\\rm old}}\\Big) = "
              "\\sum_x(\\pi_\\theta-\\pi_{\\rm old}) - \\sum_x\\pi_{\\rm old}\\log\\frac{\\pi_\\theta}{\\pi_{\\rm old}}",
         show_concrete=False)
    d.eq(step, ukl(A, B), "= Σ(π_θ − π_old) + Σ π_old log(π_old/π_θ) = UKL(π_old‖π_θ)",
         tex_="= \\sum_x\\pi_{\\rm old}\\log\\frac{\\pi_{\\rm old}}{\\pi_\\theta} + \\sum_x(\\pi_\\theta-\\pi_{\\rm old})"
              " = \\mathrm{UKL}(\\pi_{\\rm old}\\|\\pi_\\theta)", show_concrete=False)


@identity("E_{π_θ}[k3(π_old/π_θ)] = UKL(π_θ‖π_old) for arbitrary positive measures (reverse)",
          "RPG arXiv 2505.17508 App. D (b), Remark 3.5, Def. 3.4")
def k3_reverse(d: Derivation):
    lhs = sum(b * k3(a / b) for a, b in zip(A, B))
    step = sum(a - b for a, b in zip(A, B)) + sum(b * sp.log(b / a) for a, b in zip(A, B))
    d.eq(lhs, step, "expand k3: Σ(π_old − π_θ) + Σ π_θ log(π_θ/π_old)",
         tex_="\\sum_x \\pi_\\theta\\,k_3\\!\\Big(\\frac{\\pi_{\\rm old}}{\\pi_\\theta}\\Big) = "
              "\\sum_x(\\pi_{\\rm old}-\\pi_\\theta) + \\sum_x\\pi_\\theta\\log\\frac{\\pi_\\theta}{\\pi_{\\rm old}}",
         show_concrete=False)
    d.eq(step, ukl(B, A), "= UKL(π_θ‖π_old)", tex_="= \\mathrm{UKL}(\\pi_\\theta\\|\\pi_{\\rm old})",
         show_concrete=False)


@identity("Normalized measures: the mass correction vanishes, UKL = KL and E[k3] = KL (k3 unbiased)",
          "RPG arXiv 2505.17508 App. D note; spec rpg §2.2")
def normalized_reduces(d: Derivation):
    ys = sp.symbols("y1:4", positive=True)
    zs = sp.symbols("z1:4", positive=True)
    P = [y / sum(ys) for y in ys]
    Q = [z / sum(zs) for z in zs]
    d.eq(sum(Q) - sum(P), 0, "Σ(Q − P) = 1 − 1 = 0 for normalized P, Q")
    d.eq(ukl(P, Q), kl(P, Q), "UKL(P‖Q) = KL(P‖Q)", show_concrete=False)
    d.eq(sum(pp * k3(qq / pp) for pp, qq in zip(P, Q)), kl(P, Q), "E_P[k3(Q/P)] = KL(P‖Q)", show_concrete=False)


@identity("k3(y) ≥ 0 with equality only at y = 1; UKL is an identity of expectations, not of samples",
          "RPG arXiv 2505.17508 eq. 3.2; spec rpg §2.2 note [D]")
def k3_nonnegative(d: Derivation):
    y = sp.Symbol("y", positive=True)
    d.eq(k3(sp.Integer(1)), 0, "k3(1) = 0")
    d.eq(sp.diff(k3(y), y), (y - 1) / y, "k3′(y) = 1 − 1/y = (y − 1)/y: negative on (0,1), positive on (1,∞)")
    d.assume(sp.diff(k3(y), y, 2) > 0, "k3″(y) = 1/y² > 0 (strictly convex), so y = 1 is the unique minimum")
    d.text("Hence $k_3\\ge0$ sample by sample. The identity of App. D is one of *expectations*: a single sample's "
           "$k_3$ is not the per-point summand of UKL (counterexample at $a=(1,2,3)$, $b=(3,1,1)$):")
    per_point_k3 = A[0] * k3(B[0] / A[0])
    per_point_ukl = A[0] * sp.log(A[0] / B[0]) + (B[0] - A[0])
    d.eq(per_point_k3, per_point_ukl, "…but each summand a·k3(b/a) equals a log(a/b) + (b − a) (same split)")
    d.ne(k3(B[0] / A[0]), ukl(A, B), "one sample's k3 ≠ UKL", at={A[0]: 1, A[1]: 2, A[2]: 3, B[0]: 3, B[1]: 1,
                                                                   B[2]: 1})


@identity("rlkl.divergences.unnormalized_kl matches UKL on random positive measures",
          "api.md rlkl.divergences; RPG Def. 3.1/3.4")
def library_unnormalized_kl(d: Derivation):
    try:
        import torch

        from rlkl.divergences import unnormalized_kl
    except ImportError as exc:  # pragma: no cover
        from derivations._framework import SkipIdentity
        raise SkipIdentity(f"rlkl.divergences not importable: {exc}")
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(20):
        a = torch.rand(3, generator=gen, dtype=torch.float64) * 3 + 0.05
        b = torch.rand(3, generator=gen, dtype=torch.float64) * 3 + 0.05
        exact = ukl([sp.Float(float(v), 30) for v in a], [sp.Float(float(v), 30) for v in b])
        lib = float(unnormalized_kl(a.log(), b.log()))
        worst = max(worst, abs(lib - float(exact)))
        fwd_k3 = float(sum(float(ai) * k3(sp.Float(float(bi) / float(ai), 30)) for ai, bi in zip(a, b)))
        worst = max(worst, abs(fwd_k3 - float(exact)))
    d.eq_numeric(worst, 0.0, "max |library − exact| over 20 random measure pairs", atol=1e-12,
                 reason="float64 library code against the symbolic formula evaluated at 30 digits")
