"""QRNN layers (``arch="qrnn"``): the layer against its formula written out, the state carried
across windows and chunks, checkpointing, saving and loading, and the ONNX export."""

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fastulm.model import AWDLSTMConfig, get_classifier, get_language_model
from fastulm.model.encoder_io import EncoderMismatchError, load_encoder, save_encoder
from fastulm.model.qrnn import WeightDropQRNN
from fastulm_testkit import pad_chunk, param_grads

V = 50
SMALL = dict(emb_sz=16, n_hid=24, arch="qrnn")


def _layer_by_hand(layer: WeightDropQRNN, x: torch.Tensor, c: torch.Tensor, prev: torch.Tensor):
    """The QRNN layer in plain Python over time steps: gates from [previous input, input]."""
    w, b = layer.weight_raw, layer.bias
    H = layer.n_out
    hs = []
    for t in range(x.shape[1]):
        inp = x[:, t]
        if layer.window == 2:
            inp = torch.cat([prev, inp], dim=1)
            prev = x[:, t]
        gate = inp @ w.T + b
        z, f, o = (
            torch.tanh(gate[:, :H]),
            torch.sigmoid(gate[:, H : 2 * H]),
            torch.sigmoid(gate[:, 2 * H :]),
        )
        c = f * z + (1 - f) * c
        hs.append(o * c)
    return torch.stack(hs, 1), c, prev


@pytest.mark.parametrize("window", [1, 2])
def test_layer_equals_its_formula_with_a_given_state(window):
    torch.manual_seed(0)
    layer = WeightDropQRNN(5, 7, weight_p=0.5, window=window).eval().double()
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    c0 = torch.randn(1, 3, 7, dtype=torch.float64)
    prev0 = torch.randn(1, 3, 5 * (window - 1), dtype=torch.float64)
    h, (c, prev) = layer(x, (c0, prev0))
    want_h, want_c, want_prev = _layer_by_hand(layer, x, c0[0], prev0[0])
    torch.testing.assert_close(h, want_h)
    torch.testing.assert_close(c[0], want_c)
    assert prev.shape == (1, 3, 5 * (window - 1))
    if window == 2:
        torch.testing.assert_close(prev[0], want_prev)


def test_weight_drop_drops_gate_weights_in_training_only():
    torch.manual_seed(0)
    layer = WeightDropQRNN(4, 6, weight_p=0.5, window=1)
    assert torch.equal(layer.eval().dropped_weight(), layer.weight_raw)
    dropped = layer.train().dropped_weight()
    zero = dropped == 0
    assert 0.3 < zero.float().mean() < 0.7
    torch.testing.assert_close(dropped[~zero], layer.weight_raw[~zero] * 2)


def test_lm_windows_with_carried_state_equal_one_long_sequence():
    """The cell state and the first layer's previous input carry over: three windows score
    as one sequence."""
    torch.manual_seed(0)
    lm = get_language_model(V, **SMALL).eval()
    assert all(isinstance(r, WeightDropQRNN) for r in lm.body.rnns)
    x = torch.randint(0, V, (3, 20))
    with torch.no_grad():
        lm.reset()
        full = lm(x).logits
        lm.reset()
        pieces = torch.cat([lm(x[:, a:b]).logits for a, b in [(0, 7), (7, 13), (13, 20)]], 1)
    torch.testing.assert_close(pieces, full, atol=1e-6, rtol=1e-5)
    assert all(not t.requires_grad for pair in lm.body.hidden for t in pair)


def test_classifier_chunks_equal_each_document_run_alone():
    """The chunk loop (rows joining at their first chunk) gives each row what the encoder
    gives that document in one piece, pooled by hand."""
    torch.manual_seed(0)
    clf = get_classifier(V, 3, bptt=4, max_len=None, **SMALL).eval()
    docs = [torch.randint(2, V, (n,)) for n in (5, 17, 2, 11)]
    with torch.no_grad():
        batch = clf(pad_chunk(docs, 4))
        for i, d in enumerate(docs):
            out, _ = clf.body.run(d[None], clf.body.zero_state(1))
            pooled = torch.cat([out[0, -1], out[0].max(0)[0], out[0].mean(0)])
            want = (
                clf.head(pooled[None])
                if not hasattr(clf.head, "layers")
                else clf.head.layers(pooled[None])
            )
            torch.testing.assert_close(batch.logits[i], want[0], atol=1e-5, rtol=1e-4)


def test_checkpointing_gives_the_same_gradients():
    """Classifier chunks recomputed in backward replay the weight-drop and dropout masks."""
    torch.manual_seed(0)
    cfg = AWDLSTMConfig.classifier(bptt=4, max_len=12, **SMALL)
    plain = get_classifier(V, 3, cfg).double()
    ckpt = get_classifier(V, 3, cfg, checkpoint=True).double()
    ckpt.load_state_dict(plain.state_dict())
    x = pad_chunk([torch.randint(2, V, (n,)) for n in (22, 18, 9, 14)], 4)
    y = torch.tensor([0, 1, 2, 0])
    results = []
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(42)
        out = model(x)
        loss = F.cross_entropy(out.logits, y) + out.raw.pow(2).mean()
        loss.backward()
        results.append(param_grads(model))
    assert results[0].keys() == results[1].keys()
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], atol=1e-12, rtol=1e-12, msg=k)
    assert results[0]["0.module.rnns.0.weight_raw"].abs().sum() > 0


