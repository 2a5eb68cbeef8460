"""The memory planner: its plans, run for real, stay under the budget.

Every plan here is checked against the budget by training with its settings -- real loader
batches, the optimizer, validation -- under the same storage meter the planner probes with
(peak bytes of live CPU tensor storages, parameters and optimizer state included), never
against the planner's own numbers.
"""

import random
import re

import numpy as np
import pytest
import torch

from fastulm.data.clas_loader import ClasLoader
from fastulm.model import AWDLSTMConfig, get_classifier
from fastulm.train.learner import Learner
from fastulm.train.memory_peak import OverLimit, StoragePeak, storage_bytes
from fastulm.train.memory_plan import (
    HEADROOM,
    MemoryBudgetError,
    parse_size,
    plan_for_learner,
    plan_memory,
    probe,
    round_up_size,
    worst_batch,
)
from fastulm.train.optimizer import lr_range
from fastulm.train.text_learners import language_model_learner, text_classifier_learner
from fastulm_testkit import one_torch_thread, write_small_corpus  # noqa: F401

SIZES = {
    "tiny": dict(emb_sz=16, n_hid=32, n_layers=2),
    "small": dict(emb_sz=32, n_hid=64, n_layers=3),
}
COMMON = dict(bptt=8, mixed_precision="fp32", device="cpu", show_progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_small_corpus(tmp_path_factory.mktemp("memplan"))


def build(corpus, kind, **kw):
    factory = language_model_learner if kind == "lm" else text_classifier_learner
    return factory(corpus, **{**COMMON, "show_table": False, **kw})


def resident(learn, *tensors):
    """Bytes already held before a step: weights, buffers, gradients, optimizer state."""
    held = [*learn.model.state_dict().values(), *(p.grad for p in learn.model.parameters())]
    held += [v for s in learn.opt.state.values() for v in s.values()]
    return storage_bytes([*held, *tensors])


def train_for_real(learn, n_steps=None) -> int:
    """Peak tensor bytes of real training: the loader's batches (all, or the first n_steps),
    every layer trainable, then a validation pass."""
    learn.unfreeze()
    lrs = lr_range(1e-3, len(learn.layer_groups))
    with StoragePeak(resident(learn)) as meter:
        learn.train_dl.set_epoch(0)
        for i, (x, y) in enumerate(learn.train_dl):
            if n_steps is not None and i >= n_steps:
                break
            learn._step(x, y, lrs, 0.8)
        learn.validate()
    return meter.peak


# ------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize(
    "text, expected",
    [
        ("8GiB", 8 * 2**30),
        ("8GB", 8 * 10**9),
        ("8g", 8 * 2**30),
        ("8G", 8 * 2**30),
        ("512MiB", 512 * 2**20),
        ("512mb", 512 * 10**6),
        ("1.5 GiB", 3 * 2**29),
        ("64k", 65536),
        ("100", 100),
        (4096, 4096),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "8XB", "-1GiB", "0", "8 GiB 2", "eight"])
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(ValueError, match="memory size"):
        parse_size(text)


@pytest.mark.parametrize("n", [1, 999, 2**20 + 1, int(1.2345 * 2**30), 287 * 1024 + 5])
def test_round_up_size_is_parseable_and_never_below(n):
    text = round_up_size(n)
    assert n <= parse_size(text) <= n * 1.1 + 1
    assert round_up_size(2**30) == "1GiB"


# ------------------------------------------------------------------------------ worst batch
def test_worst_batch_is_the_longest_document_in_the_loaders_layout():
    split = hand_split([5, 9, 30, 12])
    dl = ClasLoader(split, bs=2, bptt=8, shuffle=True)
    x, y, _ = worst_batch(dl, 3)
    assert x.shape == (3, 30)  # the 30-token document, whole, for every row
    doc = split.ids[split.offsets[2] : split.offsets[3]]
    assert (x.numpy() == doc).all() and (y == 0).all()
    hot = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]  # multi-label: the long document's row
    x, y, _ = worst_batch(ClasLoader(split, bs=2, bptt=8, multi_hot=hot), 3)
    assert y.tolist() == [[0.0, 0.0, 1.0]] * 3


def test_lm_worst_batch_is_the_longest_random_window(corpus):
    learn = build(corpus, "lm", bs=4, random_bptt=True, **SIZES["tiny"])
    x, y, _ = worst_batch(learn.train_dl, 4)
    assert x.shape == y.shape == (4, 8 + 20)  # bptt + RAND_MAX_EXTRA
    windows = [xb.shape[1] for xb, _ in learn.train_dl]
    assert max(windows) <= 28


