"""Two CPU processes on gloo train to the same weights as one process with the same global batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from trainkit import PlainLM, StreamLoader, toy_tokens

from fastulm.train.learner import Learner

GLOBAL_BS = 8


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(rank, world_size, out_path):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ids = toy_tokens(2400)
    train = StreamLoader(ids[:2000], GLOBAL_BS, 12, seed=3, rank=rank, world_size=world_size)
    valid = StreamLoader(ids[2000:], GLOBAL_BS, 12, shuffle=False, rank=rank, world_size=world_size)
    learn = Learner(
        PlainLM(),
        train,
        valid,
        kind="lm",
        path=os.path.dirname(out_path),
        show_progress=False,
        clip=0.5,
    )
    learn.freeze()
    learn.fit_one_cycle(1, 1e-2)
    learn.unfreeze()
    learn.fit_one_cycle(2, slice(1e-3, 1e-2))
    if rank == 0:
        torch.save({"model": learn.model.state_dict(), "rows": learn.history["epochs"]}, out_path)


def _worker(rank, world_size, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        _train(rank, world_size, out_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_match_single_process(tmp_path):
    single = tmp_path / "single.pt"
    _train(0, 1, str(single))
    double = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(double)), nprocs=2, join=True)
    a = torch.load(single, weights_only=True)
    b = torch.load(double, weights_only=True)
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-5, atol=1e-5, msg=name)
    for ra, rb in zip(a["rows"], b["rows"]):  # validation summed over both ranks' slices
        assert rb["valid_loss"] == pytest.approx(ra["valid_loss"], rel=1e-5)
        assert rb["accuracy"] == pytest.approx(ra["accuracy"], abs=1e-9)
