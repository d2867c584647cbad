"""RPG's eight surrogates: FKL, RKL, UFKL, URKL × (fully differentiable, REINFORCE-style).

RPG (Zhang et al., arXiv 2505.17508). Sampling from π_old (normalized variants) or π̃_old = π_old/Z_old
(unnormalized variants), w(x) = π_θ(x)/π_old(x) with the *unnormalized* π_old, lp = log π_θ, and Z_old·E_{π̃_old}[f]
= Σ_x π_old(x) f(x). For each objective J (maximized) the paper gives ∇J = Z_old·E_{π̃_old}[Weight·∇lp], a fully
differentiable loss L = Z_old·E_{π̃_old}[ℓ] and a REINFORCE-style loss L_RF = −Z_old·E_{π̃_old}[sg(Weight)·lp],
each with ∇L = −∇J (spec rpg.md §1.3–§1.7):

| variant | J | Weight | per-sample ℓ |
|---|---|---|---|
| FKL (Prop. E.1, F.1) | E_π[R] − β KL(π_old‖π_θ) | wR + β | −wR − β lp |
| RKL (Prop. E.3, F.4) | E_π[R] − β KL(π_θ‖π_old) | w(R − β(log w + 1)) | w(−R + β log w) |
| UFKL (Prop. 3.2, F.3) | E_π[R] − β UKL(π_old‖π_θ) | wR − β(w − 1) | −wR + β(w − log w − 1) |
| URKL (Prop. 3.6, F.5) | E_π[R] − β UKL(π_θ‖π_old) | w(R − β log w) | −wR + β(w log w − w) |

Concrete instance: three outcomes, symbolic rewards R_x, β > 0, π_θ either a softmax of symbolic logits or the
unnormalized measure π_θ(x) = e^{θ_x} (x = e^θ > 0, ∂/∂θ = x∂/∂x; the softmax is written through its probabilities
with the softmax Jacobian, see ``_framework.Softmax``), π_old an arbitrary
positive measure (Z_old ≠ 1) for the U-variants and a normalized distribution for FKL/RKL. sg[·] is implemented
by evaluating the weight at a frozen copy of θ.
"""

from __future__ import annotations

import sympy as sp

from derivations._framework import Derivation, Softmax, grad, identity, sg_freeze, vsum

class ExpMeasure:
    """The unnormalized policy π_θ(x) = e^{θ_x}, written through x = e^θ > 0 (∂/∂θ = x ∂/∂x)."""

    def __init__(self, name: str = "x", n: int = 3):
        self.probs = list(sp.symbols(f"{name}1:{n + 1}", positive=True))
        self.relations: dict = {}

    def grad(self, expr):
        return grad(expr, self.probs, log_params=True)


SOFT = Softmax("p")                                 # softmax π_θ (through its probabilities)
EXPM = ExpMeasure("x")                              # unnormalized π_θ = e^θ
OLD_N = Softmax("o")                                # normalized π_old (no gradient taken)
O_U = list(sp.symbols("m1:4", positive=True))       # π_old(x), an arbitrary positive measure, Z_old = Σ m
RW = sp.symbols("R1:4", real=True)                  # rewards
beta = sp.Symbol("beta", positive=True)
N = range(3)
PI_SOFTMAX, PI_EXP, O_N = SOFT.probs, EXPM.probs, OLD_N.probs


def objective(variant: str, pi, old):
    """J(θ) = Σ π_θ R − β·D (RPG eqs. E.1, 3.1, E.2, 3.3)."""
    reward = sum(p * r for p, r in zip(pi, RW))
    if variant == "fkl":
        div = sum(o * sp.log(o / p) for o, p in zip(old, pi))
    elif variant == "rkl":
        div = sum(p * sp.log(p / o) for o, p in zip(old, pi))
    elif variant == "ufkl":
        div = sum(o * sp.log(o / p) for o, p in zip(old, pi)) + sum(p - o for o, p in zip(old, pi))
    elif variant == "urkl":
        div = sum(p * sp.log(p / o) for o, p in zip(old, pi)) + sum(o - p for o, p in zip(old, pi))
    else:
        raise ValueError(variant)
    return reward - beta * div


