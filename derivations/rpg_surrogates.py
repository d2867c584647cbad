"""RPG's eight surrogates: FKL, RKL, UFKL, URKL × (fully differentiable, REINFORCE-style).

RPG (Zhang et al., arXiv 2505.17508). Sampling from π_old (normalized variants) or π̃_old = π_old/Z_old
(unnormalized variants), w(x) = π_θ(x)/π_old(x) with the *unnormalized* π_old, lp = log π_θ, and Z_old·E_{π̃_old}[f]
= Σ_x π_old(x) f(x). For each objective J (maximized) the paper gives ∇J = Z_old·E_{π̃_old}[Weight·∇lp], a fully
differentiable loss L = Z_old·E_{π̃_old}[ℓ] and a REINFORCE-style loss L_RF = −Z_old·E_{π̃_old}[sg(Weight)·lp],
each with ∇L = −∇J (Props. E.1, E.3, 3.2, 3.6, F.1–F.5, 4.1; Tables 1, 2, 4):

| variant | J | Weight | per-sample ℓ |
|---|---|---|---|
| FKL (Prop. E.1, F.1) | E_π[R] − β KL(π_old‖π_θ) | wR + β | −wR − β lp |
| RKL (Prop. E.3, F.4) | E_π[R] − β KL(π_θ‖π_old) | w(R − β(log w + 1)) | w(−R + β log w) |
| UFKL (Prop. 3.2, F.3) | E_π[R] − β UKL(π_old‖π_θ) | wR − β(w − 1) | −wR + β(w − log w − 1) |
| URKL (Prop. 3.6, F.5) | E_π[R] − β UKL(π_θ‖π_old) | w(R − β log w) | −wR + β(w log w − w) |

Generality of the proofs: n outcomes (n symbolic), symbolic rewards R_x and β > 0, π_old an arbitrary positive
measure (Z_old = Σ_x π_old(x), not 1) for the U-variants and a normalized distribution for FKL/RKL, and π_θ with
*any* differentiable parametrization — a softmax, the unnormalized π_θ(x) = e^{θ_x}, a network: ∂ is the derivative
along one arbitrary parameter direction and the variations dπ_θ(x) are free (``_framework.vary``). sg[·] evaluates
the weight at a frozen copy of π_θ. Each variant also checks ``rlkl.losses.rpg_weight`` and
``rlkl.losses.rpg_differentiable_surrogate``, called on the sympy expressions, against the derived formulas.
"""

from __future__ import annotations

import sympy as sp

from ._framework import Categorical, Derivation, SkipIdentity, identity, sg_freeze, vary

CAT = Categorical("n", "x")
PI = CAT.base("pi")                      # π_θ(x) > 0
DPI = CAT.base("dpi", positive=False)    # ∂π_θ(x) along one parameter direction (free)
M = CAT.base("m")                        # π_old(x) > 0: a positive measure (normalized for FKL/RKL)
RW = CAT.base("R", positive=False)       # rewards (or advantages R − b)
beta = sp.Symbol("beta", positive=True)
Z = CAT.sum(lambda x: M[x])              # Z_old
VAR = {PI: DPI}
VARIANTS = ("fkl", "rkl", "ufkl", "urkl")


def objective(variant: str):
    """J(θ) = Σ_x π_θ R − β·D (RPG eqs. E.1, 3.1, E.2, 3.3), D over the n outcomes."""
    reward = CAT.sum(lambda x: PI[x] * RW[x])
    div = {
        "fkl": CAT.sum(lambda x: M[x] * sp.log(M[x] / PI[x])),
        "rkl": CAT.sum(lambda x: PI[x] * sp.log(PI[x] / M[x])),
        "ufkl": CAT.sum(lambda x: M[x] * sp.log(M[x] / PI[x]) + PI[x] - M[x]),
        "urkl": CAT.sum(lambda x: PI[x] * sp.log(PI[x] / M[x]) + M[x] - PI[x]),
    }[variant]
    return reward - beta * div


