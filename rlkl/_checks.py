"""Input validation shared by every public function of rlkl.

Bad input raises ``ValueError`` naming the argument and what was wrong; nothing broadcasts silently.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


SUPPORTED_FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64)


def check_float(name: str, x: Tensor, ndim: int | None = None, shape: Sequence[int] | None = None,
                finite: bool = True) -> Tensor:
    """Check that ``x`` is a float32/float64 tensor of the given rank/shape with finite entries; return it.

    16-bit floats (float16, bfloat16) and float8 are refused with a "cast to float32" message rather than
    computed in: float16 overflows at e^11 (k3(−12) = inf) and bfloat16 keeps 3 significant digits, so every
    estimator would silently lose its documented precision (docs/precision.md). Cast with ``x.float()`` (under
    autocast, compute the log-probs from float32 logits). Meta tensors (no data) are refused too.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor (float32/float64), got dtype {x.dtype}")
    if x.dtype not in SUPPORTED_FLOAT_DTYPES:
        raise ValueError(f"{name} has dtype {x.dtype}; rlkl computes in float32 or float64 only (16-bit floats "
                         f"overflow and lose the estimators' precision): cast to float32 with {name}.float()")
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (shape only, no data); pass a tensor with values")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)}")
    if finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains non-finite values (nan/inf); check the log-probs upstream")
    return x


def check_bool(name: str, value) -> bool:
    """A flag must be a real ``bool`` (not 0/1, not a string), so a typo cannot flip a switch silently."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool (True/False), got {type(value).__name__} {value!r}")
    return value


def check_mask(name: str, mask: Tensor, shape: Sequence[int], require_nonempty_rows: bool = False,
               require_nonempty: bool = True) -> Tensor:
    """Check a ``[B, T]`` boolean mask of the given shape; it must select a token (``require_nonempty``, one host
    sync) and optionally every row must (``require_nonempty_rows``)."""
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got dtype {mask.dtype} (use mask.bool())")
    if mask.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (shape only, no data); pass a tensor with values")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    if require_nonempty and not bool(mask.any()):
        raise ValueError(f"{name} selects no token at all")
    if require_nonempty_rows:
        empty = (~mask.any(dim=-1)).nonzero().flatten()
        if empty.numel():
            raise ValueError(f"{name} has rows with no token: {empty[:10].tolist()} (every response needs >= 1 token)")
    return mask


def check_same_dtype(**tensors: Tensor) -> torch.dtype:
    """All floating tensors must share one dtype (no silent promotion)."""
    dtypes = {k: v.dtype for k, v in tensors.items() if v is not None}
    if len(set(dtypes.values())) > 1:
        raise ValueError(f"inputs must share one dtype, got {dtypes}")
    return next(iter(dtypes.values()))


def check_group_size(batch_size: int, group_size: int) -> int:
    """``group_size`` must be a positive int dividing ``batch_size`` (groups are contiguous blocks)."""
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if batch_size % group_size != 0:
        raise ValueError(f"group_size={group_size} does not divide the batch size {batch_size}; "
                         "groups must be contiguous blocks of group_size rows")
    return group_size


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """``value`` must be one of ``choices`` (compared as strings: a non-string is never a valid choice)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")
    return value


def check_token_tensors(mask: Tensor, **tensors: Tensor) -> tuple[int, int]:
    """Check ``[B, T]`` float tensors and their mask; return (B, T)."""
    first = next(iter(tensors))
    x = check_float(first, tensors[first], ndim=2)
    shape = tuple(x.shape)
    for k, v in tensors.items():
        check_float(k, v, shape=shape)
    check_same_dtype(**tensors)
    check_mask("mask", mask, shape)
    return shape


def check_real(name: str, value, *, low: float | None = None, high: float | None = None, low_open: bool = False,
               high_open: bool = False, allow_none: bool = False, allow_inf: bool = False) -> float | None:
    """Validate a scalar hyper-parameter once, at the public boundary, and return it as a float.

    Rejects non-numbers (bools and strings included), NaN, ±inf (unless ``allow_inf``) and values outside
    ``[low, high]`` (``low_open`` / ``high_open`` make a bound strict). The message names the argument, the value
    and the admissible range, so a NaN β can never silently switch a KL term off.
    """
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} must be a number, got None")
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
            isinstance(value, Tensor) and value.dim() == 0 and not value.dtype.is_complex):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if v != v:
        raise ValueError(f"{name} must be a number, got nan")
    if not allow_inf and v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {v}")
    below = low is not None and (v < low or (low_open and v == low))
    above = high is not None and (v > high or (high_open and v == high))
    if below or above:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        rng = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name} must be in {rng}, got {v:g}")
    return v


def check_int(name: str, value, *, low: int | None = None, high: int | None = None,
              allow_none: bool = False) -> int | None:
    """Validate an integer hyper-parameter (bools and floats rejected) in ``[low, high]``; return it."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        # message format relied on by the CLI tests: "NAME must be in [low, high], got V"
        raise ValueError(f"{name} must be in [{'-inf' if low is None else low}, {'inf' if high is None else high}], "
                         f"got {value}")
    return value
