"""A planted-bug score: apply curated bugs to a temporary copy of the repository, one at a time, and report which
ones ``rlkl verify --full`` and the default pytest run catch ("kill").

A verifier is only as good as the bugs it catches. Each mutant below is one plausible mistake in rlkl's core
(a clip bound, a dual-clip min/max, Bessel vs population std, where ε goes, an inclusive vs strictly-future sum,
an estimator's sign, an aggregation denominator, a missing or extra ``.detach()``, the direction of an importance
weight, ...), written as (file, an exact snippet of the original that must occur exactly once, its replacement, a
one-line description). A snippet that no longer occurs exactly once makes the script refuse to run (and the
default test ``tests/test_mutants_list.py`` fail), so the list cannot rot silently.

For each mutant, in a fresh temporary copy of the working tree (``git ls-files`` tracked + untracked-not-ignored
files; the working tree itself is never touched):

  (a) ``python -m rlkl verify --full --json``: killed when it exits non-zero, prints no parsable verdicts, or a
      verdict is FAIL / not as predicted. Only the sections that import the mutated file run (``--only``): the
      baseline probes each section on the unmutated copy and records the rlkl files it imported; a section that
      never imports a file cannot change its verdicts when that file changes (``--all-sections`` runs them all);
  (b) the default pytest run (``python -m pytest -x -q``, the repository's own addopts: ``-m 'not slow'``):
      first the test files mapped to the mutated module (``TESTS_BY_MODULE``; a subset of the default run, so a
      failure there is a failure of the default run), and only if they all pass, the whole default suite.
      ``--pytest mapped`` stops after the mapped files (faster, weaker: a survivor there is not a survivor of the
      default run).

The copy runs with this interpreter (the worktree's venv) and ``PYTHONPATH=<copy>``; before anything runs, the
script checks that ``rlkl`` and the mutated module resolve inside the copy (the editable install points at the
worktree) and refuses otherwise. The unmutated copy is run first (``--no-baseline`` skips it): it must pass both
checks, or no score is meaningful.

Usage (docs/mutation.md)::

    .venv/bin/python scripts/mutants.py                    # all mutants, table and score
    .venv/bin/python scripts/mutants.py --only ppo-clip-high-2x --only k3-sign --jobs 2 --json
    .venv/bin/python scripts/mutants.py --list             # the curated list
    .venv/bin/python scripts/mutants.py --check            # only check that every snippet applies
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent


class Mutant(NamedTuple):
    """One planted bug: replace the single occurrence of ``old`` in ``path`` by ``new``."""

    id: str
    path: str  # relative to the repository root
    old: str
    new: str
    what: str


_D, _A, _L, _U = "rlkl/divergences.py", "rlkl/advantages.py", "rlkl/losses.py", "rlkl/utility.py"
_C, _M, _S = "rlkl/components.py", "rlkl/methods.py", "rlkl/sampling.py"

MUTANTS: list[Mutant] = [
    # ---- divergences: KL estimators, straight-through, f-divergences, exact KLs --------------------------------
    Mutant("k1-sign", _D, "    check_float(\"log_ratio\", log_ratio)\n    return log_ratio\n",
           "    check_float(\"log_ratio\", log_ratio)\n    return -log_ratio\n",
           "k1 = −log_ratio (the estimate of KL(π_ref‖π)'s sign convention)"),
    Mutant("k2-no-half", _D, "return 0.5 * log_ratio * log_ratio", "return log_ratio * log_ratio",
           "k2 = log_ratio² without the ½"),
    Mutant("k3-sign", _D, "value = torch.where(x.abs() < cut, series, em1 + x if keep_expm1 else em1.add_(x))",
           "value = torch.where(x.abs() < cut, series, torch.expm1(x) - x)",
           "k3's direct branch e^{x} − 1 − x (the k3 of the other direction) for |x| >= 0.5"),
    Mutant("k3-series-odd-terms", _D,
           "poly = torch.mul(y, 1.0 / math.factorial(order)).add_(1.0 / math.factorial(order - 1))  # Horner's first "
           "step\n    for k in range(order - 2, 1, -1):  # Σ_{k=2}^{K} y^k/k! = y²·Σ_{j=0}^{K−2} y^j/(j+2)!\n"
           "        poly.mul_(y)",
           "poly = torch.mul(x, 1.0 / math.factorial(order)).add_(1.0 / math.factorial(order - 1))  # Horner's first "
           "step\n    for k in range(order - 2, 1, -1):  # Σ_{k=2}^{K} y^k/k! = y²·Σ_{j=0}^{K−2} y^j/(j+2)!\n"
           "        poly.mul_(x)",
           "k3's Taylor series in +x instead of −x (odd terms with the wrong sign) for |x| < 0.5"),
    Mutant("k3-series-factorial", _D,
           "poly = torch.mul(y, 1.0 / math.factorial(order)).add_(1.0 / math.factorial(order - 1))  # Horner's first "
           "step\n    for k in range(order - 2, 1, -1):  # Σ_{k=2}^{K} y^k/k! = y²·Σ_{j=0}^{K−2} y^j/(j+2)!\n"
           "        poly.mul_(y).add_(1.0 / math.factorial(k))",
           "poly = torch.mul(y, 1.0 / math.factorial(order - 1)).add_(1.0 / math.factorial(order - 2))  # Horner's "
           "first step\n    for k in range(order - 2, 1, -1):  # Σ_{k=2}^{K} y^k/k! = y²·Σ_{j=0}^{K−2} y^j/(j+2)!\n"
           "        poly.mul_(y).add_(1.0 / math.factorial(k - 1))",
           "k3's series coefficients 1/(k−1)! instead of 1/k!"),
    Mutant("st-value-grad-swap", _D, "return value.detach() + (grad_source - grad_source.detach())",
           "return grad_source.detach() + (value - value.detach())",
           "straight_through: value and gradient sources swapped"),
    Mutant("st-missing-detach", _D, "return value.detach() + (grad_source - grad_source.detach())",
           "return value + (grad_source - grad_source.detach())",
           "straight_through: the value is not detached (gradient of k3 + k2)"),
    Mutant("k3plus-swap", _D, "return straight_through(k3(log_ratio), k2(log_ratio))",
           "return straight_through(k2(log_ratio), k3(log_ratio))",
           "k3+ = value of k2 with the gradient of k3 (swapped)"),
    Mutant("kl-estimate-st-args", _D, "return straight_through(value, k2(log_ratio))",
           "return straight_through(k2(log_ratio), value)",
           "kl_estimate(straight_through_grad=True): value of k2, gradient of the estimator"),
    Mutant("kl-estimate-dispatch", _D, 'value = {"k1": k1, "k2": k2, "k3": k3}[estimator](log_ratio)',
           'value = {"k1": k1, "k2": k3, "k3": k2}[estimator](log_ratio)',
           "kl_estimate: k2 and k3 swapped in the dispatch table"),
    Mutant("kl-estimate-st-k1", _D, 'if straight_through_grad and estimator != "k2":',
           'if straight_through_grad and estimator == "k3":',
           "kl_estimate: the straight-through k1+ silently stays plain k1"),
    Mutant("fwd-kl-f-prime-centered-sign", _D,
           '"−log u  (KL(π_ref‖π))", f_prime_centered_of_log=lambda l: -torch.expm1(-l),',
           '"−log u  (KL(π_ref‖π))", f_prime_centered_of_log=lambda l: torch.expm1(-l),',
           "forward KL: f'(u) − f'(1) = 1/u − 1 instead of 1 − 1/u (FRPO's local term)"),
    Mutant("rev-kl-k3-estimate", _D, 'return FDivergence("reverse_kl_k3", _u_k3, lambda l: l, _k3,',
           'return FDivergence("reverse_kl_k3", _u_k3, lambda l: l, _em1x,',
           "reverse_kl_k3: sampled estimate k3(−l) instead of k3(l)"),
    Mutant("k3-grad-sign", _D, "return torch.mul(grad, em1).neg_()  # grad·(−expm1(−x))",
           "return torch.mul(grad, em1)  # grad·(−expm1(−x))",
           "k3's analytic derivative e^{−x} − 1 instead of 1 − e^{−x} (sign of the custom backward)"),
    Mutant("k3-grad-direction", _D, "        value, em1 = _k3_value(x, keep_expm1=True)\n        ctx.save_for_backward(x, em1)",
           "        value, em1 = _k3_value(x, keep_expm1=True)\n        ctx.save_for_backward(x, torch.expm1(x))",
           "k3's analytic derivative from expm1(+x): 1 − e^{x}, the derivative of the other direction's k3"),
    Mutant("hellinger-half", _D, "return torch.expm1(0.5 * l) ** 2", "return torch.expm1(l) ** 2",
           "Hellinger f(u) = (u − 1)² instead of (√u − 1)²"),
    Mutant("exact-kl-direction", _D, "lr = torch.where(p0 | q0, torch.zeros_like(lp), lp - lq)  # 0·(−inf − x)",
           "lr = torch.where(p0 | q0, torch.zeros_like(lp), lq - lp)  # 0·(−inf − x)",
           "exact_kl: Σ p log(q/p) (sign of the log ratio)"),
    Mutant("ukl-mass-term", _D, "term = torch.where(p0, log_q.exp(), torch.where(q0,",
           "term = torch.where(p0, torch.zeros_like(term), torch.where(q0,",
           "unnormalized_kl: a p = 0 category contributes 0 instead of q (mass correction dropped)"),
    # ---- advantages ------------------------------------------------------------------------------------------
    Mutant("std-bessel-population-swap", _A, 'n = x.shape[dim] - (1 if std == "bessel" else 0)',
           'n = x.shape[dim] - (0 if std == "bessel" else 1)', "standardization: Bessel and population std swapped"),
    Mutant("std-eps-inside-sqrt", _A, "centred / (s + eps_scaled))", "centred / torch.sqrt(var + eps_scaled))",
           "GRPO advantage: ε inside the square root, (x − μ)/√(σ² + ε)"),
    Mutant("std-eps-dropped", _C, "return _adv.group_standardized(rewards, group_size, self.eps, self.std.value)",
           "return _adv.group_standardized(rewards, group_size, 0.0, self.std.value)",
           "GroupStandardized component ignores its ε"),
    Mutant("group-centered-batch-mean", _A, "return (g - g.mean(dim=-1, keepdim=True)).reshape(-1)",
           "return (g - g.mean()).reshape(-1)", "Dr. GRPO advantage centred on the batch mean, not the group's"),
    Mutant("loo-denominator", _A, "return ((g - g.mean(dim=-1, keepdim=True)) * (G / (G - 1))).reshape(-1)",
           "return ((g - g.mean(dim=-1, keepdim=True)) * ((G - 1) / G)).reshape(-1)",
           "RLOO: factor (G−1)/G instead of G/(G−1) (baseline includes the sample)"),
    Mutant("future-return-inclusive-swap", _A, "    if include_current:\n        out = inclusive\n",
           "    if not include_current:\n        out = inclusive\n",
           "future_return: inclusive and strictly-future sums swapped"),
    Mutant("future-return-shift", _A,
           "out = torch.cat([inclusive[:, 1:], torch.zeros_like(inclusive[:, :1])], dim=-1)",
           "out = torch.cat([torch.zeros_like(inclusive[:, :1]), inclusive[:, :-1]], dim=-1)",
           "future_return(include_current=False): shifted the wrong way (a past sum)"),
    Mutant("rtg-gamma-off-by-one", _A, "running = torch.where(m, token_rewards[:, t] + gamma * running, running)",
           "running = torch.where(m, gamma * (token_rewards[:, t] + running), running)",
           "discounted reward-to-go: the current reward is discounted too (off by one)"),
    Mutant("rtg-strictly-future", _C,
           "return _adv.reward_to_go(kl_estimate(log_ratio_old, self.estimator.value), mask)",
           "return _adv.future_return(kl_estimate(log_ratio_old, self.estimator.value), mask, include_current=False)",
           "KLReward(reward_to_go): strictly-future sum, the token's own KL dropped (off by one)"),
    Mutant("frpo-future-inclusive", _A,
           "future = _future_return(est, mask, include_current=False)",
           "future = _future_return(est, mask, include_current=True)",
           "FRPO regularizer: inclusive future sum on top of the local term (double-counts it)"),
    Mutant("frpo-no-local", _C,
           "return _adv.frpo_regularizer(log_ratio_old, mask, self.divergence, include_local=True)",
           "return _adv.frpo_regularizer(log_ratio_old, mask, self.divergence, include_local=False)",
           "FRPO (FutureReturn): the local term f'(u_t) − f'(1) dropped"),
    Mutant("opo-unweighted", _A, "baseline = (L * g).sum(-1, keepdim=True) / L.sum(-1, keepdim=True)",
           "baseline = g.mean(-1, keepdim=True)", "OPO baseline unweighted by length (Dr. GRPO's mean)"),
    Mutant("passk-abs", _A, "adv = torch.clamp(g - others, min=0.0)", "adv = (g - others).abs()",
           "pass@k advantage |r_i − max_{j≠i} r_j| instead of its positive part"),
    Mutant("whiten-bessel-swap", _A, 'var_y = (y * y).sum(-1, keepdim=True) / (n - 1 if std == "bessel" else n)',
           'var_y = (y * y).sum(-1, keepdim=True) / (n if std == "bessel" else n - 1)',
           "token whitening: Bessel and population variance swapped"),
    Mutant("gpg-alpha-group", _A, "alpha = g.numel() / torch.clamp((g != 0).sum().to(g.dtype), min=1.0)",
           "alpha = group_size / torch.clamp((g != 0).sum().to(g.dtype), min=1.0)",
           "GPG α = G/#nonzero over the batch instead of B/#nonzero"),
    # ---- losses ---------------------------------------------------------------------------------------------
    Mutant("ppo-clip-high-2x", _L, "neg_a * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high))",
           "neg_a * torch.clamp(ratio, 1.0 - clip_low, 1.0 + 2 * clip_high))",
           "PPO upper clip bound 1 + 2·ε_high (the issue's example)"),
    Mutant("ppo-clip-low-2x", _L, "neg_a * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high))",
           "neg_a * torch.clamp(ratio, 1.0 - 2 * clip_low, 1.0 + clip_high))",
           "PPO lower clip bound 1 − 2·ε_low"),
    Mutant("ppo-max-min", _L, "loss = torch.where(clipped > unclipped, clipped, unclipped)",
           "loss = torch.where(clipped < unclipped, clipped, unclipped)",
           "PPO: min instead of max of the two (negated) surrogates"),
    Mutant("ppo-dual-min-max", _L, "dual_on = (A < 0) & (loss.detach() > dual_loss)",
           "dual_on = (A < 0) & (loss.detach() < dual_loss)", "dual clip: max instead of min"),
    Mutant("ppo-dual-sign", _L, "dual_on = (A < 0) & (loss.detach() > dual_loss)",
           "dual_on = (A > 0) & (loss.detach() > dual_loss)",
           "dual clip applied to positive advantages"),
    Mutant("ppo-ratio-direction", _L, "log_ratio = torch.clamp(logp - logp_old.detach(), -LOG_RATIO_CLAMP",
           "log_ratio = torch.clamp(logp_old.detach() - logp, -LOG_RATIO_CLAMP",
           "PPO importance ratio π_old/π_θ (direction)"),
    Mutant("reinforce-adv-sign", _L, "loss = -advantages.detach() * logp  # sg[A]",
           "loss = advantages.detach() * logp  # sg[A]", "REINFORCE loss +A·log π (ascends −J)"),
    Mutant("is-k3-ratio-direction", _L, "ratio = torch.exp(torch.clamp(logp - logp_old.detach(), -LOG_RATIO_CLAMP, "
           "LOG_RATIO_CLAMP))\n    return ratio * value",
           "ratio = torch.exp(torch.clamp(logp_old.detach() - logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))\n"
           "    return ratio * value", "ρ·k3 KL loss with ρ = π_old/π_θ (direction of the importance weight)"),
    Mutant("is-k3-ratio-detached", _L, "    return ratio * value\n",
           "    return ratio.detach() * value\n",
           "ρ·k3 KL loss with sg[ρ]: an extra .detach() (TRL's coef_1 is differentiable)"),
    Mutant("kl-loss-ref-sign", _L, "value = kl_estimate(logp - logp_ref.detach(), estimator, straight_through)",
           "value = kl_estimate(logp_ref.detach() - logp, estimator, straight_through)",
           "KL loss on log π_ref − log π (sign of δ)"),
    Mutant("kl-loss-ref-sign-method", _L, "log_ratio = logp - logp_ref.detach()\n    value = _KL_VALUES",
           "log_ratio = logp_ref.detach() - logp\n    value = _KL_VALUES",
           "KLLoss (a Method's path, _kl_loss): k on log π_ref − log π (sign of δ)"),
    Mutant("kl-loss-st-missing-detach", _L, "value = value.detach() + (grad_source - grad_source.detach())",
           "value = value + (grad_source - grad_source.detach())",
           "KLLoss straight-through (k1+/k3+) in a Method: the value is not detached (gradient of k + k2)"),
    Mutant("kl-loss-k2-no-half", _L, '"k2": lambda x: 0.5 * x * x', '"k2": lambda x: x * x',
           "KLLoss k2 in a Method: log_ratio² without the ½ (twice the reverse-KL gradient)"),
    Mutant("agg-token-mean-per-seq", _L, "return (lx * (m / m.sum())).sum()",
           "return (lx * (m / m.sum(-1, keepdim=True).clamp_min(1.0))).sum()",
           "token-mean divides by each sequence's own length and sums over sequences"),
    Mutant("agg-seq-mean-B", _L, "return (per_seq / n_seq).sum()", "return (per_seq / loss.shape[0]).sum()",
           "seq-mean-token-mean divides by B (rows with no token included) instead of B'"),
    Mutant("agg-seq-mean-token-sum-mean", _L, "return (lx.sum(-1) / n_seq).sum()",
           "return (lx.sum(-1) / mask.sum()).sum()",
           "seq-mean-token-sum divides by the token count (token-mean) instead of the sequence count"),
    Mutant("agg-sum-norm-no-B", _L, "return (lx / (loss.shape[0] * C)).sum()", "return (lx / C).sum()",
           "seq-mean-token-sum-norm without the 1/B"),
    Mutant("gspo-sum-not-mean", _L, "seq_log_ratio = ((logp - logp_old.detach()) * m).sum(-1) / m.sum(-1)",
           "seq_log_ratio = ((logp - logp_old.detach()) * m).sum(-1)",
           "GSPO sequence ratio exp(Σ_t log ρ) instead of exp(mean_t log ρ)"),
    Mutant("gspo-missing-detach", _L, "s_token = torch.exp(seq_log_ratio.detach()[:, None] + logp - logp.detach())",
           "s_token = torch.exp(seq_log_ratio[:, None] + logp - logp.detach())",
           "GSPO-token: sg[s_i] missing (the sequence ratio's gradient leaks in)"),
    Mutant("gspo-clip-high-low", _L, "torch.clamp(s_token, 1.0 - clip_low, 1.0 + clip_high))",
           "torch.clamp(s_token, 1.0 - clip_low, 1.0 + clip_low))",
           "GSPO upper clip bound uses ε_low"),
    Mutant("cispo-missing-detach", _L, "loss = -weight.detach() * A * logp",
           "loss = -weight * A * logp", "CISPO: the capped weight is not detached (gradient through ρ)"),
    Mutant("cispo-cap", _L, "weight = torch.clamp(ratio, min=low, max=1.0 + clip_high)",
           "weight = torch.clamp(ratio, min=low, max=1.0 - clip_high)", "CISPO cap at 1 − ε_high"),
    Mutant("rpg-weight-fkl", _L, "        return w * adv + beta\n", "        return w * adv - beta\n",
           "RPG FKL weight wA − β instead of wA + β"),
    Mutant("rpg-weight-rkl", _L, "return w * (adv - beta * (log_w + 1.0))", "return w * (adv - beta * (log_w - 1.0))",
           "RPG RKL weight w(A − β(log w − 1))"),
    Mutant("rpg-weight-ufkl", _L, "return z_old * (w * adv - beta * (w - 1.0))", "return z_old * (w * adv - beta * w)",
           "RPG UFKL weight without the +β (mass term)"),
    Mutant("rpg-weight-urkl", _L, "    return z_old * w * (adv - beta * log_w)\n",
           "    return z_old * w * (adv + beta * log_w)\n", "RPG URKL weight w(A + β log w)"),
    Mutant("rpg-surrogate-fkl", _L, "return -w * adv - beta * lp", "return -w * adv + beta * lp",
           "RPG FKL differentiable surrogate −wA + β lp"),
    Mutant("rpg-surrogate-urkl", _L, "return z_old * (-w * adv + beta * (w * log_w - w))",
           "return z_old * (-w * adv + beta * (w * log_w + w))", "RPG URKL differentiable surrogate w log w + w"),
    Mutant("rpg-reinforce-no-detach", _L, "per_sample = -weight.detach() * lp  # −sg[Weight]·lp",
           "per_sample = -weight * lp  # −sg[Weight]·lp", "RPG-REINFORCE: sg[Weight] missing"),
    Mutant("rpg-seq-lp-first-token", _L, "lp = (logp * m).sum(-1, keepdim=True)  # [B, 1] log π_θ(y)",
           "lp = logp[:, :1]  # [B, 1] log π_θ(y)",
           "sequence-level RPG: log π_θ(y) is the first token's log-prob only"),
    Mutant("agg-rows-no-count", _L, "return (x * k / n_seq).sum()", "return (x / n_seq).sum()",
           "seq-mean-token-sum of a one-value-per-response ([B, 1]) loss counts each response once, not per token"),
    Mutant("rpg-seq-no-spread", _L,
           "loss = per_sample * m if level == \"token\" else per_sample / lengths",
           "loss = per_sample * m if level == \"token\" else per_sample",
           "sequence-level RPG: ℓ_i put on every token (|y_i|·ℓ_i in total)"),
    Mutant("rpg-dual-clip-max", _L, "loss = torch.where(neg, torch.minimum(loss, -clip.c * adv_hat), loss)",
           "loss = torch.where(neg, torch.maximum(loss, -clip.c * adv_hat), loss)",
           "RPG-Style Clip (differentiable): dual clip max instead of min"),
    Mutant("rpg-adv-hat-fkl", _L, '"fkl": lambda: adv + beta * torch.exp(-log_w).detach(),',
           '"fkl": lambda: adv + beta * torch.exp(log_w).detach(),', "RPG-Style Clip FKL: Â = A + βw instead of A + β/w"),
    Mutant("rpg-alg2-high-bound", _L, "high = pos & (w_sg >= 1.0 + clip.eps_high)",
           "high = pos & (w_sg >= 1.0 + clip.eps_low)", "RPG Alg. 2: upper bound with ε1 instead of ε2"),
    Mutant("rpg-alg2-adv-eff", _L, "adv_eff = z_old * adv + c_kl / w_sg", "adv_eff = z_old * adv + c_kl",
           "RPG Alg. 2: A' = A + C_KL (missing the 1/w)"),
    # ---- utility (GRPO's implicit utility) ---------------------------------------------------------------------
    Mutant("wg-sum-not-diff", _U, "    return succ - fail\n", "    return succ + fail\n",
           "w_G = E[A|r=1] + E[A|r=0] instead of the difference"),
    Mutant("wg-binomial-n", _U, "others = torch.arange(G, dtype=torch.float64)  # k = 0..G-1",
           "others = torch.arange(G, dtype=torch.float64).flip(0)  # k = 0..G-1",
           "conditional means: success counts paired with the wrong binomial weights"),
    Mutant("ug-quadrature-half", _U, "u = (wq * w).sum(-1) * t / 2.0", "u = (wq * w).sum(-1) * t",
           "U_G: Gauss–Legendre rule without the ½ of the interval map"),
    Mutant("ug-too-few-nodes", _U, "n_nodes = group_size // 2 + 2", "n_nodes = 1",
           "U_G with one quadrature node (exact only for linear w_G)"),
    Mutant("arcsin-grad", _U, "return _out(1.0 / torch.sqrt(t * (1.0 - t)), is_tensor)",
           "return _out(0.5 / torch.sqrt(t * (1.0 - t)), is_tensor)", "U'(p) = ½/√(p(1−p))"),
    # ---- components and methods ---------------------------------------------------------------------------
    Mutant("loo-component-centred", _C, "return _adv.leave_one_out(rewards, group_size)",
           "return _adv.group_centered(rewards, group_size)", "LeaveOneOut component computes Dr. GRPO's centring"),
    Mutant("kl-reward-mean", _C, "return (kl_estimate(log_ratio_old, self.estimator.value) * mask).sum(-1)  # [B]",
           "return (kl_estimate(log_ratio_old, self.estimator.value) * mask).mean(-1)  # [B]",
           "fused KL reward: mean over the padded width instead of the sum over tokens"),
    Mutant("agg-normalizes-by-length", _C, "return self.mode in (AggMode.TOKEN_MEAN, AggMode.SEQ_MEAN_TOKEN_MEAN)",
           "return self.mode is AggMode.SEQ_MEAN_TOKEN_MEAN",
           "Aggregation.normalizes_by_length says False for token-mean"),
    Mutant("agg-scale-sum-norm", _C, "return 1.0 / float(self.horizon or horizon)", "return 1.0",
           "Aggregation.scale of seq-mean-token-sum-norm ignores C"),
    Mutant("ppo-unclipped-keeps-dual", _C, "return PPOClip(_NO_CLIP_LOW, _NO_CLIP_HIGH, None)",
           "return PPOClip(_NO_CLIP_LOW, _NO_CLIP_HIGH, self.dual)", "PPOClip.unclipped() keeps the dual clip"),
    # ---- rollout corrections and the engine's sampler ---------------------------------------------------------
    Mutant("tis-cap-direction", _S, "        w = torch.clamp(w, max=cap)\n", "        w = torch.clamp(w, min=cap)\n",
           "truncated IS: the cap C used as a floor, max(ρ, C) instead of min(ρ, C)"),
    Mutant("tis-floor-direction", _S, "        w = torch.clamp(w, min=floor)\n", "        w = torch.clamp(w, max=floor)\n",
           "truncated IS: the floor used as a cap, min(ρ, F) instead of max(ρ, F)"),
    Mutant("rollout-ratio-direction", _S,
           "diff = torch.where(mask, logp_old - torch.where(mask, logp_rollout, torch.zeros_like(logp_rollout)),",
           "diff = torch.where(mask, torch.where(mask, logp_rollout, torch.zeros_like(logp_rollout)) - logp_old,",
           "rollout IS ratio q_reported/π_old instead of π_old/q_reported (direction of the importance weight)"),
    Mutant("seq-tis-token-ratio", _S, "    seq = (log_ratio * mask).sum(-1, keepdim=True)  # [B, 1] log Π_t ρ_t\n",
           "    seq = log_ratio * mask  # [B, 1] log Π_t ρ_t\n",
           "sequence TIS weighs each token by its own ρ_t instead of the sequence's Π_t ρ_t"),
    Mutant("mis-sequence-token-swap", _S, "expand_as(log_ratio) if sequence else log_ratio",
           "expand_as(log_ratio) if not sequence else log_ratio",
           "masked IS: sequence and token ratios swapped"),
    Mutant("mis-lower-bound-direction", _S, "        ok = ok & (rho >= lower)\n", "        ok = ok & (rho <= lower)\n",
           "masked IS: keeps ratios below the lower bound and drops those above it"),
    Mutant("mis-upper-bound-direction", _S, "        ok = ok & (rho <= upper)\n", "        ok = ok & (rho >= upper)\n",
           "masked IS: keeps ratios above the upper bound and drops those below it"),
    Mutant("mis-truncates-not-rejects", _S, "return torch.where(ok, rho, torch.zeros_like(rho)) * mask",
           "return torch.where(ok, rho, torch.clamp(rho, max=upper or 1.0, min=lower or 0.0)) * mask",
           "masked IS: out-of-bounds ratios truncated to the bound (TIS) instead of rejected (weight 0)"),
    Mutant("gm-no-length-norm", _S, "    mean = (log_ratio * mask).sum(-1, keepdim=True) / n\n",
           "    mean = (log_ratio * mask).sum(-1, keepdim=True)\n",
           "geometric-mean IS: exp(Σ_t log ρ_t) (the sequence ratio) instead of exp(mean_t log ρ_t)"),
    Mutant("seq-mis-component-token", _C,
           "return _sampling().masked_is_weights(log_ratio, mask, True, self.upper, self.lower)",
           "return _sampling().masked_is_weights(log_ratio, mask, False, self.upper, self.lower)",
           "SequenceMIS component computes the token-level mask"),
    Mutant("tis-component-cap-floor-swap", _C,
           "return _sampling().token_is_weights(log_ratio, mask, self.cap, self.floor)",
           "return _sampling().token_is_weights(log_ratio, mask, self.floor, self.cap)",
           "TokenTIS component passes (floor, cap) in the wrong order"),
    Mutant("mask-replay-flag", _C, "    replays_kept_set: ClassVar[bool] = True\n",
           "    replays_kept_set: ClassVar[bool] = False\n",
           "MaskReplay does not say it replays the kept set (the trainer does not renormalize: plain w = 1)"),
    Mutant("mask-replay-not-renormalized", _S,
           'return torch.log_softmax(torch.where(kept, logits, torch.full_like(logits, float("-inf"))), dim=-1)',
           'return torch.where(kept, torch.log_softmax(logits, dim=-1), torch.full_like(logits, float("-inf")))',
           "mask replay: log π restricted to the kept set but not renormalized over it"),
    Mutant("trainer-kept-logmass-unnormalized", _S,
           "return torch.logsumexp(masked, dim=-1) - torch.logsumexp(logits, dim=-1)",
           "return torch.logsumexp(masked, dim=-1)",
           "trainer kept mass log Σ_K e^z without dividing by Σ_V e^z (logits taken as log-probs)"),
    Mutant("sampler-kept-mass-untempered", _S,
           "log_kept_mass = (lse_kept - torch.logsumexp(scaled, dim=-1, keepdim=True)).squeeze(-1)",
           "log_kept_mass = (torch.logsumexp(torch.where(kept, z_e, torch.full_like(z_e, float('-inf'))), dim=-1, "
           "keepdim=True) - torch.logsumexp(z_e, dim=-1, keepdim=True)).squeeze(-1)",
           "sampler kept mass S_s measured on softmax(z_e) instead of the tempered π̃ = softmax(z_e/τ)"),
    Mutant("top-p-drops-crossing-token", _S, "keep = keep & torch.gather(before < top_p, -1, rank)",
           "keep = keep & torch.gather(before + ps < top_p, -1, rank)",
           "top-p: the token whose cumulative mass crosses p is cut (off by one; vLLM and HF keep it)"),
    Mutant("rollout-weights-on-kl-loss", _M,
           "            per_token = per_token * token_weights.detach()  # data weights, no gradient\n"
           "        kl_tok = None\n        if self.kl_in_loss:\n"
           "            kl_tok = self.kl.loss_terms(logp, logp_ref, logp_old, mask)  # [B, T], masked by the aggregation\n"
           "            per_token = per_token + self.beta * kl_tok\n",
           "            pass\n"
           "        kl_tok = None\n        if self.kl_in_loss:\n"
           "            kl_tok = self.kl.loss_terms(logp, logp_ref, logp_old, mask)  # [B, T], masked by the aggregation\n"
           "            per_token = per_token + self.beta * kl_tok\n"
           "        if token_weights is not None:\n            per_token = per_token * token_weights.detach()\n",
           "the rollout-correction weight multiplies the KL loss too (verl and TRL weight only the policy loss)"),
    Mutant("method-fused-kl-sign", _M, "                rewards = rewards - self.beta * penalty\n",
           "                rewards = rewards + self.beta * penalty\n", "fused KL added to the reward (sign)"),
    Mutant("method-token-penalty-sign", _M, "            adv = adv - self.beta * penalty\n",
           "            adv = adv + self.beta * penalty\n", "token KL penalty added to the advantage (sign)"),
    Mutant("method-token-penalty-gated-wrong", _M, "if self.kl_active and self.kl.penalizes_tokens:",
           "if self.kl_active and self.kl.penalizes_sequences:",
           "the token KL penalty built only for a term with a sequence penalty (FutureReturn's is skipped)"),
    Mutant("method-row-view-drops-penalty", _M,
           "        if (for_loss and penalty is None and not self.advantage.steps_tokens\n",
           "        if (for_loss and not self.advantage.steps_tokens\n",
           "the loss's one-value-per-row advantages also where a token KL penalty varies them (the penalty dropped)"),
    Mutant("method-row-view-drops-token-step", _M,
           "        if (for_loss and penalty is None and not self.advantage.steps_tokens\n",
           "        if (for_loss and penalty is None\n",
           "the loss's one-value-per-row advantages also under token whitening (REINFORCE++'s step dropped)"),
    Mutant("method-rollout-ratio", _M, "return (batch.logp_old - batch.logp_ref).detach()",
           "return (batch.logp_ref - batch.logp_old).detach()", "rollout log-ratio log π_ref − log π_old"),
    Mutant("method-kl-loss-no-beta", _M, "per_token = per_token + self.beta * kl_tok",
           "per_token = per_token + kl_tok", "KL loss added without β"),
    Mutant("method-rollout-ratio-current", _M,
           "            penalty = self.kl.token_penalty(self._rollout_log_ratio(batch), mask)",
           "            penalty = self.kl.token_penalty(self._rollout_log_ratio(batch) * 0.5, mask)",
           "token KL penalty computed on half the rollout log-ratio"),
]

CORE = (_D, _A, _L, _U, _C, _M, _S)

#: test files run first for a mutant of each module (all in the default run); a pass here goes on to the full suite
_RULES_TEST = "tests/test_selfcheck_rules.py"  # the estimators section's rules, in the default run too
_SURVIVORS_TEST = "tests/test_mutation_survivors.py"  # checks added for mutmut's survivors (docs/mutation.md)
_ALL = [_RULES_TEST, _SURVIVORS_TEST]
TESTS_BY_MODULE: dict[str, list[str]] = {
    _D: ["tests/test_divergences.py", "tests/test_numerics.py", "tests/test_losses.py", *_ALL],
    _A: ["tests/test_advantages.py", "tests/test_numerics.py", "tests/test_new_methods.py", *_ALL],
    _L: ["tests/test_losses.py", "tests/test_numerics.py", "tests/test_new_methods.py", *_ALL],
    _U: ["tests/test_utility.py", *_ALL],
    _C: ["tests/test_methods.py", "tests/test_method_values.py", "tests/test_new_methods.py", *_ALL],
    _M: ["tests/test_methods.py", "tests/test_method_values.py", "tests/test_new_methods.py", *_ALL],
    _S: ["tests/test_sampling.py", "tests/test_toy_mismatch.py", "tests/test_methods.py", *_ALL],
}


class MutantRot(RuntimeError):
    """A curated snippet no longer occurs exactly once in its file."""


def mutated_text(m: Mutant, root: Path = REPO) -> str:
    """The text of ``m.path`` with the mutant applied; MutantRot when the snippet does not occur exactly once."""
    text = (root / m.path).read_text(encoding="utf-8")
    n = text.count(m.old)
    if n != 1:
        raise MutantRot(f"mutant {m.id!r}: the snippet occurs {n} times in {m.path} (must be exactly once): {m.old!r}")
    if m.old == m.new:
        raise MutantRot(f"mutant {m.id!r}: the replacement equals the original")
    return text.replace(m.old, m.new)


def check_all(mutants: list[Mutant], root: Path = REPO) -> list[str]:
    """Problems with the list: duplicate ids, snippets that do not apply, mutated files that do not compile."""
    problems = []
    ids = [m.id for m in mutants]
    problems += [f"duplicate mutant id {i!r}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    for m in mutants:
        try:
            compile(mutated_text(m, root), m.path, "exec")
        except MutantRot as exc:
            problems.append(str(exc))
        except SyntaxError as exc:
            problems.append(f"mutant {m.id!r}: the mutated {m.path} does not compile: {exc}")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# the copy


def _source_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout.decode()
    return [p for p in out.split("\0") if p and (root / p).is_file()]


def tree_id(root: Path) -> str:
    """``<commit>`` of the tree, ``+dirty`` when the working tree differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout.strip()
    return (head.stdout.strip() or "?") + ("+dirty" if dirty else "")


