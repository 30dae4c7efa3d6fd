"""The bf16 training path of the gated layer: close to fp32, fp32 gradients, and actually taken.

Tolerance, derived: bfloat16 keeps 8 significant bits, so its unit roundoff is
``u = 2**-8 ~ 3.9e-3``. A matmul whose two operands are rounded to bf16 (and whose fp32-accumulated
result is rounded to bf16 once, as CPU and CUDA bf16 GEMMs return it) has, for zero-mean data, a
normwise relative error of about ``u`` (three roundings of ~``u/sqrt(3)`` each, adding in
quadrature); the fan-in does not enter because the rounding errors of the ``K`` terms are
independent, like the terms themselves. Errors of chained products add in quadrature too, so a
quantity that passes through ``depth`` bf16 products is within ``~sqrt(depth) * u``: the outputs
pass through 2 (conv, then the 1x1 output), the gradients through at most 3 (``g_z``, then the
conv's input or weight gradient). The tests allow twice that, ``2 * sqrt(depth) * u`` (1.1e-2
forward, 1.4e-2 gradients; observed: ~1.5e-3 and ~5e-3), and demand an error above ``u / 64``
for the outputs, which a computation that silently stayed in fp32 (error ~1e-7) cannot reach.
"""

import math

import pytest
import torch

from wavedil import DilatedStack, ResidualBlock
from wavedil.emulation import Bf16MatmulEmulation
from wavedil.gated import NOT_TAKEN, GatedLayerFunction, gated_fast_path

U = 2.0**-8  # bf16 unit roundoff


