"""Exact checks of the estimator library on single categorical states, for `rlkl verify` (section "estimators").

Each check enumerates every action of a random softmax state in float64, so expectations are exact sums; the
same functions (`rlkl.losses.kl_loss`, `rlkl.divergences`, `rlkl.utility`, `rlkl.losses.rpg_loss`) are the ones
the exact engine and the trainer call. Tolerance: 1e-10 relative (float64 round-off). Each row cites its paper and
the claim id in docs/theory.md.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Callable

import torch

from rlkl.report import Verdict

TOL = 1e-10


def _state(seed: int, n: int = 5):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, generator=g, dtype=torch.float64).requires_grad_()
    ref_logits = torch.randn(n, generator=g, dtype=torch.float64)
    return theta, ref_logits


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(b.norm().item(), 1e-300))


def _expected_loss_grad(theta, ref_logits, estimator, importance_weight=False, straight_through=False,
                        old_logits=None):
    """E_{a~π_old}[∇ k(log π_θ(a) − log π_ref(a))] by enumeration (π_old = π_θ when old_logits is None)."""
    from rlkl.losses import kl_loss

    logp_all = torch.log_softmax(theta, -1)  # [n]
    logp_ref = torch.log_softmax(ref_logits, -1)
    logp_old = (logp_all if old_logits is None else torch.log_softmax(old_logits, -1)).detach()
    per_action = kl_loss(logp_all[:, None], logp_ref[:, None], torch.ones(len(theta), 1, dtype=torch.bool),
                         estimator, straight_through, logp_old[:, None], importance_weight)[:, 0]  # [n]
    expected = (logp_old.exp() * per_action).sum()  # sampling weights are data: sg[π_old]
    (grad,) = torch.autograd.grad(expected, theta)
    return grad


def _kl_grad(theta, ref_logits, direction):
    from rlkl.divergences import exact_kl

    value = exact_kl(theta, ref_logits) if direction == "reverse" else exact_kl(ref_logits, theta)
    (grad,) = torch.autograd.grad(value, theta)
    return grad


def _check(claim: str, source: str, fn: Callable[[], float]) -> Verdict:
    t0 = time.perf_counter()
    err = fn()
    ok = err < TOL
    return Verdict("estimators", claim, source, "PASS" if ok else "FAIL", f"max rel. err {err:.1e}",
                   time.perf_counter() - t0)


def _loss_vs_kl(seeds, est: str, direction: str, iw: bool = False, st: bool = False, off: bool = False) -> float:
    """max over seeds of the relative error of E[∇ loss(est)] against ∇KL in ``direction``."""
    errs = []
    for s in seeds:
        theta, ref = _state(s)
        old = torch.randn(5, generator=torch.Generator().manual_seed(100 + s), dtype=torch.float64) if off else None
        errs.append(_rel(_expected_loss_grad(theta, ref, est, iw, st, old), _kl_grad(theta, ref, direction)))
    return max(errs)


def _k1_zero(seeds) -> float:
    errs = []
    for s in seeds:
        theta, ref = _state(s)
        errs.append(float(_expected_loss_grad(theta, ref, "k1").abs().max()))
    return max(errs)


def _st_identity(seeds) -> float:
    from rlkl.divergences import k2, k3, k3_straight_through

    x = torch.linspace(-5, 5, 41, dtype=torch.float64).requires_grad_()
    v = k3_straight_through(x)
    (g,) = torch.autograd.grad(v.sum(), x)
    (g2,) = torch.autograd.grad(k2(x).sum(), x)
    return max(_rel(v.detach(), k3(x.detach())), _rel(g, g2))


def _f_unbiased(seeds) -> float:
    from rlkl.divergences import F_DIVERGENCE_NAMES, get_f_divergence

    errs = []
    for name in F_DIVERGENCE_NAMES:
        div = get_f_divergence(name, alpha=0.5)
        for s in seeds:
            theta, ref = _state(s)
            logp, logq = torch.log_softmax(theta.detach(), -1), torch.log_softmax(ref, -1)
            est = (logp.exp() * div.sampled_estimate(logp - logq)).sum()
            exact = float(div.exact(theta.detach(), ref))
            errs.append(abs(float(est) - exact) / max(abs(exact), 1e-300))
    return max(errs)


def _first_advantage(r: tuple[float, ...], std: str) -> float:
    """A_1 = (r_1 − mean(r)) / std(r) (ε = 0; population or Bessel std), 0 for an all-equal group — written out."""
    G = len(r)
    mean = sum(r) / G
    ss = sum((x - mean) ** 2 for x in r)
    if ss == 0.0:
        return 0.0
    return (r[0] - mean) / math.sqrt(ss / (G if std == "population" else G - 1))


def _wg_bruteforce(seeds) -> float:
    from rlkl.utility import finite_group_weight

    errs = []
    for G in (2, 3, 4):
        for std in ("population", "bessel"):
            for p in (0.2, 0.55):
                # E[A_1 ∇log π(y_1)] = Σ over reward tuples P(r) A_1 (r_1 − p)/(p(1−p)) ∇p
                total = 0.0
                for r in itertools.product((0.0, 1.0), repeat=G):
                    prob = p ** sum(r) * (1 - p) ** (G - sum(r))
                    total += prob * _first_advantage(r, std) * (r[0] - p) / (p * (1 - p))
                errs.append(abs(total - finite_group_weight(p, G, std)) / abs(total))
    return max(errs)


def _rpg_per_sample(seeds) -> float:
    from rlkl.losses import RPG_DIVERGENCES, rpg_loss

    errs = []
    g = torch.Generator().manual_seed(7)
    logp = (-torch.rand(6, 3, generator=g, dtype=torch.float64) * 2).requires_grad_()
    logp_old = logp.detach() + 0.3 * torch.randn(6, 3, generator=g, dtype=torch.float64)
    adv = torch.randn(6, 1, generator=g, dtype=torch.float64).expand(6, 3).contiguous()
    mask = torch.ones(6, 3, dtype=torch.bool)
    for div in RPG_DIVERGENCES:
        for level in ("token", "sequence"):
            grads = []
            for form in ("differentiable", "reinforce"):
                out = rpg_loss(logp, logp_old, adv, mask, div, form, 0.3, level)
                (gr,) = torch.autograd.grad(out.loss.sum(), logp)
                grads.append(gr)
            errs.append(_rel(grads[0], grads[1]))
    return max(errs)


#: (claim, source, check(seeds)) of the estimator identities
_IDENTITIES = [
    ("k1 as a loss: E_pi[grad k1] = 0", "Tang & Munos arXiv 2506.09477 §3; docs/theory.md T2", _k1_zero),
    ("k2 as a loss: E_pi[grad k2] = grad KL(pi||ref) (local)", "Liu et al. arXiv 2510.01555; docs/theory.md T3",
     lambda seeds: _loss_vs_kl(seeds, "k2", "reverse")),
    ("k3 as a loss: E_pi[grad k3] = grad KL(ref||pi), FORWARD",
     "FRPO arXiv 2601.10201 App. B Table 3; docs/theory.md T4", lambda seeds: _loss_vs_kl(seeds, "k3", "forward")),
    ("rho*k3 under pi_old: E[grad] = grad KL(pi||ref), off-policy", "RPG arXiv 2505.17508 §2.2; docs/theory.md T5",
     lambda seeds: _loss_vs_kl(seeds, "k3", "reverse", iw=True, off=True)),
    ("k3+ (straight-through) = local reverse-KL gradient", "verl kl_penalty 'low_var_kl+'; docs/theory.md T6",
     lambda seeds: _loss_vs_kl(seeds, "k3", "reverse", st=True)),
    ("straight-through: value = k3, gradient = grad k2", "verl PR #6058; docs/theory.md T6", _st_identity),
    ("f-divergences: E_pi[f(u)/u] = D_f(pi||ref), all 10 members", "FRPO arXiv 2601.10201 Thm 4.1; docs/theory.md T8",
     _f_unbiased),
    ("w_G(p) = brute-force enumeration of G-tuples (G=2..4)", "derived here; docs/theory.md T12", _wg_bruteforce),
    ("RPG: per-sample grad(differentiable) = grad(REINFORCE), 8 surrogates x 2 levels",
     "RPG arXiv 2505.17508 Prop. 4.1; docs/theory.md T14", _rpg_per_sample),
]


def verify_rows(quick: bool = True) -> list[Verdict]:
    """Run the estimator-library checks; see module docstring."""
    seeds = range(3 if quick else 10)
    rows = [_check(claim, source, (lambda fn=fn: fn(seeds))) for claim, source, fn in _IDENTITIES]
    return rows + _rule_rows(seeds)


#: (claim, source, check) of the rules written out below; each check takes the seeds
_RULES = [
    ("PPO clip rule (asymmetric, dual clip): value and gradient per token",
     "Schulman et al. arXiv 1707.06347 eq. 7; dual clip Ye et al. arXiv 1912.09729; docs/theory.md T17",
     "check_ppo_clip_rule"),
    ("GSPO-token: s_i = exp(mean_t log rho), clipped per sequence", "Zheng et al. arXiv 2507.18071; docs/theory.md T16",
     "check_gspo_rule"),
    ("REINFORCE: -sg[A]*log pi, gradient -A", "Williams 1992; RPG arXiv 2505.17508 eq. C.2; docs/theory.md T14",
     "check_reinforce_rule"),
    ("CISPO: -sg[min(rho, 1+eps)]*A*log pi", "MiniMax-M1 arXiv 2506.13585 eqs. 4-5; docs/theory.md T5",
     "check_cispo_rule"),
    ("aggregation: the four verl modes = Python sums (B' < B)", "Dr. GRPO arXiv 2503.20783; docs/theory.md T19",
     "check_aggregation_rule"),
    ("Aggregation.scale / normalizes_by_length = the aggregate's own weights",
     "Dr. GRPO arXiv 2503.20783; docs/theory.md T19", "check_aggregation_answers_rule"),
    ("advantages: GRPO (std, eps), Dr. GRPO, RLOO, batch std = per-group statistics",
     "DeepSeekMath arXiv 2402.03300; RLOO arXiv 2402.14740; docs/theory.md T13", "check_group_advantages_rule"),
    ("future sums, reward-to-go, FRPO regularizer, KL rewards = double loops",
     "FRPO arXiv 2601.10201 Thm 4.1, Eq. 4.5; docs/theory.md T9, T10", "check_returns_rule"),
    ("k1, k2, k3, k+ (straight-through) values and gradients, UKL with zero masses = closed forms",
     "Schulman 2020; verl kl_penalty '+'; docs/theory.md T1, T6", "check_kl_values_rule"),
    ("RPG: grad = -Weight (8 surrogates x 2 levels) and Alg. 2 active set", "RPG arXiv 2505.17508 Props. E.1, E.3, "
     "3.2, 3.6, Alg. 2; docs/theory.md T14, T17", "check_rpg_rule"),
    ("RPG-Style Clip (Alg. 1): loss value with the regularized advantage", "RPG arXiv 2505.17508 Alg. 1; "
     "docs/theory.md T17", "check_rpg_clip_value_rule"),
    ("w_G, U_G, U', E[A_1|r_1] = brute force, 24-node quadrature, autograd",
     "FRPO arXiv 2601.10201 Prop. 3.1; docs/theory.md T12",
     "check_utility_rule"),
    ("unclipped(): PPO, CISPO, GSPO give -A*ratio on every token", "Schulman et al. arXiv 1707.06347; "
     "docs/theory.md T17", "check_unclipped_rule"),
    ("Method: fused KL reward, k1 reward-to-go, PPO + beta*k3 loss = composition written out",
     "FRPO arXiv 2601.10201 Prop. 3.2; Ziegler et al. arXiv 1909.08593; docs/theory.md T11",
     "check_method_composition_rule"),
    ("OPO, pass@k, GPG, REINFORCE++ whitening = their rules in Python",
     "OPO arXiv 2505.23585; Chen et al. arXiv 2503.19595; GPG arXiv 2504.02546; REINFORCE++ arXiv 2501.03262; "
     "docs/theory.md T13", "check_other_advantages_rule"),
    ("rollout corrections: TIS / MIS / geometric-mean weights of pi_old/q, on the policy loss only",
     "verl rollout_is token/sequence; TRL vllm_importance_sampling_mode; GMPO arXiv 2507.20673; docs/theory.md T23",
     "check_rollout_correction_rule"),
    ("engine sampler: top-k -> top-p -> min-p kept set, kept mass, q; mask replay = brute force",
     "Holtzman et al. arXiv 1904.09751 (top-p); Nguyen et al. arXiv 2407.01082 (min-p); docs/theory.md T21, T22",
     "check_sampler_rule"),
]


def _rule_rows(seeds) -> list[Verdict]:
    """One row per rule of ``_RULES``: the library against a reference written out in this module."""
    return [_check(claim, source, (lambda name=name: globals()[name](seeds))) for claim, source, name in _RULES]


# ---------------------------------------------------------------------------------------------------------------
# Rules written out: each library function against a reference computed here from its paper's formula, in plain
# Python loops over small random batches (no call into the function under test, nor into the library's other
# estimators). A bug in a clip bound, a std, a sum's range, a sign or a stop-gradient shows as a large error.


def _batch(seed: int, B: int = 6, T: int = 4):
    """Random float64 ``logp [B, T]`` (requires grad), ``logp_old``, token advantages of both signs and a mask
    whose rows have 1..T valid tokens (row 0 full)."""
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 2 - 0.05).requires_grad_()
    logp_old = logp.detach() + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, 1, generator=g, dtype=torch.float64).expand(B, T).contiguous()
    lengths = [T] + [int(x) for x in torch.randint(1, T + 1, (B - 1,), generator=g)]
    mask = torch.tensor([[t < n for t in range(T)] for n in lengths])
    return logp, logp_old, adv, mask


def _vs(loss: torch.Tensor, logp: torch.Tensor, ref_value: list, ref_grad: list, mask: torch.Tensor) -> float:
    """Max relative error of a per-token loss's value and of ∇_{logp} Σ loss against reference lists [B][T]."""
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    v = torch.tensor(ref_value, dtype=torch.float64) * mask
    gr = torch.tensor(ref_grad, dtype=torch.float64) * mask
    return max(_rel(loss.detach() * mask, v), _rel(grad * mask, gr))


