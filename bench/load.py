"""Load: peak memory of the real ``wavedil generate`` and ``wavedil eval`` CLIs; prints JSON.

Each case runs ``python -m wavedil ...`` in its own subprocess and reads that child's peak
resident set size from ``os.wait4`` (``ru_maxrss``: the child and any processes it waited for),
with its wall time. Cases, all in one temporary folder:

* ``import``: ``python -c "import torch, wavedil.cli"``, the floor every CLI run pays (the other
  cases also report ``over_import_mib``, their peak above it);
* ``generate_b1`` / ``generate_b256``: ``wavedil generate --batch 1`` / ``--batch 256`` of a small
  random-weight model (``--model``, default ``tiny``) saved as a checkpoint at 8 kHz, writing
  ``--gen-seconds`` per sequence (256 files for the large batch);
* ``eval_small`` / ``eval_all``: ``wavedil eval`` over a tenth of the files and over all
  ``--files`` short files (``--file-seconds`` each, 8 kHz 16-bit WAV). Memory that grows with
  the number of files shows as a gap between the two; ``marginal_ms_per_file`` is the wall time
  per extra file, start-up excluded.

Usage::

    python bench/load.py               # 10,000 files: about 2 minutes on 2 busy cores
    python bench/load.py --quick       # 200 files, batch 16: a smoke test (about 40 s)
    python bench/load.py --threads 2   # torch threads of the CLI runs (default 1)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_model  # noqa: E402
from wavedil import WaveNet  # noqa: E402
from wavedil.config import model_preset  # noqa: E402

SR = 8000


# A small launcher reports its child's rusage. Measured straight from this process (which has
# imported torch), a child's ru_maxrss would start at this process's size: Linux carries the
# peak of the forking process's memory over to the child at exec.
_LAUNCHER = (
    "import json, os, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.Popen(sys.argv[1:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "print(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_maxrss, time.perf_counter() - t]))"
)


def measure(name: str, argv: list[str], cwd: Path, threads: int) -> dict:
    """Run ``argv`` as a child; its exit status, wall time, peak RSS (MiB) and output tail."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryFile("w+") as out:
        launcher = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                  stderr=out, text=True, check=True)  # fmt: skip
        out.seek(0)
        tail = out.read().strip().splitlines()[-3:]
    lines = launcher.stdout.strip().splitlines()
    rc, maxrss_kib, wall = json.loads(lines[-1])
    result = {
        "case": name,
        "rc": rc,
        "peak_rss_mib": round(maxrss_kib / 1024, 1),  # Linux reports KiB
        "wall_s": round(wall, 2),
        "output_tail": lines[-7:-1] + tail,  # the end of stdout (eval: its whole table), then of stderr
    }
    print(f"{name}: rc {rc}, peak RSS {result['peak_rss_mib']} MiB, {result['wall_s']} s", file=sys.stderr)
    return result


def save_model(path: Path, model_name: str) -> int:
    """A random-weight checkpoint of ``conf/model/<model_name>.yaml`` at 8 kHz; its parameter count."""
    torch.manual_seed(0)
    model = WaveNet(model_preset(model_name))
    torch.save({"model": model.state_dict(), "model_config": model.config.to_dict(), "ema": None,
                "sample_rate": SR, "step": 0}, path)  # fmt: skip
    return model.num_parameters()


