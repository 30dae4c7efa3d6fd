"""glibc's malloc for training: keep freed memory instead of handing it back to the OS every step.

A training step on the CPU allocates and frees the same large activations every step (ref30 at
B = 4, T = 16,000: tensors of tens of MB). glibc serves blocks above its mmap threshold (at most
32 MB, and raised only by frees of mmapped blocks) with ``mmap`` and returns them with
``munmap``, and trims the heap's free top above 128 KB: the next step takes the pages back
through page faults, and the kernel zeroes each one. In a profile of bf16 training of ref30 on
the 2-core Intel Xeon (``perf``, ``bench/training.py``) the kernel's page zeroing
(``clear_page_erms``) took 22% of the samples. With mmap off and trimming off (the freed memory
stays in malloc's heap for the next step) bf16 training ran 16-36% faster there and float32 up
to 27% (bench/README.md), at about the same peak RSS as glibc's default (a step's peak does not
change, only whether the memory is returned between steps).

:func:`keep_freed_memory` sets that with ``mallopt`` (``M_MMAP_MAX`` 0, ``M_TRIM_THRESHOLD``
-1) for the rest of the process. The ``wavedil train`` command calls it; a library user's own
loop can. It does nothing off glibc (macOS, Windows, musl), with ``WAVEDIL_MALLOC=glibc`` (glibc's
own behaviour, which also adapts its mmap threshold as blocks are freed), or when the user chose
for themselves: any of ``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TOP_PAD_``, ``GLIBC_TUNABLES`` set, or another allocator preloaded (``LD_PRELOAD``,
e.g. jemalloc or tcmalloc).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["USER_SETTINGS", "keep_freed_memory"]

#: Environment variables by which a user sets glibc's malloc (or replaces it) themselves.
USER_SETTINGS = (
    "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES",
    "LD_PRELOAD",
)  # fmt: skip

_M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
_M_MMAP_MAX = -4

_done = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (no ``mmap`` blocks, no trimming) for the
    rest of this process, unless the user configured malloc themselves or this is not glibc.

    Returns True when the settings are in force (now or from an earlier call).
    """
    global _done
    choice = os.environ.get("WAVEDIL_MALLOC", "keep")
    if choice not in ("keep", "glibc"):
        raise ValueError(f"WAVEDIL_MALLOC must be 'keep' or 'glibc' (leave glibc's malloc as it is), got {choice!r}")
    if _done:
        return True
    if choice == "glibc" or platform.system() != "Linux" or any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; -1 as the trim threshold turns trimming off
    _done = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1
    return _done
