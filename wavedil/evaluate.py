"""Held-out likelihood in bits per sample, next to two simple baselines on the same files.

* the model: NLL of each sample given its past, streamed through the cached path in chunks,
  so a file of any length costs bounded memory;
* ``bz2``: the compressed size of the code stream (mu-law bytes, or 16-bit PCM for the
  linear heads);
* ``unigram``: the entropy of the code histogram of the same files.

For a vocoder (a mel-conditioned model), :func:`vocode_distance` re-synthesises held-out audio
from its own log-mel frames and reports the log-mel distance between input and output.

:func:`evaluate_files` does all of it for a checkpoint and audio files or corpus folders (what
``wavedil eval`` prints). ``weights="bf16"`` / ``"int8"`` evaluate the fast back-end's
reduced-precision weights (:func:`wavedil.fast.teacher_forced_logits`) instead of the model's
own float32 forward.
"""

from __future__ import annotations

import bz2
import logging
import math
from dataclasses import dataclass, field
import os
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import torch

from .model import UpsampledColumns, WaveNet

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .data import AudioItem

__all__ = [
    "EvalReport",
    "FileEvaluation",
    "bz2_bits_per_sample",
    "evaluate_codes",
    "evaluate_files",
    "file_nll_bits",
    "gather_items",
    "log_mel_distance",
    "unigram_bits_per_sample",
    "vocode_baselines",
    "vocode_distance",
]


@dataclass
class EvalReport:
    """Totals over a set of files; each figure is in bits per sample."""

    model_bits: float
    bz2_bits: float
    unigram_bits: float
    n_samples: int
    n_files: int
    per_file: list[tuple[str, float, int]] = field(default_factory=list)

    def table(self) -> str:
        rows = [
            ("model", self.model_bits),
            ("bz2 of the codes", self.bz2_bits),
            ("unigram entropy", self.unigram_bits),
        ]
        lines = [f"{self.n_files} files, {self.n_samples:,} predicted samples"]
        lines += [f"  {name:<26} {bits:6.3f} bits/sample" for name, bits in rows]
        if self.bz2_bits > 0:
            lines.append(f"  model / bz2: {self.model_bits / self.bz2_bits:.2f}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "model_bits_per_sample": self.model_bits,
            "bz2_bits_per_sample": self.bz2_bits,
            "unigram_bits_per_sample": self.unigram_bits,
            "samples": self.n_samples,
            "files": self.n_files,
            "per_file": [
                {"file": name, "model_bits_per_sample": bits, "samples": n} for name, bits, n in self.per_file
            ],
        }


class _Bz2Size:
    """Running compressed size of a byte stream fed piece by piece (bz2 level 9).

    The compressor keeps at most one 900 kB block, so memory stays bounded however much is fed.
    """

    def __init__(self, classes: int = 256) -> None:
        self._comp = bz2.BZ2Compressor(9)
        self._size = 0
        self.n = 0
        self._wide = classes > 256  # 16-bit codes go in as little-endian int16 (PCM) pairs

    def add(self, codes: torch.Tensor) -> None:
        c = codes.long().cpu()
        data = ((c - 32768).numpy().astype("<i2") if self._wide else c.numpy().astype("u1")).tobytes()
        self.n += c.numel()
        self._size += len(self._comp.compress(data))

    def bits_per_sample(self) -> float:
        """Finish the stream; no more :meth:`add` after this."""
        self._size += len(self._comp.flush())
        return 8.0 * self._size / max(self.n, 1)


def bz2_bits_per_sample(streams: Iterable[torch.Tensor], classes: int = 256) -> float:
    """Bits per sample of bz2 (level 9) over the concatenated code streams (bytes, or int16 for ``classes > 256``)."""
    size = _Bz2Size(classes)
    for codes in streams:
        size.add(codes)
    return size.bits_per_sample()


def unigram_bits_per_sample(counts: torch.Tensor) -> float:
    """Entropy in bits of the empirical distribution given by ``counts (Q,)``."""
    p = counts.double() / counts.sum().clamp(min=1)
    p = p[p > 0]
    return float(-(p * p.log2()).sum()) + 0.0  # + 0.0: one code only is 0.0, not -0.0


