"""k3 is the unnormalized KL, in both directions, for arbitrary positive measures (RPG App. D).

RPG (arXiv 2505.17508) eq. 3.2 defines k3(y) = y − 1 − log y, Def. 3.1 / 3.4 the unnormalized KL
UKL(P‖Q) = Σ P log(P/Q) + Σ (Q − P) (generalized KL + mass correction), and App. D / Remark 3.5 state
E_{π_old}[k3(π_θ/π_old)] = UKL(π_old‖π_θ) and E_{π_θ}[k3(π_old/π_θ)] = UKL(π_θ‖π_old) — where "E_P" is the sum
Σ_x P(x)·(·) even when P is not normalized. The proofs are over n outcomes, n symbolic, with arbitrary positive
masses a_x = π_old(x) and b_x = π_θ(x) (``IndexedBase`` entries, no normalization unless stated).
"""

from __future__ import annotations

import sympy as sp

from ._framework import Categorical, Derivation, SkipIdentity, identity

CAT = Categorical("n", "x")
A = CAT.base("a")   # π_old(x), any positive measure
B = CAT.base("b")   # π_θ(x), any positive measure


def k3(y):
    """k3(y) = y − 1 − log y (RPG arXiv 2505.17508, eq. 3.2; Schulman 2020)."""
    return y - 1 - sp.log(y)


def ukl(P, Q):
    """UKL(P‖Q) = Σ_x P log(P/Q) + Σ_x (Q − P) over the n outcomes (RPG Def. 3.1 / 3.4); P, Q IndexedBases."""
    return CAT.sum(lambda x: P[x] * sp.log(P[x] / Q[x])) + CAT.sum(lambda x: Q[x] - P[x])


def kl(P, Q):
    """Generalized KL Σ_x P log(P/Q) (the usual KL when both are normalized)."""
    return CAT.sum(lambda x: P[x] * sp.log(P[x] / Q[x]))


@identity("E_{π_old}[k3(π_θ/π_old)] = UKL(π_old‖π_θ) for arbitrary positive measures on n outcomes (forward)",
          "RPG arXiv 2505.17508 App. D (a), Def. 3.1, eq. 3.2")
def k3_forward(d: Derivation):
    lhs = CAT.sum(lambda x: A[x] * k3(B[x] / A[x]))
    step = CAT.sum(lambda x: B[x] - A[x]) - CAT.sum(lambda x: A[x] * sp.log(B[x] / A[x]))
    d.eq(lhs, step, "expand k3: Σ a(b/a − 1) − Σ a log(b/a)",
         tex_="\\sum_{x=1}^{n} \\pi_{\\rm old}\\,k_3\\!\\Big(\\frac{\\pi_\\theta}{\\pi_{\\rm old}}\\Big) = "
              "\\sum_x(\\pi_\\theta-\\pi_{\\rm old}) - \\sum_x\\pi_{\\rm old}\\log\\frac{\\pi_\\theta}{\\pi_{\\rm old}}",
         show_concrete=False)
    d.eq(step, ukl(A, B), "= Σ(π_θ − π_old) + Σ π_old log(π_old/π_θ) = UKL(π_old‖π_θ)",
         tex_="= \\sum_x\\pi_{\\rm old}\\log\\frac{\\pi_{\\rm old}}{\\pi_\\theta} + \\sum_x(\\pi_\\theta-\\pi_{\\rm old})"
              " = \\mathrm{UKL}(\\pi_{\\rm old}\\|\\pi_\\theta)", show_concrete=False)


@identity("E_{π_θ}[k3(π_old/π_θ)] = UKL(π_θ‖π_old) for arbitrary positive measures on n outcomes (reverse)",
          "RPG arXiv 2505.17508 App. D (b), Remark 3.5, Def. 3.4")
def k3_reverse(d: Derivation):
    lhs = CAT.sum(lambda x: B[x] * k3(A[x] / B[x]))
    step = CAT.sum(lambda x: A[x] - B[x]) + CAT.sum(lambda x: B[x] * sp.log(B[x] / A[x]))
    d.eq(lhs, step, "expand k3: Σ(π_old − π_θ) + Σ π_θ log(π_θ/π_old)",
         tex_="\\sum_x \\pi_\\theta\\,k_3\\!\\Big(\\frac{\\pi_{\\rm old}}{\\pi_\\theta}\\Big) = "
              "\\sum_x(\\pi_{\\rm old}-\\pi_\\theta) + \\sum_x\\pi_\\theta\\log\\frac{\\pi_\\theta}{\\pi_{\\rm old}}",
         show_concrete=False)
    d.eq(step, ukl(B, A), "= UKL(π_θ‖π_old)", tex_="= \\mathrm{UKL}(\\pi_\\theta\\|\\pi_{\\rm old})",
         show_concrete=False)


