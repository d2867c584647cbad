"""The audit's bias terms (rlkl.toy.terms): each against a reference written here from first principles — Python
loops over G-tuples and responses with `statistics` for the group statistics — and planted bugs in the method's
code that the audit must report as not as predicted."""

import itertools
import math
import statistics

import pytest
import torch

import rlkl.advantages as adv_lib
import rlkl.divergences as div_lib
import rlkl.losses as loss_lib
from rlkl.components import (BatchStandardized, GPGAdvantage, GroupCentered, GroupStandardized, LeaveOneOut,
                             LengthWeightedCentered, PassAtK, Raw, RPG, RPGClip, RPGDivergence, RPGForm, RPGLevel, Std,
                             TokenWhitened)
from rlkl.methods import REGISTRY as _REG
from rlkl.methods import REGISTRY, get_method
from rlkl.objective import REVERSE_KL_TO_REF
from rlkl.toy import reference as R
from rlkl.toy import terms as T
from rlkl.toy.audit import audit_one, make_setup
from rlkl.toy.mdp import TreeMDP
from rlkl.utility import finite_group_weight

#: the registered methods whose advantage takes a batch statistic
BATCH_STATISTICS = ("gpg", "reinforce_pp", "reinforce_pp_baseline")

F64 = torch.float64


# ------------------------------------------------------------------------------------------------ references
def _adv_py(kind, vals, lengths=None):
    """Row 0's advantage in a group of plain floats (DeepSeekMath / Dr. GRPO / RLOO / OPO / pass@k / GPG rules)."""
    v0 = vals[0]
    if isinstance(kind, Raw):
        return v0
    if isinstance(kind, LeaveOneOut):
        return v0 - statistics.fmean(vals[1:])
    if isinstance(kind, GroupCentered):
        return v0 - statistics.fmean(vals)
    if isinstance(kind, LengthWeightedCentered):
        L = lengths or [1] * len(vals)
        return v0 - sum(l * v for l, v in zip(L, vals)) / sum(L)
    if isinstance(kind, GPGAdvantage):
        return len(vals) / max(1, sum(v != 0 for v in vals)) * (v0 - statistics.fmean(vals))
    sd = statistics.stdev(vals) if kind.std is Std.BESSEL else statistics.pstdev(vals)
    if isinstance(kind, PassAtK):
        best = max(v0 - max(vals[1:]), 0.0)
        return best / (sd + kind.eps) if kind.normalize and best > 0 else best
    if len(set(vals)) == 1:
        return 0.0
    return (v0 - statistics.fmean(vals)) / (sd + kind.eps)


def _h_py(kind, values, q, G):
    """h(n) = Σ over ordered (G−1)-tuples of the others Π q · A_0."""
    N = len(values)
    h = []
    for n in range(N):
        tot = 0.0
        for others in itertools.product(range(N), repeat=G - 1):
            tot += math.prod(q[j] for j in others) * _adv_py(kind, [values[n]] + [values[j] for j in others])
        h.append(tot)
    return h


class Tree:
    """Plain-float view of a one-prompt tree with π_θ, π_old, π_ref, and the score vectors ∇log π_θ(a_t|s_t)."""

    def __init__(self, mdp, pi, old, ref):
        self.mdp, self.pi, self.old, self.ref = mdp, pi, old, ref
        e = mdp.enumerate()
        self.N, self.T = mdp.num_responses, mdp.horizon
        self.L = e.lengths.tolist()
        tl = pi.token_logp()
        self.lt, self.lo, self.lr = (p.token_logp().detach().tolist() for p in (pi, old, ref))
        self.q_old = old.probs()[0].detach().tolist()
        self.q_th = pi.probs()[0].detach().tolist()
        self.r = mdp.rewards[0].tolist()
        self.score = [[torch.autograd.grad(tl[n, t], pi.theta, retain_graph=True)[0] if t < self.L[n]
                       else torch.zeros_like(pi.theta) for t in range(self.T)] for n in range(self.N)]

    def rho(self, n, t):
        return math.exp(self.lt[n][t] - self.lo[n][t])

    def w(self, n):
        return math.exp(sum(self.lt[n][t] - self.lo[n][t] for t in range(self.L[n])))

    def seq_score(self, n):
        return sum(self.score[n][t] for t in range(self.L[n]))

    def kl_grad(self, anchor_logp):
        """∇_θ Σ_y π_θ(y)(log π_θ(y) − log π_a(y)) by autograd of the explicit sum."""
        lp = self.pi.sequence_logp()
        kl = (lp.exp() * (lp - torch.tensor([sum(r) for r in anchor_logp], dtype=F64))).sum()
        return torch.autograd.grad(kl, self.pi.theta)[0]


