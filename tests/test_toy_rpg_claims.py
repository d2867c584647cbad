"""RPG (arXiv 2505.17508) gradient claims of RPG arXiv 2505.17508 (restated in docs/theory.md) marked E (exact enumeration on a finite X: a T = 1
tree), T (exact enumeration on a tree) or A (per-sample autograd identity). Numbers in the test names are the §8
items. Every loss is the library's (``rlkl.losses.rpg_loss`` etc.); the engine only takes expectations.
"""

import math

import pytest
import torch

from rlkl.components import AggMode, Aggregation, GroupCentered, KLLoss, PPOClip, Raw, Reinforce
from rlkl.objective import Objective
from rlkl.divergences import k3, unnormalized_kl
from rlkl.losses import RPGClip, aggregate, ppo_clip_loss, rpg_loss, rpg_weight
from rlkl.methods import Method, get_method
from rlkl.toy.expected import LossSpec, expected_gradient
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.objectives import (local_score_field, objective_gradient, objective_value,
                                 sequence_divergence)
from rlkl.toy.policies import TabularPolicy, UnnormalizedPolicy

BETA = 0.37
DIV_REG = {"fkl": "forward_kl", "rkl": "reverse_kl", "ufkl": "unnormalized_forward_kl",
           "urkl": "unnormalized_reverse_kl"}


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _flat_x(n=5, seed=0, reward="real"):
    """E mode: a finite X of n items = a T = 1 tree with one prompt."""
    return TreeMDP.random(n, 1, 1, reward=reward, seed=seed)


def _policies(mdp, normalized_theta=True, z_old=1.0, seed=0):
    if normalized_theta:
        pi = TabularPolicy.random(mdp, seed=seed + 1)
    else:
        pi = UnnormalizedPolicy.random(mdp, log_mass=math.log(0.8), seed=seed + 1)
    if z_old == 1.0:
        old = TabularPolicy.random(mdp, seed=seed + 2).detached()
    else:
        old = UnnormalizedPolicy.random(mdp, log_mass=math.log(z_old), seed=seed + 2).detached()
    return pi, old


def _rpg_spec(div, form, beta=BETA, z_old=1.0, level="sequence", clip=None, baseline=0.0):
    def loss_fn(logp, batch):
        adv = (batch.rewards - baseline)[:, None].expand_as(logp) * batch.mask
        out = rpg_loss(logp, batch.logp_old, adv, batch.mask, div, form, beta, level, clip, z_old)
        return aggregate(out.loss, batch.mask, "seq-mean-token-sum" if level == "sequence" else "token-mean")

    return LossSpec(loss_fn, 1, "seq-mean-token-sum" if level == "sequence" else "token-mean", "none",
                    f"rpg_{div}_{form}")


def _obj(div, beta=BETA):
    return Objective("expected_reward", DIV_REG[div], anchor="old", beta=beta)


# ---------------------------------------------------------------------------------------------- 6–9, 16 (E)
CASES = [("fkl", True, 1.0), ("rkl", True, 1.0), ("ufkl", True, 1.0), ("ufkl", True, 2.5), ("ufkl", False, 2.5),
         ("urkl", True, 1.0), ("urkl", True, 2.5), ("urkl", False, 2.5), ("ufkl", False, 1.0)]


@pytest.mark.parametrize("div,normalized,z_old", CASES)
@pytest.mark.parametrize("form", ["differentiable", "reinforce"])
def test_props_E1_32_E3_36_F_and_41_surrogate_gradient_is_minus_grad_J(div, normalized, z_old, form):
    """Props E.1 (FKL), 3.2 (UFKL), E.3 (RKL), 3.6 (URKL): E_samp[∇ℓ] = −∇J at θ ≠ θ_old, Z_old ∈ {1, 2.5},
    softmax and exp θ policies; Props F.1/F.3/F.4/F.5 and 4.1: the REINFORCE-style loss too (§8.6–9, 16)."""
    mdp = _flat_x()
    pi, old = _policies(mdp, normalized, z_old)
    g = expected_gradient(_rpg_spec(div, form, z_old=z_old), mdp, pi, old).grad
    want = -objective_gradient(_obj(div), mdp, pi, None, old)
    assert _rel(g, want) < 1e-12
    # and ∇J = E_samp[Weight·∇lp] with the library's Weight (§1.6)
    lp = pi.sequence_logp()
    lo = old.sequence_logp().detach()
    w = (lp.detach() - lo).exp()
    weight = rpg_weight(w, lp.detach() - lo, mdp.rewards[0], div, BETA, z_old)
    q = old.probs().detach()[0]
    (field,) = torch.autograd.grad((q * weight * lp).sum(), pi.theta)
    assert _rel(field, -want) < 1e-12


