"""GRPO's implicit utility in the large-group limit: the update is ∇p/√(p(1−p)) = ∇(2·arcsin√p).

Setting (FRPO arXiv 2601.10201, §3 and Prop. 3.1; spec frpo.md §4.1, identity I2): one prompt, binary verifier
reward r(y) ∈ {0, 1}, success probability p(θ) = E_{y∼π_θ}[r]. In the population (G → ∞) limit the group mean and
standard deviation are p and σ = √(p(1−p)), so the GRPO advantage is A = (r − p)/σ and the expected update is
E[A ∇log π(y)]. The concrete instance below is a softmax policy over three responses with symbolic logits θ_a
(written through x_a = e^{θ_a} > 0, so ∂/∂θ_a = x_a ∂/∂x_a) and rewards r = (1, 1, 0).
"""

from __future__ import annotations

import sympy as sp

from derivations._framework import Derivation, grad, identity, vsum

# --- the concrete instance ------------------------------------------------------------------------------------
X = sp.symbols("x1:4", positive=True)          # x_a = exp(θ_a)
PI = [x / sum(X) for x in X]                     # π_θ(a) = softmax(θ)_a
R = (1, 1, 0)                                    # binary rewards of the three responses
P_SUCC = sum(pa * ra for pa, ra in zip(PI, R))   # p(θ) = E_π[r]
p = sp.Symbol("p", positive=True)                # the scalar success probability, 0 < p < 1
G = sp.Symbol("G", positive=True, integer=True)  # group size


def _g(expr):
    """∇_θ for θ = log x (softmax logits)."""
    return grad(expr, X, log_params=True)


def grpo_population_update():
    """E_{y∼π}[A(y) ∇_θ log π(y)] with A = (r − p)/√(p(1−p)) on the three-response softmax bandit.

    FRPO (arXiv 2601.10201) Prop. 3.1: equals ∇_θ[2 arcsin √p(θ)].
    """
    sigma = sp.sqrt(P_SUCC * (1 - P_SUCC))
    return vsum(PI[a] * (R[a] - P_SUCC) / sigma * _g(sp.log(PI[a])) for a in range(3))


@identity("Large-group GRPO update = ∇p/√(p(1−p)) = ∇(2·arcsin√p)",
          "FRPO arXiv 2601.10201 Prop. 3.1; spec frpo §4.1 I2")
def arcsin_utility(d: Derivation):
    d.text("The expected update is $\\mathbb E_{y\\sim\\pi}[A\\,\\nabla\\log\\pi(y)]$ with "
           "$A=(r-p)/\\sqrt{p(1-p)}$. First the score-function facts (I1): "
           "$\\mathbb E[\\nabla\\log\\pi]=\\nabla\\sum_y\\pi(y)=0$ and $\\mathbb E[r\\nabla\\log\\pi]=\\nabla p$.")
    score_mean = vsum(PI[a] * _g(sp.log(PI[a])) for a in range(3))
    d.eq(score_mean, sp.zeros(3, 1), "E[∇log π] = ∇Σπ = 0",
         tex_="\\mathbb E_{\\pi}[\\nabla\\log\\pi] = \\textstyle\\sum_y \\nabla\\pi(y) = \\nabla 1 = 0")
    centred = vsum(PI[a] * (R[a] - P_SUCC) * _g(sp.log(PI[a])) for a in range(3))
    d.eq(centred, _g(P_SUCC), "E[(r − p)∇log π] = ∇p",
         tex_="\\mathbb E_{\\pi}[(r-p)\\nabla\\log\\pi] = \\mathbb E_\\pi[r\\nabla\\log\\pi] - p\\cdot 0 = \\nabla p")
    d.text("The normaliser $\\sqrt{p(1-p)}$ is the same for every sample (population statistics), so it leaves "
           "the expectation:")
    upd = grpo_population_update()
    rhs = _g(P_SUCC) / sp.sqrt(P_SUCC * (1 - P_SUCC))
    d.eq(upd, rhs, "E[A∇log π] = ∇p/√(p(1−p))",
         tex_="\\mathbb E_\\pi\\Big[\\tfrac{r-p}{\\sqrt{p(1-p)}}\\nabla\\log\\pi\\Big] = \\frac{\\nabla p}{\\sqrt{p(1-p)}}")
    d.text("The scalar factor is the derivative of $2\\arcsin\\sqrt p$:")
    d.eq(sp.diff(2 * sp.asin(sp.sqrt(p)), p), 1 / sp.sqrt(p * (1 - p)), "d/dp 2 arcsin√p = 1/√(p(1−p))",
         tex_="\\frac{d}{dp}\\,2\\arcsin\\sqrt p = \\frac{2}{\\sqrt{1-p}}\\cdot\\frac{1}{2\\sqrt p} = "
              "\\frac{1}{\\sqrt{p(1-p)}}")
    d.eq(rhs, _g(2 * sp.asin(sp.sqrt(P_SUCC))), "chain rule: ∇p/√(p(1−p)) = ∇(2 arcsin √p(θ))",
         tex_="\\frac{\\nabla p}{\\sqrt{p(1-p)}} = \\nabla\\big(2\\arcsin\\sqrt{p(\\theta)}\\big)")
    d.text("So in the large-group limit GRPO performs gradient ascent on $U(p)=2\\arcsin\\sqrt p$, not on $p$: "
           "the weight $1/\\sqrt{p(1-p)}$ is 2 at $p=\\tfrac12$ and grows without bound at $p\\to 0,1$.")