def _ppo_reference(lp, lo, a, lo_eps, hi_eps, c):
    """PPO with dual clip per token: value and d/d log π (ρ = e^{lp − lo})."""
    rho = math.exp(lp - lo)
    if a >= 0:  # −A·min(ρ, clip ρ): gradient only while ρ < 1 + ε_high
        return (-a * rho, -a * rho) if rho < 1 + hi_eps else (-a * (1 + hi_eps), 0.0)
    if rho <= 1 - lo_eps:  # −A·max(ρ, clip ρ) = −A(1 − ε_low)
        return -a * (1 - lo_eps), 0.0
    if c is not None and rho > c:  # dual clip: min(−A ρ, −c A) = −c A
        return -c * a, 0.0
    return -a * rho, -a * rho


def check_ppo_clip_rule(seeds) -> float:
    """``ppo_clip_loss`` (asymmetric bounds, with and without dual clip) against :func:`_ppo_reference`."""
    from rlkl.losses import ppo_clip_loss

    errs = []
    for s in seeds:
        logp, logp_old, adv, mask = _batch(s)
        for lo_eps, hi_eps, c in ((0.2, 0.28, None), (0.1, 0.3, 1.3)):
            out = ppo_clip_loss(logp, logp_old, adv, mask, lo_eps, hi_eps, c)
            L, LO, AD = logp.detach().tolist(), logp_old.tolist(), adv.tolist()
            ref = [[_ppo_reference(L[i][t], LO[i][t], AD[i][t], lo_eps, hi_eps, c) for t in range(len(L[i]))]
                   for i in range(len(L))]
            errs.append(_vs(out.loss, logp, [[v for v, _ in r] for r in ref], [[d for _, d in r] for r in ref], mask))
    return max(errs)