@pytest.mark.parametrize("div", ["fkl", "rkl", "ufkl", "urkl"])
def test_per_sample_identity_differentiable_equals_reinforce_gradient(div):
    """§1.6 [D] / §8.16 (A): ∇ℓ(x) = ∇ℓ_RF(x) = −Weight(x)∇lp(x) for every single x."""
    mdp = _flat_x()
    pi, old = _policies(mdp, True, 1.0)
    a = expected_gradient(_rpg_spec(div, "differentiable"), mdp, pi, old).coef
    b = expected_gradient(_rpg_spec(div, "reinforce"), mdp, pi, old).coef
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)


def test_17_without_stop_gradient_the_reinforce_loss_leaks():
    """Eq. F.1: −Weight·lp without SG has an extra −lp·∇Weight term and is not −∇J (E)."""
    mdp = _flat_x()
    pi, old = _policies(mdp, True, 1.0)

    def leaky(logp, batch):
        lw = logp - batch.logp_old
        weight = rpg_weight(lw.exp(), lw, batch.rewards[:, None], "rkl", BETA)
        return aggregate(-weight * logp, batch.mask, "seq-mean-token-sum")  # no .detach() on the weight

    g = expected_gradient(LossSpec(leaky, 1, "seq-mean-token-sum", "none"), mdp, pi, old).grad
    want = -objective_gradient(_obj("rkl"), mdp, pi, None, old)
    assert _rel(g, want) > 1e-2


# ---------------------------------------------------------------------------------------------- 1, 4, 5 (E, A)
def test_1_generalized_policy_gradient_theorem():
    """Prop. 2.1: ∇Σ π f(x, θ) = Σ π (f ∇lp + ∇f), f = log w depending on θ (E)."""
    mdp = _flat_x()
    pi, old = _policies(mdp, True, 1.0)
    lp = pi.sequence_logp()
    f = lp - old.sequence_logp().detach()
    (lhs,) = torch.autograd.grad((lp.exp() * f).sum(), pi.theta, retain_graph=True)
    p = lp.exp().detach()
    (score,) = torch.autograd.grad((p * f.detach() * lp).sum(), pi.theta, retain_graph=True)
    (path,) = torch.autograd.grad((p * f).sum(), pi.theta)
    assert _rel(score + path, lhs) < 1e-12


def test_4_importance_sampling_identities_with_unnormalized_old():
    """App. K: E_π[R] = E_old[wR] (normalized) = Z_old E_π̃old[wR] (Z_old = 2.5) (E)."""
    mdp = _flat_x()
    R = mdp.rewards[0]
    for z in (1.0, 2.5):
        pi, old = _policies(mdp, True, z)
        p, m_old = pi.measure().detach()[0], old.measure().detach()[0]
        w = p / m_old
        z_old = float(m_old.sum())
        assert math.isclose(z_old, z, rel_tol=1e-12)
        lhs = float((p * R).sum())
        assert math.isclose(lhs, z_old * float((m_old / z_old * w * R).sum()), rel_tol=1e-12)


