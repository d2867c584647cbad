"""Input validation shared by every public function of rlkl.

Bad input raises ``ValueError`` naming the argument and what was wrong; nothing broadcasts silently.

Values are validated once, at the public boundary: a public function called from outside checks the finiteness
of its tensors (one reduction per tensor and one host sync for all of them, :func:`check_token_tensors`), and a
trusted caller that validated its inputs already (``Method.loss`` after ``RolloutBatch``, the exact engine) runs
its internals inside :func:`trusted`, where the checks keep only what needs no data — type, dtype, rank, shape —
and make no host sync. Checks of *derived* values (an overflowing FRPO term, an empty row of a sequence-level loss)
go through :func:`require`: evaluated at once outside a :func:`deferring` block, recorded without a sync inside
one and evaluated together when the block ends (the same ``ValueError``, raised there).
"""

from __future__ import annotations

import contextvars
import math
from typing import Callable, Sequence, TypeVar

import torch
from torch import Tensor

_T = TypeVar("_T")
# True inside `trusted()`: tensor values were validated by the caller (shapes and dtypes are still checked)
_TRUSTED: contextvars.ContextVar[bool] = contextvars.ContextVar("rlkl_values_trusted", default=False)
# the collector of `deferring()`, or None
_DEFERRED: contextvars.ContextVar["DeferredChecks | None"] = contextvars.ContextVar("rlkl_deferred", default=None)


class _TrustScope:
    """Context manager setting whether tensor values are trusted (a class: cheaper than a generator context)."""

    __slots__ = ("_value", "_token")

    def __init__(self, value: bool):
        self._value = value

    def __enter__(self) -> None:
        self._token = _TRUSTED.set(self._value)

    def __exit__(self, *exc) -> None:
        _TRUSTED.reset(self._token)


def trusted() -> _TrustScope:
    """Run a block whose tensor values the caller has validated: value checks (finiteness, non-empty masks) are
    skipped, type/dtype/shape checks are kept. For rlkl's own internals (``Method.loss``, the exact engine)."""
    return _TrustScope(True)


def _untrusted() -> _TrustScope:
    return _TrustScope(False)


def values_trusted() -> bool:
    """True inside :func:`trusted`."""
    return _TRUSTED.get()


class DeferredChecks:
    """Value checks recorded as 0-dim bool tensors (no host sync) with the function that raises their error."""

    def __init__(self) -> None:
        self._items: list[tuple[Tensor, Callable[[], None]]] = []

    def add(self, ok: Tensor, fail: Callable[[], None]) -> None:
        self._items.append((ok, fail))

    def __len__(self) -> int:
        return len(self._items)

    def raise_first(self) -> None:
        """One host sync for all recorded checks; on a failure, the error of the first failing one (in order)."""
        if not self._items:
            return
        items, self._items = self._items, []
        ok = items[0][0]
        for more, _ in items[1:]:
            ok = ok & more
        if bool(ok):
            return
        for ok, fail in items:
            if not bool(ok):
                with _untrusted():  # the error's own checks read the values
                    fail()


class deferring:
    """Collect the :func:`require` checks of the block and evaluate them (one host sync) when it ends; ``with
    deferring() as checks`` gives the :class:`DeferredChecks`. An exception raised in the block propagates
    unchanged (the collected checks are dropped)."""

    __slots__ = ("checks", "_token")

    def __enter__(self) -> DeferredChecks:
        self.checks = DeferredChecks()
        self._token = _DEFERRED.set(self.checks)
        return self.checks

    def __exit__(self, exc_type, *exc) -> None:
        _DEFERRED.reset(self._token)
        if exc_type is None:
            self.checks.raise_first()


def require(ok: Tensor, fail: Callable[[], None]) -> None:
    """Check a derived value: ``ok`` a 0-dim bool tensor, ``fail()`` raises the ValueError when it is False.

    Evaluated now (one host sync) unless a :func:`deferring` block is collecting checks."""
    checks = _DEFERRED.get()
    if checks is not None:
        checks.add(ok, fail)
    elif not bool(ok):
        with _untrusted():
            fail()


