"""Micro-batches and gradient accumulation are part of the objective: the per-token weights a trainer's batch
layout gives each token, and their exact effect on the expected gradient.

An rlkl :class:`~rlkl.methods.Method` aggregates the per-token loss ℓ_{i,t} of *one group* (the unit of
``rlkl.toy``'s exact expectation). A trainer aggregates over whatever its loss function sees:

* verl 0.9.1 calls ``agg_loss`` per micro-batch with the *global* token count of the optimizer step's
  mini-batch (``ppo_mini_batch_size`` prompts × ``rollout.n`` rows, summed over micro-batches and data-parallel
  ranks): the micro-batch split does not matter, the mini-batch does.
* TRL 1.16 ``loss_type="dapo"`` (and ``cispo``, ``vespo``) divides by the token count of the whole generation batch
  (``num_items_in_batch``); ``"bnpo"`` by the token count of each micro-batch (``per_device_train_batch_size`` rows
  of the shuffled generation batch), then by ``gradient_accumulation_steps``.
* The ``seq-mean-*`` modes (verl; TRL ``grpo``, ``dr_grpo``, ``luspo``) weight a row by its own length and the
  (fixed) number of rows only, so equal-sized micro-batches give the full-batch weights.

So only ``token-mean`` depends on the layout, and "token-mean over micro-batches is not token-mean over the
batch" (verl issues #7321, #2776). With responses of lengths n_i, the weight of every token of row i is

    GROUP  (rlkl):                    w_i = 1 / N_g                      N_g = tokens of i's group
    GROUPS (verl mini-batch, TRL dapo): w_i = K / N_pool                 N_pool = tokens of K whole groups
    MICRO  (TRL bnpo):                w_i = (b/G) / N_micro(i)           N_micro = tokens of i's b-row micro-batch

expressed per group (the loss of a step is Σ_groups Σ_i w_i Σ_t ℓ_{i,t} divided by the number of groups, so all
three agree for fixed lengths: w = 1/(G·T)). :func:`token_weights` gives the exact weights on a concrete batch;
:func:`expected_row_weights` their expectation given one group's lengths (the other rows of the pool or
micro-batch drawn from the behaviour policy: exact convolutions of the length distributions), which is what the
exact engine needs; :func:`layout_term` is the resulting bias term: E[∇ loss under the layout] − E[∇ Method.loss].
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from rlkl._checks import check_int, check_mask
from rlkl.options import AggMode, StrEnum, coerce, set_enum

__all__ = ["Pool", "BatchLayout", "token_weights", "split_loss", "expected_row_weights", "layout_loss_spec",
           "layout_expected_gradient", "layout_term", "TERM_NAME", "TERM_DOC"]

#: the name of the bias term in audit records (docs/integrations.md)
TERM_NAME = "batch_layout"
TERM_DOC = ("token-mean normalized over the trainer's mini-batch / micro-batch instead of the row's group "
            "(verl ppo_mini_batch_size, TRL per_device_train_batch_size × gradient_accumulation_steps)")


class Pool(StrEnum):
    """Which rows share the token-mean normalizer of a row: its own GROUP (rlkl's Method), K whole GROUPS (verl's
    mini-batch, TRL's generation batch for ``dapo``), or a MICRO-batch of b rows drawn without replacement from K
    whole groups (TRL ``bnpo`` after shuffling the generation batch)."""

    GROUP = "group"
    GROUPS = "groups"
    MICRO = "micro"


@dataclass(frozen=True)
class BatchLayout:
    """How the token-mean normalizer of an optimizer step is formed.

    Attributes:
      pool: :class:`Pool`.
      groups: K, whole groups in the normalization pool (GROUPS: the pool; MICRO: the population the micro-batches
        are drawn from). 1 for GROUP.
      micro_rows: b, rows per micro-batch (MICRO only; b divides K·G).
      source: one line naming the framework keys the layout comes from (display).
    """

    pool: Pool = Pool.GROUP
    groups: int = 1
    micro_rows: Optional[int] = None
    source: str = ""

    def __post_init__(self):
        set_enum(self, "pool", Pool)
        check_int("BatchLayout.groups", self.groups, low=1)
        check_int("BatchLayout.micro_rows", self.micro_rows, low=1, allow_none=True)
        if (self.pool is Pool.MICRO) != (self.micro_rows is not None):
            raise ValueError("BatchLayout.micro_rows is required for pool=micro and only used there")
        if self.pool is Pool.GROUP and self.groups != 1:
            raise ValueError("BatchLayout(pool=group) normalizes over one group: groups must be 1")

    @property
    def is_group(self) -> bool:
        """True when the layout gives rlkl's per-group weights (no layout effect for any mode)."""
        return self.pool is Pool.GROUP or (self.pool is Pool.GROUPS and self.groups == 1)

    def check(self, group_size: int) -> None:
        """ValueError when the micro-batch size does not divide the pool (K·G rows)."""
        if self.pool is Pool.MICRO and (self.groups * group_size) % self.micro_rows:
            raise ValueError(f"micro-batches of {self.micro_rows} rows do not divide a pool of {self.groups} groups × "
                             f"G={group_size} rows")

    def describe(self) -> str:
        if self.is_group:
            return "token-mean over each group (as rlkl's Method)"
        if self.pool is Pool.GROUPS:
            return f"token-mean over the {self.groups} groups of a step"
        return f"token-mean over each micro-batch of {self.micro_rows} rows drawn from {self.groups} groups"


# ------------------------------------------------------------------------------------------------ concrete batch
def token_weights(mask: Tensor, mode: AggMode | str, micro_index: Optional[Tensor] = None,
                  horizon: Optional[int] = None) -> Tensor:
    """The ``[B, T]`` weights W with Σ W·ℓ = the accumulated loss of a trainer on this batch.

    Without ``micro_index`` the whole batch is one aggregation (verl 0.9.1's global normalizers, TRL ``dapo`` when a
    generation batch is one optimizer step): W = m/Σm (token-mean), m/(|y_i|·B) (seq-mean-token-mean), m/B
    (seq-mean-token-sum), m/(B·C) (seq-mean-token-sum-norm). With ``micro_index`` (``[B]`` micro-batch ids, all
    micro-batches of equal size) each micro-batch M_j is aggregated on its own and the results are averaged, as
    gradient accumulation divided by the number of micro-batches does (TRL ``grpo``/``bnpo``/``dr_grpo``):
    W_i = (1/k)·w_i(M_j).

    Args:
      mask: ``[B, T]`` bool; mode: an :class:`~rlkl.options.AggMode`; micro_index: optional ``[B]`` long.
      horizon: C of seq-mean-token-sum-norm (None: T).
    Returns:
      ``[B, T]`` float64 weights (0 on padding; rows without tokens get 0).
    """
    mode = coerce(AggMode, "mode", mode)
    check_mask("mask", mask, mask.shape)
    if micro_index is None:
        return _weights_one(mask, mode, horizon)
    if micro_index.shape != (mask.shape[0],) or micro_index.dtype != torch.long:
        raise ValueError(f"micro_index must be a [B] long tensor of micro-batch ids, got {tuple(micro_index.shape)} "
                         f"{micro_index.dtype}")
    ids = torch.unique(micro_index)
    sizes = {int((micro_index == j).sum()) for j in ids}
    if len(sizes) != 1:
        raise ValueError(f"micro-batches must have equal sizes, got sizes {sorted(sizes)}")
    out = torch.zeros(mask.shape, dtype=torch.float64)
    for j in ids:
        rows = micro_index == j
        out[rows] = _weights_one(mask[rows], mode, horizon) / len(ids)
    return out


def _weights_one(mask: Tensor, mode: AggMode, horizon: Optional[int]) -> Tensor:
    m = mask.to(torch.float64)
    lengths = m.sum(-1, keepdim=True)  # [B, 1]
    rows = float((lengths > 0).sum())
    if mode is AggMode.TOKEN_MEAN:
        return m / m.sum()
    if mode is AggMode.SEQ_MEAN_TOKEN_MEAN:
        return m / (lengths.clamp(min=1) * rows)
    if mode is AggMode.SEQ_MEAN_TOKEN_SUM:
        return m / rows
    C = mask.shape[1] if horizon is None else horizon
    return m / (mask.shape[0] * C)


def per_token_loss(method: Any, logp: Tensor, logp_old: Tensor, logp_ref: Optional[Tensor], mask: Tensor,
                   advantages: Tensor) -> Tensor:
    """``[B, T]`` ℓ_{i,t} = policy loss + β·KL loss of ``method`` before aggregation (the terms
    :meth:`~rlkl.methods.Method.loss_given_advantages` aggregates)."""
    out = method.policy_loss_terms(logp, logp_old, advantages, mask).loss
    if method.kl_in_loss:
        if logp_ref is None:
            raise ValueError(f"method {method.name!r} has a KL loss towards π_ref: logp_ref is required")
        out = out + method.beta * method.kl.loss_term(logp, logp_ref, logp_old, mask)
    return out


def split_loss(method: Any, logp: Tensor, logp_old: Tensor, logp_ref: Optional[Tensor], mask: Tensor,
               advantages: Tensor, micro_index: Optional[Tensor] = None) -> Tensor:
    """Σ W·ℓ: the loss a trainer accumulates over the micro-batches ``micro_index`` (:func:`token_weights`).

    ``−∇_logp`` of it is the step's update; without ``micro_index`` it equals
    ``method.loss_given_advantages(...)`` on the whole batch (value and gradient; tested).
    """
    W = token_weights(mask, method.aggregation.mode, micro_index, method.aggregation.horizon).to(logp.dtype)
    return (per_token_loss(method, logp, logp_old, logp_ref, mask, advantages) * W).sum()


# ------------------------------------------------------------------------------------------------ expectations
def _conv_power(p: np.ndarray, k: int) -> np.ndarray:
    """The pmf of a sum of k i.i.d. copies of pmf ``p`` (repeated squaring; k = 0 → the point mass at 0)."""
    out = np.ones(1)
    base = p
    while k:
        if k & 1:
            out = np.convolve(out, base)
        k >>= 1
        if k:
            base = np.convolve(base, base)
    return out


def length_pmfs(mdp: Any, behaviour: Any) -> np.ndarray:
    """``[P, T+1]`` pmf of the response length per prompt under the behaviour policy (index = length)."""
    lengths = mdp.enumerate().lengths.to(torch.long)  # [N]
    with torch.no_grad():
        seq = behaviour.token_logp().sum(-1).reshape(mdp.num_prompts, mdp.num_responses)
        q = torch.softmax(seq, dim=-1)  # [P, N]
    out = torch.zeros(mdp.num_prompts, mdp.horizon + 1, dtype=torch.float64)
    out.index_add_(1, lengths, q.to(torch.float64))
    return out.numpy()


def _rows_pmf(pmfs: np.ndarray, rho: np.ndarray, c: int) -> np.ndarray:
    """pmf of the token total of c rows sharing one random prompt x ~ ρ."""
    out = np.zeros(c * (pmfs.shape[1] - 1) + 1)
    for x in range(pmfs.shape[0]):
        if rho[x] > 0:
            out += rho[x] * _conv_power(pmfs[x], c)
    return out


@dataclass(frozen=True)
class _Tables:
    """ψ[v][m] = E[1/(m + S_v)] for the token total S_v of v rows from the other groups (MICRO), or
    ψ[0][m] = K·E[1/(m + S)] with S the total of K−1 other whole groups (GROUPS)."""

    psi: list


def _inverse_moments(pmf: np.ndarray, m_max: int, scale: float = 1.0) -> np.ndarray:
    s = np.arange(pmf.shape[0], dtype=np.float64)
    m = np.arange(m_max + 1, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore"):
        inv = np.where(m + s > 0, 1.0 / np.maximum(m + s, 1e-300), 0.0)
    return scale * (inv * pmf[None, :]).sum(-1)  # [m_max + 1]


def _tables(layout: BatchLayout, pmfs: np.ndarray, rho: np.ndarray, G: int) -> _Tables:
    T = pmfs.shape[1] - 1
    K = layout.groups
    if layout.pool is not Pool.MICRO:
        S = _conv_power(_rows_pmf(pmfs, rho, G), K - 1)
        return _Tables([_inverse_moments(S, G * T, float(K))])
    b = layout.micro_rows
    # generating function over the K−1 other groups: Σ_c C(G, c) z^c D_c(w); coefficient of z^v / C((K−1)G, v)
    one = np.zeros((b, (b - 1) * T + 1))
    for c in range(min(G, b - 1) + 1):
        d = _rows_pmf(pmfs, rho, c)[: one.shape[1]]
        one[c, : d.shape[0]] += math.comb(G, c) * d
    poly = np.zeros_like(one)
    poly[0, 0] = 1.0
    for _ in range(K - 1):
        poly = _poly2_mul(poly, one)
    psi = []
    for v in range(b):
        total = math.comb((K - 1) * G, v)
        pmf = poly[v] / total if total else np.zeros(1)
        psi.append(_inverse_moments(pmf, b * T))
    return _Tables(psi)


def _poly2_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Product of two bivariate polynomials [z-degree, w-degree], truncated to a's shape."""
    out = np.zeros_like(a)
    for i in range(a.shape[0]):
        if not a[i].any():
            continue
        for j in range(a.shape[0] - i):
            if b[j].any():
                out[i + j] += np.convolve(a[i], b[j])[: a.shape[1]]
    return out


def expected_row_weights(lengths: Tensor, layout: BatchLayout, tables: _Tables) -> Tensor:
    """``[n, G]`` E[w_i | the lengths of i's group] for groups of lengths ``lengths`` (``[n, G]`` long).

    GROUPS: w_i = K·E[1/(N_g + S)]. MICRO: w_i = (b/G)·Σ_u P(u) mean_{U ⊂ group∖i, |U|=u} ψ_{b−1−u}(n_i + Σ_U n),
    u ~ Hypergeometric(K·G − 1 rows, G − 1 group mates, b − 1 draws): the group mates that share i's micro-batch.
    """
    n, G = lengths.shape
    if layout.pool is not Pool.MICRO:
        psi = torch.as_tensor(tables.psi[0], dtype=torch.float64)
        return psi[lengths.sum(-1)].unsqueeze(-1).expand(n, G).clone()
    b, K = layout.micro_rows, layout.groups
    out = torch.zeros(n, G, dtype=torch.float64)
    pop = K * G - 1
    for i in range(G):
        mates = [j for j in range(G) if j != i]
        for u in range(0, min(G - 1, b - 1) + 1):
            p_u = math.comb(G - 1, u) * math.comb(pop - (G - 1), b - 1 - u) / math.comb(pop, b - 1)
            if p_u == 0.0:
                continue
            psi = torch.as_tensor(tables.psi[b - 1 - u], dtype=torch.float64)
            subsets = list(itertools.combinations(mates, u))
            acc = torch.zeros(n, dtype=torch.float64)
            for U in subsets:
                m = lengths[:, i] + (lengths[:, list(U)].sum(-1) if U else 0)
                acc += psi[m]
            out[:, i] += p_u * acc / len(subsets)
    return out * (b / G)


def layout_loss_spec(method: Any, layout: BatchLayout, mdp: Any, behaviour: Any, group_size: int):
    """A ``rlkl.toy.expected.LossSpec`` whose expected gradient is the method's under ``layout``.

    Only token-mean depends on the layout; the other modes give the Method's own spec. An advantage with batch
    statistics is evaluated per group (``rlkl.toy.expected.toy_equivalent``), as the Method's audit evaluates it.
    """
    from rlkl.toy.expected import LossSpec, loss_spec, toy_equivalent

    G = int(group_size)
    layout.check(G)
    if method.aggregation.mode is not AggMode.TOKEN_MEAN or layout.is_group:
        return loss_spec(method, mdp, G)
    tables = _tables(layout, length_pmfs(mdp, behaviour), mdp.prompt_probs.detach().numpy(), G)
    # batch statistics of an advantage (GPG's α, REINFORCE++'s whitening) are taken per group, as the audit of the
    # Method takes them: the term isolates the aggregation's normalizer
    toy = toy_equivalent(method)

    def loss_fn(logp: Tensor, batch: Any) -> Tensor:
        adv = toy.advantages(batch)  # [B, T], group statistics per G rows
        ell = per_token_loss(toy, logp, batch.logp_old, batch.logp_ref, batch.mask, adv)
        lengths = batch.mask.sum(-1).view(-1, G)  # [B/G, G]
        w = expected_row_weights(lengths, layout, tables).reshape(-1, 1).to(logp.dtype)  # data: no gradient
        return (ell * batch.mask * w).sum() / lengths.shape[0]  # mean over the groups of the call

    # rows couple through their lengths (and the advantage): symmetric in the rows of a group
    return LossSpec(loss_fn, G, AggMode.SEQ_MEAN_TOKEN_SUM, "full", f"{method.name} [{layout.describe()}]", None)


def layout_expected_gradient(method: Any, layout: BatchLayout, mdp: Any, policy: Any, behaviour: Any = None,
                             ref: Any = None, group_size: int = 4):
    """Exact E[∇_θ loss] of ``method`` under ``layout`` (an ``rlkl.toy.expected.ExpectedGradient``)."""
    from rlkl.toy.expected import expected_gradient

    beh = behaviour if behaviour is not None else policy.detached()
    spec = layout_loss_spec(method, layout, mdp, beh, group_size)
    return expected_gradient(spec, mdp, policy, beh, ref, group_size)


def layout_term(method: Any, layout: BatchLayout, mdp: Any, policy: Any, behaviour: Any = None, ref: Any = None,
                group_size: int = 4, method_grad: Optional[Tensor] = None) -> Tensor:
    """The bias term ``batch_layout``: E[∇ loss under ``layout``] − E[∇ Method.loss] (θ-shaped, exact).

    ``method_grad`` (the Method's own expected gradient, e.g. an audit's ``AuditResult.grad``) saves one
    evaluation. Zero (exactly) for the seq-mean-* modes and for per-group layouts.
    """
    if method.aggregation.mode is not AggMode.TOKEN_MEAN or layout.is_group:
        return torch.zeros_like(policy.theta.detach())
    from rlkl.toy.expected import expected_gradient

    beh = behaviour if behaviour is not None else policy.detached()
    g_layout = layout_expected_gradient(method, layout, mdp, policy, beh, ref, group_size).grad
    if method_grad is None:
        method_grad = expected_gradient(method, mdp, policy, beh, ref, group_size).grad
    return g_layout - method_grad
