"""Gradient checkpointing replays every dropout mask: gradients identical with it on and off.

Identical up to rounding: the checkpointed first pass runs the LSTM's inference kernels and
the recompute its training kernels (oneDNN's, in fp32 on a CPU: torch picks between them by
grad mode alone, whatever ``train`` says), which may differ in the last bit (see
recompute.py), and BatchNorm over four rows amplifies that. So fp64 (one kernel for both
passes) is checked to 1e-12, fp32 to 1e-4, far below what one mask that fails to replay does
(a change of order one), and fp32 with oneDNN off (torch's own kernel in both passes) bitwise.
"""

import pytest
import torch

from fastulm.model import AWDLSTMConfig, get_classifier, get_language_model
from fastulm_testkit import cpu_bf16_lstm_ok, param_grads

V = 50
SMALL = dict(emb_sz=16, n_hid=24)


TOL = {torch.float64: dict(atol=1e-12, rtol=1e-12), torch.float32: dict(atol=1e-5, rtol=1e-4)}
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32])


def _assert_same(a, b, dtype):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **TOL[dtype], msg=k)


@DTYPES
def test_classifier_chunk_checkpointing_gives_identical_gradients(dtype):
    torch.manual_seed(0)
    cfg = AWDLSTMConfig.classifier(bptt=4, max_len=12, **SMALL)  # dropouts on
    plain = get_classifier(V, 3, cfg).to(dtype)
    ckpt = get_classifier(V, 3, cfg, checkpoint=True).to(dtype)
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
        results.append((loss.detach(), param_grads(model)))
    torch.testing.assert_close(results[0][0], results[1][0], **TOL[dtype])
    _assert_same(results[0][1], results[1][1], dtype)
    assert results[0][1]["0.module.rnns.0.weight_hh_l0_raw"].abs().sum() > 0


def _lm_losses_and_grads(dtype):
    """Two windows with the hidden state carried between them, without and with checkpointing."""
    torch.manual_seed(0)
    plain = get_language_model(V, **SMALL).to(dtype)
    ckpt = get_language_model(V, checkpoint=True, **SMALL).to(dtype)
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
        results.append((losses, param_grads(model)))
    return results


@DTYPES
def test_lm_layer_checkpointing_gives_identical_gradients_with_carried_state(dtype):
    results = _lm_losses_and_grads(dtype)
    torch.testing.assert_close(results[0][0], results[1][0], **TOL[dtype])
    _assert_same(results[0][1], results[1][1], dtype)


def test_one_lstm_kernel_for_both_passes_gives_bitwise_identical_fp32_gradients(monkeypatch):
    """Where both passes run the same LSTM kernel the replay is exact, in fp32 too: with
    oneDNN off, torch's own kernel (the same with and without autograd) gives the LM's
    gradients bit for bit. (Not so the classifier's: its chunks' ``bias_hh`` gradients add up
    in another order when each chunk's come back from its own recompute.)"""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    (losses_a, grads_a), (losses_b, grads_b) = _lm_losses_and_grads(torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(losses_a, losses_b))
    assert grads_a.keys() == grads_b.keys()
    for k in grads_a:
        assert torch.equal(grads_a[k], grads_b[k]), k


def _clf_pair(dtype=torch.float32):
    torch.manual_seed(0)
    cfg = AWDLSTMConfig.classifier(bptt=4, max_len=12, **SMALL)
    plain = get_classifier(V, 3, cfg).to(dtype).train()
    ckpt = get_classifier(V, 3, cfg, checkpoint=True).to(dtype).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randint(2, V, (4, 22))
    x[3, :8] = 1
    return plain, ckpt, x, torch.tensor([0, 1, 2, 0])


def test_first_pass_runs_without_autograd_and_the_recompute_with_it():
    """The point of recompute.py: the LSTM's first pass takes the inference kernels."""
    _, ckpt, x, y = _clf_pair()
    modes = []
    ckpt.body.rnns[0].register_forward_hook(lambda *_: modes.append(torch.is_grad_enabled()))
    loss = torch.nn.functional.cross_entropy(ckpt(x).logits, y)
    n_chunks = len(modes)  # 22 tokens, bptt 4, max_len 12: 3 kept chunks of 6
    assert modes == [False] * n_chunks
    loss.backward()
    assert modes[n_chunks:] == [True] * 3


def test_autograd_grad_and_frozen_layers_see_the_same_gradients():
    """``torch.autograd.grad`` (not only ``.backward()``), with the embedding frozen."""
    plain, ckpt, x, y = _clf_pair(torch.float64)
    got = []
    for model in (plain, ckpt):
        model.body.encoder.weight.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        torch.manual_seed(3)
        loss = torch.nn.functional.cross_entropy(model(x).logits, y)
        got.append(torch.autograd.grad(loss, params))
        assert all(p.grad is None for p in model.parameters())
    for a, b in zip(*got):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.skipif(not cpu_bf16_lstm_ok(), reason="no bf16 LSTM on this CPU")
def test_bf16_autocast_replays_in_the_recompute():
    """The recompute runs under the first pass's autocast state, also when backward is
    called outside the autocast block."""
    plain, ckpt, x, y = _clf_pair()
    dtypes = []
    ckpt.body.rnns[0].register_forward_hook(lambda m, i, out: dtypes.append(out[0].dtype))
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x).logits, y)
        loss.backward()
        grads.append(param_grads(model))
    assert dtypes == [torch.bfloat16] * 9  # 6 chunks (3 before max_len), then 3 recomputed
    # autocast caches its bf16 copy of weight_ih within one region: without checkpointing
    # the chunks' gradients add up in bf16 on that copy, checkpointed ones in fp32
    for k in grads[0]:
        a, b = grads[0][k].double(), grads[1][k].double()
        assert (a - b).norm() <= 2e-2 * a.norm(), k
