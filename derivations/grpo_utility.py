"""GRPO's implicit utility in the large-group limit: the update is ∇p/√(p(1−p)) = ∇(2·arcsin√p).

Setting (FRPO arXiv 2601.10201, §3 and Prop. 3.1; Davis & Recht arXiv 2510.13651): one prompt, n responses (n
symbolic), binary verifier rewards r_a ∈ {0, 1}, a policy π_θ with *any* differentiable parametrization (∂ is the
derivative along one arbitrary parameter direction, dπ_a free with Σ_a dπ_a = 0), success probability
p(θ) = Σ_a π_a r_a. In the population (G → ∞) limit the group mean and standard deviation are p and
σ = √(p(1−p)) (written √p·√(1−p), equal for 0 ≤ p ≤ 1), so the GRPO advantage is A = (r − p)/σ and the expected
update is E[A ∇log π(y)].
"""

from __future__ import annotations

import sympy as sp

from ._framework import Categorical, Derivation, SkipIdentity, identity, vary

CAT = Categorical("n", "a")
PI = CAT.base("pi")
DPI = CAT.base("dpi", positive=False)
R = CAT.base("r", positive=False)          # binary rewards (declared binary in each identity)
VAR = {PI: DPI}
RELATIONS = {**CAT.normalized(PI), **CAT.tangent(DPI)}
P_SUCC = CAT.expect(PI, lambda a: R[a])    # p(θ) = E_π[r]
p = sp.Symbol("p", positive=True)          # the scalar success probability, 0 < p < 1
q = sp.Symbol("q", positive=True)          # q = 1 − p
G = sp.Symbol("G", positive=True, integer=True)


def sigma(prob):
    """Population std of a Bernoulli(prob) reward, √prob·√(1 − prob) (= √(prob(1 − prob)) on [0, 1])."""
    return sp.sqrt(prob) * sp.sqrt(1 - prob)


def utility(prob):
    """U(p) = 2·arcsin√p (FRPO arXiv 2601.10201, Prop. 3.1)."""
    return 2 * sp.asin(sp.sqrt(prob))


def _setup(d: Derivation):
    d.relations.update(RELATIONS)
    d.binary.add(R)


def dlog(a):
    return DPI[a] / PI[a]


@identity("Large-group GRPO update = ∇p/√(p(1−p)) = ∇(2·arcsin√p), any n responses, any parametrization",
          "FRPO arXiv 2601.10201 Prop. 3.1; Davis & Recht arXiv 2510.13651")
def arcsin_utility(d: Derivation):
    _setup(d)
    d.text("The expected update is $\\mathbb E_{y\\sim\\pi}[A\\,\\nabla\\log\\pi(y)]$ with "
           "$A=(r-p)/\\sqrt{p(1-p)}$. First the score-function facts: "
           "$\\mathbb E[\\nabla\\log\\pi]=\\nabla\\sum_y\\pi(y)=0$ and $\\mathbb E[r\\nabla\\log\\pi]=\\nabla p$.")
    d.eq(CAT.expect(PI, dlog), 0, "E[∇log π] = ∇Σπ = 0",
         tex_="\\mathbb E_{\\pi}[\\nabla\\log\\pi] = \\textstyle\\sum_y \\nabla\\pi(y) = \\nabla 1 = 0",
         show_concrete=False)
    d.eq(CAT.expect(PI, lambda a: (R[a] - P_SUCC) * dlog(a)), vary(P_SUCC, VAR), "E[(r − p)∇log π] = ∇p",
         tex_="\\mathbb E_{\\pi}[(r-p)\\nabla\\log\\pi] = \\mathbb E_\\pi[r\\nabla\\log\\pi] - p\\cdot 0 = \\nabla p",
         show_concrete=False)
    d.text("The normaliser $\\sqrt{p(1-p)}$ is the same for every sample (population statistics), so it leaves "
           "the expectation:")
    upd = CAT.expect(PI, lambda a: (R[a] - P_SUCC) / sigma(P_SUCC) * dlog(a))
    rhs = vary(P_SUCC, VAR) / sigma(P_SUCC)
    d.eq(upd, rhs, "E[A∇log π] = ∇p/√(p(1−p))",
         tex_="\\mathbb E_\\pi\\Big[\\tfrac{r-p}{\\sqrt{p(1-p)}}\\nabla\\log\\pi\\Big] = \\frac{\\nabla p}{\\sqrt{p(1-p)}}",
         show_concrete=False)
    d.text("The scalar factor is the derivative of $2\\arcsin\\sqrt p$:")
    d.eq(sp.diff(utility(p), p), 1 / sigma(p), "d/dp 2 arcsin√p = 1/√(p(1−p))",
         tex_="\\frac{d}{dp}\\,2\\arcsin\\sqrt p = \\frac{2}{\\sqrt{1-p}}\\cdot\\frac{1}{2\\sqrt p} = "
              "\\frac{1}{\\sqrt{p(1-p)}}")
    d.eq(rhs, vary(utility(P_SUCC), VAR), "chain rule: ∇p/√(p(1−p)) = ∇(2 arcsin √p(θ))",
         tex_="\\frac{\\nabla p}{\\sqrt{p(1-p)}} = \\nabla\\big(2\\arcsin\\sqrt{p(\\theta)}\\big)", show_concrete=False)
    d.text("So in the large-group limit GRPO performs gradient ascent on $U(p)=2\\arcsin\\sqrt p$, not on $p$: "
           "the weight $1/\\sqrt{p(1-p)}$ is 2 at $p=\\tfrac12$ and grows without bound at $p\\to 0,1$.")