@identity("Normalized measures: the mass correction vanishes, UKL = KL and E[k3] = KL (k3 unbiased), any n",
          "RPG arXiv 2505.17508 App. D note, Prop. 3.3")
def normalized_reduces(d: Derivation):
    d.relations.update({**CAT.normalized(A), **CAT.normalized(B)})
    d.eq(CAT.sum(lambda x: B[x] - A[x]), 0, "Σ(Q − P) = 1 − 1 = 0 for normalized P, Q", show_concrete=False)
    d.eq(ukl(A, B), kl(A, B), "UKL(P‖Q) = KL(P‖Q)", show_concrete=False)
    d.eq(CAT.sum(lambda x: A[x] * k3(B[x] / A[x])), kl(A, B), "E_P[k3(Q/P)] = KL(P‖Q)", show_concrete=False)


@identity("k3(y) ≥ 0 with equality only at y = 1 (k3 is non-negative sample by sample)",
          "RPG arXiv 2505.17508 eq. 3.2")
def k3_nonnegative(d: Derivation):
    y = sp.Symbol("y", positive=True)
    d.eq(k3(sp.Integer(1)), 0, "k3(1) = 0")
    d.eq(sp.diff(k3(y), y), (y - 1) / y, "k3′(y) = 1 − 1/y = (y − 1)/y: negative on (0,1), positive on (1,∞)")
    d.assume(sp.diff(k3(y), y, 2) > 0, "k3″(y) = 1/y² > 0 (strictly convex), so y = 1 is the unique minimum")


@identity("UKL is an identity of expectations, not of samples: one sample's k3 ≠ UKL", "RPG arXiv 2505.17508 App. D",
          counterexample=True)
def k3_not_per_sample(d: Derivation):
    a = sp.symbols("a1:4", positive=True)
    b = sp.symbols("b1:4", positive=True)
    total = sum(ai * sp.log(ai / bi) + bi - ai for ai, bi in zip(a, b))
    d.ne(k3(b[0] / a[0]), total, "one sample's k3(b₁/a₁) ≠ UKL(a‖b) (n = 3)",
         at={a[0]: 1, a[1]: 2, a[2]: 3, b[0]: 3, b[1]: 1, b[2]: 1}, reason="a = (1, 2, 3), b = (3, 1, 1)")


# exactly representable (dyadic) log-masses: the closed form is evaluated exactly at these inputs
_LOG_P = ((0.5, -1.25, 2.0, 0.0), (-3.0, 0.75, 0.125, -0.5), (1e-3, -1e-3, 0.0, 2.0 ** -20))
_LOG_Q = ((0.25, 0.5, -1.0, 1.5), (-3.0, 0.0, 2.5, -4.0), (0.0, 0.0, 0.0, 0.0))


@identity("rlkl.divergences.unnormalized_kl equals the UKL closed form at exact (dyadic) log-masses",
          "RPG arXiv 2505.17508 Def. 3.1 / 3.4", numeric=True)
def library_unnormalized_kl(d: Derivation):
    try:
        import torch

        from rlkl.divergences import unnormalized_kl
    except ImportError as exc:  # pragma: no cover
        raise SkipIdentity(f"rlkl.divergences not importable: {exc}")
    worst = 0.0
    for lp, lq in zip(_LOG_P, _LOG_Q):
        got = float(unnormalized_kl(torch.tensor(lp, dtype=torch.float64), torch.tensor(lq, dtype=torch.float64)))
        P = [sp.exp(sp.Rational(v)) for v in lp]
        Q = [sp.exp(sp.Rational(v)) for v in lq]
        exact = sum(pp * (sp.Rational(a) - sp.Rational(b)) + qq - pp for pp, qq, a, b in zip(P, Q, lp, lq))
        worst = max(worst, abs(got - float(sp.N(exact, 40))) / max(1.0, abs(float(sp.N(exact, 40)))))
    d.eq_numeric(worst, 0.0, "max |library − exact| / max(1, |exact|) over 3 measure pairs (n = 4)", atol=1e-14,
                 reason="float64 library code at exactly representable inputs against the closed form evaluated "
                        "exactly (40 digits); the bound allows a few ulps of rounding")
