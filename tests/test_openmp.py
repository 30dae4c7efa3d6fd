"""wavedil shortens torch's OpenMP spin-waits only when it loads first and the user set nothing."""

import os
import subprocess
import sys

import pytest

from wavedil._openmp import SPIN_COUNT

SHOW = "import os; print(os.environ.get('GOMP_SPINCOUNT'))"


def _run(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                         check=True, timeout=120)
    return out.stdout.strip()


@pytest.mark.parametrize(
    ("code", "env", "expected"),
    [
        (f"import wavedil; {SHOW}", {}, SPIN_COUNT),  # the `wavedil` command's case
        (f"import wavedil.cli; {SHOW}", {}, SPIN_COUNT),
        (f"import torch, wavedil; {SHOW}", {}, "None"),  # too late: libgomp already read its setting
        (f"import wavedil; {SHOW}", {"GOMP_SPINCOUNT": "300000"}, "300000"),  # the user's value wins
        (f"import wavedil; {SHOW}", {"OMP_WAIT_POLICY": "PASSIVE"}, "None"),
    ],
)
def test_spin_count_is_set_only_before_torch_and_never_over_the_user(code, env, expected):
    assert _run(code, **env) == expected
