"""torch's OpenMP threads: how long they spin after a parallel region, set before torch loads.

torch's CPU wheels use GNU OpenMP (libgomp). After each parallel region its worker threads
spin-wait for the next one, by default for 300,000 iterations of a pause loop: on the 2-core
Intel Xeon we measure on (Sapphire Rapids class, where ``pause`` is slow) that is milliseconds,
long enough to take a core from the numba kernels that the bf16 training path runs between
oneDNN's products (:mod:`wavedil.gated_lowp`). With ``GOMP_SPINCOUNT=10000`` bf16 training of
ref30 ran 15-20% faster there (``bench/training.py``, bench/README.md), float32 training and the
fused generation back-end the same, and the eager ``DilatedStack.step`` on two threads within
4% (a count of 2,000 cost that step 12-29%: threads that sleep sooner wake more often).

libgomp reads the variable once, when it is loaded (with torch), so this only acts when
``wavedil`` is imported before torch (the ``wavedil`` command always is) and only when the user
has set neither ``GOMP_SPINCOUNT`` nor ``OMP_WAIT_POLICY``: a value of the user's wins, and
``GOMP_SPINCOUNT=300000`` restores libgomp's default.
"""

from __future__ import annotations

import os
import sys

#: The spin count wavedil sets (libgomp's default is 300,000 iterations).
SPIN_COUNT = "10000"


def shorten_openmp_spin() -> bool:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` if torch is not loaded yet and the user set
    neither it nor ``OMP_WAIT_POLICY``; True when it did."""
    if "torch" in sys.modules or "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return True


shorten_openmp_spin()
