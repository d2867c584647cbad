"""rlkl.testing: check in your own test suite that a loss optimizes the objective you claim.

    from rlkl.objective import Objective
    from rlkl.testing import assert_optimizes, assert_conforms, from_verl

    def test_my_loss_optimizes_expected_reward():
        assert_optimizes(my_loss, Objective("expected_reward", "none"))     # exact, on random small trees

    def test_my_loss_is_grpo():
        assert_conforms(my_loss, "grpo")                                     # loss and gradient, garbage padding

* `assert_optimizes` — the exact expected gradient (every response of small trees enumerated, float64) against
  −c·∇J; a failure names the bias in words (the registered Method your loss reproduces and its audit terms).
* `assert_conforms` — loss value and gradient equal a `Method`'s on seeded ragged batches with garbage padding.
* Adapters for other signatures: `from_verl`, `from_trl`, `from_polgrad` (`from_rlkl` for rlkl's own).
* Hypothesis strategies: `rlkl.testing.strategies` (needs hypothesis). A pytest plugin (`rlkl.testing.plugin`,
  loaded automatically once rlkl is installed) adds fixtures and ``--rlkl-*`` options; see docs/testing.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The names below load on first use (PEP 562): the pytest plugin (`rlkl.testing.plugin`) is imported by every pytest
# session of an environment that has rlkl installed, and importing it must not import torch (measured: `import
# rlkl.testing.plugin` took 2.05 s when this package imported its submodules eagerly)
_WHERE = {
    "rlkl.testing.adapters": ("LossAdapter", "VerlActorConfig", "as_rlkl_loss", "from_polgrad", "from_rlkl", "from_trl",
                              "from_verl"),
    "rlkl.testing.asserts": ("ConformsReport", "OptimizesReport", "assert_conforms", "assert_optimizes",
                             "check_optimizes", "default_trees"),
    "rlkl.testing.batches": ("GarbageBatch", "conformance_batches"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

if TYPE_CHECKING:  # static tools see the eager imports
    from rlkl.testing.adapters import (LossAdapter, VerlActorConfig, as_rlkl_loss, from_polgrad, from_rlkl,
                                       from_trl, from_verl)
    from rlkl.testing.asserts import (ConformsReport, OptimizesReport, assert_conforms, assert_optimizes,
                                      check_optimizes, default_trees)
    from rlkl.testing.batches import GarbageBatch, conformance_batches

__all__ = ["assert_optimizes", "assert_conforms", "check_optimizes", "OptimizesReport", "ConformsReport",
           "default_trees", "from_rlkl", "from_verl", "from_trl", "from_polgrad", "VerlActorConfig", "LossAdapter",
           "as_rlkl_loss", "GarbageBatch", "conformance_batches"]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'rlkl.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
