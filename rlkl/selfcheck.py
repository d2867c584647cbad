"""Exact checks of the estimator library on single categorical states, for `rlkl verify` (section "estimators").

Each check enumerates every action of a random softmax state in float64, so expectations are exact sums; the
same functions (`rlkl.losses.kl_loss`, `rlkl.divergences`, `rlkl.utility`, `rlkl.losses.rpg_loss`) are the ones
the exact engine and the trainer call. Tolerance: 1e-10 relative (float64 round-off). Each row cites its paper and
the claim id in docs/theory.md.
"""

from __future__ import annotations

import itertools
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


def verify_rows(quick: bool = True) -> list[Verdict]:
    """Run the estimator-library checks; see module docstring."""
    from rlkl.divergences import F_DIVERGENCE_NAMES, get_f_divergence, k2, k3, k3_straight_through
    from rlkl.losses import RPG_DIVERGENCES, rpg_loss
    from rlkl.advantages import group_standardized
    from rlkl.utility import finite_group_weight

    seeds = range(3 if quick else 10)
    rows = []

    def loss_vs_kl(est, direction, iw=False, st=False, off=False):
        def run():
            errs = []
            for s in seeds:
                theta, ref = _state(s)
                old = torch.randn(5, generator=torch.Generator().manual_seed(100 + s), dtype=torch.float64) if off else None
                errs.append(_rel(_expected_loss_grad(theta, ref, est, iw, st, old), _kl_grad(theta, ref, direction)))
            return max(errs)
        return run

    def k1_zero():
        errs = []
        for s in seeds:
            theta, ref = _state(s)
            errs.append(float(_expected_loss_grad(theta, ref, "k1").abs().max()))
        return max(errs)

    rows.append(_check("k1 as a loss: E_pi[grad k1] = 0",
                       "Tang & Munos arXiv 2506.09477 §3; docs/theory.md T2", k1_zero))
    rows.append(_check("k2 as a loss: E_pi[grad k2] = grad KL(pi||ref) (local)",
                       "Liu et al. arXiv 2510.01555; docs/theory.md T3",
                       loss_vs_kl("k2", "reverse")))
    rows.append(_check("k3 as a loss: E_pi[grad k3] = grad KL(ref||pi), FORWARD",
                       "FRPO arXiv 2601.10201 App. B Table 3; docs/theory.md T4",
                       loss_vs_kl("k3", "forward")))
    rows.append(_check("rho*k3 under pi_old: E[grad] = grad KL(pi||ref), off-policy",
                       "RPG arXiv 2505.17508 §2.2; docs/theory.md T5",
                       loss_vs_kl("k3", "reverse", iw=True, off=True)))
    rows.append(_check("k3+ (straight-through) = local reverse-KL gradient",
                       "verl kl_penalty 'low_var_kl+'; docs/theory.md T6",
                       loss_vs_kl("k3", "reverse", st=True)))

    def st_identity():
        x = torch.linspace(-5, 5, 41, dtype=torch.float64).requires_grad_()
        v = k3_straight_through(x)
        (g,) = torch.autograd.grad(v.sum(), x)
        (g2,) = torch.autograd.grad(k2(x).sum(), x)
        return max(_rel(v.detach(), k3(x.detach())), _rel(g, g2))

    rows.append(_check("straight-through: value = k3, gradient = grad k2",
                       "verl PR #6058; docs/theory.md T6", st_identity))

    def f_unbiased():
        errs = []
        for name in F_DIVERGENCE_NAMES:
            div = get_f_divergence(name, alpha=0.5)
            for s in seeds:
                theta, ref = _state(s)
                logp, logq = torch.log_softmax(theta.detach(), -1), torch.log_softmax(ref, -1)
                est = (logp.exp() * div.sampled_estimate(logp - logq)).sum()
                errs.append(abs(float(est - div.exact(theta.detach(), ref))) / max(abs(float(div.exact(theta.detach(), ref))), 1e-300))
        return max(errs)

    rows.append(_check("f-divergences: E_pi[f(u)/u] = D_f(pi||ref), all 10 members",
                       "FRPO arXiv 2601.10201 Thm 4.1; docs/theory.md T8", f_unbiased))

    def wg_bruteforce():
        errs = []
        for G in (2, 3, 4):
            for std in ("population", "bessel"):
                for p in (0.2, 0.55):
                    # E[A_1 ∇log π(y_1)] = Σ over reward tuples P(r) A_1 (r_1 − p)/(p(1−p)) ∇p
                    total = 0.0
                    for r in itertools.product((0.0, 1.0), repeat=G):
                        prob = p ** sum(r) * (1 - p) ** (G - sum(r))
                        a1 = float(group_standardized(torch.tensor(r, dtype=torch.float64), G, 0.0, std)[0])
                        total += prob * a1 * (r[0] - p) / (p * (1 - p))
                    errs.append(abs(total - finite_group_weight(p, G, std)) / abs(total))
        return max(errs)

    rows.append(_check("w_G(p) = brute-force enumeration of G-tuples (G=2..4)",
                       "derived here; docs/theory.md T12", wg_bruteforce))

    def rpg_per_sample():
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

    rows.append(_check("RPG: per-sample grad(differentiable) = grad(REINFORCE), 8 surrogates x 2 levels",
                       "RPG arXiv 2505.17508 Prop. 4.1; docs/theory.md T14", rpg_per_sample))
    return rows
