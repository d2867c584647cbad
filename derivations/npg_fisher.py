"""NPG connection: at θ = θ_old both KL directions have zero gradient and Hessian equal to the Fisher matrix.

RPG (arXiv 2505.17508) App. B, eqs. B.1–B.5 and Remark 3.8. For J_RPG(θ) = J(θ) − β KL(π_θk‖π_θ), expanding the KL
to second order at θ_k gives ½ Δθᵀ F(θ_k) Δθ with F = E_{x∼π_θk}[∇log π ∇log πᵀ]; the quadratic model
J(θ_k) + ∇Jᵀ Δθ − (β/2) Δθᵀ F Δθ is maximized by the natural gradient step Δθ* = (1/β) F⁺ ∇J.

Generality: n outcomes (n symbolic). The Hessian identity holds for *any* parametrization: second derivatives are
taken along two arbitrary parameter directions u, v (π_a → π_a + s·u_a + t·v_a + s·t·w_a, with Σ_a u_a = Σ_a v_a =
Σ_a w_a = 0 for a normalized π). For the tabular softmax (logits θ ∈ ℝⁿ) the softmax Jacobian is proven for a
general logit perturbation, F = diag(π) − ππᵀ follows, and the pseudo-inverse F⁺ = P diag(1/π) P
(P = I − 11ᵀ/n) is checked through the four Penrose conditions, with matrices acting on arbitrary vectors
(component formulas with sums over the n outcomes).
"""

from __future__ import annotations

import sympy as sp

from ._framework import Categorical, Derivation, identity, vary, vary2

CAT = Categorical("n", "a")
PI = CAT.base("pi")                      # π_θ(a)
PO = CAT.base("o")                       # π_old(a)
U, Vd, W = (CAT.base(nm, positive=False) for nm in ("u", "v", "w"))   # ∂_uπ, ∂_vπ, ∂_u∂_vπ
X, Y, Gv = (CAT.base(nm, positive=False) for nm in ("x", "y", "g"))   # arbitrary vectors
i, k = sp.Symbol("i", integer=True), sp.Symbol("k", integer=True)
beta = sp.Symbol("beta", positive=True)

KL_FWD = CAT.expect(PO, lambda a: sp.log(PO[a]) - sp.log(PI[a]))     # KL(π_old‖π_θ)  (B.1)
KL_REV = CAT.expect(PI, lambda a: sp.log(PI[a]) - sp.log(PO[a]))     # KL(π_θ‖π_old)


def at_old(expr):
    """θ = θ_old: π_θ → π_old."""
    return expr.xreplace({PI: PO})


@identity("Hessian of KL(π_old‖π_θ) and of KL(π_θ‖π_old) at θ = θ_old equals the Fisher form E_old[∂_u log π ∂_v "
          "log π]; the gradients vanish (any n, any parametrization)",
          "RPG arXiv 2505.17508 App. B (B.3–B.4), Remark 3.8")
def hessian_is_fisher(d: Derivation):
    d.relations.update({**CAT.normalized(PO), **CAT.normalized(PI), **CAT.tangent(U), **CAT.tangent(Vd),
                        **CAT.tangent(W)})
    fisher = CAT.expect(PO, lambda a: (U[a] / PO[a]) * (Vd[a] / PO[a]))
    d.eq(at_old(vary(KL_FWD, {PI: U})), 0, "∂_u KL(π_old‖π_θ) = 0 at θ_old",
         tex_="\\nabla_\\theta\\mathrm{KL}(\\pi_{\\rm old}\\|\\pi_\\theta)\\big|_{\\theta_{\\rm old}} = 0", show_concrete=False)
    d.eq(at_old(vary(KL_REV, {PI: U})), 0, "∂_u KL(π_θ‖π_old) = 0 at θ_old", show_concrete=False)
    d.eq(at_old(KL_FWD), 0, "KL = 0 at θ_old", show_concrete=False)
    d.eq(at_old(vary2(KL_FWD, {PI: U}, {PI: Vd}, {PI: W})), fisher, "∂_u∂_v KL(π_old‖π_θ) at θ_old = F(u, v)  (B.3–B.4)",
         tex_="\\nabla^2_\\theta\\mathrm{KL}(\\pi_{\\rm old}\\|\\pi_\\theta)\\big|_{\\theta_{\\rm old}} = F(\\theta_{\\rm old})"
              " = \\mathbb E_{\\pi_{\\rm old}}[\\nabla\\log\\pi\\,\\nabla\\log\\pi^\\top]", show_concrete=False)
    d.eq(at_old(vary2(KL_REV, {PI: U}, {PI: Vd}, {PI: W})), fisher,
         "∂_u∂_v KL(π_θ‖π_old) at θ_old = F(u, v) (reverse direction too)",
         tex_="\\nabla^2_\\theta\\mathrm{KL}(\\pi_\\theta\\|\\pi_{\\rm old})\\big|_{\\theta_{\\rm old}} = F(\\theta_{\\rm old})",
         show_concrete=False)
    d.text("So to second order $\\mathrm{KL}(\\pi_{\\theta_k}\\|\\pi_\\theta)\\approx\\tfrac12\\Delta\\theta^\\top F\\Delta\\theta$ "
           "in either direction, whatever the parametrization (the second-order variations $w$ drop out).")


