"""Damaged weights and checkpoints are detected, not used; sealed files stay readable by
every other reader."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from fastulm.checksums import state_digest
from fastulm.model import AWDLSTMConfig, get_language_model
from fastulm.train.checkpoint import (
    CheckpointError,
    load_state,
    load_weights,
    save_state,
    save_weights,
)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return get_language_model(64, AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2))


def _flip(path, offset_from_end):
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x10
    path.write_bytes(bytes(data))


def test_sealed_weights_carry_the_sha256_of_their_data(model, tmp_path):
    path = tmp_path / "model.safetensors"
    save_weights(model, path)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    assert header["__metadata__"]["fastulm_sha256"] == hashlib.sha256(raw[8 + n :]).hexdigest()
    assert (8 + n) % 8 == 0
    # still a plain safetensors file: any reader gets the weights
    tensors = load_file(str(path))
    state = model.state_dict()
    for key, value in tensors.items():
        assert torch.equal(value, state[key]), key


def test_a_flipped_byte_in_weights_is_an_error_naming_the_file(model, tmp_path):
    path = tmp_path / "model.safetensors"
    save_weights(model, path)
    _flip(path, 17)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: damaged"):
        load_weights(model, path)


def test_weights_without_a_checksum_still_load(model, tmp_path):
    from safetensors.torch import save_model

    path = tmp_path / "plain.safetensors"
    save_model(model, str(path))  # as fastai or an older fastulm would write it
    other = get_language_model(64, AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2))
    load_weights(other, path)
    assert torch.equal(
        other.state_dict()["0.encoder.weight"], model.state_dict()["0.encoder.weight"]
    )


def test_a_flipped_byte_in_a_checkpoint_is_an_error(model, tmp_path):
    path = tmp_path / "last.pt"
    save_state({"model": model.state_dict(), "epoch": 3}, path)
    back = load_state(path)
    assert back["epoch"] == 3 and "sha256" not in back
    raw = bytearray(path.read_bytes())
    # inside the first tensor's stored bytes (torch's zip keeps them under .../data/0)
    at = raw.index(b"data/0") + 100
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"last\.pt: "):
        load_state(path)


def test_digest_sees_every_value_and_not_dict_order():
    a = {"x": torch.arange(4.0), "n": 1, "l": [1.5, "s"]}
    b = {"l": [1.5, "s"], "n": 1, "x": torch.arange(4.0)}
    assert state_digest(a) == state_digest(b)
    changed = {**a, "x": torch.tensor([0.0, 1.0, 2.0, 3.0000002])}
    assert state_digest(changed) != state_digest(a)
    assert state_digest({**a, "n": 2}) != state_digest(a)
    assert state_digest({**a, "x": a["x"].double()}) != state_digest(a)