def _source_files_plain(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]


def make_copy(root: Path, files: list[str], prefix: str = "rlkl-mutant-") -> Path:
    dst = Path(tempfile.mkdtemp(prefix=prefix))
    for rel in files:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    return dst


def _env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("HYPOTHESIS_PROFILE", None)  # the default (derandomized ci) profile, as the default run uses
    return env


def check_resolution(copy: Path, module_file: str | None) -> None:
    """Refuse unless ``rlkl`` (and the mutated module) are imported from the copy, not the editable worktree."""
    mods = ["rlkl"] + ([module_file[:-3].replace("/", ".")] if module_file else [])
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    print(importlib.import_module(m).__file__)"
    out = subprocess.run([sys.executable, "-c", code, *mods], cwd=copy, env=_env(copy), capture_output=True,
                         text=True, timeout=300)
    files = out.stdout.split()
    if out.returncode != 0 or len(files) != len(mods):
        raise SystemExit(f"mutants: cannot import {mods} in the copy {copy}:\n{out.stderr[-2000:]}")
    for mod, f in zip(mods, files):
        if not Path(f).resolve().is_relative_to(copy.resolve()):
            raise SystemExit(f"mutants: {mod} resolves to {f}, outside the copy {copy}: refusing to run (the "
                             "editable install would test the working tree, not the mutant)")


