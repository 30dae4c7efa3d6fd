"""The causal dilated block: padding rules, causality, streaming equals full, state handling."""

import pytest
import torch

from wavedil import (
    CausalConv1d,
    DilatedStack,
    ResidualBlock,
    StackState,
    causal_padding,
    dilation_schedule,
    receptive_field,
    receptive_field_coverage,
)


def test_pure_helpers():
    assert causal_padding(2, 1) == 1
    assert causal_padding(3, 4) == 8
    assert dilation_schedule(3, 2) == (1, 2, 4, 1, 2, 4)
    assert dilation_schedule(3, 1, base=3) == (1, 3, 9)
    assert receptive_field(2, dilation_schedule(10, 3)) == 3070  # ref30
    assert receptive_field(3, (1, 2)) == 7


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: CausalConv1d(4, 4, kernel_size=1), "kernel_size"),
        (lambda: CausalConv1d(0, 4), "in_channels"),
        (lambda: CausalConv1d(4, -2), "out_channels"),
        (lambda: CausalConv1d(4, 4, dilation=0), "dilation"),
        (lambda: DilatedStack(8, dilations=()), "dilations"),
        (lambda: DilatedStack(8, dilations=(1, 0)), r"dilations\[1\]"),
        (lambda: DilatedStack(0, layers_per_stack=2), "residual_channels"),
        (lambda: DilatedStack(8, gate_channels=7, layers_per_stack=2), "gate_channels"),
        (lambda: DilatedStack(8), "layers_per_stack"),
        (lambda: receptive_field(1, (1, 2)), "kernel_size"),
        (lambda: dilation_schedule(0), "layers_per_stack"),
    ],
)
def test_bad_sizes_raise_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("k, d", [(2, 1), (2, 8), (3, 4), (5, 3)])
def test_causal_conv_matches_manual_sum(k, d):
    torch.manual_seed(0)
    conv = CausalConv1d(3, 2, kernel_size=k, dilation=d)
    x = torch.randn(2, 3, 40)
    y = conv(x)
    # y[t] = b + sum_j W[:, :, j] x[t - (k-1-j) d], zeros before t = 0
    for t in (0, d - 1, d, 17, 39):
        ref = conv.bias.clone().expand(2, 2).clone()
        for j in range(k):
            s = t - (k - 1 - j) * d
            if s >= 0:
                ref = ref + x[:, :, s] @ conv.weight[:, :, j].T
        torch.testing.assert_close(y[:, :, t], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_causality_by_gradients(kernel_size):
    torch.manual_seed(0)
    stack = DilatedStack(6, 8, 5, kernel_size, dilations=(1, 2, 4, 1, 3))
    x = torch.randn(2, 6, 50, requires_grad=True)
    t = 23
    _, skip = stack(x)
    skip[:, :, t].sum().backward()
    g = x.grad.abs().sum(dim=(0, 1))
    assert torch.all(g[t + 1 :] == 0), "output at t depends on the future"
    assert g[t] > 0 and g[t - 1] > 0
    rf = stack.receptive_field
    # the oldest input in the receptive field matters, the one before it does not
    assert g[t - rf + 1] > 0
    assert torch.all(g[: t - rf + 1] == 0)


@pytest.mark.parametrize("kernel_size, dilations", [(2, (1, 2, 4, 8)), (3, (1, 2, 4, 1, 2, 4)), (2, (1, 3, 9)), (5, (1, 5))])
def test_receptive_field_matches_impulse_response(kernel_size, dilations):
    torch.manual_seed(0)
    stack = DilatedStack(4, 8, 4, kernel_size, dilations=dilations).double()
    T = 3 * receptive_field(kernel_size, dilations)
    base = torch.randn(1, 4, T, dtype=torch.double)
    bumped = base.clone()
    t0 = 5
    bumped[:, :, t0] += 1.0
    diff = (stack(bumped)[1] - stack(base)[1]).abs().sum(dim=(0, 1))
    affected = (diff > 0).nonzero().flatten()
    assert affected.min().item() == t0
    assert affected.max().item() - t0 + 1 == stack.receptive_field == receptive_field(kernel_size, dilations)


def _stream(stack, x, chunk, **cond):
    state = stack.init_state(x.shape[0])
    res, skips = [], []
    for i in range(0, x.shape[-1], chunk):
        lc = cond.get("local_cond")
        kw = {"global_cond": cond.get("global_cond")}
        if lc is not None:
            kw["local_cond"] = lc[:, :, i : i + chunk]
        (r, s), state = stack.step(x[:, :, i : i + chunk], state, **kw)
        res.append(r)
        skips.append(s)
    return torch.cat(res, -1), torch.cat(skips, -1), state


@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("kernel_size, dilations", [(2, (1, 2, 4, 8, 16)), (3, (1, 2, 4, 1, 2, 4)), (2, (1, 1, 3))])
@pytest.mark.parametrize("batch", [1, 3])
def test_chunked_streaming_equals_full(chunk, kernel_size, dilations, batch):
    torch.manual_seed(0)
    stack = DilatedStack(6, 10, 7, kernel_size, dilations=dilations, global_cond_channels=3, local_cond_channels=2)
    x = torch.randn(batch, 6, 150)
    gc = torch.randn(batch, 3)
    lc = torch.randn(batch, 2, 150)
    with torch.no_grad():
        res_full, skip_full = stack(x, gc, lc)
        res, skip, state = _stream(stack, x, chunk, global_cond=gc, local_cond=lc)
    assert state.pos == 150
    torch.testing.assert_close(res, res_full, rtol=0, atol=1e-5)
    torch.testing.assert_close(skip, skip_full, rtol=0, atol=1e-5)


def test_state_save_restore_continues_identically(tmp_path):
    torch.manual_seed(0)
    stack = DilatedStack(5, layers_per_stack=4, stacks=2, kernel_size=3)
    x = torch.randn(2, 5, 90)
    with torch.no_grad():
        (_, _), state = stack.step(x[:, :, :40], stack.init_state(2))
        torch.save(state.state_dict(), tmp_path / "state.pt")
        saved = state.clone()
        (_, a), _ = stack.step(x[:, :, 40:], state)
        restored = StackState.from_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
        (_, b), _ = stack.step(x[:, :, 40:], restored)
        (_, c), _ = stack.step(x[:, :, 40:], saved)
        _, full = stack(x)
    assert torch.equal(a, b) and torch.equal(a, c)
    torch.testing.assert_close(a, full[:, :, 40:], rtol=0, atol=1e-5)


def test_single_steps_mutate_in_place_but_clone_is_independent():
    torch.manual_seed(0)
    stack = DilatedStack(4, dilations=(1, 2))
    state = stack.init_state(1)
    snapshot = state.clone()
    with torch.no_grad():
        stack.step(torch.randn(1, 4, 1), state)
    assert all(torch.all(b == 0) for b in snapshot.buffers)


def test_reset_one_batch_item_leaves_the_others_intact():
    torch.manual_seed(0)
    stack = DilatedStack(4, dilations=(1, 2, 4, 8), kernel_size=2)
    x = torch.randn(3, 4, 60)
    with torch.no_grad():
        _, state = stack.step(x[:, :, :30], stack.init_state(3))
        state.reset(1)
        (_, tail), _ = stack.step(x[:, :, 30:], state)
        _, full = stack(x)
        _, fresh = stack(x[1:2, :, 30:])  # item 1 starts anew at t = 30
    torch.testing.assert_close(tail[[0, 2]], full[[0, 2], :, 30:], rtol=0, atol=1e-5)
    torch.testing.assert_close(tail[1:2], fresh, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        state.reset(5)
    with pytest.raises(ValueError, match="mask"):
        state.reset(torch.tensor([True, False]))


def test_step_rejects_a_state_of_the_wrong_batch():
    stack = DilatedStack(4, dilations=(1, 2))
    with pytest.raises(ValueError, match="init_state"):
        stack.step(torch.randn(2, 4, 1), stack.init_state(3))
    with pytest.raises(ValueError, match=r"\(B, 4, T\)"):
        stack(torch.randn(2, 5, 10))


def test_residual_block_conditioning_is_required_when_built():
    block = ResidualBlock(4, 8, 4, global_cond_channels=2)
    with pytest.raises(ValueError, match="global_cond"):
        block(torch.randn(1, 4, 5))


def test_gridding_check():
    assert receptive_field_coverage(2, dilation_schedule(10, 3)) == 1.0
    assert receptive_field_coverage(3, (1, 3, 9)) == 1.0
    assert receptive_field_coverage(2, (2, 4, 8)) < 0.6  # odd offsets are never reached
    with pytest.warns(UserWarning, match="gridding"):
        DilatedStack(4, dilations=(2, 4, 8))


@pytest.mark.parametrize(
    "options",
    [
        dict(activation="tanh"),
        dict(activation="relu", skip_channels=0),
        dict(activation="gelu", weight_norm=True),
        dict(dropout=0.3),  # eval mode: dropout off, streaming still exact
        dict(layout="BTC", local_cond_channels=2),
    ],
)
@pytest.mark.parametrize("kernel_size", [2, 5])
@pytest.mark.parametrize("chunk", [1, 13])
def test_block_options_stream_exactly(options, kernel_size, chunk):
    torch.manual_seed(0)
    stack = DilatedStack(6, 8, options.pop("skip_channels", 5), kernel_size, dilations=(1, 2, 4, 1), **options).eval()
    btc = stack.layout == "BTC"
    x = torch.randn(3, 60, 6) if btc else torch.randn(3, 6, 60)
    lc = None
    if stack.layers[0].lc is not None:
        lc = torch.randn(3, 60, 2) if btc else torch.randn(3, 2, 60)
    with torch.no_grad():
        res_full, skip_full = stack(x, local_cond=lc)
        state, res, skips = stack.init_state(3), [], []
        for i in range(0, 60, chunk):
            sl = (slice(None), slice(i, i + chunk)) if btc else (slice(None), slice(None), slice(i, i + chunk))
            (r, s), state = stack.step(x[sl], state, local_cond=None if lc is None else lc[sl])
            res.append(r)
            skips.append(s)
    t_dim = 1 if btc else 2
    assert res_full.shape == x.shape
    torch.testing.assert_close(torch.cat(res, t_dim), res_full, rtol=0, atol=1e-5)
    if skip_full is None:
        assert all(s is None for s in skips)
    else:
        torch.testing.assert_close(torch.cat(skips, t_dim), skip_full, rtol=0, atol=1e-5)


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    stack = DilatedStack(4, dilations=(1, 2), dropout=0.5)
    x = torch.randn(1, 4, 20)
    assert not torch.equal(stack(x)[1], stack(x)[1])
    stack.eval()
    assert torch.equal(stack(x)[1], stack(x)[1])


@pytest.mark.parametrize("call, match", [
    (lambda: DilatedStack(4, dilations=(1,), activation="swish"), "activation"),
    (lambda: DilatedStack(4, dilations=(1,), layout="TBC"), "layout"),
    (lambda: DilatedStack(4, dilations=(1,), dropout=1.0), "dropout"),
])
def test_bad_block_options(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    stack = DilatedStack(4, layers_per_stack=3, stacks=2, global_cond_channels=2)
    x = torch.randn(2, 4, 40, requires_grad=True)
    gc = torch.randn(2, 2)
    _, skip = stack(x, gc)
    skip.square().sum().backward()
    plain = [p.grad.clone() for p in stack.parameters()] + [x.grad.clone()]
    stack.zero_grad()
    x.grad = None
    stack.checkpoint_segments = 4  # uneven groups over 6 layers
    _, skip2 = stack(x, gc)
    skip2.square().sum().backward()
    torch.testing.assert_close(skip2, skip, rtol=0, atol=0)
    for a, b in zip(plain, [p.grad for p in stack.parameters()] + [x.grad]):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def _stream_ones(stack, x, **cond):
    """Single-sample steps over ``x (B, R, T)``: the skip sums ``(B, S, T)``."""
    state, skips = stack.init_state(x.shape[0]), []
    for i in range(x.shape[-1]):
        (_, s), state = stack.step(x[:, :, i : i + 1], state, **cond)
        skips.append(s)
    return torch.cat(skips, -1)


def test_single_steps_take_the_lean_path_without_autograd(monkeypatch):
    import wavedil.layers as layers_module

    torch.manual_seed(0)
    stack = DilatedStack(4, 8, 6, dilations=(1, 2, 4)).eval()
    calls = []
    real = layers_module.single_step
    monkeypatch.setattr(layers_module, "single_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 4, 10)
    with torch.no_grad():
        _stream_ones(stack, x)
    assert len(calls) == 10
    _stream_ones(stack, x)  # autograd on: the per-layer path, which keeps the graph
    assert len(calls) == 10


def test_lean_step_sees_parameter_updates_and_weight_norm():
    torch.manual_seed(0)
    stack = DilatedStack(4, 8, 6, kernel_size=3, dilations=(1, 2, 1), weight_norm=True).eval()
    x = torch.randn(2, 4, 12)
    with torch.no_grad():
        torch.testing.assert_close(_stream_ones(stack, x), stack(x)[1], rtol=0, atol=1e-5)
        for p in stack.parameters():  # what an optimizer step does: in place
            p.mul_(1.5).add_(0.01)
        torch.testing.assert_close(_stream_ones(stack, x), stack(x)[1], rtol=0, atol=1e-5)
        stack.load_state_dict(DilatedStack(4, 8, 6, kernel_size=3, dilations=(1, 2, 1), weight_norm=True).state_dict())
        torch.testing.assert_close(_stream_ones(stack, x), stack(x)[1], rtol=0, atol=1e-5)
        stack.double()
        xd = x.double()
        torch.testing.assert_close(_stream_ones(stack, xd), stack(xd)[1], rtol=0, atol=1e-10)


def test_threads_may_step_one_stack_at_once_each_with_its_own_state():
    import threading

    torch.manual_seed(0)
    stack = DilatedStack(16, 32, 16, dilations=(1, 2, 4, 8)).eval()
    inputs = [torch.randn(2, 16, 200) for _ in range(4)]
    with torch.no_grad():
        expected = [_stream_ones(stack, x) for x in inputs]  # one thread: the lean path's own result
    results: dict[int, torch.Tensor] = {}
    start = threading.Barrier(len(inputs))

    def worker(i: int) -> None:
        start.wait()  # all threads step at the same time, interleaving in torch's ops (which drop the GIL)
        with torch.no_grad():
            results[i] = _stream_ones(stack, inputs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(expected):
        assert torch.equal(results[i], want), f"thread {i}'s steps differ from the same steps on one thread"


def test_step_with_autograd_gives_the_gradient_of_forward():
    torch.manual_seed(0)
    stack = DilatedStack(4, 8, 6, dilations=(1, 2))
    x = torch.randn(1, 4, 6, requires_grad=True)
    (g_step,) = torch.autograd.grad(_stream_ones(stack, x).square().sum(), [x])
    (g_full,) = torch.autograd.grad(stack(x)[1].square().sum(), [x])
    torch.testing.assert_close(g_step, g_full, rtol=1e-5, atol=1e-6)


def test_conditioning_checkpoint_keys_are_stable():
    block = ResidualBlock(4, 8, 4, global_cond_channels=2, local_cond_channels=3)
    keys = set(block.state_dict())
    assert {"gc.weight", "lc.weight"} <= keys  # checkpoints written before the split load as they are
    assert block.global_cond_proj is block.gc and block.local_cond_proj is block.lc


def test_rings_are_time_major_and_their_memory_order_changes_no_number():
    """init_state and a chunk step keep each ring slot one contiguous (B, R) block
    (streaming.new_ring); a state whose rings are plain (B, R, L) tensors steps to the same bits."""
    torch.manual_seed(0)
    stack = DilatedStack(8, layers_per_stack=3, stacks=2).eval()
    x = torch.randn(3, 8, 12)
    state = stack.init_state(3)
    assert all(b.select(2, 0).is_contiguous() for b in state.buffers)
    with torch.no_grad():
        _, state = stack.step(x[:, :, :5], state)  # a chunk: the per-layer path
        assert all(b.select(2, b.shape[2] - 1).is_contiguous() for b in state.buffers)
        plain = StackState([b.contiguous() for b in state.buffers], state.pos)
        assert not all(b.select(2, 0).is_contiguous() for b in plain.buffers[1:])  # L > 1
        a, b = state.clone(), plain
        for t in range(5, 12):
            (ra, sa), a = stack.step(x[:, :, t : t + 1], a)
            (rb, sb), b = stack.step(x[:, :, t : t + 1], b)
            assert torch.equal(ra, rb) and torch.equal(sa, sb)
    assert all(torch.equal(p, q) for p, q in zip(a.buffers, b.buffers))


def test_coverage_without_the_offset_table_equals_the_table_on_random_schedules(monkeypatch):
    """Full coverage is decided from the sorted dilations (no table of every offset); a check
    against the brute-force subset sums over random schedules, gridded or not, every kernel."""
    import itertools
    import random

    from wavedil.causal import receptive_field_coverage

    def brute(k, dils):
        sums = {0}
        for d in dils:
            sums = {s + m * d for s in sums for m in range(k)}
        return len(sums) / (1 + (k - 1) * sum(dils))

    rng = random.Random(0)
    cases = [(k, tuple(rng.choice([1, 2, 3, 4, 5, 8]) for _ in range(rng.randint(1, 6)))) for k in (2, 3, 4)
             for _ in range(60)]  # fmt: skip
    cases += [(2, p) for p in itertools.permutations((1, 2, 4, 8))] + [(3, (1, 3, 9, 27)), (3, (1, 4)), (2, (1, 1, 4))]
    full = 0
    for k, dils in cases:
        got = receptive_field_coverage(k, dils)
        assert got == pytest.approx(brute(k, dils), abs=1e-6), (k, dils)
        full += got == 1.0
    assert 0 < full < len(cases)  # both kinds of schedule were checked


def test_a_receptive_field_beyond_the_limit_is_a_clear_error_not_terabytes():
    """Before: ``layers_per_stack=40`` tried to allocate 2^40 bytes for the gridding check."""
    from wavedil.causal import MAX_RECEPTIVE_FIELD, receptive_field_coverage

    with pytest.raises(ValueError, match=r"receptive field of 1,099,511,627,776 samples, over the limit of 16,777,216"):
        DilatedStack(residual_channels=2, gate_channels=4, skip_channels=2, dilations=dilation_schedule(40))
    deep = dilation_schedule(23)  # 2^23 - 1 + 1 samples: inside the limit, and no table is built for it
    assert receptive_field(2, deep) <= MAX_RECEPTIVE_FIELD and receptive_field_coverage(2, deep * 40) == 1.0
