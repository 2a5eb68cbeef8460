"""Pretrained (WT103-style) loading and the encoder files, against fastai where it applies."""

import pickle

import pytest
import torch
from safetensors.torch import load_file

from fastulm.model import (
    AWDLSTMConfig,
    EncoderMismatchError,
    PretrainedFormatError,
    get_classifier,
    get_language_model,
    load_encoder,
    load_itos,
    load_pretrained,
    save_encoder,
)

V, EMB, HID = 50, 16, 24
SMALL = dict(emb_sz=EMB, n_hid=HID)
OLD_VOCAB = [f"w{i}" for i in range(V)]
# shared tokens in a new order, unknown tokens, a duplicate
NEW_VOCAB = ["w3", "new_a", "w0", "w49", "w7", "new_b", "w7", "w12", *[f"x{i}" for i in range(6)]]


def fastai_lm(ft):
    return ft.get_language_model(ft.AWD_LSTM, V, config=dict(ft.awd_lstm_lm_config, **SMALL))


def write_wt103_pair(ft, tmp_path, v1=True, wrap=True):
    """A WT103-style pair from a fastai model with random weights, in the reference format."""
    torch.manual_seed(0)
    model = fastai_lm(ft)
    with torch.no_grad():
        model[1].decoder.bias.normal_()
    sd = dict(model.state_dict())
    if v1:  # fastai v1 also saved the last dropped weight_hh under the module
        for i in range(3):
            sd[f"0.rnns.{i}.module.weight_hh_l0"] = sd[f"0.rnns.{i}.weight_hh_l0_raw"] * 0.5
    obj = {"model": sd, "opt": {"state": {}, "param_groups": []}} if wrap else sd
    wpath, vpath = tmp_path / "lstm_fwd.pth", tmp_path / "itos_wt103.pkl"
    torch.save(obj, wpath)
    with open(vpath, "wb") as f:
        pickle.dump(OLD_VOCAB, f)
    return model, wpath, vpath


@pytest.mark.reference
@pytest.mark.parametrize(("v1", "wrap"), [(True, True), (False, False)])
def test_load_pretrained_matches_fastai_match_embeds(fastai_text, tmp_path, v1, wrap):
    _, wpath, vpath = write_wt103_pair(fastai_text, tmp_path, v1=v1, wrap=wrap)
    raw = torch.load(wpath, weights_only=False)
    raw = raw.get("model", raw)
    expected = fastai_text.match_embeds(fastai_text.clean_raw_keys(dict(raw)), OLD_VOCAB, NEW_VOCAB)
    lm = load_pretrained(get_language_model(len(NEW_VOCAB), **SMALL), wpath, vpath, NEW_VOCAB)
    got = lm.state_dict()
    assert set(got) == set(expected)
    for i in range(len(NEW_VOCAB)):  # row by row
        assert torch.equal(got["0.encoder.weight"][i], expected["0.encoder.weight"][i]), i
        assert torch.equal(got["1.decoder.bias"][i], expected["1.decoder.bias"][i]), i
    for k, v in expected.items():
        assert torch.equal(got[k], v), k
    # independent check of the rule itself
    old_w = raw["0.encoder.weight"]
    assert torch.equal(got["0.encoder.weight"][0], old_w[3])
    assert torch.allclose(got["0.encoder.weight"][1], old_w.mean(0))
    assert torch.allclose(got["1.decoder.bias"][5], raw["1.decoder.bias"].mean())
    assert lm.head.decoder.weight is lm.body.encoder.weight


@pytest.mark.reference
def test_load_pretrained_into_classifier_encoder(fastai_text, tmp_path):
    _, wpath, vpath = write_wt103_pair(fastai_text, tmp_path)
    lm = load_pretrained(get_language_model(len(NEW_VOCAB), **SMALL), wpath, vpath, NEW_VOCAB)
    clf = get_classifier(len(NEW_VOCAB), 2, **SMALL)
    head_before = {k: v.clone() for k, v in clf.head.state_dict().items()}
    load_pretrained(clf, wpath, vpath, NEW_VOCAB)
    for k, v in lm.body.state_dict().items():
        assert torch.equal(clf.body.state_dict()[k], v), k
    for k, v in clf.head.state_dict().items():
        assert torch.equal(head_before[k], v), k


def test_v1_file_with_only_module_weight_hh(tmp_path):
    lm = get_language_model(V, **SMALL)
    sd = dict(lm.state_dict())
    for i in range(3):
        sd[f"0.rnns.{i}.module.weight_hh_l0"] = sd.pop(f"0.rnns.{i}.weight_hh_l0_raw")
    torch.save(sd, tmp_path / "w.pth")
    (tmp_path / "itos.pkl").write_bytes(pickle.dumps(OLD_VOCAB))
    new = load_pretrained(
        get_language_model(V, **SMALL), tmp_path / "w.pth", tmp_path / "itos.pkl", OLD_VOCAB
    )
    for k, v in lm.state_dict().items():
        assert torch.equal(new.state_dict()[k], v), k


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.mark.parametrize("wrap", [False, True])
def test_restricted_unpickler_refuses_code(tmp_path, wrap):
    target = tmp_path / "pwned"
    payload = _Payload(target)
    obj = ["xxunk", payload] if wrap else payload
    bad = tmp_path / "itos_wt103.pkl"
    bad.write_bytes(pickle.dumps(obj))
    with pytest.raises(PretrainedFormatError, match=r"itos_wt103\.pkl.*refused global _?io\.open"):
        load_itos(bad)
    assert not target.exists()
    pickle.loads(bad.read_bytes())  # sanity: the ordinary unpickler does run it
    assert target.exists()


