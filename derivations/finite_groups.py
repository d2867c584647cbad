"""Finite groups: GRPO's exact expected update for group size G is w_G(p)·∇p, a binomial sum over the successes.

Setting (FRPO arXiv 2601.10201 §3, Prop. 3.1 and Remark C.1, which says finite groups only approximate the
arcsin utility; Davis & Recht arXiv 2510.13651): a group y_1..y_G ∼ π i.i.d., binary rewards r_i, S = Σ r_i
successes, r̄ = S/G, population variance σ̂_S² = S(G−S)/G², a normaliser ν_S = s_S + ε > 0 (population std σ̂_S,
Bessel √(G/(G−1))·σ̂_S, or anything else that depends on the group through S only), advantage A_i = (r_i − r̄)/ν_S,
with A_i := 0 on all-equal groups (S ∈ {0, G}, where the numerator is 0 anyway). The GRPO estimator of one group is
ĝ = (1/G) Σ_i A_i ∇log π(y_i).

Claim: E[ĝ] = w_G(p)·∇p with w_G(p) = (1/(p(1−p))) Σ_{S=1}^{G−1} C(G,S) p^S (1−p)^{G−S} σ̂_S²/ν_S, so GRPO with G
samples ascends U_G(p) = ∫_0^p w_G. The general proofs keep G symbolic (sums over S with symbolic limits) and ν an
undefined function of S; closed forms for G = 2..5 and a brute-force enumeration of every G-tuple (G = 2, 3) are
labelled instances.
"""

from __future__ import annotations

import itertools
import math

import mpmath
import sympy as sp

from ._framework import Categorical, Derivation, SkipIdentity, grad, identity, vary, vsum

G = sp.Symbol("G", integer=True, positive=True)
S = sp.Symbol("S", integer=True)
K = sp.Symbol("k", integer=True)
I = sp.Symbol("i", integer=True)
p = sp.Symbol("p", positive=True)              # success probability, 0 < p < 1
eps = sp.Symbol("epsilon", nonnegative=True)   # ε ≥ 0 in the denominator
NU = sp.Function("nu")                         # ν_S = s_S + ε: any positive normaliser of the group's S
RG = sp.IndexedBase("r")                       # the group's binary rewards r_1..r_G


def sigma2(s, g=G):
    """σ̂_S² = S(G−S)/G², the population variance of a binary group with S successes."""
    return s * (g - s) / g ** 2


def pmf(s, g=G, prob=p):
    """P(Bin(g, prob) = s) = C(g, s) prob^s (1 − prob)^(g − s)."""
    return sp.binomial(g, s) * prob ** s * (1 - prob) ** (g - s)


def weight_term(s, g=G, nu=NU, prob=p):
    """The S-th term of w_G: C(G,S) p^(S−1) (1−p)^(G−S−1) σ̂_S²/ν_S."""
    return sp.binomial(g, s) * prob ** (s - 1) * (1 - prob) ** (g - s - 1) * sigma2(s, g) / nu(s)


def binomial_weight(g=G, nu=NU, prob=p):
    """w_G(p) = Σ_{S=1}^{G−1} C(G,S) p^(S−1) (1−p)^(G−S−1) σ̂_S²/ν_S (FRPO arXiv 2601.10201 §3; derived in
    ``binomial_form``). ``nu`` is a function of S (and ``g``); for a concrete ``g`` the sum is expanded."""
    if isinstance(g, (int, sp.Integer)):
        return sp.Add(*[weight_term(sp.Integer(s), g, nu, prob) for s in range(1, int(g))])
    return sp.Sum(weight_term(S, g, nu, prob), (S, 1, g - 1))


def pop_std(s, g=G):
    """Population std of a binary group, σ̂_S = √(S(G−S))/G."""
    return sp.sqrt(s * (g - s)) / g


def bessel_std(s, g=G):
    """Bessel's std √(G/(G−1))·σ̂_S (verl, TRL), written √G/√(G−1)·σ̂_S (G ≥ 2)."""
    return sp.sqrt(g) / sp.sqrt(g - 1) * pop_std(s, g)


def normaliser(std: str, g=G, epsilon=eps):
    """ν_S = s_S + ε for ``std`` in {"population", "bessel"}, as a function of S."""
    if std == "population":
        return lambda s: pop_std(s, g) + epsilon
    if std == "bessel":
        return lambda s: bessel_std(s, g) + epsilon
    raise ValueError(f"std must be 'population' or 'bessel', got {std!r}")


# ---------------------------------------------------------------------------------------------------------------
# general proofs


@identity("Conditional score means: E[∇log π | r=1] = ∇p/p, E[∇log π | r=0] = −∇p/(1−p) (any n responses, "
          "any binary rewards, any parametrization)", "FRPO arXiv 2601.10201 App. C (proof of Prop. 3.1)")