def fisher_map(z):
    """(F z)_i = π_i z_i − π_i Σ_k π_k z_k, F = diag(π) − ππᵀ (``z``: a function of the index)."""
    return lambda j: PO[j] * z(j) - PO[j] * sp.Sum(PO[k] * z(k), (k, 1, CAT.n))


def center(z):
    """(P z)_i = z_i − (1/n) Σ_k z_k, P = I − 11ᵀ/n."""
    return lambda j: z(j) - sp.Sum(z(k), (k, 1, CAT.n)) / CAT.n


def pinv_map(z):
    """F⁺ z = P diag(1/π) P z."""
    pz = center(z)
    return center(lambda j: pz(j) / PO[j])


def _dot(y, z):
    return sp.Sum(y(k) * z(k), (k, 1, CAT.n))


@identity("Tabular softmax: ∂π_a = π_a(x_a − Σ_b π_b x_b) for a logit perturbation x, so F = diag(π) − ππᵀ; "
          "F⁺ = P diag(1/π) P (P = I − 11ᵀ/n) satisfies the four Penrose conditions and Δθ* = F⁺∇J/β maximizes B.5 "
          "(any n)", "RPG arXiv 2505.17508 eq. B.5, App. B")
def natural_gradient_step(d: Derivation):
    d.relations.update(CAT.normalized(PO))
    th = CAT.base("theta", positive=False)
    soft = lambda a: sp.exp(th[a]) / CAT.sum(lambda b: sp.exp(th[b]))  # noqa: E731
    d.eq(vary(soft(i), {th: X}), soft(i) * (X[i] - CAT.sum(lambda b: soft(b) * X[b])),
         "softmax Jacobian: ∂π_i = π_i(x_i − Σ_b π_b x_b) along a logit perturbation x", show_concrete=False)
    dx = lambda a: PO[a] * (X[a] - CAT.sum(lambda b: PO[b] * X[b]))  # noqa: E731
    dy = lambda a: PO[a] * (Y[a] - CAT.sum(lambda b: PO[b] * Y[b]))  # noqa: E731
    d.eq(CAT.expect(PO, lambda a: (dx(a) / PO[a]) * (dy(a) / PO[a])), _dot(lambda j: Y[j], fisher_map(lambda j: X[j])),
         "F(x, y) = E_π[∂_x log π ∂_y log π] = yᵀ(diag(π) − ππᵀ)x", show_concrete=False,
         tex_="F = \\mathbb E_{\\pi_{\\rm old}}[\\nabla\\log\\pi\\,\\nabla\\log\\pi^\\top] = "
              "\\mathrm{diag}(\\pi_{\\rm old})-\\pi_{\\rm old}\\pi_{\\rm old}^\\top")
    x = lambda j: X[j]  # noqa: E731
    y = lambda j: Y[j]  # noqa: E731
    ones = lambda j: sp.Integer(1)  # noqa: E731
    d.eq(fisher_map(ones)(i), 0, "F·1 = 0 (the all-ones logit shift does not move π)", show_concrete=False)
    d.eq(fisher_map(pinv_map(fisher_map(x)))(i), fisher_map(x)(i), "F F⁺ F = F (applied to any x, any component i)",
         tex_="F^+ = P\\,\\mathrm{diag}(1/\\pi)\\,P,\\ P = I-\\tfrac1n\\mathbf 1\\mathbf 1^\\top:\\quad FF^+F=F,\\ "
              "F^+FF^+=F^+,\\ (FF^+)^\\top=FF^+,\\ (F^+F)^\\top=F^+F", show_concrete=False)
    d.eq(pinv_map(fisher_map(pinv_map(x)))(i), pinv_map(x)(i), "F⁺ F F⁺ = F⁺", show_concrete=False)
    d.eq(_dot(y, fisher_map(pinv_map(x))), _dot(x, fisher_map(pinv_map(y))), "(F F⁺)ᵀ = F F⁺: yᵀFF⁺x = xᵀFF⁺y",
         show_concrete=False)
    d.eq(_dot(y, pinv_map(fisher_map(x))), _dot(x, pinv_map(fisher_map(y))), "(F⁺ F)ᵀ = F⁺ F", show_concrete=False)
    d.relations.update(CAT.tangent(Gv))      # ∇J of a softmax policy is orthogonal to 1: Σ_a ∇_{θ_a}J = 0
    g = lambda j: Gv[j]  # noqa: E731
    step = lambda j: pinv_map(g)(j) / beta  # noqa: E731
    d.eq(Gv[i] - beta * fisher_map(step)(i), 0, "∇J − βFΔθ* = 0 for Δθ* = F⁺∇J/β (∇J ⊥ 1): stationary for B.5",
         tex_="\\nabla_{\\Delta\\theta}\\Big[\\nabla J^\\top\\Delta\\theta-\\tfrac\\beta2\\Delta\\theta^\\top F\\Delta\\theta\\Big] "
              "= \\nabla J-\\beta F\\Delta\\theta^* = 0", show_concrete=False)
    var = CAT.expect(PO, lambda a: X[a] ** 2) - CAT.expect(PO, lambda a: X[a]) ** 2
    d.eq(_dot(x, fisher_map(x)), var, "xᵀFx = Var_{π_old}(x) ≥ 0, so B.5 is concave and Δθ* is its maximizer",
         tex_="x^\\top Fx = \\mathrm{Var}_{a\\sim\\pi_{\\rm old}}(x_a)\\ \\ge 0", show_concrete=False)
