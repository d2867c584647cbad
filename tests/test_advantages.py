"""Tests of rlkl.advantages: GRPO/Dr. GRPO/RLOO/batch advantages, future return, reward-to-go, FRPO advantages.

Hand-computed values (arithmetic in comments), slow loop references (per group, per token), hypothesis properties
(permutation equivariance, shift/scale invariance, FRPO at β = 0), peer parity with verl and TRL (the peers' source, restated in docs/integrations.md
§1.1, §2.2) and input validation. float64 identities at 1e-12; float32 at rtol 1e-5 / atol 1e-6.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rlkl.advantages import (ADVANTAGE_KINDS, batch_standardized, compute_advantages, frpo_advantages,
                             frpo_regularizer, future_return, group_centered, group_standardized, leave_one_out,
                             reward_to_go)
from strategies import finite_floats, float_tensors, grouped_rewards, masks, token_batches

F64 = torch.float64


def t(x, dtype=F64) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-12, atol: float = 1e-12) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b.to(a.dtype), rtol=rtol, atol=atol))


# ---------------------------------------------------------------------------------------------------------------
# (1) hand-computed values


def test_grpo_advantage_by_hand():
    r = t([1.0, 0.0, 0.0, 1.0])
    # μ = ½; Σ(r − μ)² = 4·¼ = 1; Bessel var = 1/3, σ = 0.5773502692; A = ±½/(σ + 1e-6) = ±0.8660239038 (verl)
    a = group_standardized(r, 4, eps=1e-6, std="bessel")
    assert close(a, t([1, -1, -1, 1]) * 0.8660239037870368)
    # TRL ε = 1e-4: ±½/(0.5773502692 + 1e-4) = ±0.8658754298
    assert close(group_standardized(r, 4, eps=1e-4), t([1, -1, -1, 1]) * 0.8658754297607016)
    # population std (FRPO Alg. 1): σ = ½, A = ±½/(½ + 1e-6) = ±0.999998; with ε = 0 exactly ±1
    assert close(group_standardized(r, 4, std="population"), t([1, -1, -1, 1]) * 0.999998000004)
    assert torch.equal(group_standardized(r, 4, eps=0.0, std="population"), t([1.0, -1.0, -1.0, 1.0]))
    # two groups of 2: (3, 1) → μ = 2, Bessel σ = √2, A = ±1/√2; (5, 5) all equal → 0 (no 0/0 even with ε = 0)
    a = group_standardized(t([3.0, 1.0, 5.0, 5.0]), 2, eps=0.0)
    assert close(a, t([1 / math.sqrt(2), -1 / math.sqrt(2), 0.0, 0.0]))


def test_centred_leave_one_out_and_batch_by_hand():
    r = t([1.0, 0.0, 0.0, 1.0])
    # Dr. GRPO: R − μ = ±½
    assert torch.equal(group_centered(r, 4), t([0.5, -0.5, -0.5, 0.5]))
    # RLOO: A_1 = 1 − mean(0, 0, 1) = 1 − ⅓ = ⅔ = G/(G−1)·(R − μ) = 4/3·½; A_2 = 0 − mean(1, 0, 1) = −⅔
    assert close(leave_one_out(r, 4), t([2, -2, -2, 2]) / 3.0)
    # batch: [1, 2, 3, 4], μ = 2.5, Bessel σ = √(5/3) = 1.2909944; A = [−1.5, −.5, .5, 1.5]/σ
    a = batch_standardized(t([1.0, 2.0, 3.0, 4.0]), eps=0.0)
    assert close(a, t([-1.161895003862225, -0.3872983346207417, 0.3872983346207417, 1.161895003862225]))
    # "raw": the reward itself
    assert torch.equal(compute_advantages("raw", r, 1), r)


def test_future_return_and_reward_to_go_by_hand():
    v = t([[1.0, 2.0, 3.0, 4.0]])
    m = torch.tensor([[True, True, True, False]])
    # inclusive Σ_{j≥t}: [1+2+3, 2+3, 3, 0 (padding)] = [6, 5, 3, 0]; exclusive Σ_{j>t}: [5, 3, 0, 0]
    assert torch.equal(future_return(v, m, include_current=True), t([[6.0, 5.0, 3.0, 0.0]]))
    assert torch.equal(future_return(v, m, include_current=False), t([[5.0, 3.0, 0.0, 0.0]]))
    # γ = ½, rewards [1, 1, 1]: G = [1 + ½ + ¼, 1 + ½, 1] = [1.75, 1.5, 1]
    assert torch.equal(reward_to_go(t([[1.0, 1.0, 1.0]]), torch.ones(1, 3, dtype=torch.bool), 0.5),
                       t([[1.75, 1.5, 1.0]]))
    # a hole in the mask is skipped (not discounted): r = [1, 9 (masked), 1] → G_2 = 1, G_1 = 0, G_0 = 1 + ½·1 = 1.5
    assert torch.equal(reward_to_go(t([[1.0, 9.0, 1.0]]), torch.tensor([[True, False, True]]), 0.5),
                       t([[1.5, 0.0, 1.0]]))
    # γ = 1 is the inclusive future return
    assert torch.equal(reward_to_go(v, m), future_return(v, m, True))


def test_frpo_advantages_by_hand():
    # rewards (1, 0), G = 2, population std, ε = 0: A_out = ±1. Row 0 log ratios [0.1, 0.2, 0.3]; reverse KL
    # reg_t = Σ_{j≥t} δ_j = [0.6, 0.5, 0.3]; β = 0.1 → A = 1 − [0.06, 0.05, 0.03] = [0.94, 0.95, 0.97].
    # Row 1: log ratios [−0.2, 0 (masked), 0 (masked)] → reg = [−0.2, 0, 0] → A = [−1 + 0.02, 0, 0] = [−0.98, 0, 0]
    logp_ref = t([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    logp = logp_ref + t([[0.1, 0.2, 0.3], [-0.2, 7.0, 7.0]])
    m = torch.tensor([[True, True, True], [True, False, False]])
    a = frpo_advantages(t([1.0, 0.0]), logp, logp_ref, m, 2, beta=0.1, eps=0.0)
    assert close(a, t([[0.94, 0.95, 0.97], [-0.98, 0.0, 0.0]]))
    # forward KL, f = −log u: f'(u) − f'(1) = 1 − e^{−δ}; f(u)/u = −δ e^{−δ}. Row 0 with δ = [0.1, 0.2]:
    # reg_0 = (1 − e^{−0.1}) + (−0.2 e^{−0.2}) = 0.0951626 − 0.1637462 = −0.0685836; reg_1 = 1 − e^{−0.2} = 0.1812692
    reg = frpo_regularizer(t([[0.1, 0.2]]), torch.ones(1, 2, dtype=torch.bool), "forward_kl")
    assert close(reg, t([[-0.0685835686515559, 0.18126924692201818]]))
    # strictly-future only (local term supplied by a loss): reg = [−0.1637462, 0]
    reg = frpo_regularizer(t([[0.1, 0.2]]), torch.ones(1, 2, dtype=torch.bool), "forward_kl", include_local=False)
    assert close(reg, t([[-0.2 * math.exp(-0.2), 0.0]]))


# ---------------------------------------------------------------------------------------------------------------
# (2) slow loop references


def loop_group_standardized(r: list[float], G: int, eps: float, std: str) -> list[float]:
    out = []
    for g in range(0, len(r), G):
        grp = r[g:g + G]
        mu = sum(grp) / G
        if all(x == grp[0] for x in grp):  # all-equal group: zero advantage (tested on its own below)
            out += [0.0] * G
            continue
        var = sum((x - mu) ** 2 for x in grp) / (G if std == "population" else G - 1)
        out += [(x - mu) / (math.sqrt(var) + eps) for x in grp]
    return out


def loop_group_centered(r: list[float], G: int) -> list[float]:
    out = []
    for g in range(0, len(r), G):
        grp = r[g:g + G]
        out += [x - sum(grp) / G for x in grp]
    return out


def loop_leave_one_out(r: list[float], G: int) -> list[float]:
    out = []
    for g in range(0, len(r), G):
        grp = r[g:g + G]
        out += [grp[i] - sum(grp[j] for j in range(G) if j != i) / (G - 1) for i in range(G)]
    return out


def loop_future_return(v: list[list[float]], m: list[list[bool]], include_current: bool) -> list[list[float]]:
    out = []
    for row, mrow in zip(v, m):
        T = len(row)
        res = []
        for t_ in range(T):
            start = t_ if include_current else t_ + 1
            res.append(sum(row[j] for j in range(start, T) if mrow[j]) if mrow[t_] else 0.0)
        out.append(res)
    return out


def loop_reward_to_go(r: list[list[float]], m: list[list[bool]], gamma: float) -> list[list[float]]:
    out = []
    for row, mrow in zip(r, m):
        res = []
        for t_ in range(len(row)):
            if not mrow[t_]:
                res.append(0.0)
                continue
            total, k = 0.0, 0
            for j in range(t_, len(row)):
                if mrow[j]:
                    total += gamma ** k * row[j]
                    k += 1
            res.append(total)
        out.append(res)
    return out


# f and f' in the u domain for the FRPO loop reference
F_AND_PRIME = {
    "reverse_kl": (lambda u: u * math.log(u), lambda u: math.log(u) + 1.0),
    "forward_kl": (lambda u: -math.log(u), lambda u: -1.0 / u),
    "reverse_kl_k3": (lambda u: u * math.log(u) - u + 1.0, lambda u: math.log(u)),
    "pearson": (lambda u: (u - 1.0) ** 2, lambda u: 2.0 * (u - 1.0)),
    "hellinger": (lambda u: (math.sqrt(u) - 1.0) ** 2, lambda u: 1.0 - u ** -0.5),
    "jensen_shannon": (lambda u: 0.5 * (u * math.log(u) - (u + 1) * math.log((u + 1) / 2)),
                       lambda u: 0.5 * math.log(2 * u / (u + 1))),
}


@given(rg=grouped_rewards(), eps=st.sampled_from([0.0, 1e-6, 1e-4]), std=st.sampled_from(["population", "bessel"]))
def test_group_advantages_match_loops(rg, eps, std):
    r, G = rg
    rl = r.tolist()
    assert close(group_standardized(r, G, eps, std), t(loop_group_standardized(rl, G, eps, std)))
    assert close(group_centered(r, G), t(loop_group_centered(rl, G)))
    assert close(leave_one_out(r, G), t(loop_leave_one_out(rl, G)))
    assert close(compute_advantages("group_standardized", r, G, eps, std), group_standardized(r, G, eps, std))
    assert close(compute_advantages("group_centered", r, G), group_centered(r, G))
    assert close(compute_advantages("leave_one_out", r, G), leave_one_out(r, G))
    # batch standardization is group standardization with one group of size B
    assert close(batch_standardized(r, eps, std), t(loop_group_standardized(rl, len(rl), eps, std)))
    assert close(compute_advantages("batch_standardized", r, G, eps, std), batch_standardized(r, eps, std))


@given(data=st.data(), B=st.integers(1, 4), T=st.integers(1, 7), gamma=st.sampled_from([1.0, 0.9, 0.5, 0.0]))
def test_future_return_and_reward_to_go_match_loops(data, B, T, gamma):
    v = data.draw(float_tensors((B, T), -3.0, 3.0))
    m = data.draw(masks(B, T))
    for inc in (True, False):
        assert close(future_return(v, m, inc), t(loop_future_return(v.tolist(), m.tolist(), inc)))
    assert close(reward_to_go(v, m, gamma), t(loop_reward_to_go(v.tolist(), m.tolist(), gamma)))


@given(tb=token_batches(log_ratio_bound=1.5), beta=finite_floats(0.0, 0.5), include_local=st.booleans(),
       divergence=st.sampled_from(list(F_AND_PRIME)))
def test_frpo_advantages_match_loop(tb, beta, include_local, divergence):
    f, fp = F_AND_PRIME[divergence]
    G = tb.group_size
    a_out = loop_group_standardized(tb.rewards.tolist(), G, 1e-6, "population")
    lr = (tb.logp - tb.logp_ref).tolist()
    m = tb.mask.tolist()
    ref = []
    for i, (row, mrow) in enumerate(zip(lr, m)):
        res = []
        for t_ in range(len(row)):
            if not mrow[t_]:
                res.append(0.0)
                continue
            reg = fp(math.exp(row[t_])) - fp(1.0) if include_local else 0.0
            reg += sum(f(math.exp(row[j])) / math.exp(row[j]) for j in range(t_ + 1, len(row)) if mrow[j])
            res.append(a_out[i] - beta * reg)
        ref.append(res)
    got = frpo_advantages(tb.rewards, tb.logp, tb.logp_ref, tb.mask, G, beta, divergence, include_local)
    assert close(got, t(ref), rtol=1e-11, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# (3) properties


@st.composite
def within_group_permutations(draw, B: int, G: int) -> torch.Tensor:
    perm = []
    for g in range(0, B, G):
        perm += [g + i for i in draw(st.permutations(range(G)))]
    return torch.tensor(perm)


@given(data=st.data(), eps=st.sampled_from([0.0, 1e-6, 1e-4]), std=st.sampled_from(["population", "bessel"]))
def test_group_advantages_are_permutation_equivariant(data, eps, std):
    r, G = data.draw(grouped_rewards())
    B = r.shape[0]
    perm = data.draw(within_group_permutations(B, G))
    # permuting responses within their group permutes the advantages the same way (exchangeability)
    for fn in (lambda x: group_standardized(x, G, eps, std), lambda x: group_centered(x, G),
               lambda x: leave_one_out(x, G), lambda x: batch_standardized(x, eps, std)):
        assert close(fn(r[perm]), fn(r)[perm], rtol=1e-13, atol=1e-13)
    # permuting whole groups (blocks) permutes the blocks of advantages
    block = torch.tensor(data.draw(st.permutations(range(B // G))))
    idx = (block[:, None] * G + torch.arange(G)[None, :]).reshape(-1)
    assert close(group_standardized(r[idx], G, eps, std), group_standardized(r, G, eps, std)[idx], rtol=1e-13,
                 atol=1e-13)


@given(rg=grouped_rewards(kind="continuous"), shift=finite_floats(-5.0, 5.0), scale=finite_floats(0.1, 10.0))
def test_shift_scale_invariance_and_zero_sum(rg, shift, scale):
    r, G = rg
    # group-mean baselines are shift invariant; std normalization (ε = 0) is also scale invariant
    assert close(group_centered(r + shift, G), group_centered(r, G), rtol=1e-9, atol=1e-9)
    assert close(leave_one_out(r + shift, G), leave_one_out(r, G), rtol=1e-9, atol=1e-9)
    # (groups whose rewards are all equal are excluded here: with ε = 0 their advantage is round-off noise of
    # order 1, see test_all_equal_group_gives_zero_advantage)
    spread = r.view(-1, G).std(-1) > 1e-3
    a = group_standardized(r, G, eps=0.0).view(-1, G)[spread]
    b = group_standardized(scale * r + shift, G, eps=0.0).view(-1, G)[spread]
    assert close(b, a, rtol=1e-8, atol=1e-8)
    # every group's advantages sum to zero; standardized ones (ε = 0) have Bessel std 1
    if a.numel():
        assert bool((a.sum(-1).abs() < 1e-10).all())
        assert bool(((a.std(-1) - 1).abs() < 1e-10).all())
    for adv in (group_centered(r, G), leave_one_out(r, G)):
        assert bool((adv.view(-1, G).sum(-1).abs() < 1e-10).all())


@pytest.mark.parametrize("value,G", [(0.1, 3), (1.7201, 5), (-0.3, 6), (2.0 / 3.0, 4), (1.0, 4)])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
@pytest.mark.parametrize("std", ["population", "bessel"])
def test_all_equal_group_gives_zero_advantage(value, G, eps, std):
    # The docstring promises "all-equal groups give 0" and the code comment "with ε = 0 this avoids 0/0". A group of
    # G equal rewards whose float mean is off by one ulp (0.1·3/3 ≠ 0.1) has std ~1e-17 > 0, so with ε = 0 the
    # advantage is (r − μ)/σ = O(1) round-off noise (rewards (0.1, 0.1, 0.1) give −0.8165 each, not summing to 0).
    # With ε = 1e-6 the noise is ~1e-11 (as in verl/TRL); the test allows 1e-9.
    r = torch.full((2 * G,), value, dtype=F64)
    r[G:] = torch.linspace(0.0, 1.0, G, dtype=F64)  # a second, ordinary group
    a = group_standardized(r, G, eps=eps, std=std)
    assert a[:G].abs().max().item() <= 1e-9, a[:G]
    assert batch_standardized(torch.full((G,), value, dtype=F64), eps=eps, std=std).abs().max().item() <= 1e-9


@given(tb=token_batches(), divergence=st.sampled_from(["reverse_kl", "forward_kl", "hellinger", "alpha=0.5"]))
def test_frpo_with_zero_beta_is_group_standardized_broadcast(tb, divergence):
    got = frpo_advantages(tb.rewards, tb.logp, tb.logp_ref, tb.mask, tb.group_size, 0.0, divergence)
    expected = group_standardized(tb.rewards, tb.group_size, 1e-6, "population")[:, None] * tb.mask
    assert torch.equal(got, expected)
    # the reverse-KL regularizer is FRPO's inclusive future sum of log ratios (Eq. 4.5); without the local term it
    # is the strictly-future sum
    lr = tb.logp - tb.logp_ref
    assert close(frpo_regularizer(lr, tb.mask, "reverse_kl"), future_return(lr, tb.mask, True), atol=1e-12)
    assert close(frpo_regularizer(lr, tb.mask, "reverse_kl", include_local=False), future_return(lr, tb.mask, False))


@given(tb=token_batches())
def test_frpo_advantages_carry_no_gradient_and_zero_padding(tb):
    logp = tb.logp.clone().requires_grad_()
    a = frpo_advantages(tb.rewards, logp, tb.logp_ref, tb.mask, tb.group_size, 0.3)
    assert not a.requires_grad  # sg[·]: the regularizer enters as an advantage
    assert bool((a[~tb.mask] == 0).all())
    out = future_return(tb.logp, tb.mask, True)
    assert bool((out[~tb.mask] == 0).all())


@given(tb=token_batches())
def test_float32_paths(tb):
    # float32 in → float32 out, equal to float64 within rtol 1e-5 / atol 1e-5 (advantages are O(1))
    f = lambda x: x.float()  # noqa: E731
    r, G = tb.rewards, tb.group_size
    for fn in (lambda x: group_standardized(x, G), lambda x: group_centered(x, G), lambda x: leave_one_out(x, G)):
        got = fn(f(r))
        assert got.dtype == torch.float32 and close(got, fn(r), rtol=1e-5, atol=1e-5)
    lr = tb.logp - tb.logp_ref
    got = future_return(f(lr), tb.mask, True)
    assert got.dtype == torch.float32 and close(got, future_return(lr, tb.mask, True), rtol=1e-5, atol=1e-5)
    got = frpo_advantages(f(r), f(tb.logp), f(tb.logp_ref), tb.mask, G, 0.1)
    ref = frpo_advantages(r, tb.logp, tb.logp_ref, tb.mask, G, 0.1)
    assert got.dtype == torch.float32 and close(got, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# peer parity with verl and TRL (their source, restated in docs/integrations.md), formulas restated as loops


def verl_grpo_outcome_advantage(r: list[float], G: int, eps: float = 1e-6, norm_by_std: bool = True) -> list[float]:
    """verl ``grpo`` (the peer's source): A = (R − μ_g)/(σ_g + ε), σ Bessel (torch.std); size-1 group: μ = 0, σ = 1."""
    out = []
    for g in range(0, len(r), G):
        grp = torch.tensor(r[g:g + G], dtype=F64)
        mu, sigma = (grp.mean(), grp.std()) if G > 1 else (torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64))
        out += ((grp - mu) / (sigma + eps) if norm_by_std else grp - mu).tolist()
    return out