def conditional_scores(d: Derivation):
    cat = Categorical("n", "a")
    pi, dpi, r = cat.base("pi"), cat.base("dpi", positive=False), cat.base("r", positive=False)
    d.relations.update({**cat.normalized(pi), **cat.tangent(dpi)})
    d.binary.add(r)
    prob = cat.expect(pi, lambda a: r[a])
    dp = vary(prob, {pi: dpi})
    succ = cat.expect(pi, lambda a: r[a] * dpi[a] / pi[a]) / prob
    fail = cat.expect(pi, lambda a: (1 - r[a]) * dpi[a] / pi[a]) / (1 - prob)
    d.eq(succ, dp / prob, "E[∇log π | r=1] = Σ_y r(y)∇π(y)/p = ∇p/p",
         tex_="\\mathbb E[\\nabla\\log\\pi\\mid r=1] = \\frac{\\sum_{y}r(y)\\nabla\\pi(y)}{p} = \\frac{\\nabla p}{p}",
         show_concrete=False)
    d.eq(fail, -dp / (1 - prob), "E[∇log π | r=0] = ∇(1−p)/(1−p) = −∇p/(1−p)",
         tex_="\\mathbb E[\\nabla\\log\\pi\\mid r=0] = \\frac{\\nabla(1-p)}{1-p} = -\\frac{\\nabla p}{1-p}",
         show_concrete=False)


def _group_advantage(i, nu):
    s_count = sp.Sum(RG[K], (K, 1, G))
    return (RG[i] - s_count / G) / nu(s_count)


@identity("Group sums (any G, binary rewards, any normaliser ν_S): Σ_i A_i = 0, Σ_i (r_i − r̄)² = G·σ̂_S², "
          "Σ_i A_i r_i = G·σ̂_S²/ν_S", "DeepSeekMath arXiv 2402.03300 (GRPO advantage); FRPO arXiv 2601.10201 §3")
def group_sums(d: Derivation):
    d.binary.add(RG)
    s_count = sp.Sum(RG[K], (K, 1, G))
    mean = s_count / G
    d.eq(sp.Sum(_group_advantage(I, NU), (I, 1, G)), 0, "Σ_i A_i = (S − G·S/G)/ν_S = 0",
         tex_="\\textstyle\\sum_i A_i = \\frac{\\sum_i r_i - G\\bar r}{\\nu_S} = 0", show_concrete=False)
    d.eq(sp.Sum((RG[I] - mean) ** 2, (I, 1, G)), G * sigma2(s_count), "Σ_i (r_i − r̄)² = S − S²/G = G σ̂_S² (r² = r)",
         tex_="\\textstyle\\sum_i (r_i-\\bar r)^2 = S - \\frac{S^2}{G} = G\\,\\hat\\sigma_S^2", show_concrete=False)
    d.eq(sp.Sum(_group_advantage(I, NU) * RG[I], (I, 1, G)), G * sigma2(s_count) / NU(s_count),
         "Σ_i A_i r_i = Σ_i (r_i − r̄)²/ν_S = G σ̂_S²/ν_S",
         tex_="\\textstyle\\sum_i A_i r_i = \\sum_i A_i (r_i-\\bar r) = \\frac{G\\hat\\sigma_S^2}{\\nu_S}",
         show_concrete=False)


@identity("Binomial theorem by induction on G: Σ_{S=0}^{G} C(G,S) x^S y^(G−S) = (x+y)^G, so Bin(G, p) sums to 1",
          "Pascal's rule C(G+1,S) = C(G,S) + C(G,S−1) (classical)")
def binomial_theorem(d: Derivation):
    x, y = sp.symbols("x y", positive=True)

    def B(g):
        return sp.Sum(sp.binomial(g, S) * x ** S * y ** (g - S), (S, 0, g))

    d.eq(B(0).doit(), 1, "base: B_0 = 1 = (x+y)^0")
    d.eq(sp.binomial(G, S) + sp.binomial(G, S - 1), sp.binomial(G + 1, S), "Pascal: C(G,S) + C(G,S−1) = C(G+1,S)")
    first = sp.Sum(sp.binomial(G, S) * x ** S * y ** (G + 1 - S), (S, 0, G + 1))
    second = sp.Sum(sp.binomial(G, S - 1) * x ** S * y ** (G + 1 - S), (S, 0, G + 1))
    d.eq(B(G + 1), first + second, "split B_{G+1} by Pascal's rule", show_concrete=False)
    d.eq(first, y * B(G), "first part = y·B_G (its S = G+1 term has C(G, G+1) = 0)", show_concrete=False)
    shifted = second.change_index(S, S - 1, K)
    d.eq(second, shifted, "second part, index S′ = S − 1 (sympy's change_index)", show_concrete=False)
    d.eq(shifted, x * B(G), "= x·B_G (its S′ = −1 term has C(G, −1) = 0)", show_concrete=False)
    d.text("So $B_{G+1}=(x+y)B_G$ and $B_0=1$: by induction $B_G=\\sum_{S=0}^G\\binom GS x^Sy^{G-S}=(x+y)^G$ for every "
           "$G\\ge0$; with $x=p$, $y=1-p$ the Bin($G,p$) probabilities sum to 1.")


def _pmf_sums_to_one(g):
    """The relation Σ_{S=0}^{g} P(Bin(g, p) = S) = 1 (``binomial_theorem`` with x = p, y = 1 − p)."""
    return {sp.Sum(pmf(S, g), (S, 0, g)): sp.Integer(1)}


