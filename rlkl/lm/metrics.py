"""Metrics of the LM trainer, each a small pure function (formulas in ``docs/metrics.md``).

Everything the papers plot is here: pass@k (the unbiased estimator of Chen et al. 2021), exact
per-token entropy and exact per-token KL in both directions from the full softmax (the vocabulary is
tiny, so no estimator is needed), the k1/k2/k3 estimates of the same KL from the sampled tokens (via
:func:`rlkl.divergences.kl_estimate`, the function every method uses; the exact KL is
:func:`rlkl.divergences.exact_kl`), sequence-level sums of log
ratios, response length, the fraction of groups whose advantages are all zero, the gradient norm and
throughput. Shapes: ``[B, T]`` per token, ``[B]`` per sequence, ``[B, T, V]`` logits.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch


def _check_mask(mask: torch.Tensor, shape: torch.Size, name: str = "mask") -> torch.Tensor:
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be bool, got {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    if not bool(mask.any()):
        raise ValueError(f"{name} selects no tokens")
    return mask


# ---------------------------------------------------------------------------------------------------
# pass@k
# ---------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: ``1 - C(n-c, k) / C(n, k)``.

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` (numerically stable, Chen et al. 2021).
    """
    if not (isinstance(n, (int, np.integer)) and isinstance(c, (int, np.integer)) and isinstance(k, (int, np.integer))):
        raise ValueError(f"n, c, k must be integers, got {n!r}, {c!r}, {k!r}")
    if n < 1 or k < 1 or k > n or c < 0 or c > n:
        raise ValueError(f"need 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_batch(correct: torch.Tensor, ks: Iterable[int]) -> dict[int, float]:
    """Mean pass@k over prompts: ``correct [n_prompts, n_samples]`` (0/1) -> ``{k: mean pass@k}``."""
    if correct.ndim != 2:
        raise ValueError(f"correct must be [n_prompts, n_samples], got shape {tuple(correct.shape)}")
    n = int(correct.shape[1])
    counts = (correct > 0.5).sum(dim=1).tolist()
    return {int(k): float(np.mean([pass_at_k(n, int(c), int(k)) for c in counts])) for k in ks}


# ---------------------------------------------------------------------------------------------------
# Exact per-token quantities from the full softmax
# ---------------------------------------------------------------------------------------------------


def token_entropy(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Exact entropy ``H_t = -sum_v p_v log p_v`` of softmax(logits): ``[..., V]`` -> ``[...]``.

    ``dim``: the vocabulary axis (``0`` for the ``[V, N]`` layout of :func:`vocab_leading`).
    """
    from rlkl.lm.model import log_softmax

    logp = log_softmax(logits.float()) if dim == -1 else torch.log_softmax(logits.float(), dim=dim)  # [..., V]
    return -(logp.exp() * logp).sum(dim=dim)  # [...]


def token_kl(logits_p: torch.Tensor, logits_q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Exact ``KL(p || q) = sum_v p_v (log p_v - log q_v)`` per position: ``[..., V]`` x2 -> ``[...]``.

    ``dim``: the vocabulary axis (``0`` for the ``[V, N]`` layout of :func:`vocab_leading`).
    """
    from rlkl.divergences import exact_kl

    if logits_p.shape != logits_q.shape:
        raise ValueError(f"logits_p {tuple(logits_p.shape)} and logits_q {tuple(logits_q.shape)} differ")
    return exact_kl(logits_p.float(), logits_q.float(), dim=dim).clamp_min(0.0)  # [...] (clamp: float round-off)


def vocab_leading(logits: torch.Tensor) -> torch.Tensor:
    """A ``[V, N]`` contiguous copy of ``logits [..., V]`` (N = the product of the leading sizes), in float32.

    The per-position metrics (:func:`token_entropy`, :func:`token_kl` with ``dim=0``) then reduce over a short
    leading axis, which torch's CPU kernels do ~20x faster than over a short last axis (V = 13: log_softmax of
    512 positions ~5 vs ~100 µs); the values agree up to float round-off.
    """
    return logits.float().reshape(-1, logits.shape[-1]).t().contiguous()  # [V, N]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token mean over the mask: ``sum(x * m) / sum(m)`` -> 0-dim."""
    _check_mask(mask, x.shape)
    return (x * mask).sum() / mask.sum()


def seq_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence masked sum: ``[B, T]`` -> ``[B]``."""
    if mask.shape != x.shape:
        raise ValueError(f"mask {tuple(mask.shape)} and x {tuple(x.shape)} differ")
    return (x * mask).sum(dim=1)


# ---------------------------------------------------------------------------------------------------
# Sample-based KL estimates (the same estimator functions the methods use)
# ---------------------------------------------------------------------------------------------------


def kl_estimates(logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Token-mean k1/k2/k3 estimates of KL(π‖π_ref) from sampled tokens, and the sequence log ratio.

    ``log_ratio = logp - logp_ref``; k1/k2/k3 come from :func:`rlkl.divergences.kl_estimate`.
    ``log_ratio_seq`` is the mean over sequences of ``sum_t log_ratio_t`` (unbiased for the
    sequence-level KL(π‖π_ref) when the sequences are sampled from π).
    """
    from rlkl.divergences import kl_estimate

    _check_mask(mask, logp.shape)
    if logp_ref.shape != logp.shape:
        raise ValueError(f"logp_ref {tuple(logp_ref.shape)} and logp {tuple(logp.shape)} differ")
    log_ratio = torch.where(mask, logp - logp_ref, torch.zeros_like(logp))  # [B, T]
    out = {f"kl_{k}": float(masked_mean(kl_estimate(log_ratio, k), mask)) for k in ("k1", "k2", "k3")}
    out["log_ratio_seq"] = float(seq_sum(log_ratio, mask).mean())
    return out


# ---------------------------------------------------------------------------------------------------
# Rewards and groups
# ---------------------------------------------------------------------------------------------------


def zero_advantage_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups (contiguous blocks of ``group_size``) whose rewards are all equal.

    Such groups get zero group-relative advantage in GRPO/Dr. GRPO/RLOO: no learning signal.
    """
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be [B], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(f"group_size {group_size} must divide the batch size {rewards.shape[0]}")
    g = rewards.view(-1, group_size)  # [n_groups, G]
    return float((g.max(dim=1).values == g.min(dim=1).values).float().mean())


def group_std_mean(rewards: torch.Tensor, group_size: int) -> float:
    """Mean over groups of the population std of the group's rewards, σ_g = √((1/G) Σ_i (r_i − r̄_g)²).

    For binary rewards σ_g is the size of group g's GRPO update (population std; Bay & Yearick, arXiv
    2607.00152, :func:`rlkl.utility.group_std_update_size`); silent groups have σ_g = 0.
    """
    if rewards.ndim != 1 or group_size < 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(f"rewards must be [B] with B a multiple of group_size {group_size}, got {tuple(rewards.shape)}")
    return float(rewards.float().view(-1, group_size).std(dim=1, unbiased=False).mean())


def rollout_metrics(
    logits: torch.Tensor,
    logits_ref: torch.Tensor,
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
) -> dict[str, float]:
    """Every per-batch metric of a rollout sampled from π (see docs/metrics.md for the formulas).

    Args:
        logits, logits_ref: ``[B, T, V]`` response logits of π and π_ref at the visited states.
        logp, logp_ref: ``[B, T]`` log-probs of the sampled tokens under π and π_ref.
        mask: ``[B, T]`` bool response mask; rewards ``[B]``; group_size G.
    """
    B, T = mask.shape
    _check_mask(mask, torch.Size([B, T]))
    if logits.shape[:2] != (B, T) or logits_ref.shape != logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} / logits_ref {tuple(logits_ref.shape)} must be [B, T, V] "
                         f"with [B, T] = {(B, T)}")
    from rlkl.divergences import exact_kl, monte_carlo_kl

    lt, lt_ref = vocab_leading(logits), vocab_leading(logits_ref)  # [V, B·T] each (fast short-axis reductions)
    ent = token_entropy(lt, dim=0).view(B, T)  # [B, T]
    kl_fwd = token_kl(lt_ref, lt, dim=0).view(B, T)  # [B, T]  KL(π_ref‖π)(s_t)
    # [B] Σ_t m_t KL(π‖π_ref)(s_t): rlkl.divergences.rao_blackwell_kl(logits, logits_ref, mask), from the same
    # per-state exact_kl in the [V, B·T] layout
    rb = seq_sum(exact_kl(lt, lt_ref, dim=0).view(B, T), mask)
    mc = monte_carlo_kl(logp, logp_ref, mask)  # [B] Σ_t log π/π_ref (y_t)
    out = {
        "reward_mean": float(rewards.float().mean()),
        "reward_std": float(rewards.float().std(unbiased=False)),
        "zero_adv_group_frac": zero_advantage_fraction(rewards, group_size),
        "group_std_mean": group_std_mean(rewards, group_size),
        "response_len": float(mask.sum(dim=1).float().mean()),
        "entropy": float(masked_mean(ent, mask)),
        "kl_rev_tok": float(rb.sum() / mask.sum()),
        "kl_fwd_tok": float(masked_mean(kl_fwd, mask)),
        "kl_rev_seq": float(rb.mean()),
        "kl_rb_seq_var": float(rb.var(unbiased=False)),
        "kl_mc_seq_var": float(mc.var(unbiased=False)),
    }
    out.update(kl_estimates(logp, logp_ref, mask))
    return out


# ---------------------------------------------------------------------------------------------------
# Optimisation and throughput
# ---------------------------------------------------------------------------------------------------


def grad_norm(parameters: Iterable[torch.nn.Parameter]) -> float:
    """Global L2 norm of the gradients ``sqrt(sum_p ||g_p||^2)`` (parameters without grad skipped)."""
    sq = [p.grad.detach().float().pow(2).sum() for p in parameters if p.grad is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


def tokens_per_second(n_tokens: int, seconds: float) -> float:
    """Throughput ``n_tokens / seconds`` (0 when no time has elapsed)."""
    if n_tokens < 0 or seconds < 0:
        raise ValueError(f"n_tokens and seconds must be non-negative, got {n_tokens}, {seconds}")
    return float(n_tokens / seconds) if seconds > 0 else 0.0


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval ``(mean, low, high)`` over seeds.

    With one value the interval is ``(x, x)`` (no spread can be estimated); NaN inputs are dropped.
    """
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    m = float(x.mean())
    if x.size == 1:
        return (m, m, m)
    from scipy import stats

    half = float(stats.t.ppf(0.5 + confidence / 2, df=x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return (m, m - half, m + half)


# ---------------------------------------------------------------------------------------------------
# Evaluation on held-out prompts
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    task,
    prompts: torch.Tensor,
    n_samples: int,
    ks: Sequence[int],
    seed: int,
    batch_size: int = 4096,
    reference: torch.nn.Module | None = None,
) -> dict[str, float]:
    """pass@k on eval prompts at temperature 1, greedy accuracy, mean response length; with ``reference``
    also the exact KL(π‖reference) and entropy on the same samples.

    Args:
        prompts: ``[n, P]`` eval prompts (on the model's device); each is sampled ``n_samples`` times, the
            samples of one prompt sharing its prefix (one prompt pass per prompt).
        ks: the k of pass@k (each <= n_samples).
        seed: seeds a private generator, so evaluation never disturbs the training RNG streams.
        batch_size: sampled rows per batch (a whole number of prompts).
        reference: π_0 of the drift metrics (one forward pass of each model over the samples).

    Returns ``{"pass@k": ..., "greedy_acc": ..., "eval_response_len": ...}`` and, with ``reference``,
    ``kl_rev_seq`` = mean over all n·n_samples samples of Σ_t KL(π‖π_0)(s_t) (the sequence KL(π‖π_0) in
    expectation), ``kl_rev_tok`` and ``entropy`` = token means of KL(π‖π_0)(s_t) and H_π(s_t) on them.
    """
    from rlkl.lm.model import autocast, sample, shared_prefix_logits

    if any(k > n_samples for k in ks):
        raise ValueError(f"every k in {list(ks)} must be <= n_samples={n_samples}")
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=prompts.device).manual_seed(int(seed))
    per = max(1, batch_size // n_samples)  # prompts per sampling batch
    rewards, lengths, kl_seq, kl_tok, ent_tok, n_tok = [], [], [], 0.0, 0.0, 0
    for i in range(0, prompts.shape[0], per):
        p = prompts[i : i + per]  # [m, P]
        resp, mask, _ = sample(model, p, task.max_response_len, task.eos_id, gen, group_size=n_samples)  # [m·S, R]
        rewards.append(task.score_groups(p, resp, n_samples).cpu())
        lengths.append(mask.sum(dim=1).float().cpu())
        if reference is not None:  # both by the same forward route, so that π = π_0 gives exactly 0
            with autocast(prompts.device):
                logits = shared_prefix_logits(model, p, resp, n_samples).float()  # [m·S, R, V]
                ref_logits = shared_prefix_logits(reference, p, resp, n_samples).float()  # [m·S, R, V]
            kl = token_kl(logits, ref_logits) * mask  # [m·S, R]
            kl_seq.append(kl.sum(dim=1).cpu())
            kl_tok += float(kl.sum())
            ent_tok += float((token_entropy(logits) * mask).sum())
            n_tok += int(mask.sum())
    correct = torch.cat(rewards).view(prompts.shape[0], n_samples)  # [n, n_samples]
    out = {f"pass@{k}": v for k, v in pass_at_k_batch(correct, ks).items()}
    greedy, _, _ = sample(model, prompts, task.max_response_len, task.eos_id, greedy=True)
    out["greedy_acc"] = float(task.score_groups(prompts, greedy).mean())
    out["eval_response_len"] = float(torch.cat(lengths).mean())
    if reference is not None:
        out.update(kl_rev_seq=float(torch.cat(kl_seq).mean()), kl_rev_tok=kl_tok / n_tok, entropy=ent_tok / n_tok)
    model.train(was_training)
    return out


@torch.no_grad()
def mismatch_metrics(logits: torch.Tensor, log_old: torch.Tensor, sampler, kept: torch.Tensor,
                     mask: torch.Tensor) -> dict[str, float]:
    """Rollout–trainer mismatch of one rollout, exact from full distributions (docs/metrics.md).

    The engine's q at every visited state is rebuilt from the trainer's logits and the engine's kept sets:
    q = softmax over K_t of z_e/τ (z_e the logits after the sampler's precision step).

    Args:
      logits: ``[B, R, V]`` the trainer's π_old logits; log_old: ``[B, R, V]`` the π_old the loss uses (full
        log-softmax, or renormalized over the kept sets under mask replay); sampler: ``rlkl.sampling.Sampler``;
        kept: ``[B, R, V]`` bool; mask: ``[B, R]`` bool.
    Returns:
      ``mismatch_kl_exact`` ⟨KL(q‖π_old)(s_t)⟩ and ``engine_kept_mass`` ⟨S_t⟩, S_t = Σ_{a∈K_t} softmax(z_e/τ)(a).
    """
    from rlkl.sampling import exact_mismatch_kl, kept_log_softmax, kept_logmass

    mask = _check_mask(mask, logits.shape[:2])
    scaled = sampler.engine_logits(logits) / sampler.temperature  # [B, R, V]
    log_q = kept_log_softmax(scaled, kept)  # [B, R, V]
    s = kept_logmass(scaled, kept).exp()  # [B, R]
    return {"mismatch_kl_exact": float(exact_mismatch_kl(log_q, log_old, mask)),
            "engine_kept_mass": float(masked_mean(s, mask))}
