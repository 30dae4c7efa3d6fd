"""Every ``bench/*.py`` script runs with ``--quick`` and prints its figures as JSON.

A smoke test, not a measurement: it keeps the benchmarks runnable as the library changes. The
scripts are found by glob (helpers named ``_*.py`` excepted), so a new one is covered without
touching this file, and one without a working ``--quick`` fails here. Each runs in its own
subprocess from a temporary folder (nothing is written into the repository). Together they
take minutes on a small machine, hence ``slow`` (still run in CI).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (REPO / "bench").glob("*.py") if not p.name.startswith("_"))


def json_documents(text: str) -> list:
    """The JSON values printed in ``text``: each one starts a line with ``{`` or ``[``."""
    decoder = json.JSONDecoder()
    docs, pos = [], 0
    lines = text.splitlines(keepends=True)
    for line in lines:
        if line.startswith(("{", "[")):
            try:
                docs.append(decoder.raw_decode(text, pos)[0])
            except json.JSONDecodeError:
                pass
        pos += len(line)
    return docs


def numbers(value) -> list[float]:
    """Every int or float in a JSON value (bools excepted), depth first."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers(v)]
    return []


def test_the_benchmarks_are_found():
    assert {"generation.py", "load.py", "training.py"} <= {p.name for p in SCRIPTS}


def test_json_documents_reads_indented_and_one_line_json():
    text = 'warming up\n{"a": 1,\n  "b": [2.5, true]}\nbye\n[3]\n'
    assert json_documents(text) == [{"a": 1, "b": [2.5, True]}, [3]]
    assert numbers(json_documents(text)) == [1.0, 2.5, 3.0]


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_script_quick_prints_json_figures(script: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(script), "--quick"], cwd=tmp_path, capture_output=True, text=True, timeout=1200,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    tail = f"\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{script.name} --quick exited with {proc.returncode}{tail}"
    docs = json_documents(proc.stdout)
    assert docs, f"{script.name} --quick printed no JSON{tail}"
    figures = numbers(docs)
    assert any(math.isfinite(x) for x in figures), f"{script.name}: no finite figures in {docs}"