@identity("Exact expected GRPO update for any group size G and any normaliser ν_S: E[ĝ] = w_G(p)∇p with "
          "w_G(p) = Σ_{S=1}^{G−1} C(G,S) p^(S−1)(1−p)^(G−S−1) σ̂_S²/ν_S", "FRPO arXiv 2601.10201 §3, Remark C.1")
def binomial_form(d: Derivation):
    d.binary.add(RG)
    r, dp = sp.Symbol("r", real=True), sp.Symbol("nabla_p")
    c = lambda rv: rv / p - (1 - rv) / (1 - p)  # noqa: E731  E[∇log π | r] / ∇p  (conditional_scores)
    d.text("Given the rewards the responses are independent with $y_i\\sim\\pi(\\cdot\\mid r_i)$, so "
           "$\\mathbb E[\\hat g\\mid r]=\\frac1G\\sum_iA_i\\,\\mathbb E[\\nabla\\log\\pi(y_i)\\mid r_i]="
           "\\frac1G\\sum_iA_i\\,c(r_i)\\,\\nabla p$ with $c(1)=1/p$, $c(0)=-1/(1-p)$ (`conditional_scores`):")
    d.eq(c(r), (r - p) / (p * (1 - p)), "c(r) = r/p − (1−r)/(1−p) = (r − p)/(p(1−p))")
    s_count = sp.Sum(RG[K], (K, 1, G))
    given_r = sp.Sum(_group_advantage(I, NU) * (RG[I] - p) / (p * (1 - p)), (I, 1, G)) / G * dp
    d.eq(given_r, sp.Sum(_group_advantage(I, NU) * RG[I], (I, 1, G)) / (G * p * (1 - p)) * dp,
         "E[ĝ | r] = ∇p/(G p(1−p)) · Σ_i A_i r_i  (the −p part is −p Σ_i A_i = 0)",
         tex_="\\mathbb E[\\hat g\\mid r] = \\frac{\\nabla p}{G\\,p(1-p)}\\sum_i A_i(r_i-p) = "
              "\\frac{\\nabla p}{G\\,p(1-p)}\\sum_i A_i r_i", show_concrete=False)
    d.eq(given_r, sigma2(s_count) / (p * (1 - p) * NU(s_count)) * dp, "= ∇p σ̂_S²/(p(1−p) ν_S): a function of S only",
         show_concrete=False)
    d.text("$S$ is a sum of $G$ independent Bernoulli($p$) rewards, $S\\sim\\mathrm{Bin}(G,p)$; all-equal groups "
           "($S\\in\\{0,G\\}$, advantage 0 by convention) contribute nothing since $\\hat\\sigma_0^2=\\hat\\sigma_G^2=0$:")
    d.eq(sigma2(0), 0, "σ̂_0² = 0")
    d.eq(sigma2(G), 0, "σ̂_G² = 0")
    h = lambda s: pmf(s) * sigma2(s) / (p * (1 - p) * NU(s))  # noqa: E731
    d.eq(sp.Sum(h(S), (S, 0, G)), sp.Sum(h(S), (S, 1, G - 1)), "E_S[·] = Σ_{S=1}^{G−1} (boundary terms are 0)",
         show_concrete=False)
    d.eq(sp.Sum(h(S), (S, 1, G - 1)) * dp, binomial_weight() * dp, "= w_G(p) ∇p",
         tex_="\\mathbb E[\\hat g] = \\frac{\\nabla p}{p(1-p)}\\sum_{S=1}^{G-1}\\binom GS p^S(1-p)^{G-S}"
              "\\frac{\\hat\\sigma_S^2}{\\nu_S} = w_G(p)\\,\\nabla p", show_concrete=False)


@identity("Conditional-mean form (how rlkl.utility computes w_G): w_G = E[A_1|r_1=1] − E[A_1|r_1=0] with the other "
          "G−1 successes K ∼ Bin(G−1,p), any G, any ν; mean-only advantages (Dr. GRPO) give w_G = (G−1)/G",
          "FRPO arXiv 2601.10201 §3; Liu et al. arXiv 2503.20783 (Dr. GRPO)")
def conditional_mean_form(d: Derivation):
    d.text("Given $r_1$, sample 1's advantage depends on the others only through their success count $K$ "
           "(exchangeability): $A_1(1,k)=(1-\\frac{k+1}{G})/\\nu_{k+1}$ for $k\\le G-2$ (0 for $k=G-1$, all "
           "successes) and $A_1(0,k)=-\\frac kG/\\nu_k$ for $k\\ge1$ (0 for $k=0$):")
    e1 = sp.Sum(pmf(K, G - 1) * (1 - (K + 1) / G) / NU(K + 1), (K, 0, G - 2))
    e0 = sp.Sum(pmf(K, G - 1) * (-K / G) / NU(K), (K, 1, G - 1))
    e1s = e1.change_index(K, K + 1, S)
    d.eq(e1, e1s, "E[A_1|r_1=1] with the index S = k + 1 (sympy's change_index)", show_concrete=False)
    d.eq(e1s - e0.xreplace({K: S}), binomial_weight(),
         "E[A_1|r_1=1] − E[A_1|r_1=0] = w_G: per S, C(G−1,S−1)(G−S)/G·(1−p) + C(G−1,S)S/G·p = C(G,S)S(G−S)/G²",
         tex_="w_G(p) = \\sum_{k=0}^{G-1}\\binom{G-1}{k}p^k(1-p)^{G-1-k}\\big[A_1(1,k)-A_1(0,k)\\big]",
         show_concrete=False)
    d.text("Mean-only advantages $A_i=r_i-\\bar r$ (no normaliser, no zeroing): the bracket is $1-1/G$ for every $k$, "
           "and the Bin($G-1,p$) weights sum to 1 (`binomial_theorem`):")
    d.relations.update(_pmf_sums_to_one(G - 1))
    drg = sp.Sum(pmf(K, G - 1) * ((1 - (K + 1) / G) - (-K / G)), (K, 0, G - 1))
    d.eq(drg, (G - 1) / G, "Dr. GRPO: w_G = (G−1)/G, a linear utility", show_concrete=False)