def test_load_itos_accepts_list_of_strings_only(tmp_path):
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps(["xxunk", "xxpad", "the"], protocol=2))
    assert load_itos(good) == ["xxunk", "xxpad", "the"]
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(PretrainedFormatError, match="list of strings"):
        load_itos(bad)


def test_pretrained_vocab_size_mismatch_is_clear(tmp_path):
    torch.save(get_language_model(V, **SMALL).state_dict(), tmp_path / "w.pth")
    (tmp_path / "itos.pkl").write_bytes(pickle.dumps(OLD_VOCAB[:40]))
    with pytest.raises(PretrainedFormatError, match="50 embedding rows but the vocab has 40"):
        load_pretrained(
            get_language_model(V, **SMALL), tmp_path / "w.pth", tmp_path / "itos.pkl", OLD_VOCAB
        )


@pytest.mark.reference
def test_save_encoder_loads_into_fastai_and_back(fastai_text, tmp_path):
    torch.manual_seed(0)
    lm = get_language_model(V, **SMALL)
    save_encoder(lm, tmp_path / "enc", OLD_VOCAB)
    assert (tmp_path / "enc.safetensors").exists() and (tmp_path / "enc.json").exists()
    ref_enc = fastai_text.AWD_LSTM(V, EMB, HID, 3)
    ref_enc.load_state_dict(load_file(str(tmp_path / "enc.safetensors")), strict=True)
    for k, v in lm.body.state_dict().items():
        assert torch.equal(ref_enc.state_dict()[k], v), k
    # a fastai encoder (its save_encoder writes the AWD_LSTM state dict as .pth) loads back
    with torch.no_grad():
        for p in ref_enc.parameters():
            p.add_(1.0)
    torch.save(ref_enc.state_dict(), tmp_path / "fastai_enc.pth")
    clf = load_encoder(get_classifier(V, 2, **SMALL), tmp_path / "fastai_enc.pth", OLD_VOCAB)
    for k, v in ref_enc.state_dict().items():
        assert torch.equal(clf.body.state_dict()[k], v), k


def test_encoder_round_trip_and_mismatch_errors(tmp_path):
    torch.manual_seed(0)
    lm = get_language_model(V, **SMALL)
    save_encoder(lm, tmp_path / "enc", OLD_VOCAB)
    clf = load_encoder(get_classifier(V, 2, **SMALL), tmp_path / "enc", OLD_VOCAB)
    for k, v in lm.body.state_dict().items():
        assert torch.equal(clf.body.state_dict()[k], v), k
    with pytest.raises(EncoderMismatchError, match="has 50 tokens, the given vocab has 48"):
        load_encoder(get_classifier(48, 2, **SMALL), tmp_path / "enc", OLD_VOCAB[:48])
    swapped = ["w1", "w0", *OLD_VOCAB[2:]]
    with pytest.raises(EncoderMismatchError, match="at id 0"):
        load_encoder(get_classifier(V, 2, **SMALL), tmp_path / "enc", swapped)
    big = get_classifier(V, 2, config=AWDLSTMConfig.classifier(emb_sz=EMB, n_hid=32))
    with pytest.raises(
        EncoderMismatchError,
        match="vocab 50, emb_sz 16, n_hid 24, n_layers 3 but the model's is vocab 50, emb_sz 16, n_hid 32",
    ):
        load_encoder(big, tmp_path / "enc", OLD_VOCAB)
    with pytest.raises(EncoderMismatchError, match="vocab has 49 tokens but the encoder has 50"):
        save_encoder(lm, tmp_path / "enc2", OLD_VOCAB[:49])


def test_truncated_encoder_file_is_one_clear_error(tmp_path):
    save_encoder(get_language_model(V, **SMALL), tmp_path / "enc", OLD_VOCAB)
    data = (tmp_path / "enc.safetensors").read_bytes()
    (tmp_path / "enc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(EncoderMismatchError, match=r"enc\.safetensors: damaged \(truncated"):
        load_encoder(get_classifier(V, 2, **SMALL), tmp_path / "enc", OLD_VOCAB)
    save_encoder(get_language_model(V, **SMALL), tmp_path / "enc2", OLD_VOCAB)
    (tmp_path / "enc2.json").write_text("{not json")
    with pytest.raises(EncoderMismatchError, match=r"enc2\.json: not an encoder vocab file"):
        load_encoder(get_classifier(V, 2, **SMALL), tmp_path / "enc2", OLD_VOCAB)
