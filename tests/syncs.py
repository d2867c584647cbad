"""A host-sync counter for tests (tests/test_host_syncs.py, the verl and TRL plug-in tests): the aten ops that hand
a value, or a data-dependent shape, to the host — each a device → host sync on an accelerator."""

from __future__ import annotations

import collections

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops whose result is a host value or has a data-dependent shape (a device → host sync on an accelerator)
_SYNC_OPS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
             "aten.equal.default", "aten.is_nonzero.default", "aten._unique2.default", "aten.unique_dim.default",
             "aten.unique_consecutive.default", "aten.repeat_interleave.Tensor"}


# Tensor methods that copy to the host without an aten op of their own (on a CPU tensor no op is dispatched at all)
_COPY_METHODS = {"tolist", "numpy", "cpu"}


class _Ops(TorchDispatchMode):
    def __init__(self, count: collections.Counter):
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        # x[mask]: an index op with a bool index tensor (a nonzero inside the kernel, not dispatched on its own)
        bool_index = name.startswith("aten.index") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for a in args if isinstance(a, (list, tuple)) for i in a)
        if name in _SYNC_OPS or bool_index:
            self.count[name] += 1
        return func(*args, **(kwargs or {}))


class _Methods(TorchFunctionMode):
    def __init__(self, count: collections.Counter):
        super().__init__()
        self.count = count

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _COPY_METHODS:
            self.count[f"Tensor.{name}"] += 1
        return func(*args, **(kwargs or {}))


class HostSyncs:
    """Counts the host syncs run inside it (``count``: op or method → calls; ``total``): the aten ops above, seen
    in forward and backward alike, and ``Tensor.tolist`` / ``numpy`` / ``cpu``, seen where Python calls them."""

    def __init__(self):
        self.count = collections.Counter()
        self._modes = (_Methods(self.count), _Ops(self.count))

    def __enter__(self) -> "HostSyncs":
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.count.values())