def weight(variant: str, w, r):
    """Weight(x) with ∇J = Σ_x π_old(x)·Weight(x)·∇lp(x) (RPG Props. E.1, E.3, 3.2, 3.6)."""
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


def _value_constant(variant: str):
    """L + J: 0 (RKL, UFKL), −βZ_old (URKL), −β Σ π_old log π_old (FKL)."""
    return {"ufkl": sp.Integer(0), "rkl": sp.Integer(0), "urkl": -beta * Z,
            "fkl": -beta * CAT.sum(lambda x: M[x] * sp.log(M[x]))}[variant]


def _w(x):
    return PI[x] / M[x]


def _lp(x):
    return sp.log(PI[x])


def _dlp(x):
    return DPI[x] / PI[x]


def _library():
    """The arithmetic kernels behind rlkl.losses.rpg_weight / rpg_differentiable_surrogate and rpg_loss (the public
    functions validate tensors first, so the sympy expressions go to the kernels they delegate to)."""
    try:
        from rlkl import losses
    except ImportError as exc:  # pragma: no cover
        raise SkipIdentity(f"rlkl.losses not importable: {exc}")
    return losses._rpg_weight, losses._rpg_surrogate


def _surrogate_chain(d: Derivation, variant: str):
    x = CAT.a
    J = objective(variant)
    grad_J = vary(J, VAR)
    d.eq(grad_J, CAT.sum(lambda x: M[x] * weight(variant, _w(x), RW[x]) * _dlp(x)),
         "∇J = Z_old E_π̃[Weight·∇lp] = Σ_x π_old Weight ∇lp",
         tex_="\\nabla J = Z_{\\rm old}\\,\\mathbb E_{\\tilde\\pi_{\\rm old}}[\\mathrm{Weight}\\cdot\\nabla\\log\\pi_\\theta]",
         show_concrete=False)
    ell = per_sample_loss(variant, _w(x), RW[x], _lp(x))
    d.eq(vary(ell, VAR), -weight(variant, _w(x), RW[x]) * _dlp(x), "per sample (any x): ∇ℓ = −Weight·∇lp",
         tex_="\\nabla\\ell(x;\\theta) = -\\mathrm{Weight}(x)\\,\\nabla\\log\\pi_\\theta(x)", show_concrete=False)
    L = CAT.sum(lambda x: M[x] * per_sample_loss(variant, _w(x), RW[x], _lp(x)))
    d.eq(vary(L, VAR), -grad_J, "∇L = −∇J (fully differentiable)", tex_="\\nabla L = -\\nabla J",
         show_concrete=False)
    freeze, thaw = sg_freeze([PI])
    ell_rf = -weight(variant, _w(x), RW[x]).xreplace(freeze) * _lp(x)
    d.eq(vary(ell_rf, VAR).xreplace(thaw), vary(ell, VAR), "per sample: ∇ℓ_RF = ∇[−sg(Weight)·lp] = ∇ℓ",
         tex_="\\nabla\\big[-\\mathrm{sg}(\\mathrm{Weight})\\log\\pi_\\theta\\big] = "
              "-\\mathrm{Weight}\\,\\nabla\\log\\pi_\\theta = \\nabla\\ell", show_concrete=False)
    L_rf = CAT.sum(lambda x: -M[x] * weight(variant, _w(x), RW[x]).xreplace(freeze) * _lp(x))
    d.eq(vary(L_rf, VAR).xreplace(thaw), -grad_J, "∇L_RF = −∇J (REINFORCE-style, Prop. 4.1)",
         tex_="\\nabla L_{\\rm RF} = -Z_{\\rm old}\\,\\mathbb E_{\\tilde\\pi_{\\rm old}}[\\mathrm{Weight}\\,\\nabla\\log\\pi_\\theta]"
              " = -\\nabla J", show_concrete=False)
    const = _value_constant(variant)
    d.eq(L + J, const, f"value relation L + J = {const}",
         tex_={"ufkl": "L = -J", "rkl": "L = -J", "urkl": "L = -J - \\beta Z_{\\rm old}",
               "fkl": "L = -J - \\beta\\,\\mathbb E_{\\pi_{\\rm old}}[\\log\\pi_{\\rm old}]"}[variant],
         show_concrete=False)
    _library_chain(d, variant, grad_J)


