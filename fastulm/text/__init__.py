"""Text to fastai-identical tokens: rules (rules.py), word splitting (words.py), ids (tokenizer.py)."""

from __future__ import annotations

from collections.abc import Iterable

from fastulm.text.rules import SPECIAL_TOKENS, apply_rules
from fastulm.text.tokenizer import Tokenizer
from fastulm.text.words import split_words

__all__ = ["SPECIAL_TOKENS", "Tokenizer", "apply_rules", "split_words", "tokenize_texts"]


def tokenize_texts(texts: Iterable[str]) -> list[list[str]]:
    """Tokens of each text, as fastai 2.8.12 `tokenize_texts` gives them (`xxbos` first)."""
    tok = Tokenizer()
    texts = list(texts)
    out: list[list[str]] = []
    for s in range(0, len(texts), 1000):
        out.extend(tok.tokenize_batch(texts[s : s + 1000]))
    return out
