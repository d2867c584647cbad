"""What KL terms differentiate to, per state: k1/k2/k3 as a loss, importance-weighted, or in the reward.

One state, n actions (n symbolic), a policy π_θ over them with *any* differentiable parametrization, a fixed
reference π_ref (entries q_a) and, for off-policy sampling, a behaviour policy π_old (entries o_a); all three are
normalized (Σ_a = 1). ∂ is the derivative along one arbitrary coordinate θ_k: the variations dπ_a = ∂π_a/∂θ_k are
free except Σ_a dπ_a = 0, so every identity below holds for each component of ∇_θ and for every parametrization
(``_framework.vary``). With δ_a = log π(a) − log π_ref(a) (rlkl's ``log_ratio``), Schulman's estimators of
KL(π‖π_ref) under a ∼ π are k1 = δ, k2 = δ²/2, k3 = e^{−δ} − 1 + δ.

"As a loss": the sampled value is differentiated, the sampling distribution is not, E_{a∼π}[∇k(a)].
"In the reward": the value is a detached reward, differentiated through the score function,
E_{a∼π}[sg(k(a)) ∇log π(a)]. Sources: Tang & Munos arXiv 2506.09477 §3; RPG arXiv 2505.17508 §2.3; FRPO
arXiv 2601.10201 App. B (Tables 3 and 4).
"""

from __future__ import annotations

import sympy as sp

from ._framework import Categorical, Derivation, SkipIdentity, identity, sg_freeze, vary

CAT = Categorical("n", "a")
P = CAT.base("pi")          # π_θ(a)
DP = CAT.base("dpi", positive=False)   # ∂π_θ(a) along one parameter direction
Q = CAT.base("q")           # π_ref(a)
O = CAT.base("o")           # π_old(a)
VAR = {P: DP}
RELATIONS = {**CAT.normalized(P), **CAT.normalized(Q), **CAT.normalized(O), **CAT.tangent(DP)}
D = sp.Symbol("delta", real=True)   # a scalar log-ratio, for the per-sample coefficients

#: ∂k/∂log π at fixed π_ref as a function of δ = log π − log π_ref: the per-sample gradient is coef·∇log π
#: (proven for k3 in ``k3_loss``; checked against rlkl.losses.kl_loss in ``library_kl_gradients``)
LOSS_COEF = {"k1": sp.Integer(1), "k2": D, "k3": 1 - sp.exp(-D)}


def _setup(d: Derivation):
    d.relations.update(RELATIONS)


def dlog(a):
    """∂log π(a) = dπ_a/π_a (the score along the chosen direction)."""
    return DP[a] / P[a]


def delta(a):
    """δ_a = log π(a) − log π_ref(a) (log_ratio)."""
    return sp.log(P[a]) - sp.log(Q[a])


def k1(a):
    """k1 = δ (Schulman 2020)."""
    return delta(a)


def k2(a):
    """k2 = δ²/2 (Schulman 2020)."""
    return delta(a) ** 2 / 2


def k3(a):
    """k3 = e^{−δ} − 1 + δ = π_ref/π − 1 + δ (Schulman 2020; RPG eq. 3.2 with y = π_ref/π)."""
    return Q[a] / P[a] - 1 + delta(a)


KL_REV = CAT.expect(P, delta)                                             # KL(π‖π_ref)
KL_FWD = CAT.expect(Q, lambda a: sp.log(Q[a]) - sp.log(P[a]))             # KL(π_ref‖π)


def as_loss(k):
    """E_{a∼π}[∂k(a)]: the estimator differentiated as a loss, samples from π."""
    return CAT.expect(P, lambda a: vary(k(a), VAR))


def in_reward(k):
    """E_{a∼π}[sg(k(a))·∂log π(a)]: the estimator as a detached reward (score function)."""
    return CAT.expect(P, lambda a: k(a) * dlog(a))


