"""Model behaviour: config, layer groups, hidden-state carry, the classifier's chunk loop."""

import pytest
import torch

from fastulm.model import AWDLSTMConfig, get_classifier, get_language_model
from fastulm_testkit import pad_chunk

V = 50
SMALL = dict(emb_sz=16, n_hid=24)


def test_config_defaults_and_drop_mult():
    lm = AWDLSTMConfig.lm()
    assert (lm.emb_sz, lm.n_hid, lm.n_layers, lm.pad_token) == (400, 1152, 3, 1)
    assert (lm.output_p, lm.hidden_p, lm.input_p, lm.embed_p, lm.weight_p) == (
        0.1,
        0.15,
        0.25,
        0.02,
        0.2,
    )
    c = AWDLSTMConfig.classifier(0.5)
    assert (c.output_p, c.hidden_p, c.input_p, c.embed_p, c.weight_p) == (
        0.2,
        0.15,
        0.2,
        0.025,
        0.25,
    )
    assert c.head_ps == (0.1,) and c.bptt == 72 and c.max_len == 1440
    m = get_language_model(V, drop_mult=0.3, **SMALL)
    assert m.head.output_dp.p == pytest.approx(0.03)
    assert m.body.rnns[0].weight_p == pytest.approx(0.06)
    assert AWDLSTMConfig.from_dict(c.to_dict()) == c


def test_config_refuses_dropouts_that_divide_by_zero():
    # the classifier's weight_p 0.5 reaches 1 at drop_mult 2: the dropout scale 1 / (1 - p)
    assert AWDLSTMConfig.classifier(1.99).weight_p == pytest.approx(0.995)
    with pytest.raises(ValueError, match=r"drop_mult 2 makes .*weight_p 1"):
        AWDLSTMConfig.classifier(2.0)
    with pytest.raises(ValueError, match="drop_mult must not be negative"):
        AWDLSTMConfig.lm(-0.1)
    with pytest.raises(ValueError, match=r"hidden_p must be in \[0, 1\)"):
        AWDLSTMConfig(hidden_p=1.0)
    with pytest.raises(ValueError, match="head_ps"):
        AWDLSTMConfig(head_ps=(0.1, -0.2))
    with pytest.raises(ValueError, match="n_hid must be positive"):
        get_language_model(V, n_hid=0)


def _check_groups(groups, model, n):
    assert len(groups) == n
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids))  # nothing twice (tied weight once)
    assert set(ids) == {id(p) for p in model.parameters()}  # everything once


def test_layer_groups_cover_every_parameter_once():
    lm = get_language_model(V, **SMALL)
    groups = lm.layer_groups()
    _check_groups(groups, lm, 4)
    assert any(p is lm.body.encoder.weight for p in groups[-1])
    assert all(
        any(p is q for q in groups[i]) for i, r in enumerate(lm.body.rnns) for p in r.parameters()
    )
    clf = get_classifier(V, 2, **SMALL)
    cgroups = clf.layer_groups()
    _check_groups(cgroups, clf, 5)
    assert cgroups[0] == [clf.body.encoder.weight]
    assert {id(p) for p in cgroups[4]} == {id(p) for p in clf.head.parameters()}


def test_hidden_carry_equals_one_long_sequence():
    torch.manual_seed(0)
    lm = get_language_model(V, **SMALL).eval()
    x = torch.randint(0, V, (3, 20))
    with torch.no_grad():
        lm.reset()
        full = lm(x).logits
        lm.reset()
        pieces = torch.cat([lm(x[:, a:b]).logits for a, b in [(0, 7), (7, 13), (13, 20)]], 1)
        lm.reset()  # reset really forgets
        again = lm(x[:, 7:13]).logits
        fresh = get_language_model(V, **SMALL).eval()
        fresh.load_state_dict(lm.state_dict())
        ref = fresh(x[:, 7:13]).logits
    torch.testing.assert_close(pieces, full, atol=1e-6, rtol=1e-5)
    assert torch.equal(again, ref)


def test_carried_hidden_is_detached():
    lm = get_language_model(V, **SMALL).train()
    lm(torch.randint(0, V, (2, 5))).logits.sum().backward()
    assert all(not t.requires_grad for hc in lm.body.hidden for t in hc)
    lm(torch.randint(0, V, (2, 5))).logits.sum().backward()  # no "backward twice" error


