"""fastulm's model against the reference (fastai 2.8.12) run in the same session."""

import pytest
import torch

from fastulm.model import AWDLSTMConfig, get_classifier, get_language_model

pytestmark = pytest.mark.reference

V, EMB, HID = 50, 16, 24
SMALL = dict(emb_sz=EMB, n_hid=HID)


def fastai_lm(ft, drop_mult=1.0):
    return ft.get_language_model(
        ft.AWD_LSTM, V, config=dict(ft.awd_lstm_lm_config, **SMALL), drop_mult=drop_mult
    )


def fastai_clas(ft, n_classes=3, bptt=72, max_len=72 * 20, drop_mult=1.0):
    return ft.get_text_classifier(
        ft.AWD_LSTM,
        V,
        n_classes,
        seq_len=bptt,
        config=dict(SMALL),
        drop_mult=drop_mult,
        max_len=max_len,
    )


def pad_batch(ft, docs, bptt):
    """fastai's own pad_chunk layout for a batch of 1-D id tensors."""
    m = max(len(d) for d in docs)
    return torch.stack([ft.pad_chunk(d, pad_idx=1, seq_len=bptt, pad_len=m) for d in docs])


def randomize_bn(model):
    """Give the batchnorm layers non-trivial running statistics and affine weights."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def test_lm_state_dict_matches_fastai_both_ways(fastai_text):
    ref = fastai_lm(fastai_text)
    ours = get_language_model(V, AWDLSTMConfig.lm(**SMALL))
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert shapes(ours.state_dict()) == shapes(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref2 = fastai_lm(fastai_text)
    ref2.load_state_dict(ours.state_dict(), strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(ref2.state_dict()[k], v), k
    # tying survives loading
    assert ours.head.decoder.weight is ours.body.encoder.weight


def test_lm_default_sizes_match_fastai(fastai_text):
    ref = fastai_text.get_language_model(fastai_text.AWD_LSTM, 120)
    ours = get_language_model(120)
    assert shapes(ours.state_dict()) == shapes(ref.state_dict())


def test_classifier_state_dict_matches_fastai_both_ways(fastai_text):
    ref = fastai_clas(fastai_text)
    ours = get_classifier(V, 3, **SMALL)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert shapes(ours.state_dict()) == shapes(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    fastai_clas(fastai_text).load_state_dict(ours.state_dict(), strict=True)
    # drop_mult=0 removes the head's first Dropout in fastai, shifting its indices
    ref0 = fastai_clas(fastai_text, drop_mult=0.0)
    ours0 = get_classifier(V, 3, drop_mult=0.0, **SMALL)
    assert list(ours0.state_dict()) == list(ref0.state_dict())


def test_default_classifier_sizes_match_fastai(fastai_text):
    ref = fastai_text.get_text_classifier(fastai_text.AWD_LSTM, 120, 2)
    assert shapes(get_classifier(120, 2).state_dict()) == shapes(ref.state_dict())


@pytest.mark.parametrize("drop_mult", [1.0, 0.3])
def test_config_dropouts_match_fastai(fastai_text, drop_mult):
    ref = fastai_lm(fastai_text, drop_mult)
    cfg = AWDLSTMConfig.lm(drop_mult, **SMALL)
    enc = ref[0]
    assert cfg.embed_p == pytest.approx(enc.encoder_dp.embed_p)
    assert cfg.input_p == pytest.approx(enc.input_dp.p)
    assert cfg.hidden_p == pytest.approx(enc.hidden_dps[0].p)
    assert cfg.weight_p == pytest.approx(enc.rnns[0].weight_p)
    assert cfg.output_p == pytest.approx(ref[1].output_dp.p)
    clas = fastai_clas(fastai_text, drop_mult=drop_mult)
    ccfg = AWDLSTMConfig.classifier(drop_mult, **SMALL)
    assert ccfg.weight_p == pytest.approx(clas[0].module.rnns[0].weight_p)
    assert ccfg.output_p == pytest.approx(clas[1].layers[0][1].p)
    assert ccfg.head_ps[0] == pytest.approx(clas[1].layers[1][1].p)


def test_lm_eval_outputs_equal_fastai_with_hidden_carried(fastai_text):
    torch.manual_seed(0)
    ref = fastai_lm(fastai_text).eval()
    ours = get_language_model(V, AWDLSTMConfig.lm(**SMALL)).eval()
    with torch.no_grad():  # give the decoder bias non-zero values too
        ref[1].decoder.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    ref.reset()
    ours.reset()
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    with torch.no_grad():
        for bs, sl in [(4, 7), (4, 7), (4, 5), (3, 7), (5, 6)]:  # bs changes: truncate / zero-pad
            x = torch.randint(0, V, (bs, sl), generator=g)
            logits, raw, dropped = ref(x)
            out = ours(x)
            for a, b in [(out.logits, logits), (out.raw, raw), (out.dropped, dropped)]:
                worst = max(worst, (a - b).abs().max().item())
    assert worst <= 1e-5, worst


def test_lm_train_mode_without_dropout_equals_fastai(fastai_text):
    """Gradients too: with every dropout at 0 the train-mode step is deterministic."""
    torch.manual_seed(0)
    ref = fastai_lm(fastai_text, drop_mult=0.0).train()
    ours = get_language_model(V, AWDLSTMConfig.lm(0.0, **SMALL)).train()
    ours.load_state_dict(ref.state_dict())
    x = torch.randint(0, V, (3, 6))
    y = torch.randint(0, V, (3, 6))
    logits = ref(x)[0]
    torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1)).backward()
    res = ours.loss(x, y)
    res.loss.backward()
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name].grad, atol=1e-6, rtol=1e-5)


def test_classifier_eval_outputs_equal_fastai_on_padded_docs(fastai_text):
    """Docs with left and end padding and a max_len window, on lengths that do not hit
    fastai issue 3379 (every row with tokens left has a real token at each chunk start)
    and where no row starts inside the last bptt positions (fastai then pools a wrong "last")."""
    torch.manual_seed(0)
    bptt, max_len = 5, 10
    ref = fastai_clas(fastai_text, bptt=bptt, max_len=max_len).eval()
    randomize_bn(ref)
    ours = get_classifier(V, 3, bptt=bptt, max_len=max_len, **SMALL).eval()
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(2)
    worst = 0.0
    with torch.no_grad():
        for lengths in ([23, 21, 17, 12, 8, 6], [10, 10, 5], [7, 6, 5], [30, 26, 15]):
            docs = [torch.randint(2, V, (n,), generator=g) for n in lengths]
            x = pad_batch(fastai_text, docs, bptt)
            logits, out_ref, _ = ref(x)
            res = ours(x)
            assert res.raw.shape == out_ref.shape
            worst = max(worst, (res.logits - logits).abs().max().item())
            # encoder outputs agree at every real token; at pads the reference leaves
            # zeros for rows whose chunk starts with a pad, fastulm keeps running them
            real = x[:, -res.raw.size(1) :] != 1
            worst = max(worst, (res.raw - out_ref)[real].abs().max().item())
    assert worst <= 1e-5, worst


def test_fastai_issue_3379_side_by_side(fastai_text):
    """fastai's own failing example: lengths 11, 5, 4, 3, 2 with bptt 3.

    Independent expectation: each document classified alone, unpadded (where no padding
    can interfere). fastulm's batched logits equal it; fastai's do not, and fastai's
    encoder output for the length-2 document is all zeros at its real positions.
    """
    torch.manual_seed(0)
    bptt = 3
    ref = fastai_clas(fastai_text, bptt=bptt).eval()
    randomize_bn(ref)
    ours = get_classifier(V, 3, bptt=bptt, **SMALL).eval()
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(3)
    lengths = [11, 5, 4, 3, 2]
    docs = [torch.randint(2, V, (n,), generator=g) for n in lengths]
    x = pad_batch(fastai_text, docs, bptt)
    with torch.no_grad():
        alone_ours = torch.cat([ours(d[None]).logits for d in docs])
        alone_ref = torch.cat([ref(d[None])[0] for d in docs])
        batched_ours = ours(x)
        batched_ref, out_ref, _ = ref(x)
    torch.testing.assert_close(alone_ours, alone_ref, atol=1e-5, rtol=0)  # same model
    torch.testing.assert_close(batched_ours.logits, alone_ours, atol=1e-5, rtol=0)
    err = (batched_ref - alone_ref).abs().amax(1)
    assert err[4] > 1e-3  # fastai loses the last document's tokens ...
    real4 = x[4] != 1
    assert torch.all(out_ref[4][real4] == 0)  # ... its real positions encode to zeros
    assert torch.all(batched_ours.raw[4][real4].abs().sum(-1) > 0)