def _tree(eos=False, reward="binary", seed=3, off=True, vocab=None):
    mdp = TreeMDP.random(vocab or (3 if eos else 2), 2, 1, eos=eos, reward=reward, seed=seed)
    pi, old, ref = make_setup(mdp, 0, off_policy=off)
    return Tree(mdp, pi, old, ref)


def _close(a, b, tol=1e-10):
    return float((a - b).norm()) <= tol * max(1e-12, float(b.norm()))


# ------------------------------------------------------------------------------------------------ group law
@pytest.mark.parametrize("kind", [GroupStandardized(Std.BESSEL, 1e-6), GroupStandardized(Std.POPULATION, 0.0),
                                  GroupCentered(), LeaveOneOut(), Raw(), BatchStandardized(Std.POPULATION, 1e-4),
                                  PassAtK(True), PassAtK(False), GPGAdvantage(), LengthWeightedCentered()])
@pytest.mark.parametrize("binary", [True, False])
def test_group_law_matches_a_loop_over_G_tuples(kind, binary):
    g = torch.Generator().manual_seed(7)
    values = (torch.rand(4, generator=g, dtype=F64) < 0.5).to(F64) if binary else torch.randn(4, generator=g, dtype=F64)
    if binary:
        values[:2] = torch.tensor([0.0, 1.0], dtype=F64)
    q = torch.softmax(torch.randn(4, generator=g, dtype=F64), 0)
    G = 3
    law = R.group_law(values, q, G)
    h = R.group_advantage(kind, values, law, G) @ law.probs
    want = _h_py(kind, values.tolist(), q.tolist(), G)
    assert torch.allclose(h, torch.tensor(want, dtype=F64), rtol=1e-12, atol=1e-14)
    assert float(law.probs.sum()) == pytest.approx(1.0, abs=1e-14)


def test_length_weighted_baseline_and_token_whitening_match_loops():
    """OPO's Σ|y|r/Σ|y| baseline and REINFORCE++'s token whitening over the group, with classes of responses."""
    g = torch.Generator().manual_seed(8)
    N, T, G = 4, 2, 3
    v = torch.randn(N, generator=g, dtype=F64)
    q = torch.softmax(torch.randn(N, generator=g, dtype=F64), 0)
    L = torch.tensor([1.0, 2.0, 2.0, 1.0], dtype=F64)
    mask = torch.arange(T).unsqueeze(0) < L.unsqueeze(1)
    tok = torch.randn(N, T, generator=g, dtype=F64) * mask  # a per-token part (−β·tp)
    law = R.group_law(torch.arange(N, dtype=F64), q, G, L)
    law = R.GroupLaw(v, law.lengths, law.counts, law.probs)  # classes = responses, valued by v
    opo = R.group_advantage(LengthWeightedCentered(), v, law, G, L) @ law.probs
    tuples = list(itertools.product(range(N), repeat=G - 1))
    weight = [math.prod(float(q[j]) for j in o) for o in tuples]
    want = [sum(w * _adv_py(LengthWeightedCentered(), [float(v[n])] + [float(v[j]) for j in o],
                            [float(L[n])] + [float(L[j]) for j in o]) for w, o in zip(weight, tuples))
            for n in range(N)]
    assert torch.allclose(opo, torch.tensor(want, dtype=F64), rtol=1e-12, atol=1e-14)
    for kind in (TokenWhitened(group_mean=False), TokenWhitened(group_mean=True, std=Std.POPULATION, eps=1e-3)):
        A = R.whitened_token_advantages(kind, v, tok, mask, law, tok, mask, G)  # [N, M, T]
        got = (law.probs.view(1, -1, 1) * A).sum(1)
        for n in range(N):
            ref = [0.0] * T
            for w, o in zip(weight, tuples):
                rows = [n, *o]
                vals = [float(v[i]) for i in rows]
                s = [x - statistics.fmean(vals) for x in vals] if kind.group_mean else vals
                xs = [[s[k] + float(tok[i, t]) for t in range(int(L[i]))] for k, i in enumerate(rows)]
                flat = [x for row in xs for x in row]
                var = statistics.variance(flat) if kind.std is Std.BESSEL else statistics.pvariance(flat)
                for t in range(int(L[n])):
                    ref[t] += w * (xs[0][t] - statistics.fmean(flat)) / math.sqrt(var + kind.eps)
            assert torch.allclose(got[n], torch.tensor(ref, dtype=F64), rtol=1e-11, atol=1e-13), (kind, n)