@identity("w_G(0⁺) = √(G−1) (population std, ε = 0), any G: only the S = 1 term survives at p → 0",
          "FRPO arXiv 2601.10201 Remark C.1")
def weight_at_zero(d: Derivation):
    nu = normaliser("population", epsilon=0)
    term = lambda s: sp.binomial(G, s) * p ** (s - 1) * (1 - p) ** (G - s - 1) * sigma2(s) / nu(s)  # noqa: E731
    w = binomial_weight(nu=nu)
    d.eq(w, term(1) + sp.Sum(term(S), (S, 2, G - 1)), "split off the S = 1 term", show_concrete=False)
    rest = sp.Sum(sp.binomial(G, S) * p ** (S - 2) * (1 - p) ** (G - S - 1) * sigma2(S) / nu(S), (S, 2, G - 1))
    d.eq(sp.Sum(term(S), (S, 2, G - 1)), p * rest, "the rest is p times a finite sum (p^(S−1) = p·p^(S−2), S ≥ 2)",
         show_concrete=False)
    d.eq(term(1).subs(p, 0), sp.sqrt(G - 1), "at p = 0: C(G,1)·σ̂_1²/σ̂_1 = G·√(G−1)/G = √(G−1)",
         tex_="w_G(0^+) = \\binom G1\\frac{\\hat\\sigma_1^2}{\\hat\\sigma_1} = \\sqrt{G-1}\\quad(\\text{finite, unlike }"
              "1/\\sqrt{p(1-p)})")


@identity("Bessel std, ε = 0: w_G^Bessel = √((G−1)/G)·w_G^population for any G (term by term)",
          "FRPO arXiv 2601.10201 §3; DeepSeekMath arXiv 2402.03300")
def bessel_finite(d: Derivation):
    d.text("With $s_S=\\sqrt{G/(G-1)}\\,\\hat\\sigma_S$ every term $\\hat\\sigma_S^2/s_S$ of the binomial sum is "
           "$\\sqrt{(G-1)/G}\\,\\hat\\sigma_S$; with $\\varepsilon>0$ the factor is not exact (see "
           "`bessel_eps_counterexample`).")
    d.eq(binomial_weight(nu=normaliser("bessel", epsilon=0)),
         sp.sqrt(G - 1) / sp.sqrt(G) * binomial_weight(nu=normaliser("population", epsilon=0)),
         "w_G^Bessel = √((G−1)/G)·w_G^pop", tex_="w^{\\rm Bessel}_G(p)=\\sqrt{\\tfrac{G-1}{G}}\\;w^{\\rm pop}_G(p)",
         show_concrete=False)


@identity("With ε > 0 the Bessel factor √((G−1)/G) is not exact (G = 3, ε = 1/10, p = 1/3)",
          "FRPO arXiv 2601.10201 §3", counterexample=True)
def bessel_eps_counterexample(d: Derivation):
    d.ne(binomial_weight(3, normaliser("bessel", 3)), sp.sqrt(sp.Rational(2, 3)) * binomial_weight(3, normaliser(
        "population", 3)), "w_3^Bessel ≠ √(2/3)·w_3^pop at ε = 1/10", at={eps: sp.Rational(1, 10), p: sp.Rational(1, 3)})


def _raw_moment(n: int):
    """E[S^n] = Σ_k S(n,k) G^(k) p^k from the factorial moments (``factorial_moments``)."""
    return sum(sp.functions.combinatorial.numbers.stirling(n, k) * sp.ff(G, k) * p ** k for k in range(n + 1))


@identity("Factorial moments of S ∼ Bin(G,p): E[S(S−1)⋯(S−k+1)] = G(G−1)⋯(G−k+1)·p^k for k = 1..4 and any G; "
          "raw moments by Stirling numbers", "absorption identity C(G,S)·S^(k) = G^(k)·C(G−k,S−k) (classical)")
