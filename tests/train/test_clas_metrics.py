"""Classifier tasks: n-class single-label (cross-entropy, accuracy, macro-F1, confusion
matrix) and multi-label (binary cross-entropy, thresholded accuracy, micro/macro-F1),
checked against plain torch / numpy computations of the same quantities."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from trainkit import LabelLoader, tiny_classifier

from fastulm.train.learner import Learner
from fastulm_testkit import one_torch_thread  # noqa: F401 (autouse here)


def _f1_by_hand(tp, fp, fn):
    return [2 * t / (2 * t + p + n) if (2 * t + p + n) else 0.0 for t, p, n in zip(tp, fp, fn)]


def _predictions(learn, x):
    learn.model.eval()
    learn.model.reset()
    with torch.no_grad():
        logits = learn.model(x).logits.float()
    learn.model.reset()
    return logits


def _data(n_classes, multi, n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, 24, (n, 16), generator=g)
    if multi:
        y = (torch.rand(n, n_classes, generator=g) < 0.4).float()
    else:
        y = torch.randint(0, n_classes, (n,), generator=g)
    return x, y


def test_three_classes_macro_f1_and_confusion_match_a_hand_count(tmp_path):
    x, y = _data(3, multi=False)
    learn = Learner(
        tiny_classifier(n_classes=3),
        LabelLoader(x, y, bs=16),
        LabelLoader(x, y, 16, shuffle=False),
        kind="clas",
        path=tmp_path,
        show_progress=False,
        label_names=["a", "b", "c"],
    )
    rows = learn.fit_one_cycle(1, 1e-2)
    logits = _predictions(learn, x)
    pred = logits.argmax(1).numpy()
    truth = y.numpy()
    confusion = np.zeros((3, 3))
    np.add.at(confusion, (truth, pred), 1)
    assert np.array_equal(learn.confusion.numpy(), confusion)
    tp = np.diag(confusion)
    f1 = _f1_by_hand(tp, confusion.sum(0) - tp, confusion.sum(1) - tp)
    assert rows[-1]["macro_f1"] == pytest.approx(np.mean(f1))
    assert rows[-1]["accuracy"] == pytest.approx((pred == truth).mean())
    assert rows[-1]["valid_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    header = (tmp_path / "log.csv").read_text().splitlines()[0]
    assert "macro_f1" in header.split(",")


def test_multi_label_loss_and_metrics_match_torch(tmp_path):
    x, y = _data(4, multi=True)
    learn = Learner(
        tiny_classifier(n_classes=4),
        LabelLoader(x, y, bs=16),
        LabelLoader(x, y, 16, shuffle=False),
        kind="clas",
        path=tmp_path,
        show_progress=False,
        task="multi_label",
        threshold=0.4,
    )
    rows = learn.fit_one_cycle(1, 1e-2)
    logits = _predictions(learn, x)
    # fastai's BCEWithLogitsLossFlat: the mean over every (document, class) pair
    want = F.binary_cross_entropy_with_logits(logits, y).item()
    assert rows[-1]["valid_loss"] == pytest.approx(want, rel=1e-5)
    pred = (torch.sigmoid(logits) > 0.4).numpy()
    truth = y.numpy().astype(bool)
    # fastai's accuracy_multi: the share of (document, class) pairs predicted right
    assert rows[-1]["accuracy"] == pytest.approx((pred == truth).mean())
    tp = (pred & truth).sum(0)
    fp = (pred & ~truth).sum(0)
    fn = (~pred & truth).sum(0)
    assert rows[-1]["macro_f1"] == pytest.approx(np.mean(_f1_by_hand(tp, fp, fn)))
    micro = _f1_by_hand([tp.sum()], [fp.sum()], [fn.sum()])[0]
    assert rows[-1]["micro_f1"] == pytest.approx(micro)
    assert learn.confusion is None and not (tmp_path / "confusion.png").exists()


def test_a_class_never_predicted_nor_present_scores_zero():
    from fastulm.train.learner import _f1

    tp, fp, fn = torch.tensor([3.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])
    assert _f1(tp, fp, fn).tolist() == pytest.approx([0.75, 0.0])


def test_bad_task_or_threshold(tmp_path):
    x, y = _data(2, multi=False)
    dl = LabelLoader(x, y, bs=16)
    with pytest.raises(ValueError, match="task"):
        Learner(tiny_classifier(), dl, dl, kind="clas", task="regression")
    with pytest.raises(ValueError, match="threshold"):
        Learner(tiny_classifier(), dl, dl, kind="clas", task="multi_label", threshold=1.0)
