"""The CPU bf16 training path of a stack of gated layers (wavedil.gated_lowp and its kernels).

Tolerances as in test_gated_bf16 (``U = 2**-8``, the bf16 unit roundoff). The kernels round
every stored value to bf16 the way torch does, so where two computations see the same inputs
(the native path's bf16 bits, the emulated path's float32 holding bf16 values, a checkpointed
rerun) their outputs must be equal bit for bit.
"""

import math

import numba
import numpy as np
import pytest
import torch

from wavedil import DilatedStack
from wavedil.gated import EMULATED_BF16, GatedLayerFunction
from wavedil.fast._train_kernels import _round_bits
from wavedil.gated_lowp import LowpCategoricalBits, LowpGatedFunction, _kernels, _np, _storage, _taps_side_by_side

from test_gated_bf16 import U, _inputs, rel_err, tol

kern = _kernels()


@numba.njit
def _round_all(v, out):
    for i in range(v.shape[0]):
        out[i] = np.uint16(_round_bits(v[i]))


def test_rounding_to_bf16_is_torchs_round_to_nearest_even():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([
        torch.randn(4096, generator=g) * 10.0 ** torch.randint(-40, 38, (4096,), generator=g).float(),
        torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-45, -1e-45, 3.4e38, -3.4e38]),
        # exact ties between two bf16 values, rounded up and down to the even one
        torch.tensor([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -(1.0 + 2.0**-8), -(1.0 + 3 * 2.0**-8)]),
    ])  # fmt: skip
    got = np.empty(x.numel(), np.uint16)
    _round_all(x.numpy(), got)
    assert np.array_equal(got, x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))
    nan = np.empty(1, np.uint16)
    _round_all(np.array([np.nan], np.float32), nan)
    assert torch.from_numpy(nan.view(np.int16)).view(torch.bfloat16).float().isnan().all()