def test_5_derivative_identities():
    """∇w = w∇lp, ∇log w = ∇lp, ∇(w log w) = w(log w + 1)∇lp (A)."""
    lp = torch.tensor([-0.3, -1.7], dtype=torch.float64, requires_grad=True)
    lo = torch.tensor([-0.9, -0.2], dtype=torch.float64)
    w = (lp - lo).exp().detach()
    cases = [(lambda: (lp - lo).exp(), w), (lambda: lp - lo, torch.ones(2, dtype=torch.float64)),
             (lambda: (lp - lo).exp() * (lp - lo), w * (lp.detach() - lo + 1))]
    for value, coef in cases:
        (g,) = torch.autograd.grad(value().sum(), lp)
        assert torch.allclose(g, coef, rtol=1e-14)


# ---------------------------------------------------------------------------------------------- 10–15 (E)
def test_10_value_constants_of_the_surrogates():
    """L_UFKL = −J_UFKL; L_URKL = −J_URKL − βZ_old; L_RKL = −J_RKL; L_FKL = −J_FKL + βH(π_old) (§1.7, E)."""
    from rlkl.losses import rpg_differentiable_surrogate

    mdp = _flat_x()
    R = mdp.rewards[0]
    for div, z, normalized in [("ufkl", 2.5, False), ("urkl", 2.5, False), ("rkl", 1.0, True), ("fkl", 1.0, True)]:
        pi, old = _policies(mdp, normalized, z)
        lp = pi.sequence_logp().detach()
        lo = old.sequence_logp().detach()
        q = old.probs().detach()[0]
        L = float((q * rpg_differentiable_surrogate((lp - lo).exp(), lp - lo, lp, R, div, BETA, z)).sum())
        J = float(objective_value(_obj(div), mdp, pi, None, old).detach())
        const = {"ufkl": 0.0, "urkl": -BETA * z, "rkl": 0.0,
                 "fkl": BETA * float(-(q * q.log()).sum())}[div]
        assert math.isclose(L, -J + const, rel_tol=1e-12, abs_tol=1e-13), div


def test_11_mass_matching_maximizer_of_minus_ukl_is_pi_old():
    """Remark 3.3: with π_θ = exp θ and R ≡ 0, ∇UKL(π_old‖π_θ) = 0 at π_θ = π_old (total mass included), and
    the Hessian there is positive definite (E)."""
    mdp = _flat_x()
    _, old = _policies(mdp, True, 2.5)
    pi = UnnormalizedPolicy(mdp, old.theta.detach().clone())
    ukl = sequence_divergence(mdp, pi, old, "unnormalized_forward_kl").sum()
    (g,) = torch.autograd.grad(ukl, pi.theta)
    assert float(g.norm()) < 1e-14
    H = torch.autograd.functional.hessian(
        lambda th: sequence_divergence(mdp, pi, old, "unnormalized_forward_kl", theta=th).sum(), pi.theta.detach())
    H = H.reshape(5, 5)
    assert float(torch.linalg.eigvalsh(H).min()) > 0


def test_12_dropping_z_old_rescales_the_gradient():
    mdp = _flat_x()
    pi, old = _policies(mdp, False, 2.5)
    with_z = expected_gradient(_rpg_spec("urkl", "reinforce", z_old=2.5), mdp, pi, old).grad
    without = expected_gradient(_rpg_spec("urkl", "reinforce", z_old=1.0), mdp, pi, old).grad
    assert _rel(without * 2.5, with_z) < 1e-12


def test_13_14_k3_is_exactly_the_unnormalized_kl():
    """App. D: E_old[k3(π_θ/π_old)] = UKL(π_old‖π_θ) and E_θ[k3(π_old/π_θ)] = UKL(π_θ‖π_old), arbitrary measures."""
    mdp = _flat_x()
    pi, old = _policies(mdp, False, 2.5)
    lp, lo = pi.sequence_logp().detach(), old.sequence_logp().detach()
    a = float((lo.exp() * k3(lo - lp)).sum())  # k3(log_ratio) = e^{−x} − 1 + x with x = log(π_old/π_θ)
    b = float((lp.exp() * k3(lp - lo)).sum())
    assert math.isclose(a, float(unnormalized_kl(lo, lp)), rel_tol=1e-12)
    assert math.isclose(b, float(unnormalized_kl(lp, lo)), rel_tol=1e-12)


