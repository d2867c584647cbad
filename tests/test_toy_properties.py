"""Hypothesis properties over random MDPs: exact methods are exact, biased methods show the predicted bias.

Random trees: vocabulary 2–4, horizon 1–4, 1–3 prompts, EOS on/off, logits in a bounded range, binary and real
rewards, β ∈ [0, 1], G ∈ 2..8, on- and off-policy. Settings come from the registered profiles (conftest.py).
"""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from rlkl.components import AggMode, Aggregation, KLLoss, Raw, Reinforce
from rlkl.objective import Objective
from rlkl.methods import Method, REGISTRY
from rlkl.toy.audit import audit_one
from rlkl.toy.expected import coupling, expected_gradient
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.objectives import local_score_field, objective_gradient
from rlkl.toy.policies import LogLinearPolicy, TabularPolicy

GROUP_BUDGET = 20_000


def _fit_group_size(method, mdp, G):
    """Largest g ≤ G whose exact enumeration stays within the budget (binomial route: any G)."""
    N = mdp.num_responses
    c = coupling(method, mdp)
    if c == "none" or (c == "rewards" and mdp.is_binary):
        return G
    if c == "rewards":  # real rewards: classes are the distinct values
        K = int(torch.unique(mdp.rewards, dim=None).numel())
        K = min(K, N)
    else:
        K = N
    g = G
    while g > 2 and N * math.comb(K + g - 2, g - 1) > GROUP_BUDGET:
        g -= 1
    return g


@st.composite
def setups(draw, binary=None, allow_off=True, min_horizon=1, zero_rewards=False):
    V = draw(st.integers(2, 4))
    T = draw(st.integers(min_horizon, 4 if V <= 3 else 3))
    P = draw(st.integers(1, 3))
    eos = draw(st.booleans())
    reward = ("binary" if draw(st.booleans()) else "real") if binary is None else ("binary" if binary else "real")
    seed = draw(st.integers(0, 10_000))
    scale = draw(st.floats(0.2, 2.0))
    mdp = TreeMDP.random(V, T, P, eos=eos, reward=reward, seed=seed)
    if zero_rewards:  # isolate the KL part of a loss
        mdp = mdp.with_rewards(torch.zeros_like(mdp.rewards))
    if draw(st.booleans()):
        pi = TabularPolicy.random(mdp, scale, seed=seed + 1)
        ref = TabularPolicy.random(mdp, scale, seed=seed + 2).detached()
    else:
        pi = LogLinearPolicy.random(mdp, dim=3, scale=scale, seed=seed + 1)
        ref = pi.with_theta(torch.zeros(3, dtype=torch.float64)).detached()
    off = allow_off and draw(st.booleans())
    old = pi.perturbed(0.3, seed + 3).detached() if off else None
    beta = draw(st.floats(0.0, 1.0))
    G = draw(st.integers(2, 8))
    return dict(mdp=mdp, pi=pi, ref=ref, old=old, beta=beta, G=G, off=off)


def _rel(a, b):
    nb = float(b.norm())
    return float((a - b).norm()) / (nb if nb > 0 else 1.0)


EXACT_ON_POLICY = ["reinforce", "rloo", "ppo_k1_rtg", "frpo", "frpo_k3", "frpo_forward_kl",
                   "rpg_reinforce_fkl_seq", "rpg_reinforce_rkl_seq", "rpg_reinforce_ufkl_seq",
                   "rpg_reinforce_urkl_seq"]
EXACT_OFF_POLICY = {"rpg_reinforce_fkl_seq", "rpg_reinforce_rkl_seq", "rpg_reinforce_ufkl_seq",
                    "rpg_reinforce_urkl_seq"}


@given(st.data(), st.sampled_from(EXACT_ON_POLICY))
def test_methods_declared_exact_match_the_true_gradient(data, name):
    method = REGISTRY[name]
    binary = True if method.objective.utility in ("finite_group", "arcsin") else None
    s = data.draw(setups(binary=binary, allow_off=name in EXACT_OFF_POLICY))
    method = method.replace(beta=s["beta"]) if method.has_kl else method
    mdp, pi, ref, old, off = s["mdp"], s["pi"], s["ref"], s["old"], s["off"]
    assert method.predicted_bias_terms(off_policy=off, variable_length=not mdp.fixed_length) == ()
    G = _fit_group_size(method, mdp, s["G"])
    eg = expected_gradient(method, mdp, pi, old, ref, G).grad
    obj = method.bound_objective(G)
    beh = old if old is not None else pi.detached()
    want = -objective_gradient(obj, mdp, pi, ref, beh)  # aggregation seq-mean-token-sum: c = 1
    assert _rel(eg, want) <= 1e-9


BIASED = ["grpo", "grpo_k1_loss", "grpo_k2_loss", "grpo_k3_plus", "grpo_is_k3", "grpo_k1_reward", "no_kl",
          "dr_grpo", "dapo", "rpg_fkl", "rpg_reinforce_urkl", "rpg_reinforce_rkl"]


