"""The process's heap allocator: let glibc keep freed memory for the exact engine's chunks (no torch import).

Setting glibc's thresholds is a process-wide side effect, so it lives here, once, and says so: the exact engine calls
`retain_freed_memory` before a large enumeration, and ``RLKL_MALLOC_DEFAULTS=1`` keeps glibc's own settings.
"""

from __future__ import annotations

import ctypes
import os
import platform

#: `retain_freed_memory`: freed heap memory glibc keeps before returning it to the OS (M_TRIM_THRESHOLD), and the
#: size from which a block is its own mmap (M_MMAP_THRESHOLD; 32 MiB is glibc's own ceiling on 64-bit systems)
MALLOC_TRIM_THRESHOLD, MALLOC_MMAP_THRESHOLD = 256 << 20, 32 << 20
#: set to ``1`` to keep glibc's allocator settings (`retain_freed_memory` then does nothing)
MALLOC_DEFAULTS_ENV = "RLKL_MALLOC_DEFAULTS"
_malloc_state: dict = {}


def retain_freed_memory() -> bool:
    """Let this process keep up to `MALLOC_TRIM_THRESHOLD` of freed heap memory (glibc only; once per process).

    A chunk of a large enumeration allocates a few MiB of temporaries per op and frees them at its end; glibc returns
    the top of its heap to the OS beyond a trim threshold (by default 128 KiB, raised as large blocks are freed) and
    gives each block above its mmap threshold its own mapping, so the next chunk faults the same pages in again:
    measured 2,500–12,700 minor faults (10–50 MB) per ``grpo`` N = 10^5 evaluation, 83–102 ms at 1 thread instead
    of ~75 without them, and up to 6,500 on ``rpg_urkl_seq`` N = 10^6 (`rlkl bench exact_engine`'s cases, torch
    2.13). This sets ``mallopt(M_TRIM_THRESHOLD, 256 MiB)`` and ``mallopt(M_MMAP_THRESHOLD, 32 MiB)`` — what
    glibc's ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_`` environment variables set at start-up — so the
    pages are reused. The process's resident memory may then stay up to 256 MiB above what it uses. Called by the
    exact engine before a large enumeration (`rlkl.toy.mdp.SMALL_PROBLEM_SLOTS`); ``RLKL_MALLOC_DEFAULTS=1`` keeps
    glibc's settings.

    Returns True when the settings are in effect (set now or earlier), False elsewhere (another C library, the
    opt-out, or mallopt refused them)."""
    if "set" in _malloc_state:
        return _malloc_state["set"]
    ok = False
    if os.environ.get(MALLOC_DEFAULTS_ENV, "") != "1":
        try:
            if platform.libc_ver()[0] == "glibc":
                mallopt = ctypes.CDLL(None).mallopt
                mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                # M_TRIM_THRESHOLD = −1, M_MMAP_THRESHOLD = −3 (malloc.h); mallopt returns 1 on success
                ok = mallopt(-1, MALLOC_TRIM_THRESHOLD) == 1 and mallopt(-3, MALLOC_MMAP_THRESHOLD) == 1
        except (OSError, AttributeError, ValueError):
            ok = False
    _malloc_state["set"] = ok
    return ok