def _library_chain(d: Derivation, variant: str, grad_J):
    rpg_weight, rpg_surrogate = _library()
    x = CAT.a
    z = Z if variant.startswith("u") else sp.Integer(1)     # the library folds Z_old into its U-variant weights

    def lib(fn, *args):
        return sp.nsimplify(fn(*args, variant, beta, z), rational=True)  # the kernels' float literals 1.0 are exact

    w = _w(x)
    d.eq(lib(rpg_weight, w, sp.log(w), RW[x]), z * weight(variant, w, RW[x]),
         "library: rlkl.losses.rpg_weight's kernel (w, log w, R) = Z_old·Weight (samples from π̃_old = π_old/Z_old)",
         show_concrete=False)
    d.eq(lib(rpg_surrogate, w, sp.log(w), _lp(x), RW[x]), z * per_sample_loss(variant, w, RW[x], _lp(x)),
         "library: rlkl.losses.rpg_differentiable_surrogate's kernel (w, log w, lp, R) = Z_old·ℓ", show_concrete=False)
    L_lib = CAT.sum(lambda x: M[x] / z * lib(rpg_surrogate, _w(x), sp.log(_w(x)), _lp(x), RW[x]))
    d.eq(vary(L_lib, VAR), -grad_J, "library surrogate: ∇E_{π̃_old}[ℓ_lib] = −∇J", show_concrete=False)


def _make(variant: str):
    prop, div = PROPS[variant]
    claim = (f"{variant.upper()}: ∇J = E[Weight∇lp], ∇L = ∇L_RF = −∇J (per sample too), L + J const, and the "
             f"rlkl.losses formulas; J = E[R] − β{div}, any n, any parametrization of π_θ")
    src = f"RPG arXiv 2505.17508 {prop}, Prop. 4.1, Tables 1, 2, 4"

    def func(d: Derivation):
        if variant.startswith("u"):
            d.text("Unnormalized $\\pi_{\\rm old}$ ($n$ free positive masses, $Z_{\\rm old}=\\sum_x\\pi_{\\rm old}(x)$) and "
                   "$\\pi_\\theta$ with free variations (a softmax or the unnormalized $e^{\\theta_x}$ alike).")
        else:
            d.relations.update(CAT.normalized(M))
            d.text("Normalized $\\pi_{\\rm old}$, at an arbitrary $\\theta\\ne\\theta_{\\rm old}$; $\\pi_\\theta$ with "
                   "free variations.")
        _surrogate_chain(d, variant)

    func.__name__ = f"surrogates_{variant}"
    func.__qualname__ = func.__name__
    func.__doc__ = f"RPG {prop}: gradient, both surrogates, the value relation and the library for {variant.upper()}."
    return identity(claim, src, name=f"rpg_surrogates.{variant}")(func)


surrogates_fkl = _make("fkl")
surrogates_rkl = _make("rkl")
surrogates_ufkl = _make("ufkl")
surrogates_urkl = _make("urkl")


@identity("Normalized π_θ and π_old: UFKL ≡ FKL and URKL ≡ RKL in expectation; the per-sample "
          "differences are zero-mean control variates (any n)", "RPG arXiv 2505.17508 §3, Remark 3.5")