@torch.no_grad()
def file_nll_bits(
    model: WaveNet, codes: torch.Tensor, chunk: int = 16000, cond: dict | None = None, weights: str = "fp32"
) -> tuple[float, int]:
    """Total NLL in bits of the predicted samples of ``codes (T,)``, and their number.

    Unconditioned and speaker models predict ``codes[1:]`` from their past; a vocoder predicts
    all ``T`` samples from a silent opener and ``cond["mel"]`` (``(n_mels, M + 2 c)``,
    :func:`wavedil.data.file_mel`). ``cond["speaker"]``: the file's class id ``(1,)``.

    With ``weights="fp32"`` the codes are streamed through :meth:`WaveNet.step` ``chunk``
    samples at a time, which equals one full forward pass but needs memory for one chunk only.
    Other modes (``bf16``, ``int8``) feed the whole file through the fast back-end with its
    weights in that mode (:func:`wavedil.fast.teacher_forced_logits`; memory grows with ``T``).
    """
    model.eval()
    cond = cond or {}
    device = model.embed.weight.device
    codes = codes.to(device).long().unsqueeze(0)  # (1, T)
    speaker = cond.get("speaker")
    mel = cond.get("mel")
    covered = None  # samples the mel conditions (vocoders)
    if model.upsampler is not None:
        mel = model.check_mel(mel).to(device)  # (1, n_mels, M + 2 c): its shape and type checked
        covered = (mel.shape[-1] - 2 * model.mel_context) * model.mel_spec.hop_length
        if covered < codes.shape[1]:
            raise ValueError(f"the mel covers {covered} samples, the audio has {codes.shape[1]}")
        opener = torch.full((1, 1), model.silence_code, dtype=torch.long, device=device)
        codes = torch.cat([opener, codes], dim=1)
    n_pred = codes.shape[1] - 1
    if n_pred <= 0:
        return 0.0, 0
    if weights != "fp32":
        from .fast import teacher_forced_logits

        inputs = codes[:, :-1]  # (1, n_pred)
        if covered is not None:  # the mel covers whole frames: feed silence past the file's end
            inputs = torch.nn.functional.pad(inputs, (0, covered - n_pred), value=model.silence_code)
        params = teacher_forced_logits(model, inputs, speaker, mel, weights=weights)[:, :, :n_pred]  # (1, P, n_pred)
        bits = model.dist.bits(params.transpose(1, 2).flatten(0, 1), codes[:, 1:].reshape(-1), reduction="sum")
        return float(bits), n_pred
    state = model.init_state(1)
    local = None if covered is None else UpsampledColumns(model, mel)
    total = 0.0
    for i in range(0, n_pred, chunk):
        x = codes[:, i : min(i + chunk, n_pred)]
        target = codes[:, i + 1 : i + 1 + x.shape[1]]
        lc = None if local is None else local(i, i + x.shape[1])
        params, state = model.step(x, state, speaker, lc)
        total += model.dist.bits(params.transpose(1, 2).flatten(0, 1), target.reshape(-1), reduction="sum").item()
    return total, n_pred


