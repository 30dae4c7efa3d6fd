"""torchrun-style DDP on the CPU (gloo): ranks agree bit for bit and match one process."""

import json
import os
import socket
import time

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


def _rank_main_failing(rank: int, world: int, port: int, run_dir: str) -> None:
    """Rank 1's loader raises from step 3 on; both ranks must stop (not hang) and say why."""
    import wavedil.train as train_mod
    from wavedil.data import CorpusError

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    real_getitem = train_mod.SegmentDataset.__getitem__

    def getitem(self, index):
        if rank == 1 and self.segments_per_epoch > 100 and index >= 3 * 4:  # training set, step 3 on
            raise CorpusError("7 of 9 files vanished from /data/speech")
        return real_getitem(self, index)

    train_mod.SegmentDataset.__getitem__ = getitem
    try:
        train(compose(OVERRIDES + ["trainer.device=cpu", "trainer.max_steps=200", "trainer.ckpt_every=100",
                                   "trainer.valid_every=100", "data.num_workers=0"]), run_dir)
        message = "no error"
    except TrainingError as exc:
        message = str(exc)
    with open(os.path.join(run_dir, f"error_{rank}.txt"), "w") as fh:
        fh.write(message)


@pytest.mark.slow
def test_a_data_error_on_another_rank_stops_every_rank_with_a_checkpoint(tmp_path):
    ctx = mp.spawn(_rank_main_failing, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:  # the bug this guards against: rank 0 waits forever
            for p in ctx.processes:
                p.kill()
            pytest.fail("a data error on rank 1 left the ranks hanging")
    errors = [(tmp_path / f"error_{r}.txt").read_text() for r in (0, 1)]
    saved = tmp_path / "checkpoints" / "step_00000003.pt"
    for msg in errors:
        assert "the training data failed on rank 1 at step 3: rank 1: 7 of 9 files vanished" in msg, msg
        assert "trainer.resume=true" in msg
    assert f"Saved '{saved}' (step 3)" in errors[0]
    assert load_checkpoint(saved)["step"] == 3


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