@identity("The population GRPO advantage has mean 0 and unit variance (arcsin = variance-stabilising transform)",
          "FRPO arXiv 2601.10201 §3, Prop. 3.1")
def unit_variance(d: Derivation):
    _setup(d)
    d.eq(CAT.expect(PI, lambda a: (R[a] - P_SUCC) ** 2 / sigma(P_SUCC) ** 2), 1, "E[A²] = Var(r)/(p(1−p)) = 1",
         tex_="\\mathbb E[A^2] = \\frac{\\mathbb E[(r-p)^2]}{p(1-p)} = \\frac{p-2p^2+p^2}{p(1-p)} = 1  \\quad(r^2=r)",
         show_concrete=False)
    d.eq(CAT.expect(PI, lambda a: (R[a] - P_SUCC) / sigma(P_SUCC)), 0, "E[A] = 0", show_concrete=False)


@identity("Bessel's std is √(G/(G−1)) times the population std (from the two definitions, any G, any rewards); "
          "with it the large-group update is √((G−1)/G)·∇(2 arcsin √p) (→ 1 as G → ∞)",
          "FRPO arXiv 2601.10201 §3 and Alg. 1 (population std); DeepSeekMath arXiv 2402.03300 (GRPO)")
def bessel_factor(d: Derivation):
    i, k = sp.Symbol("i", integer=True), sp.Symbol("k", integer=True)
    rr = sp.IndexedBase("rho", real=True)                  # any rewards ρ_1..ρ_G of one group
    mean = sp.Sum(rr[k], (k, 1, G)) / G
    ss = sp.Sum((rr[i] - mean) ** 2, (i, 1, G))            # Σ_i (ρ_i − ρ̄)²
    pop = sp.sqrt(ss / G)                                  # population std (divide by G; FRPO Alg. 1)
    bes = sp.sqrt(ss / (G - 1))                            # Bessel std (divide by G − 1; verl, TRL)
    d.text("verl and TRL normalise by the Bessel-corrected group std "
           "$s=\\sqrt{\\tfrac{1}{G-1}\\sum_i (\\rho_i-\\bar\\rho)^2}$, FRPO's Algorithm 1 by the population std "
           "$\\hat\\sigma=\\sqrt{\\tfrac{1}{G}\\sum_i (\\rho_i-\\bar\\rho)^2}$. Both are non-negative, so their ratio "
           "is the square root of the ratio of their squares, in which the common sum cancels:")
    d.eq((bes / pop) ** 2, G / (G - 1), "(s/σ̂)² = G/(G−1) from the two definitions (symbolic G, any rewards)",
         tex_="\\frac{s^2}{\\hat\\sigma^2} = \\frac{\\frac1{G-1}\\sum_i(\\rho_i-\\bar\\rho)^2}"
              "{\\frac1G\\sum_i(\\rho_i-\\bar\\rho)^2} = \\frac{G}{G-1}", show_concrete=False)
    _setup(d)
    s_bessel = sp.sqrt(G) / sp.sqrt(G - 1) * sigma(P_SUCC)   # s = √(G/(G−1))·σ̂ with population σ̂ = √(p(1−p))
    upd_b = CAT.expect(PI, lambda a: (R[a] - P_SUCC) / s_bessel * dlog(a))
    factor = sp.sqrt(G - 1) / sp.sqrt(G)
    d.eq(upd_b, factor * vary(utility(P_SUCC), VAR), "E[A_B ∇log π] = √((G−1)/G)·∇(2 arcsin √p)",
         tex_="\\mathbb E[A_{\\rm B}\\nabla\\log\\pi] = \\sqrt{\\tfrac{G-1}{G}}\\;\\nabla\\big(2\\arcsin\\sqrt p\\big)",
         show_concrete=False)
    d.eq(sp.limit(factor, G, sp.oo), 1, "√((G−1)/G) → 1 as G → ∞",
         tex_="\\lim_{G\\to\\infty}\\sqrt{\\tfrac{G-1}{G}} = 1")
    d.text("The factor does not depend on $p$, so the implied utility keeps its shape: Bessel's correction only "
           "rescales the step size by $\\sqrt{(G-1)/G}$ ($0.894$ at $G=5$, $0.707$ at $G=2$). For finite groups "
           "with $\\varepsilon=0$ the same factor is exact, see `finite_groups.bessel_finite`.")


_GRID = (sp.Rational(1, 1000), sp.Rational(1, 10), sp.Rational(1, 3), sp.Rational(1, 2), sp.Rational(7, 8),
         sp.Rational(999, 1000))


@identity("rlkl.utility.grpo_utility and grpo_utility_grad equal U(p) = 2 arcsin √p and its derivative "
          "1/√(p(1−p)) (derived in arcsin_utility) at rational p", "FRPO arXiv 2601.10201 Prop. 3.1", numeric=True)
def library_grpo_utility(d: Derivation):
    try:
        from rlkl import utility as lib
    except ImportError as exc:  # pragma: no cover
        raise SkipIdentity(f"rlkl.utility not importable: {exc}")
    worst = 0.0
    du = sp.diff(utility(p), p)
    for pv in _GRID:
        for fn, exact in ((lib.grpo_utility, utility(p)), (lib.grpo_utility_grad, du)):
            ex = float(sp.N(exact.subs(p, pv), 40))
            worst = max(worst, abs(fn(float(pv)) - ex) / abs(ex))
    d.eq_numeric(worst, 0.0, f"max relative error over {len(_GRID)} values of p", atol=1e-13,
                 reason="float64 library code against the closed forms evaluated at 40 digits")