@identity("k1 as a loss: E_π[∇k1] = 0 (no regularization at all), any n, any parametrization",
          "Tang & Munos arXiv 2506.09477 §3; FRPO arXiv 2601.10201 App. B Table 3")
def k1_loss(d: Derivation):
    _setup(d)
    a = CAT.a
    d.eq(vary(k1(a), VAR), LOSS_COEF["k1"] * dlog(a), "per sample: ∇k1 = ∇log π (π_ref is fixed)",
         tex_="\\nabla k_1 = \\nabla\\log\\pi", show_concrete=False)
    d.eq(as_loss(k1), CAT.sum(lambda a: DP[a]), "E_π[∇log π] = Σ_a ∇π(a)",
         tex_="\\mathbb E_\\pi[\\nabla k_1] = \\sum_a\\pi(a)\\frac{\\nabla\\pi(a)}{\\pi(a)} = \\nabla\\sum_a\\pi(a)",
         show_concrete=False)
    d.eq(CAT.sum(lambda a: DP[a]), 0, "= ∇1 = 0", tex_="= \\nabla 1 = 0", show_concrete=False)


@identity("k2 as a loss: E_π[∇k2] = ∇KL(π‖π_ref) (the local reverse-KL gradient), any n, any parametrization",
          "Tang & Munos arXiv 2506.09477 §3; FRPO arXiv 2601.10201 App. B Table 3")
def k2_loss(d: Derivation):
    _setup(d)
    a = CAT.a
    d.eq(vary(k2(a), VAR), LOSS_COEF["k2"].subs(D, delta(a)) * dlog(a), "per sample: ∇(δ²/2) = δ ∇log π",
         tex_="\\nabla k_2 = \\delta\\,\\nabla\\log\\pi", show_concrete=False)
    gppt = CAT.expect(P, lambda a: delta(a) * dlog(a) + vary(delta(a), VAR))
    d.eq(vary(KL_REV, VAR), gppt, "∇KL(π‖π_ref) = E_π[δ∇log π + ∇δ]  (RPG Prop. 2.1)",
         tex_="\\nabla\\,\\mathrm{KL}(\\pi\\|\\pi_{\\rm ref}) = \\mathbb E_\\pi[\\delta\\,\\nabla\\log\\pi+\\nabla\\delta]",
         show_concrete=False)
    d.eq(gppt, as_loss(k2), "E_π[∇δ] = E_π[∇log π] = 0, so ∇KL(π‖π_ref) = E_π[∇k2]", show_concrete=False)


@identity("k3 as a loss: per sample ∇k3 = (1 − π_ref/π)∇log π; E_π[∇k3] = ∇KL(π_ref‖π), the FORWARD KL "
          "(GRPO's default KL loss), any n, any parametrization",
          "Tang & Munos arXiv 2506.09477 §3; RPG arXiv 2505.17508 §2.3; FRPO arXiv 2601.10201 App. B Table 3")
def k3_loss(d: Derivation):
    _setup(d)
    a = CAT.a
    coef = LOSS_COEF["k3"].subs(D, delta(a))
    d.eq(vary(k3(a), VAR), coef * dlog(a), "per sample (any a, no expectation): ∇k3 = (1 − π_ref/π) ∇log π",
         tex_="\\nabla k_3 = \\nabla\\Big(\\frac{\\pi_{\\rm ref}}{\\pi}-1+\\delta\\Big) = "
              "\\Big(1-\\frac{\\pi_{\\rm ref}}{\\pi}\\Big)\\nabla\\log\\pi", show_concrete=False)
    step2 = -CAT.expect(Q, dlog)
    d.eq(CAT.expect(P, lambda a: coef.subs(CAT.a, a) * dlog(a)), step2,
         "E_π[(1 − π_ref/π)∇log π] = −Σ_a π_ref(a) ∇log π(a)",
         tex_="\\mathbb E_\\pi\\Big[\\Big(1-\\frac{\\pi_{\\rm ref}}{\\pi}\\Big)\\nabla\\log\\pi\\Big] = "
              "-\\sum_a\\pi_{\\rm ref}(a)\\nabla\\log\\pi(a)", show_concrete=False)
    d.eq(step2, vary(KL_FWD, VAR), "= ∇KL(π_ref‖π)", tex_="= \\nabla\\,\\mathrm{KL}(\\pi_{\\rm ref}\\|\\pi)",
         show_concrete=False)
    d.eq(as_loss(k3), vary(KL_FWD, VAR), "the whole chain: E_π[∇k3] = ∇KL(π_ref‖π)", show_concrete=False)


