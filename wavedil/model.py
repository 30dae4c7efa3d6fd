"""WaveNet: input embedding + dilated causal stack + skip sum + output head.

Codes go in as ``(B, T)`` int64 (mu-law classes, or linear 16-bit bins for the ``mol`` and
``gaussian`` heads); head parameters come out as ``(B, P, T)`` where ``params[:, :, t]`` is the
distribution of sample ``t + 1`` given samples ``<= t`` (``P = Q`` logits for ``mulaw``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
import torch
import torch.nn.functional as F
from torch import nn

from .causal import check_dilations, check_positive_int
from .distributions import make_distribution
from .layers import DilatedStack, StackState, dilation_schedule

__all__ = ["LinearInput", "UpsampledColumns", "WaveNet", "WaveNetConfig", "UPSAMPLE_CHUNK_FRAMES"]

#: Mel frames :meth:`WaveNet.upsample` turns into samples per pass of the upsampler (with its
#: context frames either side), counted over the rows of a batch: bounds the pass's transient
#: memory (about 110 MB at 40 bands and hop 80) for inputs of any length (and batches of up to
#: this many rows) where gradients are off (generation, evaluation); the result is the same as
#: of one pass.
UPSAMPLE_CHUNK_FRAMES = 1024


@dataclass(frozen=True)
class WaveNetConfig:
    """Plain, typed hyper-parameters of :class:`WaveNet` (what a checkpoint stores)."""

    quantization_channels: int | None = None  # Q: bins in and out; None: 256 (mulaw) or 65536 (16-bit)
    residual_channels: int = 64  # R: channels of the residual path
    gate_channels: int = 128  # dilated conv outputs, two halves for tanh * sigmoid
    skip_channels: int = 256  # S: channels of the summed skip connections
    head_channels: int = 256  # hidden channels of the output head (ReLU, 1x1, ReLU, 1x1)
    kernel_size: int = 2  # taps of each dilated conv
    layers_per_stack: int = 10  # dilations 1, 2, ..., 2**(layers_per_stack-1) ...
    stacks: int = 3  # ... repeated this many times
    dilations: tuple[int, ...] | None = None  # explicit schedule; overrides the two above
    global_cond_classes: int = 0  # number of speakers (or other classes); 0: unconditional
    global_cond_channels: int = 0  # size of the class embedding added to every gate
    output: str = "mulaw"  # head: mulaw (softmax), mol (mixture of logistics), gaussian
    mixtures: int = 10  # components of the mol head
    log_scale_min: float = -7.0  # lower clamp of the mol / gaussian log-scales
    speakers: tuple[str, ...] | None = None  # names of the global classes (from the corpus)
    mel: dict | None = None  # log-mel conditioning: a MelSpec as a dict (sample_rate, hop_length, ...)

    def __post_init__(self) -> None:
        if self.quantization_channels is None:
            object.__setattr__(self, "quantization_channels", 256 if self.output == "mulaw" else 65536)
        if self.speakers is not None:
            if not isinstance(self.speakers, (list, tuple)):  # a str would become one speaker per letter
                raise ValueError(
                    f"speakers must be a list of speaker names (one per global class, e.g. ['p225', 'p226']) or "
                    f"None, got {self.speakers!r}"
                )
            object.__setattr__(self, "speakers", tuple(str(x) for x in self.speakers))
        if self.mel is not None and not isinstance(self.mel, Mapping):
            raise ValueError(
                f"mel must be a mapping of log-mel settings (sample_rate, hop_length, n_fft, n_mels, ...; e.g. "
                f"{{'sample_rate': 8000, 'hop_length': 80}}) or None for no mel conditioning, got {self.mel!r}"
            )

    @property
    def encoding(self) -> str:
        """The waveform quantisation the head is trained on: ``mulaw`` or ``linear``."""
        from .distributions import OUTPUTS

        return OUTPUTS.get(self.output, "mulaw")

    def schedule(self) -> tuple[int, ...]:
        if self.dilations is not None:
            return check_dilations(self.dilations)  # never int(2.5): a bad schedule is named, not rounded
        return dilation_schedule(self.layers_per_stack, self.stacks)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dilations"] = None if self.dilations is None else list(self.dilations)
        d["speakers"] = None if self.speakers is None else list(self.speakers)
        d["mel"] = None if self.mel is None else dict(self.mel)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "WaveNetConfig":
        if not isinstance(d, Mapping):
            raise ValueError(f"model options must be a mapping of option names to values, got {type(d).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown WaveNet model options {unknown}; valid ones are {sorted(known)}")
        d = dict(d)
        if d.get("dilations") is not None:  # a YAML list: kept as given, checked (never int(2.5)) by schedule()
            d["dilations"] = tuple(d["dilations"])
        return cls(**d)


#: The integer sizes of :class:`WaveNetConfig` that :class:`WaveNet` checks before building any
#: layer, with their minimum (``gate_channels``: two halves; ``kernel_size``: a dilated conv needs
#: two taps). ``layers_per_stack``/``stacks`` are checked by :func:`dilation_schedule` when used,
#: ``mixtures`` by the ``mol`` head.
_SIZE_MINIMUMS: tuple[tuple[str, int], ...] = (
    ("residual_channels", 1),
    ("gate_channels", 2),
    ("skip_channels", 1),
    ("head_channels", 1),
    ("kernel_size", 2),
    ("global_cond_classes", 0),
    ("global_cond_channels", 0),
)


class LinearInput(nn.Module):
    """Input layer of the linear-bin heads: code ``i`` -> its bin centre ``x`` -> ``x * w + b``.

    Shapes: ``codes (B, T)`` int -> ``(B, T, R)``. ``weight (R, 1)`` like ``nn.Linear(1, R)``.
    """

    def __init__(self, classes: int, channels: int) -> None:
        super().__init__()
        self.classes = classes
        self.proj = nn.Linear(1, channels)

    @property
    def weight(self) -> torch.Tensor:
        return self.proj.weight

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = codes.to(self.proj.weight.dtype) * (2.0 / self.classes) - 1.0
        return self.proj(x.unsqueeze(-1))


class WaveNet(nn.Module):
    """The WaveNet of van den Oord et al. (2016): codes in, a distribution per next sample out.

    The head (``config.output``) is a softmax over mu-law codes (``mulaw``, ``P = Q`` logits), a
    discretised mixture of logistics (``mol``, ``P = 3K``) or a Gaussian (``gaussian``, ``P = 2``)
    over linear 16-bit bins; :attr:`dist` computes its loss and draws its samples. Optional
    conditioning: a speaker (class) embedding added to every gate, and a log-mel spectrogram
    upsampled to the sample rate (a neural vocoder, ``config.mel``).

    Shapes:
        ``forward(codes (B, T), speaker (B,), mel (B, n_mels, T / hop + 2 c)) -> params (B, P, T)``
        where ``c = mel_context`` frames of context on each side.

    >>> net = WaveNet(WaveNetConfig(residual_channels=8, gate_channels=16, skip_channels=8,
    ...               head_channels=8, layers_per_stack=3, stacks=1))
    >>> net(torch.randint(0, 256, (2, 20))).shape
    torch.Size([2, 256, 20])
    """

    def __init__(self, config: WaveNetConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = WaveNetConfig(**kwargs)
        elif not isinstance(config, WaveNetConfig):
            raise ValueError(
                f"config must be a WaveNetConfig, got {type(config).__name__}: "
                "use WaveNet(WaveNetConfig.from_dict(d)) or WaveNet(**d) for a dict of options"
            )
        elif kwargs:
            raise ValueError(f"give a WaveNetConfig or keyword options, not both (got {sorted(kwargs)})")
        self.config = config
        Q = config.quantization_channels
        if isinstance(Q, bool) or not isinstance(Q, int) or Q < 2:
            raise ValueError(f"quantization_channels must be an integer >= 2, got {Q!r}")
        # every size is checked here, before any layer is built: a bad one is named, not met as a
        # tensor with a negative dimension deep inside torch
        for name, minimum in _SIZE_MINIMUMS:
            check_positive_int(name, getattr(config, name), minimum)
        if (config.global_cond_classes > 0) != (config.global_cond_channels > 0):
            raise ValueError(
                "global conditioning needs both global_cond_classes and global_cond_channels > 0, got "
                f"{config.global_cond_classes} and {config.global_cond_channels}"
            )
        if config.speakers is not None and len(config.speakers) != config.global_cond_classes:
            raise ValueError(
                f"speakers names {len(config.speakers)} classes but global_cond_classes is {config.global_cond_classes}"
            )
        self.dist = make_distribution(config.output, Q, config.mixtures, config.log_scale_min)
        if self.dist.encoding == "linear" and Q % 2:
            raise ValueError(f"the {config.output} head needs an even quantization_channels, got {Q}")
        self.embed = nn.Embedding(Q, config.residual_channels) if self.dist.encoding == "mulaw" else LinearInput(Q, config.residual_channels)
        self.mel_spec = None
        self.upsampler = None
        local_channels = 0
        if config.mel is not None:
            from .conditioning import MelSpec, Upsampler

            self.mel_spec = MelSpec.from_dict(dict(config.mel))
            local_channels = self.mel_spec.n_mels
            self.upsampler = Upsampler(local_channels, self.mel_spec.hop_length)
            # normalisation statistics of the training corpus (saved in every checkpoint)
            self.register_buffer("mel_mean", torch.zeros(local_channels))
            self.register_buffer("mel_std", torch.ones(local_channels))
        self.stack = DilatedStack(
            config.residual_channels,
            config.gate_channels,
            config.skip_channels,
            config.kernel_size,
            dilations=config.schedule(),
            global_cond_channels=config.global_cond_channels,
            local_cond_channels=local_channels,
        )
        self.speaker = (
            nn.Embedding(config.global_cond_classes, config.global_cond_channels)
            if config.global_cond_classes
            else None
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv1d(config.skip_channels, config.head_channels, 1),
            nn.ReLU(),
            nn.Conv1d(config.head_channels, self.dist.param_channels, 1),
        )

    @property
    def receptive_field(self) -> int:
        """Past samples (current one included) that one prediction depends on."""
        return self.stack.receptive_field

    @property
    def quantization_channels(self) -> int:
        return self.config.quantization_channels

    @property
    def encoding(self) -> str:
        """How waveforms become this model's codes: ``mulaw`` or ``linear`` (:func:`wavedil.audio.encode`)."""
        return self.dist.encoding

    @property
    def silence_code(self) -> int:
        """The code of 0.0 (the stream's opening sample and the padding of short files)."""
        return self.quantization_channels // 2

    @property
    def mel_context(self) -> int:
        """Frames of context on each side that :meth:`forward` expects around the mel frames."""
        return 0 if self.upsampler is None else int(self.upsampler.context_frames)

    def check_codes(self, codes: torch.Tensor, name: str = "codes") -> None:
        """Shape ``(B, T)``, ``T >= 1``, and an integer dtype (O(1); see :meth:`check_code_range`)."""
        if not isinstance(codes, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor (B, T) of integer codes, got {type(codes).__name__}")
        if codes.dim() != 2 or codes.shape[-1] < 1:
            raise ValueError(f"{name} must be (B, T) with T >= 1, got shape {tuple(codes.shape)}")
        if codes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"{name} must be integer codes ({self.encoding}), got dtype {codes.dtype}")

    def check_code_range(self, codes: torch.Tensor, name: str = "codes") -> None:
        """A ``ValueError`` unless every code lies in ``[0, Q)``. Reads the codes (one reduction): for
        whole sequences and chunks, not per generated sample; CPU tensors only (on a GPU reading the
        result would stall the stream every training step; the embedding's device assert catches a
        bad ``mulaw`` code there), and skipped while ``torch.compile`` traces."""
        if codes.numel() == 0 or codes.device.type != "cpu" or torch.compiler.is_compiling():
            return
        lo, hi = (int(v) for v in torch.aminmax(codes))
        Q = self.quantization_channels
        if lo < 0 or hi >= Q:
            raise ValueError(
                f"{name} must lie in [0, {Q}) ({self.encoding} codes of this model), got range [{lo}, {hi}]: "
                "quantise a waveform with wavedil.encode(wav, model.encoding, model.quantization_channels)"
            )

    def embed_codes(self, codes: torch.Tensor, name: str = "codes") -> torch.Tensor:
        """``codes (B, T)`` -> ``(B, T, R)``; an out-of-range code the embedding meets is named (as
        ``name``) by a ``ValueError``. No value is read unless the lookup fails (traceable)."""
        try:
            return self.embed(codes.long())
        except IndexError:
            self.check_code_range(codes, name)
            raise

    def speaker_ids(self, speaker: torch.Tensor | int | None, batch: int) -> torch.Tensor | None:
        """``speaker`` (an int, or ids ``(B,)`` / ``(1,)``) as checked int64 ids ``(B,)`` on the model's
        device, or None for a model without speakers; a ``ValueError`` names what does not fit."""
        if self.speaker is None:
            if speaker is not None:
                raise ValueError("this model has no global conditioning; do not pass speaker")
            return None
        n = self.config.global_cond_classes
        if speaker is None:
            raise ValueError(f"this model is conditioned on {n} classes: pass speaker (B,)")
        if isinstance(speaker, (str, bytes)):
            raise ValueError(
                f"speaker must be integer class ids in [0, {n}), got {speaker!r}: look a name up with "
                "wavedil.resolve_speaker(model, name)"
            )
        try:
            ids = torch.as_tensor(speaker, device=self.embed.weight.device)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"speaker must be integer class ids (B,) or an int, got {speaker!r}") from None
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"speaker must be integer class ids in [0, {n}), got dtype {ids.dtype}: {speaker!r}")
        ids = ids.long().reshape(-1)
        if ids.numel() == 1:
            ids = ids.expand(batch)
        if ids.shape != (batch,):
            raise ValueError(f"speaker must be (B,) = ({batch},), got shape {tuple(ids.shape)}")
        if int(ids.min()) < 0 or int(ids.max()) >= n:
            raise ValueError(f"speaker ids must lie in [0, {n}), got {ids.tolist()}")
        return ids

    def speaker_condition(self, speaker: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        ids = self.speaker_ids(speaker, batch)
        return None if ids is None else self.speaker(ids)

    def check_mel(self, mel: torch.Tensor | None, samples: int | None = None) -> torch.Tensor | None:
        """``mel`` as ``(B, n_mels, M + 2 c)`` after checking that it fits this model (see
        :meth:`upsample`), without upsampling it; None for a model without mel conditioning.

        Raises:
            ValueError: a mel for a model without mel conditioning, none for a vocoder, or one
                of another type or shape (the message gives the shape wanted).
        """
        if self.upsampler is None:
            if mel is not None:
                raise ValueError("this model has no mel conditioning; do not pass mel")
            return None
        if mel is None:
            raise ValueError(
                f"this model is a vocoder conditioned on {self.mel_spec.n_mels}-band log-mel frames (hop "
                f"{self.mel_spec.hop_length}): pass mel (B, {self.mel_spec.n_mels}, frames + {2 * self.mel_context})"
            )
        if not isinstance(mel, torch.Tensor) or not mel.dtype.is_floating_point:
            raise ValueError(f"mel must be a float tensor of log-mel frames, got {getattr(mel, 'dtype', type(mel))}")
        if mel.dim() == 2:
            mel = mel.unsqueeze(0)
        n_mels, ctx, hop = self.mel_spec.n_mels, self.mel_context, self.mel_spec.hop_length
        if mel.dim() != 3 or mel.shape[1] != n_mels:
            raise ValueError(
                f"mel must be (B, {n_mels}, frames) for this model ({n_mels} mel bands), got shape {tuple(mel.shape)}"
            )
        frames = mel.shape[-1] - 2 * ctx
        if samples is not None:
            need = -(-samples // hop)
            if samples % hop:
                raise ValueError(
                    f"{samples} samples is not a whole number of mel frames (hop {hop}): use a multiple of {hop}"
                )
            if frames != need:
                raise ValueError(
                    f"mel has {mel.shape[-1]} frames; {samples} samples at hop {hop} need {need} frames + "
                    f"2 x {ctx} context = {need + 2 * ctx}"
                )
        elif frames < 1:
            raise ValueError(f"mel has {mel.shape[-1]} frames; it needs at least 1 + 2 x {ctx} context = {1 + 2 * ctx}")
        return mel

    def upsample(self, mel: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        """Raw log-mel frames -> conditioning at the sample rate.

        Args:
            mel: ``(B, n_mels, M + 2 c)`` (or ``(n_mels, M + 2 c)``) log-mel frames
                (:func:`wavedil.conditioning.log_mel`) with ``c = mel_context`` frames of context
                on each side of the ``M`` frames being conditioned on.
            samples: when given, ``M * hop`` must equal it.

        Returns:
            ``(B, n_mels, M * hop)``: sample ``n`` is conditioned on column ``n``.
        """
        mel = self.check_mel(mel, samples)
        if mel is None:
            return None
        n_mels, ctx, hop = self.mel_spec.n_mels, self.mel_context, self.mel_spec.hop_length
        frames = mel.shape[-1] - 2 * ctx
        if mel.shape[0] * frames <= UPSAMPLE_CHUNK_FRAMES or torch.is_grad_enabled():  # training: short segments,
            return self._upsample_pass(mel)  # whose graph holds every piece's buffers anyway
        # A long mel, or a large batch, in pieces of frames with their ctx frames of context on
        # either side: the same samples as one pass, whose convolutions held about 2.7 GB per two
        # minutes of 8 kHz audio at once, and 1.6 GB for a batch of 373 one-second mels (eval's
        # re-synthesis of a folder). The batch stays whole: a pass over fewer rows rounds
        # differently.
        cols = UpsampledColumns(self, mel)
        out = self.mel_mean.new_empty(mel.shape[0], n_mels, frames * hop)
        for k in range(cols.pieces):
            out[:, :, k * cols.width : (k + 1) * cols.width] = cols.piece(k)
        return out

    def _upsample_pass(self, mel: torch.Tensor) -> torch.Tensor:
        """One pass of the upsampler over checked ``mel (B, n_mels, F + 2 c)`` -> ``(B, n_mels, F * hop)``."""
        norm = (mel.to(self.mel_mean.dtype) - self.mel_mean[:, None]) / self.mel_std[:, None]
        return self.upsampler(norm, crop=self.mel_context)

    def forward(
        self, codes: torch.Tensor, speaker: torch.Tensor | None = None, mel: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``codes (B, T)`` -> head parameters ``(B, P, T)`` (logits for ``mulaw``; teacher forcing).

        The work runs channels last (see :meth:`DilatedStack.forward_btc`); the result is a
        ``(B, P, T)`` view of ``(B, T, P)`` parameters.
        """
        return self.forward_btc(codes, speaker, mel).transpose(1, 2)

    def forward_btc(
        self, codes: torch.Tensor, speaker: torch.Tensor | None = None, mel: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``codes (B, T)`` -> parameters ``(B, T, P)``, contiguous (what the loss consumes)."""
        self.check_codes(codes)
        self.check_code_range(codes)
        _, skip = self.stack.forward_btc(*self._stack_inputs(codes, speaker, mel))
        return self._head_btc(skip)

    def _head_btc(self, skip: torch.Tensor) -> torch.Tensor:
        """The output head on channels-last ``skip (B, T, S)`` -> parameters ``(B, T, P)``."""
        h1, h2 = self.head[1], self.head[3]
        h = F.linear(torch.relu(skip), h1.weight[:, :, 0], h1.bias)
        return F.linear(torch.relu(h), h2.weight[:, :, 0], h2.bias)

    def _stack_inputs(
        self, codes: torch.Tensor, speaker: torch.Tensor | None, mel: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``codes (B, T)`` -> the stack's inputs: ``x (B, T, R)``, global and local conditioning."""
        self.check_codes(codes)
        x = self.embed_codes(codes)  # (B, T, R)
        local = self.upsample(mel, codes.shape[1]) if (mel is not None or self.upsampler is not None) else None
        local = None if local is None else local.transpose(1, 2)  # (B, T, n_mels)
        return x, self.speaker_condition(speaker, codes.shape[0]), local

    def loss(
        self, segment: torch.Tensor, speaker: torch.Tensor | None = None, mel: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean NLL in bits per sample of ``segment[:, 1:]`` given its past; ``segment (B, T+1)``.

        Under bf16 on the CPU (autocast or its emulation) a ``mulaw`` model runs the stack, the
        head and the loss through the bf16 kernels of :mod:`wavedil.gated_lowp`."""
        if not isinstance(segment, torch.Tensor) or segment.dim() != 2 or segment.shape[-1] < 2:
            got = tuple(segment.shape) if isinstance(segment, torch.Tensor) else type(segment).__name__
            raise ValueError(f"segment must be (B, T + 1) integer codes with T >= 1 (inputs and targets), got {got}")
        self.check_codes(segment, "segment")
        self.check_code_range(segment, "segment")
        target = segment[:, 1:].reshape(-1).long()
        x, gc, lc = self._stack_inputs(segment[:, :-1], speaker, mel)
        mode = self.stack.lowp_mode(x) if self.dist.name == "mulaw" else None
        if mode is not None:
            from .gated_lowp import LowpCategoricalBits

            _, skip = self.stack.forward_btc(x, gc, lc, skip_bias=False)
            h1, h2 = self.head[1], self.head[3]
            return LowpCategoricalBits.apply(
                skip.flatten(0, 1), self.stack.skip_bias(), h1.weight[:, :, 0], h1.bias,
                h2.weight[:, :, 0], h2.bias, target, mode,
            )  # fmt: skip
        _, skip = self.stack.forward_btc(x, gc, lc)
        params = self._head_btc(skip)  # (B, T, P)
        return self.dist.bits(params.flatten(0, 1), target)

    def init_state(self, batch_size: int, device=None, dtype=None) -> StackState:
        """A fresh incremental-generation state (silence before the first step)."""
        device = self.embed.weight.device if device is None else device
        return self.stack.init_state(batch_size, device, dtype)

    def step(
        self,
        codes: torch.Tensor,
        state: StackState,
        speaker: torch.Tensor | None = None,
        local: torch.Tensor | None = None,
        *,
        global_cond: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, StackState]:
        """Cached form of :meth:`forward` for the next chunk ``codes (B, T)``, any ``T >= 1``.

        ``local``: the chunk's ``(B, n_mels, T)`` slice of :meth:`upsample` (vocoders only).
        ``global_cond``: instead of ``speaker``, its conditioning ``(B, Gc)`` as
        :meth:`speaker_condition` returns it, computed once by a loop over samples (which then
        skips the per-sample lookup and its check of the ids, a device sync on a GPU).
        Returns ``(params (B, P, T), new_state)``; equal to the matching slice of ``forward``
        over the whole sequence so far.
        """
        self.check_codes(codes)
        if codes.shape[-1] > 1:  # a chunk or a prompt; single samples are the generation loop's: O(1) there
            self.check_code_range(codes)
        if (local is None) != (self.upsampler is None):
            raise ValueError(
                "pass local (B, n_mels, T), the chunk's slice of model.upsample(mel), to a mel-conditioned model"
                if local is None
                else "this model has no mel conditioning; do not pass local"
            )
        if global_cond is not None and speaker is not None:
            raise ValueError("pass speaker or its global_cond, not both")
        x = self.embed_codes(codes).transpose(1, 2)
        if global_cond is None:
            global_cond = self.speaker_condition(speaker, codes.shape[0])
        (_, skip), state = self.stack.step(x, state, global_cond, local)
        return self.head(skip), state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class UpsampledColumns:
    """Columns ``[start, end)`` of ``model.upsample(mel)`` (``mel (B, n_mels, M + 2 c)``), computed
    a piece at a time as a caller reaches them and one piece held at a time: the values of the
    whole pass, without the conditioning of a whole file (160 bytes a sample at 40 bands: 1.1 GB
    for 14 minutes at 8 kHz) in memory. A piece is :attr:`piece_frames` frames (the frames
    :meth:`WaveNet.upsample` turns per pass, shared by the rows), i.e. :attr:`width` samples.

    >>> cols = UpsampledColumns(model, mel)       # doctest: +SKIP
    >>> cols(0, 160).shape                         # (B, n_mels, 160)  # doctest: +SKIP
    """

    def __init__(self, model: WaveNet, mel: torch.Tensor) -> None:
        mel = model.check_mel(mel)
        self.model, self.mel = model, mel
        self.frames = mel.shape[-1] - 2 * model.mel_context
        self.piece_frames = max(1, UPSAMPLE_CHUNK_FRAMES // mel.shape[0])
        self.width = self.piece_frames * model.mel_spec.hop_length
        self._k, self._cols = -1, mel.new_empty(0)

    @property
    def samples(self) -> int:
        """Columns in all: ``M * hop``."""
        return self.frames * self.model.mel_spec.hop_length

    @property
    def pieces(self) -> int:
        """The number of pieces."""
        return -(-self.frames // self.piece_frames)

    def piece(self, k: int) -> torch.Tensor:
        """Piece ``k``: ``(B, n_mels, width)`` columns from ``k * width`` (fewer in the last piece)."""
        if k != self._k:
            f0 = k * self.piece_frames
            f1 = min(self.frames, f0 + self.piece_frames)
            self._k, self._cols = k, self.model._upsample_pass(self.mel[:, :, f0 : f1 + 2 * self.model.mel_context])
        return self._cols

    def __call__(self, start: int, end: int) -> torch.Tensor:
        """``(B, n_mels, end - start)``: columns ``start .. end - 1``, ``0 <= start < end <= samples``."""
        assert 0 <= start < end <= self.samples, (start, end, self.samples)
        width = self.width
        parts = [
            self.piece(k)[:, :, max(start - k * width, 0) : end - k * width]
            for k in range(start // width, (end - 1) // width + 1)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