@given(setups(), st.sampled_from(BIASED))
def test_biased_methods_show_exactly_the_predicted_bias_terms(s, name):
    method = REGISTRY[name]
    method = method.replace(beta=s["beta"]) if method.beta > 0 else method
    mdp = s["mdp"]
    G = _fit_group_size(method, mdp, s["G"])
    res = audit_one(method, mdp, s["pi"], s["old"], s["ref"], G)
    rec = res.record
    if rec["exact"]:
        return  # e.g. β = 0 with nothing else predicted, or degenerate trees
    assert rec["unexplained"] <= 1e-9, rec  # the named terms account for the whole gap
    predicted = set(rec["predicted_terms"])
    tnorm = float(res.target.norm())
    sizes = {k: float(v.norm()) / tnorm for k, v in res.terms.items()}
    # off-policy: per-token ratios (RPG arXiv 2505.17508) and π_old's log-ratios inside a KL reward
    extra = {"token_level_ratio", "stale_kl_reward"} if s["off"] else set()
    significant = {k for k, v in sizes.items() if v > 1e-6}
    assert significant <= predicted | extra, (sizes, rec)  # no unpredicted bias
    vanish = {"clipping"} if s["off"] else set()  # only when some ratio leaves the clip range
    if s["beta"] == 0:
        vanish |= {"forward_direction", "future_kl_missing", "no_kl_gradient", "missing_importance_weight",
                   "fusion_before_normalization", "token_level_reverse"}
    assert predicted - vanish <= set(sizes), (sizes, rec)  # every predicted term is part of the decomposition


def _kl_loss_method(estimator, beta, importance_weight=False, straight_through=False):
    return Method("kl_loss_probe", advantage=Raw(), policy_loss=Reinforce(),
                  kl=KLLoss(estimator, straight_through=straight_through, importance_weight=importance_weight),
                  aggregation=Aggregation(AggMode.SEQ_MEAN_TOKEN_SUM), beta=beta)


@given(setups(min_horizon=2, zero_rewards=True))
def test_kl_losses_follow_local_fields_not_the_sequence_kl(s):
    """k1 loss: 0; k2 (and k3+) loss: local reverse KL ≠ sequence KL (T ≥ 2); k3 loss: local forward KL;
    ρ·k3 off-policy: local reverse KL on π_old's states (FRPO arXiv 2601.10201 §4.5; RPG arXiv 2505.17508 §2.3; docs/theory.md)."""
    beta = max(s["beta"], 0.1)
    mdp, pi, ref, old = s["mdp"], s["pi"], s["ref"], s["old"]
    beh = old if old is not None else pi.detached()
    G = 2
    pg_rev = beta * local_score_field(mdp, pi, ref, lambda d: d, state_policy=beh)
    pg_fwd = beta * local_score_field(mdp, pi, ref, lambda d: -torch.expm1(-d), state_policy=beh)
    seq = -beta * objective_gradient(Objective("none", "reverse_kl", beta=1.0), mdp, pi, ref)
    if old is None:
        g1 = expected_gradient(_kl_loss_method("k1", beta), mdp, pi, None, ref, G).grad
        assert float(g1.norm()) <= 1e-12 * (1 + float(pg_rev.norm()))  # k1 as a loss: nothing
        g2 = expected_gradient(_kl_loss_method("k2", beta), mdp, pi, None, ref, G).grad
        assert _rel(g2, pg_rev) <= 1e-9
        g3p = expected_gradient(_kl_loss_method("k3", beta, straight_through=True), mdp, pi, None, ref, G).grad
        assert _rel(g3p, pg_rev) <= 1e-9
        g3 = expected_gradient(_kl_loss_method("k3", beta), mdp, pi, None, ref, G).grad
        assert _rel(g3, pg_fwd) <= 1e-9
        if not (mdp.has_eos and mdp.vocab_size == 2 and mdp.horizon == 2):  # single-path trees have no future
            assert _rel(pg_rev, seq) > 1e-6  # the future-KL term is missing
    else:
        g3w = expected_gradient(_kl_loss_method("k3", beta, importance_weight=True), mdp, pi, old, ref, G).grad
        assert _rel(g3w, pg_rev) <= 1e-9  # ρ·k3 = local reverse KL under π_old's states, any θ
        g3 = expected_gradient(_kl_loss_method("k3", beta), mdp, pi, old, ref, G).grad
        fwd_old = beta * local_score_field(mdp, pi, ref, lambda d: -torch.expm1(-d), state_policy=beh,
                                           action_policy=beh)
        assert _rel(g3, fwd_old) <= 1e-9  # unweighted k3 off-policy: tokens from π_old, not π_θ


@given(setups(allow_off=False, zero_rewards=True))
def test_frpo_future_return_is_exact_for_the_sequence_reverse_kl(s):
    beta = max(s["beta"], 0.05)
    mdp, pi, ref = s["mdp"], s["pi"], s["ref"]
    m = REGISTRY["frpo"].replace(beta=beta)
    g = expected_gradient(m, mdp, pi, None, ref, min(s["G"], 4)).grad
    want = beta * objective_gradient(Objective("none", "reverse_kl", beta=1.0), mdp, pi, ref) * -1
    assert _rel(g, want) <= 1e-9


@given(setups(binary=True), st.sampled_from(["grpo", "dr_grpo", "frpo", "grpo_is_k3", "rpg_reinforce_urkl"]))
def test_tuples_and_binomial_routes_agree(s, name):
    mdp = s["mdp"]
    method = REGISTRY[name].replace(beta=s["beta"]) if REGISTRY[name].beta > 0 else REGISTRY[name]
    N = mdp.num_responses
    G = s["G"]
    while G > 2 and N**G > 4000:
        G -= 1
    if N**G > 4000:
        return
    a = expected_gradient(method, mdp, s["pi"], s["old"], s["ref"], G, route="tuples").grad
    class_by = "reward" if coupling(method, mdp) in ("none", "rewards") else "response"  # token-mean + EOS: full
    b = expected_gradient(method, mdp, s["pi"], s["old"], s["ref"], G, route="exchangeable", class_by=class_by).grad
    assert _rel(b, a) <= 1e-12
