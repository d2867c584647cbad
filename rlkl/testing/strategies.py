"""Bounded hypothesis strategies for tensors, rollout batches, trees and policies (rlkl's tests and yours).

Needs ``hypothesis`` (``pip install rlkl[test]``); rlkl itself does not import this module.

    from hypothesis import given
    from rlkl.testing.strategies import rollout_batches, setups

    @given(rollout_batches(min_group=2, max_group=4))
    def test_my_loss_ignores_padding(batch): ...

Everything here is small on purpose (B <= 15, T <= 7, trees of <= 64 responses) so 25 derandomized examples per
test keep a suite fast. Values are bounded so identities can be asserted at float64 round-off:

- log-probs of sampled tokens in [-6, -0.05] (behaviour policy) with log-ratios to it bounded by
  ``log_ratio_bound`` (default 2, i.e. ratios in [e^-2, e^2]); every log-prob is <= -0.01 (a valid log-prob, so
  ℓ = −log π > 0 as RPG's Algorithm 2 assumes);
- rewards binary ({0, 1}, so all-equal groups occur often) or continuous in [-2, 2] on a 1e-4 grid;
- masks with at least one valid token per row: right-padded (the verl/TRL layout) or arbitrary (holes, as for
  multi-turn observation tokens).

Groups are contiguous blocks of ``group_size`` rows, as in ``rlkl.methods.RolloutBatch``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = ["MAX_T", "finite_floats", "float_tensors", "masks", "group_shapes", "rewards", "grouped_rewards",
           "TokenBatch", "token_batches", "rollout_batches", "categorical_pairs", "log_measures", "probabilities",
           "interior_probabilities", "trees", "policies", "Setup", "setups"]

MAX_T = 7


def finite_floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Finite float64 values in [lo, hi] (no nan/inf, no subnormal surprises)."""
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64)


