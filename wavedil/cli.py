"""``wavedil train | generate | vocode | eval | info``: a thin layer over library functions.

The CLI parses, checks and reports; the work lives in :mod:`wavedil.train`,
:mod:`wavedil.generate` and :mod:`wavedil.evaluate`. User errors print one paragraph and exit
with status 2; ``--debug`` (or ``HYDRA_FULL_ERROR=1``) shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main"]

EXIT_USER_ERROR = 2


def _fail(msg: str) -> "SystemExit":
    print(f"error: {msg}", file=sys.stderr)
    return SystemExit(EXIT_USER_ERROR)


def _debug_wanted(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"


# ----------------------------------------------------------------------------- train (Hydra)


def _train(overrides: list[str]) -> None:
    """Run ``wavedil train`` through ``hydra.main`` so overrides, ``-m`` sweeps and run folders work."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from .config import CONF_DIR

    debug = "debug=true" in overrides or os.environ.get("HYDRA_FULL_ERROR") == "1"

    @hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
    def _run(cfg) -> float:
        from .train import train

        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            summary = train(cfg, run_dir)
        except (ValueError, OSError) as exc:
            if debug or cfg.get("debug", False):
                raise
            raise _fail(exc) from None
        if os.environ.get("RANK", "0") == "0":
            print(json.dumps(summary))
        return summary["valid_bits"]

    if os.environ.get("RANK", "0") != "0":
        # torchrun's other ranks: rank 0 owns the run folder (train() broadcasts it) and the logs.
        overrides = overrides + ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    sys.argv = ["wavedil train"] + overrides
    _run()


# ----------------------------------------------------------------------------- generate


def _check_writable(path: Path) -> None:
    """Fail before any work if ``path`` cannot be written (tries a real temporary file)."""
    import tempfile

    if path.is_dir():
        raise ValueError(f"output path '{path}' is a directory: give a file name such as {path / 'out.wav'}")
    if path.suffix.lower() not in (".wav", ".flac", ".ogg"):
        raise ValueError(f"output file '{path}' must end in .wav, .flac or .ogg")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".wavedil-write-check-"):
            pass
    except OSError as exc:
        raise ValueError(
            f"cannot create the output folder '{parent}' or write in it ({exc.strerror or exc}): choose another -o path"
        ) from None


def _load_checkpoint_arg(target: str):
    """A checkpoint file, or a run folder / checkpoints folder (its newest good checkpoint)."""
    from .checkpoint import CheckpointError, load_checkpoint, newest_good_checkpoint

    path = Path(target)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = newest_good_checkpoint(folder)
        if found is None:
            raise CheckpointError(f"no usable step_*.pt checkpoint in '{folder}': train first, or give a .pt file")
        return found[1]
    return load_checkpoint(path)


def _numbered(path: Path, i: int, n: int) -> Path:
    return path if n == 1 else path.with_name(f"{path.stem}_{i:0{max(3, len(str(n - 1)))}d}{path.suffix}")


def _resolve_speaker(model, value: str | None) -> int | None:
    """``--speaker`` (a name from the training corpus, or an index) -> the class index, or None."""
    names = model.config.speakers
    n = model.config.global_cond_classes
    if model.speaker is None:
        if value is not None:
            raise ValueError(f"--speaker {value}: this model is not speaker-conditioned; leave --speaker out")
        return None
    valid = ", ".join(names) if names else f"0..{n - 1}"
    if value is None:
        raise ValueError(f"this model was trained on {n} speakers: pass --speaker with one of {valid}")
    if names and value in names:
        return names.index(value)
    if value.isdigit() and int(value) < n:
        return int(value)
    raise ValueError(f"unknown speaker {value!r}; this model knows {n}: {valid}")


