"""Exact sequence-level quantities of the small LM, by enumerating every response (tasks with short answers).

With vocabulary V (EOS included) and budget R, the responses the sampler can produce are
Y = {k non-EOS tokens, then EOS : 0 ≤ k < R} ∪ {R non-EOS tokens (truncated)}, |Y| = Σ_{k<R} (V−1)^k + (V−1)^R
(1464 for the ``divisor`` task at difficulty 2: V = 12, R = 3). Their probabilities π(y|x) come from one forward
pass per prompt over the (V−1)^(R−1) longest non-EOS prefixes (every state of the response tree is a prefix of
one of them), so the whole distribution costs about as much as scoring a few rollout batches.

On that distribution everything is exact (float64): sequence KL(π‖π_ref) and KL(π_ref‖π), sequence entropy,
E[R] and pass@k = 1 − (1 − p)^k, and the distance to the analytic optimum of the regularized objective:

* reverse KL (GX-Chen et al. arXiv 2510.20817 Eq. 2; the classical KL-control solution):
  argmax_π E_π[R] − β·KL(π‖π_ref) = π*_β ∝ π_ref·exp(R/β);
* forward KL: argmax_π E_π[R] − β·KL(π_ref‖π) = β·π_ref/(λ − R), with λ > max R the unique root of Σ_y π = 1
  (stationarity of the Lagrangian R + β π_ref/π − λ = 0);
* the FRPO claim (arXiv 2601.10201 Thm. 4.1 with GRPO's finite-group utility U_G, ``rlkl.utility``):
  argmax_π U_G(p_π) − β·KL(π‖π_ref) lies in the family π_c ∝ π_ref·exp(c·R/β) with c = U_G'(p) = w_G(p).

Both optima keep π_ref's odds between answers of equal reward (π*(y)/π*(y') = π_ref(y)/π_ref(y') when R(y) = R(y'),
GX-Chen et al. §3): :func:`odds_tv` measures how far a policy is from that, on the correct answers.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from rlkl.lm.model import GPT, autocast, shared_prefix_logits, unwrap


def response_space(vocab_size: int, max_len: int, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every response within the budget: ``responses [M, R]`` (EOS-padded) and ``mask [M, R]`` (True up to and
    including the EOS; all True for the truncated ones), in the order: k = 0, 1, …, R−1 tokens then EOS, then R."""
    if vocab_size < 2 or max_len < 1 or not 0 <= eos_id < vocab_size:
        raise ValueError(f"need vocab_size >= 2, max_len >= 1 and 0 <= eos_id < vocab_size, got {vocab_size}, "
                         f"{max_len}, {eos_id}")
    size = sum((vocab_size - 1) ** k for k in range(max_len)) + (vocab_size - 1) ** max_len
    if size > 2_000_000:
        raise ValueError(f"{size} responses (V={vocab_size}, R={max_len}) are too many to enumerate")
    tokens = [v for v in range(vocab_size) if v != eos_id]
    rows, masks = [], []
    for k in range(max_len + 1):
        for body in itertools.product(tokens, repeat=k):
            ended = k < max_len
            rows.append(list(body) + [eos_id] * (max_len - k))
            masks.append([True] * (k + ended) + [False] * (max_len - k - ended))
    return torch.tensor(rows, dtype=torch.long), torch.tensor(masks, dtype=torch.bool)


