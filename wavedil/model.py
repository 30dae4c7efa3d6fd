"""WaveNet: input embedding + dilated causal stack + skip sum + output head.

Codes go in as ``(B, T)`` int64 mu-law classes; logits come out as ``(B, Q, T)`` where
``logits[:, :, t]`` is the distribution of sample ``t + 1`` given samples ``<= t``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import torch
import torch.nn.functional as F
from torch import nn

from .distributions import categorical_bits
from .layers import DilatedStack, StackState, dilation_schedule

__all__ = ["WaveNet", "WaveNetConfig"]


@dataclass(frozen=True)
class WaveNetConfig:
    """Plain, typed hyper-parameters of :class:`WaveNet` (what a checkpoint stores)."""

    quantization_channels: int = 256  # Q: mu-law classes in and out
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

    def schedule(self) -> tuple[int, ...]:
        if self.dilations is not None:
            return tuple(int(d) for d in self.dilations)
        return dilation_schedule(self.layers_per_stack, self.stacks)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dilations"] = None if self.dilations is None else list(self.dilations)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "WaveNetConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown WaveNet model options {unknown}; valid ones are {sorted(known)}")
        d = dict(d)
        if d.get("dilations") is not None:
            d["dilations"] = tuple(int(x) for x in d["dilations"])
        return cls(**d)


class WaveNet(nn.Module):
    """The WaveNet of van den Oord et al. (2016) over mu-law codes.

    Shapes:
        ``forward(codes (B, T)) -> logits (B, Q, T)``.

    >>> net = WaveNet(WaveNetConfig(residual_channels=8, gate_channels=16, skip_channels=8,
    ...               head_channels=8, layers_per_stack=3, stacks=1))
    >>> net(torch.randint(0, 256, (2, 20))).shape
    torch.Size([2, 256, 20])
    """

    def __init__(self, config: WaveNetConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = WaveNetConfig(**kwargs)
        elif kwargs:
            raise ValueError(f"give a WaveNetConfig or keyword options, not both (got {sorted(kwargs)})")
        self.config = config
        Q = config.quantization_channels
        if isinstance(Q, bool) or not isinstance(Q, int) or Q < 2:
            raise ValueError(f"quantization_channels must be an integer >= 2, got {Q!r}")
        for name in ("head_channels", "global_cond_classes", "global_cond_channels"):
            v = getattr(config, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "head_channels" else 0):
                raise ValueError(f"{name} must be a non-negative integer (head_channels >= 1), got {v!r}")
        if (config.global_cond_classes > 0) != (config.global_cond_channels > 0):
            raise ValueError(
                "global conditioning needs both global_cond_classes and global_cond_channels > 0, got "
                f"{config.global_cond_classes} and {config.global_cond_channels}"
            )
        self.embed = nn.Embedding(Q, config.residual_channels)
        self.stack = DilatedStack(
            config.residual_channels,
            config.gate_channels,
            config.skip_channels,
            config.kernel_size,
            dilations=config.schedule(),
            global_cond_channels=config.global_cond_channels,
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
            nn.Conv1d(config.head_channels, Q, 1),
        )

    @property
    def receptive_field(self) -> int:
        """Past samples (current one included) that one prediction depends on."""
        return self.stack.receptive_field

    @property
    def quantization_channels(self) -> int:
        return self.config.quantization_channels

    def _check_codes(self, codes: torch.Tensor, name: str = "codes") -> None:
        if codes.dim() != 2 or codes.shape[-1] < 1:
            raise ValueError(f"{name} must be (B, T) with T >= 1, got shape {tuple(codes.shape)}")
        if codes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"{name} must be integer mu-law classes, got dtype {codes.dtype}")

    def _global(self, speaker: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if self.speaker is None:
            if speaker is not None:
                raise ValueError("this model has no global conditioning; do not pass speaker")
            return None
        if speaker is None:
            raise ValueError(f"this model is conditioned on {self.config.global_cond_classes} classes: pass speaker (B,)")
        speaker = torch.as_tensor(speaker, device=self.embed.weight.device).long().reshape(-1)
        if speaker.numel() == 1:
            speaker = speaker.expand(batch)
        if speaker.shape != (batch,):
            raise ValueError(f"speaker must be (B,) = ({batch},), got shape {tuple(speaker.shape)}")
        n = self.config.global_cond_classes
        if int(speaker.min()) < 0 or int(speaker.max()) >= n:
            raise ValueError(f"speaker ids must lie in [0, {n}), got {speaker.tolist()}")
        return self.speaker(speaker)

    def forward(self, codes: torch.Tensor, speaker: torch.Tensor | None = None) -> torch.Tensor:
        """``codes (B, T)`` int64 -> ``logits (B, Q, T)`` (teacher forcing).

        The work runs channels last (see :meth:`DilatedStack._forward_btc`); the result is a
        ``(B, Q, T)`` view of ``(B, T, Q)`` logits.
        """
        return self.forward_btc(codes, speaker).transpose(1, 2)

    def forward_btc(self, codes: torch.Tensor, speaker: torch.Tensor | None = None) -> torch.Tensor:
        """``codes (B, T)`` -> logits ``(B, T, Q)``, contiguous (what the loss consumes)."""
        self._check_codes(codes)
        x = self.embed(codes.long())  # (B, T, R)
        _, skip = self.stack._forward_btc(x, self._global(speaker, codes.shape[0]), None)  # (B, T, S)
        h1, h2 = self.head[1], self.head[3]
        h = F.linear(torch.relu(skip), h1.weight[:, :, 0], h1.bias)
        return F.linear(torch.relu(h), h2.weight[:, :, 0], h2.bias)  # (B, T, Q)

    def loss(self, segment: torch.Tensor, speaker: torch.Tensor | None = None) -> torch.Tensor:
        """Mean NLL in bits per sample of ``segment[:, 1:]`` given its past; ``segment (B, T+1)``."""
        logits = self.forward_btc(segment[:, :-1], speaker)  # (B, T, Q)
        return categorical_bits(logits.flatten(0, 1), segment[:, 1:].reshape(-1).long())

    def init_state(self, batch_size: int, device=None, dtype=None) -> StackState:
        """A fresh incremental-generation state (silence before the first step)."""
        device = self.embed.weight.device if device is None else device
        return self.stack.init_state(batch_size, device, dtype)

    def step(
        self, codes: torch.Tensor, state: StackState, speaker: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, StackState]:
        """Cached form of :meth:`forward` for the next chunk ``codes (B, T)``, any ``T >= 1``.

        Returns ``(logits (B, Q, T), new_state)``; equal to the matching slice of ``forward``
        over the whole sequence so far.
        """
        self._check_codes(codes)
        x = self.embed(codes.long()).transpose(1, 2)
        (_, skip), state = self.stack.step(x, state, self._global(speaker, codes.shape[0]))
        return self.head(skip), state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