def test_finite_group_weight_closed_forms_and_the_library():
    pop = Std.POPULATION
    for p in (0.1, 0.37, 0.8):
        assert R.finite_group_weight_reference(p, 2, pop, 0.0) == pytest.approx(1.0, abs=1e-14)
        assert R.finite_group_weight_reference(p, 3, pop, 0.0) == pytest.approx(math.sqrt(2), abs=1e-14)
        w4 = math.sqrt(3) + (3 - 2 * math.sqrt(3)) * p * (1 - p)  # FRPO's closed form for G = 4
        assert R.finite_group_weight_reference(p, 4, pop, 0.0) == pytest.approx(w4, abs=1e-14)
        # Bessel, G = 2: the pair {1, 0} has std 1/√2, A = ±1/√2, so w_2 = 1/√2 for every p
        assert R.finite_group_weight_reference(p, 2, Std.BESSEL, 0.0) == pytest.approx(1 / math.sqrt(2), abs=1e-14)
        for G, std in ((5, "bessel"), (6, "population")):  # two independent implementations agree
            lib = finite_group_weight(p, G, std, 1e-6)
            assert R.finite_group_weight_reference(p, G, Std(std), 1e-6) == pytest.approx(lib, rel=1e-12)


# ------------------------------------------------------------------------------------------------ policy terms
def _ppo_active(A, rho, low, high, dual):
    if A > 0:
        return rho <= 1 + high
    if A < 0:
        return rho >= 1 - low and (dual is None or rho <= dual)
    return True


def test_clipping_and_token_ratio_match_a_loop_over_groups():
    """grpo off-policy (PPO dual clip 0.2/0.2/3, Bessel GRPO advantage, seq-mean-token-mean on T = 2)."""
    tr, G = _tree(), 3
    m = get_method("no_kl")
    c = 1.0 / tr.T
    clip_ref = torch.zeros_like(tr.pi.theta)
    hbar = _h_py(m.advantage, tr.r, tr.q_old, G)
    for tup in itertools.product(range(tr.N), repeat=G):
        prob = math.prod(tr.q_old[n] for n in tup)
        for i, n in enumerate(tup):
            A = _adv_py(m.advantage, [tr.r[n]] + [tr.r[j] for k, j in enumerate(tup) if k != i])
            for t in range(tr.L[n]):
                rho = tr.rho(n, t)
                if not _ppo_active(A, rho, 0.2, 0.2, 3.0):
                    clip_ref += prob / G * c * A * rho * tr.score[n][t]  # the gradient −(−Aρ) the clip removed
    ratio_ref = sum(-c * tr.q_old[n] * (tr.rho(n, t) - tr.w(n)) * hbar[n] * tr.score[n][t]
                    for n in range(tr.N) for t in range(tr.L[n]))
    res = audit_one(m, tr.mdp, tr.pi, tr.old, tr.ref, G)
    assert _close(res.terms["clipping"], clip_ref) and _close(res.terms["token_level_ratio"], ratio_ref)
    fgu_ref = -c * (sum(tr.q_th[n] * hbar[n] * tr.seq_score(n) for n in range(tr.N))
                    - torch.autograd.grad((tr.pi.probs()[0] * tr.mdp.rewards[0]).sum(), tr.pi.theta)[0])
    assert _close(res.terms["finite_group_utility"], fgu_ref)
    assert res.record["as_predicted"] and res.record["unexplained"] < 1e-12


