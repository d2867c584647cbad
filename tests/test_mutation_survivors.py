"""Checks added for mutants that survived the core tests (docs/mutation.md lists each survivor and its fate).

Each test states the documented behaviour it pins, with the arithmetic in comments; none refers to a mutant.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlkl.advantages import compute_advantages
from rlkl.divergences import unnormalized_kl
from rlkl.losses import cispo_loss, rpg_differentiable_surrogate, rpg_weight


def t(x, **kw):
    return torch.tensor(x, dtype=torch.float64, **kw)


def test_unnormalized_kl_with_zero_masses_has_a_finite_gradient():
    # p = (0, 1, 2), q = (1, 1, 1) as log-masses (−inf, 0, log 2) and 0: UKL = Σ p log(p/q) + Σ(q − p)
    # = 0 + 0 + 2 log 2 + (1 − 0) + 0 + (1 − 2) = 2 log 2; d/d log p_3 = p_3 log(p_3/q_3) = 2 log 2
    log_p = t([-math.inf, 0.0, math.log(2.0)], requires_grad=True)
    log_q = t([0.0, 0.0, 0.0], requires_grad=True)
    v = unnormalized_kl(log_p, log_q)
    assert v.item() == pytest.approx(2 * math.log(2.0), rel=1e-14)
    gp, gq = torch.autograd.grad(v, (log_p, log_q))
    assert torch.isfinite(gp).all() and torch.isfinite(gq).all()
    # d/d log q_j = q_j − p_j: (1 − 0, 1 − 1, 1 − 2); d/d log p_2 = p log(p/q) = 0
    assert torch.allclose(gq, t([1.0, 0.0, -1.0]), rtol=0, atol=1e-14)
    assert gp[1].item() == pytest.approx(0.0, abs=1e-15) and gp[2].item() == pytest.approx(2 * math.log(2.0))


def test_compute_advantages_default_eps_is_verls():
    # one group (1, 0): mean ½, Bessel std √½, ε = 1e-6 by default → ±½/(√½ + 1e-6)
    a = compute_advantages("group_standardized", t([1.0, 0.0]), 2)
    want = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert a.tolist() == pytest.approx([want, -want], rel=1e-14)


def test_cispo_defaults_and_clip_fraction_dtype():
    # default ε_high = 0.2, one-sided: ρ = e^{0.5} = 1.6487 → ŵ = 1.2, gradient −ŵ·A = −1.2 (A = 1)
    logp = t([[0.0, 0.0]], requires_grad=True)
    old = t([[-0.5, 0.0]])
    out = cispo_loss(logp, old, t([[1.0, 1.0]]), torch.ones(1, 2, dtype=torch.bool))
    (g,) = torch.autograd.grad(out.loss.sum(), logp)
    assert g[0].tolist() == pytest.approx([-1.2, -1.0], rel=1e-14)
    assert out.clip_fraction_high.dtype == torch.float64 and out.clip_fraction_high.item() == 0.5
    assert out.clip_fraction_low.dtype == torch.float64 and out.clip_fraction_low.item() == 0.0


@pytest.mark.parametrize("div", ["fkl", "rkl", "ufkl", "urkl"])
def test_rpg_public_weight_and_surrogate_match_the_propositions(div):
    # w = 2, A = 0.5, β = 0.3, Z_old = 1.5 (RPG Props. E.1, E.3, 3.2, 3.6; Z multiplies the unnormalized ones)
    w, a, b, z = 2.0, 0.5, 0.3, 1.5
    lw = math.log(w)
    want = {"fkl": w * a + b, "rkl": w * (a - b * (lw + 1)), "ufkl": z * (w * a - b * (w - 1)),
            "urkl": z * w * (a - b * lw)}[div]
    got = rpg_weight(t(w), t(lw), t(a), div, b, z_old=z if div in ("ufkl", "urkl") else 1.0)
    assert got.item() == pytest.approx(want, rel=1e-14)
    # the differentiable surrogate's gradient in lp (w = e^{lp − lp_old}) is −Weight
    lp = t(0.0, requires_grad=True)
    w_t = torch.exp(lp - (-lw))
    ell = rpg_differentiable_surrogate(w_t, lp - (-lw), lp, t(a), div, b, z_old=z if div in ("ufkl", "urkl") else 1.0)
    (g,) = torch.autograd.grad(ell, lp)
    assert g.item() == pytest.approx(-want, rel=1e-12)


def test_gpg_group_scope_alpha_in_float64():
    # groups (1, 2, 3, 0) and (5, 0, 0, 0): α_g = 4/#nonzero = 4/3 and 4; means 1.5 and 1.25
    from rlkl.advantages import gpg_advantage

    a = gpg_advantage(t([1.0, 2.0, 3.0, 0.0, 5.0, 0.0, 0.0, 0.0]), 4, "group")
    want = [4 / 3 * (-0.5), 4 / 3 * 0.5, 4 / 3 * 1.5, 4 / 3 * (-1.5), 4 * 3.75, 4 * -1.25, 4 * -1.25, 4 * -1.25]
    assert a.dtype == torch.float64 and a.tolist() == pytest.approx(want, rel=1e-15)


@pytest.mark.parametrize("name,alpha,limit", [("jensen_shannon", None, 0.5 * math.log(2.0)),
                                             ("total_variation", None, 0.5), ("hellinger", None, 1.0),
                                             ("alpha", 0.5, 2.0), ("alpha", -1.0, 0.5)])
def test_exact_f_divergence_where_q_is_zero_uses_the_limit_of_f_over_u(name, alpha, limit):
    # P = (½, ½), Q = (1, 0): D_f = Q_1 f(P_1/Q_1) + P_2 lim_{u→∞} f(u)/u = f(½) + ½·limit; for α-divergences
    # lim f(u)/u = 1/(1 − α) (α < 1), f(u) = (u^α − αu − (1 − α))/(α(α − 1))
    from rlkl.divergences import get_f_divergence

    div = get_f_divergence(name, alpha=alpha)
    f_half = {"jensen_shannon": 0.5 * (0.5 * math.log(0.5) - 1.5 * math.log(0.75)),
              "total_variation": 0.25, "hellinger": (math.sqrt(0.5) - 1) ** 2}.get(name)
    if f_half is None:
        f_half = (0.5 ** alpha - alpha * 0.5 - (1 - alpha)) / (alpha * (alpha - 1))
    got = div.exact(t([0.0, 0.0]), t([0.0, -math.inf]))
    assert got.item() == pytest.approx(f_half + 0.5 * limit, rel=1e-12)


def test_total_variation_local_term_is_zero_at_u_equal_one():
    # FRPO's local term f'(u) − f'(1) with the subgradient f'(1) = 0: 0 at log u = 0, ±½ elsewhere
    from rlkl.divergences import get_f_divergence

    assert get_f_divergence("total_variation").f_prime_centered(t([-1.0, 0.0, 2.0])).tolist() == [-0.5, 0.0, 0.5]


def test_masked_whiten_defaults_and_two_tokens():
    # values (1, 3): μ = 2, Bessel σ² = 2, ε = 1e-8 by default → ∓1/√(2 + 1e-8); two valid tokens are enough
    from rlkl.advantages import masked_whiten

    out = masked_whiten(t([[1.0, 3.0]]), torch.ones(1, 2, dtype=torch.bool))
    want = 1 / math.sqrt(2 + 1e-8)
    assert out[0].tolist() == pytest.approx([-want, want], rel=1e-15)


# ------------------------------------------------------------------------------------------------ rlkl.sampling
def test_sampler_describe_and_replace():
    from rlkl.sampling import Sampler

    assert Sampler().describe() == "identity"
    full = Sampler(temperature=0.7, top_k=2, top_p=0.8, min_p=0.1, dtype="bfloat16", noise=0.5, logprobs="raw")
    assert full.describe() == "tau=0.7,top_k=2,top_p=0.8,min_p=0.1,bfloat16,noise=0.5,raw"
    assert Sampler(temperature=2.0).describe() == "tau=2"
    assert Sampler(min_p=0.5, noise=0.25).describe() == "min_p=0.5,noise=0.25"
    assert Sampler(top_p=0.8).replace(top_k=3) == Sampler(top_k=3, top_p=0.8)


def test_correction_ratios_are_guarded_at_e_to_the_20():
    from rlkl.sampling import sequence_is_weights, token_is_weights

    # log ρ = +30 and −30 are clamped to ±20 before exp (verl's guard): plain IS weights e^{20}, e^{−20}
    lr = t([[30.0, -30.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    w = token_is_weights(lr, mask)
    assert w[0, 0].item() == pytest.approx(math.exp(20.0), rel=1e-14)
    assert w[0, 1].item() == pytest.approx(math.exp(-20.0), rel=1e-14)
    # sequence: log Π ρ = 30 + 30 = 60 → e^{20}; −60 → e^{−20}
    ws = sequence_is_weights(t([[30.0, 30.0], [-30.0, -30.0]]), torch.ones(2, 2, dtype=torch.bool))
    assert ws[:, 0].tolist() == pytest.approx([math.exp(20.0), math.exp(-20.0)], rel=1e-14)


def test_sequence_tis_floor_and_masked_is_lower_bound_by_hand():
    from rlkl.sampling import masked_is_weights, sequence_is_weights

    mask = torch.ones(1, 2, dtype=torch.bool)
    # Π ρ = 0.5·0.5 = 0.25 < floor 0.5 → 0.5 on both tokens
    w = sequence_is_weights(torch.log(t([[0.5, 0.5]])), mask, cap=2.0, floor=0.5)
    assert w.tolist() == [[0.5, 0.5]]
    # lower <= ρ keeps ρ = lower exactly (exp(log 0.5) = 0.5 in float64); 0.25 < 0.5 is dropped
    w = masked_is_weights(torch.log(t([[0.5, 0.25]])), mask, False, None, 0.5)
    assert w.tolist() == [[0.5, 0.0]]


def test_geometric_mean_of_a_one_token_row_is_its_ratio():
    from rlkl.sampling import geometric_mean_weights

    # row 0 has one token, ρ = 4: exp(log 4 / 1) = 4; row 1: (ρ = 2, 8) → exp((log 2 + log 8)/2) = 4
    mask = torch.tensor([[True, False], [True, True]])
    w = geometric_mean_weights(torch.log(t([[4.0, 1.0], [2.0, 8.0]])), mask)
    torch.testing.assert_close(w, t([[4.0, 0.0], [4.0, 4.0]]), rtol=1e-14, atol=0)


def test_effective_sample_size_of_small_weights():
    from rlkl.sampling import effective_sample_size

    # w = (0.5, 0.25): (Σw)²/(N Σw²) = 0.5625/(2·0.3125) = 0.9 (Σw² < 1: no special case)
    ess = effective_sample_size(t([[0.5, 0.25]]), torch.ones(1, 2, dtype=torch.bool))
    assert ess.item() == pytest.approx(0.9, rel=1e-14)


def test_mismatch_fractions_of_a_lower_bound_rejection_and_the_output_dtype():
    from rlkl.components import TokenMIS, TokenTIS
    from rlkl.sampling import mismatch_diagnostics, rollout_log_ratio

    mask = torch.ones(1, 3, dtype=torch.bool)
    old = torch.log(t([[0.4, 0.2, 0.5]]))
    rollout = torch.log(t([[0.5, 0.1, 0.5]]))
    # ρ = 0.8, 2, 1; TokenMIS(upper 2, lower 0.9) drops 0.8 (weight 0): rejected 1/3, capped 0 (a dropped ratio
    # is not a capped one)
    lr = rollout_log_ratio(old, rollout, mask)
    d = mismatch_diagnostics(old, rollout, mask, TokenMIS(2.0, lower=0.9).weights(lr, mask),
                             TokenTIS(None).weights(lr, mask))
    assert d["rejected_fraction"].item() == pytest.approx(1 / 3, rel=1e-15)
    assert d["capped_fraction"].item() == 0.0
    # statistics come back in logp_old's dtype, also when the engine reported float64 log-probs
    d32 = mismatch_diagnostics(old.float(), rollout, mask)
    assert all(v.dtype == torch.float32 for v in d32.values())


def test_trainer_kept_logmass_of_unnormalized_logits():
    from rlkl.sampling import kept_logmass

    # logits (6, 5, 4) (log-probs + 5): S = (e^6 + e^5)/(e^6 + e^5 + e^4), shift-invariant
    logits = t([[6.0, 5.0, 4.0]])
    kept = torch.tensor([[True, True, False]])
    want = math.log((math.exp(6) + math.exp(5)) / (math.exp(6) + math.exp(5) + math.exp(4)))
    assert kept_logmass(logits, kept).item() == pytest.approx(want, rel=1e-14)


def test_exact_mismatch_kl_averages_states_over_the_mask():
    from rlkl.sampling import exact_mismatch_kl

    # B = 1, T = 3, V = 2; the third state is padding (its distributions must not count)
    log_q = torch.log(t([[[0.5, 0.5], [1.0, 0.0], [0.1, 0.9]]]))
    log_old = torch.log(t([[[0.8, 0.2], [0.6, 0.4], [0.9, 0.1]]]))
    mask = torch.tensor([[True, True, False]])
    kl0 = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)  # = ½ log 1.5625
    kl1 = math.log(1 / 0.6)  # the cut token contributes 0·log 0 = 0
    assert exact_mismatch_kl(log_q, log_old, mask).item() == pytest.approx((kl0 + kl1) / 2, rel=1e-14)


def test_mismatch_fractions_follow_their_definitions_for_any_weights():
    from rlkl.sampling import mismatch_diagnostics

    # capped ⟨1[0 < w < raw]⟩, rejected ⟨1[w = 0 < raw]⟩ (docs/metrics.md), for weights of any origin:
    # tokens (w, raw) = (0.5, 0.8) capped; (0, 0) neither (nothing was there to drop); (0.3, 0.3) neither
    mask = torch.ones(1, 3, dtype=torch.bool)
    lp = t([[-1.0, -1.0, -1.0]])
    d = mismatch_diagnostics(lp, lp, mask, t([[0.5, 0.0, 0.3]]), t([[0.8, 0.0, 0.3]]))
    assert d["capped_fraction"].item() == pytest.approx(1 / 3, rel=1e-15)
    assert d["rejected_fraction"].item() == 0.0


def test_kept_set_boundaries_and_rows():
    from rlkl.sampling import kept_set

    # top_p = 1 keeps every token of positive probability, however small (its mass before it rounds to 1)
    lp = t([math.log1p(-1e-20), math.log(1e-20)])
    assert kept_set(lp, top_p=1.0).tolist() == [True, True]
    # min-p keeps π̃(a) >= min_p·max π̃ (inclusive): 0.25 >= 0.5·0.5
    lp = torch.log(t([0.5, 0.25, 0.25]))
    assert kept_set(lp, min_p=0.5).tolist() == [True, True, True]
    assert kept_set(lp, min_p=0.6).tolist() == [True, False, False]
    # rows are independent: top-p renormalizes within each row
    rows = torch.log(t([[0.6, 0.3, 0.1], [0.4, 0.35, 0.25]]))
    both = kept_set(rows, top_k=None, top_p=0.5)
    assert both.tolist() == [kept_set(rows[0], top_p=0.5).tolist(), kept_set(rows[1], top_p=0.5).tolist()]
    assert both.tolist() == [[True, False, False], [True, True, False]]  # mass before: (0, .6) and (0, .4, .75)


def test_ties_are_broken_by_index_in_a_large_vocabulary():
    from rlkl.sampling import kept_set

    # 3000 equally likely tokens, top-k = 7: the 7 lowest indices (a stable sort; an unstable one permutes ties)
    lp = torch.full((3000,), -math.log(3000.0), dtype=torch.float64)
    assert kept_set(lp, top_k=7).nonzero().flatten().tolist() == list(range(7))


def test_sampler_perturbation_and_reported_logprobs():
    from rlkl.sampling import Sampler

    assert Sampler().noise_like((2, 3)) is None  # σ = 0: no perturbation at all
    eps = Sampler(noise=0.5, seed=1).noise_like((20000,))
    # σ·N(0, 1), float64: sample std within 3% of σ = 0.5 (its standard error is σ/√(2n) = 0.5%)
    assert eps.dtype == torch.float64 and abs(eps.std().item() - 0.5) < 0.015 and abs(eps.mean().item()) < 0.02
    z = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float32)
    d = t([0.25, 0.5, -1.0])
    z_e = Sampler().engine_logits(z, d)  # z + perturbation, in the logits' dtype
    assert z_e.dtype == torch.float32 and z_e.tolist() == [0.75, -0.5, 1.0]
    # processed log-probs are log q (after temperature and truncation)
    out = Sampler(temperature=0.5, top_k=2).transform(t([1.0, 0.0, -1.0]))
    assert torch.equal(out.log_reported, out.log_q)


def test_sampler_transform_applies_top_k_and_min_p_and_rejects_nan_and_inf():
    from rlkl.sampling import Sampler

    z = torch.log(t([0.5, 0.3, 0.15, 0.05]))
    assert Sampler(top_k=2).transform(z).kept.tolist() == [True, True, False, False]
    # min-p 0.5: keep π̃ >= 0.25 → tokens 0 and 1; kept mass 0.8
    out = Sampler(min_p=0.5).transform(z)
    assert out.kept.tolist() == [True, True, False, False]
    assert out.log_kept_mass.exp().item() == pytest.approx(0.8, rel=1e-14)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="NaN or \\+inf"):
            Sampler().transform(t([0.0, bad, 1.0]))
