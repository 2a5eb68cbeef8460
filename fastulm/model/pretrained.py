"""Loading fastai WikiText-103-style pretrained weights into a model with a new vocab."""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import torch
from torch import nn

_RAW_V1 = re.compile(r"^(.*rnns\.\d+)\.module\.(weight_hh_l\d+)$")


class PretrainedFormatError(ValueError):
    """A weights or vocab file that is not in the expected format."""


class _StringListUnpickler(pickle.Unpickler):
    """Accepts plain containers and strings only: any global (class, function) is refused
    before it is looked up, so a hostile pickle cannot run code."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def load_itos(path: str | Path) -> list[str]:
    """Read a pickled list of token strings (fastai's ``itos_wt103.pkl``) safely."""
    path = Path(path)
    try:
        obj = _StringListUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise PretrainedFormatError(
            f"{path}: not a pickled list of strings ({err}); refusing to load it"
        ) from None
    if not isinstance(obj, list) or not all(isinstance(t, str) for t in obj):
        raise PretrainedFormatError(
            f"{path}: expected a pickled list of strings, got {type(obj).__name__}"
        )
    return obj


def load_lm_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A fastai language-model state dict in v2 keys, from v1 or v2 files, plain or wrapped
    in ``{'model': ...}``; read with ``weights_only=True``."""
    path = Path(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise PretrainedFormatError(f"{path}: cannot read weights ({err})") from None
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict) or "0.encoder.weight" not in sd:
        raise PretrainedFormatError(f"{path}: not an AWD-LSTM language-model state dict")
    out = {}
    for k, v in sd.items():
        m = _RAW_V1.match(k)
        if m:  # v1 stored the last dropped weight beside the raw one; keep the raw one
            raw = f"{m.group(1)}.{m.group(2)}_raw"
            if raw in sd:
                continue
            k = raw
        out[k] = v
    return out


def match_embeds(
    state: dict[str, torch.Tensor], old_vocab: list[str], new_vocab: list[str]
) -> dict[str, torch.Tensor]:
    """Remap embedding rows and decoder bias to ``new_vocab``: rows of shared tokens are
    copied, new tokens get the mean row / mean bias (the reference's rule)."""
    wgts = state["0.encoder.weight"]
    if wgts.size(0) != len(old_vocab):
        raise PretrainedFormatError(
            f"weights have {wgts.size(0)} embedding rows but the vocab has {len(old_vocab)} tokens"
        )
    old_index = {w: i for i, w in enumerate(old_vocab)}  # last occurrence wins, as in fastai
    idx = torch.tensor([old_index.get(w, -1) for w in new_vocab], dtype=torch.long)
    found = idx >= 0
    new_w = wgts.mean(0).expand(len(new_vocab), -1).clone()
    new_w[found] = wgts[idx[found]]
    out = dict(state)
    out["0.encoder.weight"] = new_w
    out["0.encoder_dp.emb.weight"] = new_w.clone()
    out["1.decoder.weight"] = new_w.clone()
    bias = state.get("1.decoder.bias")
    if bias is not None:
        new_b = bias.mean(0).expand(len(new_vocab)).clone()
        new_b[found] = bias[idx[found]]
        out["1.decoder.bias"] = new_b
    return out


def load_pretrained(
    model: nn.Module, weights_path: str | Path, vocab_path: str | Path, new_vocab: list[str]
) -> nn.Module:
    """Load a pretrained fastai LM (``lstm_fwd.pth`` + ``itos_wt103.pkl``) into ``model``
    (a LanguageModel, or a TextClassifier whose encoder gets the weights), for ``new_vocab``."""
    from fastulm.model.classifier import TextClassifier

    if any(type(m).__name__ == "WeightDropQRNN" for m in model.modules()):
        raise PretrainedFormatError(
            f"{weights_path}: fastai's pretrained weights are for LSTM layers, and this model "
            "has QRNN layers: use --arch lstm with --pretrained"
        )
    state = match_embeds(load_lm_state(weights_path), load_itos(vocab_path), list(new_vocab))
    if isinstance(model, TextClassifier):
        state = {"0.module." + k[2:]: v for k, v in state.items() if k.startswith("0.")}
        target = {k: v for k, v in model.state_dict().items() if k.startswith("0.module.")}
    else:
        target = model.state_dict()
    _check_shapes(state, target, weights_path)
    if isinstance(model, TextClassifier):
        model.load_state_dict({**model.state_dict(), **state}, strict=True)
    else:
        model.load_state_dict(state, strict=True)
    return model


def _check_shapes(state: dict, target: dict, path: str | Path) -> None:
    missing = sorted(set(target) - set(state))
    extra = sorted(set(state) - set(target))
    if missing or extra:
        raise PretrainedFormatError(
            f"{path}: keys do not match the model (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(target[k].shape):
            raise PretrainedFormatError(
                f"{path}: {k} has shape {tuple(v.shape)} in the file but "
                f"{tuple(target[k].shape)} in the model"
            )