def test_gspo_geometric_mean_ratio_matches_a_sum_over_responses():
    tr, G = _tree(), 3
    m = get_method("gspo")
    hbar = _h_py(m.advantage, tr.r, tr.q_old, G)
    ref = torch.zeros_like(tr.pi.theta)
    for n in range(tr.N):
        s = math.exp(sum(tr.lt[n][t] - tr.lo[n][t] for t in range(tr.L[n])) / tr.L[n])
        ref += -(1 / tr.T) * tr.q_old[n] * (s - tr.w(n)) * hbar[n] * tr.seq_score(n)
    res = audit_one(m, tr.mdp, tr.pi, tr.old, tr.ref, G)
    assert _close(res.terms["geometric_mean_ratio"], ref) and "token_level_ratio" not in res.terms
    assert res.record["as_predicted"]


@pytest.mark.parametrize("name", ["no_kl", "dapo"])
def test_length_normalization_matches_a_loop_over_groups(name):
    """On-policy EOS tree: E[Σ_i (weight_i − c/G) Σ_t (−A_i) ∇log π_it], weight 1/(G|y_i|) (seq-mean-token-mean) or
    1/Σ_j |y_j| (token-mean, one normalizer per group)."""
    tr, G = _tree(eos=True, off=False), 3
    m = get_method(name)
    c = 1.0 / tr.T
    ref = torch.zeros_like(tr.pi.theta)
    for tup in itertools.product(range(tr.N), repeat=G):
        prob = math.prod(tr.q_old[n] for n in tup)
        total_len = sum(tr.L[n] for n in tup)
        for i, n in enumerate(tup):
            A = _adv_py(m.advantage, [tr.r[n]] + [tr.r[j] for k, j in enumerate(tup) if k != i])
            weight = 1 / (G * tr.L[n]) if name == "no_kl" else 1 / total_len
            ref += prob * (weight - c / G) * (-A) * tr.seq_score(n)
    res = audit_one(m, tr.mdp, tr.pi, tr.old, tr.ref, G)
    assert _close(res.terms["length_normalization"], ref)
    assert res.record["as_predicted"] and res.record["unexplained"] < 1e-12


# ------------------------------------------------------------------------------------------------ KL terms
def test_kl_loss_terms_match_sums_over_responses():
    """grpo (k3 as a loss) off-policy, β = 0.3: each field as Σ_y q(y) Σ_t c_t ∇log π_t (no node fields)."""
    tr, G = _tree(), 3
    m = get_method("grpo").replace(beta=0.3)
    cb = 0.3 / tr.T
    F = {k: torch.zeros_like(tr.pi.theta) for k in ("old_old", "old_theta", "theta", "rev")}
    for n in range(tr.N):
        for t in range(tr.L[n]):
            d, rho, s = tr.lt[n][t] - tr.lr[n][t], tr.rho(n, t), tr.score[n][t]
            F["old_old"] += tr.q_old[n] * (1 - math.exp(-d)) * s  # ∇k3 = (1 − e^{−δ})∇log π on π_old's tokens
            F["old_theta"] += tr.q_old[n] * rho * (1 - math.exp(-d)) * s  # same states, π_θ's actions
            F["theta"] += tr.q_th[n] * (1 - math.exp(-d)) * s
            F["rev"] += tr.q_th[n] * d * s  # PG_rev
    grad_kl = tr.kl_grad(tr.lr)
    res = audit_one(m, tr.mdp, tr.pi, tr.old, tr.ref, G)
    assert _close(res.terms["missing_importance_weight"], cb * (F["old_old"] - F["old_theta"]))
    assert _close(res.terms["state_distribution_shift"], cb * (F["old_theta"] - F["theta"]))
    assert _close(res.terms["forward_direction"], cb * (F["theta"] - F["rev"]))
    assert _close(res.terms["future_kl_missing"], cb * (F["rev"] - grad_kl))
    assert res.record["as_predicted"]


