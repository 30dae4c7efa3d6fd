"""torchrun-style DDP on the CPU (gloo): ranks agree bit for bit and match one process."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from wavedil.checkpoint import load_checkpoint
from wavedil.config import compose
from wavedil.train import StepBatchSampler, TrainingError, train

OVERRIDES = ["model=tiny", "trainer=debug", "trainer.sample_every=0", "data.segment_length=200",
             "data.batch_size=4", "data.valid_segments=2", "trainer.ema_decay=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, run_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    summary = train(compose(OVERRIDES + ["trainer.device=cpu"]), run_dir)
    with open(os.path.join(run_dir, f"summary_{rank}.json"), "w") as fh:
        json.dump(summary, fh)


@pytest.mark.slow
def test_two_gloo_ranks_agree_and_match_one_process(tmp_path):
    ddp_dir = tmp_path / "ddp"
    ddp_dir.mkdir()
    mp.spawn(_rank_main, args=(2, _free_port(), str(ddp_dir)), nprocs=2, join=True)
    s0 = json.loads((ddp_dir / "summary_0.json").read_text())
    s1 = json.loads((ddp_dir / "summary_1.json").read_text())
    assert s0["step"] == s1["step"] == 6
    assert s0["params_sha256"] == s1["params_sha256"], "ranks diverged"
    assert s1["checkpoint"] is None  # only rank 0 writes

    torch.set_num_threads(1)
    single = train(compose(OVERRIDES + ["trainer.device=cpu"]), tmp_path / "single")
    a = load_checkpoint(s0["checkpoint"])["model"]
    b = load_checkpoint(single["checkpoint"])["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_batch_must_divide_the_world():
    with pytest.raises(TrainingError, match="divisible by the world size 3"):
        StepBatchSampler(0, 10, 8, rank=0, world_size=3)
    # the global batches are the same whatever the world size
    one = list(StepBatchSampler(2, 4, 4))
    r0, r1 = list(StepBatchSampler(2, 4, 4, 0, 2)), list(StepBatchSampler(2, 4, 4, 1, 2))
    assert [a + b for a, b in zip(r0, r1)] == one == [[8, 9, 10, 11], [12, 13, 14, 15]]