def test_encoder_save_load_and_a_mismatched_arch(tmp_path):
    torch.manual_seed(0)
    lm = get_language_model(V, **SMALL)
    vocab = [f"w{i}" for i in range(V)]
    save_encoder(lm, tmp_path / "enc", vocab)
    meta = json.loads((tmp_path / "enc.json").read_text())
    assert meta["config"]["arch"] == "qrnn"
    clf = get_classifier(V, 2, **SMALL)
    load_encoder(clf, tmp_path / "enc", vocab)
    for k, v in lm.body.state_dict().items():
        assert torch.equal(clf.body.state_dict()[k], v), k
    lstm_clf = get_classifier(V, 2, emb_sz=16, n_hid=24)
    with pytest.raises(EncoderMismatchError, match="QRNN layers but the model has LSTM"):
        load_encoder(lstm_clf, tmp_path / "enc", vocab)


def test_pretrained_lstm_weights_are_refused_clearly(tmp_path):
    from fastulm.model.pretrained import PretrainedFormatError, load_pretrained

    lm = get_language_model(V, **SMALL)
    with pytest.raises(PretrainedFormatError, match="QRNN layers: use --arch lstm"):
        load_pretrained(lm, tmp_path / "w.pth", tmp_path / "itos.pkl", ["a"])


def test_config_refuses_an_unknown_arch():
    with pytest.raises(ValueError, match="arch must be one of lstm, qrnn"):
        AWDLSTMConfig(arch="gru")


def test_bf16_autocast_trains_in_fp32_state():
    torch.manual_seed(0)
    lm = get_language_model(V, **SMALL).train()
    x = torch.randint(0, V, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = lm.loss(x, x.roll(-1, 1))
    res.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lm.parameters())
    assert all(t.dtype == torch.float32 for pair in lm.body.hidden for t in pair)


# ------------------------------------------------------------------ export


@pytest.fixture()
def vocab():
    from fastulm.text import SPECIAL_TOKENS

    words = [
        "the",
        "a",
        "film",
        "movie",
        "good",
        "bad",
        "great",
        "awful",
        "fun",
        "dull",
        ",",
        ".",
        "!",
        "i",
        "it",
        "was",
        "and",
    ]
    return [*SPECIAL_TOKENS, *words]


def test_onnx_classifier_equals_torch(tmp_path, vocab):
    pytest.importorskip("onnxruntime")
    from fastulm import export, inference
    from fastulm.prediction import predict_texts
    from fastulm.train.run_dir import write_run

    torch.manual_seed(0)
    model = get_classifier(len(vocab), 2, bptt=4, max_len=12, emb_sz=16, n_hid=24, arch="qrnn")
    with torch.no_grad():
        model.head.layers[-1][-1].weight.mul_(8)  # spread the probabilities
    write_run(tmp_path / "run", model, vocab, ["neg", "pos"], {"kind": "clas"})
    export.export_run(tmp_path / "run", tmp_path / "export")
    base = ["a fine film", "the worst thing i ever saw , and it was long"]
    texts = [" ".join(base * k) for k in range(1, 7)] + ["good", "bad ."]
    for bs in (1, 3, 64):  # the batch decides the max_len window, as in fastai: same bs
        want = predict_texts([tmp_path / "run"], texts, bs=bs, device="cpu", precision="fp32")
        got = inference.load(tmp_path / "export").predict(texts, bs=bs)
        assert got.labels == want.labels
        assert np.abs(got.probs - want.probs).max() < 1e-5


def test_onnx_lm_equals_torch_with_the_state_carried(tmp_path, vocab):
    pytest.importorskip("onnxruntime")
    from fastulm import export, inference
    from fastulm.train.run_dir import write_run

    torch.manual_seed(0)
    lm = get_language_model(len(vocab), emb_sz=16, n_hid=24, arch="qrnn")
    write_run(tmp_path / "lm", lm, vocab, None, {"kind": "lm"})
    export.export_run(tmp_path / "lm", tmp_path / "export")
    model = inference.load(tmp_path / "export")
    assert model.settings["state_widths"] == [24, 16, 24, 16]  # c and previous input; c; c
    ids = np.random.default_rng(0).integers(2, len(vocab), (3, 15))
    lm.eval()
    lm.reset()
    with torch.no_grad():
        want = lm(torch.from_numpy(ids)).logits.numpy()
    got, _ = model.logits(ids)
    assert np.abs(got - want).max() < 1e-5
    _, state = model.logits(ids[:, :9])
    rest, _ = model.logits(ids[:, 9:], state)
    assert np.abs(rest - want[:, 9:]).max() < 1e-5
    one, _ = model.logits(ids[:, :1])  # a one-token window (the first layer's shift is empty)
    assert np.abs(one - want[:, :1]).max() < 1e-5