@pytest.mark.parametrize("cond", [None, "b1", "bt"])
def test_gate_kernel_same_bits_in_both_storages_and_close_to_torch(cond):
    g = torch.Generator().manual_seed(1)
    B, T, G = 3, 50, 16
    h = (torch.randn(B * T, G, generator=g) * 3).bfloat16()
    bias = torch.randn(G, generator=g)
    c = {None: torch.zeros(1, 1, G), "b1": torch.randn(B, 1, G, generator=g), "bt": torch.randn(B, T, G, generator=g)}[cond]
    outs = []
    for store in (torch.bfloat16, torch.float32):
        ts, z = torch.empty(B * T, G, dtype=store), torch.empty(B * T, G // 2, dtype=store)
        kern.gate_forward(_np(h.to(store)), _np(bias), _np(c.reshape(-1, G)), c.shape[0], c.shape[1], T, _np(ts), _np(z))
        outs.append((ts, z))
    (ts_b, z_b), (ts_f, z_f) = outs
    assert torch.equal(ts_b.float(), ts_f) and torch.equal(z_b.float(), z_f)
    a = h.float() + bias + c.expand(B, T, G).reshape(B * T, G)
    t, s = torch.tanh(a[:, : G // 2]), torch.sigmoid(a[:, G // 2 :])
    assert (ts_f[:, : G // 2] - t).abs().max() <= U * t.abs().max()  # within one rounding
    assert (ts_f[:, G // 2 :] - s).abs().max() <= U
    assert torch.equal(z_f, (ts_f[:, : G // 2] * ts_f[:, G // 2 :]).bfloat16().float())  # z from the rounded t, s


def test_gate_backward_and_conv_input_grad_against_torch():
    g = torch.Generator().manual_seed(2)
    B, T, R, G, k, d = 2, 30, 4, 12, 3, 4
    Z = G // 2
    ts = torch.rand(B * T, G, generator=g).bfloat16().float()
    ts[:, :Z] = ts[:, :Z] * 2 - 1
    gz, u = torch.randn(B * T, Z, generator=g), torch.randn(B * T, Z, generator=g)
    gh, z, gb = torch.empty(B * T, G), torch.empty(B * T, Z), torch.empty(7, G)
    kern.gate_backward(_np(ts), _np(gz), _np(u), True, True, _np(gh), _np(z), _np(gb))
    t, s = ts[:, :Z].double(), ts[:, Z:].double()
    gg = gz.double() + u.double()
    want = torch.cat([gg * s * (1 - t * t), gg * t * s * (1 - s)], 1)
    assert torch.equal(gh, want.float().bfloat16().float()) or (gh - want).abs().max() <= U * want.abs().max()
    assert torch.allclose(gb.sum(0).double(), want.sum(0), rtol=1e-5, atol=1e-5)  # before rounding
    assert torch.equal(z, (ts[:, :Z] * ts[:, Z:]).bfloat16().float())
    gx = torch.randn(B * T, k * R, generator=g).bfloat16().float()
    g_res = torch.randn(B * T, R, generator=g)
    out = torch.empty(B * T, R)
    kern.conv_input_grad(_np(g_res), True, _np(gx), T, k, d, _np(out))
    ref = g_res.double().view(B, T, R).clone()
    gx3 = gx.double().view(B, T, k * R)
    for j in range(k):
        sh = (k - 1 - j) * d
        ref[:, : T - sh] += gx3[:, sh:, j * R : (j + 1) * R]  # x[t] fed tap j of output t + sh
    assert torch.allclose(out.view(B, T, R).double(), ref, rtol=1e-6, atol=1e-6)


def test_taps_side_by_side_are_the_shifted_inputs():
    x = torch.randn(2, 9, 3)
    xc = _taps_side_by_side(x, 3, 2, EMULATED_BF16)
    xr = x.bfloat16().float()
    assert torch.equal(xc[..., 6:], xr)
    assert torch.equal(xc[:, 2:, 3:6], xr[:, :-2]) and not xc[:, :2, 3:6].any()
    assert torch.equal(xc[:, 4:, :3], xr[:, :-4]) and not xc[:, :4, :3].any()


@pytest.mark.parametrize("k, dilation, cond", [(2, 1, "b1"), (3, 2, "bt"), (2, 64, None)])
def test_layer_close_to_fp32_and_native_equals_emulated(k, dilation, cond):
    x, skip, c, w, b, wo, br = _inputs(k=k, cond=cond)
    R = x.shape[-1]
    ref_x, _ = GatedLayerFunction.apply(x, None, c, w, b, wo, br, dilation, False, None)
    outs, grads = {}, {}
    g = torch.Generator().manual_seed(3)
    g_x, g_z = torch.randn(ref_x.shape, generator=g), torch.randn(*ref_x.shape[:2], wo.shape[1], generator=g)
    leaves = [t for t in (x, c, w, b, wo, br) if t is not None]
    for mode in (torch.bfloat16, EMULATED_BF16):
        xn, z = LowpGatedFunction.apply(x, c, w, b, wo[:R], br, dilation, mode)
        assert xn.dtype == torch.float32 and z.dtype == (torch.float32 if mode == EMULATED_BF16 else torch.bfloat16)
        outs[mode] = (xn, z.float())
        grads[mode] = torch.autograd.grad((xn, z), leaves, (g_x, g_z.bfloat16().to(z.dtype)), allow_unused=True)
    err = rel_err(outs[torch.bfloat16][0], ref_x)
    assert U / 64 < err < tol(2), err
    for a, b_ in zip(outs[torch.bfloat16], outs[EMULATED_BF16]):
        assert rel_err(a, b_) < U / 16
    for a, b_ in zip(grads[torch.bfloat16], grads[EMULATED_BF16]):
        if a is not None:
            assert a.dtype == torch.float32 or a.dtype == b_.dtype
            assert rel_err(a, b_) < U / 16


def _stack(**kw):
    torch.manual_seed(0)
    return DilatedStack(8, 16, 12, kernel_size=2, dilations=(1, 2, 4, 8), **kw)


def test_checkpointed_groups_rerun_the_same_residuals():
    stack = _stack()
    x = torch.randn(2, 8, 50, requires_grad=True)
    res = []
    for segments in (0, 2):
        stack.checkpoint_segments = segments
        with torch.autocast("cpu", dtype=torch.bfloat16):
            r, skip = stack(x)
        grads = torch.autograd.grad((r.square().sum() + skip.square().sum()), [x, *stack.parameters()])
        res.append((r, skip, grads))
    (r0, s0, g0), (r1, s1, g1) = res
    assert torch.equal(r0, r1)
    # the two groups' skip products are rounded to bf16 each and summed in float32 instead of
    # being one product rounded once: within about one rounding, and so are the gradients
    assert 0 < rel_err(s1, s0) < U
    for a, b in zip(g0, g1):
        assert rel_err(a, b) < U


def test_dropout_in_training_keeps_the_per_layer_path(monkeypatch):
    stack = _stack(dropout=0.1)
    called = []
    monkeypatch.setattr("wavedil.gated_lowp.run_layers_lowp", lambda *a: called.append(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stack.train()(torch.randn(1, 8, 20))
    assert not called


def _head_inputs(N=300, S=24, H=20, Q=32, seed=4):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    return (rnd(N, S), rnd(S, scale=0.1), rnd(H, S, scale=S**-0.5), rnd(H, scale=0.1), rnd(Q, H, scale=H**-0.5),
            rnd(Q, scale=0.1), torch.randint(0, Q, (N,), generator=g))  # fmt: skip


def _head_fp32(skip, skip_bias, w1, b1, w2, b2, target):
    h = torch.relu(torch.relu(skip + skip_bias) @ w1.t() + b1)
    return torch.nn.functional.cross_entropy(h @ w2.t() + b2, target) / math.log(2)


def test_fused_head_and_loss_as_accurate_as_autocast_and_native_equals_emulated():
    """The head's gradients go through ``softmax - onehot``, whose columns sum to zero, so the
    products after it cancel and their bf16 error exceeds ``tol(3)`` (2-3% here, as under
    autocast): the fused head must be as close to float32 as torch's autocast head is."""
    inputs = _head_inputs()
    skip = inputs[0].detach().bfloat16().float().requires_grad_()  # the stack hands over bf16 values
    leaves = [skip, *inputs[1:6]]
    ref = _head_fp32(skip, *inputs[1:])
    g_ref = torch.autograd.grad(ref, leaves)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ac = _head_fp32(skip, *inputs[1:])
    g_ac = torch.autograd.grad(ac, leaves)
    out = {}
    for mode in (torch.bfloat16, EMULATED_BF16):
        s = skip.detach().to(_storage(mode)).requires_grad_()
        loss = LowpCategoricalBits.apply(s, *inputs[1:], mode)
        grads = torch.autograd.grad(loss * 3.0, [s, *leaves[1:]])  # a scaled loss scales every gradient
        assert loss.dtype == torch.float32 and grads[0].dtype == s.dtype
        out[mode] = (loss, [g.float() / 3.0 for g in grads])
    loss, grads = out[torch.bfloat16]
    assert U / 256 < abs(loss.item() - ref.item()) / ref.item() < tol(2)
    assert abs(loss.item() - ac.item()) <= 2 * abs(ac.item() - ref.item())
    for name, a, b, c in zip(["skip", "skip_bias", "w1", "b1", "w2", "b2"], grads, g_ref, g_ac):
        assert rel_err(a, b) < 1.25 * rel_err(c, b) + U / 16, name
    le, ge = out[EMULATED_BF16]
    assert abs(le.item() - loss.item()) < 1e-6 * loss.item()
    for a, b in zip(grads, ge):
        assert rel_err(a, b) < U / 16


def test_model_loss_under_bf16_runs_the_fused_head_on_mulaw_only(monkeypatch):
    from conftest import tiny_config
    from wavedil import WaveNet

    torch.manual_seed(0)
    seg = torch.randint(0, 32, (2, 101))
    for output, fused in [("mulaw", True), ("mol", False)]:
        net = WaveNet(tiny_config(output=output))
        ref = net.loss(seg)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = net.loss(seg)
        assert ("LowpCategoricalBits" in loss.grad_fn.name()) == fused, output
        assert abs(loss.item() - ref.item()) < tol(3) * abs(ref.item())