def check_gspo_rule(seeds) -> float:
    """``gspo_loss``: s_i = exp(mean over valid t of log ρ), per token −A·s_i (gradient −A·s_i on its own token
    only) unless the clip holds s_i at 1 ± ε (Zheng et al. arXiv 2507.18071, GSPO-token)."""
    from rlkl.losses import gspo_loss

    errs = []
    for s in seeds:
        logp, logp_old, adv, mask = _batch(s)
        for lo_eps, hi_eps in ((0.05, 0.08), (0.5, 0.5)):
            out = gspo_loss(logp, logp_old, adv, mask, lo_eps, hi_eps)
            val, grad = [], []
            L, LO, AD, M = logp.detach().tolist(), logp_old.tolist(), adv.tolist(), mask.tolist()
            for i in range(len(L)):
                ts = [t for t in range(len(L[i])) if M[i][t]]
                si = math.exp(sum(L[i][t] - LO[i][t] for t in ts) / len(ts))
                a = AD[i][0]
                held = (a >= 0 and si > 1 + hi_eps) or (a < 0 and si < 1 - lo_eps)
                bound = 1 + hi_eps if a >= 0 else 1 - lo_eps
                val.append([-a * (bound if held else si)] * logp.shape[1])
                grad.append([0.0 if held else -a * si] * logp.shape[1])
            errs.append(_vs(out.loss, logp, val, grad, mask))
    return max(errs)


def check_reinforce_rule(seeds) -> float:
    """``reinforce_loss``: −sg[A]·log π per valid token, gradient −A (Williams 1992; RPG arXiv 2505.17508 eq. C.2)."""
    from rlkl.losses import reinforce_loss

    errs = []
    for s in seeds:
        logp, logp_old, adv, mask = _batch(s)
        L, AD = logp.detach().tolist(), adv.tolist()
        out = reinforce_loss(logp, adv, mask, logp_old=logp_old)
        val = [[-a * v for a, v in zip(ar, lr)] for ar, lr in zip(AD, L)]
        errs.append(_vs(out.loss, logp, val, [[-a for a in ar] for ar in AD], mask))
    return max(errs)


def check_cispo_rule(seeds) -> float:
    """``cispo_loss``: −sg[min(ρ, 1 + ε_high)]·A·log π, one-sided and with a lower bound (MiniMax-M1 arXiv
    2506.13585 eqs. 4–5): gradient −ŵ·A on every token."""
    from rlkl.losses import cispo_loss

    errs = []
    for s in seeds:
        logp, logp_old, adv, mask = _batch(s)
        for lo_eps, hi_eps in ((None, 0.2), (0.1, 0.3)):
            out = cispo_loss(logp, logp_old, adv, mask, lo_eps, hi_eps)
            val, grad = [], []
            L, LO, AD = logp.detach().tolist(), logp_old.tolist(), adv.tolist()
            for i in range(len(L)):
                vr, gr = [], []
                for t in range(len(L[i])):
                    rho = math.exp(L[i][t] - LO[i][t])
                    w = min(rho, 1 + hi_eps) if lo_eps is None else min(max(rho, 1 - lo_eps), 1 + hi_eps)
                    vr.append(-w * AD[i][t] * L[i][t])
                    gr.append(-w * AD[i][t])
                val.append(vr)
                grad.append(gr)
            errs.append(_vs(out.loss, logp, val, grad, mask))
    return max(errs)


