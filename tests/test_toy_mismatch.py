"""The exact engine behind a sampler: q, kept masses, T(π_θ), every correction's exact expected gradient against an
independent all-G-tuple Python loop, Monte Carlo within its standard errors, the bias audit and the variance."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rlkl.components import MaskReplay, correction_from_spec
from rlkl.methods import REGISTRY, RolloutBatch
from rlkl.sampling import Sampler
from rlkl.toy.audit import make_setup
from rlkl.toy.expected import _check_sampler_support, expected_gradient
from rlkl.toy.mdp import TreeMDP
from rlkl.toy.mismatch import (DEFAULT_CORRECTIONS, audit_mismatch, exact_group_variance, formula_gradient,
                               reference_weights)
from rlkl.toy.montecarlo import mc_gradient
from rlkl.toy.policies import TabularPolicy
from rlkl.toy.samplers import SampledPolicy, TransformedPolicy, deployed_policy, replayed_policy

CORRECTIONS = DEFAULT_CORRECTIONS + ("token_is", "seq_is", "seq_tis:1.2", "gm:1.1")


def _setup(V=3, T=2, P=1, eos=False, seed=0):
    mdp = TreeMDP.random(V, T, P, eos=eos, reward="binary", seed=seed)
    pi, _, ref = make_setup(mdp, seed)
    return mdp, pi, ref


# ------------------------------------------------------------------------------------------------ an independent q
def _node_q(logits: list[float], s: Sampler) -> tuple[list[float], list[bool], list[float]]:
    """q, kept set and reported log-probs of one node, written out with Python sorting (reference)."""
    z = torch.tensor(logits, dtype=torch.float64)
    if s.dtype.value != "float64":
        z = z.to(getattr(torch, s.dtype.value)).to(torch.float64)
    ze = [float(v) for v in z]
    m = max(ze)
    pt = [math.exp((v - m) / s.temperature) for v in ze]
    tot = sum(pt)
    pt = [v / tot for v in pt]
    order = sorted(range(len(pt)), key=lambda a: (-pt[a], a))
    kept = [p > 0 for p in pt]
    if s.top_k is not None:
        for a in order[s.top_k:]:
            kept[a] = False
    if s.top_p < 1:
        mass = sum(pt[a] for a in order if kept[a])
        before = 0.0
        for a in order:
            if not kept[a]:
                continue
            if before >= s.top_p:
                kept[a] = False
            before += pt[a] / mass
    if s.min_p > 0:
        kept = [k and pt[a] >= s.min_p * max(pt) for a, k in enumerate(kept)]
    S = sum(p for p, k in zip(pt, kept) if k)
    q = [p / S if k else 0.0 for p, k in zip(pt, kept)]
    raw_tot = sum(math.exp(v - m) for v in ze)
    raw = [v - m - math.log(raw_tot) for v in ze]
    rep = [math.log(v) if v > 0 else float("-inf") for v in q] if s.logprobs.value == "processed" else raw
    return q, kept, rep


def brute_force(method, mdp, pi, ref, sampler, G):
    """Σ over prompts and ordered G-tuples of Π q(y_i) ∇_θ method.loss(group), one autograd pass per tuple."""
    e = mdp.enumerate()
    P, N, T = mdp.num_prompts, mdp.num_responses, mdp.horizon
    nlp0 = pi.node_log_probs().detach()
    nlp_ref = ref.node_log_probs().detach()
    nodes = {(x, s): _node_q(nlp0[x, s].tolist(), sampler) for x in range(P) for s in range(mdp.num_nodes)}
    replay = method.correction.replays_kept_set
    nlp = pi.node_log_probs()  # one graph to θ, reused by every tuple
    total = torch.zeros_like(pi.theta)
    for x in range(P):
        rows, qy = [], []
        for n in range(N):  # per response: differentiable log-probs and the rollout data, written out token by token
            L = int(e.lengths[n])
            lp, lo, lr, rep, km, p = [], [], [], [], [], 1.0
            for t in range(T):
                if t >= L:
                    lp.append(torch.zeros((), dtype=torch.float64))
                    lo.append(0.0), lr.append(0.0), rep.append(0.0), km.append(0.0)
                    continue
                s, a = int(e.node_index[n, t]), int(e.tokens[n, t])
                q, kept, reported = nodes[(x, s)]
                p *= q[a]
                k = torch.tensor(kept)
                mass_old = float(torch.logsumexp(nlp0[x, s][k], 0))
                shift = torch.logsumexp(nlp[x, s][k], 0) if replay else 0.0  # replay: renormalize over K_s
                lp.append(nlp[x, s, a] - shift)
                lo.append(float(nlp0[x, s, a]) - (mass_old if replay else 0.0))
                lr.append(float(nlp_ref[x, s, a]))
                rep.append(reported[a])
                km.append(mass_old)
            qy.append(p)
            rows.append((torch.stack(lp), lo, lr, rep, km, float(mdp.rewards[x, n]), L))
        for tup in itertools.product(range(N), repeat=G):
            prob = float(mdp.prompt_probs[x]) * math.prod(qy[n] for n in tup)
            if prob == 0.0:
                continue
            sel = [rows[n] for n in tup]
            f = lambda i: torch.tensor([r[i] for r in sel], dtype=torch.float64)
            mask = torch.arange(T)[None, :] < torch.tensor([r[6] for r in sel])[:, None]
            batch = RolloutBatch(f(1), f(2), mask, f(5), G, logp_rollout=f(3), kept_logmass=f(4))
            loss, _ = method.loss(torch.stack([r[0] for r in sel]), batch)
            (g,) = torch.autograd.grad(loss, pi.theta, retain_graph=True, allow_unused=True)
            if g is not None:
                total = total + prob * g
    return total


def _rel(a, b):
    return float((a - b).norm() / max(b.norm(), 1e-300))


# ------------------------------------------------------------------------------------------------ samplers on trees
def test_sampled_policy_is_q_with_the_kept_mass_identity():
    mdp, pi, _ = _setup(V=4, T=2, P=2, seed=1)
    s = Sampler(top_p=0.8, top_k=3)
    sp = SampledPolicy(pi, s)
    out = sp.output()
    assert sp.probs().sum(-1).sub(1).abs().max() < 1e-14
    # π_old/q = S_s for every kept token at every node
    gap = (pi.node_log_probs().detach() - out.log_q) - out.log_kept_mass.unsqueeze(-1)
    assert gap[out.kept].abs().max() < 1e-14
    # token level: log π_old − reported = log S at every enumerated kept token (processed)
    lo, rep, km = pi.token_logp().detach(), sp.reported_token_logp(), sp.kept_logmass(pi)
    ok = torch.isfinite(rep)
    assert (lo - rep - km)[ok].abs().max() < 1e-14
    # T(π_old) = q, and at τ = 1 the replayed π_old is q too
    assert (deployed_policy(pi, sp).node_log_probs() - out.log_q)[out.kept].abs().max() < 1e-14
    assert (replayed_policy(pi, sp).node_log_probs() - out.log_q)[out.kept].abs().max() < 1e-14
    for x in range(mdp.num_prompts):
        for node in range(mdp.num_nodes):
            q, kept, _ = _node_q(pi.node_log_probs()[x, node].tolist(), s)
            assert kept == out.kept[x, node].tolist()
            assert max(abs(a - b) for a, b in zip(q, out.log_q[x, node].exp().tolist())) < 1e-14


def test_transformed_policy_shares_the_parameters():
    mdp, pi, _ = _setup(V=3, T=2, seed=2)
    sp = SampledPolicy(pi, Sampler(top_p=0.7, temperature=0.8))
    dep = deployed_policy(pi, sp)
    assert dep.theta is pi.theta
    v = (dep.probs() * mdp.rewards).sum()
    (g,) = torch.autograd.grad(v, pi.theta)
    assert torch.isfinite(g).all() and g.norm() > 0
    assert (g.view(-1)[~sp.kept.view(-1)].abs() < 1e-15).all()  # cut tokens carry no gradient (0 up to round-off)
    with pytest.raises(ValueError):
        TransformedPolicy(pi, torch.zeros_like(sp.kept))  # empty kept sets


_FEW = ("none", "token_tis:1.2", "seq_mis:2", "gm", "mask_replay")


@pytest.mark.parametrize("name,sampler,G,eos,specs", [
    ("rloo", Sampler(top_p=0.7), 2, False, CORRECTIONS),
    ("grpo", Sampler(top_p=0.7), 2, False, CORRECTIONS),
    ("grpo", Sampler(temperature=0.7, top_k=2, dtype="bfloat16", logprobs="raw"), 2, False, CORRECTIONS),
    ("dapo", Sampler(top_k=2, noise=0.5, seed=1), 3, False, _FEW),
    pytest.param("dapo", Sampler(top_p=0.8, noise=0.5, seed=1), 3, False, CORRECTIONS, marks=pytest.mark.slow),
    ("frpo", Sampler(min_p=0.3, temperature=1.3), 2, True, CORRECTIONS),
])
def test_every_correction_equals_the_brute_force_loop(name, sampler, G, eos, specs):
    mdp, pi, ref = _setup(V=3, T=2, P=1, eos=eos, seed=4)
    for spec in specs:
        m = REGISTRY[name].replace(correction=correction_from_spec(spec))
        m = m.replace(beta=0.3) if m.has_kl else m
        eg = expected_gradient(m, mdp, pi, ref=ref, group_size=G, sampler=sampler)
        bf = brute_force(m, mdp, pi, ref, sampler, G)
        assert _rel(eg.grad, bf) <= 1e-12, (spec, eg.route)


def test_tuples_route_agrees_with_auto():
    mdp, pi, ref = _setup(V=3, T=2, P=2, seed=5)
    s = Sampler(top_p=0.75, temperature=0.9, logprobs="raw")
    for spec in ("seq_mis:2", "mask_replay", "gm"):
        m = REGISTRY["grpo"].replace(correction=correction_from_spec(spec))
        a = expected_gradient(m, mdp, pi, ref=ref, group_size=3, sampler=s)
        b = expected_gradient(m, mdp, pi, ref=ref, group_size=3, sampler=s, route="tuples")
        assert _rel(a.grad, b.grad) <= 1e-12


@pytest.mark.parametrize("spec", ["none", "token_tis:1.5", "seq_mis:1.5", "mask_replay"])
def test_monte_carlo_mean_within_standard_errors(spec):
    mdp, pi, ref = _setup(V=3, T=2, P=2, seed=6)
    s = Sampler(top_p=0.8, temperature=0.8)
    m = REGISTRY["grpo"].replace(correction=correction_from_spec(spec))
    exact = expected_gradient(m, mdp, pi, ref=ref, group_size=3, sampler=s).grad
    mc = mc_gradient(m, mdp, pi, 6000, seed=11, ref=ref, group_size=3, sampler=s, keep_per_group=True)
    live = mc.stderr > 1e-9 * mc.stderr.max()  # coordinates that are zero up to round-off have no noise
    z = ((mc.mean - exact) / mc.stderr)[live]
    assert z.abs().max() < 4.5, z.abs().max()  # 4.5 s.e. over ~40 coordinates: a false alarm has p < 3e-4
    # and no group ever contains a token the sampler cut
    assert ((mc.mean - exact)[~live].abs() < 1e-12).all()
    # the exact variance matches the per-group spread: v_k = ‖ĝ_k − E ĝ‖², mean tr Cov, within 4.5 s.e.
    mean, trcov = exact_group_variance(m, mdp, pi, ref=ref, group_size=3, sampler=s)
    assert _rel(mean, exact) <= 1e-12
    v = ((mc.per_group - exact.reshape(1, -1)) ** 2).sum(1)
    assert abs(float(v.mean()) - trcov) < 4.5 * float(v.std() / math.sqrt(v.shape[0]))


# ------------------------------------------------------------------------------------------------ the audit
@pytest.mark.parametrize("name,sampler", [
    ("rloo", Sampler(top_p=0.8)),
    ("grpo", Sampler(top_p=0.8)),
    ("grpo", Sampler(temperature=0.7, top_k=3, dtype="bfloat16", logprobs="raw")),
    ("frpo", Sampler(top_p=0.7, noise=0.3, logprobs="raw")),
    ("ppo_k1_rtg", Sampler(min_p=0.2, temperature=1.2)),
])
def test_audit_explains_every_gap(name, sampler):
    mdp, pi, ref = _setup(V=4, T=2, P=2, seed=3)
    res = audit_mismatch(REGISTRY[name], mdp, pi, sampler, ref, 3, variance=False)
    assert [r.record["correction"] for r in res] == list(DEFAULT_CORRECTIONS)
    for r in res:
        rec = r.record
        assert rec["formula_error"] <= 1e-12, rec["correction"]
        for reading in ("full", "deployed"):
            assert rec[reading]["unexplained"] <= 1e-10, (rec["correction"], reading, rec[reading])
        if sampler.truncates:
            assert "truncation_mass" in rec["full"]["mismatch_terms"]


def test_mask_replay_is_exact_for_the_deployed_objective_and_caps_never_bind_on_truncation():
    """At τ = 1 with processed log-probs ρ = S <= 1: caps never bind, and mask replay follows −∇J(T(π_θ))."""
    mdp, pi, ref = _setup(V=4, T=2, P=2, seed=3)
    specs = DEFAULT_CORRECTIONS + ("token_is", "seq_is")
    res = {r.record["correction"]: r.record for r in
           audit_mismatch(REGISTRY["rloo"], mdp, pi, Sampler(top_p=0.8), ref, 3, corrections=specs,
                          variance=False)}
    assert res["mask_replay"]["deployed"]["rel_bias"] <= 1e-12
    assert res["none"]["full"]["rel_bias"] > 1e-3 and res["none"]["deployed"]["rel_bias"] > 1e-3
    for spec, plain in (("token_tis:2", "token_is"), ("token_mis:2", "token_is"), ("seq_tis:2", "seq_is"),
                        ("seq_mis:2", "seq_is")):
        assert not set(res[spec]["full"]["mismatch_terms"]) & {"cap_truncation", "rejection"}
        for reading in ("full", "deployed"):
            assert res[spec][reading]["rel_bias"] == pytest.approx(res[plain][reading]["rel_bias"], rel=1e-12)
    assert 0 < res["none"]["kept_mass"] < 1


def test_identity_sampler_changes_nothing():
    mdp, pi, ref = _setup(V=3, T=2, P=2, seed=7)
    for spec in CORRECTIONS:
        m = REGISTRY["grpo"].replace(correction=correction_from_spec(spec))
        a = expected_gradient(m, mdp, pi, ref=ref, group_size=3, sampler=Sampler())
        b = expected_gradient(REGISTRY["grpo"], mdp, pi, ref=ref, group_size=3)
        assert _rel(a.grad, b.grad) <= 1e-13


def test_formula_reproduces_the_engine_without_a_sampler():
    mdp, pi, ref = _setup(V=3, T=3, P=2, eos=True, seed=8)
    for name in ("grpo", "rloo", "grpo_k1_reward", "frpo", "ppo_k1_rtg", "grpo_is_k3"):
        m = REGISTRY[name].replace(beta=0.2) if REGISTRY[name].has_kl else REGISTRY[name]
        mask = mdp.stacked()[2]
        w = reference_weights(m.correction, torch.zeros(mask.shape, dtype=torch.float64), mask)
        f = formula_gradient(m, mdp, pi, w, pi, ref, 3)  # D = π_old = π_θ, w = 1, Tr = π_θ
        g = expected_gradient(m, mdp, pi, ref=ref, group_size=3).grad
        assert _rel(f, g) <= 1e-12, name


def test_not_covered_methods_are_reported_not_decomposed():
    mdp, pi, ref = _setup(V=3, T=2, P=1, seed=9)
    res = audit_mismatch(REGISTRY["rpg_reinforce_urkl"], mdp, pi, Sampler(top_p=0.8), ref, 2,
                         corrections=["none"], variance=False)
    assert any("not decomposed" in n for n in res[0].record["notes"])
    assert res[0].record["formula_error"] is None


def test_trainer_needs_pi_old_on_every_sampled_response():
    q = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    logp_old = torch.tensor([[-0.1, 0.0], [float("-inf"), 0.0]], dtype=torch.float64)
    mdp = TreeMDP.random(2, 1, 1, seed=0)
    with pytest.raises(ValueError, match="zero probability"):
        _check_sampler_support(mdp, q, logp_old, torch.tensor([True]))


def test_sampler_needs_a_normalized_policy():
    from rlkl.toy.policies import UnnormalizedPolicy

    mdp = TreeMDP.random(2, 2, 1, seed=0)
    with pytest.raises(ValueError, match="normalized"):
        SampledPolicy(UnnormalizedPolicy.random(mdp), Sampler(top_p=0.5))
    with pytest.raises(ValueError, match="Sampler"):
        SampledPolicy(TabularPolicy.random(mdp), {"top_p": 0.5})
    with pytest.raises(ValueError):
        audit_mismatch(REGISTRY["grpo"], mdp, TabularPolicy.random(mdp), Sampler(top_p=0.5),
                       corrections=["token_tis:1"])


# ------------------------------------------------------------------------------------------------ the CLI
def test_cli_prints_bias_against_both_objectives_and_variance(capsys):
    import json

    from rlkl.cli import main

    argv = ["audit", "--method", "rloo", "--vocab", "3", "--horizon", "2", "--prompts", "1", "--group-size", "2",
            "--top-p", "0.8", "--correction", "none,token_tis:2,seq_mis:2,mask_replay"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for word in ("none", "token_tis:2", "seq_mis:2", "mask_replay", "bias full", "deployed", "variance",
                 "truncation_mass", "kept mass"):
        assert word in out, word
    assert main(argv + ["--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["correction"] for r in records] == ["none", "token_tis:2", "seq_mis:2", "mask_replay"]
    for r in records:
        assert r["variance"] > 0 and r["full"]["unexplained"] <= 1e-10 and r["deployed"]["unexplained"] <= 1e-10
    assert records[-1]["deployed"]["rel_bias"] <= 1e-12  # rloo + mask replay: exact for J(T(π_θ)) at τ = 1


@pytest.mark.parametrize("extra,msg", [(["--top-p", "1.5"], "top_p"), (["--correction", "token_tis:1"], "> 1"),
                                       (["--top-p", "0.8", "--off-policy"], "off-policy"),
                                       (["--correction", "bogus"], "unknown rollout correction")])
def test_cli_bad_input_is_a_clear_error(capsys, extra, msg):
    from rlkl.cli import main

    assert main(["audit", "--method", "rloo", "--horizon", "2", *extra]) == 2
    assert msg in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ registry audit
@pytest.mark.parametrize("name", ["grpo", "rloo", "grpo_k1_reward", "frpo", "ppo_k1_rtg"])
def test_the_registry_audit_decomposes_a_truncated_policy(name):
    """The method's own terms stay finite and complete on T(π_θ), whose cut tokens have probability 0."""
    from rlkl.toy.audit import audit_one

    mdp, pi, ref = _setup(V=4, T=2, P=2, seed=3)
    dep = deployed_policy(pi, SampledPolicy(pi, Sampler(top_p=0.8, temperature=0.8)))
    r = audit_one(REGISTRY[name], mdp, dep, None, ref, 3)
    assert all(torch.isfinite(v).all() for v in r.terms.values())
    assert r.record["unexplained"] <= 1e-10 and r.record["as_predicted"], r.record


def test_audit_one_with_a_sampler_names_the_mismatch_terms():
    from rlkl.toy.audit import audit_one

    mdp, pi, ref = _setup(V=4, T=2, P=2, seed=3)
    m = REGISTRY["grpo"].replace(correction=correction_from_spec("token_tis:1.05"))
    r = audit_one(m, mdp, pi, None, ref, 3, sampler=Sampler(top_p=0.8, temperature=0.7)).record
    assert {"truncation_mass", "temperature", "cap_truncation"} <= set(r["bias_terms"])
    assert {"finite_group_utility", "forward_direction", "future_kl_missing"} <= set(r["bias_terms"])
    assert r["unexplained"] <= 1e-10 and r["as_predicted"] and r["sampler"] == "tau=0.7,top_p=0.8"
    plain = audit_one(m, mdp, pi, None, ref, 3).record  # no sampler: no mismatch term is predicted or measured
    assert not set(plain["bias_terms"]) & {"truncation_mass", "temperature", "cap_truncation"}
    assert plain["as_predicted"]