def tol(depth: int) -> float:
    return 2 * math.sqrt(depth) * U


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Normwise relative error ``||a - ref|| / ||ref||``, in float64."""
    a, ref = a.detach().double(), ref.detach().double()
    return float((a - ref).norm() / ref.norm())


def _inputs(B=2, T=40, R=16, G=32, S=24, k=3, cond="b1", seed=0):
    """fp32 leaves with the scales of an initialised layer (unit-variance activations)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    c = {"b1": rnd(B, 1, G), "bt": rnd(B, T, G), None: None}[cond]
    return (
        rnd(B, T, R),  # x
        rnd(B, T, S),  # skip sum so far
        c,
        rnd(G, R, k, scale=(1 / (R * k)) ** 0.5),  # w_conv
        rnd(G, scale=0.1),  # b_conv
        rnd(R + S, G // 2, scale=(2 / G) ** 0.5),  # w_out
        rnd(R, scale=0.1),  # b_res
    )


@pytest.mark.parametrize("k, dilation, cond", [(2, 1, "b1"), (3, 2, "bt"), (2, 7, None), (2, 64, "b1")])
def test_bf16_layer_matches_fp32_forward_and_every_gradient(k, dilation, cond):
    inputs = _inputs(k=k, cond=cond)
    ref = GatedLayerFunction.apply(*inputs, dilation, False, None)
    low = GatedLayerFunction.apply(*inputs, dilation, False, torch.bfloat16)
    for name, a, b in zip(("residual", "skip"), low, ref):
        assert a.dtype == torch.float32
        err = rel_err(a, b)
        assert err < tol(2), f"{name}: relative error {err:.2e} >= {tol(2):.2e}"
        assert err > U / 64, f"{name}: relative error {err:.2e}: the matmuls did not run in bf16"
    g = torch.Generator().manual_seed(1)
    grads_out = [torch.randn(o.shape, generator=g) for o in ref]
    wanted = [t for t in inputs if t is not None]
    names = [n for n, t in zip(("x", "skip", "cond", "w_conv", "b_conv", "w_out", "b_res"), inputs) if t is not None]
    g_ref = torch.autograd.grad(ref, wanted, grads_out)
    g_low = torch.autograd.grad(low, wanted, grads_out)
    for name, a, b, t in zip(names, g_low, g_ref, wanted):
        assert a.dtype == t.dtype == torch.float32, f"{name}: gradient dtype {a.dtype}"
        err = rel_err(a, b)
        assert err < tol(3), f"grad {name}: relative error {err:.2e} >= {tol(3):.2e}"


def test_bf16_layer_inplace_skip_and_bf16_conditioning():
    x, s, c, w, b, wo, br = _inputs(k=2)
    c_low = c.detach().bfloat16().requires_grad_()  # what nn.Linear gives under autocast
    ref_acc = s * 1.0
    ref = GatedLayerFunction.apply(x, ref_acc, c_low.float(), w, b, wo, br, 3, True, None)
    acc = s * 1.0
    low = GatedLayerFunction.apply(x, acc, c_low, w, b, wo, br, 3, True, torch.bfloat16)
    assert low[1] is acc
    assert rel_err(low[1], ref[1]) < tol(2)
    (g_c,) = torch.autograd.grad(low[1].square().sum(), [c_low])
    assert g_c.dtype == torch.bfloat16  # the gradient comes back in the input's dtype
    (g_ref,) = torch.autograd.grad(ref[1].square().sum(), [c_low])
    assert rel_err(g_c, g_ref) < tol(3) + U  # + one more rounding: the bf16 gradient itself


def test_fast_path_decision():
    x = torch.randn(2, 5, 4)
    w = torch.randn(8, 4, 2)
    assert gated_fast_path(x, w, None) is None
    assert gated_fast_path(x, w.double(), None) == NOT_TAKEN
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gated_fast_path(x, w, None) == torch.bfloat16
        assert gated_fast_path(x.bfloat16(), w, None) == NOT_TAKEN  # fp32 activations only
    with torch.autocast("cpu", dtype=torch.float16):
        assert gated_fast_path(x, w, None) == NOT_TAKEN


def _no_fallback(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the plain-autograd fallback ran instead of GatedLayerFunction")

    monkeypatch.setattr(ResidualBlock, "_forward_btc_autograd", fail)


@pytest.mark.parametrize("ctx", [lambda: torch.autocast("cpu", dtype=torch.bfloat16), Bf16MatmulEmulation])
def test_autocast_bf16_takes_the_fast_path(monkeypatch, ctx):
    """On the CPU the stack runs its gated layers through wavedil.gated_lowp (native bf16 or
    its emulation): close to float32, float32 gradients, and no per-layer path."""
    torch.manual_seed(0)
    stack = DilatedStack(8, 16, 12, kernel_size=2, dilations=(1, 2, 4), global_cond_channels=3, local_cond_channels=2)
    x = torch.randn(2, 8, 30, requires_grad=True)
    gc, lc = torch.randn(2, 3), torch.randn(2, 2, 30)
    _, ref = stack(x, gc, lc)
    g_ref = torch.autograd.grad(ref.square().sum(), [x, *stack.parameters()])
    _no_fallback(monkeypatch)
    monkeypatch.setattr(GatedLayerFunction, "apply", ResidualBlock._forward_btc_autograd)  # fails too
    with ctx():
        _, skip = stack(x, gc, lc)
    assert skip.dtype == torch.float32
    assert rel_err(skip, ref) < len(stack.layers) * tol(2)
    g_low = torch.autograd.grad(skip.square().sum(), [x, *stack.parameters()])
    for (name, p), a, b in zip([("x", x), *stack.named_parameters()], g_low, g_ref):
        assert a.dtype == p.dtype == torch.float32, name
        assert rel_err(a, b) < len(stack.layers) * tol(3), name


def test_autocast_bf16_layer_runs_the_function(monkeypatch):
    torch.manual_seed(0)
    block = ResidualBlock(8, 16, 12, kernel_size=2, dilation=2)
    x = torch.randn(2, 20, 8, requires_grad=True)
    _no_fallback(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res, skip = block.forward_btc(x, None)
    assert "GatedLayerFunction" in res.grad_fn.name()
    monkeypatch.undo()
    with torch.autocast("cpu", dtype=torch.float16):  # not bf16: plain autograd, as before
        res16, _ = block.forward_btc(x, None)
    assert "GatedLayerFunction" not in res16.grad_fn.name()