# ---------------------------------------------------------------------------------------------------------------
# the two checks


@dataclasses.dataclass
class Check:
    """The outcome of one check on one mutant: killed or not, why, and the wall time."""

    killed: bool
    reason: str
    seconds: float


def _run(cmd: list[str], copy: Path, timeout: float) -> tuple[int | None, str, str, float]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as exc:
        def text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        return None, text(exc.stdout), text(exc.stderr), time.perf_counter() - t0


#: prints, for one section of `rlkl verify --full`, its verdicts and the rlkl modules it imported (run in the copy)
_PROBE = """
import json, sys
from rlkl.commands.verify import PROVIDERS, run_section
rows = run_section(sys.argv[1], PROVIDERS[sys.argv[1]], quick=False, fresh=True)  # fresh: a cached section
# imports nothing, and would look independent of every file
mods = sorted({m.__file__ for n, m in list(sys.modules.items())
               if (n == "rlkl" or n.startswith("rlkl.")) and getattr(m, "__file__", None)})
print(json.dumps({"rows": [r.to_dict() for r in rows], "modules": mods}))
"""


def verify_sections() -> list[str]:
    sys.path.insert(0, str(REPO))
    try:
        from rlkl.commands.verify import PROVIDERS
    finally:
        sys.path.pop(0)
    return list(PROVIDERS)


