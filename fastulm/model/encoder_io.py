"""Saving and loading the encoder alone (LM -> classifier), with its vocab and config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fastulm.model.awd_lstm import AWDLSTM


class EncoderMismatchError(ValueError):
    """The saved encoder does not fit the model or the vocab it is loaded with."""


def _encoder(model: nn.Module) -> AWDLSTM:
    body = model if isinstance(model, AWDLSTM) else getattr(model, "body", None)
    if not isinstance(body, AWDLSTM):
        raise TypeError(f"{type(model).__name__} has no AWD-LSTM encoder")
    return body


def _sizes(state: dict[str, torch.Tensor]) -> str:
    vocab, emb = state["encoder.weight"].shape
    n_layers = sum(k.endswith("weight_hh_l0_raw") for k in state)
    n_hid = state["rnns.0.weight_hh_l0_raw"].shape[1] if n_layers > 1 else emb
    return f"vocab {vocab}, emb_sz {emb}, n_hid {n_hid}, n_layers {n_layers}"


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def save_encoder(model: nn.Module, path: str | Path, vocab: list[str]) -> Path:
    """Write ``<path>.safetensors`` (fastai ``AWD_LSTM`` state-dict keys, loadable with
    strict=True) and ``<path>.json`` (vocab + config), each atomically."""
    enc = _encoder(model)
    if len(vocab) != enc.encoder.num_embeddings:
        raise EncoderMismatchError(
            f"vocab has {len(vocab)} tokens but the encoder has {enc.encoder.num_embeddings} rows"
        )
    st_path, js_path = _paths(path)
    st_path.parent.mkdir(parents=True, exist_ok=True)
    # clones: the tied embedding appears under two keys, which safetensors will not alias
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in enc.state_dict().items()}
    meta = {"vocab": list(vocab), "config": enc.config.to_dict(), "format": "fastulm-encoder-1"}
    tmp_st, tmp_js = (
        st_path.with_name(st_path.name + ".tmp"),
        js_path.with_name(js_path.name + ".tmp"),
    )
    save_file(tensors, str(tmp_st))
    tmp_js.write_text(json.dumps(meta))
    os.replace(tmp_st, st_path)
    os.replace(tmp_js, js_path)
    return st_path


def load_encoder(model: nn.Module, path: str | Path, vocab: list[str]) -> nn.Module:
    """Load an encoder saved by ``save_encoder`` (or a fastai encoder ``.pth``) into
    ``model``'s encoder. The vocab must be the one the encoder was trained with."""
    enc = _encoder(model)
    path = Path(path)
    if path.suffix == ".pth":
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise EncoderMismatchError(f"{path}: cannot read encoder weights ({err})") from None
        saved_vocab = None
    else:
        st_path, js_path = _paths(path)
        for p in (st_path, js_path):
            if not p.exists():
                raise FileNotFoundError(f"{p}: encoder file not found")
        try:
            state = load_file(str(st_path))
        except Exception as err:
            raise EncoderMismatchError(f"{st_path}: cannot read encoder weights ({err})") from None
        try:
            saved_vocab = json.loads(js_path.read_text())["vocab"]
        except (ValueError, KeyError, TypeError) as err:
            raise EncoderMismatchError(f"{js_path}: not an encoder vocab file ({err})") from None
    if saved_vocab is not None and len(saved_vocab) != len(vocab):
        raise EncoderMismatchError(
            f"{path}: encoder vocab has {len(saved_vocab)} tokens, the given vocab has {len(vocab)}"
        )
    if saved_vocab is not None and saved_vocab != list(vocab):
        i = next(i for i, (a, b) in enumerate(zip(saved_vocab, vocab)) if a != b)
        raise EncoderMismatchError(
            f"{path}: vocab differs from the encoder's at id {i} ({vocab[i]!r} vs {saved_vocab[i]!r})"
        )
    target = enc.state_dict()
    if set(state) != set(target):
        raise EncoderMismatchError(
            f"{path}: not an AWD-LSTM encoder with {len(target)} tensors "
            f"(unexpected {sorted(set(state) - set(target))[:3]}, missing {sorted(set(target) - set(state))[:3]})"
        )
    if any(tuple(v.shape) != tuple(target[k].shape) for k, v in state.items()):
        raise EncoderMismatchError(
            f"{path}: the saved encoder is {_sizes(state)} but the model's is {_sizes(target)}"
        )
    enc.load_state_dict(state, strict=True)
    return model