@identity("Importance-weighted k3 (w = π/π_old): per sample ∇(w·k3) = w·δ·∇log π, so E_{π_old}[∇(w·k3)] = "
          "∇KL(π‖π_ref) for any θ and any π_old; value E_{π_old}[w·k3] = KL(π‖π_ref)",
          "RPG arXiv 2505.17508 §2.3 (corrected estimator)")
def is_weighted_k3(d: Derivation):
    _setup(d)
    a = CAT.a
    w = P[a] / O[a]
    d.eq(vary(w * k3(a), VAR), w * delta(a) * dlog(a), "per sample: ∇(w k3) = w δ ∇log π",
         tex_="\\nabla(w\\,k_3) = \\nabla\\Big(\\frac{\\pi_{\\rm ref}}{\\pi_{\\rm old}} - w + w\\,\\delta\\Big) = "
              "w\\,\\delta\\,\\nabla\\log\\pi", show_concrete=False)
    lhs = CAT.expect(O, lambda a: vary(P[a] / O[a] * k3(a), VAR))
    d.eq(lhs, in_reward(k1), "E_{π_old}[w δ ∇log π] = E_π[δ ∇log π]",
         tex_="\\mathbb E_{\\pi_{\\rm old}}[\\nabla(w\\,k_3)] = \\mathbb E_\\pi[\\delta\\,\\nabla\\log\\pi]",
         show_concrete=False)
    d.eq(in_reward(k1), vary(KL_REV, VAR), "= ∇KL(π‖π_ref), off-policy (π_old ≠ π) included",
         tex_="= \\nabla\\,\\mathrm{KL}(\\pi\\|\\pi_{\\rm ref})", show_concrete=False)
    d.eq(CAT.expect(O, lambda a: P[a] / O[a] * k3(a)), KL_REV, "value: E_{π_old}[w k3] = KL(π‖π_ref)",
         show_concrete=False)
    d.text("On-policy with the ratio kept differentiable ($w=\\pi/\\mathrm{sg}(\\pi)$, value 1), as TRL's "
           "`use_bias_correction_kl` does, the same gradient results (differentiate, then thaw sg):")
    freeze, thaw = sg_freeze([P])
    on_policy = CAT.expect(P, lambda a: vary(P[a] / P[a].xreplace(freeze) * k3(a), VAR).xreplace(thaw))
    d.eq(on_policy, vary(KL_REV, VAR), "on-policy: E_π[∇(π/sg(π)·k3)] = ∇KL(π‖π_ref)", show_concrete=False)
    d.text("Off-policy, k2 needs the weight as a detached factor: "
           "$\\mathbb E_{\\pi_{\\rm old}}[\\mathrm{sg}(w)\\nabla k_2]=\\nabla\\mathrm{KL}(\\pi\\|\\pi_{\\rm ref})$.")
    d.eq(CAT.expect(O, lambda a: P[a] / O[a] * vary(k2(a), VAR)), vary(KL_REV, VAR),
         "E_{π_old}[sg(w)∇k2] = ∇KL(π‖π_ref)", show_concrete=False)


@identity("k1 in the reward (score function): E_π[sg(k1)∇log π] = ∇KL(π‖π_ref), sample-wise equal to k2 as a loss",
          "Tang & Munos arXiv 2506.09477 §3; Liu et al. arXiv 2510.01555")