def evaluate_codes(
    model: WaveNet,
    files: Iterable[tuple[str, torch.Tensor] | tuple[str, torch.Tensor, dict]],
    chunk: int = 16000,
    weights: str = "fp32",
) -> EvalReport:
    """Evaluate the model and both baselines over ``(name, codes (T,))`` or ``(name, codes, cond)``.

    ``cond`` holds what a conditioned model needs for that file, and ``weights`` the weight mode
    the model is evaluated in (see :func:`file_nll_bits`).
    ``files`` is consumed once, as a stream: memory does not grow with the amount of audio
    (only the per-file figures are kept), so an iterator over a large corpus is fine.
    Files with fewer than 2 codes have nothing to predict and are passed over.
    """
    Q = model.quantization_channels
    counts = torch.zeros(Q, dtype=torch.long)
    total_bits, total_n, n_files = 0.0, 0, 0
    per_file: list[tuple[str, float, int]] = []
    bz2_size = _Bz2Size(Q) if Q <= 65536 else None
    for entry in files:
        name, codes = entry[0], entry[1]
        cond = entry[2] if len(entry) > 2 else None
        if codes.numel() < 2:
            continue
        if int(codes.max()) >= Q or int(codes.min()) < 0:
            raise ValueError(f"codes of '{name}' fall outside [0, {Q}): quantise with the model's {Q} classes")
        bits, n = file_nll_bits(model, codes, chunk, cond, weights)
        total_bits += bits
        total_n += n
        n_files += 1
        per_file.append((name, bits / max(n, 1), n))
        predicted = codes if model.upsampler is not None else codes[1:]
        counts += torch.bincount(predicted.long().cpu(), minlength=Q)
        if bz2_size is not None:
            bz2_size.add(predicted)
    if n_files == 0:
        raise ValueError(
            "nothing to evaluate: no readable file with at least 2 samples (unreadable files are skipped with a "
            "warning above; --max-seconds shortens every file)"
        )
    bz2_bits = bz2_size.bits_per_sample() if bz2_size is not None else math.nan
    return EvalReport(total_bits / total_n, bz2_bits, unigram_bits_per_sample(counts), total_n, n_files, per_file)


def log_mel_distance(a: torch.Tensor, b: torch.Tensor, spec) -> float:
    """Mean absolute difference of the log-mel spectrograms (natural log) of two waveforms ``(T,)``.

    Both are cut to the shorter length first; ``spec`` is a :class:`wavedil.conditioning.MelSpec`.
    """
    from .conditioning import log_mel

    n = min(a.shape[-1], b.shape[-1])
    return float((log_mel(a[..., :n].float(), spec) - log_mel(b[..., :n].float(), spec)).abs().mean())