def _generate(args: argparse.Namespace) -> None:
    import torch
    from tqdm import tqdm

    from .audio import decode, encode, read_audio, write_audio
    from .checkpoint import model_from_checkpoint
    from .generate import MAX_SAMPLES, MAX_TOTAL_SAMPLES, generate

    out = Path(args.output)
    _check_writable(out)
    if not (0 < args.seconds < float("inf")):
        raise ValueError(f"--seconds must be a positive finite number, got {args.seconds}")
    if args.batch < 1 or args.batch > 4096:
        raise ValueError(f"--batch must be in [1, 4096], got {args.batch}")
    ckpt = _load_checkpoint_arg(args.checkpoint)
    sr = int(ckpt.get("sample_rate", 16000))
    n = int(round(args.seconds * sr))
    if n > MAX_SAMPLES:
        raise ValueError(f"--seconds {args.seconds} is {n:,} samples at {sr} Hz; the limit is {MAX_SAMPLES:,}")
    if n * args.batch > MAX_TOTAL_SAMPLES:
        raise ValueError(
            f"--seconds {args.seconds} x --batch {args.batch} is {n * args.batch:,} samples; the limit per run is "
            f"{MAX_TOTAL_SAMPLES:,}: lower one of them"
        )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model_from_checkpoint(ckpt, use_ema=not args.no_ema, device=device)
    if model.upsampler is not None:
        raise ValueError(
            f"'{args.checkpoint}' is a vocoder (conditioned on log-mel frames): re-synthesise audio with "
            f"wavedil vocode {args.checkpoint} in.wav -o {args.output}"
        )
    speaker = _resolve_speaker(model, args.speaker)
    prompt = None
    if args.prompt:
        wav, _ = read_audio(args.prompt, sample_rate=sr)
        prompt = encode(wav, model.encoding, model.quantization_channels)
    bar = tqdm(total=n, unit="sample", unit_scale=True, disable=args.quiet, dynamic_ncols=True)
    last = [0]

    def progress(done: int) -> None:
        if done - last[0] >= 256 or done == n:
            bar.update(done - last[0])
            last[0] = done

    res = generate(
        model, n, batch_size=args.batch, temperature=args.temperature, seed=args.seed,
        prompt=prompt, speaker=speaker, backend=args.backend, progress=progress,
    )
    bar.close()
    paths = []
    for i in range(args.batch):
        wav = decode(res.codes[i].cpu(), model.encoding, model.quantization_channels)
        paths.append(write_audio(_numbered(out, i, args.batch), wav, sr))
    rate = res.samples_per_second
    print(
        f"wrote {len(paths)} file(s) ({args.seconds:g} s at {sr} Hz each): {paths[0]}"
        + (f" .. {paths[-1].name}" if len(paths) > 1 else "")
        + f"\n{rate:,.0f} samples/s with the {res.backend} backend, real-time factor {sr * args.batch / rate:.2f}"
        f" (seed {res.seed})"
    )


# ----------------------------------------------------------------------------- eval


def _eval(args: argparse.Namespace) -> None:
    from .checkpoint import model_from_checkpoint
    from .data import AudioItem, CorpusError, load_corpus, split_items
    from .evaluate import evaluate_codes

    ckpt = _load_checkpoint_arg(args.checkpoint)
    sr = int(ckpt.get("sample_rate", 16000))
    items: list = []
    for src in args.audio:
        p = Path(src)
        if p.is_dir():
            items += load_corpus(p, layout=args.layout, mic=args.mic)
        elif p.is_file():
            items.append(AudioItem(p))
        else:
            raise CorpusError(f"'{p}' is neither an audio file nor a folder")
    if args.split != "all":
        fraction = args.valid_fraction
        if fraction is None:  # the split of the training run
            fraction = float(ckpt.get("config", {}).get("data", {}).get("valid_fraction", 0.1))
        train_items, valid_items = split_items(items, valid_fraction=fraction)
        items = valid_items if args.split == "valid" else train_items
    model = model_from_checkpoint(ckpt, use_ema=not args.no_ema)
    if model.speaker is not None and model.config.speakers:
        known = set(model.config.speakers)
        unknown = sorted({str(it.speaker) for it in items if it.speaker not in known})
        if unknown:
            raise ValueError(
                f"files of speakers {unknown} that the model does not know (evaluate with --layout vctk on the "
                f"speakers it was trained on: {', '.join(model.config.speakers)})"
            )
    report = evaluate_codes(model, _eval_files(model, items, sr, args.max_seconds))
    print(report.table())
    result = report.to_dict()
    if model.upsampler is not None and args.vocode_seconds > 0:
        from .evaluate import vocode_baselines, vocode_distance

        waves = [(name, cond["wav"]) for name, _, cond in _eval_files(model, items, sr, args.vocode_seconds)]
        mean, per_file = vocode_distance(model, waves, seconds=args.vocode_seconds, seed=args.seed)
        refs = vocode_baselines(model, waves, seconds=args.vocode_seconds)
        print(f"  log-mel L1 distance to the input ({len(per_file)} files, first {args.vocode_seconds:g} s of each):")
        print(f"    re-synthesised            {mean:.3f}")
        print(f"    input through the codec   {refs['codec']:.3f}   (the floor)")
        if "other_file" in refs:
            print(f"    another held-out file     {refs['other_file']:.3f}   (audio that ignores the mel)")
        result["log_mel_distance"] = mean
        result["log_mel_distance_baselines"] = refs
    if args.json:
        print(json.dumps(result))


def _eval_files(model, items, sr: int, max_seconds: float | None):
    """``(name, codes (T,), cond)`` per readable file; ``cond`` has the file's speaker / mel and ``wav``."""
    import math

    import torch

    from .audio import AudioReadError, encode, read_audio

    log = logging.getLogger("wavedil.eval")
    for item in items:
        frames = math.ceil(max_seconds * item.rate) if max_seconds and item.rate > 0 else -1
        try:
            wav, _ = read_audio(item.path, sample_rate=sr, frames=frames)
        except AudioReadError as exc:
            log.warning("skipping audio file: %s", exc)
            continue
        if max_seconds:
            wav = wav[: int(max_seconds * sr)]
        cond: dict = {"wav": wav}
        if model.speaker is not None:
            cond["speaker"] = torch.tensor([model.config.speakers.index(item.speaker)])
        if model.upsampler is not None:
            from .data import file_mel

            cond["mel"] = file_mel(wav, model.mel_spec, model.mel_context)
        yield str(item.path), encode(wav, model.encoding, model.quantization_channels), cond


# ----------------------------------------------------------------------------- vocode


def _vocode(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from .audio import decode, read_audio, write_audio
    from .checkpoint import model_from_checkpoint
    from .data import file_mel
    from .generate import generate

    out = Path(args.output)
    _check_writable(out)
    ckpt = _load_checkpoint_arg(args.checkpoint)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model_from_checkpoint(ckpt, use_ema=not args.no_ema, device=device)
    if model.upsampler is None:
        raise ValueError(
            f"'{args.checkpoint}' is not a vocoder (it has no mel conditioning): sample it with wavedil generate, "
            "or train one with experiment=vocoder_speech8k"
        )
    spec, ctx = model.mel_spec, model.mel_context
    sr, hop = spec.sample_rate, spec.hop_length
    src = Path(args.input)
    n_samples = None
    if src.suffix.lower() in (".npy", ".npz"):
        mel = _load_mel(src, spec)
        silence = float(np.log(1e-5))  # the log-mel of silence pads the context frames
        mel = torch.nn.functional.pad(mel, (ctx, ctx), value=silence)
    else:
        wav, _ = read_audio(src, sample_rate=sr)
        if wav.numel() == 0:
            raise ValueError(f"'{src}' holds no audio")
        mel = file_mel(wav, spec, ctx)
        n_samples = wav.shape[-1]
        if args.save_mel:
            from ._io import atomic_open

            with atomic_open(args.save_mel) as f:
                np.save(f, mel[:, ctx : mel.shape[-1] - ctx].numpy())
    frames = mel.shape[-1] - 2 * ctx
    seconds = frames * hop / sr
    if seconds > args.max_seconds:
        raise ValueError(
            f"'{src}' is {seconds:.1f} s ({frames} mel frames); the limit is --max-seconds {args.max_seconds:g}: "
            "raise it or cut the input"
        )
    res = generate(
        model, None, temperature=args.temperature, seed=args.seed, speaker=_resolve_speaker(model, args.speaker),
        mel=mel.to(device), backend=args.backend,
    )
    codes = res.codes[0, :n_samples].cpu() if n_samples else res.codes[0].cpu()
    path = write_audio(out, decode(codes, model.encoding, model.quantization_channels), sr)
    print(
        f"wrote {path} ({codes.numel() / sr:.2f} s at {sr} Hz from {frames} mel frames); "
        f"{res.samples_per_second:,.0f} samples/s (seed {res.seed})"
    )


def _load_mel(path: Path, spec):
    """A saved log-mel ``(n_mels, M)`` from ``.npy``, or ``.npz`` with ``mel`` (and ``hop_length`` /
    ``sample_rate`` checked against the vocoder when present)."""
    import numpy as np
    import torch

    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the mel file '{path}': {exc}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            if "mel" not in data.files:
                raise ValueError(f"'{path}' has no array named 'mel' (it has {data.files})")
            for key in ("hop_length", "sample_rate", "n_mels"):
                if key in data.files and int(data[key]) != getattr(spec, key):
                    raise ValueError(
                        f"'{path}' was made with {key}={int(data[key])} but this vocoder expects {key}={getattr(spec, key)}"
                    )
            mel = data["mel"]
    else:
        mel = data
    if mel.ndim != 2 or mel.shape[0] != spec.n_mels or mel.shape[1] < 1 or not np.issubdtype(mel.dtype, np.floating):
        raise ValueError(
            f"'{path}' must hold a float log-mel array ({spec.n_mels}, frames) for this vocoder "
            f"({spec.n_mels} mel bands, hop {spec.hop_length} at {spec.sample_rate} Hz), got {mel.dtype} {mel.shape}"
        )
    if not np.isfinite(mel).all():
        raise ValueError(f"'{path}' holds NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))


# ----------------------------------------------------------------------------- info


def _info(args: argparse.Namespace) -> None:
    from .layers import receptive_field_coverage
    from .model import WaveNet

    target = args.target
    sr = args.sample_rate
    if target.endswith(".pt") or Path(target).is_dir():
        from .checkpoint import model_from_checkpoint

        ckpt = _load_checkpoint_arg(target)
        model = model_from_checkpoint(ckpt)
        sr = sr or int(ckpt.get("sample_rate", 16000))
        extra = f"checkpoint at step {ckpt.get('step', '?')}"
    else:
        from omegaconf import OmegaConf

        from .config import CONF_DIR, model_config

        path = Path(target)
        if not path.is_file():
            path = CONF_DIR / "model" / f"{target}.yaml"
        if not path.is_file():
            names = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
            raise ValueError(f"'{target}' is neither a checkpoint (.pt), a YAML file nor a model config {names}")
        model = WaveNet(model_config(OmegaConf.load(path)))
        extra = f"model config {path}"
        sr = sr or 16000
    cfg = model.config
    rf = model.receptive_field
    d = model.stack.dilations
    print(
        f"{extra}\n"
        f"parameters        {model.num_parameters():,}\n"
        f"receptive field   {rf} samples = {1000 * rf / sr:.1f} ms at {sr} Hz\n"
        f"layers            {len(d)} (kernel {cfg.kernel_size}, coverage {receptive_field_coverage(cfg.kernel_size, d):.0%})\n"
        f"dilations         {', '.join(map(str, d))}\n"
        f"channels          residual {cfg.residual_channels}, gate {cfg.gate_channels}, skip {cfg.skip_channels}, "
        f"head {cfg.head_channels}, classes {cfg.quantization_channels}\n"
        f"output            {cfg.output} ({model.dist!r}), input encoding {model.encoding}"
        + (f"\nspeakers          {cfg.global_cond_classes}: {', '.join(cfg.speakers or ())}" if model.speaker is not None else "")
        + (f"\nmel conditioning  {model.mel_spec}, {model.mel_context} context frames" if model.upsampler is not None else "")
    )


# ----------------------------------------------------------------------------- entry point


_BACKEND_HELP = "generation back-end: auto (fast when it can run the model, else torch), torch, fast"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wavedil", description="WaveNet-style raw-audio generation.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train with Hydra overrides: wavedil train experiment=speech8k ...", add_help=False)

    g = sub.add_parser("generate", help="sample audio from a checkpoint")
    g.add_argument("checkpoint", help="a step_*.pt file, or a run folder (its newest checkpoint)")
    g.add_argument("-o", "--output", required=True, help="output .wav (batch > 1 writes name_000.wav, ...)")
    g.add_argument("--seconds", type=float, default=2.0)
    g.add_argument("--batch", type=int, default=1)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--prompt", help="an audio file whose codes prime the model before sampling")
    g.add_argument("--speaker", default=None, help="speaker (name from the training corpus) of a speaker-conditioned model")
    g.add_argument("--backend", default="auto", help=_BACKEND_HELP)
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    g.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    g.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="bits per sample on audio files, with bz2 and unigram baselines")
    e.add_argument("checkpoint")
    e.add_argument("audio", nargs="+", help="audio files or folders")
    e.add_argument("--layout", default="folder", help="layout of folders: folder, ljspeech, vctk")
    e.add_argument("--mic", default="mic1", help="vctk layout: mic1, mic2 or both (VCTK 0.92's two microphones)")
    e.add_argument("--split", default="all", choices=["all", "train", "valid"], help="evaluate only this split of the files")
    e.add_argument("--valid-fraction", type=float, default=None,
                   help="held-out fraction for --split (default: data.valid_fraction of the training run)")
    e.add_argument("--max-seconds", type=float, default=None, help="read at most this much of each file")
    e.add_argument("--no-ema", action="store_true")
    e.add_argument("--json", action="store_true", help="also print the figures as JSON")
    e.add_argument("--vocode-seconds", type=float, default=1.0,
                   help="vocoders: re-synthesise this much of each file for the log-mel distance (0: skip)")
    e.add_argument("--seed", type=int, default=0, help="vocoders: seed of the re-synthesis")

    v = sub.add_parser("vocode", help="re-synthesise audio (or a saved log-mel) with a mel-conditioned checkpoint")
    v.add_argument("checkpoint", help="a vocoder's step_*.pt file, or its run folder")
    v.add_argument("input", help="an audio file (analysed to log-mel), or a log-mel .npy (n_mels, frames) / .npz")
    v.add_argument("-o", "--output", required=True, help="output .wav")
    v.add_argument("--temperature", type=float, default=1.0)
    v.add_argument("--seed", type=int, default=None)
    v.add_argument("--speaker", default=None, help="speaker, for a speaker-conditioned vocoder")
    v.add_argument("--save-mel", default=None, help="also write the input's log-mel (n_mels, frames) to this .npy")
    v.add_argument("--max-seconds", type=float, default=600.0, help="refuse longer inputs (default 600)")
    v.add_argument("--backend", default="auto", help=_BACKEND_HELP)
    v.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    v.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")

    i = sub.add_parser("info", help="parameters, receptive field and dilations of a checkpoint or model config")
    i.add_argument("target", help="checkpoint .pt, model config name (tiny, small, base, ref30) or YAML file")
    i.add_argument("--sample-rate", type=int, default=None)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``wavedil``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    debug = _debug_wanted(argv)
    if "train" in argv[:2]:
        idx = argv.index("train")
        return _train([a for a in argv[idx + 1 :] if a != "--debug"] + (["debug=true"] if debug else []))
    args = _parser().parse_args(argv)
    try:
        {"generate": _generate, "eval": _eval, "info": _info, "vocode": _vocode}[args.command](args)
    except (ValueError, OSError) as exc:
        if debug:
            raise
        raise _fail(exc) from None


if __name__ == "__main__":
    main()
