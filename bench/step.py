"""Single-sample ``DilatedStack.step`` speed: the lean step against the old per-layer step.

Prints one JSON object: steps/s and samples/s (``B`` x steps/s) of the current
``DilatedStack.step`` and of the old implementation (copied below as the baseline), at B = 1, 16
and 256 for the ref30 stack (dilations 1..512 x3, kernel 2, residual 64, gate 128, skip 256), the
speed-up, the largest difference between their outputs, and the machine (CPU model and flags,
torch version, threads). A third variant, ``new_plain_rings``, runs the current step on rings
stored as plain contiguous ``(B, R, L)`` tensors (how ``init_state`` stored them before it kept
them time-major, :func:`wavedil.streaming.new_ring`). The variants run in alternating rounds in
one process and the median round counts, so background load shifts them alike: compare the
ratios, not absolute figures across runs.

    python bench/step.py            # ref30, a minute or two on an idle 2-core machine
    python bench/step.py --quick    # a tiny stack, a few seconds
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from wavedil.layers import DilatedStack, StackState


def cpu_info() -> dict:
    """CPU model and the SIMD flags that matter for fp32/bf16 matmuls, from ``/proc/cpuinfo``."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"model": model, "flags": {f: f in flags for f in wanted}}


# ----------------------------------------------------------------------------- the old step (baseline)


def _old_conv_step(conv, x: torch.Tensor, buf: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``CausalConv1d.step`` for ``T == 1`` as it was before the lean step (commit 84a9920)."""
    L, k, d = conv.padding, conv.kernel_size, conv.dilation
    if k == 2:
        past = buf[:, :, pos % L : pos % L + 1]  # x[t - d], (B, C_in, 1)
    else:
        past = buf[:, :, [(pos - m * d) % L for m in range(k - 1, 0, -1)]]  # (B, C_in, k-1)
    window = torch.cat([past, x], dim=-1)  # (B, C_in, k)
    y = F.linear(window.flatten(1), conv.weight.flatten(1), conv.bias).unsqueeze(-1)
    buf[:, :, pos % L] = x[:, :, 0]
    return y, buf


def old_step(stack: DilatedStack, x: torch.Tensor, state: StackState):
    """The old ``DilatedStack.step`` (no conditioning, BCT layout): per layer conv step, gate,
    fused 1x1 output conv, residual add, and a running skip sum."""
    stack._check_input(x)
    if len(state.buffers) != len(stack.layers) or state.batch_size != x.shape[0]:
        raise ValueError("state does not match the stack")
    pos, buffers, skip_sum = state.pos, [], None
    for layer, buf in zip(stack.layers, state.buffers):
        h, buf = _old_conv_step(layer.conv, x, buf, pos)
        a, b = h.chunk(2, dim=1)
        rs = layer.out(torch.tanh(a) * torch.sigmoid(b))
        R = layer.residual_channels
        x, skip = x + rs[:, :R], rs[:, R:]
        buffers.append(buf)
        skip_sum = skip if skip_sum is None else skip_sum + skip
    return (x, skip_sum), StackState(buffers, pos + 1)


# ----------------------------------------------------------------------------- timing


def _plain(state: StackState) -> StackState:
    """``state`` with its rings stored as plain contiguous ``(B, R, L)`` tensors."""
    return StackState([b.contiguous() for b in state.buffers], state.pos)


def _run(fn, stack: DilatedStack, x: torch.Tensor, steps: int, plain: bool = False) -> tuple[float, torch.Tensor]:
    state = stack.init_state(x.shape[0])
    state = _plain(state) if plain else state
    skip = None
    t0 = time.perf_counter()
    for i in range(steps):
        (_, skip), state = fn(stack, x[:, :, i : i + 1], state)
    return time.perf_counter() - t0, skip


def measure(stack: DilatedStack, batch: int, steps: int, rounds: int) -> dict:
    """Alternating rounds of old and new over the same inputs; medians of the rounds."""
    R = stack.residual_channels
    x = torch.randn(batch, R, steps, generator=torch.Generator().manual_seed(0))
    new = lambda s, xi, st: s.step(xi, st)  # noqa: E731
    times = {"old": [], "new": [], "new_plain_rings": []}
    diff = 0.0
    with torch.no_grad():
        _run(new, stack, x, min(steps, 20))  # warm-up (packs the weights once)
        _run(old_step, stack, x, min(steps, 20))
        for _ in range(rounds):
            t_old, s_old = _run(old_step, stack, x, steps)
            t_new, s_new = _run(new, stack, x, steps)
            t_plain, s_plain = _run(new, stack, x, steps, plain=True)
            assert torch.equal(s_new, s_plain)  # the memory order of the rings changes no number
            times["old"].append(t_old)
            times["new"].append(t_new)
            times["new_plain_rings"].append(t_plain)
            diff = max(diff, float((s_old - s_new).abs().max()))
    out = {}
    for name, ts in times.items():
        sps = steps / statistics.median(ts)
        out[name] = {"steps_per_s": round(sps, 1), "samples_per_s": round(sps * batch, 1)}
    out["speedup"] = round(out["new"]["steps_per_s"] / out["old"]["steps_per_s"], 2)
    out["time_major_rings_speedup"] = round(out["new"]["steps_per_s"] / out["new_plain_rings"]["steps_per_s"], 2)
    out["max_abs_diff_last_skip"] = diff
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny stack and few steps (a few seconds)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=None, help="alternating old/new rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.quick:
        config = dict(residual_channels=16, gate_channels=32, skip_channels=32, kernel_size=2,
                      layers_per_stack=4, stacks=2)
        steps, rounds = args.steps or 40, args.rounds or 1
    else:
        config = dict(residual_channels=64, gate_channels=128, skip_channels=256, kernel_size=2,
                      layers_per_stack=10, stacks=3)
        steps, rounds = args.steps or 200, args.rounds or 3
    stack = DilatedStack(**config).eval()
    result = {
        "config": "quick" if args.quick else "ref30",
        "stack": config,
        "steps_per_round": steps,
        "rounds": rounds,
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    for batch in (1, 16, 256):
        result[f"B={batch}"] = measure(stack, batch, steps if batch < 256 else max(10, steps // 4), rounds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