def write_files(folder: Path, n: int, seconds: float) -> None:
    """``n`` short 16-bit WAVs of tones and noise, 100 per sub-folder."""
    rng = np.random.default_rng(0)
    frames = max(2, int(seconds * SR))
    t = np.arange(frames) / SR
    for i in range(n):
        sub = folder / f"d{i // 100:04d}"
        if i % 100 == 0:
            sub.mkdir(parents=True)
        x = 0.4 * np.sin(2 * np.pi * (100 + i % 700) * t) + 0.05 * rng.standard_normal(frames)
        sf.write(sub / f"f{i:05d}.wav", x.astype(np.float32), SR, subtype="PCM_16")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10_000, help="short files for eval")
    ap.add_argument("--file-seconds", type=float, default=0.05, help="length of each file")
    ap.add_argument("--batch", type=int, default=256, help="generate batch size")
    ap.add_argument("--gen-seconds", type=float, default=0.05, help="seconds generated per sequence")
    ap.add_argument("--model", default="tiny", help="model config of the checkpoint (conf/model/*.yaml)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the CLI runs")
    ap.add_argument("--quick", action="store_true", help="200 files, batch 16: a smoke test, not a measurement")
    args = ap.parse_args(argv)
    if args.quick:
        args.files, args.batch = min(args.files, 200), min(args.batch, 16)
    if args.files < 10 or args.batch < 1 or not args.file_seconds > 0 or not args.gen_seconds > 0:
        ap.error("--files must be >= 10, --batch >= 1, and the durations positive")

    load_before = os.getloadavg()
    py = [sys.executable]
    cases = []
    with tempfile.TemporaryDirectory(prefix="wavedil-load-") as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "model.pt"
        params = save_model(ckpt, args.model)
        start = time.perf_counter()
        write_files(tmp / "corpus", args.files, args.file_seconds)
        write_s = time.perf_counter() - start
        small = tmp / "small"  # a tenth of the files (whole sub-folders), the same ones
        small.mkdir()
        for d in sorted((tmp / "corpus").iterdir())[: max(1, args.files // 1000)]:
            os.symlink(d, small / d.name)
        n_small = sum(len(os.listdir(d)) for d in small.iterdir())

        cases.append(measure("import", py + ["-c", "import torch, wavedil.cli"], tmp, args.threads))
        gen = py + ["-m", "wavedil", "generate", str(ckpt), "--seconds", str(args.gen_seconds), "--seed", "0",
                    "--quiet", "--device", "cpu"]  # fmt: skip
        cases.append(measure("generate_b1", gen + ["-o", str(tmp / "g1" / "x.wav"), "--batch", "1"], tmp, args.threads))
        cases.append(measure(f"generate_b{args.batch}", gen + ["-o", str(tmp / "gb" / "x.wav"), "--batch",
                                                               str(args.batch)], tmp, args.threads))  # fmt: skip
        written = list((tmp / "gb").glob("x*.wav"))
        cases[-1]["files_written"] = len(written)
        peak = max(float(np.abs(sf.read(p)[0]).max()) for p in written) if written else None
        cases[-1]["max_abs_sample"] = peak
        for name, folder, n in (("eval_small", small, n_small), ("eval_all", tmp / "corpus", args.files)):
            res = measure(name, py + ["-m", "wavedil", "eval", str(ckpt), str(folder)], tmp, args.threads)
            res["files"] = n
            res["ms_per_file"] = round(1000 * res["wall_s"] / n, 2)
            cases.append(res)

    floor = cases[0]["peak_rss_mib"]
    for c in cases[1:]:
        c["over_import_mib"] = round(c["peak_rss_mib"] - floor, 1)
    small_case, all_case = cases[-2], cases[-1]
    if all_case["files"] > small_case["files"]:  # per extra file, start-up cost excluded
        all_case["marginal_ms_per_file"] = round(
            1000 * (all_case["wall_s"] - small_case["wall_s"]) / (all_case["files"] - small_case["files"]), 2
        )
    report = {
        "machine": {
            "cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads,
            "python": platform.python_version(), "torch": torch.__version__,
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "setup": {
            "model": args.model, "parameters": params, "sample_rate": SR, "files": args.files,
            "file_seconds": args.file_seconds, "gen_seconds": args.gen_seconds, "batch": args.batch,
            "write_files_s": round(write_s, 1),
        },
        "cases": cases,
    }
    print(json.dumps(report, indent=2))
    if any(c["rc"] != 0 for c in cases):
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
