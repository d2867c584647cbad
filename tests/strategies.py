"""The test suite's hypothesis strategies: they live in :mod:`rlkl.testing.strategies` (public, for users' tests)."""

from rlkl.testing.strategies import *  # noqa: F401,F403
from rlkl.testing.strategies import __all__  # noqa: F401