def _folded(tensors: Sequence[Tensor], mask: Tensor | None, rows: bool, also: Callable[[], Tensor] | None
            ) -> Tensor:
    """0-dim s = (Σ_k Σ x_k) / d, finite when every tensor's entries are finite (an inf or nan entry makes the sum
    inf or nan) and d ≠ 0, with d = max(mask) (``rows``: the min over rows of each row's max) · ``also()`` (a 0-dim
    bool): a failed condition gives d = 0 and a non-finite s. A non-finite s may also mean that a sum of finite
    entries overflowed — callers then run the entry-wise checks, which decide. An empty mask gives nan.

    One number for every value condition of a public call: a few 0-dim ops and one host sync, instead of a
    reduction and a sync per condition (at a small call the checks cost these ops, not the passes over the data)."""
    if mask is not None and mask.numel() == 0:
        return torch.full((), math.nan, device=mask.device)  # an empty mask selects no token; the checks say so
    with torch.no_grad():
        s = None
        for t in tensors:
            s = t.sum() if s is None else s + t.sum()
        if s is None:
            s = torch.ones((), device=mask.device if mask is not None else None)
        if mask is not None:
            m = mask.view(torch.uint8)  # a bool tensor's bytes are 0 / 1
            s = s / (m.amax(-1).amin() if rows else m.amax())
        if also is not None:
            s = s / also()
        return s


def _values_ok(tensors: Sequence[Tensor], mask: Tensor | None = None, rows: bool = False,
               also: Callable[[], Tensor] | None = None) -> bool:
    """One host sync: the conditions of :func:`_folded` hold (False may also mean an overflowing sum)."""
    return math.isfinite(float(_folded(tensors, mask, rows, also)))


SUPPORTED_FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64)


def validated(check: Callable[[], _T], *tensors: Tensor, mask: Tensor | None = None, rows: bool = False,
              also: Callable[[], Tensor] | None = None) -> _T:
    """Run ``check`` — a public function's sequence of ``check_*`` calls — with one host sync for its values.

    ``check`` runs first under :func:`trusted` (type, dtype, shape); then one sync checks that ``tensors`` are
    finite, that ``mask`` selects a token, (``rows``) that every row of ``mask`` does and that the 0-dim bool
    ``also()`` holds (a value condition ``check`` tests itself when not trusted). Any failure re-runs
    ``check`` with its value checks, in its own order, so the error is the one users always got. Inside
    :func:`trusted` no value is read; inside :func:`deferring` the value condition is recorded as the block's
    next deferred check (its failure re-runs ``check``), so the block ends with one sync for the inputs and the
    checks of what it computed. Returns what ``check`` returns."""
    if _TRUSTED.get():
        return check()
    try:
        with trusted():
            out = check()
    except ValueError:
        return check()
    checks = _DEFERRED.get()
    if checks is not None:  # inside deferring(): the values are the block's next deferred check (one sync at its end)
        checks.add(torch.isfinite(_folded(tensors, mask, rows, also)), check)
        return out
    return out if _values_ok(tensors, mask, rows, also) else check()


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
    _require_data(name, x)
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)}")
    if finite and not _TRUSTED.get() and not (_values_ok([x]) or bool(torch.isfinite(x).all())):
        raise ValueError(f"{name} contains non-finite values (nan/inf); check the log-probs upstream")
    return x


def _require_data(name: str, x: Tensor) -> None:
    """Refuse a meta tensor (shape only): every public check of a tensor argument calls this."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (shape only, no data); pass a tensor with values")


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
    _require_data(name, mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    if _TRUSTED.get():
        return mask
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
    """Check ``[B, T]`` float tensors and their mask; return (B, T).

    Structure first (no data read); then, unless :func:`trusted`, one host sync for the finiteness of every
    tensor and the non-emptiness of the mask. Any failure re-runs the checks one by one in argument order, so the
    error is the one of the first bad argument."""
    if _TRUSTED.get():
        return _check_token_tensors(mask, tensors)
    try:
        with trusted():
            shape = _check_token_tensors(mask, tensors)
    except ValueError:
        return _check_token_tensors(mask, tensors)
    if _values_ok(list(tensors.values()), mask):
        return shape
    return _check_token_tensors(mask, tensors)


def _check_token_tensors(mask: Tensor, tensors: dict[str, Tensor]) -> tuple[int, int]:
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