def test_lm_loss_equals_cross_entropy_of_logits():
    torch.manual_seed(0)
    lm = get_language_model(V, **SMALL).eval()
    x, y = torch.randint(0, V, (3, 6)), torch.randint(0, V, (3, 6))
    y[0, 0] = -100
    with torch.no_grad():
        lm.reset()
        logits = lm(x).logits
        lm.reset()
        res = lm.loss(x, y)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    torch.testing.assert_close(res.loss, ref)
    valid = y.reshape(-1) != -100
    assert res.n_tokens.item() == 17
    assert (
        res.n_correct.item()
        == (logits.reshape(-1, V).argmax(-1) == y.reshape(-1))[valid].sum().item()
    )


def test_unsorted_batch_equals_sorted_batch():
    """Rows need not be sorted by length: each row's result is its own."""
    torch.manual_seed(0)
    clf = get_classifier(V, 3, bptt=4, **SMALL).eval()
    docs = [torch.randint(2, V, (n,)) for n in (5, 17, 2, 11, 9)]
    order = [1, 3, 4, 0, 2]
    with torch.no_grad():
        unsorted = clf(pad_chunk(docs, 4)).logits
        srt = clf(pad_chunk([docs[i] for i in order], 4)).logits
        alone = torch.cat([clf(d[None]).logits for d in docs])
    torch.testing.assert_close(unsorted[order], srt, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(unsorted, alone, atol=1e-6, rtol=1e-5)


def test_max_len_window_only_changes_what_is_pooled():
    """Chunks before the window still feed the state (run under no_grad): the result equals
    running every chunk and pooling the window by hand."""
    torch.manual_seed(0)
    bptt, max_len = 4, 8
    clf = get_classifier(V, 3, bptt=bptt, max_len=max_len, **SMALL).eval()
    full = get_classifier(V, 3, bptt=bptt, max_len=None, **SMALL).eval()
    full.load_state_dict(clf.state_dict())
    x = pad_chunk([torch.randint(2, V, (n,)) for n in (22, 19, 14)], bptt)
    with torch.no_grad():
        out = clf(x)
        out_full = full(x)
    assert out.raw.shape[1] == 6  # sl 22: chunks at 16 and 20 are kept (sl - i <= max_len)
    torch.testing.assert_close(out.raw, out_full.raw[:, -6:])


def test_layout_error_names_the_row():
    clf = get_classifier(V, 2, bptt=4, **SMALL)
    x = torch.randint(2, V, (2, 8))
    x[1, :2] = 1  # starts at 2, not a chunk boundary
    with pytest.raises(ValueError, match="row 1 starts at position 2, not a multiple of bptt=4"):
        clf(x)


@pytest.mark.reference
def test_classifier_gradients_equal_fastai_with_max_len_window(fastai_text):
    """Train mode, dropouts off: fastai runs every chunk with autograd; fastulm runs the
    chunks before the window under no_grad. Loss and every gradient agree."""
    ft = fastai_text
    torch.manual_seed(0)
    bptt, max_len = 4, 8
    ref = ft.get_text_classifier(
        ft.AWD_LSTM,
        V,
        3,
        seq_len=bptt,
        config=dict(SMALL),
        drop_mult=0.0,
        max_len=max_len,
        ps=[0.0],
    )
    ours = get_classifier(V, 3, bptt=bptt, max_len=max_len, drop_mult=0.0, head_ps=(0.0,), **SMALL)
    ours.load_state_dict(ref.state_dict())
    x = pad_chunk([torch.randint(2, V, (n,)) for n in (22, 21, 18, 13, 10)], bptt)  # no 3379
    y = torch.tensor([0, 1, 2, 1, 0])
    ref.train()
    ours.train()
    ref[1].eval()  # batchnorm on running stats: batch statistics of 5 rows amplify fp32 noise
    ours.head.eval()
    loss_ref = torch.nn.functional.cross_entropy(ref(x)[0], y)
    loss_ref.backward()
    loss = torch.nn.functional.cross_entropy(ours(x).logits, y)
    loss.backward()
    torch.testing.assert_close(loss, loss_ref)
    grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        g = grads[name].grad
        torch.testing.assert_close(p.grad, g, atol=1e-5 * g.abs().max().item(), rtol=1e-5, msg=name)
