"""Where a reduced weight mode's likelihood cost comes from: each group of matrices rounded alone.

For a trained model and held-out audio, prints one JSON object: the model's teacher-forced
bits/sample in float32, then for each group of matrices of the per-sample loop (the dilated
convs, the residual and skip 1x1s, the head's two matrices; optionally each layer) the bits/sample
it costs when only that group is rounded to a format (``int8``'s codes: symmetric, one scale per
output channel; or ``bf16``), everything else float32, through the model's own forward. Beside
them, what each weight mode of the ``fast`` back-end costs as it runs (its kernels, teacher-forced).
``wavedil.fast.pack.INT8_KEEPS_BF16`` was chosen with this (``bench/README.md``).

    python bench/quantization.py                                   # pretrained:speech8k, its held-out files
    python bench/quantization.py RUN /path/to/corpus --layers      # a run of yours, per layer too
    python bench/quantization.py --quick                           # a smoke run on the bundled speech
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from wavedil.checkpoint import model_from_checkpoint
from wavedil.data import split_items
from wavedil.evaluate import evaluate_codes, gather_items, model_inputs, run_valid_fraction
from wavedil.fast.pack import dequantize, quantize
from wavedil.model import WaveNet
from wavedil.pretrained import open_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_flags, cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")  # recipes/asterisk_full/prepare.sh


def rounded(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """``w (out, ...)`` with each output channel's weights rounded as ``fmt`` stores them
    (:func:`wavedil.fast.pack.quantize`: a matrix ``(in, out)`` with one scale per column)."""
    m = w.detach().reshape(w.shape[0], -1).t().float().numpy()  # (in, out)
    back = dequantize(*quantize(m, fmt))
    return torch.from_numpy(np.ascontiguousarray(back.T)).reshape(w.shape).to(w.dtype)


def group_weights(model: WaveNet, group: str, layer: int | None = None) -> list[tuple[torch.Tensor, slice]]:
    """The weight tensors (and their output-channel rows) of ``group``: ``conv``, ``res``, ``skip``
    (of every layer, or of ``layer``), ``h1``, ``h2``; or ``layer`` (its conv, res and skip)."""
    R = model.stack.residual_channels
    layers = list(model.stack.layers) if layer is None else [model.stack.layers[layer]]
    every = slice(None)
    if group == "h1":
        return [(model.head[1].weight, every)]
    if group == "h2":
        return [(model.head[3].weight, every)]
    parts = {"conv": lambda ly: [(ly.conv.weight, every)], "res": lambda ly: [(ly.out.weight, slice(0, R))],
             "skip": lambda ly: [(ly.out.weight, slice(R, None))]}  # fmt: skip
    parts["layer"] = lambda ly: parts["conv"](ly) + parts["res"](ly) + parts["skip"](ly)
    return [t for ly in layers for t in parts[group](ly)]


def with_rounded(model: WaveNet, group: str, fmt: str, layer: int | None = None) -> WaveNet:
    """A copy of ``model`` with ``group``'s weights rounded to ``fmt``, the rest as they are."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for w, rows in group_weights(twin, group, layer):
            w[rows] = rounded(w[rows], fmt)
    return twin.eval()


def held_out_files(checkpoint: str, audio: list[str], split: str, max_seconds: float | None):
    """The model and ``(name, codes (T,), cond)`` of the files ``wavedil eval --split`` reads."""
    src = open_model(checkpoint)
    ckpt = src.checkpoint
    model = model_from_checkpoint(ckpt, use_ema=True).eval()
    if model.speaker is not None:
        raise ValueError("bench/quantization.py evaluates unconditioned models and vocoders, not speaker models")
    items = gather_items(audio)
    if split != "all":
        train, valid = split_items(items, valid_fraction=run_valid_fraction(ckpt))
        items = valid if split == "valid" else train
    return model, list(model_inputs(model, items, int(ckpt.get("sample_rate", 16000)), max_seconds))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="pretrained:speech8k",
                    help="a run folder, checkpoint or pretrained:NAME")  # fmt: skip
    ap.add_argument("audio", nargs="*", help=f"audio files / corpus folders (default {CORPUS}, else data/speech8k)")
    ap.add_argument("--split", default="valid", choices=("valid", "train", "all"))
    ap.add_argument("--formats", default="int8", help="comma-separated formats to round groups to (int8, bf16)")
    ap.add_argument("--layers", action="store_true", help="also each layer alone (its conv, res and skip)")
    ap.add_argument("--max-seconds", type=float, default=None, help="read at most this much of each file")
    ap.add_argument("--quick", action="store_true", help="a smoke run: the bundled speech, 1 s of each file")
    args = ap.parse_args(argv)
    audio = args.audio or [str(CORPUS if CORPUS.is_dir() and not args.quick else REPO / "data" / "speech8k")]
    if args.quick:
        args.max_seconds = 1.0
    formats = args.formats.split(",")
    for fmt in formats:
        if fmt not in ("int8", "bf16"):
            raise ValueError(f"--formats: each one int8 or bf16, got {fmt!r}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
    model, files = held_out_files(args.model, audio, args.split, args.max_seconds)

    def bits(m: WaveNet, weights: str = "fp32") -> float:
        return evaluate_codes(m, files, chunk=1 << 20, weights=weights).model_bits

    t0 = time.perf_counter()
    base = bits(model)
    out: dict = {
        "benchmark": "quantization",
        "model": args.model,
        "audio": audio,
        "split": args.split,
        "files": len(files),
        "samples": int(sum(len(c) for _, c, _ in files)),
        "fp32_bits_per_sample": round(base, 5),
        "modes_over_fp32": {w: round(bits(model, w) - base, 5) for w in ("bf16", "int8")},
        "groups_over_fp32": {},
    }
    groups = ["conv", "res", "skip", "h1", "h2"]
    for fmt in formats:
        res = {g: round(bits(with_rounded(model, g, fmt)) - base, 5) for g in groups}
        if args.layers:
            res["per_layer"] = [round(bits(with_rounded(model, "layer", fmt, i)) - base, 5)
                                for i in range(len(model.stack.layers))]  # fmt: skip
        out["groups_over_fp32"][fmt] = res
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["machine"] = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "torch": torch.__version__}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
