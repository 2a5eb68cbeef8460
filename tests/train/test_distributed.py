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


def _rank(rank, fn, world_size, port, *args):
    """One rank: init, run, and -- only once every rank is done -- tear gloo down: a rank that
    destroys its group while the other still talks to it can SIGABRT at exit."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    fn(rank, world_size, *args)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_match_single_process(tmp_path):
    single = tmp_path / "single.pt"
    _train(0, 1, str(single))
    double = tmp_path / "ddp.pt"
    mp.spawn(_rank, args=(_train, 2, _free_port(), str(double)), nprocs=2, join=True)
    a = torch.load(single, weights_only=True)
    b = torch.load(double, weights_only=True)
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-5, atol=1e-5, msg=name)
    for ra, rb in zip(a["rows"], b["rows"]):  # validation summed over both ranks' slices
        assert rb["valid_loss"] == pytest.approx(ra["valid_loss"], rel=1e-5)
        assert rb["accuracy"] == pytest.approx(ra["accuracy"], abs=1e-9)


# ---- classifier: BatchNorm over the global batch, rows padded to the global width ----------


def _bn_rank(rank, world_size, out_path):
    from fastulm.model.batchnorm import GlobalBatchNorm1d

    torch.manual_seed(0)
    x = torch.randn(12, 5) * 3 + 1
    w = torch.randn(12, 5)  # a loss weight per output element
    bn = GlobalBatchNorm1d(5)
    nn_init = torch.Generator().manual_seed(1)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(5, generator=nn_init) + 0.5)
        bn.bias.copy_(torch.rand(5, generator=nn_init))
    mine = x[rank::world_size].clone().requires_grad_()
    for _ in range(2):  # two steps: running statistics accumulate
        y = bn(mine)
    (y * w[rank::world_size]).sum().backward()
    grads = [bn.weight.grad.clone(), bn.bias.grad.clone()]
    for g in grads:
        dist.all_reduce(g)
    torch.save(
        {
            "y": y.detach(),
            "gx": mine.grad,
            "gw": grads[0],
            "gb": grads[1],
            "mean": bn.running_mean,
            "var": bn.running_var,
        },
        f"{out_path}.{rank}",
    )


def test_global_batchnorm_equals_batchnorm_on_the_whole_batch(tmp_path):
    """Two ranks with half the rows each: outputs, input and parameter gradients and running
    statistics equal torch's BatchNorm1d on all rows in one process."""
    out = str(tmp_path / "bn")
    mp.spawn(_rank, args=(_bn_rank, 2, _free_port(), out), nprocs=2, join=True)
    torch.manual_seed(0)
    x = (torch.randn(12, 5) * 3 + 1).requires_grad_()
    w = torch.randn(12, 5)
    bn = torch.nn.BatchNorm1d(5)
    nn_init = torch.Generator().manual_seed(1)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(5, generator=nn_init) + 0.5)
        bn.bias.copy_(torch.rand(5, generator=nn_init))
    for _ in range(2):
        y = bn(x)
    (y * w).sum().backward()
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        torch.testing.assert_close(got["y"], y.detach()[rank::2])
        torch.testing.assert_close(got["gx"], x.grad[rank::2])
        torch.testing.assert_close(got["gw"], bn.weight.grad)
        torch.testing.assert_close(got["gb"], bn.bias.grad)
        torch.testing.assert_close(got["mean"], bn.running_mean)
        torch.testing.assert_close(got["var"], bn.running_var)


