"""The vocabulary: fastai's ``make_vocab`` rules, stored as a JSON list (never pickle)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from fastulm.data import DataError
from fastulm.files import write_text

FAKE_TOKEN = "xxfake"


class _Stoi(dict):
    """token -> id; an unknown token maps to 0 (``xxunk``) without being inserted."""

    def __missing__(self, key: str) -> int:
        return 0


def vocab_order(counts: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Indices by descending count; ties by ``tiebreak`` (else by index), like a Counter
    filled in input order then ``most_common``."""
    counts = np.asarray(counts)
    if tiebreak is None:
        return np.argsort(-counts, kind="stable")
    return np.lexsort((np.asarray(tiebreak), -counts))


def make_itos(
    tokens: Sequence[str],
    counts: np.ndarray,
    max_vocab: int | None = 60000,
    min_freq: int = 2,
    special_toks: Sequence[str] | None = None,
    tiebreak: np.ndarray | None = None,
) -> list[str]:
    """fastai 2.8.12 ``make_vocab`` on parallel arrays (tokens never seen must have count 0).

    Same steps as the reference: the ``max_vocab`` most frequent tokens, those with
    count >= ``min_freq``, special tokens moved to the front in their order, cut to
    ``max_vocab``, then ``8 - len % 8`` copies of ``xxfake`` (8 when already a multiple).
    """
    counts = np.asarray(counts, dtype=np.int64)
    if len(tokens) != len(counts):
        raise ValueError("tokens and counts differ in length")
    if special_toks is None:
        # imported here: fastulm.text pulls in the tokenizer (numba), which readers of a
        # corpus (loaders, training) never need
        from fastulm.text.rules import SPECIAL_TOKENS

        special_toks = SPECIAL_TOKENS
    specials = list(special_toks)
    order = vocab_order(counts, tiebreak)
    order = order[counts[order] > 0]  # a Counter only holds tokens that occurred
    if max_vocab is not None:
        order = order[:max_vocab]
    order = order[counts[order] >= min_freq]
    special_set = set(specials)
    itos = specials + [t for t in (tokens[i] for i in order) if t not in special_set]
    if max_vocab is not None:
        itos = itos[:max_vocab]
    return itos + [FAKE_TOKEN] * (8 - len(itos) % 8)


class Vocab:
    """Token strings by id (``itos``) and ids by token (``stoi``, unknown -> 0)."""

    def __init__(self, itos: Iterable[str]):
        self.itos: list[str] = list(itos)
        # Like fastai's Numericalize: padding entries are not real tokens, later duplicates win.
        self.stoi: dict[str, int] = _Stoi(
            (t, i) for i, t in enumerate(self.itos) if t != FAKE_TOKEN
        )

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens: {' '.join(self.itos[:12])} ...)"

    @classmethod
    def build(
        cls,
        counts: Mapping[str, int],
        max_vocab: int | None = 60000,
        min_freq: int = 2,
        special_toks: Sequence[str] | None = None,
    ) -> Vocab:
        """From token counts; ties keep the mapping's order (a Counter: first occurrence)."""
        tokens = list(counts)
        arr = np.fromiter((counts[t] for t in tokens), dtype=np.int64, count=len(tokens))
        return cls(make_itos(tokens, arr, max_vocab, min_freq, special_toks))

    def numericalize(self, tokens: Iterable[str]) -> np.ndarray:
        stoi = self.stoi
        return np.fromiter((stoi[t] for t in tokens), dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> list[str]:
        itos = self.itos
        return [itos[i] for i in np.asarray(ids, dtype=np.int64).tolist()]

    def to_json(self) -> str:
        # one token a line (what indent=0 gives), through the C encoder: indent is Python's
        body = json.dumps(self.itos, ensure_ascii=False, separators=(",\n", ":"))
        return "[\n" + body[1:-1] + "\n]\n" if self.itos else "[]\n"

    def save(self, path: str | os.PathLike) -> None:
        """Write ``path`` atomically, with the user's umask (fastulm.files)."""
        write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        """Read a ``vocab.json`` (or the one inside a corpus folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / "vocab.json"
        try:
            itos = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: vocab file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"{path}: not a JSON vocab ({err})") from None
        if not isinstance(itos, list) or not itos or not all(isinstance(t, str) for t in itos):
            raise DataError(f"{path}: a vocab must be a non-empty JSON list of strings")
        real = [t for t in itos if t != FAKE_TOKEN]
        if len(set(real)) != len(real):
            raise DataError(f"{path}: the vocab lists some tokens twice")
        return cls(itos)


def check_specials(itos: Sequence[str], where: str) -> None:
    """A vocab the tokenizer and model can use: xxunk at 0 (unknown words) and xxpad at 1
    (padding), as fastai puts them, and every token the rules emit (xxbos, xxmaj, ...;
    not xxeos, which no rule emits);
    without them a document's tokens would silently become xxunk."""
    from fastulm.text.rules import EOS, SPECIAL_TOKENS

    if list(itos[:2]) != ["xxunk", "xxpad"]:
        raise DataError(
            f"{where}: a vocab must start with 'xxunk', 'xxpad' (fastai's order),"
            f" not {list(itos[:2])}"
        )
    have = set(itos)
    missing = [t for t in SPECIAL_TOKENS if t not in have and t != EOS]
    if missing:
        raise DataError(
            f"{where}: the vocab lacks the special token(s) {', '.join(missing)}"
            " that the tokenizer emits"
        )


def as_vocab(vocab: Vocab | Iterable[str]) -> Vocab:
    """A ``Vocab`` from a ``Vocab`` or a plain itos list (a run's vocab.json), so every
    reader numericalizes by the same rules (unknown -> 0, ``xxfake`` is not a token)."""
    return vocab if hasattr(vocab, "stoi") else Vocab(vocab)
