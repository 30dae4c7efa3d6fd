import pytest
import torch

from wavedil import WaveNet, WaveNetConfig


def tiny_config(**overrides) -> WaveNetConfig:
    base = dict(
        residual_channels=8,
        gate_channels=16,
        skip_channels=12,
        head_channels=10,
        layers_per_stack=3,
        stacks=2,
        quantization_channels=32,
    )
    base.update(overrides)
    return WaveNetConfig(**base)


@pytest.fixture
def tiny_model() -> WaveNet:
    torch.manual_seed(0)
    return WaveNet(tiny_config()).eval()