def _clas_step_grads(rank, world_size, corpus, out_path):
    """Gradients (averaged over ranks) and BatchNorm statistics after one unfrozen step on the
    first global batch of the real loaders. Gradients, not trained weights, are compared:
    the oneDNN LSTM sums a 4-row batch in another order than an 8-row one (relative
    differences ~2e-6), and Adam's first steps turn such noise in near-zero gradient
    entries into whole learning-rate steps. The AR/TAR term's gradient is also kept on its
    own: next to the BatchNorm-amplified classification gradient it is too small to show a
    wrong normaliser (a rank padded to its own width moves the sum by <1e-4). The single
    process also saves the encoder output and ids, for the max-pool margin check."""
    from fastulm.model import AWDLSTMConfig
    from fastulm.train import distributed as ddp
    from fastulm.train.regularizer import ar_tar
    from fastulm.train.text_learners import text_classifier_learner

    torch.set_num_threads(1)
    # no dropout anywhere: masks are drawn per rank, so they cannot match one process's
    config = AWDLSTMConfig.classifier(
        0.0, bptt=8, max_len=96, emb_sz=16, n_hid=24, n_layers=2, head_ps=(0.0,)
    )
    learn = text_classifier_learner(
        corpus,
        bs=8,
        bptt=8,
        config=config,
        path=os.path.dirname(out_path),
        show_progress=False,
        seed=0,
    )
    learn.unfreeze()
    learn.model.train()
    x, y = next(iter(learn.train_dl))
    out = learn._forward(x, y)
    reg = ar_tar(out["raw"], out["dropped"], learn.alpha, learn.beta)

    def reduced_grads(loss):
        for p in learn.params:
            p.grad = None
        loss.backward(retain_graph=True)
        if world_size > 1:
            ddp.all_reduce_mean_grads(learn.params, world_size)
        return {k: p.grad.clone() for k, p in learn.model.named_parameters() if p.grad is not None}

    reg_grads = reduced_grads(reg)
    grads = reduced_grads(out["loss"] + reg)  # the training step's gradient
    widths = [torch.tensor(x.shape[1]) for _ in range(world_size)]
    if world_size > 1:
        dist.all_gather(widths, widths[rank].clone())
    if rank == 0:
        bn = {k: v for k, v in learn.model.state_dict().items() if "running" in k}
        torch.save(
            {
                "grads": grads,
                "reg_grads": reg_grads,
                "bn": bn,
                "widths": [int(w) for w in widths],
                "raw": out["raw"].detach(),
                "x": x,
            },
            out_path,
        )


def _max_pool_margin(raw: torch.Tensor, ids: torch.Tensor, pad_id: int = 1) -> float:
    """The smallest gap between a (row, channel)'s largest and second-largest encoder output
    over its real tokens: the max pool sends that channel's whole gradient to one time step."""
    masked = raw.float().masked_fill((ids == pad_id)[:, -raw.shape[1] :, None], float("-inf"))
    top2 = masked.topk(2, dim=1).values
    return float((top2[:, 0] - top2[:, 1]).min())


@pytest.mark.slow
def test_two_gloo_ranks_match_single_process_classifier(tmp_path):
    """The classifier under DDP (BatchNorm head, AR/TAR means over padded positions) takes
    the step one process takes with the same global batch.

    The words are drawn at random, not cycled: on a periodic text the LSTM settles into a
    cycle whose outputs one period apart differ by an ulp or not at all, so the max pool's
    winning time step -- which receives that channel's whole gradient -- is decided by
    rounding (4-row and 8-row oneDNN batches differ by ~6e-8), and every encoder gradient
    moves by ~20% (seen on AMD EPYC). Gradients are only comparable away from such ties,
    which the margin check asserts."""
    import random

    from fastulm.tokenize import main as tokenize_main

    rows = ["label,text,is_valid"]
    words = ["great", "fun", "dull", "long", "superb", "cast", "awful", "plot", "loved", "boring"]
    draw = random.Random(0)
    for i in range(64):  # every length differs, so each rank's own longest row would differ
        body = " ".join(draw.choice(words) for _ in range(2 + i))
        rows.append(f'{"pos" if i % 2 else "neg"},"{body}.",{i % 4 == 0}')
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    corpus = str(tmp_path / "corpus")
    argv = [str(tmp_path / "t.csv"), corpus, "--workers", "1", "--quiet"]
    assert tokenize_main(argv) == 0
    single = tmp_path / "single" / "m.pt"
    single.parent.mkdir()
    _clas_step_grads(0, 1, corpus, str(single))
    double = tmp_path / "ddp" / "m.pt"
    double.parent.mkdir()
    args = (_clas_step_grads, 2, _free_port(), corpus, str(double))
    mp.spawn(_rank, args=args, nprocs=2, join=True)
    a = torch.load(single, weights_only=True)
    b = torch.load(double, weights_only=True)
    margin = _max_pool_margin(a["raw"], a["x"])
    assert margin > 1e-6, f"max-pool near-tie ({margin:.1e}): pick documents without one"
    # each rank pads to the global batch's longest document
    assert b["widths"] == a["widths"] * 2, (a["widths"], b["widths"])
    for key, n in (("reg_grads", 9), ("grads", 15)):
        assert a[key].keys() == b[key].keys() and len(a[key]) == n, key
        errs = {  # error relative to each gradient's scale, every tensor reported
            name: float((b[key][name] - value).abs().max() / value.abs().max())
            for name, value in a[key].items()
        }
        assert max(errs.values()) <= 1e-4, (key, {k: f"{e:.1e}" for k, e in errs.items()})
    for name, value in a["bn"].items():
        torch.testing.assert_close(b["bn"][name], value, msg=name)