def normalized_equivalence(d: Derivation):
    d.relations.update({**CAT.normalized(PI), **CAT.normalized(M), **CAT.tangent(DPI)})
    x = CAT.a
    d.eq(CAT.sum(lambda x: PI[x] - M[x]), 0, "mass correction Σ(π_θ − π_old) = 0 for normalized measures",
         show_concrete=False)
    d.eq(objective("ufkl"), objective("fkl"), "J_UFKL = J_FKL", show_concrete=False)
    d.eq(objective("urkl"), objective("rkl"), "J_URKL = J_RKL", show_concrete=False)
    d.eq(CAT.sum(lambda x: M[x] * _w(x) * _dlp(x)), 0, "E_{π_old}[w ∇lp] = ∇Σπ_θ = 0 (the control-variate identity)",
         tex_="\\mathbb E_{\\pi_{\\rm old}}[w\\,\\nabla\\log\\pi_\\theta] = \\nabla\\textstyle\\sum_x\\pi_\\theta = 0",
         show_concrete=False)
    diff_f = per_sample_loss("ufkl", _w(x), RW[x], _lp(x)) - per_sample_loss("fkl", _w(x), RW[x], _lp(x))
    d.eq(diff_f, beta * (_w(x) - 1) + beta * sp.log(M[x]), "ℓ_UFKL − ℓ_FKL = β(w − 1) + β log π_old",
         tex_="\\ell_{\\rm UFKL}-\\ell_{\\rm FKL} = \\beta(w-1)+\\beta\\log\\pi_{\\rm old}", show_concrete=False)
    diff_r = per_sample_loss("urkl", _w(x), RW[x], _lp(x)) - per_sample_loss("rkl", _w(x), RW[x], _lp(x))
    d.eq(diff_r, -beta * _w(x), "ℓ_URKL − ℓ_RKL = −βw", tex_="\\ell_{\\rm URKL}-\\ell_{\\rm RKL} = -\\beta w",
         show_concrete=False)
    for a, b in (("ufkl", "fkl"), ("urkl", "rkl")):
        La = CAT.sum(lambda x: M[x] * per_sample_loss(a, _w(x), RW[x], _lp(x)))
        Lb = CAT.sum(lambda x: M[x] * per_sample_loss(b, _w(x), RW[x], _lp(x)))
        d.eq(vary(La, VAR), vary(Lb, VAR), f"∇L_{a.upper()} = ∇L_{b.upper()} (expected gradients equal)",
             show_concrete=False)


# n = 3, π_θ ∝ (1, 2, 3), π_old = (2, 1, 1) (unnormalized, Z_old = 4), R = (1, 0, −1), β = 1/2, softmax direction θ₁
_PI = [sp.Rational(1, 6), sp.Rational(2, 6), sp.Rational(3, 6)]
_PT = {PI: _PI, M: [2, 1, 1], RW: [1, 0, -1], DPI: [p * ((1 if i == 0 else 0) - _PI[0]) for i, p in enumerate(_PI)]}
_PT_N = {**_PT, M: [sp.Rational(1, 2), sp.Rational(1, 4), sp.Rational(1, 4)]}


@identity("Without sg[·] the REINFORCE-style loss leaks −lp·∇Weight and its gradient ≠ −∇J (UFKL, URKL); with "
          "normalized measures the per-sample URKL and RKL gradients differ (by β·w·∇lp)",
          "RPG arXiv 2505.17508 eq. F.1, Remark F.2, §3", counterexample=True)
def sg_prevents_leakage(d: Derivation):
    why = "n = 3, π_θ ∝ (1,2,3), π_old = (2,1,1), R = (1,0,−1), β = 1/2, softmax direction ∂/∂θ₁"
    for variant in ("ufkl", "urkl"):
        leaky = CAT.sum(lambda x: -M[x] * weight(variant, _w(x), RW[x]) * _lp(x))
        d.ne(CAT.at(vary(leaky, VAR), 3, _PT).subs(beta, sp.Rational(1, 2)),
             CAT.at(-vary(objective(variant), VAR), 3, _PT).subs(beta, sp.Rational(1, 2)),
             f"{variant.upper()}: ∇(−Weight·lp) ≠ −∇J", at={}, reason=why)
    x = CAT.a
    g0 = vary(per_sample_loss("urkl", _w(x), RW[x], _lp(x)), VAR).xreplace({x: 1})
    g1 = vary(per_sample_loss("rkl", _w(x), RW[x], _lp(x)), VAR).xreplace({x: 1})
    d.ne(CAT.at(g0, 3, _PT_N).subs(beta, sp.Rational(1, 2)), CAT.at(g1, 3, _PT_N).subs(beta, sp.Rational(1, 2)),
         "normalized: per-sample ∇ℓ_URKL ≠ ∇ℓ_RKL (the variance differs)", at={},
         reason="π_old = (1/2, 1/4, 1/4), sample x = 1")