def trl_grpo_advantage(r: list[float], G: int) -> list[float]:
    """TRL GRPOTrainer ``scale_rewards="group"`` (the peer's source): (R − μ)/(σ + 1e-4), σ Bessel."""
    grp = torch.tensor(r, dtype=F64).view(-1, G)
    mu = grp.mean(-1, keepdim=True).repeat_interleave(G, -1)
    sd = grp.std(-1, keepdim=True).repeat_interleave(G, -1)
    return ((grp - mu) / (sd + 1e-4)).reshape(-1).tolist()


@given(rg=grouped_rewards())
def test_advantages_match_verl_and_trl(rg):
    r, G = rg
    rl = r.tolist()
    # atol 1e-9: for an all-equal group whose float mean is off by an ulp, verl/TRL return round-off noise
    # (~1e-16/(σ + ε) ≈ 2e-10) where rlkl returns exactly 0 (deliberate)
    assert close(group_standardized(r, G, eps=1e-6, std="bessel"), t(verl_grpo_outcome_advantage(rl, G)), atol=1e-9)
    assert close(group_standardized(r, G, eps=1e-4, std="bessel"), t(trl_grpo_advantage(rl, G)), atol=1e-9)
    # Dr. GRPO = verl grpo with norm_adv_by_std_in_grpo=False = TRL scale_rewards="none": R − μ
    assert close(group_centered(r, G), t(verl_grpo_outcome_advantage(rl, G, norm_by_std=False)))
    # RLOO (verl rloo, TRL RLOOTrainer): R_i − mean_{j≠i} R_j = G/(G−1)(R_i − μ)
    assert close(leave_one_out(r, G), G / (G - 1) * group_centered(r, G), rtol=1e-12, atol=1e-12)