def weight(variant: str, w, r):
    """Weight(x) with ∇J = Z_old E_{π̃_old}[Weight ∇lp] (spec rpg §1.6, first column)."""
    return {"fkl": w * r + beta,
            "rkl": w * (r - beta * (sp.log(w) + 1)),
            "ufkl": w * r - beta * (w - 1),
            "urkl": w * (r - beta * sp.log(w))}[variant]


def per_sample_loss(variant: str, w, r, lp):
    """Fully differentiable per-sample loss ℓ(x; θ) (RPG Tables 1 and 4)."""
    return {"fkl": -w * r - beta * lp,
            "rkl": w * (-r + beta * sp.log(w)),
            "ufkl": -w * r + beta * (w - sp.log(w) - 1),
            "urkl": -w * r + beta * (w * sp.log(w) - w)}[variant]


PROPS = {
    "fkl": ("Prop. E.1 / F.1", "KL(π_old‖π_θ)"),
    "rkl": ("Prop. E.3 / F.4", "KL(π_θ‖π_old)"),
    "ufkl": ("Prop. 3.2 / F.3", "UKL(π_old‖π_θ)"),
    "urkl": ("Prop. 3.6 / F.5", "UKL(π_θ‖π_old)"),
}


def _value_constant(variant: str, old):
    """L + J (spec rpg §1.7): 0, 0, −βZ_old, or βH(π_old) for FKL."""
    return {"ufkl": 0, "rkl": 0, "urkl": -beta * sum(old),
            "fkl": -beta * sum(o * sp.log(o) for o in old)}[variant]


def _surrogate_chain(d: Derivation, variant: str, pol, old, tag: str):
    pi = pol.probs
    _g = pol.grad
    freeze, thaw = sg_freeze(pi)
    w = [pi[i] / old[i] for i in N]
    lp = [sp.log(pi[i]) for i in N]
    J = objective(variant, pi, old)
    Wt = [weight(variant, w[i], RW[i]) for i in N]
    grad_J = _g(J)
    formula = vsum(old[i] * Wt[i] * _g(lp[i]) for i in N)
    d.eq(grad_J, formula, f"{tag}: ∇J = Z_old E_π̃[Weight·∇lp]",
         tex_="\\nabla J = Z_{\\rm old}\\,\\mathbb E_{\\tilde\\pi_{\\rm old}}[\\mathrm{Weight}\\cdot\\nabla\\log\\pi_\\theta]",
         show_concrete=False)
    ell = [per_sample_loss(variant, w[i], RW[i], lp[i]) for i in N]
    for i in N:
        d.eq(_g(ell[i]), -Wt[i] * _g(lp[i]), f"{tag}: per sample x={i + 1}: ∇ℓ = −Weight·∇lp",
             tex_="\\nabla\\ell(x;\\theta) = -\\mathrm{Weight}(x)\\,\\nabla\\log\\pi_\\theta(x)" if i == 0 else "",
             show_concrete=False)
    L = sum(old[i] * ell[i] for i in N)
    d.eq(_g(L), -grad_J, f"{tag}: ∇L = −∇J (fully differentiable)", tex_="\\nabla L = -\\nabla J",
         show_concrete=False)
    # REINFORCE-style: weight evaluated at frozen parameters
    ell_rf = [-Wt[i].xreplace(freeze) * lp[i] for i in N]
    for i in N:
        d.eq(_g(ell_rf[i]).xreplace(thaw), _g(ell[i]), f"{tag}: per sample x={i + 1}: ∇ℓ_RF = ∇ℓ",
             tex_="\\nabla\\big[-\\mathrm{sg}(\\mathrm{Weight})\\log\\pi_\\theta\\big] = "
                  "-\\mathrm{Weight}\\,\\nabla\\log\\pi_\\theta = \\nabla\\ell" if i == 0 else "",
             show_concrete=False)
    L_rf = sum(old[i] * ell_rf[i] for i in N)
    d.eq(_g(L_rf).xreplace(thaw), -grad_J, f"{tag}: ∇L_RF = −∇J (REINFORCE-style, Prop. 4.1)",
         tex_="\\nabla L_{\\rm RF} = -Z_{\\rm old}\\,\\mathbb E_{\\tilde\\pi_{\\rm old}}[\\mathrm{Weight}\\,\\nabla\\log\\pi_\\theta]"
              " = -\\nabla J", show_concrete=False)
    const = _value_constant(variant, old)
    d.eq(L + J, const, f"{tag}: value relation L + J = {const}",
         tex_={"ufkl": "L = -J", "rkl": "L = -J", "urkl": "L = -J - \\beta Z_{\\rm old}",
               "fkl": "L = -J + \\beta H(\\pi_{\\rm old}) = -J - \\beta\\,\\mathbb E_{\\pi_{\\rm old}}[\\log\\pi_{\\rm old}]"}
         [variant], show_concrete=False)