def k1_reward(d: Derivation):
    _setup(d)
    d.eq(in_reward(k1), vary(KL_REV, VAR), "E_π[sg(δ) ∇log π] = ∇KL(π‖π_ref)",
         tex_="\\mathbb E_\\pi[\\mathrm{sg}(\\delta)\\nabla\\log\\pi] = \\nabla\\,\\mathrm{KL}(\\pi\\|\\pi_{\\rm ref})"
              "\\quad(\\text{the }\\mathbb E_\\pi[\\nabla\\delta]\\text{ part of Prop. 2.1 is }0)", show_concrete=False)
    a = CAT.a
    d.eq(k1(a) * dlog(a), vary(k2(a), VAR), "per sample: sg(δ)∇log π = ∇(δ²/2)", show_concrete=False)


@identity("k3 in the reward: E_π[sg(k3)∇log π] = ∇KL(π‖π_ref) − ∇KL(π_ref‖π) (biased)",
          "Tang & Munos arXiv 2506.09477 §3; FRPO arXiv 2601.10201 App. B")
def k3_reward(d: Derivation):
    _setup(d)
    parts = CAT.expect(Q, dlog) - CAT.expect(P, dlog) + in_reward(k1)
    d.eq(in_reward(k3), parts, "split k3 = π_ref/π − 1 + δ",
         tex_="\\mathbb E_\\pi\\big[(\\tfrac{\\pi_{\\rm ref}}{\\pi}-1+\\delta)\\nabla\\log\\pi\\big] = "
              "\\sum_a\\pi_{\\rm ref}\\nabla\\log\\pi - \\mathbb E_\\pi[\\nabla\\log\\pi] + \\mathbb E_\\pi[\\delta\\nabla\\log\\pi]",
         show_concrete=False)
    d.eq(parts, vary(KL_REV, VAR) - vary(KL_FWD, VAR), "= −∇KL(π_ref‖π) − 0 + ∇KL(π‖π_ref)",
         tex_="= \\nabla\\,\\mathrm{KL}(\\pi\\|\\pi_{\\rm ref}) - \\nabla\\,\\mathrm{KL}(\\pi_{\\rm ref}\\|\\pi)",
         show_concrete=False)
    d.text("To first order around $\\pi_{\\rm ref}$ the two KL directions have the same gradient (both have "
           "Hessian = Fisher, see `npg_fisher`), so k3 in the reward is a *second-order-small* gradient near "
           "the reference: it barely regularizes there, and pushes in an uncontrolled direction far from it.")


# n = 3, π ∝ (1, 2, 4), π_ref ∝ (3, 1, 1), and the softmax direction ∂/∂θ_1: dπ_a = π_a(1[a = 1] − π_1)
_PT_PI = [sp.Rational(1, 7), sp.Rational(2, 7), sp.Rational(4, 7)]
_PT = {P: _PT_PI, Q: [sp.Rational(3, 5), sp.Rational(1, 5), sp.Rational(1, 5)],
       DP: [p_ * ((1 if i == 0 else 0) - _PT_PI[0]) for i, p_ in enumerate(_PT_PI)]}


@identity("Not the other direction: E_π[∇k3] ≠ ∇KL(π‖π_ref); k3 in the reward ≠ ∇KL(π‖π_ref) and ≠ −∇KL(π_ref‖π)",
          "Tang & Munos arXiv 2506.09477 §3", counterexample=True)