def factorial_moments(d: Derivation):
    for k in range(1, 5):
        d.relations.update(_pmf_sums_to_one(G - k))
        lhs = sp.Sum(pmf(S) * sp.ff(S, k), (S, 0, G))
        from_k = sp.Sum(pmf(S) * sp.ff(S, k), (S, k, G))
        d.eq(lhs, from_k, f"k={k}: the terms S < k vanish (S^({k}) = 0 there)", show_concrete=False)
        inner = sp.Sum(sp.binomial(G - k, S - k) * p ** S * (1 - p) ** (G - S), (S, k, G))
        d.eq(from_k, sp.ff(G, k) * inner, f"k={k}: C(G,S)·S^({k}) = G^({k})·C(G−{k},S−{k})", show_concrete=False,
             tex_="\\binom GS S^{\\underline k} = G^{\\underline k}\\binom{G-k}{S-k}" if k == 1 else "")
        shifted = inner.change_index(S, S - k, K)
        d.eq(inner, shifted, f"k={k}: index S′ = S − {k} (sympy's change_index)", show_concrete=False)
        inner = shifted
        d.eq(sp.ff(G, k) * inner, sp.ff(G, k) * p ** k, f"k={k}: = G^({k}) p^{k} Σ P(Bin(G−{k},p) = S′) = G^({k}) p^{k}",
             tex_="\\mathbb E\\big[S^{\\underline k}\\big] = G^{\\underline k}p^k" if k == 1 else "",
             show_concrete=False)
    for n in range(1, 5):
        d.eq(S ** n, sum(sp.functions.combinatorial.numbers.stirling(n, k) * sp.ff(S, k) for k in range(n + 1)),
             f"S^{n} = Σ_k S({n},k)·S^(k) (Stirling numbers of the second kind)", show_concrete=False)


@identity("G → ∞: w_G(p) → 1/√(p(1−p)) for every 0 < p < 1 (squeeze: Jensen from above, a quartic bound from "
          "below, both from E[X] and E[X²] with symbolic G)", "FRPO arXiv 2601.10201 Prop. 3.1, Remark C.1")