def test_reward_kl_terms_match_sums_over_responses():
    """ppo_k1_rtg: stale = cβ Σ q_θ Σ_t (Σ_{j≥t} δ^old_j − Σ_{j≥t} δ^θ_j)∇_t; frpo_forward_kl claimed as the sequence
    reverse KL: regularizer_mismatch = cβ(E_θ Σ_t [(1 − 1/u_t) + Σ_{j>t} −log(u_j)/u_j]∇_t − ∇KL), u = π_θ/π_ref."""
    tr, G = _tree(), 3
    beta = 0.3
    stale = torch.zeros_like(tr.pi.theta)
    for n in range(tr.N):
        d_old = [tr.lo[n][t] - tr.lr[n][t] for t in range(tr.L[n])]
        d_th = [tr.lt[n][t] - tr.lr[n][t] for t in range(tr.L[n])]
        for t in range(tr.L[n]):
            stale += beta * tr.q_th[n] * (sum(d_old[t:]) - sum(d_th[t:])) * tr.score[n][t]
    res = audit_one(get_method("ppo_k1_rtg").replace(beta=beta), tr.mdp, tr.pi, tr.old, tr.ref, G)
    assert _close(res.terms["stale_kl_reward"], stale) and res.record["as_predicted"]
    m = get_method("frpo_forward_kl").replace(beta=beta, objective=REVERSE_KL_TO_REF)
    tp = torch.zeros_like(tr.pi.theta)
    for n in range(tr.N):
        u = [math.exp(tr.lt[n][t] - tr.lr[n][t]) for t in range(tr.L[n])]
        for t in range(tr.L[n]):
            tp += tr.q_th[n] * ((1 - 1 / u[t]) + sum(-math.log(x) / x for x in u[t + 1:])) * tr.score[n][t]
    on = Tree(tr.mdp, tr.pi, tr.pi.detached(), tr.ref)
    res = audit_one(m, on.mdp, on.pi, None, on.ref, G)
    assert "regularizer_mismatch" in m.predicted_bias_terms()
    assert _close(res.terms["regularizer_mismatch"], beta * (tp - on.kl_grad(on.lr))) and res.record["as_predicted"]


def test_fusion_before_normalization_matches_a_loop():
    tr, G = _tree(off=False), 3
    beta = 0.5
    m = get_method("grpo_k1_reward").replace(beta=beta)
    K = [sum(tr.lo[n][t] - tr.lr[n][t] for t in range(tr.L[n])) for n in range(tr.N)]
    v = [tr.r[n] - beta * K[n] for n in range(tr.N)]
    hv, hr = _h_py(m.advantage, v, tr.q_old, G), _h_py(m.advantage, tr.r, tr.q_old, G)
    ref = -(1 / tr.T) * sum(tr.q_th[n] * (hv[n] - hr[n] + beta * K[n]) * tr.seq_score(n) for n in range(tr.N))
    res = audit_one(m, tr.mdp, tr.pi, None, tr.ref, G)
    assert _close(res.terms["fusion_before_normalization"], ref) and res.record["as_predicted"]


# ------------------------------------------------------------------------------------------------ RPG
def test_token_level_reverse_matches_a_sum_over_responses():
    """rpg_rkl off-policy: −c Σ q_old Σ_t K(ρ_t)∇_t − cβ∇KL(π‖π_old), K(w) = −βw(log w + 1) (RPG Prop. E.3 at A = 0)."""
    tr, G = _tree(eos=True), 3
    beta = 0.2
    m = get_method("rpg_rkl").replace(beta=beta)
    c = 1.0 / tr.T
    field = sum(tr.q_old[n] * (-beta * tr.rho(n, t) * (math.log(tr.rho(n, t)) + 1)) * tr.score[n][t]
                for n in range(tr.N) for t in range(tr.L[n]))
    res = audit_one(m, tr.mdp, tr.pi, tr.old, tr.ref, G)
    assert _close(res.terms["token_level_reverse"], -c * field - c * beta * tr.kl_grad(tr.lo))
    assert res.record["as_predicted"]