def _make(variant: str):
    prop, div = PROPS[variant]
    unnorm = variant.startswith("u")
    claim = (f"{variant.upper()}: ∇J = E[Weight∇lp], ∇L = ∇L_RF = −∇J (per sample too), value L+J const; "
             f"J = E[R] − β{div}")
    src = f"RPG arXiv 2505.17508 {prop}, Prop. 4.1; spec rpg §1.3–§1.7"

    def func(d: Derivation):
        d.relations.update({**SOFT.relations, **OLD_N.relations})
        if variant == "fkl":
            SOFT.check_jacobian(d)
        if unnorm:
            d.text("Unnormalized $\\pi_{\\rm old}$ (three free positive masses, $Z_{\\rm old}=o_1+o_2+o_3$), first "
                   "with a softmax $\\pi_\\theta$, then with the unnormalized $\\pi_\\theta(x)=e^{\\theta_x}$.")
            _surrogate_chain(d, variant, SOFT, O_U, "softmax π_θ")
            _surrogate_chain(d, variant, EXPM, O_U, "π_θ = e^θ")
        else:
            d.text("Normalized $\\pi_{\\rm old}$ and softmax $\\pi_\\theta$, at an arbitrary $\\theta\\ne\\theta_{\\rm old}$.")
            _surrogate_chain(d, variant, SOFT, O_N, "normalized")

    func.__name__ = f"surrogates_{variant}"
    func.__qualname__ = func.__name__
    func.__doc__ = f"RPG {prop}: gradient, both surrogates and the value relation for {variant.upper()}."
    return identity(claim, src, name=f"rpg_surrogates.{variant}")(func)


surrogates_fkl = _make("fkl")
surrogates_rkl = _make("rkl")
surrogates_ufkl = _make("ufkl")
surrogates_urkl = _make("urkl")


@identity("Without sg[·] the REINFORCE-style loss leaks −lp·∇Weight and its gradient ≠ −∇J",
          "RPG arXiv 2505.17508 eq. F.1 and Remark F.2; spec rpg §8 item 17")
def sg_prevents_leakage(d: Derivation):
    d.relations.update(SOFT.relations)
    _g = SOFT.grad
    pt = {PI_SOFTMAX[0]: sp.Rational(1, 6), PI_SOFTMAX[1]: sp.Rational(2, 6), O_U[0]: 2, O_U[1]: 1, O_U[2]: 1,
          RW[0]: 1, RW[1]: 0, RW[2]: -1, beta: sp.Rational(1, 2)}
    for variant in ("ufkl", "urkl"):
        w = [PI_SOFTMAX[i] / O_U[i] for i in N]
        lp = [sp.log(PI_SOFTMAX[i]) for i in N]
        leaky = sum(O_U[i] * (-weight(variant, w[i], RW[i]) * lp[i]) for i in N)
        d.ne(_g(leaky), -_g(objective(variant, PI_SOFTMAX, O_U)), f"{variant.upper()}: ∇(−Weight·lp) ≠ −∇J",
             at=pt, reason="π_θ ∝ (1,2,3), π_old = (2,1,1), R = (1,0,−1), β = 1/2")