@identity("rlkl.losses.rpg_weight / rpg_differentiable_surrogate equal the derived Weight and ℓ, and rpg_loss (token "
          "level, both forms, 4 divergences, Z_old = 2) has per-token gradient ∂loss/∂log π = −Z_old·Weight "
          "(U-variants; −Weight for FKL/RKL), the derived per-sample identity",
          "RPG arXiv 2505.17508 Props. 3.2, 3.6, E.1, E.3, 4.1", numeric=True)
def library_rpg_loss_gradient(d: Derivation):
    try:
        import torch

        from rlkl.losses import rpg_differentiable_surrogate, rpg_loss, rpg_weight
    except ImportError as exc:  # pragma: no cover
        raise SkipIdentity(f"rlkl.losses not importable: {exc}")
    logw = (-1.5, -0.25, 0.0, 0.125, 0.75, 2.0)     # exactly representable log(π_θ/π_old)
    adv = (1.0, -0.5, 2.0, 0.0, -1.25, 0.5)
    b, z = sp.Rational(1, 4), 2
    worst = 0.0
    for variant in VARIANTS:
        zz = z if variant.startswith("u") else 1
        for form in ("differentiable", "reinforce"):
            logp_old = torch.zeros((1, len(logw)), dtype=torch.float64)
            logp = torch.tensor([logw], dtype=torch.float64, requires_grad=True)
            out = rpg_loss(logp, logp_old, torch.tensor([adv], dtype=torch.float64),
                           torch.ones((1, len(logw)), dtype=torch.bool), variant, form, float(b), z_old=float(zz))
            out.loss.sum().backward()
            for t, (lw, a) in enumerate(zip(logw, adv)):
                wexp = sp.exp(sp.Rational(lw))
                exact = -zz * weight(variant, wexp, sp.Rational(a)).subs(beta, b)
                ex = float(sp.N(exact, 40))
                worst = max(worst, abs(float(logp.grad[0, t]) - ex) / max(1.0, abs(ex)))
    worst_v = 0.0
    lw_t = torch.tensor(logw, dtype=torch.float64)
    lp_t = lw_t - 1.0                                    # log π_θ with log π_old = −1 (exactly representable)
    for variant in VARIANTS:
        zz = z if variant.startswith("u") else 1
        args = (lw_t.exp(), lw_t, torch.tensor(adv, dtype=torch.float64))
        got_w = rpg_weight(*args, variant, float(b), z_old=float(zz))
        got_l = rpg_differentiable_surrogate(args[0], lw_t, lp_t, args[2], variant, float(b), z_old=float(zz))
        for t, (lw, a) in enumerate(zip(logw, adv)):
            wexp, lpv = sp.exp(sp.Rational(lw)), sp.Rational(lw) - 1
            for got, ex in ((got_w, zz * weight(variant, wexp, sp.Rational(a))),
                            (got_l, zz * per_sample_loss(variant, wexp, sp.Rational(a), lpv))):
                exf = float(sp.N(ex.subs(beta, b), 40))
                worst_v = max(worst_v, abs(float(got[t]) - exf) / max(1.0, abs(exf)))
    d.eq_numeric(worst_v, 0.0, "public rpg_weight / rpg_differentiable_surrogate values = Z·Weight, Z·ℓ (4 × 6 inputs)",
                 atol=1e-13, reason="float64 library code at exactly representable inputs against the derived "
                                    "formulas evaluated at 40 digits")
    d.eq_numeric(worst, 0.0, "max |autograd ∂loss_t/∂log π_t + Z·Weight_t| / max(1, |·|) over 4 × 2 × 6 tokens",
                 atol=1e-13, reason="float64 autograd through rpg_loss (sg[Weight] as .detach()) at exactly "
                                    "representable inputs; the derived Weight evaluated at 40 digits")
