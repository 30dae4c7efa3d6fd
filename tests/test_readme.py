"""The README's block example runs as written and is causal."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_forecaster_example_runs_and_is_causal():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "class Forecaster" in b)
    ns: dict = {}
    exec(example, ns)
    torch.manual_seed(0)
    model = ns["Forecaster"](features=3)
    x = torch.randn(2, 3, 100, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 3, 100)
    y[:, :, 40].sum().backward()
    assert torch.all(x.grad[:, :, 41:] == 0) and x.grad[:, :, 40].abs().sum() > 0
