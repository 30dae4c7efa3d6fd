"""The training fast path's hand-written backward (``_GatedLayer``) against plain autograd."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from wavedil import DilatedStack, WaveNet
from wavedil.distributions import categorical_bits
from wavedil.layers import _GatedLayer


def _layer_inputs(B=2, T=9, R=3, G=4, S=5, k=2, skip=True, cond=None, bias=True):
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    c = {"bt": rnd(B, T, G), "b1": rnd(B, 1, G), None: None}[cond]
    return (rnd(B, T, R), rnd(B, T, S) if skip else None, c, rnd(G, R, k), rnd(G) if bias else None,
            rnd(R + S, G // 2), rnd(R))


@pytest.mark.parametrize("k, dilation", [(2, 1), (2, 4), (3, 2), (2, 20)])  # 20: the past tap is beyond T
@pytest.mark.parametrize("skip, cond, bias", [(True, None, True), (False, "bt", True), (True, "b1", False)])
def test_gated_layer_gradcheck(k, dilation, skip, cond, bias):
    x, s, c, w, b, wo, br = _layer_inputs(k=k, skip=skip, cond=cond, bias=bias)
    assert torch.autograd.gradcheck(
        lambda *a: _GatedLayer.apply(*a, dilation, False), (x, s, c, w, b, wo, br), eps=1e-6, atol=1e-8
    )


def test_gated_layer_inplace_skip_gradcheck():
    x, s, c, w, b, wo, br = _layer_inputs(k=3, cond="b1")

    def f(x, s, *rest):
        acc = s * 1.0  # a non-leaf the layer may add into
        _, out = _GatedLayer.apply(x, acc, *rest, 2, True)
        assert out is acc
        return out

    assert torch.autograd.gradcheck(f, (x, s, c, w, b, wo, br), eps=1e-6, atol=1e-8)


def _plain_layer(x, skip, cond, w, b, wo, br, dilation):
    """The same layer in plain autograd ops, channels first (conv1d with left padding)."""
    k = w.shape[-1]
    h = F.conv1d(F.pad(x.transpose(1, 2), ((k - 1) * dilation, 0)), w, b, dilation=dilation).transpose(1, 2)
    if cond is not None:
        h = h + cond
    a, g = h.chunk(2, dim=-1)
    z = torch.tanh(a) * torch.sigmoid(g)
    R = x.shape[-1]
    out = z @ wo.t()
    return x + out[..., :R] + br, (out[..., R:] if skip is None else skip + out[..., R:])


@pytest.mark.parametrize("k, dilation", [(2, 3), (3, 1)])
def test_gated_layer_matches_plain_autograd(k, dilation):
    inputs = _layer_inputs(B=3, T=17, R=4, G=6, S=5, k=k, cond="b1")
    fast = _GatedLayer.apply(*inputs, dilation, False)
    plain = _plain_layer(*inputs, dilation)
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    gf = torch.autograd.grad(sum((o * o.detach().sin()).sum() for o in fast), inputs)
    gp = torch.autograd.grad(sum((o * o.detach().sin()).sum() for o in plain), inputs)
    for a, b in zip(gf, gp):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _plain_wavenet_loss(net: WaveNet, seg: torch.Tensor) -> torch.Tensor:
    """The loss through every block's channels-first ``forward`` (per-layer conv1d, plain autograd)."""
    x = net.embed(seg[:, :-1]).transpose(1, 2)
    total = 0
    for layer in net.stack.layers:
        x, s = layer(x)
        total = total + s
    return categorical_bits(net.head(total), seg[:, 1:])


@pytest.mark.parametrize("segments", [0, 2])
def test_wavenet_loss_gradients_fast_equal_plain(segments):
    torch.manual_seed(0)
    net = WaveNet(tiny_config(kernel_size=3)).double()
    net.stack.checkpoint_segments = segments
    seg = torch.randint(0, 32, (3, 61))
    fast = categorical_bits(net(seg[:, :-1]), seg[:, 1:])
    g_fast = torch.autograd.grad(fast, list(net.parameters()))
    plain = _plain_wavenet_loss(net, seg)
    g_plain = torch.autograd.grad(plain, list(net.parameters()))
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_fast, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_conditioned_stack_fast_equals_plain():
    torch.manual_seed(0)
    stack = DilatedStack(4, 6, 5, dilations=(1, 2, 4), global_cond_channels=3, local_cond_channels=2).double()
    x = torch.randn(2, 4, 30, dtype=torch.float64, requires_grad=True)
    gc = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    lc = torch.randn(2, 2, 30, dtype=torch.float64, requires_grad=True)
    _, skip = stack(x, gc, lc)
    leaves = [x, gc, lc, *stack.parameters()]
    g_fast = torch.autograd.grad(skip.square().sum(), leaves)
    h, total = x, 0
    for layer in stack.layers:
        h, s = layer(h, gc, lc)
        total = total + s
    torch.testing.assert_close(skip, total, rtol=1e-12, atol=1e-12)
    g_plain = torch.autograd.grad(total.square().sum(), leaves)
    for a, b in zip(g_fast, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_forward_btc_leaves_a_given_skip_sum_alone():
    torch.manual_seed(0)
    stack = DilatedStack(4, dilations=(1, 2))
    x, skip = torch.randn(2, 10, 4), torch.randn(2, 10, 4)
    before = skip.clone()
    _, out = stack.layers[0].forward_btc(x, skip)
    assert out is not skip and torch.equal(skip, before)


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of ``fn()``."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_fast_path_saves_x_and_the_gate_only():
    torch.manual_seed(0)
    B, T, R, G, S = 2, 500, 8, 16, 32
    stack = DilatedStack(R, G, S, dilations=(1, 2, 4, 8))
    layer = stack.layers[1]
    x = torch.randn(B, T, R, requires_grad=True)
    skip = torch.randn(B, T, S, requires_grad=True)
    params = sum(p.numel() * 4 for p in layer.parameters())
    fast = _saved_bytes(lambda: layer.forward_btc(x, skip))
    plain = _saved_bytes(lambda: layer._forward_btc_autograd(x, skip))
    # x (B, T, R) and [tanh, sigmoid] (B, T, G), plus the weights
    assert fast <= 4 * B * T * (R + G) + params
    assert plain > fast
