"""Output distributions: loss in bits per sample and sampling (mu-law softmax, mixture of
logistics, Gaussian).

Sampling is by inverse CDF from one uniform number per batch item and step, computed in
float64, so that every generation back-end that is handed the same uniforms draws the same
samples (the uniforms come from one seeded generator in :mod:`wavedil.generate`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "LN2",
    "OUTPUTS",
    "Categorical",
    "Gaussian",
    "MixtureOfLogistics",
    "OutputDistribution",
    "categorical_bits",
    "make_distribution",
    "sample_categorical",
]

LN2 = math.log(2.0)


def categorical_bits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood in bits per sample.

    Args:
        logits: ``(B, Q, T)`` or ``(N, Q)`` unnormalised scores (any float dtype; the loss is float32).
        target: ``(B, T)`` or ``(N,)`` int64 classes in ``[0, Q)``.
    """
    return F.cross_entropy(logits.float(), target) / LN2


#: The smallest uniform :func:`sample_categorical` uses (half the ``2**-53`` grid of float64 draws):
#: ``u = 0`` would pick class 0 even where its probability is 0. The fast back-end's kernel does the same.
U_FLOOR = 2.0**-54


def sample_categorical(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Draw one class per row by inverse CDF.

    Args:
        logits: ``(B, Q)``.
        u: ``(B,)`` uniforms in ``[0, 1)``; below :data:`U_FLOOR` (i.e. 0, for draws on a grid of
            ``2**-53``) they count as ``U_FLOOR``, so that a class of no probability is never drawn.
        temperature: ``> 0`` scales the logits (``logits / temperature``); ``0`` takes the argmax.

    Returns:
        ``(B,)`` int64 classes.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    cdf = probs.cumsum(dim=-1)
    # u = 0 would draw class 0 even where it has no probability: the smallest u counts as U_FLOOR
    target = (u.double().clamp(min=U_FLOOR) * cdf[:, -1]).unsqueeze(-1)  # (B, 1)
    # the first index whose cumulative sum reaches the target (searchsorted, side "left"), written
    # as a count of the sums below it: the same index for a non-decreasing cdf, and an operation
    # that every export target (ONNX included) has
    idx = (cdf < target).sum(dim=-1)
    return idx.clamp_(max=logits.shape[-1] - 1)


REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_bins(codes: torch.Tensor, classes: int, name: str) -> None:
    """A ``ValueError`` unless every code lies in ``[0, classes)`` (reads the codes once)."""
    if codes.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(codes))
    if lo < 0 or hi >= classes:
        raise ValueError(f"{name} must hold bins in [0, {classes}), got range [{lo}, {hi}]")


# --------------------------------------------------------------------------------------------
# Output distributions (the model's head): categorical over mu-law codes, discretised mixture
# of logistics and discretised Gaussian over linear (PCM) bins.
# --------------------------------------------------------------------------------------------

#: ``model.output`` choices and the waveform encoding each is trained on.
OUTPUTS: dict[str, str] = {"mulaw": "mulaw", "mol": "linear", "gaussian": "linear"}


