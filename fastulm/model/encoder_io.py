"""Saving and loading the encoder alone (LM -> classifier), with its vocab and config.

``<name>.safetensors`` carries the checksum of its data and of its ``<name>.json`` vocab, so
a damaged file or a mismatched pair is an error on load, never a silently wrong encoder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from fastulm.checksums import DamagedFileError, verify_safetensors
from fastulm.files import atomic_write
from fastulm.model.awd_lstm import AWDLSTM
from fastulm.model.config import AWDLSTMConfig
from fastulm.weights import write_sealed

FORMAT = "fastulm-encoder-1"
VOCAB_KEY = "fastulm_vocab_sha256"


class EncoderMismatchError(ValueError):
    """The saved encoder does not fit the model or the vocab it is loaded with."""


def _encoder(model: nn.Module) -> AWDLSTM:
    body = model if isinstance(model, AWDLSTM) else getattr(model, "body", None)
    if not isinstance(body, AWDLSTM):
        raise TypeError(f"{type(model).__name__} has no AWD-LSTM encoder")
    return body


def _sizes(state: dict[str, torch.Tensor]) -> str:
    vocab, emb = state["encoder.weight"].shape
    # QRNN layers (weight_raw [3 * n_out, window * n_in]), or LSTM ones ([4 * n_out, n_out])
    key, gates = ("weight_raw", 3) if "rnns.0.weight_raw" in state else ("weight_hh_l0_raw", 4)
    n_layers = sum(k.endswith(key) for k in state)
    n_hid = state[f"rnns.0.{key}"].shape[0] // gates if n_layers > 1 else emb
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
    # clones: the tied embedding appears under two keys, which safetensors will not alias
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in enc.state_dict().items()}
    meta = {"vocab": list(vocab), "config": enc.config.to_dict(), "format": FORMAT}
    # the weights name their vocab file's contents, so a pair mixed up by a crash between the
    # two renames (or by hand) is detected on load
    pair = {VOCAB_KEY: _vocab_digest(list(vocab))}

    def write_weights(tmp: str) -> None:
        write_sealed(tmp, lambda: save_file(tensors, tmp, metadata=pair))

    atomic_write(js_path, lambda tmp: Path(tmp).write_text(json.dumps(meta), encoding="utf-8"))
    atomic_write(st_path, write_weights)
    return st_path


def _vocab_digest(vocab: list[str]) -> str:
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def _check_pair(st_path: Path, js_path: Path, vocab: list[str]) -> None:
    try:
        verify_safetensors(st_path)
        with safe_open(str(st_path), "pt") as f:
            expected = (f.metadata() or {}).get(VOCAB_KEY)
    except DamagedFileError as err:
        raise EncoderMismatchError(str(err)) from None
    except Exception as err:
        raise EncoderMismatchError(f"{st_path}: cannot read encoder weights ({err})") from None
    if expected is not None and expected != _vocab_digest(vocab):
        raise EncoderMismatchError(
            f"{js_path}: does not belong to {st_path.name} (another save's vocab); "
            "save the encoder again"
        )


def _read_vocab(js_path: Path) -> list[str]:
    """The vocab of an encoder ``.json``, after checking it is what ``save_encoder`` writes:
    anything else is one ``EncoderMismatchError`` naming the file, not a traceback later."""

    def bad(why: str) -> EncoderMismatchError:
        return EncoderMismatchError(f"{js_path}: not an encoder vocab file ({why})")

    try:
        meta = json.loads(js_path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise bad(err.strerror or str(err)) from None
    except UnicodeDecodeError as err:
        raise bad(f"not UTF-8 at byte {err.start}") from None
    except ValueError as err:
        raise bad(f"not JSON: {err}") from None
    if not isinstance(meta, dict):
        raise bad(f"a JSON {type(meta).__name__}, not an object")
    if "format" in meta and meta["format"] != FORMAT:
        raise bad(f"format {meta['format']!r}, expected {FORMAT!r}")
    vocab = meta.get("vocab")
    if not isinstance(vocab, list) or not vocab or not all(isinstance(t, str) for t in vocab):
        raise bad('"vocab" must be a non-empty list of strings')
    config = meta.get("config")
    if not isinstance(config, dict):
        raise bad('"config" must be an object of AWD-LSTM settings')
    try:
        AWDLSTMConfig.from_dict(config)
    except (TypeError, ValueError) as err:
        raise bad(f'"config": {err}') from None
    return vocab


def load_encoder(
    model: nn.Module, path: str | Path, vocab: list[str], remap_vocab: bool = False
) -> nn.Module:
    """Load an encoder saved by ``save_encoder`` (or a fastai encoder ``.pth``) into
    ``model``'s encoder.

    The vocab should be the one the encoder was trained with. With ``remap_vocab`` another
    vocab is accepted: the embedding rows are mapped onto it as for pretrained weights
    (known tokens keep their row, new ones start from the mean row)."""
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
        saved_vocab = _read_vocab(js_path)
        _check_pair(st_path, js_path, saved_vocab)
        try:
            state = load_file(str(st_path))
        except Exception as err:
            raise EncoderMismatchError(f"{st_path}: cannot read encoder weights ({err})") from None
    if saved_vocab is not None and saved_vocab != list(vocab):
        if not remap_vocab:
            raise EncoderMismatchError(_vocab_mismatch(path, saved_vocab, list(vocab)))
        state = _remap_rows(state, saved_vocab, list(vocab))
    target = enc.state_dict()
    saved_qrnn = "rnns.0.weight_raw" in state
    if saved_qrnn != (enc.config.arch == "qrnn"):
        raise EncoderMismatchError(
            f"{path}: the saved encoder has {'QRNN' if saved_qrnn else 'LSTM'} layers but the "
            f"model has {enc.config.arch.upper()} layers (--arch {'qrnn' if saved_qrnn else 'lstm'})"
        )
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


def encoder_vocab(path: str | Path) -> list[str]:
    """The vocab an encoder saved by ``save_encoder`` was trained with."""
    return _read_vocab(_paths(path)[1])


def encoder_config(path: str | Path) -> AWDLSTMConfig:
    """The configuration an encoder saved by ``save_encoder`` was built with."""
    js_path = _paths(path)[1]
    _read_vocab(js_path)  # the file's checks
    meta = json.loads(js_path.read_bytes().decode("utf-8"))
    return AWDLSTMConfig.from_dict(meta["config"])


def _vocab_mismatch(path: Path, saved: list[str], vocab: list[str]) -> str:
    if len(saved) != len(vocab):
        what = f"encoder vocab has {len(saved)} tokens, the given vocab has {len(vocab)}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(saved, vocab)) if a != b)
        what = f"vocab differs from the encoder's at id {i} ({vocab[i]!r} vs {saved[i]!r})"
    return (
        f"{path}: {what}. Tokenize the classifier's data with the LM's vocab "
        f"(python -m fastulm.tokenize SRC OUT --vocab {_paths(path)[1]}), or load with "
        "remap_vocab=True to map the embedding onto this vocab"
    )


def _remap_rows(
    state: dict[str, torch.Tensor], saved: list[str], vocab: list[str]
) -> dict[str, torch.Tensor]:
    """The embedding rows moved onto ``vocab``: a known token keeps its row, a new one gets
    the mean row (fastai's rule for pretrained weights)."""
    index = {w: i for i, w in enumerate(saved)}
    idx = torch.tensor([index.get(w, -1) for w in vocab], dtype=torch.long)
    found = idx >= 0
    out = dict(state)
    for key in ("encoder.weight", "encoder_dp.emb.weight"):
        if key in state:
            rows = state[key].mean(0).expand(len(vocab), -1).clone()
            rows[found] = state[key][idx[found]]
            out[key] = rows
    return out
