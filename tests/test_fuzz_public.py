"""Fuzz suite over every public function of rlkl.divergences, rlkl.advantages, rlkl.losses, rlkl.utility and
rlkl._checks (issue 11: "numbers never silently wrong").

Property, for every drawn call: either every output is finite and so is the gradient of their sum with respect to
every float input, or the call raises a ValueError whose message names the argument that was made invalid. Each
example draws valid arguments (bounded: log-ratios within ±20 in float32 and ±50 in float64 — inside every
estimator's finite range, docs/precision.md — rewards and losses over many magnitudes, masks with holes and
all-equal reward groups, G = 2 and G = B, ε = 0) and then, with probability about ½, makes exactly one argument
invalid: nan / ±inf entries, float16 / bfloat16 / integer / meta tensors, lists, wrong shapes, empty masks, nan /
inf / out-of-range / mistyped scalars, unknown names.

Default run: the ``ci`` profile (25 derandomized examples per function, ≈ 8 s). A longer campaign, freshly
randomized each run (its own command; ``RLKL_FUZZ_EXAMPLES`` sets the examples per function, default 1000; 500 took
3.5 min on 2 busy cores):

    .venv/bin/python -m pytest -m slow tests/test_fuzz_public.py
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlkl import _checks, advantages, divergences, losses, utility
from strategies import finite_floats, float_tensors, masks

F32, F64 = torch.float32, torch.float64
LR_BOUND = {F32: 20.0, F64: 50.0}
FUZZ_EXAMPLES = int(os.environ.get("RLKL_FUZZ_EXAMPLES", "1000"))
F_NAMES = [n for n in divergences.F_DIVERGENCE_NAMES if n != "alpha"] + ["alpha=0.5", "alpha=2", "alpha=-1"]


@dataclass
class Call:
    """One drawn call: ``fn(**kwargs)``; ``grad`` names the float tensor arguments to differentiate; ``bad`` maps
    each argument that may be made invalid to (strategy of invalid values, word the message must contain)."""

    fn: Callable[..., Any]
    kwargs: dict
    grad: tuple[str, ...] = ()
    bad: dict[str, tuple[st.SearchStrategy, str]] = field(default_factory=dict)
    allow_inf: bool = False  # a +inf value is a correct answer here (e.g. a divergence with disjoint support)


# ---------------------------------------------------------------------------------------------------------------
# invalid values


def _with(x: torch.Tensor, index: int, value: float) -> torch.Tensor:
    y = x.detach().clone()
    y.view(-1)[index % max(y.numel(), 1)] = value
    return y


def bad_tensor(x: torch.Tensor, neg_inf_ok: bool = False, shape_checked: bool = True) -> st.SearchStrategy:
    """Invalid versions of a finite float tensor argument."""
    opts = [st.integers(0, 10 ** 6).map(lambda i: _with(x, i, math.nan)),
            st.integers(0, 10 ** 6).map(lambda i: _with(x, i, math.inf)),
            st.sampled_from([x.half(), x.bfloat16(), x.round().long(), x.tolist(), torch.empty_like(x, device="meta")])]
    if not neg_inf_ok:
        opts.append(st.integers(0, 10 ** 6).map(lambda i: _with(x, i, -math.inf)))
    if shape_checked:
        opts.append(st.just(torch.cat([x.detach(), x.detach()[..., :1]], dim=-1)))
    return st.one_of(opts)


def bad_mask(m: torch.Tensor, empty_ok: bool = False) -> st.SearchStrategy:
    opts = [m.long(), m.double(), m.tolist(), m[..., :-1] if m.shape[-1] > 1 else m[:0],
            torch.empty_like(m, device="meta")]
    if not empty_ok:
        opts.append(torch.zeros_like(m))
    return st.sampled_from(opts)


def bad_scalar(*extra, none_ok: bool = False) -> st.SearchStrategy:
    base = [math.nan, math.inf, -math.inf, "0.1", True, [0.1]] + list(extra)
    if not none_ok:
        base.append(None)
    return st.sampled_from(base)


BAD_NAME = st.sampled_from(["nope", 3, None, ""])
BAD_BOOL = st.sampled_from([1, 0, "True", None, 1.0])
BAD_G = st.sampled_from([0, -2, 2.0, True, "2", None])

# ---------------------------------------------------------------------------------------------------------------
# valid values


@st.composite
def log_ratios(draw, dtype, shape=None):
    shape = shape or (draw(st.integers(1, 6)),)
    b = LR_BOUND[dtype]
    x = draw(float_tensors(shape, -b, b, dtype=dtype))
    tiny = draw(st.booleans())  # also |δ| ~ 1e-12 … 1e-3, where the cancellation-prone forms are tested
    return x * 10.0 ** -draw(st.integers(3, 12)) if tiny else x


@st.composite
def token_batch(draw, dtype, min_group=2):
    G = draw(st.integers(min_group, 4))
    B = G * draw(st.integers(1, 3))
    T = draw(st.integers(1, 6))
    b = LR_BOUND[dtype]
    logp_old = draw(float_tensors((B, T), -8.0, -0.05, dtype=F64))
    logp_ref = (logp_old + draw(float_tensors((B, T), -b / 2, b / 2))).clamp(max=-0.01)
    logp = (logp_old + draw(float_tensors((B, T), -b / 2, b / 2))).clamp(max=-0.01)
    rewards = draw(st.sampled_from([
        torch.tensor(draw(st.lists(st.integers(0, 1), min_size=B, max_size=B)), dtype=F64),
        draw(float_tensors((B,), -2.0, 2.0)) * 10.0 ** draw(st.integers(-30, 30)),
        torch.full((B,), draw(finite_floats(-3.0, 3.0)), dtype=F64)]))  # all-equal groups
    mask = draw(masks(B, T))
    return [x.to(dtype) for x in (logp, logp_old, logp_ref, rewards)] + [mask, G]


EPS = st.sampled_from([0.0, 1e-6, 1e-4, 0.5])
STD = st.sampled_from(["population", "bessel"])
DTYPE = st.sampled_from([F32, F64])


# ---------------------------------------------------------------------------------------------------------------
# one draw per public function

SPECS: dict[str, Callable[[st.DataObject], Call]] = {}


def spec(name: str):
    def register(fn):
        SPECS[name] = fn
        return fn
    return register


for _name in ("k1", "k2", "k3", "k3_straight_through"):
    @spec(f"divergences.{_name}")
    def _(data, fn=getattr(divergences, _name)):
        x = data.draw(log_ratios(data.draw(DTYPE)))
        return Call(fn, {"log_ratio": x}, ("log_ratio",), {"log_ratio": (bad_tensor(x, shape_checked=False),
                                                                          "log_ratio")})


@spec("divergences.kl_estimate")
def _(data):
    x = data.draw(log_ratios(data.draw(DTYPE)))
    return Call(divergences.kl_estimate, {"log_ratio": x, "estimator": data.draw(st.sampled_from(["k1", "k2", "k3"])),
                                          "straight_through_grad": data.draw(st.booleans())}, ("log_ratio",),
                {"log_ratio": (bad_tensor(x, shape_checked=False), "log_ratio"), "estimator": (BAD_NAME, "estimator"),
                 "straight_through_grad": (BAD_BOOL, "straight_through_grad")})


@spec("divergences.straight_through")
def _(data):
    dtype = data.draw(DTYPE)
    v, g = data.draw(log_ratios(dtype, (4,))), data.draw(log_ratios(dtype, (4,)))
    return Call(divergences.straight_through, {"value": v, "grad_source": g}, ("value", "grad_source"),
                {"value": (bad_tensor(v, shape_checked=False), "value"),
                 "grad_source": (bad_tensor(g, shape_checked=False), "grad_source")})


@spec("divergences.get_f_divergence+FDivergence")
def _(data):
    """get_f_divergence, then every method of the FDivergence it returns."""
    dtype = data.draw(DTYPE)
    name = data.draw(st.sampled_from(F_NAMES + ["alpha"]))
    alpha = data.draw(st.sampled_from([-3.0, -0.5, 0.3, 0.99, 1.01, 2.5])) if name == "alpha" else None
    method = data.draw(st.sampled_from(["sampled_estimate", "f_prime_centered", "f", "f_prime"]))
    x = data.draw(log_ratios(dtype))
    arg = x.exp() if method in ("f", "f_prime") else x

    def call(name, alpha, x):
        div = divergences.get_f_divergence(name, alpha)
        return getattr(div, method)(x)

    bad_alpha = st.sampled_from([math.nan, math.inf, 0.0, 1.0, "0.5", True])
    bad_x = bad_tensor(arg, shape_checked=False)
    if method in ("f", "f_prime"):
        bad_x = st.one_of(bad_x, st.just(_with(arg, 0, 0.0)), st.just(_with(arg, 0, -1.0)))
    bad = {"name": (st.sampled_from(["nope", 3, None, "alpha=nan", "alpha=x", "alpha=1"]), "divergence|alpha"),
           "x": (bad_x, {"f": "u", "f_prime": "u", "sampled_estimate": "log_ratio"}.get(method, "log_u"))}
    if name == "alpha":
        bad["alpha"] = (bad_alpha, "alpha")
    return Call(call, {"name": name, "alpha": alpha, "x": arg}, ("x",), bad)


@st.composite
def logit_pair(draw, dtype, shared_mask: bool):
    n, K = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    a = draw(float_tensors((n, K), -30.0, 30.0, dtype=dtype))
    b = draw(float_tensors((n, K), -30.0, 30.0, dtype=dtype))
    if K > 1 and draw(st.booleans()):
        keep = draw(masks(n, K))  # >= 1 finite logit per row
        a = torch.where(keep, a, -math.inf)
        b = torch.where(keep if shared_mask else draw(masks(n, K)), b, -math.inf)
    if not shared_mask and draw(st.booleans()):
        a = a * 1e3  # logits 1e4 apart: exp under- and overflow (χ²-type values may be inf: allowed there)
    return a, b


for _kind in ("exact_kl", "FDivergence.exact"):
    for _shared in (True, False):
        @spec(f"divergences.{_kind}[{'shared' if _shared else 'any'} support]")
        def _(data, kind=_kind, shared=_shared):
            dtype = data.draw(DTYPE)
            a, b = data.draw(logit_pair(dtype, shared))
            dim = data.draw(st.sampled_from([-1, 1]))
            fn = divergences.exact_kl if kind == "exact_kl" else \
                divergences.get_f_divergence(data.draw(st.sampled_from(F_NAMES))).exact
            return Call(fn, {"logits_p": a, "logits_q": b, "dim": dim}, ("logits_p", "logits_q") if shared else (),
                        {"logits_p": (bad_tensor(a, neg_inf_ok=True, shape_checked=False), "logits_p"),
                         "logits_q": (st.one_of(bad_tensor(b, neg_inf_ok=True),
                                                st.just(torch.full_like(b, -math.inf))), "logits_q"),
                         "dim": (st.sampled_from([2, -3, 1.0, "1", None]), "dim")},
                        allow_inf=not shared)  # P > 0 = Q (or the reverse, for forward-type f): inf is exact


@spec("divergences.unnormalized_kl")
def _(data):
    dtype = data.draw(DTYPE)
    K = data.draw(st.integers(1, 6))
    lp = data.draw(float_tensors((K,), -30.0, 5.0, dtype=dtype))
    lq = data.draw(float_tensors((K,), -30.0, 5.0, dtype=dtype))
    if data.draw(st.booleans()):
        lp = _with(lp, data.draw(st.integers(0, K - 1)), -math.inf)  # a zero mass of p: contributes q
    return Call(divergences.unnormalized_kl, {"log_p": lp, "log_q": lq}, ("log_p", "log_q"),
                {"log_p": (bad_tensor(lp, neg_inf_ok=True, shape_checked=False), "log_p"),
                 "log_q": (bad_tensor(lq, neg_inf_ok=True), "log_q")})


@spec("divergences.rao_blackwell_kl+monte_carlo_kl")
def _(data):
    dtype = data.draw(DTYPE)
    B, T, V = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5))
    mask = data.draw(masks(B, T))
    if data.draw(st.booleans()):
        a = data.draw(float_tensors((B, T, V), -30.0, 30.0, dtype=dtype))
        b = data.draw(float_tensors((B, T, V), -30.0, 30.0, dtype=dtype))
        bad_mask = st.sampled_from([mask.float(), mask[:, :0], None])
        return Call(divergences.rao_blackwell_kl, {"logits": a, "logits_ref": b, "mask": mask}, ("logits", "logits_ref"),
                    {"logits": (bad_tensor(a, shape_checked=False), "logits"),
                     "logits_ref": (bad_tensor(b), "logits_ref"), "mask": (bad_mask, "mask")})
    lp = data.draw(float_tensors((B, T), -20.0, -0.01, dtype=dtype))
    lr = data.draw(float_tensors((B, T), -20.0, -0.01, dtype=dtype))
    return Call(divergences.monte_carlo_kl, {"logp": lp, "logp_ref": lr, "mask": mask}, ("logp", "logp_ref"),
                {"logp": (bad_tensor(lp, shape_checked=False), "logp"), "logp_ref": (bad_tensor(lr), "logp_ref"),
                 "mask": (st.sampled_from([mask.float(), mask[:, :0], None]), "mask")})


# -- advantages ---------------------------------------------------------------------------------------------------

@st.composite
def grouped(draw, dtype, min_group=2):
    G = draw(st.integers(min_group, 5))
    B = G * draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["binary", "continuous", "equal"]))
    if kind == "binary":
        r = torch.tensor(draw(st.lists(st.integers(0, 1), min_size=B, max_size=B)), dtype=F64)
    elif kind == "equal":
        r = torch.full((B,), draw(finite_floats(-3.0, 3.0)), dtype=F64)
    else:  # any magnitude the dtype holds: 5.9e-204-sized and 1e300-sized rewards alike
        top = 30 if dtype == F32 else 290
        r = draw(float_tensors((B,), -2.0, 2.0)) * 10.0 ** draw(st.integers(-top, top))
    return r.to(dtype), G


for _fn_name in ("group_standardized", "group_centered", "leave_one_out"):
    @spec(f"advantages.{_fn_name}")
    def _(data, name=_fn_name):
        r, G = data.draw(grouped(data.draw(DTYPE)))
        kw = {"rewards": r, "group_size": G}
        bad = {"rewards": (bad_tensor(r, shape_checked=False), "rewards"),
               "group_size": (st.one_of(BAD_G, st.just(r.shape[0] + 1), st.just(1)), "group_size")}
        if name == "group_standardized":
            kw.update(eps=data.draw(EPS), std=data.draw(STD))
            bad.update(eps=(bad_scalar(-1e-6), "eps"), std=(BAD_NAME, "std"))
        return Call(getattr(advantages, name), kw, ("rewards",), bad)


@spec("advantages.length_weighted_centered")
def _(data):
    r, G = data.draw(grouped(data.draw(DTYPE)))
    lengths = torch.tensor(data.draw(st.lists(st.integers(1, 9), min_size=r.shape[0], max_size=r.shape[0])),
                           dtype=r.dtype)
    return Call(advantages.length_weighted_centered, {"rewards": r, "lengths": lengths, "group_size": G},
                ("rewards",), {"rewards": (bad_tensor(r, shape_checked=False), "rewards"),
                               "lengths": (st.one_of(bad_tensor(lengths), st.just(lengths * 0)), "lengths"),
                               "group_size": (st.one_of(BAD_G, st.just(1)), "group_size")})


@spec("advantages.pass_at_k_advantage")
def _(data):
    r, G = data.draw(grouped(data.draw(DTYPE)))
    kw = {"rewards": r, "group_size": G, "normalize": data.draw(st.booleans()), "eps": data.draw(EPS),
          "std": data.draw(STD)}
    return Call(advantages.pass_at_k_advantage, kw, ("rewards",),
                {"rewards": (bad_tensor(r, shape_checked=False), "rewards"), "group_size": (BAD_G, "group_size"),
                 "normalize": (BAD_BOOL, "normalize"), "eps": (bad_scalar(-1e-6), "eps"), "std": (BAD_NAME, "std")})


@spec("advantages.gpg_advantage")
def _(data):
    r, G = data.draw(grouped(data.draw(DTYPE)))
    kw = {"rewards": r, "group_size": G, "scope": data.draw(st.sampled_from(["batch", "group"]))}
    return Call(advantages.gpg_advantage, kw, ("rewards",),
                {"rewards": (bad_tensor(r, shape_checked=False), "rewards"), "group_size": (BAD_G, "group_size"),
                 "scope": (BAD_NAME, "scope")})


@spec("advantages.masked_whiten")
def _(data):
    dtype = data.draw(DTYPE)
    B, T = data.draw(st.integers(1, 4)), data.draw(st.integers(2, 6))
    v = data.draw(float_tensors((B, T), -1e3, 1e3, dtype=dtype))
    m = data.draw(masks(B, T)).clone()
    m[:, :2] = True  # >= 2 valid tokens per row (Bessel whitening needs two; fewer is a ValueError naming it)
    kw = {"values": v, "mask": m, "eps": data.draw(st.sampled_from([1e-8, 0.0, 1.0])), "std": data.draw(STD),
          "group_size": data.draw(st.sampled_from([None, 1] + ([B] if B > 1 else [])))}
    return Call(advantages.masked_whiten, kw, ("values",),
                {"values": (bad_tensor(v, shape_checked=False), "values"), "mask": (bad_mask(m), "mask"),
                 "eps": (bad_scalar(-1.0), "eps"), "std": (BAD_NAME, "std")})


@spec("advantages.batch_standardized")
def _(data):
    r, _ = data.draw(grouped(data.draw(DTYPE)))
    return Call(advantages.batch_standardized, {"rewards": r, "eps": data.draw(EPS), "std": data.draw(STD)},
                ("rewards",), {"rewards": (st.one_of(bad_tensor(r, shape_checked=False), st.just(r[:1])), "rewards"),
                               "eps": (bad_scalar(-1.0), "eps"), "std": (BAD_NAME, "std")})


@spec("advantages.compute_advantages")
def _(data):
    r, G = data.draw(grouped(data.draw(DTYPE)))
    kind = data.draw(st.sampled_from(advantages.ADVANTAGE_KINDS))
    return Call(advantages.compute_advantages, {"kind": kind, "rewards": r, "group_size": G, "eps": data.draw(EPS),
                                                "std": data.draw(STD)}, ("rewards",),
                {"kind": (BAD_NAME, "advantage"), "rewards": (bad_tensor(r, shape_checked=False), "rewards"),
                 "group_size": (BAD_G, "group_size")})


@spec("advantages.future_return")
def _(data):
    dtype = data.draw(DTYPE)
    B, T = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 6))
    v = data.draw(float_tensors((B, T), -1e3, 1e3, dtype=dtype))
    m = data.draw(masks(B, T))
    return Call(advantages.future_return, {"values": v, "mask": m, "include_current": data.draw(st.booleans())},
                ("values",), {"values": (bad_tensor(v, shape_checked=False), "values"), "mask": (bad_mask(m), "mask"),
                              "include_current": (BAD_BOOL, "include_current")})


@spec("advantages.reward_to_go")
def _(data):
    dtype = data.draw(DTYPE)
    B, T = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 6))
    v = data.draw(float_tensors((B, T), -1e3, 1e3, dtype=dtype))
    m = data.draw(masks(B, T))
    return Call(advantages.reward_to_go, {"token_rewards": v, "mask": m,
                                          "gamma": data.draw(st.sampled_from([1.0, 0.0, 0.9, 0.5]))},
                ("token_rewards",), {"token_rewards": (bad_tensor(v, shape_checked=False), "token_rewards"),
                                     "mask": (bad_mask(m), "mask"), "gamma": (bad_scalar(1.5, -0.1), "gamma")})


@spec("advantages.frpo_regularizer")
def _(data):
    dtype = data.draw(DTYPE)
    B, T = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 6))
    x = data.draw(log_ratios(dtype, (B, T)))
    m = data.draw(masks(B, T))
    return Call(advantages.frpo_regularizer, {"log_ratio": x, "mask": m,
                                              "divergence": data.draw(st.sampled_from(F_NAMES)),
                                              "include_local": data.draw(st.booleans())}, ("log_ratio",),
                {"log_ratio": (bad_tensor(x, shape_checked=False), "log_ratio"), "mask": (bad_mask(m), "mask"),
                 "divergence": (BAD_NAME, "divergence"), "include_local": (BAD_BOOL, "include_local")})


@spec("advantages.frpo_advantages")
def _(data):
    dtype = data.draw(DTYPE)
    logp, _, logp_ref, r, m, G = data.draw(token_batch(dtype))
    kw = {"rewards": r, "logp": logp, "logp_ref": logp_ref, "mask": m, "group_size": G,
          "beta": data.draw(st.sampled_from([0.0, 0.01, 1.0])), "divergence": data.draw(st.sampled_from(F_NAMES)),
          "include_local": data.draw(st.booleans()), "eps": data.draw(EPS), "std": data.draw(STD)}
    return Call(advantages.frpo_advantages, kw, (),
                {"rewards": (bad_tensor(r), "rewards"), "logp": (bad_tensor(logp, shape_checked=False), "logp"),
                 "logp_ref": (bad_tensor(logp_ref), "logp_ref"), "mask": (bad_mask(m), "mask"),
                 "group_size": (BAD_G, "group_size"), "beta": (bad_scalar(-0.1), "beta"),
                 "eps": (bad_scalar(-1.0), "eps")})


# -- utility ------------------------------------------------------------------------------------------------------

@st.composite
def probabilities(draw, interior: bool):
    lo, hi = (1e-3, 1 - 1e-3) if interior else (0.0, 1.0)
    if draw(st.booleans()):
        return draw(finite_floats(lo, hi))
    p = draw(float_tensors((draw(st.integers(1, 5)),), lo, hi))
    if not interior and draw(st.booleans()):
        p = _with(_with(p, 0, 0.0), 1, 1.0)
    return p


BAD_P = st.sampled_from([-0.1, 1.5, math.nan, math.inf, "0.5", True, None, torch.tensor([0.5, math.nan]),
                         torch.empty(2, device="meta")])

for _fn_name, _interior in (("grpo_utility", True), ("grpo_utility_grad", True)):
    @spec(f"utility.{_fn_name}")
    def _(data, name=_fn_name, interior=_interior):  # U' = 1/√(p(1−p)) is infinite at p ∈ {0, 1}: interior only
        return Call(getattr(utility, name), {"p": data.draw(probabilities(interior))}, ("p",), {"p": (BAD_P, "p")})


for _fn_name in ("finite_group_weight", "finite_group_utility", "effective_weight"):
    @spec(f"utility.{_fn_name}")
    def _(data, name=_fn_name):  # effective_weight = w·√(p(1−p)) has an infinite slope at {0, 1}: interior
        kw = {"p": data.draw(probabilities(name == "effective_weight")), "group_size": data.draw(st.integers(2, 12)),
              "std": data.draw(STD), "eps": data.draw(EPS)}
        return Call(getattr(utility, name), kw, ("p",),
                    {"p": (BAD_P, "p"), "group_size": (st.sampled_from([1, 0, 2.0, "3", True]), "group_size"),
                     "std": (BAD_NAME, "std"), "eps": (bad_scalar(-1.0), "eps")})


@spec("utility.conditional_advantage_means")
def _(data):
    G = data.draw(st.integers(2, 8))

    def centred(r):
        return advantages.group_centered(r.reshape(-1), G).view_as(r)

    return Call(utility.conditional_advantage_means, {"p": data.draw(probabilities(False)), "group_size": G,
                                                      "advantage_fn": centred}, ("p",),
                {"p": (BAD_P, "p"), "group_size": (st.sampled_from([1, 2.0, None]), "group_size"),
                 "advantage_fn": (st.sampled_from([None, 3, lambda r: r[:, :1]]), "advantage_fn")})


@spec("utility.mroueh_success_map+mroueh_success_sequence+mroueh_fixed_point")
def _(data):
    """One step of the success recursion, n steps, or its fixed point (a recursion map: rlkl does not
    differentiate it, so no gradient is checked)."""
    which = data.draw(st.sampled_from(["map", "sequence", "fixed_point"]))
    p_ref = data.draw(st.sampled_from([1e-9, 0.1, 0.5, 0.9, 1 - 1e-9]))
    beta = data.draw(st.sampled_from([1e-3, 0.5, 2.0, 5.0, 1e3]))
    eps = data.draw(st.sampled_from([0.0, 1e-6, 0.5]))
    bad_real = st.sampled_from([math.nan, math.inf, -1.0, "1", None, True])
    bad = {"p_ref": (st.sampled_from([0.0, 1.0, math.nan, -0.5, "0.5", None]), "p_ref"),
           "beta": (st.sampled_from([0.0, math.nan, math.inf, -1.0, "1", None, True]), "beta"),
           "eps": (bad_real, "eps")}
    if which == "map":
        p_prev = data.draw(st.one_of(probabilities(False), st.sampled_from([0.0, 1.0])))
        bad["p_prev"] = (BAD_P, "p_prev")
        return Call(utility.mroueh_success_map, {"p_prev": p_prev, "p_ref": p_ref, "beta": beta, "eps": eps}, (), bad)
    if which == "sequence":
        bad["n"] = (st.sampled_from([-1, 2.5, None, True]), "n")
        return Call(utility.mroueh_success_sequence, {"p_ref": p_ref, "beta": beta, "n": data.draw(st.integers(0, 5)),
                                                      "eps": eps}, (), bad)
    bad["tol"] = (st.sampled_from([0.0, -1.0, math.nan, None]), "tol")
    bad["max_iter"] = (st.sampled_from([0, 2.5, None]), "max_iter")
    return Call(utility.mroueh_fixed_point, {"p_ref": p_ref, "beta": beta, "eps": eps, "tol": 1e-12,
                                             "max_iter": 100_000}, (), bad)


@spec("utility.group_std_update_size")
def _(data):
    G = data.draw(st.integers(2, 12))
    return Call(utility.group_std_update_size, {"successes": data.draw(st.integers(0, G)), "group_size": G,
                                                "std": data.draw(STD), "eps": data.draw(EPS)}, (),
                {"successes": (st.sampled_from([-1, G + 1, 1.5, None]), "successes"),
                 "group_size": (st.sampled_from([1, 0, 2.0, None]), "group_size"),
                 "std": (BAD_NAME, "std"), "eps": (st.sampled_from([-1.0, math.nan, math.inf, "0"]), "eps")})


# -- losses -------------------------------------------------------------------------------------------------------

@spec("losses.masked_mean")
def _(data):
    dtype = data.draw(DTYPE)
    B, T = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 6))
    x = data.draw(float_tensors((B, T), -1e3, 1e3, dtype=dtype)) * 10.0 ** data.draw(st.integers(0, 30))
    m = data.draw(st.one_of(masks(B, T), st.just(torch.zeros(B, T, dtype=torch.bool))))  # empty: defined as 0
    return Call(losses.masked_mean, {"x": x, "mask": m}, ("x",),
                {"x": (st.sampled_from([x.half(), x.tolist(), x.long()]), "x"),
                 "mask": (bad_mask(m, empty_ok=True), "mask")})


@spec("losses.aggregate")
def _(data):
    dtype = data.draw(DTYPE)
    B, T = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 6))
    top = 34 if dtype == F32 else 300  # per-token losses up to 1e37 / 1e303: the means must not overflow
    x = data.draw(float_tensors((B, T), -10.0, 10.0, dtype=dtype)) * 10.0 ** data.draw(st.integers(0, top))
    m = data.draw(masks(B, T))
    mode = data.draw(st.sampled_from(losses.AGGREGATION_MODES))
    return Call(losses.aggregate, {"loss": x, "mask": m, "mode": mode,
                                   "horizon": data.draw(st.sampled_from([None, T, T + 3]))}, ("loss",),
                {"loss": (bad_tensor(x, shape_checked=False), "loss"), "mask": (bad_mask(m), "mask"),
                 "mode": (BAD_NAME, "aggregation"), "horizon": (st.sampled_from([0, -1, 2.5, "4", True]), "horizon")})


def _policy_bad(logp, logp_old, adv, m):
    return {"logp": (bad_tensor(logp, shape_checked=False), "logp"), "logp_old": (bad_tensor(logp_old), "logp_old"),
            "advantages": (bad_tensor(adv), "advantages"), "mask": (bad_mask(m), "mask")}


@st.composite
def policy_inputs(draw):
    dtype = draw(DTYPE)
    logp, logp_old, logp_ref, r, m, G = draw(token_batch(dtype))
    adv = draw(float_tensors(tuple(logp.shape), -3.0, 3.0, dtype=dtype))
    return logp, logp_old, logp_ref, adv, m


@spec("losses.reinforce_loss")
def _(data):
    logp, logp_old, _, adv, m = data.draw(policy_inputs())
    bad = _policy_bad(logp, logp_old, adv, m)
    return Call(losses.reinforce_loss, {"logp": logp, "advantages": adv, "mask": m, "logp_old": logp_old}, ("logp",),
                bad)


@spec("losses.ppo_clip_loss")
def _(data):
    logp, logp_old, _, adv, m = data.draw(policy_inputs())
    kw = {"logp": logp, "logp_old": logp_old, "advantages": adv, "mask": m,
          "clip_low": data.draw(st.sampled_from([0.2, 1e-4, 0.999])),
          "clip_high": data.draw(st.sampled_from([0.2, 5.0])),
          "dual_clip": data.draw(st.sampled_from([None, 3.0, 1.0001]))}
    bad = _policy_bad(logp, logp_old, adv, m)
    bad.update(clip_low=(bad_scalar(0.0, 1.0, 5.0, -3.0), "clip_low"), clip_high=(bad_scalar(0.0, -3.0), "clip_high"),
               dual_clip=(bad_scalar(1.0, 0.5, none_ok=True), "dual_clip"))
    return Call(losses.ppo_clip_loss, kw, ("logp",), bad)


@spec("losses.gspo_loss")
def _(data):
    logp, logp_old, _, adv, m = data.draw(policy_inputs())
    m = m.clone()
    m[:, 0] = True  # GSPO needs a token in every row (a row without one is a ValueError naming mask)
    kw = {"logp": logp, "logp_old": logp_old, "advantages": adv, "mask": m,
          "clip_low": data.draw(st.sampled_from([3e-4, 0.2])), "clip_high": data.draw(st.sampled_from([4e-4, 0.3]))}
    bad = _policy_bad(logp, logp_old, adv, m)
    bad.update(clip_low=(bad_scalar(0.0, 5.0, -1.0), "clip_low"), clip_high=(bad_scalar(0.0, -3.0), "clip_high"))
    return Call(losses.gspo_loss, kw, ("logp",), bad)


@spec("losses.cispo_loss")
def _(data):
    logp, logp_old, _, adv, m = data.draw(policy_inputs())
    kw = {"logp": logp, "logp_old": logp_old, "advantages": adv, "mask": m,
          "clip_low": data.draw(st.sampled_from([None, 0.2, 0.999])), "clip_high": data.draw(st.sampled_from([0.2, 5.0]))}
    bad = _policy_bad(logp, logp_old, adv, m)
    bad.update(clip_low=(bad_scalar(0.0, 1.0, 5.0, -3.0), "clip_low"), clip_high=(bad_scalar(0.0, -3.0), "clip_high"))
    return Call(losses.cispo_loss, kw, ("logp",), bad)


@spec("losses.kl_loss")
def _(data):
    logp, logp_old, logp_ref, _, m = data.draw(policy_inputs())
    iw = data.draw(st.booleans())
    kw = {"logp": logp, "logp_ref": logp_ref, "mask": m, "estimator": data.draw(st.sampled_from(["k1", "k2", "k3"])),
          "straight_through": data.draw(st.booleans()), "logp_old": logp_old if iw else None, "importance_weight": iw}
    bad = {"logp": (bad_tensor(logp, shape_checked=False), "logp"), "logp_ref": (bad_tensor(logp_ref), "logp_ref"),
           "mask": (bad_mask(m), "mask"), "estimator": (BAD_NAME, "estimator"),
           "straight_through": (BAD_BOOL, "straight_through"), "importance_weight": (BAD_BOOL, "importance_weight")}
    if iw:
        bad["logp_old"] = (st.one_of(bad_tensor(logp_old), st.just(None)), "logp_old")
    return Call(losses.kl_loss, kw, ("logp",), bad)


@spec("losses.RPGClip")
def _(data):
    kw = {"eps_low": data.draw(st.sampled_from([0.2, 1e-3, 0.99])), "eps_high": data.draw(st.sampled_from([0.28, 3.0])),
          "c": data.draw(st.sampled_from([10.0, 1.01]))}
    return Call(lambda **k: (losses.RPGClip(**k), torch.zeros(()))[1], kw, (),
                {"eps_low": (bad_scalar(0.0, 1.0, -0.2), "eps_low"), "eps_high": (bad_scalar(0.0, -1.0), "eps_high"),
                 "c": (bad_scalar(1.0, 0.5), "c")})


for _fn_name in ("rpg_weight", "rpg_differentiable_surrogate"):
    @spec(f"losses.{_fn_name}")
    def _(data, name=_fn_name):
        dtype = data.draw(DTYPE)
        n = data.draw(st.integers(1, 6))
        log_w = data.draw(float_tensors((n,), -20.0, 20.0, dtype=dtype))
        lp = data.draw(float_tensors((n,), -30.0, -0.01, dtype=dtype))
        adv = data.draw(float_tensors((n,), -3.0, 3.0, dtype=dtype))
        kw = {"w": log_w.exp(), "log_w": log_w, "adv": adv}
        if name == "rpg_differentiable_surrogate":
            kw["lp"] = lp
        kw.update(divergence=data.draw(st.sampled_from(losses.RPG_DIVERGENCES)),
                  beta=data.draw(st.sampled_from([0.0, 0.1, 2.0])), z_old=data.draw(st.sampled_from([1.0, 0.5, 3.0])))
        bad = {k: (bad_tensor(kw[k], shape_checked=False), k) for k in ("w", "log_w", "adv", "lp") if k in kw}
        bad.update(divergence=(BAD_NAME, "divergence"), beta=(bad_scalar(-0.1), "beta"),
                   z_old=(bad_scalar(0.0, -1.0), "z_old"))
        return Call(getattr(losses, name), kw, ("w", "log_w", "adv", "lp")[:len(kw) - 3], bad)


@spec("losses.rpg_loss")
def _(data):
    logp, logp_old, _, adv, m = data.draw(policy_inputs())
    level = data.draw(st.sampled_from(["token", "sequence"]))
    if level == "sequence":
        m = m.clone()
        m[:, 0] = True
    kw = {"logp": logp, "logp_old": logp_old, "advantages": adv, "mask": m,
          "divergence": data.draw(st.sampled_from(losses.RPG_DIVERGENCES)),
          "form": data.draw(st.sampled_from(["differentiable", "reinforce"])),
          "beta": data.draw(st.sampled_from([0.0, 0.1, 1.0])), "level": level,
          "clip": data.draw(st.sampled_from([None, losses.RPGClip(), losses.RPGClip(0.5, 2.0, 1.5)])),
          "z_old": data.draw(st.sampled_from([1.0, 0.7]))}
    bad = _policy_bad(logp, logp_old, adv, m)
    bad.update(divergence=(BAD_NAME, "divergence"), form=(BAD_NAME, "form"), level=(BAD_NAME, "level"),
               beta=(bad_scalar(-1.0), "beta"), z_old=(bad_scalar(0.0), "z_old"), clip=(st.just((0.2, 0.3)), "clip"))
    return Call(losses.rpg_loss, kw, ("logp",), bad)


# -- _checks ------------------------------------------------------------------------------------------------------

ANY_SCALAR = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10 ** 20, 10 ** 20),
                       st.sampled_from([None, True, "1", [1.0], torch.tensor(0.5), torch.tensor([0.5, 1.0])]))


@spec("_checks.check_real")
def _(data):
    lo = data.draw(st.sampled_from([None, 0.0, -1.0]))
    hi = data.draw(st.sampled_from([None, 1.0, 10.0]))
    kw = dict(low=lo, high=hi, low_open=data.draw(st.booleans()), high_open=data.draw(st.booleans()),
              allow_none=data.draw(st.booleans()), allow_inf=data.draw(st.booleans()))
    value = data.draw(ANY_SCALAR)

    def call(value):
        try:
            v = _checks.check_real("beta", value, **kw)
        except ValueError as e:
            assert re.search(r"\bbeta\b", str(e))
            return torch.zeros(())
        assert v is None or (v == v and (kw["allow_inf"] or math.isfinite(v)))
        assert v is None or ((lo is None or v >= lo) and (hi is None or v <= hi))
        return torch.zeros(())
    return Call(call, {"value": value})


@spec("_checks.check_int+check_bool+check_choice")
def _(data):
    value = data.draw(st.one_of(ANY_SCALAR, st.sampled_from(["k1", "k9", 2, 0])))

    def call(value):
        for fn in (lambda: _checks.check_int("group_size", value, low=1, high=8),
                   lambda: _checks.check_bool("group_size", value),
                   lambda: _checks.check_choice("group_size", value, ("k1", "k2"))):
            try:
                fn()
            except ValueError as e:
                assert "group_size" in str(e)
        return torch.zeros(())
    return Call(call, {"value": value})


@spec("_checks.check_token_tensors+check_group_size")
def _(data):
    logp, logp_old, _, adv, m = data.draw(policy_inputs())
    G = data.draw(st.sampled_from([1, logp.shape[0]]))  # divisors of B; a non-divisor is a bad value below

    def call(logp, logp_old, mask, group_size):
        B, T = _checks.check_token_tensors(mask, logp=logp, logp_old=logp_old)
        _checks.check_group_size(B, group_size)
        return torch.zeros(())

    return Call(call, {"logp": logp, "logp_old": logp_old, "mask": m, "group_size": G}, (),
                {"logp": (bad_tensor(logp, shape_checked=False), "logp"),
                 "logp_old": (bad_tensor(logp_old), "logp_old"), "mask": (bad_mask(m), "mask"),
                 "group_size": (st.sampled_from([0, 2.0, True, "2", logp.shape[0] + 1]), "group_size")})


# ---------------------------------------------------------------------------------------------------------------
# the property


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (float, int, np.floating)):
        return [torch.tensor(float(out), dtype=F64)]
    if isinstance(out, np.ndarray):
        return [torch.from_numpy(out)]
    if isinstance(out, (tuple, list, losses.PolicyLossOutput)):  # PolicyLossOutput: iterating reads every field
        return [t for o in out for t in _tensors(o)]
    raise AssertionError(f"unexpected output type {type(out).__name__}")


def check_call(call: Call, bad: str | None, bad_value) -> None:
    kwargs = dict(call.kwargs)
    grads = {}
    for name in call.grad:
        x = kwargs[name]
        if isinstance(x, torch.Tensor) and name != bad:
            kwargs[name] = grads[name] = x.detach().clone().requires_grad_()
        elif name in ("p",) and isinstance(x, float) and name != bad:
            kwargs[name] = grads[name] = torch.tensor(x, dtype=F64, requires_grad=True)
    if bad is not None:
        kwargs[bad] = bad_value
        with pytest.raises(ValueError) as err:
            call.fn(**kwargs)
        word = call.bad[bad][1]
        assert re.search(rf"\b({word})\b", str(err.value)), f"message does not name {word!r}: {err.value}"
        return
    outs = _tensors(call.fn(**kwargs))
    for o in outs:
        ok = ~torch.isnan(o) & (o != -math.inf) if call.allow_inf else torch.isfinite(o)
        assert bool(ok.all()), f"non-finite output {o}"
    diff = [o for o in outs if o.requires_grad and bool(torch.isfinite(o).all())]
    if grads and diff:
        total = sum(o.sum() for o in diff)
        gs = torch.autograd.grad(total, list(grads.values()), allow_unused=True)
        for name, g in zip(grads, gs):
            assert g is None or bool(torch.isfinite(g).all()), f"non-finite gradient for {name}: {g}"


@st.composite
def calls(draw, name):
    data = draw(st.data())
    call = SPECS[name](data)
    bad = draw(st.sampled_from([None] + sorted(call.bad))) if call.bad and draw(st.booleans()) else None
    bad_value = draw(call.bad[bad][0]) if bad is not None else None
    return call, bad, bad_value


@pytest.mark.parametrize("name", sorted(SPECS))
@given(data=st.data())
def test_public_function_is_finite_or_names_the_bad_argument(name, data):
    check_call(*data.draw(calls(name)))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPECS))
@settings(max_examples=FUZZ_EXAMPLES, derandomize=False)  # a fresh random campaign each run (failures print a blob)
@given(data=st.data())
def test_public_function_fuzz_campaign(name, data):
    check_call(*data.draw(calls(name)))


def test_every_public_function_is_fuzzed():
    # every public callable of the five modules appears in some spec name (rlkl._checks: the validators)
    covered = " ".join(SPECS)
    for mod in (divergences, advantages, losses, utility):
        public = [n for n, v in vars(mod).items() if callable(v) and not n.startswith("_")
                  and getattr(v, "__module__", None) == mod.__name__
                  and "__mutmut_" not in n]  # under `mutmut run` the module also holds its mutants' copies
        missing = [n for n in public if n not in covered and n not in ("FDivergence", "PolicyLossOutput")]
        assert not missing, (mod.__name__, missing)