def probe_sections(copy: Path, timeout: float) -> dict[str, set[str]]:
    """On the unmutated copy: for each verify section, the core files (relative paths) it imports.

    A section that never imports the mutated file cannot change its verdicts, so a mutant runs only the sections
    that import its file (``--all-sections`` runs every one); the baseline must pass every section.
    """
    deps: dict[str, set[str]] = {}
    for sec in verify_sections():
        rc, out, err, _ = _run([sys.executable, "-c", _PROBE, sec], copy, timeout)
        if rc != 0:
            raise SystemExit(f"mutants: the baseline probe of verify section {sec!r} failed:\n{err[-2000:]}")
        data = json.loads(out.strip().splitlines()[-1])
        bad = [r for r in data["rows"] if r["status"] == "FAIL" or not r["expected"]]
        if bad:
            raise SystemExit(f"mutants: the unmutated tree fails verify section {sec!r}: {bad[0]}")
        root = copy.resolve()
        deps[sec] = {Path(f).resolve().relative_to(root).as_posix() for f in data["modules"]
                     if Path(f).resolve().is_relative_to(root)}
    return deps


def run_verify(copy: Path, timeout: float, sections: list[str], skipped: list[str]) -> Check:
    """`rlkl verify --full --json --only S...` over the sections that import the mutated file."""
    note = f"; {', '.join(skipped)} cannot import the mutated file (not run)" if skipped else ""
    if not sections:
        return Check(False, f"no verify section imports the mutated file{note}", 0.0)
    cmd = [sys.executable, "-m", "rlkl", "verify", "--full", "--json"] + [a for s in sections for a in ("--only", s)]
    rc, out, err, sec = _run(cmd, copy, timeout)
    if rc is None:
        return Check(True, f"timed out after {timeout:.0f}s", sec)
    try:
        rows = json.loads(out)
    except json.JSONDecodeError:
        return Check(True, f"exit {rc}, no verdict table ({(err.strip().splitlines() or ['?'])[-1][:120]})", sec)
    bad = [r for r in rows if r["status"] == "FAIL" or not r["expected"]]
    n_ok = len(rows) - len(bad)
    if rc != 0 or bad:
        first = "; ".join(f"{r['section']}: {r['claim'][:50]} [{r['status']}]" for r in bad[:2])
        return Check(True, f"exit {rc}, {n_ok}/{len(rows)} as predicted; {first}", sec)
    return Check(False, f"{n_ok}/{len(rows)} as predicted{note}", sec)


