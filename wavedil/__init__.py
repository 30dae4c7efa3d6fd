"""wavedil: WaveNet-style raw-audio generation with causal dilated convolutions.

The public API, re-exported explicitly. Tensors are ``(B, C, T)`` unless a docstring says
otherwise.
"""

from . import _openmp  # noqa: F401  (first: shortens OpenMP spin-waits before torch loads)
from .audio import decode, encode, linear_decode, linear_encode, mu_law_decode, mu_law_encode, read_audio, write_audio
from .conditioning import MelSpec, Upsampler, log_mel
from .describe import ModelDescription, describe_model
from .distributions import Categorical, Gaussian, MixtureOfLogistics, OutputDistribution, make_distribution
from .evaluate import FileEvaluation, evaluate_files
from .export import StreamingStep, to_onnx, to_torchscript
from .generate import GenerationResult, StreamingGenerator, generate
from .layers import (
    CausalConv1d,
    DilatedStack,
    ResidualBlock,
    StackState,
    causal_padding,
    dilation_schedule,
    receptive_field,
    receptive_field_coverage,
)
from .model import WaveNet, WaveNetConfig
from .pretrained import PretrainedInfo, list_pretrained, load_pretrained
from .vocoder_stream import StreamingVocoder
from .synthesis import SynthesisResult, generate_to_files, load_mel, resolve_speaker, vocode_file

__version__ = "0.1.0"

__all__ = [
    "CausalConv1d",
    "ResidualBlock",
    "DilatedStack",
    "StackState",
    "causal_padding",
    "dilation_schedule",
    "receptive_field",
    "receptive_field_coverage",
    "WaveNet",
    "WaveNetConfig",
    "generate",
    "GenerationResult",
    "StreamingGenerator",
    "StreamingVocoder",
    "StreamingStep",
    "to_torchscript",
    "to_onnx",
    "mu_law_encode",
    "mu_law_decode",
    "linear_encode",
    "linear_decode",
    "encode",
    "decode",
    "MelSpec",
    "Upsampler",
    "log_mel",
    "OutputDistribution",
    "Categorical",
    "MixtureOfLogistics",
    "Gaussian",
    "make_distribution",
    "read_audio",
    "write_audio",
    "generate_to_files",
    "vocode_file",
    "SynthesisResult",
    "load_mel",
    "resolve_speaker",
    "evaluate_files",
    "FileEvaluation",
    "describe_model",
    "ModelDescription",
    "load_pretrained",
    "list_pretrained",
    "PretrainedInfo",
]
