"""Each AWD-LSTM dropout: mask shape, sharing, expected scale, and off in eval."""

import pytest
import torch
from fastulm.kernels import weight_drop
from torch import nn

from fastulm.model.awd_lstm import WeightDropLSTM
from fastulm.model.dropouts import EmbeddingDropout, RNNDropout


def test_rnn_dropout_is_locked_over_time_with_expected_scale():
    torch.manual_seed(0)
    p = 0.3
    drop = RNNDropout(p).train()
    x = torch.randn(200, 7, 150)
    out = drop(x)
    mask = out / x  # [bs, T, F]
    assert torch.allclose(mask, mask[:, :1].expand_as(mask))  # one mask per (row, feature)
    m = mask[:, 0]
    kept = m != 0
    torch.testing.assert_close(m[kept], torch.full_like(m[kept], 1 / (1 - p)))
    assert (~kept).float().mean().item() == pytest.approx(p, abs=0.02)
    assert m.mean().item() == pytest.approx(1.0, abs=0.03)  # expectation preserved
    assert not torch.equal(m[0], m[1])  # rows get different masks
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(RNNDropout(0.0).train()(x), x)


def test_embedding_dropout_drops_whole_words():
    torch.manual_seed(0)
    p, V, D = 0.5, 2000, 8
    emb = nn.Embedding(V, D, padding_idx=1)
    drop = EmbeddingDropout(emb, p).train()
    ids = torch.arange(V).repeat(3, 1)  # every word three times
    out = drop(ids)
    w = emb.weight.detach()
    kept = out[0].abs().sum(-1) > 0
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])  # same word, same fate
    torch.testing.assert_close(out[0][kept], w[kept] / (1 - p))
    assert torch.all(out[0][~kept] == 0)
    assert (~kept).float().mean().item() == pytest.approx(p, abs=0.04)
    assert torch.equal(drop.eval()(ids), w[ids])


def test_embedding_dropout_gradient_matches_masked_weight_lookup():
    """Same gradient as the reference formulation: embedding(ids, weight * mask)."""
    torch.manual_seed(0)
    emb = nn.Embedding(30, 5, padding_idx=1)
    drop = EmbeddingDropout(emb, 0.4).train()
    ids = torch.randint(0, 30, (4, 9))
    ids[0, :3] = 1
    torch.manual_seed(5)
    drop(ids).pow(2).sum().backward()
    g_ours = emb.weight.grad.clone()
    emb.weight.grad = None
    torch.manual_seed(5)
    mask = emb.weight.new_empty(30).bernoulli_(0.6).div_(0.6)
    ref = nn.functional.embedding(ids, emb.weight * mask[:, None], padding_idx=1)
    ref.pow(2).sum().backward()
    torch.testing.assert_close(g_ours, emb.weight.grad)


def _torch_lstm(layer, x, w_hh):
    ref = nn.LSTM(layer.n_in, layer.n_out, batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(layer.module.weight_ih_l0)
        ref.weight_hh_l0.copy_(w_hh)
        ref.bias_ih_l0.copy_(layer.module.bias_ih_l0)
        ref.bias_hh_l0.copy_(layer.module.bias_hh_l0)
    return ref(x)[0]


def test_weight_drop_one_mask_per_call_shared_over_batch_and_time():
    torch.manual_seed(0)
    p = 0.5
    layer = WeightDropLSTM(6, 10, p).train()
    x = torch.randn(5, 12, 6)
    zeros = torch.zeros(1, 5, 10)
    torch.manual_seed(123)
    out, _ = layer(x, (zeros, zeros))
    torch.manual_seed(123)  # the seed the layer drew
    seed = int(torch.randint(2**31 - 1, (1,)).item())
    w = weight_drop(layer.weight_hh_l0_raw.detach(), p, seed)
    raw = layer.weight_hh_l0_raw.detach()
    dropped = w == 0
    assert dropped.float().mean().item() == pytest.approx(p, abs=0.05)
    torch.testing.assert_close(w[~dropped], raw[~dropped] / (1 - p))
    # the whole batch and every time step used that one dropped matrix
    torch.testing.assert_close(out, _torch_lstm(layer, x, w), atol=1e-6, rtol=1e-5)
    # gradient reaches the raw weight only where it was kept
    out.sum().backward()
    g = layer.weight_hh_l0_raw.grad
    assert torch.all(g[dropped] == 0) and (g[~dropped] != 0).float().mean() > 0.9


def test_weight_drop_off_in_eval():
    torch.manual_seed(0)
    layer = WeightDropLSTM(6, 10, 0.5).eval()
    x = torch.randn(3, 4, 6)
    zeros = torch.zeros(1, 3, 10)
    out, _ = layer(x, (zeros, zeros))
    expected = _torch_lstm(layer, x, layer.weight_hh_l0_raw.detach())
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


def test_flat_weight_views_give_identical_output_and_gradients():
    """The single-buffer weight list built for cuDNN changes nothing numerically (checked on
    the CPU here; on CUDA it is what lets cuDNN use the weights without compacting them)."""
    from fastulm.model.awd_lstm import _cudnn_flat

    torch.manual_seed(0)
    ws = [torch.randn(12, 4), torch.randn(12, 3), torch.randn(12), torch.randn(12)]
    ws = [w.requires_grad_() for w in ws]
    x = torch.randn(2, 5, 4)
    h = (torch.zeros(1, 2, 3), torch.zeros(1, 2, 3))
    outs, grads = [], []
    for weights in (ws, _cudnn_flat(ws)):
        out = torch.lstm(x, h, weights, True, 1, 0.0, True, False, True)[0]
        outs.append(out)
        grads.append(torch.autograd.grad(out.pow(2).sum(), ws))
    views = _cudnn_flat(ws)
    assert all(
        v.untyped_storage().data_ptr() == views[0].untyped_storage().data_ptr() for v in views
    )
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