# ------------------------------------------------------------------------------ plans
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("kind", ["clas", "lm"])
def test_plans_trained_for_real_stay_under_the_budget(corpus, kind, size):
    """Budgets from ample to tight; each plan, trained for real, peaks under its budget."""
    max_bs = 32
    sizes = {**SIZES[size], **(dict(random_bptt=True) if kind == "lm" else {})}
    learn = build(corpus, kind, bs=max_bs, **sizes)
    full = probe(learn, max_bs, False, "fp32")  # bs 32 without checkpointing
    plans = []
    for scale in (2.0, 0.8, 0.4):
        budget = int(full * HEADROOM * scale)
        plan = plan_memory(corpus, kind, budget, bs=max_bs, **COMMON, **sizes)
        assert plan.measured_peak * HEADROOM <= budget
        real = build(corpus, kind, **{**sizes, **plan.learner_kwargs()})
        peak = train_for_real(real, n_steps=6)
        assert peak <= budget, plan.describe()
        plans.append(plan)
    ample, middle, tight = plans
    assert (ample.bs, ample.grad_checkpoint) == (max_bs, False)  # room to spare: as asked
    assert len(ample.probes) == 1
    for plan in (middle, tight):  # less room: a smaller batch or recomputation
        assert plan.bs < max_bs or plan.grad_checkpoint
    assert tight.bs <= middle.bs


def test_the_plan_is_the_largest_batch_that_fits(corpus):
    """One more row in the chosen configuration would not fit, measured independently."""
    learn = build(corpus, "clas", bs=32, **SIZES["tiny"])
    budget = int(probe(learn, 32, False, "fp32") * HEADROOM * 0.5)
    plan = plan_for_learner(learn, budget)
    assert plan.bs < 32
    bigger = probe(learn, plan.bs + 1, plan.grad_checkpoint, plan.mixed_precision)
    assert bigger * HEADROOM > budget
    if plan.grad_checkpoint:  # recomputation was worth it: over 4/3 of the best without
        plain = [p for p in plan.probes if not p.grad_checkpoint and p.peak is not None]
        best_plain = max((p.bs for p in plain), default=0)
        assert plan.bs > best_plain * 4 / 3


def hand_split(lengths, vocab=40, seed=0):
    """A split (ids, offsets, labels) with documents of the given lengths."""

    class Split:
        name = "hand"

    rng = np.random.default_rng(seed)
    s = Split()
    s.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    s.ids = rng.integers(2, vocab, int(s.offsets[-1])).astype(np.int32)
    s.labels = np.arange(len(lengths)) % 2
    return s


def test_one_long_document_decides_the_plan():
    """Forty 6-token reviews and one of 120: the plan holds for the batch that carries the
    long one, which a plan made on typical batches would not."""
    lengths = [6] * 40 + [120]
    cfg = AWDLSTMConfig.classifier(emb_sz=16, n_hid=32, n_layers=2, bptt=8, max_len=64)

    def learner(bs):
        torch.manual_seed(0)
        train = ClasLoader(hand_split(lengths), bs, bptt=8, shuffle=True)
        valid = ClasLoader(hand_split([6] * 8, seed=1), bs, bptt=8)
        model = get_classifier(40, 2, cfg)
        return Learner(model, train, valid, kind="clas", device="cpu", show_progress=False)

    learn = learner(16)
    typical = probe_batch(learn, *next(iter(ClasLoader(hand_split([6] * 16), 16, bptt=8))))
    long_peak = probe(learn, 16, False, "fp32")
    assert long_peak > 1.5 * typical  # the long document costs far more than a typical batch
    budget = int(typical * HEADROOM * 1.2)  # ample for typical batches, not for the long one
    assert train_for_real(learner(16)) > budget  # planning on typical batches: over budget
    plan = plan_for_learner(learn, budget)
    assert plan.bs < 16 or plan.grad_checkpoint
    peak = train_for_real(
        learner(plan.bs) if not plan.grad_checkpoint else ckpt_on(learner(plan.bs))
    )
    assert peak <= budget, plan.describe()


def ckpt_on(learn):
    learn.model.body.checkpoint = True
    return learn