_FAILED = re.compile(r"^(FAILED|ERROR) (\S+)", re.M)


def _pytest(copy: Path, files: list[str], timeout: float) -> tuple[bool, str, float]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *files]
    rc, out, err, sec = _run(cmd, copy, timeout)
    if rc is None:
        return True, f"timed out after {timeout:.0f}s", sec
    if rc == 0:
        return False, "passed", sec
    hit = _FAILED.search(out)
    if rc == 5:
        return True, "no tests collected (exit 5)", sec
    tail = (out.strip().splitlines() or ["?"])[-1][:120]
    return True, (hit.group(2) if hit else f"exit {rc}: {tail}"), sec


def run_pytest(copy: Path, module: str, mode: str, timeout: float) -> Check:
    files = [f for f in TESTS_BY_MODULE.get(module, []) if (copy / f).is_file()]
    total = 0.0
    if files:
        killed, why, sec = _pytest(copy, files, timeout)
        total += sec
        if killed:
            return Check(True, f"{why} (mapped files)", total)
        if mode == "mapped":
            return Check(False, f"mapped files passed ({len(files)} files)", total)
    killed, why, sec = _pytest(copy, [], timeout)
    total += sec
    return Check(killed, f"{why} (full default run)", total)


@dataclasses.dataclass
class Result:
    id: str
    path: str
    what: str
    verify: Check | None
    pytest: Check | None
    seconds: float


def run_one(m: Mutant, src: Path, files: list[str], args: argparse.Namespace, deps: dict[str, set[str]]) -> Result:
    """Copy ``src``, mutate, check where imports resolve, run both checks, remove the copy."""
    t0 = time.perf_counter()
    copy = make_copy(src, files)
    try:
        (copy / m.path).write_text(mutated_text(m, src), encoding="utf-8")
        check_resolution(copy, m.path)
        v = p = None
        if args.pytest != "only":
            run = [s for s in deps if (args.all_sections or m.path in deps[s]) and s not in args.skip_section]
            v = run_verify(copy, args.timeout, run, [s for s in deps if s not in run])
        if args.pytest != "none":
            p = run_pytest(copy, m.path, args.pytest, args.timeout)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    return Result(m.id, m.path, m.what, v, p, time.perf_counter() - t0)


def baseline(src: Path, files: list[str], args: argparse.Namespace) -> dict[str, set[str]]:
    """The unmutated copy must pass every verify section (probed one by one, recording what each imports) and the
    default pytest run; returns the sections' imported core files."""
    copy = make_copy(src, files)
    try:
        check_resolution(copy, None)
        deps = probe_sections(copy, args.timeout) if args.pytest != "only" else {}
        if args.pytest != "none":
            mapped = sorted({f for fs in TESTS_BY_MODULE.values() for f in fs if (copy / f).is_file()})
            killed, why, sec = _pytest(copy, [] if not args.no_baseline else mapped, args.timeout)
            if killed:
                raise SystemExit(f"mutants: the unmutated tree fails the default pytest run ({why}); fix that first")
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    return deps