@torch.no_grad()
def sequence_logprobs(model: torch.nn.Module, prompts: torch.Tensor, vocab_size: int, max_len: int, eos_id: int,
                      batch_rows: int = 65536) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log π(y|x) for every response y of :func:`response_space` and every prompt: ``[n, M]`` float64.

    Returns ``(logp [n, M], responses [M, R], mask [M, R])`` (responses and mask on the prompts' device).
    """
    device = prompts.device
    responses, mask = (t.to(device) for t in response_space(vocab_size, max_len, eos_id))
    tokens = [v for v in range(vocab_size) if v != eos_id]
    states = torch.tensor(list(itertools.product(tokens, repeat=max_len - 1)) if max_len > 1 else [[]],
                          dtype=torch.long, device=device).view(-1, max_len - 1)  # [S, R-1] longest prefixes
    S = states.shape[0]
    # row of `states` whose first t tokens are response y's first t tokens (EOS and padding -> the first token)
    filler = torch.where(responses[:, : max_len - 1] == eos_id, tokens[0], responses[:, : max_len - 1])  # [M, R-1]
    digits = torch.tensor([tokens.index(v) if v in tokens else 0 for v in range(vocab_size)], device=device)
    base = len(tokens) ** torch.arange(max_len - 2, -1, -1, device=device)  # mixed-radix place values
    state_of = (digits[filler] * base).sum(dim=1)  # [M]
    cont = torch.cat([states, torch.zeros(S, 1, dtype=torch.long, device=device)], dim=1)  # [S, R] (last unused)
    steps = torch.arange(max_len, device=device)  # [R]
    flat = ((state_of[:, None] * max_len + steps) * vocab_size + responses).reshape(-1)  # [M·R]
    out = []
    per = max(1, batch_rows // S)
    for i in range(0, prompts.shape[0], per):
        p = prompts[i : i + per]  # [m, P]
        with autocast(device):
            logits = shared_prefix_logits(model, p, cont.repeat(p.shape[0], 1), S).float()  # [m·S, R, V]
        logp_all = torch.log_softmax(logits.double(), dim=-1).view(p.shape[0], -1)  # [m, S·R·V]
        # token t of response y read at its state's row: flat index (state_of[y]·R + t)·V + y_t (no [m, M, R, V])
        tok_lp = logp_all.index_select(1, flat).view(p.shape[0], -1, max_len)  # [m, M, R]
        out.append((tok_lp * mask).sum(dim=-1))  # [m, M]
    return torch.cat(out), responses, mask


def _check_dist(logp: torch.Tensor, logp_ref: torch.Tensor, rewards: torch.Tensor) -> None:
    if logp.ndim != 2 or logp_ref.shape != logp.shape or rewards.shape != logp.shape:
        raise ValueError(f"logp, logp_ref and rewards must all be [n, M], got {tuple(logp.shape)}, "
                         f"{tuple(logp_ref.shape)}, {tuple(rewards.shape)}")


def kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) = Σ_y p(y) (log p(y) − log q(y)) per row (0·log 0 = 0): ``[n, M]`` x2 -> ``[n]``."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(dim=-1)


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ_y p(y) log p(y) per row: ``[n, M]`` -> ``[n]``."""
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim=-1)


