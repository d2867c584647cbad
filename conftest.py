"""Shared pytest configuration: hypothesis profiles and torch defaults.

Profiles (select with HYPOTHESIS_PROFILE=dev): ``ci`` (default; derandomized, few examples, no deadline),
``dev`` (more examples, still derandomized so failures reproduce).
"""

import os

import pytest
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


@pytest.fixture(scope="session", autouse=True)
def _share_the_cores():
    """Intra-op threads: 2 at most (the tests' tensors are small), the cores shared among pytest-xdist's workers.

    A session fixture, so it runs where tests run (each worker, or the one process of ``-n 0``), never in xdist's
    controller: that process then imports neither torch nor rlkl's engine, and the environment it hands the workers
    is the user's. The processes the tests start (the CLI, the example scripts, a user's pytest run) share the cores
    the same way through OMP_NUM_THREADS (a value set by the user wins): with the other worker busy, a child's second
    OpenMP thread only spins (measured: `rlkl figures --quick` beside a busy core, 42.2 s wall with torch's default
    2 threads, 35.4 s with 1).
    """
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    threads = max(1, min(2, (os.cpu_count() or 1) // max(1, workers)))
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    yield


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread (tiny tensors: more threads only add overhead), then restore."""
    import torch

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


# The longest test modules first: with `--dist loadscope --no-loadscope-reorder` (pyproject addopts) pytest-xdist
# hands out modules in collection order, one at a time as a worker runs dry; a long module handed out late leaves one
# worker running alone at the end (xdist's own reordering puts the modules with the most tests first: the ~30 s figures
# module, 8 tests, came near the end). Seconds on 2 cores, from `pytest --durations=0` summed per module: figures ~34
# (the `figures --quick` fixture), examples ~11, testing_plugin ~9, cli_errors ~8, lm_runs ~8, docs ~8, derivations ~7,
# fuzz_public ~5, toy_audit ~4; every other module under 3. Within a module the order is unchanged.
_LONGEST_FIRST = ("tests/test_figures.py", "tests/test_examples.py", "tests/test_testing_plugin.py",
                  "tests/test_cli_errors.py", "tests/test_lm_runs.py", "tests/test_docs.py",
                  "derivations/test_all_derivations.py", "tests/test_fuzz_public.py", "tests/test_toy_audit.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
