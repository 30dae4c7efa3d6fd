"""``wavedil train | generate | vocode | eval | info | models``: a thin layer over library functions.

The CLI parses arguments, calls one library function and reports; the work lives in
:func:`wavedil.train.train`, :func:`wavedil.synthesis.generate_to_files`,
:func:`wavedil.synthesis.vocode_file`, :func:`wavedil.evaluate.evaluate_files` and
:func:`wavedil.describe.describe_model` and :func:`wavedil.pretrained.models_table`, which
tests and recipes call in process. ``--model NAME`` names a bundled model instead of a
checkpoint (``pretrained:NAME`` to the library). User errors (``ValueError``, ``OSError``)
print one paragraph and exit with status 2; ``--debug`` (or ``HYDRA_FULL_ERROR=1``) shows the
full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import sys
import warnings
from pathlib import Path
from typing import Sequence

__all__ = ["main"]

EXIT_USER_ERROR = 2
#: Ctrl-C (128 + SIGINT, as a shell reports it)
EXIT_INTERRUPTED = 130
#: the reader of standard output went away (128 + SIGPIPE, as a shell reports a tool it stopped)
EXIT_BROKEN_PIPE = 141
#: SIGTERM (``kill``, ``timeout``, a job scheduler): 128 + SIGTERM
EXIT_TERMINATED = 143


class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM during generate/vocode/eval/info/models, so that
    ``finally`` blocks and :func:`wavedil._io.atomic_open` clean up as on Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise _Terminated()


def _fail(msg: str) -> "SystemExit":
    print(f"error: {msg}", file=sys.stderr)
    return SystemExit(EXIT_USER_ERROR)


def _model_target(checkpoint: str | None, model: str | None, what: str, taken: tuple[str, str] | None = None) -> str:
    """The checkpoint argument, or ``pretrained:NAME`` for ``--model NAME``: exactly one of them.

    ``taken``: ``(name, value)`` of the positional argument that the only one given went to (the
    input of ``vocode RUN -o out.wav``), to say so when the checkpoint is missing.

    Raises:
        ValueError: both or neither given.
    """
    if checkpoint is not None and model is not None:
        raise ValueError(f"give either a checkpoint ('{checkpoint}') or --model {model}, not both")
    if checkpoint is None and model is None:
        took = ""
        if taken is not None:
            took = (f" ('{taken[1]}' was taken as the {taken[0]}: with a checkpoint, give the {taken[0]} after it, "
                    "or give --model NAME)")  # fmt: skip
        raise ValueError(
            f"give the {what}: a checkpoint (a step_*.pt file or a run folder) as the first argument, or "
            f"--model NAME for a bundled model (wavedil models lists them){took}"
        )
    from .pretrained import PRETRAINED_PREFIX

    if model is None:
        return checkpoint
    # ``--model pretrained:NAME`` (the form trainer.init_from and the checkpoint argument take) means NAME
    return model if model.startswith(PRETRAINED_PREFIX) else PRETRAINED_PREFIX + model


def _print_notes(notes: Sequence[str]) -> None:
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _debug_wanted(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"


# ----------------------------------------------------------------------------- train (Hydra)


def _summary_json(summary: dict) -> str:
    """``train``'s summary as strict JSON: a figure not measured (NaN, e.g. ``valid_bits`` of a run
    that stopped before its first validation) or not finite is ``null``.

    >>> _summary_json({"step": 2, "valid_bits": float("nan"), "train_bits": 3.5})
    '{"step": 2, "valid_bits": null, "train_bits": 3.5}'
    """
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in summary.items()}
    return json.dumps(clean, allow_nan=False)


def _check_run_name(overrides: Sequence[str]) -> None:
    """Refuse a ``name=`` override that is not a plain folder name: runs go to
    ``outputs/<name>/<date>_<time>/``, and Hydra makes that folder before wavedil sees the config
    (``name=../../x`` would write outside ``outputs/``, ``name=`` would drop the name level).

    Raises:
        ValueError: naming the override and what to use instead.
    """
    for override in overrides:
        key, eq, value = override.lstrip("+~").partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and eq and not value.strip().strip("'\""):
            raise ValueError(
                f"{override}: the run folder is empty, which would write the run into the current folder; "
                f"give a folder, e.g. {key}=runs/my_run"
            )
        if key != "name" or not eq:
            continue
        value = value.strip().strip("'\"")
        parts = value.split(",") if value else [""]
        if any(not part or part in (".", "..") or "/" in part or "\\" in part for part in parts):
            raise ValueError(
                f"{override}: name is the run's folder under outputs/ and must be a plain, non-empty name "
                "(no '/'), e.g. name=my_run; to write somewhere else set hydra.run.dir=FOLDER"
            )


def _remove_unused_run_folder(run_dir: Path) -> None:
    """Remove the run folder of a ``wavedil train`` refused before it wrote anything of its own.

    Hydra makes the folder (its ``.hydra/`` and the log) before the options are checked, so each
    mistyped option left one behind. Only a folder holding nothing else goes (with the folders
    above it that it leaves empty, up to the current one), never the current one itself
    (torchrun's other ranks run there); the error itself is on the terminal.
    """
    if os.environ.get("RANK", "0") != "0":
        return
    try:
        if run_dir.resolve() == Path.cwd().resolve():
            return
        entries = list(run_dir.iterdir())
        hydra_only = all((e.name == ".hydra" and e.is_dir()) or (e.suffix == ".log" and e.is_file()) for e in entries)
        if not hydra_only or any(p.is_dir() for p in (run_dir / ".hydra").glob("*")):
            return
        shutil.rmtree(run_dir)
        cwd = Path.cwd().resolve()
        for parent in run_dir.resolve().parents:  # outputs/<name>/ left empty by it, up to the current folder
            if parent == cwd or cwd not in parent.parents or any(parent.iterdir()):
                break
            parent.rmdir()
    except OSError:  # a folder that cannot be listed or removed stays: the error to report is the other
        pass


def _train(overrides: list[str]) -> None:
    """Run ``wavedil train`` through ``hydra.main`` so overrides, ``-m`` sweeps and run folders work."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from ._malloc import keep_freed_memory
    from .config import CONF_DIR

    try:
        keep_freed_memory()  # a training step's large blocks stay in malloc's heap (wavedil/_malloc.py)
    except ValueError as exc:  # a bad WAVEDIL_MALLOC
        raise _fail(exc) from None

    try:
        _check_run_name(overrides)
    except ValueError as exc:
        raise _fail(exc) from None
    debug = "debug=true" in overrides or os.environ.get("HYDRA_FULL_ERROR") == "1"

    @hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
    def _run(cfg) -> float:
        from .train import train

        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            summary = train(cfg, run_dir)
        except (ValueError, OSError) as exc:
            if debug or cfg.get("debug", False) is True:  # debug=abc is itself the error to report
                raise
            _remove_unused_run_folder(run_dir)
            raise _fail(exc) from None
        if os.environ.get("RANK", "0") == "0":
            print(_summary_json(summary))
        return summary["valid_bits"]

    if os.environ.get("RANK", "0") != "0":
        # torchrun's other ranks: rank 0 owns the run folder (train() broadcasts it) and the logs.
        overrides = overrides + ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    sys.argv = ["wavedil train"] + overrides
    # Hydra prints a composition error (an unknown config group option, a key not in the config, a
    # malformed override) over several lines and exits with status 1; let it raise instead and report
    # it as every other user error: one line, status 2 (the full traceback with debug=true).
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _run()
    except Exception as exc:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if debug:
            raise
        if isinstance(exc, (HydraException, OmegaConfBaseException)):  # some are OSErrors too (a missing config)
            raise _fail(_hydra_message(exc)) from None
        if isinstance(exc, OSError):  # train()'s own are reported inside _run: this is Hydra's run folder
            raise _fail(
                f"cannot make or write the run folder ({exc.strerror or exc}: '{exc.filename}'): set "
                "hydra.run.dir=FOLDER to a folder you can write, or run from one"
            ) from None
        raise
    except KeyboardInterrupt:  # Ctrl-C before the loop's own handler (setup) or a second one in the loop
        if debug:
            raise
        print("interrupted: wavedil train stopped (checkpoints are written whole or not at all; continue the run "
              "with trainer.resume=true)", file=sys.stderr)  # fmt: skip
        raise SystemExit(EXIT_INTERRUPTED) from None
    finally:
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


#: the config groups whose options wavedil checks, and the typed settings that list them
_GROUP_SETTINGS = {"trainer": "TrainerConfig", "optim": "OptimConfig", "data": "DataConfig"}


def _hydra_message(exc: BaseException) -> str:
    """A Hydra / OmegaConf composition error of ``wavedil train`` as one line, in wavedil's terms.

    A key that is not in the config (``trainer.foo=1``) is named with the valid options of its
    group (Hydra's advice, ``+trainer.foo=1``, would only be refused later); other errors are
    Hydra's own text with its lines joined (the list of a group's choices kept, the config
    search path left out).
    """
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    full_key = str(getattr(cause, "full_key", None) or "")
    if "is not in struct" in str(cause) and full_key:
        from dataclasses import fields

        from . import train_config
        from .model import WaveNetConfig

        group, _, key = full_key.rpartition(".")
        valid: list[str] | None = None
        if group in _GROUP_SETTINGS:
            valid = [f.name for f in fields(getattr(train_config, _GROUP_SETTINGS[group]))]
        elif group == "model":
            valid = [f.name for f in fields(WaveNetConfig)]
        elif not group:
            valid = list(train_config.TOP_LEVEL_KEYS)
        if valid is not None and key in valid:  # an option that this config's YAML does not set
            if full_key == "data.mic":
                return ("data.mic is read with data.layout=vctk only: use data=vctk (its config sets data.mic), "
                        "or pass +data.mic=VALUE with data.layout=vctk")  # fmt: skip
            return f"{full_key} is not set in this config: add it with +{full_key}=VALUE"
        if valid is not None:
            return train_config._unknown_keys_message([key], valid, f"{group} option" if group else "top-level option")
    text = str(exc).split("Config search path:")[0]
    if cause is not exc:
        text += "\n" + str(cause).split("full_key:")[0]
    parts: list = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("To append to your config"):
            continue
        if raw.startswith("\t") and parts and isinstance(parts[-1], list):
            parts[-1].append(line)
        elif raw.startswith("\t"):
            parts.append([line])
        else:
            parts.append(line.removeprefix("In 'train': "))
    words = [", ".join(p) if isinstance(p, list) else p for p in parts]
    if isinstance(getattr(exc, "override", None), str):  # OverrideParseException: name the override
        words.insert(0, f"cannot parse the override {exc.override!r}:")
        hint = _quoting_hint(exc.override)
        if hint:
            words.append(hint)
    return " ".join(w if w.endswith((".", ":", "?")) or i == len(words) - 1 else w + ";" for i, w in enumerate(words))


#: Characters Hydra's override grammar takes in a value only inside quotes (besides non-ASCII ones).
_QUOTED_ONLY = "()[]{}'\"=#&~!;^`<>"


def _quoting_hint(override: str) -> str:
    """What to do about an override whose value Hydra cannot read unquoted (a path with a letter such
    as 'ü' or a parenthesis), or ``""``: Hydra's own message ends in a caret and a link to its grammar.

    >>> print(_quoting_hint("data.root=/data/Müsik").partition(": pass ")[2])
    "data.root='/data/Müsik'", the outer quotes for the shell)
    >>> _quoting_hint("data.root=/data/music")
    ''
    """
    key, eq, value = override.partition("=")
    if not eq or value[:1] in ("'", '"') or not any(ord(c) > 127 or c in _QUOTED_ONLY for c in value):
        return ""
    quoted = "'" + value.replace("'", "\\'") + "'"
    return (f"(a value holding letters beyond ASCII or any of {_QUOTED_ONLY} must be quoted for Hydra: pass "
            f"\"{key}={quoted}\", the outer quotes for the shell)")


# ----------------------------------------------------------------------------- generate / vocode


class _SampleProgress:
    """``progress(done, total)`` for the library calls, shown with :class:`wavedil.progress.Progress`.

    A bar on a terminal, a plain line every few seconds otherwise; created on the first report
    (the total is known only once the checkpoint is read), updated every 256 samples. The
    library reports samples per sequence; the bar counts them over all ``rows`` sequences, as
    the samples/s printed at the end does. Its clock starts at the first report, so the samples
    done before it count as already done, not in its rate (counted in, they made the rate of a
    0.1 s run read tens of millions of samples/s).
    """

    def __init__(self, enabled: bool, desc: str, rows: int = 1) -> None:
        self.enabled, self.desc, self.rows = enabled, desc, rows
        self.bar = None
        self.shown = 0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from .progress import Progress

            self.bar = Progress(total=total * self.rows, unit="sample", desc=self.desc, initial=done * self.rows)
            self.shown = done
            return
        if done - self.shown < 256 and done != total:
            return
        self.bar.update((done - self.shown) * self.rows)
        self.shown = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _generate(args: argparse.Namespace) -> None:
    if args.output == "-":
        return _generate_stream(args)
    from .synthesis import generate_to_files

    target = _model_target(args.checkpoint, args.model, "model to sample")
    progress = _SampleProgress(not args.quiet, "generate", rows=max(1, args.batch))
    try:
        res = generate_to_files(
            target, args.output, args.seconds, batch=args.batch, temperature=args.temperature,
            seed=args.seed, prompt=args.prompt, speaker=args.speaker, backend=args.backend, weights=args.weights,
            device=args.device, use_ema=not args.no_ema, progress=progress,
        )  # fmt: skip
    finally:
        progress.close()
    _print_notes(res.notes)
    paths = res.paths
    print(
        f"wrote {len(paths)} file(s) ({args.seconds:g} s at {res.sample_rate} Hz each): {paths[0]}"
        + (f" .. {paths[-1].name}" if len(paths) > 1 else "")
        + f"\n{res.samples_per_second:,.0f} samples/s with the {res.backend} backend ({res.weights} weights), "
        f"real-time factor {res.real_time_factor:.2f} (seed {res.seed}, temperature {res.temperature:g})"
    )


def _generate_stream(args: argparse.Namespace) -> None:
    from .synthesis import generate_to_stream

    target = _model_target(args.checkpoint, args.model, "model to sample")
    if args.batch != 1:
        raise ValueError(
            f"-o - streams one sequence as 16-bit PCM, got --batch {args.batch}: leave --batch out, or write "
            "files with -o out.wav"
        )
    progress = _SampleProgress(not args.quiet, "generate")
    try:
        res = generate_to_stream(
            target, sys.stdout.buffer, args.seconds, temperature=args.temperature, seed=args.seed,
            prompt=args.prompt, speaker=args.speaker, backend=args.backend, weights=args.weights,
            device=args.device, use_ema=not args.no_ema, progress=progress,
        )  # fmt: skip
    finally:
        progress.close()
    _print_notes(res.notes)
    print(
        f"streamed {res.codes.shape[1]:,} samples ({res.seconds:g} s, 16-bit mono PCM at {res.sample_rate} Hz) "
        f"to standard output; first audio after {1000 * res.first_audio_seconds:.0f} ms\n"
        f"{res.samples_per_second:,.0f} samples/s with the {res.backend} backend ({res.weights} weights), "
        f"real-time factor {res.real_time_factor:.2f} (seed {res.seed}, temperature {res.temperature:g})",
        file=sys.stderr,
    )


def _vocode_stream(args: argparse.Namespace) -> None:
    from .synthesis import vocode_stream_file

    target = _model_target(args.checkpoint, args.model, "vocoder", ("input", args.input))
    stats = vocode_stream_file(
        target, args.input, args.output, temperature=args.temperature, seed=args.seed, speaker=args.speaker,
        save_mel=args.save_mel, max_seconds=args.max_seconds, backend=args.backend, weights=args.weights,
        device=args.device, use_ema=not args.no_ema,
        note=None if args.quiet else (lambda line: print(line, file=sys.stderr)),
    )  # fmt: skip
    where = "standard output (16-bit PCM)" if args.output == "-" else args.output
    print(f"streamed {stats.frames} frames -> {stats.samples} samples to {where}; real-time factor "
          f"{stats.real_time_factor:.2f} ({stats.backend} back-end, {stats.weights} weights, seed {stats.seed})",
          file=sys.stderr)  # fmt: skip


def _vocode(args: argparse.Namespace) -> None:
    if args.stream:
        return _vocode_stream(args)
    from .synthesis import vocode_file

    target = _model_target(args.checkpoint, args.model, "vocoder", ("input", args.input))
    progress = _SampleProgress(not args.quiet, "vocode")
    try:
        res = vocode_file(
            target, args.input, args.output, temperature=args.temperature, seed=args.seed,
            speaker=args.speaker, save_mel=args.save_mel, backend=args.backend, weights=args.weights,
            device=args.device, use_ema=not args.no_ema, progress=progress,
            **({} if args.max_seconds is None else {"max_seconds": args.max_seconds}),  # else vocode_file's default
        )  # fmt: skip
    finally:
        progress.close()
    _print_notes(res.notes)
    print(
        f"wrote {res.paths[0]} ({res.seconds:.2f} s at {res.sample_rate} Hz from {res.mel_frames} mel frames); "
        f"{res.samples_per_second:,.0f} samples/s ({res.weights} weights, seed {res.seed}, temperature {res.temperature:g})"
    )


# ----------------------------------------------------------------------------- eval


def _eval(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_files

    target = _model_target(args.checkpoint, args.model, "model to evaluate", ("audio", " ".join(args.audio)))
    result = evaluate_files(
        target, args.audio, layout=args.layout, mic=args.mic, split=args.split,
        valid_fraction=args.valid_fraction, max_seconds=args.max_seconds, use_ema=not args.no_ema,
        vocode_seconds=args.vocode_seconds, seed=args.seed, weights=args.weights,
        temperature=args.temperature,
    )  # fmt: skip
    _print_notes(result.notes)
    print(result.table())
    if args.json:
        print(json.dumps(result.to_dict()))


# ----------------------------------------------------------------------------- info


def _info(args: argparse.Namespace) -> None:
    from .describe import describe_model

    if args.target is not None and args.model is not None:
        raise ValueError(f"give either a target ('{args.target}') or --model {args.model}, not both")
    if args.target is None and args.model is None:
        raise ValueError("give a checkpoint, a model config name (tiny, small, base, ref30), a YAML file, or --model NAME")
    target = args.target if args.model is None else _model_target(None, args.model, "model")
    print(describe_model(target, args.sample_rate).text())


# ----------------------------------------------------------------------------- models


def _models(args: argparse.Namespace) -> None:
    from .pretrained import models_table

    print(models_table())


# ----------------------------------------------------------------------------- entry point


_BACKEND_HELP = "generation back-end: auto (fast when it can run the model, else torch), torch, fast"
_WEIGHTS_HELP = "weight mode of the back-end (default fp32; bf16 and int8 need the fast back-end)"
_MODEL_HELP = "a bundled pretrained model by name, instead of a checkpoint (wavedil models lists them)"
_TEMPERATURE_HELP = "sampling temperature, 0 greedy (default: a bundled model's card value, else 1.0)"


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser that takes its options and positionals in any order.

    ``wavedil vocode RUN --stream - -o out.wav`` and ``wavedil eval RUN --json a.wav``: a plain
    parser gives the positionals before the first option to the first ones it can fill and then
    refuses the rest as "unrecognized arguments". ``--debug`` is accepted after the subcommand too.
    Arguments a subcommand does not take are refused with the subcommand's own usage
    (``wavedil models extra``: argparse would print the top-level usage).
    """

    _intermixed = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._intermixed:  # the passes of parse_known_intermixed_args (Python < 3.12)
            return super().parse_known_args(args, namespace)
        self._intermixed = True
        try:
            namespace, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = False
        if extras:  # no subcommand passes arguments on (train is routed before argparse)
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


#: the arguments of the subcommands that name a file or folder: an empty string is refused
_PATH_ARGS = {
    "checkpoint": "the checkpoint argument", "output": "-o", "prompt": "--prompt", "input": "the input argument",
    "save_mel": "--save-mel", "target": "the target argument", "audio": "an audio argument",
}  # fmt: skip


def _check_paths(args: argparse.Namespace) -> None:
    """Refuse an empty path (``-o ""``, ``wavedil eval RUN ""``): it would name the current folder.

    Raises:
        ValueError: naming the option.
    """
    for attr, what in _PATH_ARGS.items():
        value = getattr(args, attr, None)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and not v.strip():
                raise ValueError(f"{what} is an empty string ({v!r}): give a file or folder path")


def _parser() -> argparse.ArgumentParser:
    from .backends import WEIGHT_MODES

    p = argparse.ArgumentParser(prog="wavedil", description="WaveNet-style raw-audio generation.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_SubcommandParser)
    sub.add_parser("train", help="train with Hydra overrides: wavedil train experiment=speech8k ...", add_help=False)

    g = sub.add_parser("generate", help="sample audio from a checkpoint")
    g.add_argument("checkpoint", nargs="?", help="a step_*.pt file, or a run folder (its newest checkpoint)")
    g.add_argument("--model", metavar="NAME", help=_MODEL_HELP)
    g.add_argument("-o", "--output", required=True,
                   help="output .wav (batch > 1 writes name_000.wav, ...); - streams 16-bit mono PCM to standard "
                        "output as it is drawn (e.g. | aplay -t raw -f S16_LE -c 1 -r RATE)")  # fmt: skip
    g.add_argument("--seconds", type=float, default=2.0)
    g.add_argument("--batch", type=int, default=1)
    g.add_argument("--temperature", type=float, default=None, help=_TEMPERATURE_HELP)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--prompt", help="an audio file whose codes prime the model before sampling")
    g.add_argument("--speaker", default=None, help="speaker (name from the training corpus) of a speaker-conditioned model")
    g.add_argument("--backend", default="auto", help=_BACKEND_HELP)
    g.add_argument("--weights", default="fp32", choices=WEIGHT_MODES, help=_WEIGHTS_HELP)
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    g.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    g.add_argument("--quiet", action="store_true", help="no progress report")

    e = sub.add_parser("eval", help="bits per sample on audio files, with bz2 and unigram baselines")
    e.add_argument("checkpoint", nargs="?", help="a step_*.pt file, or a run folder (its newest checkpoint)")
    e.add_argument("--model", metavar="NAME", help=_MODEL_HELP)
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
    e.add_argument("--temperature", type=float, default=None,
                   help="vocoders: sampling temperature of the re-synthesis (" + _TEMPERATURE_HELP + ")")
    e.add_argument("--weights", default="fp32", choices=WEIGHT_MODES,
                   help="evaluate the fast back-end with its weights in this mode (default fp32: the model's forward)")

    v = sub.add_parser("vocode", help="re-synthesise audio (or a saved log-mel) with a mel-conditioned checkpoint")
    v.add_argument("checkpoint", nargs="?", help="a vocoder's step_*.pt file, or its run folder")
    v.add_argument("--model", metavar="NAME", help=_MODEL_HELP)
    v.add_argument("input", help="an audio file (analysed to log-mel), or a log-mel .npy (n_mels, frames) / .npz")
    v.add_argument("-o", "--output", required=True, help="output .wav")
    v.add_argument("--temperature", type=float, default=None, help=_TEMPERATURE_HELP)
    v.add_argument("--seed", type=int, default=None)
    v.add_argument("--speaker", default=None, help="speaker, for a speaker-conditioned vocoder")
    v.add_argument("--save-mel", default=None, help="also write the input's log-mel (n_mels, frames) to this .npy")
    v.add_argument("--max-seconds", type=float, default=None,
                   help="refuse longer inputs (default 600; with --stream: no limit)")  # fmt: skip
    v.add_argument("--backend", default="auto", help=_BACKEND_HELP)
    v.add_argument("--weights", default="fp32", choices=WEIGHT_MODES, help=_WEIGHTS_HELP)
    v.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    v.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    v.add_argument("--quiet", action="store_true", help="no progress report")
    v.add_argument("--stream", action="store_true",
                   help="vocode as frames arrive: INPUT ('-' for standard input) is a stream of .npy (n_mels, frames) "
                        "chunks; -o - writes 16-bit PCM to standard output chunk by chunk")  # fmt: skip

    i = sub.add_parser("info", help="parameters, receptive field and dilations of a checkpoint or model config")
    i.add_argument("target", nargs="?", help="checkpoint .pt, model config name (tiny, small, base, ref30) or YAML file")
    i.add_argument("--model", metavar="NAME", help=_MODEL_HELP)
    i.add_argument("--sample-rate", type=int, default=None)
    sub.add_parser("models", help="the bundled pretrained models: name, kind, sample rate, parameters, held-out figures")
    return p


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file=None,
                  line: str | None = None) -> None:
    """``warnings.showwarning`` of the commands: one ``warning: ...`` line on standard error."""
    print(f"warning: {message}", file=sys.stderr if file is None else file, flush=True)


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
        old_term = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (main() called from a thread): keep the default
        old_term = None
    try:
        with warnings.catch_warnings():
            if not debug:  # "warning: ..." lines, as the errors, not Python's "file:line: Category: ..." and source
                warnings.showwarning = _show_warning
            _check_paths(args)
            commands = {"generate": _generate, "eval": _eval, "info": _info, "vocode": _vocode, "models": _models}
            commands[args.command](args)
    except BrokenPipeError:
        # the reader of standard output went away (``wavedil vocode --stream -o - | head``): stop quietly,
        # as command-line tools do, and keep Python from failing again on flushing stdout at exit
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (AttributeError, OSError, ValueError):  # stdout is not a file (captured)
            pass
        raise SystemExit(EXIT_BROKEN_PIPE) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"interrupted: wavedil {args.command} stopped (output files are written whole or not at all)",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(EXIT_INTERRUPTED) from None
    except _Terminated:
        print(f"terminated: wavedil {args.command} stopped by SIGTERM (output files are written whole or not at all)",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(EXIT_TERMINATED) from None
    except (ValueError, OSError) as exc:
        if debug:
            raise
        raise _fail(exc) from None
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    main()