def tv(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Total variation ½ Σ_y |p(y) − q(y)| per row: ``[n, M]`` x2 -> ``[n]``."""
    return 0.5 * (logp.exp() - logq.exp()).abs().sum(dim=-1)


def reverse_kl_optimum(logp_ref: torch.Tensor, rewards: torch.Tensor, beta: float, scale: torch.Tensor | float = 1.0
                       ) -> torch.Tensor:
    """log π* with π*(y) ∝ π_ref(y)·exp(c·R(y)/β) per row (c = ``scale``, 1 for E[R] − β·KL(π‖π_ref)): ``[n, M]``."""
    if not beta > 0:
        raise ValueError(f"the regularized optimum needs beta > 0, got {beta}")
    scale = torch.as_tensor(scale, dtype=logp_ref.dtype, device=logp_ref.device)
    z = logp_ref + scale.reshape(-1, 1) * rewards / beta if scale.ndim else logp_ref + scale * rewards / beta
    return torch.log_softmax(z, dim=-1)


def forward_kl_optimum(logp_ref: torch.Tensor, rewards: torch.Tensor, beta: float, iters: int = 80) -> torch.Tensor:
    """log of argmax_π E_π[R] − β·KL(π_ref‖π) per row: π(y) = β·π_ref(y)/(λ − R(y)), Σ_y π(y) = 1.

    λ is found by bisection on (max R, max R + β] (Σ π decreases in λ, is ≥ 1 at the left end's limit and ≤ 1 at
    λ = max R + β, where every λ − R ≥ β; 80 halvings reach float64 resolution); support outside π_ref's gets
    probability 0.
    """
    if not beta > 0:
        raise ValueError(f"the regularized optimum needs beta > 0, got {beta}")
    p_ref = logp_ref.exp()  # [n, M]
    r_max = torch.where(p_ref > 0, rewards, torch.full_like(rewards, -math.inf)).max(dim=-1, keepdim=True).values
    lo, hi = r_max.clone(), r_max + beta  # [n, 1]
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        mass = (beta * p_ref / (mid - rewards).clamp_min(1e-300)).sum(dim=-1, keepdim=True)  # [n, 1]
        lo, hi = torch.where(mass > 1, mid, lo), torch.where(mass > 1, hi, mid)
    pi = beta * p_ref / (hi - rewards).clamp_min(1e-300)  # [n, M]
    return torch.log(pi / pi.sum(dim=-1, keepdim=True))


def finite_group_optimum(logp_ref: torch.Tensor, rewards: torch.Tensor, beta: float, group_size: int,
                         std: str = "population", eps: float = 0.0, grid: int = 400) -> torch.Tensor:
    """log of argmax_π U_G(p_π) − β·KL(π‖π_ref) per row, for binary rewards (U_G: ``rlkl.utility``).

    Every stationary point is π_c ∝ π_ref e^{cR/β} with c = w_G(p(π_c)) (w_G = U_G'); the roots of c − w_G(p(c))
    are bracketed on a grid over the range of w_G and refined by bisection, and the best one (largest objective)
    is returned.
    """
    from rlkl.utility import finite_group_utility, finite_group_weight

    if not beta > 0:
        raise ValueError(f"the regularized optimum needs beta > 0, got {beta}")
    if not bool(((rewards == 0) | (rewards == 1)).all()):
        raise ValueError("finite_group_optimum needs binary rewards (U_G is a utility of a success probability)")
    q = torch.linspace(1e-6, 1 - 1e-6, 2001, dtype=torch.float64)
    w = finite_group_weight(q, group_size, std, eps)  # [2001] the range of c
    c = torch.linspace(float(w.min()) * 0.999, float(w.max()) * 1.001, grid, dtype=torch.float64)  # [grid]
    p_ref_c = (logp_ref.exp() * rewards).sum(dim=-1)  # [n] p under π_ref
    logit_ref = torch.log(p_ref_c) - torch.log1p(-p_ref_c)  # [n]

    def p_of(cc: torch.Tensor) -> torch.Tensor:  # success probability of π_c: a logistic in c/β
        return torch.sigmoid(logit_ref[..., None] + cc / beta)

    def gap(cc: torch.Tensor) -> torch.Tensor:
        return cc - finite_group_weight(p_of(cc), group_size, std, eps)

    g = gap(c.expand(len(p_ref_c), -1))  # [n, grid]
    cross = (g[:, :-1] <= 0) & (g[:, 1:] > 0) | (g[:, :-1] >= 0) & (g[:, 1:] < 0)  # [n, grid−1] bracketed roots
    rows, js = cross.nonzero(as_tuple=True)  # [K] every (row, bracket) pair, brackets ascending within a row
    lo, hi, sign_lo = c[js], c[js + 1], torch.sign(g[rows, js])  # [K] all brackets bisected together
    logit_k = logit_ref[rows]
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        w_mid = finite_group_weight(torch.sigmoid(logit_k + mid / beta), group_size, std, eps)
        same = torch.sign(mid - w_mid) == sign_lo
        lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
    root = 0.5 * (lo + hi)  # [K]
    logpi = reverse_kl_optimum(logp_ref[rows], rewards[rows], beta, root)  # [K, M]
    J = (finite_group_utility(torch.sigmoid(logit_k + root / beta), group_size, std, eps)
         - beta * kl(logpi, logp_ref[rows]))
    J = torch.where(torch.isnan(J), -math.inf, J)  # [K]
    best_j = torch.full_like(p_ref_c, -math.inf).scatter_reduce(0, rows, J, "amax")  # [n] the best objective
    first = torch.where((J == best_j[rows]) & (J > -math.inf), torch.arange(len(J)), len(J))  # ties: the first root
    pick = torch.full(p_ref_c.shape, len(J), dtype=torch.long).scatter_reduce(0, rows, first, "amin")  # [n]
    best_c = torch.where(pick < len(J), torch.cat([root, c[:1]])[pick], c[0])
    return reverse_kl_optimum(logp_ref, rewards, beta, best_c)


def odds_tv(logp: torch.Tensor, logp_ref: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Distance of π's odds among the correct answers from π_ref's: ½ Σ_{y∈C} |π(y|C) − π_ref(y|C)| per row.

    C = {y : R(y) = max R}; π(y|C) = π(y)/π(C). 0 iff π(y)/π(y') = π_ref(y)/π_ref(y') on C (both reverse- and
    forward-KL optima). Rows where π or π_ref gives C no mass are NaN.
    """
    _check_dist(logp, logp_ref, rewards)
    best = rewards == rewards.max(dim=-1, keepdim=True).values  # [n, M]
    neg = torch.full_like(logp, -math.inf)
    cond = torch.log_softmax(torch.where(best, logp, neg), dim=-1)  # [n, M] log π(y|C)
    cond_ref = torch.log_softmax(torch.where(best, logp_ref, neg), dim=-1)
    out = 0.5 * (cond.exp() - cond_ref.exp()).abs().sum(dim=-1)  # [n]
    return out


def correct_entropy(logp: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """H(π(·|C)): entropy of π restricted to the correct answers C = {y : R(y) = max R}, per row: ``[n]``."""
    best = rewards == rewards.max(dim=-1, keepdim=True).values
    return entropy(torch.log_softmax(torch.where(best, logp, torch.full_like(logp, -math.inf)), dim=-1))


def regularized_optima(logp_ref: torch.Tensor, rewards: torch.Tensor, beta: float,
                       group: tuple[int, str, float] | None = None) -> dict[str, torch.Tensor]:
    """The ``[n, M]`` log-probs of the optima :func:`sequence_metrics` measures distances to (β > 0): ``"rev"``
    (:func:`reverse_kl_optimum`), ``"fwd"`` (:func:`forward_kl_optimum`) and, with ``group`` = (G, std, ε),
    ``"ug"`` (:func:`finite_group_optimum`). They depend on π_ref, R and β only (a run computes them once)."""
    out = {"rev": reverse_kl_optimum(logp_ref, rewards, beta), "fwd": forward_kl_optimum(logp_ref, rewards, beta)}
    if group is not None:
        out["ug"] = finite_group_optimum(logp_ref, rewards, beta, *group)
    return out


def sequence_metrics(logp: torch.Tensor, logp_ref: torch.Tensor, rewards: torch.Tensor, lengths: torch.Tensor,
                     beta: float, ks: Sequence[int] = (1, 8), group: tuple[int, str, float] | None = None,
                     optima: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Every exact metric of π against π_ref on the enumerated responses, averaged over the prompts (rows).

    Args:
        logp, logp_ref: ``[n, M]`` log π(y|x), log π_ref(y|x) over all responses; rewards ``[n, M]``;
        lengths ``[M]`` response lengths |y| (EOS counted); beta: the run's β (distances to the optima need
        β > 0); ks: the k of pass@k; group: (G, std, ε) of the finite-group optimum (GRPO-style advantages,
        binary rewards); optima: :func:`regularized_optima` of (logp_ref, rewards, beta, group) when computed
        already (else computed here).

    Returns (docs/metrics.md, ``exact_…``): reward, pass@k, response_len, kl_rev_seq, kl_rev_tok, kl_fwd_seq,
    entropy_seq, entropy_tok, odds_tv, entropy_correct and, for β > 0, kl_to_opt_rev / tv_to_opt_rev (π*_β),
    kl_to_opt_fwd / tv_to_opt_fwd (forward-KL optimum) and, with ``group``, kl_to_opt_ug / tv_to_opt_ug.
    """
    _check_dist(logp, logp_ref, rewards)
    pi = logp.exp()
    p = (pi * rewards).sum(dim=-1)  # [n] E_π R
    length = (pi * lengths.to(pi)).sum(dim=-1)  # [n] E_π |y|
    kl_rev = kl(logp, logp_ref)
    out = {"reward": p.mean(), "response_len": length.mean(), "kl_rev_seq": kl_rev.mean(),
           "kl_rev_tok": kl_rev.mean() / length.mean(), "kl_fwd_seq": kl(logp_ref, logp).mean(),
           "entropy_seq": entropy(logp).mean(), "entropy_tok": entropy(logp).mean() / length.mean(),
           "odds_tv": odds_tv(logp, logp_ref, rewards).nanmean(), "entropy_correct": correct_entropy(logp, rewards).nanmean()}
    for k in ks:
        out[f"pass@{k}"] = (1 - (1 - p.clamp(0, 1)) ** k).mean()
    if beta > 0:
        optima = regularized_optima(logp_ref, rewards, beta, group) if optima is None else optima
        for name in ("rev", "fwd", "ug") if group is not None else ("rev", "fwd"):
            opt = optima[name]
            out[f"kl_to_opt_{name}"], out[f"tv_to_opt_{name}"] = kl(logp, opt).mean(), tv(logp, opt).mean()
    return {k: float(v) for k, v in out.items()}


def enumerable(task, limit: int = 20_000) -> bool:
    """True when the task has several correct answers and at most ``limit`` responses per prompt to enumerate."""
    V, R = task.vocab_size, task.max_response_len
    size = sum((V - 1) ** k for k in range(R)) + (V - 1) ** R
    return bool(getattr(task, "multi_answer", False)) and size <= limit


def weights_fingerprint(model: torch.nn.Module) -> tuple:
    """What :func:`sequence_logprobs` reads of a model: its class, config, train/eval mode (where it changes the
    outputs) and every parameter and buffer (name, dtype, shape, device, SHA-256 of the bytes). Equal fingerprints
    give equal log-probs (the same computation on the same numbers), so a result can be reused."""
    m = unwrap(model)
    entries = []
    for name, t in m.state_dict().items():
        raw = t.detach().reshape(-1).contiguous().view(torch.uint8).cpu()  # the bytes of any dtype (bf16 too)
        entries.append((name, str(t.dtype), tuple(t.shape), str(t.device), hashlib.sha256(raw.numpy()).hexdigest()))
    config = getattr(m, "cfg", getattr(m, "config", None))  # rlkl's GPT keeps its GPTConfig as `cfg`
    # rlkl's GPT: train and eval differ only in dropout (none in RL runs: a training policy at π_0's weights is π_0);
    # any other module: the mode is part of the fingerprint
    mode = m.training if not isinstance(m, GPT) or m.cfg.dropout > 0 else None
    return (type(m).__module__, type(m).__qualname__, repr(config), mode, tuple(entries))


#: Yardsticks built in this process, by (π_0's fingerprint, task, device, split): runs of one process on the same
#: reference (an experiment's β × seed × method grid) share one instead of re-enumerating π_0. Two entries, the least
#: recently used dropped: one is ~2 MB for the divisor task at difficulty 2, ~230 MB at difficulty 3 (900 × 16,105).
_BUILT: "OrderedDict[tuple, Yardstick]" = OrderedDict()
_BUILT_MAX = 2


@dataclass(frozen=True)
class Yardstick:
    """π_0's exact response distribution on every problem of a task split, computed once per run; ``metrics``
    then measures a policy against it (and against the optima of the β-regularized objectives)."""

    prompts: torch.Tensor  # [n, P]
    logp_ref: torch.Tensor  # [n, M] log π_0(y|x), float64
    rewards: torch.Tensor  # [n, M] R(x, y), float64
    lengths: torch.Tensor  # [M] |y| (EOS counted)
    vocab_size: int
    max_len: int
    eos_id: int
    # (β, group) -> regularized_optima: π_ref's optima, computed at the first eval of each β (data, not state)
    _optima: dict = field(default_factory=dict, compare=False, repr=False)
    base_fingerprint: tuple | None = field(default=None, compare=False, repr=False)  # `weights_fingerprint` of π_0

    @classmethod
    def build(cls, base: torch.nn.Module, task, device, split: str = "train") -> "Yardstick":
        """π_0 = ``base`` on every problem of ``split``; the same (π_0, task, device, split) again in this process
        returns the Yardstick already built (its tensors are read, never written)."""
        fingerprint = weights_fingerprint(base)
        key = (fingerprint, type(task).__qualname__, repr(task), str(device), split)
        if key in _BUILT:
            _BUILT.move_to_end(key)
            return _BUILT[key]
        prompts = task.encode_prompts(task.split_problems(split)).to(device)  # [n, P]
        V, R, eos = task.vocab_size, task.max_response_len, task.eos_id
        logp_ref, responses, mask = sequence_logprobs(base, prompts, V, R, eos)
        M = responses.shape[0]
        rewards = task.score_groups(prompts, responses.repeat(prompts.shape[0], 1), M).view(-1, M).double()
        built = cls(prompts, logp_ref, rewards, mask.sum(dim=1).double(), V, R, eos, base_fingerprint=fingerprint)
        _BUILT[key] = built
        while len(_BUILT) > _BUILT_MAX:
            _BUILT.popitem(last=False)
        return built

    def metrics(self, policy: torch.nn.Module, beta: float, ks: Sequence[int] = (1, 8),
                group: tuple[int, str, float] | None = None) -> dict[str, float]:
        """``exact_…`` metrics of ``policy`` (:func:`sequence_metrics`, keys prefixed). A policy with π_0's exact
        weights (a run's step 0) reads π_0's log-probs instead of enumerating them again."""
        if self.base_fingerprint is not None and weights_fingerprint(policy) == self.base_fingerprint:
            logp = self.logp_ref
        else:
            logp, _, _ = sequence_logprobs(policy, self.prompts, self.vocab_size, self.max_len, self.eos_id)
        key = (float(beta), group)
        if beta > 0 and key not in self._optima:
            self._optima[key] = regularized_optima(self.logp_ref, self.rewards, beta, group)
        res = sequence_metrics(logp, self.logp_ref, self.rewards, self.lengths, beta, ks, group,
                               self._optima.get(key))
        return {f"exact_{k}": v for k, v in res.items()}