@st.composite
def float_tensors(draw, shape, lo: float = -3.0, hi: float = 3.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A tensor of the given shape with entries in [lo, hi]."""
    arr = draw(hnp.arrays(np.float64, tuple(shape), elements=finite_floats(lo, hi)))
    return torch.tensor(arr, dtype=dtype)


@st.composite
def masks(draw, B: int, T: int, contiguous: bool | None = None) -> torch.Tensor:
    """A ``[B, T]`` bool mask with >= 1 valid token per row.

    ``contiguous=True``: right padding (response tokens then padding); ``False``: arbitrary holes;
    ``None``: either.
    """
    if contiguous is None:
        contiguous = draw(st.booleans())
    if contiguous:
        lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
        return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    rows = []
    for _ in range(B):
        row = draw(st.lists(st.booleans(), min_size=T, max_size=T))
        if not any(row):
            row[draw(st.integers(0, T - 1))] = True
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool)


@st.composite
def group_shapes(draw, min_group: int = 2, max_group: int = 5, max_groups: int = 3) -> tuple[int, int]:
    """(B, G): G in [min_group, max_group], B = G × (1..max_groups)."""
    G = draw(st.integers(min_group, max_group))
    n = draw(st.integers(1, max_groups))
    return G * n, G


@st.composite
def rewards(draw, B: int, kind: str = "mixed", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[B]`` rewards: ``binary`` {0,1}, ``continuous`` [-2, 2], or ``mixed`` (either, chosen per draw)."""
    if kind == "mixed":
        kind = draw(st.sampled_from(["binary", "continuous"]))
    if kind == "binary":
        vals = draw(st.lists(st.integers(0, 1), min_size=B, max_size=B))
        return torch.tensor(vals, dtype=dtype)
    # continuous rewards on a 1e-4 grid (as verifier/RM scores are): no 1e-243-sized differences whose squares
    # underflow in the loop references
    vals = draw(st.lists(finite_floats(-2.0, 2.0).map(lambda x: round(x, 4)), min_size=B, max_size=B))
    return torch.tensor(vals, dtype=dtype)


@st.composite
def grouped_rewards(draw, kind: str = "mixed", min_group: int = 2, max_group: int = 5, max_groups: int = 3,
                    dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, int]:
    """(rewards ``[B]``, group_size)."""
    B, G = draw(group_shapes(min_group, max_group, max_groups))
    return draw(rewards(B, kind, dtype)), G


class TokenBatch(NamedTuple):
    """The ``[B, T]`` + mask layout: log-probs of the sampled tokens under π_θ, π_old, π_ref."""

    logp: torch.Tensor
    logp_old: torch.Tensor
    logp_ref: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor
    group_size: int

    def rollout(self):
        from rlkl.methods import RolloutBatch

        return RolloutBatch(self.logp_old, self.logp_ref, self.mask, self.rewards, self.group_size)


@st.composite
def token_batches(draw, dtype: torch.dtype = torch.float64, min_group: int = 2, max_group: int = 4,
                  max_groups: int = 3, min_T: int = 1, max_T: int = 5, log_ratio_bound: float = 2.0,
                  reward_kind: str = "mixed", contiguous: bool | None = None, on_policy: bool = False) -> TokenBatch:
    """A random rollout batch; ``on_policy=True`` makes logp equal logp_old in value (π_θ = π_old)."""
    B, G = draw(group_shapes(min_group, max_group, max_groups))
    T = draw(st.integers(min_T, max_T))
    logp_old = draw(float_tensors((B, T), -6.0, -0.05))
    d_ref = draw(float_tensors((B, T), -log_ratio_bound, log_ratio_bound))
    logp_ref = torch.clamp(logp_old + d_ref, max=-0.01)  # valid log-probs: <= 0
    if on_policy:
        logp = logp_old.clone()
    else:
        logp = torch.clamp(logp_old + draw(float_tensors((B, T), -log_ratio_bound, log_ratio_bound)), max=-0.01)
    mask = draw(masks(B, T, contiguous))
    r = draw(rewards(B, reward_kind))
    return TokenBatch(logp.to(dtype), logp_old.to(dtype), logp_ref.to(dtype), mask, r.to(dtype), G)


@st.composite
def categorical_pairs(draw, min_k: int = 2, max_k: int = 6, bound: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two logit vectors ``[K]`` (float64) with entries in [-bound, bound]: categoricals p, q with full support."""
    K = draw(st.integers(min_k, max_k))
    return draw(float_tensors((K,), -bound, bound)), draw(float_tensors((K,), -bound, bound))


@st.composite
def log_measures(draw, min_k: int = 1, max_k: int = 6, bound: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two log-mass vectors ``[K]`` of *unnormalized* positive measures."""
    K = draw(st.integers(min_k, max_k))
    return draw(float_tensors((K,), -bound, bound)), draw(float_tensors((K,), -bound, bound))


probabilities = finite_floats(0.0, 1.0)
interior_probabilities = finite_floats(0.02, 0.98)


@st.composite
def rollout_batches(draw, dtype: torch.dtype = torch.float64, **kwargs) -> tuple[torch.Tensor, "RolloutBatch"]:
    """``(logp, RolloutBatch)``: a `token_batches` draw in the layout ``Method.loss(logp, batch)`` takes.

    Keyword arguments are those of `token_batches` (group sizes, T, log-ratio bound, reward kind, padding layout).
    """
    tb = draw(token_batches(dtype=dtype, **kwargs))
    return tb.logp, tb.rollout()


@st.composite
def trees(draw, max_vocab: int = 3, max_horizon: int = 3, max_prompts: int = 2, eos: bool | None = None,
          reward: str | None = None, max_responses: int = 64):
    """A seeded random `rlkl.toy.TreeMDP` with at most ``max_responses`` responses per prompt.

    Args:
      max_vocab, max_horizon, max_prompts: upper bounds of V (>= 2), T (>= 1), P (>= 1).
      eos: variable lengths (None: either); reward: ``"binary" | "real"`` (None: either).
    """
    from rlkl.toy.mdp import TreeMDP, count_responses

    V = draw(st.integers(2, max(2, max_vocab)))
    use_eos = draw(st.booleans()) if eos is None else bool(eos)
    if use_eos and V < 3:
        V = 3  # an EOS tree needs at least two non-EOS tokens to branch
    T = draw(st.integers(1, max(1, max_horizon)))
    while T > 1 and count_responses(V, T, use_eos) > max_responses:
        T -= 1
    P = draw(st.integers(1, max(1, max_prompts)))
    kind = draw(st.sampled_from(["binary", "real"])) if reward is None else reward
    seed = draw(st.integers(0, 2**16))
    return TreeMDP.random(V, T, P, eos=use_eos, reward=kind, seed=seed)


@st.composite
def policies(draw, tree, kind: str | None = None, max_logit: float = 2.0):
    """A policy on ``tree``: ``tabular`` (one logit per node and token) or ``loglinear`` (random features)."""
    from rlkl.toy.policies import LogLinearPolicy, TabularPolicy

    kind = draw(st.sampled_from(["tabular", "loglinear"])) if kind is None else kind
    seed = draw(st.integers(0, 2**16))
    scale = draw(finite_floats(0.1, max_logit))
    if kind == "tabular":
        return TabularPolicy.random(tree, scale, seed=seed)
    return LogLinearPolicy.random(tree, dim=4, scale=scale, seed=seed)


class Setup(NamedTuple):
    """A tree with the three policies of an audit: π_θ (differentiable), π_old (behaviour), π_ref."""

    tree: object
    policy: object
    behaviour: object
    ref: object
    off_policy: bool


@st.composite
def setups(draw, off_policy: bool | None = None, **tree_kwargs) -> Setup:
    """``Setup(tree, π_θ, π_old, π_ref, off_policy)``; π_old = π_θ (on-policy) or π_θ with perturbed logits."""
    tree = draw(trees(**tree_kwargs))
    pi = draw(policies(tree, kind="tabular"))
    ref = draw(policies(tree, kind="tabular")).detached()
    off = draw(st.booleans()) if off_policy is None else bool(off_policy)
    old = pi.perturbed(draw(finite_floats(0.05, 0.5)), draw(st.integers(0, 2**16))).detached() if off else pi.detached()
    return Setup(tree, pi, old, ref, off)
