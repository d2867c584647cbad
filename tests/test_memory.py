"""rlkl._memory: the glibc allocator setting the exact engine makes before a large enumeration."""

import os
import platform
import subprocess
import sys

import pytest

from rlkl import _memory

# no torch in the child: 20 blocks of 2 MiB, every byte written (a repetition fills them), then freed, four times
_FAULTS_SCRIPT = """
import resource
from rlkl._memory import retain_freed_memory
print(retain_freed_memory(), retain_freed_memory())
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [bytearray(b"\\x01") * (2 << 20) for _ in range(20)]
    del blocks
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_retain_freed_memory_keeps_freed_pages():
    # in a fresh process: once set, the fourth round of 40 MiB of temporaries faults nothing in (glibc's defaults
    # fault ~10,000 pages = 40 MiB / 4 KiB again in most runs, but not all: whether its trim fires depends on what
    # else sits at the top of the heap, so that side is not asserted)
    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, check=True,
                         env={**os.environ, "RLKL_MALLOC_DEFAULTS": "0"}).stdout.split()
    assert out[:2] == ["True", "True"] and int(out[2]) < 1000, out


def test_retain_freed_memory_sets_two_glibc_thresholds_once_unless_opted_out(monkeypatch):
    calls = []

    class FakeLibc:
        def __init__(self, name):
            self.mallopt = self

        def __call__(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(_memory.ctypes, "CDLL", FakeLibc)
    monkeypatch.setattr(_memory.platform, "libc_ver", lambda: ("glibc", "2.35"))
    monkeypatch.setattr(_memory, "_malloc_state", {})
    monkeypatch.setenv("RLKL_MALLOC_DEFAULTS", "1")
    assert _memory.retain_freed_memory() is False and calls == []  # opted out: nothing called
    monkeypatch.setattr(_memory, "_malloc_state", {})
    monkeypatch.delenv("RLKL_MALLOC_DEFAULTS")
    assert _memory.retain_freed_memory() is True and _memory.retain_freed_memory() is True
    # M_TRIM_THRESHOLD = −1 → 256 MiB, M_MMAP_THRESHOLD = −3 → 32 MiB (malloc.h), each set once
    assert calls == [(-1, 256 * 2**20), (-3, 32 * 2**20)]
    monkeypatch.setattr(_memory, "_malloc_state", {})
    monkeypatch.setattr(_memory.platform, "libc_ver", lambda: ("musl", ""))
    assert _memory.retain_freed_memory() is False and len(calls) == 2  # another C library: left alone
