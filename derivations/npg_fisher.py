"""NPG connection: at θ = θ_old both KL directions have zero gradient and Hessian equal to the Fisher matrix.

RPG (arXiv 2505.17508) App. B, eqs. B.1–B.5 and Remark 3.8; spec rpg.md §5 and §8 item 35. For
J_RPG(θ) = J(θ) − β KL(π_θk‖π_θ), expanding the KL to second order at θ_k gives ½ Δθᵀ F(θ_k) Δθ with
F = E_{x∼π_θk}[∇log π ∇log πᵀ]; the quadratic model J(θ_k) + ∇Jᵀ Δθ − (β/2) Δθᵀ F Δθ is maximized by the natural
gradient step Δθ* = (1/β) F⁺ ∇J. Concrete instance: a softmax over three actions (tabular logits θ, through its
probabilities, see ``_framework.Softmax``); θ_old has probabilities o_a. The tabular F is singular (the constant
shift of all logits), so F⁺ is the Moore–Penrose pseudo-inverse.
"""

from __future__ import annotations

import sympy as sp

from derivations._framework import Derivation, Softmax, identity, vsum

POL = Softmax("p")
OLD = Softmax("o")
PI, PO = POL.probs, OLD.probs
AT_OLD = dict(zip(PI, PO))          # θ = θ_old
N = 3


def hessian(expr):
    """∇_θ ∇_θᵀ expr through the softmax Jacobian."""
    g = POL.grad(expr)
    return sp.Matrix(N, N, lambda a, b: POL.grad(g[b])[a])


def fisher_at_old():
    """F(θ_old) = E_{a∼π_old}[∇log π(a) ∇log π(a)ᵀ] at θ = θ_old."""
    return vsum(PO[a] * (POL.grad(sp.log(PI[a])) * POL.grad(sp.log(PI[a])).T).xreplace(AT_OLD) for a in range(N))


KL_FWD = sum(PO[a] * (sp.log(PO[a]) - sp.log(PI[a])) for a in range(N))   # KL(π_old‖π_θ)  (B.1)
KL_REV = sum(PI[a] * (sp.log(PI[a]) - sp.log(PO[a])) for a in range(N))   # KL(π_θ‖π_old)


@identity("Hessian of KL(π_old‖π_θ) and of KL(π_θ‖π_old) at θ = θ_old equals the Fisher matrix; gradients vanish",
          "RPG arXiv 2505.17508 App. B (B.3–B.4), Remark 3.8; spec rpg §5, §8 item 35")
def hessian_is_fisher(d: Derivation):
    d.relations.update({**POL.relations, **OLD.relations})
    POL.check_jacobian(d)
    F = fisher_at_old()
    diag_form = sp.Matrix(N, N, lambda a, b: (PO[a] if a == b else 0) - PO[a] * PO[b])
    d.eq(F, diag_form, "F(θ_old) = diag(π_old) − π_old π_oldᵀ (tabular softmax)",
         tex_="F = \\mathbb E_{\\pi_{\\rm old}}[\\nabla\\log\\pi\\,\\nabla\\log\\pi^\\top] = "
              "\\mathrm{diag}(\\pi_{\\rm old})-\\pi_{\\rm old}\\pi_{\\rm old}^\\top", show_concrete=False)
    zero = sp.zeros(N, 1)
    d.eq(POL.grad(KL_FWD).xreplace(AT_OLD), zero, "∇KL(π_old‖π_θ) = 0 at θ_old",
         tex_="\\nabla_\\theta\\mathrm{KL}(\\pi_{\\rm old}\\|\\pi_\\theta)\\big|_{\\theta_{\\rm old}} = 0", show_concrete=False)
    d.eq(POL.grad(KL_REV).xreplace(AT_OLD), zero, "∇KL(π_θ‖π_old) = 0 at θ_old", show_concrete=False)
    d.eq(KL_FWD.xreplace(AT_OLD), 0, "KL = 0 at θ_old", show_concrete=False)
    d.eq(hessian(KL_FWD).xreplace(AT_OLD), F, "∇²KL(π_old‖π_θ) at θ_old = F  (B.3–B.4)",
         tex_="\\nabla^2_\\theta\\mathrm{KL}(\\pi_{\\rm old}\\|\\pi_\\theta)\\big|_{\\theta_{\\rm old}} = F(\\theta_{\\rm old})",
         show_concrete=False)
    d.eq(hessian(KL_REV).xreplace(AT_OLD), F, "∇²KL(π_θ‖π_old) at θ_old = F (reverse direction too)",
         tex_="\\nabla^2_\\theta\\mathrm{KL}(\\pi_\\theta\\|\\pi_{\\rm old})\\big|_{\\theta_{\\rm old}} = F(\\theta_{\\rm old})",
         show_concrete=False)
    d.text("So to second order $\\mathrm{KL}(\\pi_{\\theta_k}\\|\\pi_\\theta)\\approx\\tfrac12\\Delta\\theta^\\top F\\Delta\\theta$ "
           "in either direction. $F$ is singular: the all-ones shift of the logits does not change the policy.")
    ones = sp.ones(N, 1)
    d.eq(F * ones, zero, "F·1 = 0 (rank |X| − 1)", show_concrete=False)
    d.eq(sp.Matrix([sum(POL.grad(sp.log(PI[a]))) for a in range(N)]), zero,
         "1ᵀ∇log π = 0: every policy gradient is orthogonal to the null direction", show_concrete=False)