@pytest.mark.parametrize("div", list(RPGDivergence))
def test_rpg_style_clip_derivatives_match_autograd_of_the_clipped_loss(div):
    """Alg. 1: d/dlog π of max(−wÂ, −clip(w)Â), min(·, −cÂ) for Â < 0, by autograd of the loss written out; Alg. 2:
    −Weight on the kept set, 0 elsewhere."""
    clip, beta = RPGClip(0.2, 0.28, 1.9), 0.3
    hat = {RPGDivergence.URKL: lambda A, lw: A - beta * lw, RPGDivergence.RKL: lambda A, lw: A - beta * (lw + 1),
           RPGDivergence.UFKL: lambda A, lw: A - beta * (1 - torch.exp(-lw.detach())),  # forward KLs: KL term fixed
           RPGDivergence.FKL: lambda A, lw: A + beta * torch.exp(-lw.detach())}[div]
    for lw0 in (-0.6, -0.1, 0.05, 0.2, 0.5, 0.8):
        for A in (-1.3, -0.05, 0.02, 0.9):
            lw = torch.tensor(lw0, dtype=F64, requires_grad=True)  # log w = log π_θ − log π_old: d/dlog π = d/dlog w
            w, a_hat = lw.exp(), hat(torch.tensor(A, dtype=F64), lw)
            loss = torch.maximum(-w * a_hat, -torch.clamp(w, 0.8, 1.28) * a_hat)
            if a_hat < 0:
                loss = torch.minimum(loss, -clip.c * a_hat)
            (want,) = torch.autograd.grad(loss, lw)
            A_t, w_, lw_ = torch.tensor(A, dtype=F64), w.detach(), lw.detach()
            ratios = (w_, lw_, w_, lw_, w_)  # ρ_t, log ρ_t, w, log w, s: one token, so all equal
            pl = RPG(div, RPGForm.DIFFERENTIABLE, RPGLevel.TOKEN, clip)
            got = R.policy_derivative(pl, A_t, *ratios, beta, clipped=True)
            assert float(got) == pytest.approx(float(want), abs=1e-13)
            weight = float(R.rpg_weight(div, w_, lw_, A_t, beta))
            a_prime, wv = weight / float(w_), float(w_)
            kept = (a_prime >= 0 and wv < 1.28) or (a_prime < 0 and 0.8 < wv < clip.c)
            pl2 = RPG(div, RPGForm.REINFORCE, RPGLevel.TOKEN, clip)
            got2 = R.policy_derivative(pl2, A_t, *ratios, beta, clipped=True)
            assert float(got2) == pytest.approx(-weight if kept else 0.0, abs=1e-13)


# ------------------------------------------------------------------------------------------------ planted bugs
def _verdict(name, mdp, off, monkeypatch=None, **changes):
    m = get_method(name).replace(**changes) if changes else get_method(name)
    pi, old, ref = make_setup(mdp, 0, off_policy=off)
    return audit_one(m, mdp, pi, old if off else None, ref, 3).record


_FIXED = TreeMDP.random(2, 3, 2, seed=5)
_EOS = TreeMDP.random(3, 3, 1, eos=True, seed=6)


def test_planted_ppo_upper_bound_is_caught(monkeypatch):
    """1 + 2·ε_high as PPO's upper clip bound: the old audit ('undo the clip and re-run') explained it away."""
    assert _verdict("grpo", _FIXED, True, beta=0.2)["as_predicted"]
    orig = loss_lib._ppo_clip  # the kernel behind ppo_clip_loss and PPOClip
    monkeypatch.setattr(loss_lib, "_ppo_clip", lambda lp, lo, a, m, low, high, dual: orig(lp, lo, a, m, low, 2 * high,
                                                                                         dual))
    r = _verdict("grpo", _FIXED, True, beta=0.2)
    assert not r["as_predicted"] and r["unexplained"] > 1e-4


@pytest.mark.parametrize("bug", ["bessel_population_swap", "eps_inside_sqrt"])
def test_planted_group_standardization_bugs_are_caught(monkeypatch, bug):
    """The FRPO target (U_G) and GRPO's finite_group_utility no longer reuse group_standardized, so a wrong std
    or ε placement in it cannot shift the explanation along with the method."""
    orig = adv_lib.group_standardized

    def buggy(rewards, G, eps=1e-6, std="bessel"):
        if bug == "bessel_population_swap":
            return orig(rewards, G, eps, "population" if std == "bessel" else "bessel")
        g = rewards.view(-1, G)
        var = g.var(-1, correction=1 if std == "bessel" else 0, keepdim=True)
        equal = g.amax(-1, keepdim=True) == g.amin(-1, keepdim=True)
        centred = g - g.mean(-1, keepdim=True)
        return torch.where(equal, torch.zeros_like(centred), centred / torch.sqrt(var + eps)).reshape(-1)

    monkeypatch.setattr(adv_lib, "group_standardized", buggy)
    for name in ("frpo", "grpo"):
        r = _verdict(name, _FIXED, False)
        assert not r["as_predicted"] and r["unexplained"] > 1e-8, (name, r["unexplained"])