def test_deliberate_difference_singleton_groups():
    # Deliberate difference: verl's loop GRPO gives a group of size 1 μ = 0, σ = 1 (advantage = raw reward), and its
    # vectorized RLOO gives 0; rlkl refuses a one-sample group (it has no baseline) with a ValueError.
    r = t([0.3, 1.0])
    assert verl_grpo_outcome_advantage(r.tolist(), 1) == pytest.approx([0.3 / (1 + 1e-6), 1.0 / (1 + 1e-6)])
    for fn in (group_standardized, group_centered, leave_one_out):
        with pytest.raises(ValueError, match="group_size >= 2"):
            fn(r, 1)
    # all-equal groups agree with verl/TRL: 0/(0 + ε) = 0
    assert torch.equal(group_standardized(t([2.0, 2.0]), 2), t([0.0, 0.0]))


# ---------------------------------------------------------------------------------------------------------------
# input validation


def test_group_size_errors():
    r = t([1.0, 0.0, 1.0, 0.0, 1.0])
    for fn in (group_standardized, group_centered, leave_one_out):
        with pytest.raises(ValueError, match="group_size=2 does not divide the batch size 5"):
            fn(r, 2)
        for bad in (0, -2, 2.0, True):
            with pytest.raises(ValueError, match="group_size must be a positive int"):
                fn(r, bad)


