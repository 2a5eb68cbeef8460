"""The trainer against fastai's own Learner: the walkthrough's fits, step by step.

Both sides start from the same weights and see the same batches in the same order; every
dropout is off (the head's second dropout, fixed at 0.1 in the reference, included), so
nothing random is left and the two runs must agree up to rounding. That checks the whole
recipe at once -- one-cycle lrs and moms per step, discriminative lrs per layer group,
freeze / freeze_to / unfreeze with their optimizer resets, Adam with decoupled weight decay
and its exemptions, AR/TAR, the hidden state carried across LM batches, BatchNorm in the
head, validation and the smoothed train loss -- against the reference itself. A wrong
hyper-parameter anywhere shows up as a relative difference of 1e-2 or more (weight decay
0.02 instead of 0.01: 3e-2); rounding leaves about 1e-4.
"""

from __future__ import annotations

import pytest
import torch

from fastulm.model import AWDLSTMConfig, get_classifier, get_language_model
from fastulm.train.learner import Learner
from fastulm_testkit import fastai_weight_drop_off

pytestmark = pytest.mark.reference

V, SMALL = 50, dict(emb_sz=16, n_hid=24)
TEXT_MOMS = (0.8, 0.7, 0.8)


class Batches:
    """A fixed list of (x, y) batches behind fastulm's loader contract."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def set_epoch(self, epoch):
        pass


@pytest.fixture
def float64():
    """fp64 everywhere, so the runs differ only by the reference's fp32 loss and schedule."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def no_dropout(ref, ours):
    fastai_weight_drop_off(ref)
    for m in [*ref.modules(), *ours.modules()]:
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def side_by_side(ft, ref, ours, kind, splitter, train, valid, path):
    dls = ft.DataLoaders(ft.DataLoader(train, bs=None), ft.DataLoader(valid, bs=None), device="cpu")
    theirs = ft.TextLearner(
        dls, ref, loss_func=ft.CrossEntropyLossFlat(), splitter=splitter, metrics=[ft.accuracy]
    )
    mine = Learner(
        ours,
        Batches(train),
        Batches(valid),
        kind=kind,
        path=path,
        moms=TEXT_MOMS,
        show_progress=False,
        device="cpu",
        mixed_precision="fp32",
    )
    return theirs, mine


def run_both(theirs, mine, steps):
    """Apply each step to both learners; returns the per-epoch rows of both."""
    rows_ref, rows_ours = [], []
    with theirs.no_bar(), theirs.no_logging():
        for step in steps:
            step(theirs)
            got = step(mine)
            if isinstance(got, list):  # a fit: its table rows
                rows_ref += [list(map(float, v)) for v in theirs.recorder.values]
                rows_ours += [[r["train_loss"], r["valid_loss"], r["accuracy"]] for r in got]
    return rows_ref, rows_ours


def assert_same_run(ref, ours, rows_ref, rows_ours, rtol):
    assert len(rows_ours) == len(rows_ref) > 0
    for (tl, vl, acc), (tl2, vl2, acc2) in zip(rows_ref, rows_ours):
        assert tl2 == pytest.approx(tl, rel=rtol)
        assert vl2 == pytest.approx(vl, rel=rtol)
        assert acc2 == pytest.approx(acc, abs=1e-6)
    theirs = ref.state_dict()
    for name, value in ours.state_dict().items():
        if value.dtype.is_floating_point:
            want = theirs[name]
            err = ((value - want).abs().max() / want.abs().max().clamp_min(1e-8)).item()
            assert err <= rtol, f"{name}: relative difference {err:.2e}"


def test_lm_fits_match_fastai(fastai_text, tmp_path):
    """freeze -> fit_one_cycle(1, 2e-2) -> unfreeze -> fit_one_cycle(2, 2e-3), hidden
    state carried across the batches of an epoch; fastulm's loss is the fused linear + CE."""
    ft = fastai_text
    bs, bptt = 4, 7
    g = torch.Generator().manual_seed(3)

    def stream(n):
        s = torch.randint(2, V, (bs, n * bptt + 1), generator=g)
        return [
            (s[:, i * bptt : (i + 1) * bptt], s[:, i * bptt + 1 : (i + 1) * bptt + 1])
            for i in range(n)
        ]

    train, valid = stream(6), stream(2)
    torch.manual_seed(0)
    ref = ft.get_language_model(
        ft.AWD_LSTM, V, config=dict(ft.awd_lstm_lm_config, **SMALL), drop_mult=0.0
    )
    ours = get_language_model(V, AWDLSTMConfig.lm(0.0, **SMALL))
    ours.load_state_dict(ref.state_dict())
    no_dropout(ref, ours)
    theirs, mine = side_by_side(ft, ref, ours, "lm", ft.awd_lstm_lm_split, train, valid, tmp_path)
    rows = run_both(
        theirs,
        mine,
        [
            lambda learn: learn.freeze(),
            lambda learn: learn.fit_one_cycle(1, 2e-2),
            lambda learn: learn.unfreeze(),
            lambda learn: learn.fit_one_cycle(2, 2e-3),
        ],
    )
    assert_same_run(ref, ours, *rows, rtol=1e-5)


def test_classifier_gradual_unfreezing_matches_fastai(fastai_text, float64, tmp_path):
    """The walkthrough's classifier schedule on padded documents of several lengths:
    freeze -> fit(2, 2e-2) -> freeze_to(-2) -> fit(1, slice) -> unfreeze -> fit(2, slice).
    In fp64: with batches of 3-6 rows the head's BatchNorm turns fp32 rounding into 1e-3."""
    ft = fastai_text
    bptt, max_len = 5, 10
    g = torch.Generator().manual_seed(2)

    def batch(lengths):
        docs = [torch.randint(2, V, (n,), generator=g) for n in lengths]
        m = max(lengths)
        x = torch.stack([ft.pad_chunk(d, pad_idx=1, seq_len=bptt, pad_len=m) for d in docs])
        return x, torch.randint(0, 2, (len(lengths),), generator=g)

    # lengths clear of fastai issue 3379, where the reference drops tokens fastulm keeps
    train = [batch(n) for n in ([23, 21, 17, 12, 8, 6], [10, 10, 5], [7, 6, 5], [30, 26, 15])]
    train.append(batch([12, 11, 9, 4]))
    valid = [batch([23, 21, 17, 12, 8, 6]), batch([10, 10, 5])]
    torch.manual_seed(0)
    ref = ft.get_text_classifier(
        ft.AWD_LSTM, V, 2, seq_len=bptt, config=dict(SMALL), drop_mult=0.0, max_len=max_len
    )
    ours = get_classifier(V, 2, bptt=bptt, max_len=max_len, drop_mult=0.0, **SMALL)
    ours.load_state_dict(ref.state_dict())
    no_dropout(ref, ours)
    theirs, mine = side_by_side(
        ft, ref, ours, "clas", ft.awd_lstm_clas_split, train, valid, tmp_path
    )
    rows = run_both(
        theirs,
        mine,
        [
            lambda learn: learn.freeze(),
            lambda learn: learn.fit_one_cycle(2, 2e-2),
            lambda learn: learn.freeze_to(-2),
            lambda learn: learn.fit_one_cycle(1, slice(1e-2 / 2.6**4, 1e-2)),
            lambda learn: learn.unfreeze(),
            lambda learn: learn.fit_one_cycle(2, slice(1e-3 / 2.6**4, 1e-3)),
        ],
    )
    assert_same_run(ref, ours, *rows, rtol=1e-3)