def loss_side_counterexamples(d: Derivation):
    why = "n = 3, π ∝ (1,2,4), π_ref ∝ (3,1,1), softmax direction ∂/∂θ₁"
    d.ne(CAT.at(as_loss(k3), 3, _PT), CAT.at(vary(KL_REV, VAR), 3, _PT), "E_π[∇k3] ≠ ∇KL(π‖π_ref)", at={},
         reason=why)
    d.ne(CAT.at(in_reward(k3), 3, _PT), CAT.at(vary(KL_REV, VAR), 3, _PT), "E_π[sg(k3)∇log π] ≠ ∇KL(π‖π_ref)",
         at={}, reason=why)
    d.ne(CAT.at(in_reward(k3), 3, _PT), CAT.at(-vary(KL_FWD, VAR), 3, _PT), "E_π[sg(k3)∇log π] ≠ −∇KL(π_ref‖π)",
         at={}, reason=why)


# exactly representable log-ratios δ (both branches of k3's evaluation: series below |δ| = 1e-3, direct above)
_DELTAS = (-4.0, -1.5, -0.25, -2.0 ** -12, 0.0, 2.0 ** -20, 2.0 ** -11, 0.125, 0.75, 3.0)


def _exact(expr, dv: float) -> float:
    return float(sp.N(expr.subs(D, sp.Rational(dv)), 40))


@identity("rlkl.divergences.kl_estimate values and rlkl.losses.kl_loss per-token gradients equal the derived "
          "k1/k2/k3 values and coefficients ∂k/∂log π (1, δ, 1 − e^{−δ}; k3+: δ; ρ·k3: ρ·δ)",
          "Schulman 2020; Tang & Munos arXiv 2506.09477 §3; RPG arXiv 2505.17508 §2.3", numeric=True)
def library_kl_gradients(d: Derivation):
    try:
        import torch

        from rlkl.divergences import kl_estimate
        from rlkl.losses import kl_loss
    except ImportError as exc:  # pragma: no cover
        raise SkipIdentity(f"rlkl not importable: {exc}")
    values = {"k1": D, "k2": D ** 2 / 2, "k3": sp.exp(-D) - 1 + D}
    lr = torch.tensor([_DELTAS], dtype=torch.float64)        # [1, T] log π − log π_ref
    mask = torch.ones_like(lr, dtype=torch.bool)
    worst_v = worst_g = 0.0
    cases = [(k, False, False, LOSS_COEF[k]) for k in ("k1", "k2", "k3")]
    cases += [("k3", True, False, LOSS_COEF["k2"]), ("k3", False, True, None)]
    rho_log = 0.5                                            # log π − log π_old, exactly representable
    for est, st, iw, coef in cases:
        logp = lr.clone().requires_grad_(True)               # log π_ref = 0, so log π = δ
        logp_old = (lr - rho_log) if iw else None
        out = kl_loss(logp, torch.zeros_like(lr), mask, est, straight_through=st, logp_old=logp_old,
                      importance_weight=iw)
        out.sum().backward()
        for t, dv in enumerate(_DELTAS):
            g_exact = _exact(sp.exp(sp.Rational(rho_log)) * D, dv) if iw else _exact(coef, dv)
            worst_g = max(worst_g, abs(float(logp.grad[0, t]) - g_exact) / max(1.0, abs(g_exact)))
    for est in ("k1", "k2", "k3"):
        got = kl_estimate(lr, est)
        for t, dv in enumerate(_DELTAS):
            v = _exact(values[est], dv)
            worst_v = max(worst_v, abs(float(got[0, t]) - v) / max(abs(v), 1e-300))
    d.eq_numeric(worst_v, 0.0, f"max relative error of kl_estimate values over {len(_DELTAS)} δ's (incl. |δ| < 1e-3)",
                 atol=1e-13, reason="float64 library values at exactly representable δ against the closed forms "
                                    "evaluated at 40 digits; k3 needs its series branch to keep relative accuracy")
    d.eq_numeric(worst_g, 0.0, "max |autograd ∂loss/∂log π − derived coefficient| / max(1, |coef|)", atol=1e-13,
                 reason="autograd through kl_loss (log π_ref detached, ρ differentiable) at exactly representable "
                        "inputs against the coefficients proven in this module, evaluated at 40 digits")
