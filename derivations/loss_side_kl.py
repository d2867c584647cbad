"""What KL terms differentiate to, per state: k1/k2/k3 as a loss, importance-weighted, or in the reward.

One state, a softmax policy over three actions with symbolic logits θ (written through its probabilities p_a, with
∇_θ from the softmax Jacobian, proven first), a fixed reference π_ref (q_a) and, for off-policy sampling, a
behaviour policy π_old (o_a); all three are arbitrary points of the simplex. With
δ_a = log π(a) − log π_ref(a) (rlkl's ``log_ratio``), Schulman's estimators of KL(π‖π_ref) under a ∼ π are
k1 = δ, k2 = δ²/2, k3 = e^{−δ} − 1 + δ (DESIGN.md conventions).

"As a loss": the sampled value is differentiated, the sampling distribution is not, E_{a∼π}[∇k(a)].
"In the reward": the value is a detached reward, differentiated through the score function,
E_{a∼π}[sg(k(a)) ∇log π(a)]. Sources: Tang & Munos arXiv 2506.09477 §3; spec peers.md §4.2, §4.11;
spec frpo.md §4.5; spec rpg.md §2.3.
"""

from __future__ import annotations

import sympy as sp

from derivations._framework import Derivation, Softmax, identity, sg_freeze, vsum

POL = Softmax("p")      # π_θ = softmax(θ), written through its probabilities p_a (see _framework.Softmax)
REFD = Softmax("q")     # π_ref
OLDD = Softmax("o")     # π_old, the behaviour policy
PI, REF, OLD = POL.probs, REFD.probs, OLDD.probs
RELATIONS = {**POL.relations, **REFD.relations, **OLDD.relations}
ACTIONS = range(3)


def _g(expr):
    """∇_θ through the softmax Jacobian."""
    return POL.grad(expr)


def _setup(d: Derivation):
    d.relations.update(RELATIONS)


def delta(a):
    """δ_a = log π(a) − log π_ref(a) (log_ratio)."""
    return sp.log(PI[a]) - sp.log(REF[a])


def k1(a):
    """k1 = δ (Schulman 2020)."""
    return delta(a)


def k2(a):
    """k2 = δ²/2 (Schulman 2020)."""
    return delta(a) ** 2 / 2


def k3(a):
    """k3 = e^{−δ} − 1 + δ = π_ref/π − 1 + δ (Schulman 2020; RPG eq. 3.2 with y = π_ref/π)."""
    return REF[a] / PI[a] - 1 + delta(a)


KL_REV = sum(PI[a] * delta(a) for a in ACTIONS)                             # KL(π‖π_ref)
KL_FWD = sum(REF[a] * (sp.log(REF[a]) - sp.log(PI[a])) for a in ACTIONS)   # KL(π_ref‖π)


def as_loss(k):
    """E_{a∼π}[∇k(a)]: the estimator differentiated as a loss, samples from π."""
    return vsum(PI[a] * _g(k(a)) for a in ACTIONS)


def in_reward(k):
    """E_{a∼π}[sg(k(a))·∇log π(a)]: the estimator as a detached reward (score function)."""
    return vsum(PI[a] * k(a) * _g(sp.log(PI[a])) for a in ACTIONS)


@identity("k1 as a loss: E_π[∇k1] = 0 (no regularization at all)",
          "Tang & Munos arXiv 2506.09477 §3; spec frpo §4.5")
def k1_loss(d: Derivation):
    _setup(d)
    POL.check_jacobian(d)
    d.eq(as_loss(k1), vsum(PI[a] * _g(sp.log(PI[a])) for a in ACTIONS), "∇k1 = ∇log π (π_ref is fixed)",
         tex_="\\mathbb E_\\pi[\\nabla k_1] = \\mathbb E_\\pi[\\nabla\\log\\pi]", show_concrete=False)
    d.eq(vsum(PI[a] * _g(sp.log(PI[a])) for a in ACTIONS), sp.zeros(3, 1), "= ∇Σπ = 0",
         tex_="= \\nabla\\textstyle\\sum_a\\pi(a) = 0")


@identity("k2 as a loss: E_π[∇k2] = ∇KL(π‖π_ref) (the local reverse-KL gradient)",
          "Tang & Munos arXiv 2506.09477 §3; spec frpo §4.5 (PG_rev)")