@identity("Normalized π_θ and π_old: UFKL ≡ FKL and URKL ≡ RKL in expectation; the per-sample "
          "differences are zero-mean control variates",
          "spec rpg §1.8 item 1 [D]; RPG arXiv 2505.17508 §3")
def normalized_equivalence(d: Derivation):
    d.relations.update({**SOFT.relations, **OLD_N.relations})
    _g = SOFT.grad
    pi, old = PI_SOFTMAX, O_N
    w = [pi[i] / old[i] for i in N]
    lp = [sp.log(pi[i]) for i in N]
    d.eq(sum(pi) - sum(old), 0, "mass correction Σ(π_θ − π_old) = 0 for normalized measures")
    d.eq(objective("ufkl", pi, old), objective("fkl", pi, old), "J_UFKL = J_FKL", show_concrete=False)
    d.eq(objective("urkl", pi, old), objective("rkl", pi, old), "J_URKL = J_RKL", show_concrete=False)
    d.eq(vsum(old[i] * w[i] * _g(lp[i]) for i in N),
         sp.zeros(3, 1), "E_{π_old}[w ∇lp] = ∇Σπ_θ = 0 (the control-variate identity)",
         tex_="\\mathbb E_{\\pi_{\\rm old}}[w\\,\\nabla\\log\\pi_\\theta] = \\nabla\\textstyle\\sum_x\\pi_\\theta = 0",
         show_concrete=False)
    for i in N:
        diff_f = per_sample_loss("ufkl", w[i], RW[i], lp[i]) - per_sample_loss("fkl", w[i], RW[i], lp[i])
        d.eq(diff_f, beta * (w[i] - 1) + beta * sp.log(old[i]), f"x={i + 1}: ℓ_UFKL − ℓ_FKL = β(w − 1) + β log π_old",
             tex_="\\ell_{\\rm UFKL}-\\ell_{\\rm FKL} = \\beta(w-1)+\\beta\\log\\pi_{\\rm old}" if i == 0 else "",
             show_concrete=False)
        diff_r = per_sample_loss("urkl", w[i], RW[i], lp[i]) - per_sample_loss("rkl", w[i], RW[i], lp[i])
        d.eq(diff_r, -beta * w[i], f"x={i + 1}: ℓ_URKL − ℓ_RKL = −βw",
             tex_="\\ell_{\\rm URKL}-\\ell_{\\rm RKL} = -\\beta w" if i == 0 else "", show_concrete=False)
    for a, b in (("ufkl", "fkl"), ("urkl", "rkl")):
        La = sum(old[i] * per_sample_loss(a, w[i], RW[i], lp[i]) for i in N)
        Lb = sum(old[i] * per_sample_loss(b, w[i], RW[i], lp[i]) for i in N)
        d.eq(_g(La), _g(Lb), f"∇L_{a.upper()} = ∇L_{b.upper()} (expected gradients equal)", show_concrete=False)
    pt = {pi[0]: sp.Rational(1, 6), pi[1]: sp.Rational(2, 6), old[0]: sp.Rational(1, 2), old[1]: sp.Rational(1, 4),
          RW[0]: 1, RW[1]: 0, RW[2]: -1, beta: sp.Rational(1, 2)}
    g0 = _g(per_sample_loss("urkl", w[0], RW[0], lp[0]))
    g1 = _g(per_sample_loss("rkl", w[0], RW[0], lp[0]))
    d.ne(g0, g1, "…but per-sample gradients differ (by β w ∇lp): the variance differs", at=pt)