def test_planted_aggregation_and_future_return_bugs_are_caught(monkeypatch):
    orig_agg = loss_lib._aggregate  # the kernel behind aggregate and Aggregation

    def agg_by_T(loss, mask, mode, horizon):  # seq-mean-token-mean dividing by T instead of |y|
        if str(mode) == "seq-mean-token-mean":
            return ((loss * mask).sum(-1) / loss.shape[1]).mean()
        return orig_agg(loss, mask, mode, horizon)

    monkeypatch.setattr(loss_lib, "_aggregate", agg_by_T)
    assert not _verdict("grpo", _EOS, False)["as_predicted"]
    monkeypatch.setattr(loss_lib, "_aggregate", orig_agg)
    orig_fr = adv_lib._future_return  # the kernel behind future_return and FRPO's regularizer
    monkeypatch.setattr(adv_lib, "_future_return", lambda v, m, include_current: orig_fr(v, m, True))
    r = _verdict("frpo", _FIXED, False)
    assert not r["as_predicted"] and r["unexplained"] > 1e-6


def test_planted_estimator_and_rpg_clip_bugs_are_caught(monkeypatch):
    # k3 with the wrong sign of δ, in the table the KL-loss kernel reads
    monkeypatch.setitem(loss_lib._KL_VALUES, "k3", lambda d: torch.exp(d) - 1.0 - d)
    assert not _verdict("grpo", _FIXED, False, beta=0.2)["as_predicted"]
    monkeypatch.undo()
    orig = loss_lib._rpg  # the kernel behind rpg_loss and the RPG policy loss

    def rpg_c2(lp, lo, a, m, div, form, beta, level, clip, z_old):
        clip = None if clip is None else RPGClip(clip.eps_low, clip.eps_high, 1.5)  # dual-clip constant c = 1.5
        return orig(lp, lo, a, m, div, form, beta, level, clip, z_old)

    monkeypatch.setattr(loss_lib, "_rpg", rpg_c2)
    assert not _verdict("rpg_reinforce_urkl", _FIXED, True, beta=0.1)["as_predicted"]


# ------------------------------------------------------------------------------------------------ the registry
def test_batch_statistic_methods_are_decomposed_exactly():
    """gpg (α = G/#{r ≠ 0}), reinforce_pp (token whitening of the k1 reward-to-go), reinforce_pp_baseline: the batch
    statistic over the engine's unit (one group) is `batch_normalization`, and nothing is left unexplained."""
    for name, m in ((n, _REG[n]) for n in BATCH_STATISTICS):
        for tree, off in ((_FIXED, True), (_EOS, False)):
            r = _verdict(name, tree, off, beta=0.2) if m.has_kl else _verdict(name, tree, off)
            assert "batch_normalization" in r["bias_terms"] and r["as_predicted"], (name, r["unexplained"])


def test_one_glossary_and_method_predictions_delegate_to_the_terms():
    assert len(T.TERMS) == len(T.glossary()) >= 18
    for name, t in T.TERMS.items():
        assert t.name == name and t.doc and "\n" not in t.doc and t.formula
    for m in REGISTRY.values():
        for off in (False, True):
            for var in (False, True):
                assert m.predicted_bias_terms(off, var) == T.predicted_terms(m, T.Setting(off, var))


def test_a_term_registered_elsewhere_is_predicted_and_measured():
    seen = []

    def measure(ctx):
        seen.append(ctx.method.name)
        return torch.zeros_like(ctx.policy.theta)

    term = T.BiasTerm("probe_term", "a probe", "0", lambda m, s: s.off_policy, measure)
    T.register(term)
    try:
        with pytest.raises(ValueError, match="already registered"):
            T.register(term)
        assert "probe_term" in get_method("rloo").predicted_bias_terms(off_policy=True)
        r = _verdict("rloo", _FIXED, True)
        assert seen == ["rloo"] and r["missing_terms"] == ["probe_term"] and r["as_predicted"] is False
        assert _verdict("rloo", _FIXED, False)["as_predicted"]
    finally:
        T.unregister("probe_term")
    assert "probe_term" not in T.TERMS