def k2_loss(d: Derivation):
    _setup(d)
    d.eq(as_loss(k2), vsum(PI[a] * delta(a) * _g(sp.log(PI[a])) for a in ACTIONS), "∇(δ²/2) = δ ∇log π",
         tex_="\\mathbb E_\\pi[\\nabla k_2] = \\mathbb E_\\pi[\\delta\\,\\nabla\\log\\pi]", show_concrete=False)
    gppt = vsum(PI[a] * delta(a) * _g(sp.log(PI[a])) + PI[a] * _g(delta(a)) for a in ACTIONS)
    d.eq(_g(KL_REV), gppt, "∇KL(π‖π_ref) = E_π[δ∇log π + ∇δ]  (RPG Prop. 2.1)",
         tex_="\\nabla\\,\\mathrm{KL}(\\pi\\|\\pi_{\\rm ref}) = \\mathbb E_\\pi[\\delta\\,\\nabla\\log\\pi+\\nabla\\delta]",
         show_concrete=False)
    d.eq(gppt, as_loss(k2), "E_π[∇δ] = E_π[∇log π] = 0, so ∇KL(π‖π_ref) = E_π[∇k2]", show_concrete=False)


@identity("k3 as a loss: E_π[∇k3] = ∇KL(π_ref‖π), the FORWARD KL (GRPO's default KL loss)",
          "Tang & Munos arXiv 2506.09477 §3; spec rpg §2.3 [D], §8 item 20")
def k3_loss(d: Derivation):
    _setup(d)
    step = vsum(PI[a] * (1 - REF[a] / PI[a]) * _g(sp.log(PI[a])) for a in ACTIONS)
    d.eq(as_loss(k3), step, "∇k3 = (1 − π_ref/π) ∇log π",
         tex_="\\nabla k_3 = \\nabla\\Big(\\frac{\\pi_{\\rm ref}}{\\pi}-1+\\delta\\Big) = "
              "\\Big(1-\\frac{\\pi_{\\rm ref}}{\\pi}\\Big)\\nabla\\log\\pi", show_concrete=False)
    step2 = -vsum(REF[a] * _g(sp.log(PI[a])) for a in ACTIONS)
    d.eq(step, step2, "E_π[(1 − π_ref/π)∇log π] = −Σ_a π_ref(a) ∇log π(a)",
         tex_="\\mathbb E_\\pi\\Big[\\Big(1-\\frac{\\pi_{\\rm ref}}{\\pi}\\Big)\\nabla\\log\\pi\\Big] = "
              "-\\sum_a\\pi_{\\rm ref}(a)\\nabla\\log\\pi(a)", show_concrete=False)
    d.eq(step2, _g(KL_FWD), "= ∇KL(π_ref‖π)", tex_="= \\nabla\\,\\mathrm{KL}(\\pi_{\\rm ref}\\|\\pi)",
         show_concrete=False)
    pt = {PI[0]: sp.Rational(1, 7), PI[1]: sp.Rational(2, 7), REF[0]: sp.Rational(3, 5), REF[1]: sp.Rational(1, 5)}
    d.ne(as_loss(k3), _g(KL_REV), "E_π[∇k3] ≠ ∇KL(π‖π_ref) in general", at=pt,
         reason="π ∝ (1,2,4), π_ref ∝ (3,1,1)")


@identity("Importance-weighted k3 (w = π/π_old): E_{π_old}[∇(w·k3)] = ∇KL(π‖π_ref) for any θ",
          "RPG arXiv 2505.17508 §2.2 (corrected estimator); DeepSeek-V3.2; spec rpg §2.3, peers §4.10")
def is_weighted_k3(d: Derivation):
    _setup(d)
    W = [PI[a] / OLD[a] for a in ACTIONS]
    per_sample = [_g(W[a] * k3(a)) for a in ACTIONS]
    for a in ACTIONS:
        d.eq(per_sample[a], W[a] * delta(a) * _g(sp.log(PI[a])), f"per sample a={a + 1}: ∇(w k3) = w δ ∇log π",
             tex_="\\nabla(w\\,k_3) = \\nabla\\Big(\\frac{\\pi_{\\rm ref}}{\\pi_{\\rm old}} - w + w\\,\\delta\\Big) = "
                  "w\\,\\delta\\,\\nabla\\log\\pi" if a == 0 else "", show_concrete=False)
    lhs = vsum(OLD[a] * per_sample[a] for a in ACTIONS)
    d.eq(lhs, in_reward(k1), "E_{π_old}[w δ ∇log π] = E_π[δ ∇log π]",
         tex_="\\mathbb E_{\\pi_{\\rm old}}[\\nabla(w\\,k_3)] = \\mathbb E_\\pi[\\delta\\,\\nabla\\log\\pi]",
         show_concrete=False)
    d.eq(in_reward(k1), _g(KL_REV), "= ∇KL(π‖π_ref), off-policy (π_old ≠ π) included",
         tex_="= \\nabla\\,\\mathrm{KL}(\\pi\\|\\pi_{\\rm ref})", show_concrete=False)
    value = sum(OLD[a] * W[a] * k3(a) for a in ACTIONS)
    d.eq(value, KL_REV, "value: E_{π_old}[w k3] = KL(π‖π_ref) (= UKL, normalized)", show_concrete=False)
    d.text("On-policy with the ratio kept differentiable ($w=\\pi/\\mathrm{sg}(\\pi)$, value 1), as TRL's "
           "`use_bias_correction_kl` does, the same gradient results (substitute $\\pi_{\\rm old}=\\pi$ after "
           "differentiating):")
    freeze, thaw = sg_freeze(PI)
    w_on = [PI[a] / PI[a].xreplace(freeze) for a in ACTIONS]   # value 1, gradient ∇log π
    on_policy = vsum(PI[a] * _g(w_on[a] * k3(a)).xreplace(thaw) for a in ACTIONS)
    d.eq(on_policy, _g(KL_REV), "on-policy: E_π[∇(π/sg(π)·k3)] = ∇KL(π‖π_ref)", show_concrete=False)
    d.text("Off-policy, k2 needs the weight as a detached factor: "
           "$\\mathbb E_{\\pi_{\\rm old}}[\\mathrm{sg}(w)\\nabla k_2]=\\nabla\\mathrm{KL}(\\pi\\|\\pi_{\\rm ref})$.")
    d.eq(vsum(OLD[a] * W[a] * _g(k2(a)) for a in ACTIONS), _g(KL_REV), "E_{π_old}[sg(w)∇k2] = ∇KL(π‖π_ref)",
         show_concrete=False)


@identity("k1 in the reward (score function): E_π[sg(k1)∇log π] = ∇KL(π‖π_ref)",
          "Tang & Munos arXiv 2506.09477; Liu et al. arXiv 2510.01555; spec frpo §4.5")
def k1_reward(d: Derivation):
    _setup(d)
    d.eq(in_reward(k1), _g(KL_REV), "E_π[sg(δ) ∇log π] = ∇KL(π‖π_ref)",
         tex_="\\mathbb E_\\pi[\\mathrm{sg}(\\delta)\\nabla\\log\\pi] = \\nabla\\,\\mathrm{KL}(\\pi\\|\\pi_{\\rm ref})"
              "\\quad(\\text{the }\\mathbb E_\\pi[\\nabla\\delta]\\text{ part of Prop. 2.1 is }0)", show_concrete=False)
    d.eq(in_reward(k1), as_loss(k2), "sample-wise equal to k2-as-loss: sg(δ)∇log π = ∇(δ²/2)",
         show_concrete=False)


@identity("k3 in the reward: E_π[sg(k3)∇log π] = ∇KL(π‖π_ref) − ∇KL(π_ref‖π) (biased)",
          "derived here; agrees with spec frpo §4.5 (PG_rev − PG_fwd) and peers §4.11")
def k3_reward(d: Derivation):
    _setup(d)
    parts = (vsum(REF[a] * _g(sp.log(PI[a])) for a in ACTIONS)
             - vsum(PI[a] * _g(sp.log(PI[a])) for a in ACTIONS)
             + in_reward(k1))
    d.eq(in_reward(k3), parts, "split k3 = π_ref/π − 1 + δ",
         tex_="\\mathbb E_\\pi\\big[(\\tfrac{\\pi_{\\rm ref}}{\\pi}-1+\\delta)\\nabla\\log\\pi\\big] = "
              "\\sum_a\\pi_{\\rm ref}\\nabla\\log\\pi - \\mathbb E_\\pi[\\nabla\\log\\pi] + \\mathbb E_\\pi[\\delta\\nabla\\log\\pi]",
         show_concrete=False)
    d.eq(parts, _g(KL_REV) - _g(KL_FWD), "= −∇KL(π_ref‖π) − 0 + ∇KL(π‖π_ref)",
         tex_="= \\nabla\\,\\mathrm{KL}(\\pi\\|\\pi_{\\rm ref}) - \\nabla\\,\\mathrm{KL}(\\pi_{\\rm ref}\\|\\pi)",
         show_concrete=False)
    pt = {PI[0]: sp.Rational(1, 7), PI[1]: sp.Rational(2, 7), REF[0]: sp.Rational(3, 5), REF[1]: sp.Rational(1, 5)}
    d.ne(in_reward(k3), _g(KL_REV), "≠ ∇KL(π‖π_ref)", at=pt, reason="π ∝ (1,2,4), π_ref ∝ (3,1,1)")
    d.ne(in_reward(k3), -_g(KL_FWD), "≠ −∇KL(π_ref‖π) … it is the difference of the two directions", at=pt)
    d.text("To first order around $\\pi_{\\rm ref}$ the two KL directions have the same gradient (both have "
           "Hessian = Fisher, see `npg_fisher`), so k3 in the reward is a *second-order-small* gradient near "
           "the reference: it barely regularizes there, and pushes in an uncontrolled direction far from it.")