@identity("NPG step: F⁺ = P diag(1/π) P (P = I − 11ᵀ/n) is the pseudo-inverse and Δθ* = F⁺∇J/β maximizes B.5",
          "RPG arXiv 2505.17508 eq. B.5; spec rpg §5 (pseudo-inverse note)")
def natural_gradient_step(d: Derivation):
    po = [o.xreplace(OLD.relations) for o in PO]   # (o1, o2, 1 − o1 − o2): no logarithms here
    F = sp.Matrix(N, N, lambda a, b: (po[a] if a == b else 0) - po[a] * po[b])
    P = sp.eye(N) - sp.ones(N, N) / N
    Fp = P * sp.diag(*[1 / o for o in po]) * P
    d.eq(F * Fp * F, F, "F F⁺ F = F", show_concrete=False,
         tex_="F^+ = P\\,\\mathrm{diag}(1/\\pi)\\,P,\\ P = I-\\tfrac1n\\mathbf 1\\mathbf 1^\\top:\\quad FF^+F=F,\\ "
              "F^+FF^+=F^+,\\ (FF^+)^\\top=FF^+,\\ (F^+F)^\\top=F^+F")
    d.eq(Fp * F * Fp, Fp, "F⁺ F F⁺ = F⁺", show_concrete=False)
    d.eq((F * Fp).T, F * Fp, "(F F⁺)ᵀ = F F⁺", show_concrete=False)
    d.eq((Fp * F).T, Fp * F, "(F⁺ F)ᵀ = F⁺ F", show_concrete=False)
    g1, g2 = sp.symbols("g1 g2", real=True)
    gJ = sp.Matrix([g1, g2, -g1 - g2])     # ∇J, orthogonal to 1 (any softmax gradient is)
    beta = sp.Symbol("beta", positive=True)
    step = Fp * gJ / beta
    d.eq(gJ - beta * F * step, sp.zeros(N, 1), "∇J − βFΔθ* = 0: Δθ* = F⁺∇J/β is stationary for B.5",
         tex_="\\nabla_{\\Delta\\theta}\\Big[\\nabla J^\\top\\Delta\\theta-\\tfrac\\beta2\\Delta\\theta^\\top F\\Delta\\theta\\Big] "
              "= \\nabla J-\\beta F\\Delta\\theta^* = 0", show_concrete=False)
    v = sp.Matrix(sp.symbols("v1:4", real=True))
    quad = (v.T * F * v)[0]
    var_form = sum(po[a] * v[a] ** 2 for a in range(N)) - sum(po[a] * v[a] for a in range(N)) ** 2
    d.eq(quad, var_form, "vᵀFv = Var_{π_old}(v) ≥ 0, so B.5 is concave and Δθ* is its maximizer",
         tex_="v^\\top Fv = \\mathrm{Var}_{a\\sim\\pi_{\\rm old}}(v_a)\\ \\ge 0", show_concrete=False)