def test_reward_errors():
    with pytest.raises(ValueError, match="rewards must have 1 dimensions"):
        group_standardized(t([[1.0, 0.0]]), 2)
    with pytest.raises(ValueError, match="rewards contains non-finite"):
        group_centered(t([1.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="rewards must be a floating tensor"):
        leave_one_out(torch.tensor([1, 0]), 2)
    with pytest.raises(ValueError, match=r"eps must be in \[0, inf\)"):
        group_standardized(t([1.0, 0.0]), 2, eps=-1.0)
    with pytest.raises(ValueError, match="std='unbiased'"):
        group_standardized(t([1.0, 0.0]), 2, std="unbiased")
    with pytest.raises(ValueError, match="at least 2 rewards"):
        batch_standardized(t([1.0]))
    with pytest.raises(ValueError, match="advantage='grpo'"):
        compute_advantages("grpo", t([1.0, 0.0]), 2)
    assert "group_standardized" in ADVANTAGE_KINDS


def test_token_tensor_errors():
    v = t([[1.0, 2.0]])
    with pytest.raises(ValueError, match="selects no token"):
        future_return(v, torch.zeros(1, 2, dtype=torch.bool), True)
    with pytest.raises(ValueError, match="bool tensor"):
        future_return(v, torch.ones(1, 2), True)
    with pytest.raises(ValueError, match=r"mask has shape \(1, 3\), expected \(1, 2\)"):
        future_return(v, torch.ones(1, 3, dtype=torch.bool), True)
    with pytest.raises(ValueError, match="values must have 2 dimensions"):
        future_return(t([1.0, 2.0]), torch.ones(2, dtype=torch.bool), True)
    with pytest.raises(ValueError, match="include_current must be a bool"):
        future_return(v, torch.ones(1, 2, dtype=torch.bool), 1)
    with pytest.raises(ValueError, match="non-finite"):
        reward_to_go(t([[1.0, float("inf")]]), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="gamma must be in"):
        reward_to_go(v, torch.ones(1, 2, dtype=torch.bool), gamma=1.5)


def test_frpo_errors():
    lp = t([[-1.0, -2.0], [-1.0, -0.5]])
    m = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"rewards has shape \(3,\), expected \(2,\)"):
        frpo_advantages(t([1.0, 0.0, 1.0]), lp, lp, m, 2, 0.1)
    with pytest.raises(ValueError, match=r"beta must be in \[0, inf\)"):
        frpo_advantages(t([1.0, 0.0]), lp, lp, m, 2, -0.1)
    with pytest.raises(ValueError, match="unknown f-divergence"):
        frpo_advantages(t([1.0, 0.0]), lp, lp, m, 2, 0.1, divergence="kl")
    with pytest.raises(ValueError, match="logp_ref has shape"):
        frpo_advantages(t([1.0, 0.0]), lp, lp[:, :1], m, 2, 0.1)
    with pytest.raises(ValueError, match="share one dtype"):
        frpo_advantages(t([1.0, 0.0]), lp, lp.float(), m, 2, 0.1)
    with pytest.raises(ValueError, match="group_size=3 does not divide"):
        frpo_advantages(t([1.0, 0.0]), lp, lp, m, 3, 0.1)


def test_frpo_mixed_reward_dtype_raises():
    # api.md: "float64 and float32 both accepted (all inputs one dtype)"; nothing is promoted silently.
    # float32 rewards with float64 log-probs (or the reverse) must raise instead of returning a promoted tensor.
    lp = t([[-1.0, -2.0], [-1.0, -0.5]])
    m = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="dtype"):
        frpo_advantages(t([1.0, 0.0], torch.float32), lp, lp, m, 2, 0.1)
    with pytest.raises(ValueError, match="dtype"):
        frpo_advantages(t([1.0, 0.0]), lp.float(), lp.float(), m, 2, 0.1)
