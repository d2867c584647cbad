"""Shared pytest configuration: hypothesis profiles and torch defaults.

Profiles (select with HYPOTHESIS_PROFILE=dev): ``ci`` (default; derandomized, few examples, no deadline),
``dev`` (more examples, still derandomized so failures reproduce).
"""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=300,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# intra-op threads: 2 at most (the tests' tensors are small), the cores shared among pytest-xdist's workers
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // max(1, _WORKERS))))


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread (tiny tensors: more threads only add overhead), then restore."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