@pytest.mark.parametrize("pair", [("fkl", "ufkl"), ("rkl", "urkl")])
def test_15_normalized_equals_unnormalized_in_expectation_for_normalized_policies(pair):
    """§1.8(1): same exact gradients; per-sample gradients differ by a β·w control variate (E + A)."""
    mdp = _flat_x()
    pi, old = _policies(mdp, True, 1.0)
    a = expected_gradient(_rpg_spec(pair[0], "differentiable"), mdp, pi, old)
    b = expected_gradient(_rpg_spec(pair[1], "differentiable"), mdp, pi, old)
    assert _rel(a.grad, b.grad) < 1e-12
    J_a = objective_value(_obj(pair[0]), mdp, pi, None, old)
    J_b = objective_value(_obj(pair[1]), mdp, pi, None, old)
    pi2 = pi.perturbed(0.5, seed=9)
    J_a2 = objective_value(_obj(pair[0]), mdp, pi2, None, old)
    J_b2 = objective_value(_obj(pair[1]), mdp, pi2, None, old)
    assert math.isclose(float((J_a - J_b).detach()), float((J_a2 - J_b2).detach()), abs_tol=1e-12)  # constant difference
    # per sample: ∂ℓ/∂lp differs by ±β·w (a control variate: E_old[w ∇lp] = 0)
    w = (pi.sequence_logp().detach() - old.sequence_logp().detach()).exp()
    q = old.probs().detach()[0]
    diff = (b.coef - a.coef)[:, 0] / q
    assert torch.allclose(diff.abs(), BETA * w, rtol=1e-10)


# ---------------------------------------------------------------------------------------------- 18–20, 34 (E)
def _kl_probe(estimator, importance_weight=False, beta=1.0):
    return Method("kl_probe", advantage=Raw(), policy_loss=Reinforce(),
                  kl=KLLoss(estimator, importance_weight=importance_weight), aggregation=Aggregation(AggMode.SEQ_MEAN_TOKEN_SUM), beta=beta)


def test_18_19_20_grpo_importance_weight_mismatch_and_correction():
    mdp = _flat_x().with_rewards(torch.zeros(1, 5, dtype=torch.float64))
    pi = TabularPolicy.random(mdp, seed=1)
    old = TabularPolicy.random(mdp, seed=2).detached()
    ref = TabularPolicy.random(mdp, seed=3).detached()
    rev = -objective_gradient(Objective("none", "reverse_kl", beta=1.0), mdp, pi, ref)  # ∇KL(π‖π_ref)
    fwd = -objective_gradient(Objective("none", "forward_kl", beta=1.0), mdp, pi, ref)  # ∇KL(π_ref‖π)
    lp, lo, lr = (p.sequence_logp().detach() for p in (pi, old, ref))
    q = lo.exp()
    ukl = float(unnormalized_kl(lp, lr))
    # 18: uncorrected k3 under π_old: neither value nor gradient of UKL(π‖π_ref)
    uncorrected = expected_gradient(_kl_probe("k3"), mdp, pi, old, ref).grad
    assert abs(float((q * k3(lp - lr)).sum()) - ukl) > 1e-3
    assert _rel(uncorrected, rev) > 1e-2
    # 19: corrected ρ·k3: value UKL(π‖π_ref), gradient ∇KL(π‖π_ref) for any θ
    assert math.isclose(float((q * (lp - lo).exp() * k3(lp - lr)).sum()), ukl, rel_tol=1e-12)
    corrected = expected_gradient(_kl_probe("k3", importance_weight=True), mdp, pi, old, ref)
    assert _rel(corrected.grad, rev) < 1e-12
    # per sample (A): ∂(ρ·k3)/∂lp = ρ·log(π/π_ref)
    per = corrected.coef[:, 0] / q
    assert torch.allclose(per, (lp - lo).exp() * (lp - lr), rtol=1e-12)
    # 20: uncorrected on-policy = ∇KL(π_ref‖π), the forward direction
    on = expected_gradient(_kl_probe("k3"), mdp, pi, None, ref).grad
    assert _rel(on, fwd) < 1e-12 and _rel(on, rev) > 1e-2


