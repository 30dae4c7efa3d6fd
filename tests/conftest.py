import logging
import sys

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


@pytest.fixture
def hydra_logging(monkeypatch):
    """Undo what an in-process ``wavedil train`` sets for the process after the test: ``sys.argv``, and
    Hydra's job logging, whose handlers write to this test's captured standard error (closed after it)."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))

    def loggers() -> list[logging.Logger]:
        known = logging.Logger.manager.loggerDict.values()
        return [logging.getLogger(), *(lg for lg in known if isinstance(lg, logging.Logger))]

    saved = {lg: (lg.handlers[:], lg.level, lg.propagate) for lg in loggers()}
    yield
    for lg in loggers():
        handlers, level, propagate = saved.get(lg, ([], logging.NOTSET, True))
        for handler in lg.handlers:
            if handler not in handlers:
                handler.close()
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate
