"""Parameter groups, freezing and the optimizer update."""

import pytest
import torch
from torch import nn
from trainkit import tiny_classifier, tiny_lm

from fastulm.train.optimizer import (
    complete_groups,
    freeze_to,
    make_optimizer,
    no_decay_params,
    set_hypers,
)


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_freeze_to_classifier_groups():
    clf = tiny_classifier()
    groups = complete_groups(clf, clf.layer_groups())
    names = {n for n, _ in clf.named_parameters()}
    head = {n for n in names if n.startswith("1.")}
    bn = {n for n, m in clf.named_modules() if isinstance(m, nn.BatchNorm1d)}
    bn_params = {n for n in names if any(n.startswith(b + ".") for b in bn)}
    assert bn_params and bn_params <= head
    rnn = [{n for n in names if n.startswith(f"0.module.rnns.{i}.")} for i in range(3)]
    emb = {n for n in names if n.startswith("0.module.encoder")}
    assert all(rnn) and emb and set().union(*rnn, emb, head) == names

    freeze_to(clf, groups, -1)  # freeze(): head only
    assert _trainable(clf) == head
    freeze_to(clf, groups, -2)
    assert _trainable(clf) == head | rnn[2]
    freeze_to(clf, groups, -3)
    assert _trainable(clf) == head | rnn[2] | rnn[1]
    freeze_to(clf, groups, 0)  # unfreeze()
    assert _trainable(clf) == names


def test_freeze_keeps_batchnorm_trainable():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    groups = [
        list(model[0].parameters()) + list(model[1].parameters()),
        list(model[2].parameters()),
    ]
    freeze_to(model, groups, -1)
    assert _trainable(model) == {"1.weight", "1.bias", "2.weight", "2.bias"}


def test_lm_groups_tied_weight_once():
    lm = tiny_lm()
    groups = complete_groups(lm, lm.layer_groups())
    flat = [id(p) for g in groups for p in g]
    assert len(flat) == len(set(flat)) == len(list(lm.parameters()))
    freeze_to(lm, groups, -1)
    trainable = _trainable(lm)
    # the tied embedding/decoder weight and decoder bias train; no LSTM weight does
    assert "0.encoder.weight" in trainable and "1.decoder.bias" in trainable
    assert not any("rnns" in n for n in trainable)


def test_no_decay_set_is_norm_and_bias():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.LSTM(4, 4), nn.Linear(4, 2))
    exempt = no_decay_params(model)
    names = {n for n, p in model.named_parameters() if id(p) in exempt}
    # like fastai's bn_bias_params: the LSTM's bias_ih/bias_hh are not `.bias` and decay
    assert names == {"0.bias", "1.weight", "1.bias", "3.bias"}


def fastai_adam_reference(params, grads_seq, lrs, moms, wd, sqr_mom=0.99, eps=1e-5, decay=None):
    """fastai's Adam written out: decoupled wd, dampened averages, bias correction."""
    params = [p.detach().clone() for p in params]
    grad_avg = [torch.zeros_like(p) for p in params]
    sqr_avg = [torch.zeros_like(p) for p in params]
    for step, (grads, lr, mom) in enumerate(zip(grads_seq, lrs, moms), start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            if decay is None or decay[i]:
                p.mul_(1 - lr * wd)
            grad_avg[i] = mom * grad_avg[i] + (1 - mom) * g
            sqr_avg[i] = sqr_mom * sqr_avg[i] + (1 - sqr_mom) * g * g
            debias1, debias2 = 1 - mom**step, 1 - sqr_mom**step
            p.add_(-lr / debias1 * grad_avg[i] / ((sqr_avg[i] / debias2).sqrt() + eps))
    return params


def test_adam_matches_fastai_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3))
    start = [p.detach().clone() for p in model.parameters()]
    grads_seq = [[torch.randn_like(p) for p in start] for _ in range(5)]
    lrs, moms = [1e-2, 3e-2, 2e-2, 5e-3, 1e-3], [0.95, 0.9, 0.85, 0.9, 0.95]
    opt = make_optimizer(model, [list(model.parameters())], wd=0.1)
    for grads, lr, mom in zip(grads_seq, lrs, moms):
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        set_hypers(opt, [lr], mom)
        opt.step()
    expected = fastai_adam_reference(start, grads_seq, lrs, moms, wd=0.1, decay=[True, False])
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)


@pytest.mark.reference
def test_adam_matches_fastai(fastai_text):
    from fastai.optimizer import Adam

    torch.manual_seed(0)
    ours = nn.Linear(6, 4)
    theirs = nn.Linear(6, 4)
    theirs.load_state_dict(ours.state_dict())
    opt = make_optimizer(ours, [list(ours.parameters())], wd=0.01)
    ref = Adam(list(theirs.parameters()), lr=1e-2, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01)
    for step in range(6):
        g = [torch.randn_like(p) for p in ours.parameters()]
        lr, mom = 1e-2 * (step + 1), 0.95 - 0.02 * step
        for p, q, gi in zip(ours.parameters(), theirs.parameters(), g):
            p.grad, q.grad = gi.clone(), gi.clone()
        set_hypers(opt, [lr], mom)
        ref.set_hypers(lr=lr, mom=mom)
        # fastai's Learner exempts biases from wd (wd_bn_bias=False); mirror that here
        ref.state[theirs.bias]["do_wd"] = False
        opt.step()
        ref.step()
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
