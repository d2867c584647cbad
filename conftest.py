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


@pytest.fixture(scope="session")
def ref_path(tmp_path_factory):
    """A small noisy-SFT reference on 1-digit addition (a few seconds on one core), shared by the LM tests; a
    module that needs another reference defines its own ``ref_path`` (test_lm_runs.py, test_lm_train_methods.py)."""
    from rlkl.lm.sft import SFTConfig, train_sft

    out = tmp_path_factory.mktemp("ref")
    cfg = SFTConfig(task="addition", difficulty=1, n_layer=1, n_head=2, d_model=32, steps=300, batch_size=64, lr=1e-2,
                    warmup_steps=10, noise_rate=0.3, eval_prompts=6, eval_samples=4, eval_every=300, num_threads=1)
    train_sft(cfg, out, progress=False)
    return str(out / "reference.pt")