def check_aggregation_rule(seeds) -> float:
    """``aggregate`` in the four verl modes against Python sums, with an all-padding row (B' < B) and C = 7."""
    from rlkl.losses import aggregate

    errs = []
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        loss = torch.randn(5, 4, generator=g, dtype=torch.float64)
        mask = torch.rand(5, 4, generator=g) < 0.7
        mask[0] = True
        mask[3] = False  # a row without tokens: counts in B, not in B'
        L, M = loss.tolist(), mask.tolist()
        rows = [[L[i][t] for t in range(4) if M[i][t]] for i in range(5)]
        live = [r for r in rows if r]
        ref = {"token-mean": sum(map(sum, live)) / sum(map(len, live)),
               "seq-mean-token-mean": sum(sum(r) / len(r) for r in live) / len(live),
               "seq-mean-token-sum": sum(map(sum, live)) / len(live),
               "seq-mean-token-sum-norm": sum(map(sum, live)) / (5 * 7)}
        for mode, want in ref.items():
            got = float(aggregate(loss, mask, mode, 7 if mode == "seq-mean-token-sum-norm" else None))
            errs.append(abs(got - want) / abs(want))
    return max(errs)


def _mean(x: list) -> float:
    return sum(x) / len(x)


def _std(x: list, bessel: bool) -> float:
    m = _mean(x)
    return math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - (1 if bessel else 0)))