@identity("The population GRPO advantage has unit variance (arcsin = variance-stabilising transform)",
          "FRPO arXiv 2601.10201 §3; spec frpo §4.1 I2")
def unit_variance(d: Derivation):
    var = sum(PI[a] * (R[a] - P_SUCC) ** 2 / (P_SUCC * (1 - P_SUCC)) for a in range(3))
    d.eq(var, 1, "E[A²] = Var(r)/(p(1−p)) = 1",
         tex_="\\mathbb E[A^2] = \\frac{\\mathbb E[(r-p)^2]}{p(1-p)} = \\frac{p(1-p)}{p(1-p)} = 1")
    mean = sum(PI[a] * (R[a] - P_SUCC) for a in range(3))
    d.eq(mean, 0, "E[A] = 0")


@identity("Bessel-corrected std multiplies the GRPO update by √((G−1)/G) (→ 1 as G → ∞)",
          "spec frpo §4.2 I3a (Bessel); derived here")
def bessel_factor(d: Derivation):
    d.text("verl and TRL normalise by the Bessel-corrected group std "
           "$s=\\sqrt{\\tfrac{1}{G-1}\\sum_i (r_i-\\bar r)^2}=\\sqrt{\\tfrac{G}{G-1}}\\,\\hat\\sigma$, where "
           "$\\hat\\sigma$ is the population (divide-by-$G$) std. With population statistics "
           "$\\hat\\sigma=\\sqrt{p(1-p)}$ the advantage becomes $A_{\\rm B}=(r-p)/s$:")
    sigma = sp.sqrt(P_SUCC * (1 - P_SUCC))
    s_bessel = sp.sqrt(G / (G - 1)) * sigma
    upd_b = vsum(PI[a] * (R[a] - P_SUCC) / s_bessel * _g(sp.log(PI[a])) for a in range(3))
    factor = sp.sqrt((G - 1) / G)
    d.eq(upd_b, factor * _g(2 * sp.asin(sp.sqrt(P_SUCC))), "E[A_B ∇log π] = √((G−1)/G)·∇(2 arcsin √p)",
         tex_="\\mathbb E[A_{\\rm B}\\nabla\\log\\pi] = \\sqrt{\\tfrac{G-1}{G}}\\;\\nabla\\big(2\\arcsin\\sqrt p\\big)")
    d.eq(sp.limit(factor, G, sp.oo), 1, "√((G−1)/G) → 1 as G → ∞",
         tex_="\\lim_{G\\to\\infty}\\sqrt{\\tfrac{G-1}{G}} = 1")
    d.text("The factor is a constant (no $p$-dependence), so the implied utility keeps its shape: Bessel's "
           "correction only rescales the step size by $\\sqrt{(G-1)/G}$ ($0.894$ at $G=5$, $0.707$ at $G=2$). "
           "For finite groups with $\\varepsilon=0$ the same factor is exact: each group's "
           "$\\hat\\sigma_S^2/s_S=\\sqrt{(G-1)/G}\\,\\hat\\sigma_S$, see `finite_groups`.")