# ---------------------------------------------------------------------------------------------------------------
# report


def _cell(c: Check | None) -> str:
    return "-" if c is None else ("KILLED" if c.killed else "survived")


def _score(results: list[Result], attr: str) -> tuple[int, int]:
    checks = [getattr(r, attr) for r in results if getattr(r, attr) is not None]
    return sum(c.killed for c in checks), len(checks)


def report(results: list[Result], total_s: float, args: argparse.Namespace) -> str:
    lines = [f"{'mutant':30} {'file':20} {'verify':8} {'pytest':8} {'secs':>6}  detail"]
    for r in results:
        detail = " | ".join(f"{k}: {c.reason}" for k, c in (("verify", r.verify), ("pytest", r.pytest)) if c)
        lines.append(f"{r.id:30} {Path(r.path).name:20} {_cell(r.verify):8} {_cell(r.pytest):8} {r.seconds:6.0f}  "
                     f"{detail}")
        lines.append(f"{'':30} {r.what}")
    lines.append("")
    lines.append(f"tree {args.tree}" + (f"; verify sections NOT run (--skip-section): {', '.join(args.skip_section)}"
                                          if args.skip_section else ""))
    for label, attr in (("rlkl verify --full", "verify"), (f"pytest ({args.pytest} mode)", "pytest")):
        k, n = _score(results, attr)
        if n:
            lines.append(f"{label}: {k}/{n} planted bugs killed ({100 * k / n:.0f}%)")
    both = [r for r in results if r.verify and r.pytest]
    if both:
        k = sum(r.verify.killed and r.pytest.killed for r in both)
        lines.append(f"killed by both: {k}/{len(both)}")
    per = [r.seconds for r in results]
    if per:
        lines.append(f"wall time: {total_s:.0f}s in total, {sum(per) / len(per):.0f}s per mutant (max {max(per):.0f}s)"
                     f", --jobs {args.jobs}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", action="append", metavar="ID", help="run only these mutants (repeatable)")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run in parallel (default 1)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--list", action="store_true", help="print the curated mutants and exit")
    ap.add_argument("--check", action="store_true", help="check that every snippet applies, and exit")
    ap.add_argument("--pytest", choices=("default", "mapped", "none", "only"), default="default",
                    help="default: mapped files, then the full default run for survivors; mapped: only the mapped "
                         "files; none: skip pytest; only: skip verify")
    ap.add_argument("--no-baseline", action="store_true",
                    help="the baseline runs only the mapped test files, not the full default run (its verify "
                         "probe always runs)")
    ap.add_argument("--skip-section", action="append", default=[], metavar="SECTION",
                    help="development only: do not run this verify section for any mutant (the score is then not "
                         "that of `rlkl verify --full`; the report says so)")
    ap.add_argument("--all-sections", action="store_true",
                    help="run every verify section for every mutant, also those that cannot import its file")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per command (a timeout counts as killed)")
    args = ap.parse_args(argv)

    problems = check_all(MUTANTS)
    if problems:
        print("mutants: the curated list does not apply to this tree:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    if args.list or args.check:
        if args.list:
            for m in MUTANTS:
                print(f"{m.id:30} {m.path:22} {m.what}")
        print(f"{len(MUTANTS)} mutants, every snippet applies", file=sys.stderr)
        return 0
    by_id = {m.id: m for m in MUTANTS}
    unknown = [i for i in args.only or [] if i not in by_id]
    if unknown:
        print(f"mutants: unknown ids {unknown} (see --list)", file=sys.stderr)
        return 2
    todo = [by_id[i] for i in args.only] if args.only else list(MUTANTS)
    # one snapshot of the working tree at the start: edits made while the run goes on do not leak into it
    args.tree = tree_id(REPO)
    snapshot = make_copy(REPO, _source_files(REPO), prefix="rlkl-mutants-snapshot-")
    try:
        return _run_all(todo, snapshot, args)
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)