def check_group_advantages_rule(seeds) -> float:
    """GRPO (Bessel / population std, ε added to the std), Dr. GRPO centring, RLOO leave-one-out and batch
    standardization — the library functions and the Method components — against per-group Python statistics."""
    from rlkl import advantages as adv
    from rlkl.components import BatchStandardized, GroupCentered, GroupStandardized, LeaveOneOut

    errs = []
    for s in seeds:
        G = 4
        r = torch.randn(3 * G, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        groups = [r.tolist()[k:k + G] for k in range(0, 3 * G, G)]
        for std, eps in (("bessel", 0.3), ("population", 0.0), ("population", 0.1)):
            ref = [(v - _mean(x)) / (_std(x, std == "bessel") + eps) for x in groups for v in x]
            for got in (adv.group_standardized(r, G, eps, std), GroupStandardized(std, eps)(r, G)):
                errs.append(_rel(got, torch.tensor(ref, dtype=torch.float64)))
            flat = r.tolist()
            ref_b = [(v - _mean(flat)) / (_std(flat, std == "bessel") + eps) for v in flat]
            errs.append(_rel(BatchStandardized(std, eps)(r, G), torch.tensor(ref_b, dtype=torch.float64)))
        centred = [v - _mean(x) for x in groups for v in x]
        loo = [x[j] - _mean(x[:j] + x[j + 1:]) for x in groups for j in range(G)]
        for got, ref in ((adv.group_centered(r, G), centred), (GroupCentered()(r, G), centred),
                         (adv.leave_one_out(r, G), loo), (LeaveOneOut()(r, G), loo)):
            errs.append(_rel(got, torch.tensor(ref, dtype=torch.float64)))
    return max(errs)


#: f(u)/u and f'(u) − f'(1) of three FRPO generators, written with math (FRPO arXiv 2601.10201 Thm 4.1, Eq. 4.6)
_FRPO_TERMS = {
    "reverse_kl": (lambda u: math.log(u), lambda u: math.log(u)),  # f = u log u
    "reverse_kl_k3": (lambda u: math.log(u) - 1 + 1 / u, lambda u: math.log(u)),  # f = u log u − u + 1
    "forward_kl": (lambda u: -math.log(u) / u, lambda u: 1 - 1 / u),  # f = −log u
}


def check_returns_rule(seeds) -> float:
    """Future sums (Σ_{j≥t}, Σ_{j>t}), the discounted reward-to-go, FRPO's regularizer
    [f'(u_t) − f'(1)] + Σ_{j>t} f(u_j)/u_j and the KL-reward components, against double loops over valid tokens."""
    from rlkl import advantages as adv
    from rlkl.components import Estimator, FutureReturn, KLReward, RewardForm

    errs = []
    for s in seeds:
        _, _, _, mask = _batch(s)
        x = torch.randn(mask.shape, generator=torch.Generator().manual_seed(50 + s), dtype=torch.float64) * 0.7
        X, M = x.tolist(), mask.tolist()

        def loop(term, start, gamma=1.0):  # Σ_{valid j >= t + start} γ^{#valid steps from t} term(x_j)
            out = [[0.0] * len(X[0]) for _ in X]
            for i, row in enumerate(X):
                for t in range(len(row)):
                    js = [j for j in range(t + start, len(row)) if M[i][j]]
                    out[i][t] = sum(gamma ** k * term(row[j]) for k, j in enumerate(js)) if M[i][t] else 0.0
            return torch.tensor(out, dtype=torch.float64)

        ident = (lambda v: v)
        errs.append(_rel(adv.future_return(x, mask, include_current=True), loop(ident, 0)))
        errs.append(_rel(adv.future_return(x, mask, include_current=False), loop(ident, 1)))
        errs.append(_rel(adv.reward_to_go(x, mask, 0.7), loop(ident, 0, 0.7)))
        k3 = (lambda v: math.exp(-v) - 1 + v)
        errs.append(_rel(KLReward(Estimator.K3, RewardForm.REWARD_TO_GO).token_penalty(x, mask), loop(k3, 0)))
        fused = torch.tensor([sum(k3(v) for v, m in zip(row, mrow) if m) for row, mrow in zip(X, M)],
                             dtype=torch.float64)
        errs.append(_rel(KLReward(Estimator.K3, RewardForm.FUSED).sequence_penalty(x, mask), fused))
        for name, (est, local) in _FRPO_TERMS.items():
            ref = loop(lambda v: est(math.exp(v)), 1) + loop(lambda v: local(math.exp(v)), 0) - loop(
                lambda v: local(math.exp(v)), 1)  # the local term of token t alone
            errs.append(_rel(adv.frpo_regularizer(x, mask, name), ref))
            errs.append(_rel(FutureReturn(name).token_penalty(x, mask), ref))
    return max(errs)


def check_kl_values_rule(seeds) -> float:
    """k1, k2, k3 (both sides of k3's series cut-off) and the straight-through k+ (value of k, gradient of k2 =
    log_ratio) against math (Schulman 2020; verl ``+``)."""
    from rlkl.divergences import kl_estimate

    x = torch.tensor([-3.0, -0.7, -0.3, -1e-3, 2e-4, 0.2, 0.45, 0.6, 2.5], dtype=torch.float64).requires_grad_()
    X = x.tolist()
    ref = {"k1": [v for v in X], "k2": [0.5 * v * v for v in X], "k3": [math.expm1(-v) + v for v in X]}
    d = {"k1": [1.0] * len(X), "k2": X, "k3": [1 - math.exp(-v) for v in X]}
    errs = []
    for est in ("k1", "k2", "k3"):
        for st in (False, True):
            y = kl_estimate(x, est, straight_through_grad=st)
            (g,) = torch.autograd.grad(y.sum(), x)
            errs.append(_rel(y.detach(), torch.tensor(ref[est], dtype=torch.float64)))
            errs.append(_rel(g, torch.tensor(X if st else d[est], dtype=torch.float64)))
    # unnormalized KL Σ p log(p/q) + Σ (q − p) of positive measures (RPG arXiv 2505.17508 Def. 3.1), a zero mass
    # p = 0 contributing q (0 log 0 = 0)
    from rlkl.divergences import unnormalized_kl

    P, Q = [0.0, 0.3, 1.7, 0.05, 0.0], [0.4, 0.3, 0.9, 2.0, 1.1]
    ukl = sum((p * math.log(p / q) if p > 0 else 0.0) + q - p for p, q in zip(P, Q))
    log_p = torch.tensor([math.log(p) if p > 0 else -math.inf for p in P], dtype=torch.float64)
    got = unnormalized_kl(log_p, torch.tensor([math.log(q) for q in Q], dtype=torch.float64))
    errs.append(abs(float(got) - ukl) / ukl)
    return max(errs)


def _rpg_weight_reference(div: str, w: float, a: float, beta: float) -> float:
    """Weight with ∇J = E_{π_old}[Weight·∇log π_θ] (RPG arXiv 2505.17508 Props. E.1, E.3, 3.2, 3.6; Z_old = 1)."""
    return {"fkl": w * a + beta, "rkl": w * (a - beta * (math.log(w) + 1)), "ufkl": w * a - beta * (w - 1),
            "urkl": w * (a - beta * math.log(w))}[div]


def _rpg_alg2_reference(div, w, a, beta, clip) -> float:
    """d ℓ/d log π of RPG-REINFORCE with RPG-Style Clip (Alg. 2): −Weight on the active set {A' >= 0, w < 1 + ε2}
    ∪ {A' < 0, 1 − ε1 < w < c}, A' = A + (Weight − wA)/w, and 0 elsewhere."""
    weight = _rpg_weight_reference(div, w, a, beta)
    a_eff = a + (weight - w * a) / w
    active = w < 1 + clip.eps_high if a_eff >= 0 else 1 - clip.eps_low < w < clip.c
    return -weight if active else 0.0


def check_rpg_rule(seeds) -> float:
    """``rpg_loss`` for the four divergences × two forms × {token, sequence} without clip, and token-level
    RPG-REINFORCE with RPG-Style Clip: ∇_{log π} of the summed loss against −Weight written out (per token with
    w_t; per response with w = Π_t ρ_t and log π(y) = Σ_t log π_t, so every token of a response gets −Weight_i)."""
    from rlkl.losses import RPG_DIVERGENCES, RPGClip, rpg_loss

    errs, beta, clip = [], 0.3, RPGClip(0.2, 0.28, 1.5)
    for s in seeds:
        logp, logp_old, adv, mask = _batch(s)
        L, LO, AD, M = logp.detach().tolist(), logp_old.tolist(), adv.tolist(), mask.tolist()
        for div in RPG_DIVERGENCES:
            tok = [[-_rpg_weight_reference(div, math.exp(L[i][t] - LO[i][t]), AD[i][t], beta)
                    for t in range(len(L[i]))] for i in range(len(L))]
            seq = []
            for i in range(len(L)):
                w = math.exp(sum(L[i][t] - LO[i][t] for t in range(len(L[i])) if M[i][t]))
                seq.append([-_rpg_weight_reference(div, w, AD[i][0], beta)] * len(L[i]))
            alg2 = [[_rpg_alg2_reference(div, math.exp(L[i][t] - LO[i][t]), AD[i][t], beta, clip)
                     for t in range(len(L[i]))] for i in range(len(L))]
            for form in ("differentiable", "reinforce"):
                for level, ref in (("token", tok), ("sequence", seq)):
                    out = rpg_loss(logp, logp_old, adv, mask, div, form, beta, level)
                    (g,) = torch.autograd.grad(out.loss.sum(), logp)
                    errs.append(_rel(g * mask, torch.tensor(ref, dtype=torch.float64) * mask))
            out = rpg_loss(logp, logp_old, adv, mask, div, "reinforce", beta, "token", clip)
            (g,) = torch.autograd.grad(out.loss.sum(), logp)
            errs.append(_rel(g * mask, torch.tensor(alg2, dtype=torch.float64) * mask))
    return max(errs)


def check_rpg_clip_value_rule(seeds) -> float:
    """Differentiable RPG-Style Clip (Alg. 1): the loss value max(−wÂ, −clip(w)Â), then min(·, −cÂ) for Â < 0, with
    Â = A − β log w (urkl), A − β(log w + 1) (rkl), A − β(1 − 1/w) (ufkl), A + β/w (fkl)."""
    from rlkl.losses import RPG_DIVERGENCES, RPGClip, rpg_loss

    errs, beta, clip = [], 0.3, RPGClip(0.2, 0.28, 1.5)
    hat = {"urkl": lambda a, w: a - beta * math.log(w), "rkl": lambda a, w: a - beta * (math.log(w) + 1),
           "ufkl": lambda a, w: a - beta * (1 - 1 / w), "fkl": lambda a, w: a + beta / w}
    for s in seeds:
        logp, logp_old, adv, mask = _batch(s)
        L, LO, AD = logp.detach().tolist(), logp_old.tolist(), adv.tolist()
        for div in RPG_DIVERGENCES:
            ref = []
            for i in range(len(L)):
                row = []
                for t in range(len(L[i])):
                    w = math.exp(L[i][t] - LO[i][t])
                    h = hat[div](AD[i][t], w)
                    v = max(-w * h, -min(max(w, 1 - clip.eps_low), 1 + clip.eps_high) * h)
                    row.append(min(v, -clip.c * h) if h < 0 else v)
                ref.append(row)
            out = rpg_loss(logp, logp_old, adv, mask, div, "differentiable", beta, "token", clip)
            errs.append(_rel(out.loss.detach() * mask, torch.tensor(ref, dtype=torch.float64) * mask))
    return max(errs)


def _wg_reference(p: float, G: int, bessel: bool, eps: float) -> float:
    """w_G(p) = E[A_1 (r_1 − p)]/(p(1 − p)) over all 2^G binary reward tuples, A_1 = (r_1 − mean)/(std + ε) with
    the std written out (all-equal groups: A = 0)."""
    total = 0.0
    for r in itertools.product((0.0, 1.0), repeat=G):
        k = sum(r)
        a1 = 0.0 if k in (0, G) else (r[0] - k / G) / (_std(list(r), bessel) + eps)
        total += p ** k * (1 - p) ** (G - k) * a1 * (r[0] - p)
    return total / (p * (1 - p))


def check_utility_rule(seeds) -> float:
    """w_G, U_G = ∫_0^p w_G and U'(p) = d/dp 2·arcsin√p against the brute-force w_G, a 24-node Gauss–Legendre
    integral of it, and autograd of 2·asin(√p) (FRPO arXiv 2601.10201 Prop. 3.1)."""
    import numpy as np

    from rlkl.utility import finite_group_utility, finite_group_weight, grpo_utility_grad

    errs = []
    x, wq = np.polynomial.legendre.leggauss(24)
    for G, std, eps in ((2, "population", 0.0), (3, "bessel", 0.1), (5, "population", 0.0), (6, "bessel", 0.0)):
        for p in (0.15, 0.5, 0.8):
            bessel = std == "bessel"
            w_ref = _wg_reference(p, G, bessel, eps)
            u_ref = sum(wi * _wg_reference(p * (xi + 1) / 2, G, bessel, eps) for xi, wi in zip(x, wq)) * p / 2
            errs.append(abs(finite_group_weight(p, G, std, eps) - w_ref) / abs(w_ref))
            errs.append(abs(finite_group_utility(p, G, std, eps) - u_ref) / abs(u_ref))
    q = torch.tensor([0.1, 0.37, 0.5, 0.9], dtype=torch.float64).requires_grad_()
    (d,) = torch.autograd.grad((2 * torch.asin(torch.sqrt(q))).sum(), q)
    errs.append(_rel(grpo_utility_grad(q.detach()), d))
    return max(errs + [_conditional_means_error()])


def _conditional_means_error() -> float:
    """conditional_advantage_means (any equivariant advantage) against E[A_1 | r_1] summed over every G-tuple."""
    from rlkl.utility import conditional_advantage_means

    def skewed(r: torch.Tensor) -> torch.Tensor:  # equivariant, not symmetric in r: r_i·(1 + Σ r) − mean(r)
        rows = [[x * (1.0 + sum(row)) - sum(row) / len(row) for x in row] for row in r.tolist()]
        return torch.tensor(rows, dtype=torch.float64)

    errs = []
    for G in (2, 3, 4):
        for p in (0.2, 0.55):
            ref = {1.0: 0.0, 0.0: 0.0}
            for r in itertools.product((0.0, 1.0), repeat=G):
                prob_rest = p ** sum(r[1:]) * (1 - p) ** (G - 1 - sum(r[1:]))  # P(r_2..r_G)
                ref[r[0]] += prob_rest * float(skewed(torch.tensor([r], dtype=torch.float64))[0, 0])
            got = conditional_advantage_means(p, G, skewed)
            errs += [abs(got[0] - ref[1.0]) / max(abs(ref[1.0]), 1e-12), abs(got[1] - ref[0.0]) / max(abs(ref[0.0]),
                                                                                                     1e-12)]
    return max(errs)


def check_aggregation_answers_rule(seeds) -> float:
    """What :class:`rlkl.components.Aggregation` says of itself, from the aggregate's own weights ∂L/∂l_{i,t}:
    ``scale(T)`` is the per-token weight times B on full rows of T tokens (``horizon`` C for sum-norm), and
    ``normalizes_by_length`` holds exactly when the weights change with the rows' lengths. Returns 1.0 for a wrong
    predicate."""
    from rlkl.components import AggMode, Aggregation

    errs = []
    for mode in AggMode:
        agg = Aggregation(mode, 7 if mode is AggMode.SEQ_MEAN_TOKEN_SUM_NORM else None)
        weights = []
        for lengths in ((4, 4, 4), (4, 1, 2)):
            mask = torch.tensor([[t < n for t in range(4)] for n in lengths])
            loss = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
            (g,) = torch.autograd.grad(agg(loss, mask), loss)
            weights.append(g[mask].tolist())
        errs.append(abs(agg.scale(4) - 3 * weights[0][0]) / abs(agg.scale(4)))
        varies = len({round(v, 15) for v in weights[1]} | {round(weights[0][0], 15)}) > 1
        errs.append(0.0 if varies == agg.normalizes_by_length else 1.0)
    return max(errs)


def check_unclipped_rule(seeds) -> float:
    """``PolicyLoss.unclipped()`` removes every clip rule: PPO (with dual clip) and CISPO give −A·ρ_t per token,
    GSPO −A·s_i (Schulman et al. arXiv 1707.06347 L^CPI)."""
    from rlkl.components import CISPO, GSPO, PPOClip

    errs = []
    for s in seeds:
        logp, logp_old, adv, mask = _batch(s)
        rho = torch.exp(logp.detach() - logp_old)
        m = mask.to(torch.float64)
        s_i = torch.exp(((logp.detach() - logp_old) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True))
        for pl, ratio in ((PPOClip(0.1, 0.1, 1.2), rho), (CISPO(0.1, 0.1), rho), (GSPO(0.01, 0.01), s_i)):
            out = pl.unclipped()(logp, logp_old, adv, mask, 0.0)
            (g,) = torch.autograd.grad(out.loss.sum(), logp)
            errs.append(_rel(g * mask, (-adv * ratio).expand_as(g) * mask))
    return max(errs)


def check_method_composition_rule(seeds) -> float:
    """``Method.advantages`` and ``Method.loss`` of registered methods against the composition written out: fused
    k1 reward r_i − β Σ_t δ_t^old before GRPO's standardization; LOO advantage minus β Σ_{j>=t} δ_j^old
    (reward-to-go); PPO clip plus β·k3(δ_t) as a loss, aggregated seq-mean-token-mean (δ^old = log π_old −
    log π_ref)."""
    from rlkl.methods import RolloutBatch, get_method

    errs = []
    for s in seeds:
        logp, logp_old, _, mask = _batch(s, B=8)
        g = torch.Generator().manual_seed(200 + s)
        logp_ref = logp_old - 0.3 * torch.randn(logp_old.shape, generator=g, dtype=torch.float64)
        r = torch.randn(8, generator=g, dtype=torch.float64)
        batch = RolloutBatch(logp_old, logp_ref, mask, r, 4)
        D, M, R = (logp_old - logp_ref).tolist(), mask.tolist(), r.tolist()
        kl_seq = [sum(d for d, m in zip(D[i], M[i]) if m) for i in range(8)]
        m1 = get_method("grpo_k1_reward").replace(beta=0.5)
        shaped = [R[i] - 0.5 * kl_seq[i] for i in range(8)]
        fused = [(v - _mean(x)) / (_std(x, True) + m1.advantage.eps) for x in (shaped[:4], shaped[4:]) for v in x]
        errs.append(_rel(m1.advantages(batch)[:, 0], torch.tensor(fused, dtype=torch.float64)))
        m2 = get_method("ppo_k1_rtg").replace(beta=0.5)
        loo = [R[i] - _mean([R[j] for j in range(4 * (i // 4), 4 * (i // 4) + 4) if j != i]) for i in range(8)]
        rtg = [[(loo[i] - 0.5 * sum(D[i][j] for j in range(t, 4) if M[i][j])) if M[i][t] else 0.0 for t in range(4)]
               for i in range(8)]
        errs.append(_rel(m2.advantages(batch), torch.tensor(rtg, dtype=torch.float64)))
        m3 = get_method("grpo").replace(beta=0.5)
        A, L, LO, LR = m3.advantages(batch).tolist(), logp.detach().tolist(), logp_old.tolist(), logp_ref.tolist()
        clip = m3.policy_loss
        per_seq = []
        for i in range(8):
            toks = [_ppo_reference(L[i][t], LO[i][t], A[i][t], clip.low, clip.high, clip.dual)[0]
                    + 0.5 * (math.expm1(LR[i][t] - L[i][t]) + L[i][t] - LR[i][t]) for t in range(4) if M[i][t]]
            per_seq.append(_mean(toks))
        errs.append(abs(float(m3.loss(logp, batch)[0].detach()) - _mean(per_seq)) / abs(_mean(per_seq)))
    return max(errs)


def _others_rows(s: int):
    """Rewards of 3 groups of 4 (binary-ish with ties, and real) and per-row lengths 1..4."""
    g = torch.Generator().manual_seed(300 + s)
    r = torch.cat([torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64),
                   torch.randn(8, generator=g, dtype=torch.float64)])
    lengths = torch.randint(1, 5, (12,), generator=g).to(torch.float64)
    return r, lengths


def check_other_advantages_rule(seeds) -> float:
    """verl's other estimators against their rules in Python: OPO r_i − Σ|y_j|r_j/Σ|y_j| (Hao et al. arXiv
    2505.23585), pass@k [r_i − max_{j≠i} r_j]_+ ÷ (std + ε) (Chen et al. arXiv 2503.19595), GPG α·(r_i − mean_g r)
    with α = B/#{r ≠ 0} over the batch (Chu et al. arXiv 2504.02546), REINFORCE++ token whitening
    (x − μ)/√(σ² + ε) over valid tokens (Hu arXiv 2501.03262 eq. 10)."""
    from rlkl import advantages as adv
    from rlkl.components import LengthWeightedCentered

    errs = []
    for s in seeds:
        r, lengths = _others_rows(s)
        R, N = r.tolist(), lengths.tolist()
        groups = [list(range(k, k + 4)) for k in range(0, 12, 4)]
        opo = [R[i] - sum(N[j] * R[j] for j in gr) / sum(N[j] for j in gr) for gr in groups for i in gr]
        for got in (adv.length_weighted_centered(r, lengths, 4), LengthWeightedCentered().compute(r, 4, lengths)):
            errs.append(_rel(got, torch.tensor(opo, dtype=torch.float64)))
        for std, eps in (("bessel", 1e-6), ("population", 0.2)):
            passk = [max(R[i] - max(R[j] for j in gr if j != i), 0.0)
                     / (_std([R[j] for j in gr], std == "bessel") + eps) for gr in groups for i in gr]
            errs.append(_rel(adv.pass_at_k_advantage(r, 4, True, eps, std), torch.tensor(passk, dtype=torch.float64)))
        alpha = 12 / max(1, sum(v != 0 for v in R))
        gpg = [alpha * (R[i] - _mean([R[j] for j in gr])) for gr in groups for i in gr]
        errs.append(_rel(adv.gpg_advantage(r, 4, "batch"), torch.tensor(gpg, dtype=torch.float64)))
        _, _, _, mask = _batch(s)
        x = torch.randn(mask.shape, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        vals = [v for v, m in zip(x.flatten().tolist(), mask.flatten().tolist()) if m]
        for std, eps in (("bessel", 1e-8), ("population", 0.05)):
            mu, var = _mean(vals), _std(vals, std == "bessel") ** 2
            ref = torch.tensor([[(v - mu) / math.sqrt(var + eps) if m else 0.0 for v, m in zip(row, mrow)]
                                for row, mrow in zip(x.tolist(), mask.tolist())], dtype=torch.float64)
            errs.append(_rel(adv.masked_whiten(x, mask, eps, std), ref))
    return max(errs)


# ---------------------------------------------------------------------------------------------------------------
# rollout corrections and the engine's sampler


def _correction_reference(kind: str, lr: list, m: list, upper, lower) -> list:
    """w of one row from log ρ_t (ρ = π_old/q) written out: TIS clamp, MIS ρ·1[lower <= ρ <= upper] per token or
    per sequence (Π_t ρ_t), geometric mean exp(mean_t log ρ_t) capped; log-ratios clamped to ±20; 0 on padding."""
    def rho(x):
        return math.exp(min(max(x, -20.0), 20.0))

    valid = [x for x, ok in zip(lr, m) if ok]
    seq = rho(sum(valid))
    per = {"token_tis": None, "seq_tis": seq, "token_mis": None, "seq_mis": seq, "gm": rho(sum(valid) / len(valid))}
    out = []
    for x, ok in zip(lr, m):
        r = rho(x) if per[kind] is None else per[kind]
        if kind.endswith("mis"):
            w = r if (upper is None or r <= upper) and (lower is None or r >= lower) else 0.0
        else:
            w = min(r, upper) if upper is not None else r
            w = max(w, lower) if lower is not None else w
        out.append(w if ok else 0.0)
    return out


def check_rollout_correction_rule(seeds) -> float:
    """Each rollout correction's weights from ``RolloutBatch`` log-probs against :func:`_correction_reference`
    (ρ_t = π_old/q_reported), and ``grpo_tis``'s loss against PPO·w + β·k3 written out (w on the policy term only)."""
    from rlkl.components import GeometricMeanIS, MaskReplay, SequenceMIS, SequenceTIS, TokenMIS, TokenTIS
    from rlkl.methods import RolloutBatch, get_method

    cases = [(TokenTIS(1.3, floor=0.8), "token_tis", 1.3, 0.8), (SequenceTIS(1.5, floor=0.6), "seq_tis", 1.5, 0.6),
             (TokenTIS(None), "token_tis", None, None), (TokenMIS(1.3, lower=0.8), "token_mis", 1.3, 0.8),
             (SequenceMIS(1.8, lower=0.5), "seq_mis", 1.8, 0.5), (GeometricMeanIS(1.1), "gm", 1.1, None)]
    errs = []
    for s in seeds:
        logp, logp_old, _, mask = _batch(s, B=8)
        g = torch.Generator().manual_seed(400 + s)
        logp_rollout = logp_old + 0.3 * torch.randn(logp_old.shape, generator=g, dtype=torch.float64)
        logp_ref = logp_old - 0.3 * torch.randn(logp_old.shape, generator=g, dtype=torch.float64)
        batch = RolloutBatch(logp_old, logp_ref, mask, torch.randn(8, generator=g, dtype=torch.float64), 4,
                             logp_rollout=logp_rollout)
        LO, LQ, M = logp_old.tolist(), logp_rollout.tolist(), mask.tolist()
        lr = [[(a - b) if ok else 0.0 for a, b, ok in zip(*rows)] for rows in zip(LO, LQ, M)]
        for corr, kind, upper, lower in cases:
            got = get_method("grpo").replace(correction=corr).rollout_weights(batch)
            ref = [_correction_reference(kind, lr[i], M[i], upper, lower) for i in range(8)]
            errs.append(_rel(got, torch.tensor(ref, dtype=torch.float64)))
        m = get_method("grpo").replace(beta=0.5, correction=TokenTIS(1.3))
        A, L, LR = m.advantages(batch).tolist(), logp.detach().tolist(), logp_ref.tolist()
        W = [_correction_reference("token_tis", lr[i], M[i], 1.3, None) for i in range(8)]
        clip = m.policy_loss
        per_seq = [_mean([_ppo_reference(L[i][t], LO[i][t], A[i][t], clip.low, clip.high, clip.dual)[0] * W[i][t]
                          + 0.5 * (math.expm1(LR[i][t] - L[i][t]) + L[i][t] - LR[i][t]) for t in range(4) if M[i][t]])
                   for i in range(8)]
        errs.append(abs(float(m.loss(logp, batch)[0].detach()) - _mean(per_seq)) / abs(_mean(per_seq)))
        try:  # mask replay renormalizes over the kept set: without the batch's kept mass it cannot run
            get_method("grpo").replace(correction=MaskReplay()).rollout_weights(batch)
            return math.inf
        except ValueError:
            pass
    return max(errs)


def _sampler_reference(z: list, tau: float, top_k, top_p: float, min_p: float) -> tuple[list, float]:
    """(kept flags, kept mass S) of top-k → top-p → min-p on π̃ = softmax(z/τ), ties by index, the token that
    crosses p kept; S = Σ_{a∈K} π̃(a)."""
    e = [math.exp(v / tau - max(z) / tau) for v in z]
    p = [v / sum(e) for v in e]
    order = sorted(range(len(z)), key=lambda a: (-p[a], a))
    keep = set(order[:top_k] if top_k is not None else order)
    total, acc, kept_p = sum(p[a] for a in keep), 0.0, set()
    for a in [a for a in order if a in keep]:
        if acc < top_p:
            kept_p.add(a)
        acc += p[a] / total
    keep = {a for a in kept_p if p[a] >= min_p * max(p)}
    return [a in keep for a in range(len(z))], sum(p[a] for a in keep)


def check_sampler_rule(seeds) -> float:
    """``Sampler.transform`` (kept set, log S, log q) against :func:`_sampler_reference`, and the trainer-side
    ``kept_logmass`` / ``kept_log_softmax`` (mask replay) of shifted logits against log Σ_K e^z − log Σ e^z and
    z − log Σ_K e^z on K."""
    from rlkl.sampling import Sampler, kept_log_softmax, kept_logmass

    errs = []
    for s in seeds:
        g = torch.Generator().manual_seed(500 + s)
        z = 1.5 * torch.randn(4, 7, generator=g, dtype=torch.float64) + 3.0  # unnormalized logits
        for tau, k, tp, mp in ((0.7, None, 0.8, 0.0), (1.0, 4, 0.9, 0.05), (1.3, 5, 1.0, 0.2), (1.0, None, 0.5, 0.0)):
            out = Sampler(temperature=tau, top_k=k, top_p=tp, min_p=mp).transform(z)
            for row, zr in enumerate(z.tolist()):
                kept, mass = _sampler_reference(zr, tau, k, tp, mp)
                if out.kept[row].tolist() != kept:
                    return math.inf
                errs.append(abs(math.exp(float(out.log_kept_mass[row])) - mass) / mass)
                lz = [v / tau for v, ok in zip(zr, kept) if ok]
                lse = max(lz) + math.log(sum(math.exp(v - max(lz)) for v in lz))
                q = [math.exp(v / tau - lse) if ok else 0.0 for v, ok in zip(zr, kept)]
                errs.append(_rel(out.log_q[row].exp(), torch.tensor(q, dtype=torch.float64)))
                lse_k = math.log(sum(math.exp(v) for v, ok in zip(zr, kept) if ok))
                lse_all = math.log(sum(math.exp(v) for v in zr))
                kt = torch.tensor(kept)
                errs.append(abs(float(kept_logmass(z[row], kt)) - (lse_k - lse_all)) / abs(lse_k - lse_all or 1.0))
                ref = torch.tensor([v - lse_k if ok else 0.0 for v, ok in zip(zr, kept)], dtype=torch.float64)
                got = kept_log_softmax(z[row], kt)
                errs.append(_rel(torch.where(kt, got, torch.zeros_like(got)), ref))
    return max(errs)