def test_34_k1_loss_with_reference_old_anti_regularizes():
    """rfpp scripts: E_old[lp − lp_old] = −KL(π_old‖π_θ); its descent direction increases the forward KL (E)."""
    mdp = _flat_x().with_rewards(torch.zeros(1, 5, dtype=torch.float64))
    pi = TabularPolicy.random(mdp, seed=1)
    old = pi.perturbed(0.5, seed=2).detached()
    g = expected_gradient(_kl_probe("k1"), mdp, pi, old, ref=old).grad
    kl_old_pi = Objective("none", "forward_kl", anchor="old", beta=1.0)  # J = −KL(π_old‖π)
    grad_kl = -objective_gradient(kl_old_pi, mdp, pi, None, old)
    assert _rel(g, -grad_kl) < 1e-12  # the loss is −KL(π_old‖π): minimizing it increases the KL
    step = pi.with_theta(pi.theta.detach() - 1e-3 * g)
    kl = lambda p: float(sequence_divergence(mdp, p, old, "forward_kl").detach())  # noqa: E731  KL(π_old‖p)
    assert kl(step) > kl(pi)


# ---------------------------------------------------------------------------------------------- 22–27 (A, E)
def _grad_wrt_logp(loss_fn, log_w, adv):
    logp = log_w.clone().requires_grad_(True)
    zeros = torch.zeros_like(log_w)
    mask = torch.ones_like(log_w, dtype=torch.bool)
    out = loss_fn(logp, zeros, adv * torch.ones_like(log_w), mask)
    (g,) = torch.autograd.grad(out.loss.sum(), logp)
    return out.loss.detach(), g


def test_22_dual_clip_regions_and_continuity():
    """Sec. 3.3 / Fig. 2: no gradient for w > 1+ε2 (Â ≥ 0), w < 1−ε1 and w > c (Â < 0); gradient −wÂ elsewhere
    (also for Â ≥ 0, w < 1−ε1); the loss is continuous at the boundaries (A, library rpg_loss with β = 0)."""
    clip = RPGClip(0.2, 0.28, 3.0)
    w = torch.linspace(0.05, 5.0, 400, dtype=torch.float64)
    log_w = w.log()[:, None]
    fn = lambda lp, lo, a, m: rpg_loss(lp, lo, a, m, "urkl", "differentiable", 0.0, "token", clip)  # noqa: E731
    for adv in (1.0, -1.0):
        loss, g = _grad_wrt_logp(fn, log_w, adv)
        g, loss = g[:, 0], loss[:, 0]
        if adv > 0:
            active = w <= 1 + clip.eps_high
        else:
            active = (w >= 1 - clip.eps_low) & (w <= clip.c)
        assert torch.allclose(g[active], -w[active] * adv, rtol=1e-12)
        assert (g[~active] == 0).all()
        jumps = (loss[1:] - loss[:-1]).abs()
        assert float(jumps.max()) < 2 * float((w[1:] - w[:-1]).max()) * abs(adv) + 1e-12  # no jumps
    # β = 0: RPG-Style Clip is the standard dual-clip PPO loss (§8.25)
    ppo = lambda lp, lo, a, m: ppo_clip_loss(lp, lo, a, m, 0.2, 0.28, 3.0)  # noqa: E731
    for adv in (1.0, -1.0):
        assert torch.allclose(_grad_wrt_logp(fn, log_w, adv)[1], _grad_wrt_logp(ppo, log_w, adv)[1], rtol=1e-12)


