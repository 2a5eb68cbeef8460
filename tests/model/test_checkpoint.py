"""Gradient checkpointing replays every dropout mask: gradients identical with it on and off."""

import torch

from fastulm.model import AWDLSTMConfig, get_classifier, get_language_model

V = 50
SMALL = dict(emb_sz=16, n_hid=24)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-7, rtol=1e-6, msg=k)


def test_classifier_chunk_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    cfg = AWDLSTMConfig.classifier(bptt=4, max_len=12, **SMALL)  # dropouts on
    plain = get_classifier(V, 3, cfg)
    ckpt = get_classifier(V, 3, cfg, checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randint(2, V, (4, 22))
    x[2, :4] = 1
    x[3, :8] = 1
    x[3, -1] = 1
    y = torch.tensor([0, 1, 2, 0])
    results = []
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(42)
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out.logits, y) + out.raw.float().pow(2).mean()
        loss.backward()
        results.append((loss.detach(), _grads(model)))
    assert torch.equal(results[0][0], results[1][0])
    _assert_same(results[0][1], results[1][1])
    assert results[0][1]["0.module.rnns.0.weight_hh_l0_raw"].abs().sum() > 0


def test_lm_layer_checkpointing_gives_identical_gradients_with_carried_state():
    torch.manual_seed(0)
    plain = get_language_model(V, **SMALL)
    ckpt = get_language_model(V, checkpoint=True, **SMALL)
    ckpt.load_state_dict(plain.state_dict())
    xs = [torch.randint(0, V, (3, 6)) for _ in range(2)]
    results = []
    for model in (plain, ckpt):
        model.train()
        model.reset()
        torch.manual_seed(7)
        losses = []
        for x in xs:  # hidden carried between the two windows
            model.zero_grad()
            res = model.loss(x, x.roll(-1, 1))
            loss = res.loss + 2 * res.dropped.float().pow(2).mean()
            loss.backward()
            losses.append(loss.detach())
        results.append((losses, _grads(model)))
    assert all(torch.equal(a, b) for a, b in zip(results[0][0], results[1][0]))
    _assert_same(results[0][1], results[1][1])