def large_group_limit(d: Derivation):
    m = p * (1 - p)
    d.text("Write $m=p(1-p)$ and $X_S=\\bar r(1-\\bar r)=\\hat\\sigma_S^2$; with the population std and "
           "$\\varepsilon=0$, $m\\,w_G(p)=\\mathbb E[\\sqrt{X_S}]$, $S\\sim\\mathrm{Bin}(G,p)$:")
    d.relations.update(_pmf_sums_to_one(G))
    root = sp.Sum(pmf(S) * pop_std(S), (S, 0, G))
    d.eq(m * binomial_weight(nu=normaliser("population", epsilon=0)), root,
         "p(1−p)·w_G = Σ_S P(S) σ̂_S²/σ̂_S = E[√X] (the S = 0, G terms are √0 = 0)", show_concrete=False)
    d.text("The moments $\\mathbb E[S^j]$, $j\\le4$, are those of `factorial_moments` (used as relations):")
    d.relations.update({sp.Sum(pmf(S) * S ** j, (S, 0, G)): _raw_moment(j) for j in range(1, 5)})
    EX = sp.expand(_raw_moment(1) / G - _raw_moment(2) / G ** 2)
    EX2 = sp.expand(_raw_moment(2) / G ** 2 - 2 * _raw_moment(3) / G ** 3 + _raw_moment(4) / G ** 4)
    ex_sum = sp.Sum(pmf(S) * sigma2(S), (S, 0, G))
    ex2_sum = sp.Sum(pmf(S) * sigma2(S) ** 2, (S, 0, G))
    d.eq(ex_sum, EX, "E[X] = E[S]/G − E[S²]/G²", show_concrete=False)
    d.eq(EX, (G - 1) / G * m, "E[X] = (G−1)/G · p(1−p)", tex_="\\mathbb E[X] = \\tfrac{G-1}{G}\\,p(1-p)")
    d.eq(ex2_sum, EX2, "E[X²] = E[S²]/G² − 2E[S³]/G³ + E[S⁴]/G⁴", show_concrete=False)
    x, c, t, rx = sp.symbols("x c t r_x", positive=True)   # r_x = √x
    d.text("Upper bound (Jensen, proven): for $x\\ge0$, $c>0$ the tangent of $\\sqrt\\cdot$ at $c$ lies above it, "
           "$\\sqrt c+\\frac{x-c}{2\\sqrt c}-\\sqrt x=\\frac{(\\sqrt x-\\sqrt c)^2}{2\\sqrt c}\\ge0$; averaging over "
           "$S$ with $c=\\mathbb E X$ gives $\\mathbb E\\sqrt X\\le\\sqrt{\\mathbb E X}$:")
    tangent_gap = sp.sqrt(c) + (x - c) / (2 * sp.sqrt(c)) - sp.sqrt(x)
    d.eq(tangent_gap, (sp.sqrt(x) - sp.sqrt(c)) ** 2 / (2 * sp.sqrt(c)), "tangent gap = (√x − √c)²/(2√c)")
    d.assume((sp.sqrt(x) - sp.sqrt(c)) ** 2 / (2 * sp.sqrt(c)) >= 0, "(√x − √c)²/(2√c) ≥ 0")
    avg_gap = sp.Sum(pmf(S) * tangent_gap.subs(x, rx ** 2).subs(rx, pop_std(S)), (S, 0, G))
    d.eq(avg_gap, sp.sqrt(c) + (ex_sum - c) / (2 * sp.sqrt(c)) - root, "E[gap] = √c + (E X − c)/(2√c) − E√X "
         "(linearity; Σ_S P(S) = 1)", show_concrete=False)
    upper = sp.sqrt(EX)
    d.eq((sp.sqrt(c) + (x - c) / (2 * sp.sqrt(c))).subs({x: EX}).subs({c: EX}), upper,
         "with c = E X: E√X ≤ √c + (E X − c)/(2√c) = √(E X)", tex_="\\mathbb E\\sqrt X\\le\\sqrt{\\mathbb E X}="
         "\\sqrt{\\tfrac{G-1}{G}}\\,\\sqrt m")
    d.text("Lower bound: for $x\\ge0$, $\\sqrt x\\ge x(3m-x)/(2m^{3/2})$ because, with $t=\\sqrt{x/m}\\ge0$, the "
           "difference is $\\tfrac{\\sqrt m}{2}\\,t\\,(t-1)^2(t+2)\\ge0$; averaging gives "
           "$\\mathbb E\\sqrt X\\ge(3m\\,\\mathbb E X-\\mathbb E X^2)/(2m^{3/2})$:")
    gap = sp.sqrt(x) - x * (3 * m - x) / (2 * m ** sp.Rational(3, 2))
    d.eq(gap.subs(x, m * t ** 2), sp.sqrt(m) / 2 * t * (t - 1) ** 2 * (t + 2),
         "√x − x(3m−x)/(2m^{3/2}) = (√m/2)·t(t−1)²(t+2), t = √(x/m)",
         tex_="\\sqrt x-\\frac{x(3m-x)}{2m^{3/2}} = \\frac{\\sqrt m}{2}\\,t\\,(t-1)^2(t+2)\\ \\ge 0")
    mm = sp.Symbol("m", positive=True)
    d.assume(sp.sqrt(mm) / 2 * t * (t - 1) ** 2 * (t + 2) >= 0, "(√m/2)·t(t−1)²(t+2) ≥ 0 for m > 0, t ≥ 0")
    d.eq(sp.Sum(pmf(S) * gap.subs(x, rx ** 2).subs(rx, pop_std(S)), (S, 0, G)),
         root - (3 * m * ex_sum - ex2_sum) / (2 * m ** sp.Rational(3, 2)), "E[gap] = E√X − (3m E X − E X²)/(2m^{3/2})",
         show_concrete=False)
    lower = (3 * m * EX - EX2) / (2 * m ** sp.Rational(3, 2))
    d.eq(sp.limit(lower, G, sp.oo), sp.sqrt(m), "lower bound (3m E X − E X²)/(2m^{3/2}) → √m as G → ∞",
         tex_="\\frac{3m\\,\\mathbb E X-\\mathbb E X^2}{2m^{3/2}}\\ \\xrightarrow{G\\to\\infty}\\ "
              "\\frac{3m^2-m^2}{2m^{3/2}}=\\sqrt m", show_concrete=False)
    d.eq(sp.limit(upper, G, sp.oo), sp.sqrt(m), "upper bound √(E X) = √((G−1)/G · p(1−p)) → √m")
    d.text("Both bounds tend to $\\sqrt m$, so $w_G(p)=\\mathbb E[\\sqrt X]/m\\to 1/\\sqrt{p(1-p)}$ for every "
           "fixed $0<p<1$: the finite-group utility $U_G$ tends to $2\\arcsin\\sqrt p$, and the finite-$G$ weight is "
           "always below the limit by at least the factor $\\sqrt{(G-1)/G}$.")


# ---------------------------------------------------------------------------------------------------------------
# instances


X = sp.symbols("x1:4", positive=True)
PI3 = [x / sum(X) for x in X]
R3 = (1, 1, 0)
P3 = sum(pa * ra for pa, ra in zip(PI3, R3))
dp_sym = sp.Symbol("nabla_p")


def _g3(expr):
    return grad(expr, X, log_params=True)


def advantages(rewards, std: str, epsilon=eps):
    """A_i = (r_i − r̄)/(s_S + ε) for one concrete group, 0 for all-equal groups (FRPO Alg. 1)."""
    g = len(rewards)
    s_count = sum(rewards)
    if s_count in (0, g):
        return [sp.Integer(0)] * g
    mean = sp.Rational(s_count, g)
    return [(r - mean) / normaliser(std, g, epsilon)(s_count) for r in rewards]


def brute_force_update(g: int, std: str):
    """E[ĝ] by enumerating all 3^g response tuples of a three-response softmax bandit with r = (1, 1, 0)."""
    total = sp.zeros(3, 1)
    for tup in itertools.product(range(3), repeat=g):
        A = advantages([R3[a] for a in tup], std)
        if all(a == 0 for a in A):
            continue
        total += sp.Mul(*[PI3[a] for a in tup]) * vsum(A[i] * _g3(sp.log(PI3[a])) for i, a in enumerate(tup)) / g
    return total