def test_23_alg1_theta_dependent_advantage_is_exact_only_in_expectation():
    """Alg. 1 with Â_RKL and Â_URKL (gradient through w and Â): both E[∇] = −∇J_RKL, per-sample gradients differ
    by β·w·∇lp (E + A)."""
    mdp = _flat_x()
    pi, old = _policies(mdp, True, 1.0)
    loose = RPGClip(1 - 1e-12, 1e12, 1e12)  # no clipping active: L = −w·Â
    a = expected_gradient(_rpg_spec("rkl", "differentiable", clip=loose), mdp, pi, old)
    b = expected_gradient(_rpg_spec("urkl", "differentiable", clip=loose), mdp, pi, old)
    want = -objective_gradient(_obj("rkl"), mdp, pi, None, old)
    assert _rel(a.grad, want) < 1e-12 and _rel(b.grad, want) < 1e-12
    w = (pi.sequence_logp().detach() - old.sequence_logp().detach()).exp()
    q = old.probs().detach()[0]
    assert torch.allclose(((a.coef - b.coef)[:, 0] / q).abs(), BETA * w, rtol=1e-10)


@pytest.mark.parametrize("div", ["fkl", "rkl", "ufkl", "urkl"])
def test_24_26_27_alg2_is_exact_when_all_samples_are_active_and_reduces_without_clipping(div):
    """Alg. 2 gradient = −(wA_R + C_KL)∇lp on the active set: exact F.x gradient when all samples are active (near
    θ_old, E); at θ = θ_old every clipped loss is exact (§8.26); ε1 → 1, ε2, c → ∞ gives the unclipped loss (§8.27)."""
    mdp = _flat_x()
    pi, _ = _policies(mdp, True, 1.0)
    near = pi.perturbed(0.02, seed=5).detached()  # all w within (0.8, 1.28)
    for old in (near, pi.detached()):
        g = expected_gradient(_rpg_spec(div, "reinforce", clip=RPGClip()), mdp, pi, old).grad
        assert _rel(g, -objective_gradient(_obj(div), mdp, pi, None, old)) < 1e-12
    far = pi.perturbed(1.5, seed=6).detached()
    loose = expected_gradient(_rpg_spec(div, "reinforce", clip=RPGClip(1 - 1e-12, 1e12, 1e12)), mdp, pi, far).grad
    unclipped = expected_gradient(_rpg_spec(div, "reinforce"), mdp, pi, far).grad
    assert _rel(loose, unclipped) < 1e-12
    clipped = expected_gradient(_rpg_spec(div, "reinforce", clip=RPGClip()), mdp, pi, far).grad
    assert _rel(clipped, unclipped) > 1e-3  # far off-policy the clip is a bias (§8.28)


# ---------------------------------------------------------------------------------------------- 3, 30–33, 35 (T)
def test_3_baseline_is_unbiased_per_state():
    mdp = TreeMDP.random(3, 3, 2, eos=True, seed=1)
    pi = TabularPolicy.random(mdp, seed=0)
    g = local_score_field(mdp, pi, pi.detached(), lambda d: torch.full_like(d, 1.7))  # b(s)·∇log π summed over a
    assert float(g.norm()) < 1e-13


def test_30_leave_in_group_mean_shrinks_the_gradient_by_1_minus_1_over_G():
    mdp = TreeMDP.random(2, 3, 2, reward="real", seed=2)
    pi = TabularPolicy.random(mdp, seed=0)
    m = get_method("rpg_reinforce_fkl_seq").replace(advantage=GroupCentered(), beta=0.0)
    want = -objective_gradient(Objective("expected_reward", "none"), mdp, pi)
    for G in (2, 3, 5):
        g = expected_gradient(m, mdp, pi, group_size=G, route="exchangeable", class_by="response").grad
        assert _rel(g, (1 - 1 / G) * want) < 1e-12
    g3 = expected_gradient(m, mdp, pi, group_size=3, route="tuples").grad  # enumerating all G-tuples
    ratio = float((g3 * want).sum() / (want * want).sum())
    assert abs(ratio - 2 / 3) < 1e-12


