"""Mixed precision and torch.compile give the same losses as float32 eager, within tolerance."""

import pytest
import torch

from conftest import tiny_config
from wavedil import WaveNet
from wavedil.distributions import categorical_bits
from wavedil.train import TrainingError, autocast_for


def _batch():
    torch.manual_seed(0)
    return WaveNet(tiny_config()), torch.randint(0, 32, (2, 201))


def test_bf16_autocast_on_cpu_is_close_and_loss_stays_float32():
    net, seg = _batch()
    ctx, scaler = autocast_for(torch.device("cpu"), "bf16")
    assert scaler is None
    with ctx():
        logits = net(seg[:, :-1])
    assert logits.dtype == torch.bfloat16
    loss = categorical_bits(logits, seg[:, 1:])
    assert loss.dtype == torch.float32
    assert abs(loss.item() - net.loss(seg).item()) < 0.05


@pytest.mark.parametrize("precision, match", [("16", "needs a CUDA GPU"), ("8", "must be 32, bf16, bf16-emulated, 16 or auto")])
def test_bad_precision_is_a_clear_error(precision, match):
    with pytest.raises(TrainingError, match=match):
        autocast_for(torch.device("cpu"), precision)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="float16 training needs a CUDA GPU")
def test_fp16_with_scaler_on_gpu():
    net, seg = _batch()
    net, seg = net.cuda(), seg.cuda()
    ctx, scaler = autocast_for(torch.device("cuda"), "16")
    with ctx():
        logits = net(seg[:, :-1])
    loss = categorical_bits(logits, seg[:, 1:])
    scaler.scale(loss).backward()
    assert abs(loss.item() - net.loss(seg).item()) < 0.05


@pytest.mark.slow
def test_compiled_and_eager_give_the_same_loss_and_gradients():
    net, seg = _batch()
    compiled = torch.compile(net)
    eager_loss = categorical_bits(net(seg[:, :-1]), seg[:, 1:])
    eager_loss.backward()
    g_eager = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    comp_loss = categorical_bits(compiled(seg[:, :-1]), seg[:, 1:])
    comp_loss.backward()
    assert abs(comp_loss.item() - eager_loss.item()) < 1e-5
    for a, p in zip(g_eager, net.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-6)