def probe_batch(learn, x, y) -> int:
    """Peak of one training step on (x, y), unfrozen, on a fresh optimizer."""
    learn.unfreeze()
    lrs = lr_range(1e-3, len(learn.layer_groups))
    with StoragePeak(resident(learn, x, y)) as meter:
        learn._step(x, y, lrs, 0.8)
    learn.opt.state.clear()
    return meter.peak


# ------------------------------------------------------------------------------ too small
@pytest.mark.parametrize("kind", ["clas", "lm"])
def test_a_budget_below_the_smallest_batch_names_one_that_works(corpus, kind):
    kw = dict(bs=16, **COMMON, **SIZES["tiny"])
    with pytest.raises(MemoryBudgetError) as err:
        plan_memory(corpus, kind, "64KiB", **kw)
    msg = str(err.value)
    assert "\n" not in msg and "too small" in msg
    smallest = re.search(r"smallest budget that works is (\S+)", msg).group(1)
    min_bs = 2 if kind == "clas" else 1
    learn = build(corpus, kind, bs=16, **SIZES["tiny"])
    # measured here, independently: the leaner of with and without checkpointing
    leanest = min(probe(learn, min_bs, ck, "fp32") for ck in (False, True))
    needed = leanest * HEADROOM
    assert needed <= parse_size(smallest) <= needed * 1.1 + 1024
    plan = plan_memory(corpus, kind, smallest, **kw)  # and it does work
    assert plan.bs >= min_bs


# ------------------------------------------------------------------------------ no trace
def snapshot(learn):
    return dict(
        model={k: v.clone() for k, v in learn.model.state_dict().items()},
        opt=[{k: v.clone() for k, v in s.items()} for s in learn.opt.state.values()],
        hypers=[{k: v for k, v in g.items() if k != "params"} for g in learn.opt.param_groups],
        trainable=[p.requires_grad for p in learn.model.parameters()],
        torch_rng=torch.get_rng_state(),
        np_rng=np.random.get_state()[1].copy(),
        py_rng=random.getstate(),
        hidden=[[t.clone() for t in hc] for hc in (learn.model.body.hidden or [])],
        ckpt=learn.model.body.checkpoint,
        precision=learn.precision.mode,
    )


def same(a, b):
    for key in a:
        x, y = a[key], b[key]
        if key == "model":
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), key
        elif key in ("opt", "hidden"):
            assert len(x) == len(y), key
            for sx, sy in zip(x, y):
                items = zip(sx.values(), sy.values()) if isinstance(sx, dict) else zip(sx, sy)
                assert all(torch.equal(u, v) for u, v in items), key
        elif key == "torch_rng":
            assert torch.equal(x, y), key
        elif key == "np_rng":
            assert np.array_equal(x, y), key
        else:
            assert x == y, key


@pytest.mark.parametrize("kind", ["lm", "clas"])
def test_probes_leave_the_learner_as_they_found_it(corpus, kind):
    """Weights, optimizer state, hyper-parameters, trainable flags, hidden state and every
    random generator are unchanged, after a full probe and one stopped over its limit; and
    training goes on exactly as it would have without the probes."""
    kw = dict(bs=8, **SIZES["tiny"])
    a, b = build(corpus, kind, **kw), build(corpus, kind, **kw)
    for learn in (a, b):  # the same two steps, from the same random state; probes between
        torch.manual_seed(1)
        learn.train_dl.set_epoch(0)
        batches = iter(learn.train_dl)
        lrs = lr_range(1e-2, len(learn.layer_groups))
        learn._step(*next(batches), lrs, 0.8)  # optimizer state and a carried hidden state
        if learn is a:
            before = snapshot(a)
            full = probe(a, 8, True, "fp32")
            same(before, snapshot(a))
            assert probe(a, 8, False, "fp32", limit=full // 3) is None  # stopped mid-step
            same(before, snapshot(a))
        learn._step(*next(batches), lrs, 0.8)
    same(snapshot(b), snapshot(a))


def test_storage_peak_counts_what_is_alive():
    """Hand-computed: 1000 + 2000 floats alive together, then 500 more after one dies."""
    with StoragePeak(base=100) as meter:
        a = torch.ones(1000)
        b = torch.ones(2000)
        del b
        c = torch.ones(500)
    assert meter.peak == 100 + 4 * 3000
    assert meter.current == 100 + 4 * 1500
    del a, c
    with pytest.raises(OverLimit), StoragePeak(limit=4 * 100):
        torch.ones(101)