def test_31_token_level_forward_kl_is_the_sequence_kl_reverse_is_not():
    """Under π_old: E[Σ_t (w_t − log w_t − 1)] = KL_seq(π_old‖π_θ) for all θ (value and gradient); the token-level
    reverse sum differs from KL_seq(π_θ‖π_old) off-policy (T)."""
    mdp = TreeMDP.random(3, 3, 1, eos=True, seed=3)
    pi = TabularPolicy.random(mdp, seed=0)
    old = pi.perturbed(0.8, seed=1).detached()
    lp = pi.token_logp()
    lo = old.token_logp().detach()
    mask = mdp.enumerate().mask
    q = old.probs().detach()[0]
    log_w = lp - lo
    # k3(−log w) = w − 1 − log w (rlkl.divergences.k3 takes the log-ratio x and returns e^{−x} − 1 + x)
    fwd_tok = (q[:, None] * torch.where(mask, k3(-log_w), torch.zeros_like(log_w))).sum()
    fwd_seq = sequence_divergence(mdp, pi, old, "forward_kl").sum()
    assert math.isclose(float(fwd_tok.detach()), float(fwd_seq.detach()), rel_tol=1e-12)
    g_tok = torch.autograd.grad(fwd_tok, pi.theta)[0]
    g_seq = torch.autograd.grad(fwd_seq, pi.theta)[0]
    assert _rel(g_tok, g_seq) < 1e-12
    w = log_w.detach().exp()
    rev_tok = float((q[:, None] * torch.where(mask, w * log_w.detach() - w + 1, torch.zeros_like(w))).sum())
    rev_seq = float(sequence_divergence(mdp, pi, old, "reverse_kl").detach())
    assert abs(rev_tok - rev_seq) > 1e-3


def test_32_token_level_ratio_matches_sequence_ratio_only_at_theta_old():
    mdp = TreeMDP.random(3, 3, 2, reward="real", seed=4)
    pi = TabularPolicy.random(mdp, seed=0)
    token = get_method("dapo").replace(advantage=Raw(), aggregation=Aggregation(AggMode.SEQ_MEAN_TOKEN_SUM), policy_loss=PPOClip().unclipped())
    seq = get_method("rpg_reinforce_fkl_seq").replace(advantage=Raw(), beta=0.0)
    for old, equal in [(pi.detached(), True), (pi.perturbed(0.5, seed=1).detached(), False)]:
        a = expected_gradient(token, mdp, pi, old, group_size=2).grad
        b = expected_gradient(seq, mdp, pi, old, group_size=2).grad
        assert (_rel(a, b) < 1e-12) if equal else (_rel(a, b) > 1e-3)
    # the sequence ratio is the exact off-policy gradient
    want = -objective_gradient(Objective("expected_reward", "none"), mdp, pi)
    assert _rel(b, want) < 1e-12


def test_33_ppo_kl_reward_shaping_with_returns_is_the_sequence_kl_gradient():
    mdp = TreeMDP.random(3, 4, 2, eos=True, reward="real", seed=5)
    pi = TabularPolicy.random(mdp, seed=0)
    ref = TabularPolicy.random(mdp, seed=1).detached()
    m = get_method("ppo_k1_rtg").replace(beta=0.6)
    g = expected_gradient(m, mdp, pi, None, ref, group_size=3).grad
    want = -objective_gradient(Objective("expected_reward", "reverse_kl", beta=0.6), mdp, pi, ref)
    assert _rel(g, want) < 1e-12


def test_35_hessian_of_both_kl_directions_at_theta_k_is_the_fisher():
    mdp = _flat_x(6)
    pi = TabularPolicy.random(mdp, seed=0)
    k = pi.detached()
    th0 = pi.theta.detach()
    f_fwd = lambda th: sequence_divergence(mdp, pi, k, "forward_kl", theta=th).sum()  # noqa: E731
    f_rev = lambda th: sequence_divergence(mdp, pi, k, "reverse_kl", theta=th).sum()  # noqa: E731
    p = k.probs().detach()[0]
    fisher = torch.diag(p) - torch.outer(p, p)  # E[∇lp ∇lpᵀ] for softmax logits
    for f in (f_fwd, f_rev):
        H = torch.autograd.functional.hessian(f, th0).reshape(6, 6)
        assert torch.allclose(H, fisher, atol=1e-14)
    assert int(torch.linalg.matrix_rank(fisher)) == 5
