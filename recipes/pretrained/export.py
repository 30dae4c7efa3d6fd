#!/usr/bin/env python
"""Export a training run as a bundled pretrained model: data/pretrained/<name>/{model.pt,card.json,MODEL_CARD.md}.

    python recipes/pretrained/export.py RUN --preset speech8k --eval-json speech8k_eval.txt
    python recipes/pretrained/export.py RUN --preset speech8k-vocoder --eval-json vocoder_eval.txt

``RUN`` is a run folder (its newest good checkpoint) or a ``step_*.pt`` file. ``--eval-json``
is the saved output of ``wavedil eval ... --json`` (its last line is the JSON); its figures go
into the card. A preset fills the name, description, corpus, recipe and the commands; the
options override them. The work is :func:`wavedil.pretrained.export_pretrained`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from wavedil.pretrained import DTYPES, export_pretrained, heldout_from_eval

#: The training audio of both bundled models.
ASTERISK_CORPUS = {
    "name": "asterisk-core-sounds-en-wav 1.6.1-1 (Debian), all 568 files, about 25 minutes at 8 kHz",
    "source": "Debian package asterisk-core-sounds-en-wav, installed by recipes/asterisk_full/prepare.sh "
    "to /usr/share/asterisk/sounds/en_US_f_Allison",
    "licence": "CC-BY-SA-3.0",
    "attribution": "Allison Smith (http://www.theivrvoice.com), recorded for Digium, Inc. (http://www.digium.com)",
}
CORPUS_DIR = "/usr/share/asterisk/sounds/en_US_f_Allison"

PRESETS = {
    "speech8k": {
        "description": "unconditional speech model: one US-English voice, 8 kHz mu-law",
        # 3,500 steps at lr 2e-3 (AMD EPYC, float32), then a second stage from those EMA weights
        # with a fresh AdamW, bf16, lr 1e-3 over a 115-minute budget (Intel Xeon with AMX), and a
        # third the same way from the second's EMA weights, lr 6e-4 over 118 minutes, a fourth
        # from the third's, lr 4e-4 over 128 minutes, and a fifth from the fourth's, lr 3e-4 over
        # 115 minutes
        "train_command": "recipes/asterisk_full/prepare.sh"
        " && wavedil train experiment=pretrained_speech8k hydra.run.dir=runs/pretrained_speech8k"
        " && wavedil train experiment=pretrained_speech8k hydra.run.dir=runs/pretrained_speech8k_2"
        " trainer.init_from=runs/pretrained_speech8k optim.lr=1e-3 trainer.precision=bf16"
        " trainer.max_time=01:55:00 trainer.max_steps=100000"
        " && wavedil train experiment=pretrained_speech8k hydra.run.dir=runs/pretrained_speech8k_3"
        " trainer.init_from=runs/pretrained_speech8k_2 optim.lr=6e-4 trainer.precision=bf16"
        " trainer.max_time=01:58:00 trainer.max_steps=100000"
        " && wavedil train experiment=pretrained_speech8k hydra.run.dir=runs/pretrained_speech8k_4"
        " trainer.init_from=runs/pretrained_speech8k_3 optim.lr=4e-4 trainer.precision=bf16"
        " trainer.max_time=02:08:00 trainer.max_steps=100000"
        " && wavedil train experiment=pretrained_speech8k hydra.run.dir=runs/pretrained_speech8k_5"
        " trainer.init_from=runs/pretrained_speech8k_4 optim.lr=3e-4 trainer.precision=bf16"
        " trainer.max_time=01:55:00 trainer.max_steps=100000",
        "eval_command": "wavedil eval {run} " + CORPUS_DIR + " --split valid --json",
    },
    "speech8k-vocoder": {
        "description": "mel vocoder: 40-band log-mel frames every 10 ms to 8 kHz mu-law speech",
        # 3,000 steps at lr 2e-3, then continued to 5,000, 7,500 and 10,000 (a second, third and
        # fourth cosine at lr 4e-3, exact resumes); then a fifth stage from those EMA weights with
        # a fresh AdamW, bf16, lr 1e-3 over a 93-minute budget (its checkpoints were gone: init_from),
        # a sixth the same way from the fifth's EMA weights, lr 6e-4 over 130 minutes, and a
        # seventh from the sixth's, lr 5e-4 over 115 minutes, an eighth from the seventh's, lr 4e-4
        # over 132 minutes, and a ninth from the eighth's, lr 3e-4 over 120 minutes
        "train_command": "recipes/asterisk_full/prepare.sh"
        " && wavedil train experiment=pretrained_vocoder8k hydra.run.dir=runs/pretrained_vocoder8k"
        " && wavedil train experiment=pretrained_vocoder8k hydra.run.dir=runs/pretrained_vocoder8k"
        " trainer.resume=true trainer.max_steps=5000 optim.lr=4e-3"
        " && wavedil train experiment=pretrained_vocoder8k hydra.run.dir=runs/pretrained_vocoder8k"
        " trainer.resume=true trainer.max_steps=7500 optim.lr=4e-3"
        " && wavedil train experiment=pretrained_vocoder8k hydra.run.dir=runs/pretrained_vocoder8k"
        " trainer.resume=true trainer.max_steps=10000 optim.lr=4e-3"
        " && wavedil train experiment=pretrained_vocoder8k hydra.run.dir=runs/pretrained_vocoder8k_5"
        " trainer.init_from=runs/pretrained_vocoder8k optim.lr=1e-3 trainer.precision=bf16"
        " trainer.max_time=01:33:00 trainer.max_steps=100000"
        " && wavedil train experiment=pretrained_vocoder8k hydra.run.dir=runs/pretrained_vocoder8k_6"
        " trainer.init_from=runs/pretrained_vocoder8k_5 optim.lr=6e-4 trainer.precision=bf16"
        " trainer.max_time=02:10:00 trainer.max_steps=100000"
        " && wavedil train experiment=pretrained_vocoder8k hydra.run.dir=runs/pretrained_vocoder8k_7"
        " trainer.init_from=runs/pretrained_vocoder8k_6 optim.lr=5e-4 trainer.precision=bf16"
        " trainer.max_time=01:55:00 trainer.max_steps=100000"
        " && wavedil train experiment=pretrained_vocoder8k hydra.run.dir=runs/pretrained_vocoder8k_8"
        " trainer.init_from=runs/pretrained_vocoder8k_7 optim.lr=4e-4 trainer.precision=bf16"
        " trainer.max_time=02:12:00 trainer.max_steps=100000"
        " && wavedil train experiment=pretrained_vocoder8k hydra.run.dir=runs/pretrained_vocoder8k_9"
        " trainer.init_from=runs/pretrained_vocoder8k_8 optim.lr=3e-4 trainer.precision=bf16"
        " trainer.max_time=02:00:00 trainer.max_steps=100000",
        "eval_command": "wavedil eval {run} " + CORPUS_DIR + " --split valid --vocode-seconds 2 --temperature 0.5 --json",
        # measured on the 31 held-out files, first 2 s each, seed 0, on the 5,000-step model
        # (recipes/pretrained/README.md)
        "temperature": 0.5,
        "temperature_note": "Chosen by the log-mel L1 distance of the held-out re-synthesis (first 2 s of the 31 "
        "held-out files, seed 0, measured on this model at step 5,000): 0.691 greedy (T 0), 0.556 at T 0.2, 0.530 at 0.3, 0.519 at 0.4, 0.518 at 0.5, "
        "0.525 at 0.6, 0.538 at 0.7, 0.553 at 0.8, 0.572 at 0.9, 0.594 at 1.0 (codec floor 0.201); seeds 1 and 2: "
        "0.520 and 0.517 at 0.5, 0.596 and 0.596 at 1.0. Re-checked at step 10,000: 0.467 at 0.4, 0.463 at 0.5, "
        "0.465 at 0.6, 0.521 at 1.0; at the end of the fifth stage: 0.419 at 0.4, 0.413 at 0.5, 0.410 at 0.6, "
        "0.452 at 1.0; of the sixth: 0.407 at 0.4, 0.397 at 0.5, 0.395 at 0.6, 0.431 at 1.0; of the seventh: "
        "0.397 at 0.4, 0.386 at 0.5, 0.384 at 0.6, 0.420 at 1.0; of the eighth: 0.388 at 0.4, 0.377 at 0.5, "
        "0.376 at 0.6, 0.407 at 1.0; of the ninth: 0.382 at 0.4, 0.375 at 0.5, 0.371 at 0.6, 0.402 at 1.0. Judged by this distance only, not by listening.",
    },
}


def _read_text(path: Path, option: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ValueError(f"{option}: cannot read '{path}' ({why})") from None


def read_eval_json(path: Path) -> dict:
    """The JSON figures in the saved output of ``wavedil eval --json`` (its last JSON line)."""
    for line in reversed(_read_text(path, "--eval-json").splitlines()):
        if line.lstrip().startswith("{"):
            try:
                figures = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--eval-json: the last JSON line of '{path}' is not valid JSON ({exc})") from None
            return heldout_from_eval(figures)
    raise ValueError(f"'{path}' holds no JSON line: save the output of wavedil eval ... --json into it")


def read_corpus_json(path: Path) -> dict:
    """The corpus description of ``--corpus-json``: a JSON object (name, source, licence, attribution)."""
    try:
        corpus = json.loads(_read_text(path, "--corpus-json"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"--corpus-json: '{path}' is not valid JSON ({exc})") from None
    if not isinstance(corpus, dict):
        raise ValueError(f"--corpus-json: '{path}' must hold a JSON object (name, source, licence, attribution)")
    return corpus


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run folder (its newest checkpoint) or a step_*.pt file")
    p.add_argument("--preset", choices=sorted(PRESETS), help="fills name, description and commands of a bundled model")
    p.add_argument("--name", help="the name to load it by (default: the preset's)")
    p.add_argument("--out-dir", default=None,
                   help="the pretrained/ folder (default: $WAVEDIL_DATA/pretrained, else data/pretrained)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="storage of the weights (both load as float32)")
    p.add_argument("--description", help="one line for the card")
    p.add_argument("--eval-json", type=Path, help="saved output of `wavedil eval ... --json` on held-out files")
    p.add_argument("--eval-command", action="append", default=None, help="the eval command(s) behind --eval-json")
    p.add_argument("--train-command", help="the command that trained the run")
    p.add_argument("--corpus-json", type=Path, help="a JSON file with name/source/licence/attribution of another corpus")
    p.add_argument("--temperature", type=float, default=None,
                   help="the sampling temperature the commands use with the model by default (default: the preset's, else 1.0)")
    p.add_argument("--temperature-note", default=None, help="how --temperature was chosen, for the card")
    args = p.parse_args(argv)
    if args.name is None and args.preset is None:
        p.error("give --preset or --name")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    preset = PRESETS.get(args.preset or "", {})
    name = args.name or args.preset
    eval_commands = args.eval_command or ([preset["eval_command"].format(run=args.run)] if preset else [])
    corpus = read_corpus_json(args.corpus_json) if args.corpus_json else ASTERISK_CORPUS
    info = export_pretrained(
        args.run, name, out_dir=args.out_dir, dtype=args.dtype,
        description=args.description or preset.get("description", ""), corpus=corpus,
        recipe="recipes/pretrained/README.md", train_command=args.train_command or preset.get("train_command"),
        export_command="python recipes/pretrained/export.py " + shlex.join(argv),
        eval_commands=eval_commands, heldout=read_eval_json(args.eval_json) if args.eval_json else None,
        temperature=args.temperature if args.temperature is not None else preset.get("temperature"),
        temperature_note=args.temperature_note or preset.get("temperature_note", ""),
    )  # fmt: skip
    print(f"wrote {info.folder}: {info.kind}, {info.parameters:,} parameters, {info.dtype}, sha256 {info.sha256}")
    if not info.heldout:
        print("note: no held-out figures in the card; pass --eval-json (see recipes/pretrained/README.md)")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as exc:  # an OSError names its file (an --out-dir that cannot be written)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