def _vocode_segments(
    model: WaveNet, waves: Iterable[tuple[str, torch.Tensor]], seconds: float
) -> list[tuple[str, torch.Tensor]]:
    """The first ``seconds`` of each waveform, cut to whole mel frames; shorter than a frame: dropped."""
    if model.upsampler is None:
        raise ValueError("vocode_distance needs a mel-conditioned model (a vocoder)")
    hop = model.mel_spec.hop_length
    limit = max(hop, int(seconds * model.mel_spec.sample_rate) // hop * hop)
    out = []
    for name, wav in waves:
        n = min(limit, wav.shape[-1] // hop * hop)
        if n >= hop:
            out.append((name, wav[:n]))
    if not out:
        raise ValueError(
            f"nothing to vocode: every file is shorter than one mel frame ({hop} samples); the log-mel distance needs "
            "longer files (--vocode-seconds 0 skips it)"
        )
    return out


@torch.no_grad()
def vocode_distance(
    model: WaveNet,
    waves: Iterable[tuple[str, torch.Tensor]],
    seconds: float = 1.0,
    seed: int = 0,
    weights: str = "fp32",
    temperature: float = 1.0,
) -> tuple[float, list[tuple[str, float]]]:
    """Re-synthesise the first ``seconds`` of each waveform ``(T,)`` from its own log-mel frames.

    Returns the mean log-mel distance (:func:`log_mel_distance`) over the files and the per-file
    figures. Waveforms are in [-1, 1] at the model's sample rate; files are cut to a whole number
    of mel frames; all files of the same length are generated as one batch (back-end ``auto``
    with weight mode ``weights``, sampling at ``temperature``).
    """
    from .audio import decode
    from .data import file_mel
    from .generate import generate

    spec, ctx = model.mel_spec, model.mel_context
    groups: dict[int, list[tuple[str, torch.Tensor]]] = {}
    for name, wav in _vocode_segments(model, waves, seconds):
        groups.setdefault(wav.shape[-1], []).append((name, wav))
    per_file: list[tuple[str, float]] = []
    for _, group in sorted(groups.items()):
        mel = torch.stack([file_mel(w, spec, ctx) for _, w in group]).to(model.embed.weight.device)
        codes = generate(
            model, None, batch_size=len(group), seed=seed, mel=mel, backend="auto", weights=weights,
            temperature=temperature,
        ).codes
        for (name, wav), c in zip(group, codes.cpu()):
            per_file.append((name, log_mel_distance(wav, decode(c, model.encoding, model.quantization_channels), spec)))
    return sum(d for _, d in per_file) / len(per_file), per_file


def vocode_baselines(
    model: WaveNet, waves: Iterable[tuple[str, torch.Tensor]], seconds: float = 1.0
) -> dict[str, float]:
    """Reference points for :func:`vocode_distance` on the same segments ``(T,)``.

    ``codec``: each input against its own round trip through the model's quantisation (what a
    perfect vocoder could reach). ``other_file``: each input against the next file's segment
    (cyclically; what audio that ignored the mel would score). Needs two files for the latter.
    """
    from .audio import decode, encode

    spec = model.mel_spec
    segs = [w for _, w in _vocode_segments(model, waves, seconds)]
    q = model.quantization_channels
    out = {
        "codec": sum(
            log_mel_distance(w, decode(encode(w, model.encoding, q), model.encoding, q), spec) for w in segs
        ) / len(segs)
    }
    if len(segs) > 1:
        out["other_file"] = sum(
            log_mel_distance(w, segs[(i + 1) % len(segs)], spec) for i, w in enumerate(segs)
        ) / len(segs)
    return out


# ----------------------------------------------------------------------------- files of a checkpoint


@dataclass
class FileEvaluation:
    """What :func:`evaluate_files` found: the likelihood report and, for vocoders, the log-mel distance.

    Attributes:
        report: bits per sample of the model and the baselines (:class:`EvalReport`).
        weights: the weight mode evaluated.
        log_mel_distance: vocoders: mean log-mel L1 distance of re-synthesised audio to its input.
        log_mel_baselines: vocoders: ``codec`` (the floor) and ``other_file`` (:func:`vocode_baselines`).
        vocoded_files: how many files the distance is over; ``vocode_seconds``: of each;
            ``temperature``: the sampling temperature of the re-synthesis.
        notes: things the user should know that are not errors (files resampled to the model's rate).
    """

    report: EvalReport
    weights: str = "fp32"
    log_mel_distance: float | None = None
    log_mel_baselines: dict[str, float] | None = None
    vocoded_files: int = 0
    vocode_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    temperature: float = 1.0

    def table(self) -> str:
        """The report as ``wavedil eval`` prints it."""
        lines = [self.report.table()]
        if self.weights != "fp32":
            lines.append(f"  (model weights in {self.weights})")
        if self.log_mel_distance is not None:
            refs = self.log_mel_baselines or {}
            lines.append(
                f"  log-mel L1 distance to the input ({self.vocoded_files} files, first {self.vocode_seconds:g} s of each, "
                f"temperature {self.temperature:g}):"
            )
            lines.append(f"    re-synthesised            {self.log_mel_distance:.3f}")
            lines.append(f"    input through the codec   {refs['codec']:.3f}   (the floor)")
            if "other_file" in refs:
                lines.append(f"    another held-out file     {refs['other_file']:.3f}   (audio that ignores the mel)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The figures as JSON-ready values (``wavedil eval --json``)."""
        out = self.report.to_dict()
        out["weights"] = self.weights
        if self.log_mel_distance is not None:
            out["log_mel_distance"] = self.log_mel_distance
            out["log_mel_distance_baselines"] = self.log_mel_baselines
            out["temperature"] = self.temperature
        if self.notes:
            out["notes"] = list(self.notes)
        return out


_SPLITS = ("all", "train", "valid")


def _resampling_notes(items: Sequence, sample_rate: int) -> list[str]:
    """One note per other sample rate among ``items``: how many files were resampled, and an example."""
    from .audio import audio_info

    by_rate: dict[int, list] = {}
    for item in items:
        rate = item.rate
        if rate <= 0:  # a file given by itself is not probed; an unreadable one is skipped later, with a warning
            try:
                rate = audio_info(item.path).samplerate
            except Exception:  # noqa: BLE001 - only a note depends on it
                continue
        if rate != sample_rate:
            by_rate.setdefault(int(rate), []).append(item)
    return [
        f"{len(group)} file(s) at {rate} Hz (e.g. '{group[0].path}') were resampled to the model's {sample_rate} Hz"
        for rate, group in sorted(by_rate.items())
    ]


def gather_items(
    audio: Sequence[str | os.PathLike], layout: str = "folder", mic: str = "mic1"
) -> list[AudioItem]:
    """The :class:`~wavedil.data.AudioItem` of each audio file and of each corpus folder in ``audio``.

    Folders are read with :func:`wavedil.data.load_corpus` (``layout``, ``mic``); files are taken
    as they are (probed when read), with the speaker the layout gives them: with ``vctk`` their
    folder's name (``p225/p225_001_mic1.flac`` -> ``p225``), as when their folder is read.

    Raises:
        CorpusError: an entry is neither a file nor a folder, or a folder holds no usable audio.
    """
    from pathlib import Path

    from .data import AudioItem, CorpusError, load_corpus

    if isinstance(audio, (str, os.PathLike)):
        audio = [audio]  # one path, not its characters
    items: list[AudioItem] = []
    for src in audio:
        if not str(src).strip():
            raise CorpusError(f"an audio path is an empty string ({str(src)!r}): give a file or folder")
        p = Path(src)
        if p.is_dir():
            items += load_corpus(p, layout=layout, mic=mic, mic_option="--mic")
        elif p.is_file():
            speaker = Path(os.path.abspath(p)).parent.name if layout == "vctk" else None
            items.append(AudioItem(p, speaker=speaker))
        elif not os.path.lexists(p):
            raise CorpusError(f"'{p}' does not exist: check the path (give audio files or folders of them)")
        elif not p.exists():
            raise CorpusError(f"'{p}' is a broken link (or a link loop): give the audio file it should point to")
        else:
            raise CorpusError(f"'{p}' is neither an audio file nor a folder")
    seen: dict[str, AudioItem] = {}
    for item in items:  # a file named twice (a folder and a file in it, or twice) is evaluated once
        seen.setdefault(os.path.realpath(item.path), item)
    if len(seen) < len(items):
        logger.warning("%d audio file(s) given more than once are evaluated once", len(items) - len(seen))
    return list(seen.values())


def model_inputs(
    model: WaveNet, items: Sequence[AudioItem], sample_rate: int, max_seconds: float | None = None
) -> Iterator[tuple[str, torch.Tensor, dict]]:
    """``(name, codes (T,), cond)`` of each readable file of ``items`` at ``sample_rate``, as
    :func:`evaluate_codes` takes them: ``codes`` quantised as ``model`` was trained, ``cond`` the
    file's speaker id ``(1,)`` (speaker models; its ``AudioItem.speaker`` must be one the model
    knows), log-mel (vocoders, :func:`wavedil.data.file_mel`) and ``wav (T,)``."""
    from .audio import encode
    from .data import file_mel, iter_file_audio

    for item, wav in iter_file_audio(items, sample_rate, max_seconds):
        cond: dict = {"wav": wav}
        if model.speaker is not None:
            cond["speaker"] = torch.tensor([model.config.speakers.index(item.speaker)])
        if model.upsampler is not None:
            cond["mel"] = file_mel(wav, model.mel_spec, model.mel_context)
        yield str(item.path), encode(wav, model.encoding, model.quantization_channels), cond


def run_valid_fraction(checkpoint: dict) -> float:
    """The ``data.valid_fraction`` a checkpoint's training run held files out with: its config's,
    or the default that training fills in (:class:`wavedil.train_config.DataConfig`) when the
    config does not say (a checkpoint saved without one)."""
    from .train_config import DataConfig

    data = (checkpoint.get("config") or {}).get("data") or {}
    return float(data.get("valid_fraction", DataConfig.valid_fraction))


def split_side(
    checkpoint: dict, items: list[AudioItem], split: str, valid_fraction: float, notes: list[str]
) -> list[AudioItem]:
    """The ``split`` side (``"train"`` or ``"valid"``) of ``items``, as the checkpoint's run split its corpus.

    When every item lies in the run's corpus folder (``data.root`` of its config, found here),
    the split is the run's own: :func:`wavedil.data.split_items` over that whole corpus (its
    ``layout`` and ``mic``), so a subset of its files or a subfolder keeps each file on the side
    it was trained on. Otherwise the items are split among themselves (the same hash of each
    name, relative to their common folder, and at least one held out), which is the run's split
    only when they are its whole corpus; a note in ``notes`` says so.
    """
    from .data import load_corpus, split_items

    data = (checkpoint.get("config") or {}).get("data") or {}
    root = data.get("root")
    other = "train" if split == "valid" else "valid"
    if not isinstance(root, str) or not root:
        where = "the checkpoint does not name its corpus"
    elif not os.path.isdir(root):
        where = f"the run's corpus '{root}' is not here"
    else:
        base = os.path.realpath(root)
        if all(os.path.realpath(it.path).startswith(base + os.sep) for it in items):
            corpus = load_corpus(root, layout=data.get("layout", "folder"), mic=data.get("mic", "mic1"))
            train, valid = split_items(corpus, valid_fraction=valid_fraction)
            # by utterance: the other microphone's copy of a VCTK file (eval --mic mic2 / both of a
            # run trained on mic1) lies on the side of the copy the run split
            side = {_utterance(it.path) for it in (valid if split == "valid" else train)}
            chosen = [it for it in items if _utterance(it.path) in side]
            if not chosen:
                raise ValueError(
                    f"nothing to evaluate: none of the {len(items)} given file(s) is on the {split} side of the run's "
                    f"split of its corpus '{root}' ({len(valid)} of its {len(corpus)} files held out, valid_fraction="
                    f"{valid_fraction:g}); give the corpus folder itself, or --split {other} or all"
                )
            known = side | {_utterance(it.path) for it in (train if split == "valid" else valid)}
            outside = [it for it in items if _utterance(it.path) not in known]
            if outside:
                notes.append(
                    f"--split {split}: {len(outside)} given file(s) (e.g. '{outside[0].path}') are not in the run's "
                    f"corpus as it read it (layout {data.get('layout', 'folder')}, mic {data.get('mic', 'mic1')}), so "
                    "on neither side of its split: left out"
                )
            return chosen
        where = "the files are not all in the run's corpus folder"
    notes.append(
        f"--split {split}: {where}, so the given files were split among themselves (by name, at least one held "
        "out); that is the run's split only when they are its whole corpus"
    )
    train, valid = split_items(items, valid_fraction=valid_fraction)
    chosen = valid if split == "valid" else train
    if not chosen:  # one file: split_items holds none out
        raise ValueError(
            f"nothing to evaluate: split among themselves, the {len(items)} given file(s) leave none on the "
            f"{split} side (one file is never held out); give more files, or --split {other} or all"
        )
    return chosen


def _utterance(path: str | os.PathLike) -> str:
    """The real path of an audio file without a VCTK ``_mic1`` / ``_mic2`` suffix: the two
    microphones' copies of an utterance share it (as :func:`wavedil.data.split_items` keys them)."""
    from .data import without_mic_suffix

    return str(without_mic_suffix(os.path.realpath(path)))


def evaluate_files(
    checkpoint: str | os.PathLike,
    audio: Sequence[str | os.PathLike],
    *,
    layout: str = "folder",
    mic: str = "mic1",
    split: str = "all",
    valid_fraction: float | None = None,
    max_seconds: float | None = None,
    use_ema: bool = True,
    vocode_seconds: float = 1.0,
    seed: int = 0,
    weights: str = "fp32",
    chunk: int = 16000,
    temperature: float | None = None,
) -> FileEvaluation:
    """Bits per sample of a checkpoint on audio files and corpus folders, beside bz2 and unigram.

    Files are read with :func:`wavedil.data.iter_file_audio` at the checkpoint's sample rate
    (unreadable ones are skipped with a warning) and quantised as the model was trained.

    Args:
        checkpoint: a ``step_*.pt`` file, a run folder (its newest good checkpoint) or
            ``pretrained:NAME`` (a bundled model, :mod:`wavedil.pretrained`).
        audio: audio files and/or corpus folders.
        layout, mic: how folders are read (:func:`wavedil.data.load_corpus`).
        split: ``"all"``, or only the ``"train"`` / ``"valid"`` side of
            :func:`wavedil.data.split_items` with ``valid_fraction`` (default: the training run's
            ``data.valid_fraction``).
        max_seconds: read at most this much of each file (the re-synthesis too); ``inf``: no limit.
        use_ema: the EMA weights when the checkpoint has them.
        vocode_seconds: vocoders only: re-synthesise this much of each file for the log-mel
            distance (0: skip it), with ``seed``, sampling at ``temperature`` (the likelihood
            figures do not depend on it).
        weights: ``"fp32"`` (the model's own forward) or a reduced mode of the fast back-end
            (``"bf16"``, ``"int8"``).
        chunk: samples per streamed chunk of the fp32 path.

    Returns:
        A :class:`FileEvaluation`.

    Raises:
        ValueError: a bad ``split`` / ``weights``, an unusable checkpoint, no usable files
            (:class:`~wavedil.data.CorpusError`), or files of speakers the model does not know.
    """
    from .backends import check_seed, check_weights
    from .checkpoint import model_from_checkpoint
    from .data import LAYOUTS, VCTK_MICS, split_items
    from .pretrained import open_model, sampling_temperature
    from .vocoder_stream import check_max_seconds

    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    if (isinstance(vocode_seconds, bool) or not isinstance(vocode_seconds, (int, float))
            or not 0 <= vocode_seconds < math.inf):  # fmt: skip
        raise ValueError(
            f"vocode_seconds must be a finite number >= 0 (seconds of each file to re-synthesise, e.g. 5; 0 skips "
            f"it), got {vocode_seconds!r}"
        )
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if mic not in VCTK_MICS:
        raise ValueError(f"mic must be one of {list(VCTK_MICS)}, got {mic!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1 (samples per streamed chunk), got {chunk!r}")
    check_max_seconds(max_seconds)
    if max_seconds is not None:  # the re-synthesis reads no more of a file than the likelihood does
        vocode_seconds = min(vocode_seconds, max_seconds)
    seed = check_seed(seed)
    check_weights(weights)
    src = open_model(checkpoint)
    given_temperature = temperature
    temperature = sampling_temperature(src, temperature)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be >= 0 (0: greedy) and finite, got {temperature!r}")
    ckpt = src.checkpoint
    sr = int(ckpt.get("sample_rate", 16000))
    items = gather_items(audio, layout, mic)
    split_notes: list[str] = []
    if split != "all":
        fraction = run_valid_fraction(ckpt) if valid_fraction is None else valid_fraction
        items = split_side(ckpt, items, split, fraction, split_notes)
    model = model_from_checkpoint(ckpt, use_ema=use_ema)
    if model.speaker is not None and model.config.speakers:
        known = set(model.config.speakers)
        unknown = sorted({str(it.speaker) for it in items if it.speaker not in known})
        if unknown:
            none = any(it.speaker is None for it in items)
            raise ValueError(
                f"files of speakers {unknown} that the model does not know (evaluate with --layout vctk on the "
                f"speakers it was trained on: {', '.join(model.config.speakers)})"
                + (f"; 'None': --layout {layout} gives a file no speaker, and this model needs one" if none else "")
            )

    report = evaluate_codes(model, model_inputs(model, items, sr, max_seconds), chunk, weights)
    result = FileEvaluation(report, weights)
    result.notes = split_notes + _resampling_notes(items, sr)
    if given_temperature is not None and (model.upsampler is None or vocode_seconds == 0):
        result.notes.append(
            f"temperature {temperature:g} is not used: it is the sampling temperature of a vocoder's re-synthesis "
            "(--vocode-seconds > 0), and the likelihood does not depend on it"
        )
    if model.upsampler is not None and vocode_seconds > 0:
        waves = [(name, cond["wav"]) for name, _, cond in model_inputs(model, items, sr, vocode_seconds)]
        result.log_mel_distance, per_file = vocode_distance(
            model, waves, vocode_seconds, seed, weights, temperature
        )
        result.log_mel_baselines = vocode_baselines(model, waves, seconds=vocode_seconds)
        result.vocoded_files, result.vocode_seconds = len(per_file), vocode_seconds
        result.temperature = temperature
    return result
