"""wavedil._malloc: glibc keeps a training step's freed blocks (checked in fresh processes)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc"
)

_PROBE = """
import ctypes, json
import numpy as np
from wavedil._malloc import keep_freed_memory

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
kept = keep_freed_memory()
before = libc.mallinfo2()
block = np.ones(64 * 2**20 // 8)  # 64 MB: above glibc's largest mmap threshold (32 MB)
held = libc.mallinfo2()
del block
freed = libc.mallinfo2()
print(json.dumps({"kept": kept, "mmapped_while_held": held.hblkhd - before.hblkhd, "heap_after_free": freed.arena}))
"""


def _probe(**env: str) -> dict:
    import json

    ours = ("GLIBC_TUNABLES", "LD_PRELOAD")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ours}
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_large_blocks_come_from_the_heap_and_stay_there():
    got = _probe()
    assert got["kept"] is True
    assert got["mmapped_while_held"] == 0  # no new mmap block
    assert got["heap_after_free"] >= 64 * 2**20  # freed, but not trimmed from the heap


def test_a_users_own_malloc_setting_wins():
    got = _probe(MALLOC_TOP_PAD_="131072")
    assert got["kept"] is False
    assert got["mmapped_while_held"] >= 64 * 2**20  # glibc's default: a new mmap block


def test_wavedil_malloc_glibc_leaves_glibc_alone_and_a_bad_value_is_named():
    got = _probe(WAVEDIL_MALLOC="glibc")
    assert got["kept"] is False
    assert got["mmapped_while_held"] >= 64 * 2**20
    from wavedil import _malloc

    os.environ["WAVEDIL_MALLOC"] = "fast"
    try:
        with pytest.raises(ValueError, match="WAVEDIL_MALLOC must be 'keep' or 'glibc'.*'fast'"):
            _malloc.keep_freed_memory()
    finally:
        del os.environ["WAVEDIL_MALLOC"]
