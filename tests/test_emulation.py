"""bf16 matmul emulation (trainer.precision=bf16-emulated): the numbers of native bf16 autocast.

Native bf16 autocast and the emulation compute the same products of the same bf16-rounded
operands; only the order of the fp32 accumulation may differ (and, outside the gated layers,
elementwise ops that autocast runs on bf16 tensors). So their losses and gradients must agree
far more closely than either agrees with float32: within ``U / 16`` where bf16 against fp32 is
off by more than ``U / 64`` (``U = 2**-8``, the bf16 unit roundoff).
"""

import pytest
import torch

from conftest import tiny_config
from wavedil import WaveNet
from wavedil.checkpoint import list_checkpoints, load_checkpoint
from wavedil.config import compose
from wavedil.emulation import Bf16MatmulEmulation, bf16_emulation_active, round_bf16
from wavedil.gated import EMULATED_BF16, NOT_TAKEN, GatedLayerFunction, gated_fast_path
from wavedil.train import train
from wavedil.training_utils import autocast_for

from test_gated_bf16 import U, _inputs, rel_err


def _loss_and_grads(net: WaveNet, seg: torch.Tensor, ctx) -> tuple[float, torch.Tensor]:
    net.zero_grad()
    with ctx():
        loss = net.loss(seg)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])


@pytest.mark.parametrize("cfg", [{}, {"layers_per_stack": 4, "stacks": 2, "head_channels": 48}])
def test_emulation_equals_native_bf16_autocast_and_differs_from_fp32(cfg):
    torch.manual_seed(0)
    net = WaveNet(tiny_config(**cfg))
    seg = torch.randint(0, 32, (2, 301))
    l32, g32 = _loss_and_grads(net, seg, lambda: torch.autocast("cpu", enabled=False))
    lb, gb = _loss_and_grads(net, seg, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    le, ge = _loss_and_grads(net, seg, Bf16MatmulEmulation)
    assert rel_err(gb, g32) > U / 64, "native bf16 did not round: nothing to compare against"
    assert rel_err(ge, g32) > U / 64
    assert rel_err(ge, gb) < U / 16
    assert abs(le - lb) < abs(l32 - lb) / 4 + 1e-6


@pytest.mark.parametrize("k, dilation, cond", [(2, 1, "b1"), (3, 2, "bt"), (2, 64, None)])
def test_emulated_gated_layer_equals_the_native_bf16_one(k, dilation, cond):
    inputs = _inputs(k=k, cond=cond)
    names = [n for n, t in zip(["x", "skip", "cond", "w_conv", "b_conv", "w_out", "b_res"], inputs) if t is not None]
    outs = {}
    for mode in (torch.bfloat16, EMULATED_BF16, None):
        for t in inputs:
            if t is not None:
                t.grad = None
        x_new, skip_new = GatedLayerFunction.apply(*inputs, dilation, False, mode)
        (x_new.sum() + (skip_new * skip_new).sum()).backward()
        outs[mode] = dict(zip(["x_new", "skip_new"] + [f"grad {n}" for n in names],
                              [x_new, skip_new] + [t.grad for t in inputs if t is not None]))
    for name, emu in outs[EMULATED_BF16].items():
        assert emu.dtype == torch.float32
        assert rel_err(emu, outs[torch.bfloat16][name]) < U / 16, name
    for name in ["x_new", "skip_new", "grad x", "grad w_conv", "grad w_out"]:  # products: rounded
        assert rel_err(outs[EMULATED_BF16][name], outs[None][name]) > U / 256, f"{name} was not rounded"


def test_the_gated_fast_path_is_taken_under_emulation_only():
    x = torch.randn(1, 8, 4)
    w = torch.randn(8, 4, 2)
    assert not bf16_emulation_active() and gated_fast_path(x, w) is None
    with Bf16MatmulEmulation():
        assert bf16_emulation_active() and gated_fast_path(x, w) == EMULATED_BF16
        assert gated_fast_path(x.double(), w.double()) != EMULATED_BF16  # only float32 is emulated
    assert not bf16_emulation_active()


def test_round_bf16_rounds_values_and_gradients_to_nearest_even():
    x = torch.tensor([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-9, 3.0], requires_grad=True)
    y = round_bf16(x)
    assert y.dtype == torch.float32
    assert y.tolist() == [1.0, 1.0 + 2.0**-6, 1.0, 3.0]  # ties to even, then below half an ulp
    y.backward(torch.tensor([1.0 + 2.0**-9, 1.0, 1.0, 1.0 + 3 * 2.0**-8]))
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0 + 2.0**-6]
    assert round_bf16(None) is None and round_bf16(torch.tensor([3])).dtype == torch.int64


def test_products_are_rounded_and_other_ops_are_not():
    a, b = torch.randn(16, 32, dtype=torch.float32), torch.randn(32, 8)
    with Bf16MatmulEmulation():
        p = a @ b
        s = a + 2.0**-12
    assert torch.equal(p, p.to(torch.bfloat16).float()) and not torch.equal(p, a @ b)
    torch.testing.assert_close(p, (a.bfloat16().float() @ b.bfloat16().float()).bfloat16().float())
    assert torch.equal(s, a + 2.0**-12)


BASE = ["model=tiny", "trainer=debug", "trainer.sample_every=0", "data.segment_length=200", "data.batch_size=2",
        "data.valid_segments=2", "trainer.device=cpu", "trainer.threads=1", "trainer.max_steps=4",
        "trainer.ckpt_every=2", "trainer.keep_last=5", "trainer.precision=bf16-emulated"]


@pytest.mark.parametrize("precision", ["bf16-emulated", "bf16"])
def test_training_in_bf16_resumes_exactly(tmp_path, precision):
    """Native bf16 too: on the CPU both run the bf16 kernels of wavedil.gated_lowp."""
    assert autocast_for(torch.device("cpu"), "bf16-emulated")[0] is Bf16MatmulEmulation
    run_dir = tmp_path / "run"
    cfg = BASE + [f"trainer.precision={precision}"]
    whole = train(compose(cfg), run_dir)
    assert whole["precision"] == precision and whole["step"] == 4
    newest = list_checkpoints(run_dir / "checkpoints")[0]
    assert load_checkpoint(newest)["step"] == 4
    newest.unlink()  # back to the step-2 checkpoint: resume from there
    resumed = train(compose(cfg + ["trainer.resume=true"]), run_dir)
    assert resumed["step"] == 4 and resumed["params_sha256"] == whole["params_sha256"]


def test_bf16_autocast_takes_the_hand_written_function_on_the_cpu_only():
    """On CUDA, bf16 autocast's plain ops were measured faster than the function (bench/README.md)."""
    x, w = torch.randn(2, 5, 4), torch.randn(8, 4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gated_fast_path(x, w) == torch.bfloat16
    if torch.cuda.is_available():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert gated_fast_path(x.cuda(), w.cuda()) == NOT_TAKEN
