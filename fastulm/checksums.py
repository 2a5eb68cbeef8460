"""Checksums that let fastulm tell a damaged weights or checkpoint file from a good one.

Neither format checks itself: torch's zip reader ignores the CRCs of a checkpoint, and a
safetensors file is raw bytes after its header, so a flipped byte loads as a changed weight.

- A safetensors file carries the SHA-256 of its data region in its header's metadata
  (``fastulm_sha256``). The file stays an ordinary safetensors file: fastai, the
  ``safetensors`` library and any other reader load it as before.
- A checkpoint (a ``torch.save`` dict) carries under ``"sha256"`` a digest of everything
  else in it: every tensor's dtype, shape and bytes, and every other value's repr, walked in
  a fixed order. It is computed again on load.

A file without a checksum (written by fastai, or by an earlier fastulm) is read as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

KEY = "fastulm_sha256"
_CHUNK = 1 << 22


class DamagedFileError(ValueError):
    """A file whose bytes no longer match the checksum written with it."""


def _header(f) -> tuple[int, dict]:
    raw = f.read(8)
    if len(raw) != 8:
        raise ValueError("too short for a safetensors file")
    n = int.from_bytes(raw, "little")
    if n > 100_000_000:
        raise ValueError("not a safetensors header")
    header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("not a safetensors header")
    return n, header


def _hash_rest(f) -> str:
    h = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in chunks (a model.onnx or an archive can be hundreds of MB)."""
    with open(path, "rb") as f:
        return _hash_rest(f)


def seal_safetensors(path: str | os.PathLike) -> None:
    """Write the data region's SHA-256 into the header of the safetensors file at ``path``
    (a temporary file of the caller's: it is rewritten in place)."""
    path = Path(path)
    with open(path, "rb") as f:
        _, header = _header(f)
        start = f.tell()
        digest = _hash_rest(f)
        meta = dict(header.get("__metadata__") or {})
        meta[KEY] = digest
        header["__metadata__"] = meta
        body = json.dumps(header, separators=(",", ":")).encode()
        body += b" " * (-len(body) % 8)  # the data region stays 8-byte aligned
        f.seek(start)
        data = f.read()
    with open(path, "wb") as f:
        f.write(len(body).to_bytes(8, "little"))
        f.write(body)
        f.write(data)


def verify_safetensors(path: str | os.PathLike) -> bool:
    """Raise ``DamagedFileError`` if ``path`` does not match its checksum; False when it
    carries none."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            _, header = _header(f)
            start = f.tell()
            size = f.seek(0, os.SEEK_END) - start
            need = max(
                (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                default=0,
            )
            if size != need:
                what = "truncated" if size < need else "longer than its header says"
                raise DamagedFileError(f"{path}: damaged ({what}: {size} of {need} data bytes)")
            expected = (header.get("__metadata__") or {}).get(KEY)
            if expected is None:
                return False
            f.seek(start)
            actual = _hash_rest(f)
    except DamagedFileError:
        raise
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError) as err:
        raise DamagedFileError(f"{path}: damaged, not a readable weights file ({err})") from None
    if actual != expected:
        raise DamagedFileError(
            f"{path}: damaged (its checksum does not match its contents); "
            "use another copy or retrain"
        )
    return True


def state_digest(obj: Any) -> str:
    """SHA-256 over a nested state (dicts, lists, tensors, numbers, strings)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj: Any) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            _feed(h, item)
    else:
        h.update(f"V{obj!r}".encode())


def seal_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with its digest added under ``"sha256"``."""
    body = {k: v for k, v in state.items() if k != "sha256"}
    return {**body, "sha256": state_digest(body)}


def verify_state(state: Any, path: str | os.PathLike) -> bool:
    """Raise ``DamagedFileError`` if a loaded checkpoint's contents do not match its
    digest; False when it carries none."""
    if not isinstance(state, dict) or "sha256" not in state:
        return False
    body = {k: v for k, v in state.items() if k != "sha256"}
    if state_digest(body) != state["sha256"]:
        raise DamagedFileError(
            f"{path}: damaged (its checksum does not match its contents); "
            "use another copy or start again without --resume"
        )
    return True