def _run_all(todo: list[Mutant], snapshot: Path, args: argparse.Namespace) -> int:
    files = _source_files_plain(snapshot)
    t0 = time.perf_counter()
    deps = baseline(snapshot, files, args)
    print(f"[mutants] baseline passed ({time.perf_counter() - t0:.0f}s); verify sections import: "
          + "; ".join(f"{s}: {', '.join(sorted(f for f in d if f in CORE))}" for s, d in deps.items()),
          file=sys.stderr, flush=True)
    results: list[Result] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_one, m, snapshot, files, args, deps): m for m in todo}
        for fut in concurrent.futures.as_completed(futures):
            r = fut.result()
            results.append(r)
            print(f"[mutants] {len(results)}/{len(todo)} {r.id}: verify {_cell(r.verify)}, pytest {_cell(r.pytest)} "
                  f"({r.seconds:.0f}s)", file=sys.stderr, flush=True)
    order = {m.id: i for i, m in enumerate(todo)}
    results.sort(key=lambda r: order[r.id])
    total = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"results": [dataclasses.asdict(r) for r in results], "total_seconds": total,
                          "jobs": args.jobs, "pytest_mode": args.pytest, "tree": args.tree,
                          "skipped_sections": args.skip_section}, indent=2))
    else:
        print(report(results, total, args))
    survived = any((r.verify and not r.verify.killed) or (r.pytest and not r.pytest.killed) for r in results)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