class OutputDistribution:
    """What a WaveNet's head parameterises, per sample: a distribution over ``Q`` bins.

    ``params`` are the head's outputs for a batch of positions, ``(N, P)`` with
    ``P = param_channels``; ``target`` / returned codes are ``(N,)`` int64 bins in ``[0, Q)``.
    Every head has its loss in bits per sample over the very bins it samples from.
    """

    name: str = ""
    encoding: str = ""
    #: uniforms each sampling step consumes per batch item
    uniforms_per_sample: int = 1

    def __init__(self, classes: int) -> None:
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
            raise ValueError(f"quantization_channels must be an integer >= 2, got {classes!r}")
        self.classes = classes

    @property
    def param_channels(self) -> int:
        raise NotImplementedError

    def log_prob(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Natural-log probability ``(N,)`` (float64 for the continuous heads) of ``target``."""
        raise NotImplementedError

    def bits(self, params: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Negative log-likelihood in bits: the mean (float32 scalar), ``"sum"`` or ``"none"`` ``(N,)``."""
        _check_reduction(reduction)
        nll = -self.log_prob(params, target) / LN2
        if reduction == "none":
            return nll
        out = nll.sum() if reduction == "sum" else nll.mean()
        return out.float()

    def log_probs(self, params: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(N, Q)`` of every bin (for tests and small ``Q``; ``N * Q`` memory)."""
        n = params.shape[0]
        bins = torch.arange(self.classes, device=params.device)
        flat = params.unsqueeze(1).expand(n, self.classes, params.shape[1]).reshape(-1, params.shape[1])
        return self.log_prob(flat, bins.repeat(n)).view(n, self.classes)

    def sample(self, params: torch.Tensor, u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """One bin per row from ``params (B, P)`` and uniforms ``u (B,)`` or ``(B, U)``: ``(B,)`` int64."""
        raise NotImplementedError

    def _check_params(self, params: torch.Tensor) -> None:
        if not isinstance(params, torch.Tensor) or params.dim() != 2 or params.shape[1] != self.param_channels:
            got = tuple(params.shape) if isinstance(params, torch.Tensor) else type(params).__name__
            raise ValueError(f"{self.name} head parameters must be (N, {self.param_channels}), got shape {got}")

    def _check_target(self, params: torch.Tensor, target: torch.Tensor) -> None:
        """``target`` must be ``(N,)`` integer bins for ``params (N, P)`` (O(1): no data read)."""
        self._check_params(params)
        if not isinstance(target, torch.Tensor) or target.shape != params.shape[:1]:
            got = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
            raise ValueError(f"target must be ({params.shape[0]},) bins for params {tuple(params.shape)}, got {got}")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ValueError(f"target must hold integer bins in [0, {self.classes}), got dtype {target.dtype}")

    def _check_sample(self, params: torch.Tensor, u: torch.Tensor, temperature: float) -> None:
        """Shapes of ``params (N, P)`` and ``u (N,)`` / ``(N, U)``, and ``temperature``: O(1) per call."""
        self._check_params(params)
        U = self.uniforms_per_sample
        if not isinstance(u, torch.Tensor) or u.shape[0] != params.shape[0] or u.numel() != params.shape[0] * U:
            got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            want = f"({params.shape[0]},)" if U == 1 else f"({params.shape[0]}, {U})"
            raise ValueError(f"u must be {want} uniforms in [0, 1) for params {tuple(params.shape)}, got {got}")
        if isinstance(temperature, torch.Tensor):
            return  # a traced or exported step's input: checked where it was made
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            0 <= temperature < math.inf
        ):
            raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(classes={self.classes})"


class Categorical(OutputDistribution):
    """A ``Q``-way softmax over mu-law codes (the original WaveNet); ``P = Q`` logits."""

    name, encoding = "mulaw", "mulaw"

    @property
    def param_channels(self) -> int:
        return self.classes

    def log_prob(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -self._cross_entropy(params, target, "none")

    def bits(self, params: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        _check_reduction(reduction)
        return self._cross_entropy(params, target, reduction) / LN2

    def _cross_entropy(self, params: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        self._check_target(params, target)
        try:
            return F.cross_entropy(params.float(), target.long(), reduction=reduction)
        except IndexError:  # torch's "Target 300 is out of bounds": name the range
            _check_bins(target, self.classes, "target")
            raise

    def log_probs(self, params: torch.Tensor) -> torch.Tensor:
        self._check_params(params)
        return torch.log_softmax(params.double(), dim=-1)

    def sample(self, params: torch.Tensor, u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        self._check_sample(params, u, temperature)
        return sample_categorical(params, u.reshape(params.shape[0], -1)[:, 0], temperature)


def _log_bin_mass(log_cdf, lo: torch.Tensor, hi: torch.Tensor, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """``log(F(hi) - F(lo))`` for a CDF symmetric about 0 (``F(-x) = 1 - F(x)``), stably.

    ``lo, hi``: standardised bin edges (float64); the first bin reaches to ``-inf`` and the last
    to ``+inf``. Left of the centre the difference is taken between lower-tail values, right of
    it between upper-tail ones, so neither tail loses its digits to ``1 - F``.
    """
    right = (lo + hi) > 0
    a = torch.where(right, -hi, lo)  # log(F(b) - F(a)) = log(F(-a') - F(-b')) on the right
    b = torch.where(right, -lo, hi)
    la, lb = log_cdf(a), log_cdf(b)
    mid = lb + torch.log(-torch.expm1((la - lb).clamp(max=-1e-300)))
    out = torch.where(first, log_cdf(hi), mid)
    return torch.where(last, log_cdf(-lo), out)


class _LinearBins(OutputDistribution):
    """Continuous densities discretised over the ``Q`` linear bins of :func:`wavedil.audio.linear_encode`.

    Bin ``i`` spans ``[c_i - 1/Q, c_i + 1/Q)`` around ``c_i = 2 i / Q - 1``; the first and last
    bins take the tails. Losses are computed in float64 (a 16-bit bin is ~3e-5 wide).
    """

    encoding = "linear"

    def __init__(self, classes: int, log_scale_min: float = -7.0) -> None:
        super().__init__(classes)
        if classes % 2:
            raise ValueError(f"the {self.name} head needs an even quantization_channels, got {classes}")
        if isinstance(log_scale_min, bool) or not isinstance(log_scale_min, (int, float)) or not math.isfinite(log_scale_min):
            raise ValueError(f"log_scale_min must be a finite number, got {log_scale_min!r}")
        self.log_scale_min = float(log_scale_min)

    def _edges(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # an out-of-range bin would get a plausible, wrong density; on a GPU reading the check's
        # result would stall the stream every training step, so there the targets are trusted
        if target.device.type == "cpu" and not torch.compiler.is_compiling():
            _check_bins(target, self.classes, "target")
        t = target.long()
        centre = t.double() * (2.0 / self.classes) - 1.0
        half = 1.0 / self.classes
        return centre - half, centre + half, t == 0, t == self.classes - 1

    def _to_bin(self, x: torch.Tensor) -> torch.Tensor:
        """Values ``x`` in ``[-1, 1]`` -> their bins; NaN (from NaN uniforms, say) -> the middle bin
        (the value 0), never a code outside ``[0, Q)``."""
        half = self.classes // 2
        return torch.round((x.double() + 1.0) * half).nan_to_num_(nan=float(half)).clamp_(0, self.classes - 1).long()


class MixtureOfLogistics(_LinearBins):
    """Discretised mixture of ``K`` logistics (PixelCNN++, Parallel WaveNet) over linear bins.

    ``params (N, 3K)``: mixture logits, means, log-scales (clamped below at ``log_scale_min``).
    Sampling: a component by inverse CDF of ``softmax(logits / temperature)`` (first uniform),
    then a logistic value with its scale times ``temperature`` (second uniform), put in its bin:
    exactly a draw from the discretised mixture at ``temperature = 1``.
    """

    name = "mol"
    uniforms_per_sample = 2

    def __init__(self, classes: int, mixtures: int = 10, log_scale_min: float = -7.0) -> None:
        super().__init__(classes, log_scale_min)
        if isinstance(mixtures, bool) or not isinstance(mixtures, int) or mixtures < 1:
            raise ValueError(f"mixtures must be an integer >= 1, got {mixtures!r}")
        self.mixtures = mixtures

    @property
    def param_channels(self) -> int:
        return 3 * self.mixtures

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._check_params(params)
        p = params.double()
        k = self.mixtures
        return p[:, :k], p[:, k : 2 * k], p[:, 2 * k :].clamp(min=self.log_scale_min)

    def log_prob(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check_target(params, target)
        logit, mean, log_scale = self._split(params)
        lo, hi, first, last = self._edges(target)
        inv = torch.exp(-log_scale)
        per = _log_bin_mass(
            F.logsigmoid, (lo[:, None] - mean) * inv, (hi[:, None] - mean) * inv, first[:, None], last[:, None]
        )
        return torch.logsumexp(torch.log_softmax(logit, dim=-1) + per, dim=-1)

    def sample(self, params: torch.Tensor, u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        self._check_sample(params, u, temperature)
        logit, mean, log_scale = self._split(params)
        u = u.reshape(params.shape[0], -1).double()
        if temperature == 0:
            k = logit.argmax(dim=-1, keepdim=True)
            return self._to_bin(mean.gather(1, k)[:, 0])
        k = sample_categorical(logit, u[:, 0], temperature).unsqueeze(1)
        v = u[:, 1].clamp(1e-300, 1.0 - 2**-53)
        x = mean.gather(1, k)[:, 0] + torch.exp(log_scale.gather(1, k)[:, 0]) * temperature * (
            torch.log(v) - torch.log1p(-v)
        )
        return self._to_bin(x)

    def __repr__(self) -> str:
        return f"MixtureOfLogistics(classes={self.classes}, mixtures={self.mixtures}, log_scale_min={self.log_scale_min})"


class Gaussian(_LinearBins):
    """A single discretised Gaussian over linear bins (ClariNet); ``params (N, 2)``: mean, log-scale.

    The log-scale is clamped below at ``log_scale_min`` (default -7). Sampling: inverse normal
    CDF of one uniform, the standard deviation times ``temperature``, put in its bin.
    """

    name = "gaussian"

    @property
    def param_channels(self) -> int:
        return 2

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_params(params)
        p = params.double()
        return p[:, 0], p[:, 1].clamp(min=self.log_scale_min)

    def log_prob(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check_target(params, target)
        mean, log_scale = self._split(params)
        lo, hi, first, last = self._edges(target)
        inv = torch.exp(-log_scale)
        return _log_bin_mass(torch.special.log_ndtr, (lo - mean) * inv, (hi - mean) * inv, first, last)

    def sample(self, params: torch.Tensor, u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        self._check_sample(params, u, temperature)
        mean, log_scale = self._split(params)
        if temperature == 0:
            return self._to_bin(mean)
        v = u.reshape(params.shape[0], -1)[:, 0].double().clamp(1e-300, 1.0 - 2**-53)
        return self._to_bin(mean + torch.exp(log_scale) * temperature * torch.special.ndtri(v))

    def __repr__(self) -> str:
        return f"Gaussian(classes={self.classes}, log_scale_min={self.log_scale_min})"


def make_distribution(
    output: str, classes: int, mixtures: int = 10, log_scale_min: float = -7.0
) -> OutputDistribution:
    """The head for ``model.output`` = ``mulaw`` | ``mol`` | ``gaussian`` (see :data:`OUTPUTS`)."""
    if output == "mulaw":
        return Categorical(classes)
    if output == "mol":
        return MixtureOfLogistics(classes, mixtures, log_scale_min)
    if output == "gaussian":
        return Gaussian(classes, log_scale_min)
    raise ValueError(f"model.output must be one of {sorted(OUTPUTS)}, got {output!r}")
