"""Text to fastai-identical tokens: rules (rules.py), word splitting (words.py), ids (tokenizer.py).

The names are imported lazily: `fastulm.text.rules` (what the vocab needs) loads without
numba or the spaCy tables, and `Tokenizer` loads numba on first use.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import import_module
from typing import Any

_API = {
    "SPECIAL_TOKENS": "fastulm.text.rules",
    "apply_rules": "fastulm.text.rules",
    "split_words": "fastulm.text.words",
    "Tokenizer": "fastulm.text.tokenizer",
}

__all__ = ["SPECIAL_TOKENS", "Tokenizer", "apply_rules", "split_words", "tokenize_texts"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'fastulm.text' has no attribute {name!r}")


def tokenize_texts(texts: Iterable[str]) -> list[list[str]]:
    """Tokens of each text, as fastai 2.8.12 `tokenize_texts` gives them (`xxbos` first)."""
    from fastulm.text.tokenizer import Tokenizer

    tok = Tokenizer()
    texts = list(texts)
    out: list[list[str]] = []
    for s in range(0, len(texts), 1000):
        out.extend(tok.tokenize_batch(texts[s : s + 1000]))
    return out
