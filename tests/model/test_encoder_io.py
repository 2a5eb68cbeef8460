"""A malformed encoder .json is one EncoderMismatchError naming it, never a traceback."""

import json

import pytest
import torch

from fastulm.model import (
    EncoderMismatchError,
    get_classifier,
    get_language_model,
    load_encoder,
    save_encoder,
)
from fastulm_testkit import one_torch_thread  # noqa: F401 (autouse here)

V = 20
SMALL = dict(emb_sz=8, n_hid=12)
VOCAB = [f"w{i}" for i in range(V)]


@pytest.fixture
def saved(tmp_path):
    save_encoder(get_language_model(V, **SMALL), tmp_path / "enc", VOCAB)
    return tmp_path / "enc"


def _good_meta(saved):
    return json.loads(saved.with_suffix(".json").read_text())


@pytest.mark.parametrize(
    "content, says",
    [
        (b'{"vocab": 5, "config": "x"}', '"vocab" must be a non-empty list of strings'),
        (b"[1, 2]", "a JSON list, not an object"),
        (b'"vocab"', "a JSON str, not an object"),
        (b"\xff\xfe{}", "not UTF-8 at byte 0"),
        (b"{not json", "not JSON"),
        (b"", "not JSON"),
    ],
)
def test_malformed_json_files(saved, content, says):
    saved.with_suffix(".json").write_bytes(content)
    with pytest.raises(EncoderMismatchError) as info:
        load_encoder(get_classifier(V, 2, **SMALL), saved, VOCAB)
    msg = str(info.value)
    assert msg.startswith(f"{saved}.json: not an encoder vocab file") and says in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "change, says",
    [
        (dict(vocab=[]), '"vocab" must be a non-empty list'),
        (dict(vocab=[*VOCAB[:-1], 7]), '"vocab" must be a non-empty list of strings'),
        (dict(vocab=None), '"vocab" must be'),
        (dict(config="x"), '"config" must be an object'),
        (dict(config=None), '"config" must be an object'),
        (dict(config={"emb_sz": "big"}), '"config": '),
        (dict(config={"lin_ftrs": 5}), '"config": '),
        (dict(config={"hidden_p": 1.5}), '"config": hidden_p must be in [0, 1)'),
        (dict(format="fastai-encoder"), "format 'fastai-encoder', expected 'fastulm-encoder-1'"),
    ],
)
def test_wrong_fields(saved, change, says):
    meta = {**_good_meta(saved), **change}
    saved.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(EncoderMismatchError, match="not an encoder vocab file") as info:
        load_encoder(get_classifier(V, 2, **SMALL), saved, VOCAB)
    assert says in str(info.value)


def test_missing_key_and_folder(saved, tmp_path):
    meta = _good_meta(saved)
    del meta["config"]
    saved.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(EncoderMismatchError, match='"config" must be an object'):
        load_encoder(get_classifier(V, 2, **SMALL), saved, VOCAB)
    save_encoder(get_language_model(V, **SMALL), tmp_path / "d" / "enc", VOCAB)
    js = tmp_path / "d" / "enc.json"
    js.unlink()
    js.mkdir()  # a folder where the file should be
    with pytest.raises(EncoderMismatchError, match=r"enc\.json: not an encoder vocab file"):
        load_encoder(get_classifier(V, 2, **SMALL), tmp_path / "d" / "enc", VOCAB)


def test_well_formed_file_still_loads_without_format(tmp_path):
    """Only a wrong "format" is refused; a file without one (an older writer) loads."""
    torch.manual_seed(3)
    lm = get_language_model(V, **SMALL)
    save_encoder(lm, tmp_path / "enc", VOCAB)
    meta = json.loads((tmp_path / "enc.json").read_text())
    del meta["format"]
    (tmp_path / "enc.json").write_text(json.dumps(meta))
    clf = load_encoder(get_classifier(V, 2, **SMALL), tmp_path / "enc", VOCAB)
    for k, v in lm.body.state_dict().items():
        assert torch.equal(clf.body.state_dict()[k], v), k


def test_a_flipped_byte_in_the_weights_is_detected(saved):
    weights = saved.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x20
    weights.write_bytes(bytes(data))
    with pytest.raises(EncoderMismatchError, match=r"enc\.safetensors: damaged"):
        load_encoder(get_classifier(V, 2, **SMALL), saved, VOCAB)


def test_weights_and_vocab_from_two_saves_are_not_mixed(tmp_path, saved):
    """A crash between the two renames (or a hand copy) could pair one save's weights with
    another's vocab of the same size: the weights name the vocab they were saved with."""
    other = [f"x{i}" for i in range(V)]
    save_encoder(get_language_model(V, **SMALL), tmp_path / "other", other)
    saved.with_suffix(".json").write_bytes((tmp_path / "other.json").read_bytes())
    with pytest.raises(
        EncoderMismatchError, match=r"enc\.json: does not belong to enc\.safetensors"
    ):
        load_encoder(get_classifier(V, 2, **SMALL), saved, other)