def _finite_group_chain(d: Derivation, g: int, std: str):
    d.text(f"**G = {g}, {std} std, symbolic ε ≥ 0.** Enumerate all $3^{g}$ response tuples (softmax over three "
           "responses with symbolic logits, r = (1, 1, 0)):")
    w = binomial_weight(g, normaliser(std, g), P3)
    d.eq(brute_force_update(g, std), w * _g3(P3), f"G={g}: E[ĝ] over 3^G tuples = w_G(p)∇p", show_concrete=False)


@identity("Brute force: E[ĝ] over all 3^G response tuples equals w_G(p)∇p (population and Bessel std, any ε)",
          "FRPO arXiv 2601.10201 §3", instance="G = 2, 3; 3 responses, r = (1, 1, 0)")
def finite_group_update(d: Derivation):
    for g in (2, 3):
        for std in ("population", "bessel"):
            _finite_group_chain(d, g, std)


@identity("Brute force, G = 4: E[ĝ] over all 81 tuples equals w_4(p)∇p (population std, any ε)",
          "FRPO arXiv 2601.10201 §3", slow=True, instance="G = 4; 3 responses, r = (1, 1, 0)")
def finite_group_update_g4(d: Derivation):
    _finite_group_chain(d, 4, "population")


@identity("Closed forms (population std, ε=0): w_2=1, w_3=√2, w_4=√3+(3−2√3)p(1−p), w_5=2+(2√6−6)p(1−p); "
          "U_G = ∫_0^p w_G; tail form U_G = (1/G)Σ_S P(Bin(G−1,p) ≥ S)/ν_S",
          "FRPO arXiv 2601.10201 §3, Remark C.1", instance="G = 2..5 (closed forms), G = 2..8 (tail form)")
def closed_forms(d: Derivation):
    q = p * (1 - p)
    pop = lambda g: normaliser("population", g, 0)  # noqa: E731
    d.eq(binomial_weight(2, pop(2)), 1, "w_2(p) = 1  ⇒  U_2(p) = p")
    d.eq(binomial_weight(3, pop(3)), sp.sqrt(2), "w_3(p) = √2  ⇒  U_3(p) = √2·p (exactly linear)")
    d.eq(binomial_weight(4, pop(4)), sp.sqrt(3) + (3 - 2 * sp.sqrt(3)) * q, "w_4(p) = √3 + (3 − 2√3)p(1−p)",
         tex_="w_4(p)=\\tfrac14\\big[4\\sqrt3(1-p)^2+6\\cdot2\\,p(1-p)+4\\sqrt3p^2\\big]=\\sqrt3+(3-2\\sqrt3)\\,p(1-p)")
    d.eq(binomial_weight(5, pop(5)), 2 + (2 * sp.sqrt(6) - 6) * q, "w_5(p) = 2 + (2√6 − 6)p(1−p)",
         tex_="w_5(p)=2\\big[(1-p)^3+p^3\\big]+2\\sqrt6\\,p(1-p)=2+(2\\sqrt6-6)\\,p(1-p)")
    t = sp.Symbol("t", positive=True)
    for g, closed in ((2, p), (3, sp.sqrt(2) * p), (5, 2 * p + (2 * sp.sqrt(6) - 6) * (p ** 2 / 2 - p ** 3 / 3))):
        d.eq(sp.integrate(binomial_weight(g, pop(g), t), (t, 0, p)), closed, f"U_{g}(p) = ∫_0^p w_{g} = {closed}")
    d.text("The tail form of $U_G$ holds term by term for *any* normaliser: with $T_S(p)=P(\\mathrm{Bin}(G-1,p)\\ge S)$, "
           "$T_S(0)=0$ and $T_S'(p)=\\binom GS\\frac{S(G-S)}{G}p^{S-1}(1-p)^{G-S-1}$, so "
           "$\\frac1G\\sum_S T_S/\\nu_S$ has derivative $w_G$ and vanishes at 0:")
    for g in range(2, 9):
        for s in range(1, g):
            tail = sum(sp.binomial(g - 1, k) * p ** k * (1 - p) ** (g - 1 - k) for k in range(s, g))
            d.eq(sp.diff(tail, p), sp.binomial(g, s) * sp.Rational(s * (g - s), g) * p ** (s - 1) * (1 - p) ** (g - s - 1),
                 f"G={g}, S={s}: d/dp P(Bin(G−1,p) ≥ S) = C(G,S)·S(G−S)/G·p^(S−1)(1−p)^(G−S−1)",
                 tex_="U_G(p) = \\frac1G\\sum_{S=1}^{G-1}\\frac{P(\\mathrm{Bin}(G-1,p)\\ge S)}{\\nu_S} "
                      "= \\int_0^p w_G" if (g, s) == (2, 1) else "", show_concrete=False)
            d.eq(tail.subs(p, 0), 0, f"G={g}, S={s}: P(Bin(G−1,0) ≥ S) = 0", show_concrete=False)


# ---------------------------------------------------------------------------------------------------------------
# the library


def _s_mp(s: int, g: int, std: str):
    sig = mpmath.sqrt(s * (g - s)) / g
    return sig if std == "population" else mpmath.sqrt(mpmath.mpf(g) / (g - 1)) * sig


def weight_mp(pv, g, std: str = "population", eps="0", dps: int = 30):
    """w_G(p) by the binomial sum of ``binomial_weight``, in mpmath at ``dps`` digits (for large G);
    ``g=None`` gives the limit 1/√(p(1−p))."""
    with mpmath.workdps(dps):
        pv, e = mpmath.mpf(pv), mpmath.mpf(eps)
        if g is None:
            return 1 / mpmath.sqrt(pv * (1 - pv))
        return sum(math.comb(g, s) * pv ** (s - 1) * (1 - pv) ** (g - s - 1) * (mpmath.mpf(s * (g - s)) / g ** 2)
                   / (_s_mp(s, g, std) + e) for s in range(1, g))


def utility_mp(pv, g, std: str = "population", eps="0", dps: int = 30):
    """U_G(p) by the tail form (1/G) Σ_S P(Bin(G−1,p) ≥ S)/(s_S+ε) (``closed_forms``), mpmath."""
    with mpmath.workdps(dps):
        pv, e = mpmath.mpf(pv), mpmath.mpf(eps)
        tot = 0
        for s in range(1, g):
            tail = sum(math.comb(g - 1, k) * pv ** k * (1 - pv) ** (g - 1 - k) for k in range(s, g))
            tot += tail / (_s_mp(s, g, std) + e)
        return tot / g


def _exact_weight_and_utility(g: int, nu):
    """(w_G, U_G = ∫_0^p w_G) at p, term by term from ``weight_term``: each term is c·t^a(1 − t)^b, an algebraic
    constant c times a polynomial with rational coefficients, integrated exactly; evaluated with 40 digits."""
    t = sp.Symbol("t", positive=True)
    parts = []
    with mpmath.workdps(40):
        for s in range(1, g):
            c, poly = weight_term(sp.Integer(s), g, nu, t).as_independent(t, as_Add=False)
            P = sp.Poly(poly, t)
            mp = lambda coeffs: [mpmath.mpf(r.p) / r.q for r in coeffs]  # noqa: E731
            parts.append((mpmath.mpf(str(sp.N(c, 45))), mp(P.all_coeffs()), mp(P.integrate().all_coeffs())))

    def w(x):
        with mpmath.workdps(40):
            return sum(c * mpmath.polyval(P, mpmath.mpf(x.p) / x.q) for c, P, _ in parts)

    def u(x):
        with mpmath.workdps(40):
            return sum(c * mpmath.polyval(Q, mpmath.mpf(x.p) / x.q) for c, _, Q in parts)   # Q(0) = 0

    return w, u


_GRID = (sp.Rational(1, 100), sp.Rational(1, 5), sp.Rational(379, 1000), sp.Rational(1, 2), sp.Rational(19, 20))


@identity("rlkl.utility.finite_group_weight / finite_group_utility equal the derived w_G and ∫_0^p w_G at "
          "rational p (G = 2, 3, 4, 5, 8, 16; both stds; ε ∈ {0, 1/10}) and the binomial sum at G = 1000",
          "FRPO arXiv 2601.10201 §3", numeric=True)
def library_agreement(d: Derivation):
    try:
        from rlkl import utility
    except ImportError as exc:  # pragma: no cover - library part missing
        raise SkipIdentity(f"rlkl.utility not importable: {exc}")
    t = sp.Symbol("t", positive=True)
    worst_w = worst_u = 0.0
    n = 0
    grid_f = [float(v) for v in _GRID]
    for g in (2, 3, 4, 5, 8, 16):
        for std in ("population", "bessel"):
            for e in (sp.Integer(0), sp.Rational(1, 10)):
                w_exact, u_exact = _exact_weight_and_utility(g, normaliser(std, g, e))
                w_lib = utility.finite_group_weight(grid_f, g, std=std, eps=float(e))
                u_lib = utility.finite_group_utility(grid_f, g, std=std, eps=float(e))
                for i, pv in enumerate(_GRID):
                    w_ex, u_ex = float(w_exact(pv)), float(u_exact(pv))
                    worst_w = max(worst_w, abs(float(w_lib[i]) - w_ex) / abs(w_ex))
                    worst_u = max(worst_u, abs(float(u_lib[i]) - u_ex) / abs(u_ex))
                    n += 1
    reason = (f"float64 library code against the derived polynomial w_G (this module's weight_term) and its integral "
              f"at rational p (polynomials exact, algebraic constants to 40 digits), {n} (p, G, std, ε) points")
    d.eq_numeric(worst_w, 0.0, "max relative error of finite_group_weight", atol=1e-12, reason=reason)
    d.eq_numeric(worst_u, 0.0, "max relative error of finite_group_utility", atol=1e-12, reason=reason)
    w_big = float(utility.finite_group_weight(0.3, 1000))
    d.eq_numeric(w_big, float(weight_mp("0.3", 1000)), "finite_group_weight at G = 1000, p = 0.3", rtol=1e-10,
                 reason="float64 library (binomial pmf via lgamma) against the 30-digit binomial sum")
    d.eq_numeric(w_big * math.sqrt(0.3 * 0.7), 1.0, "w_G·√(p(1−p)) at G = 1000, p = 0.3 is within 1e-3 of the limit 1",
                 atol=1e-3, reason="illustrates the limit proved in large_group_limit (the gap is O(1/(G p(1−p))))")
