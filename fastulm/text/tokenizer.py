"""Text -> fastai-identical tokens -> local ids, with a per-run cache."""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from fastulm.text.rules import SPECIAL_TOKENS, apply_rules, replace_space
from fastulm.text.words import LINK_TOKENS, _runs, run_tokens, special_pass, split_words


class Tokenizer:
    """Per-process tokenizer: rules, spaCy-compatible splitting, ids in a local table.

    `tokens` maps local id -> token string; it only grows, and starts with fastai's
    special tokens, so ids 0..8 are xxunk..xxmaj.
    """

    def __init__(self) -> None:
        self.tokens: list[str] = list(SPECIAL_TOKENS)
        self._ids: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        # run -> (ids, first token may join a match with the previous run, last with the next)
        self._cache: dict[str, tuple[np.ndarray, bool, bool]] = {}

    def _token_id(self, tok: str) -> int:
        i = self._ids.get(tok)
        if i is None:
            i = len(self.tokens)
            self.tokens.append(tok)
            self._ids[tok] = i
        return i

    def _ids_of(self, toks: list[str]) -> np.ndarray:
        return np.array([self._token_id(replace_space(t)) for t in toks], dtype=np.int32)

    def _run_entry(self, run: str) -> tuple[np.ndarray, bool, bool]:
        entry = self._cache.get(run)
        if entry is None:
            toks = run_tokens(run)
            linked = (toks[0] in LINK_TOKENS, toks[-1] in LINK_TOKENS) if toks else (False, False)
            entry = (self._ids_of(special_pass(toks)), *linked)
            self._cache[run] = entry
        return entry

    def encode(self, text: str) -> np.ndarray:
        """Local token ids of `text` (int32, `xxbos` first)."""
        text = apply_rules(text)
        entries = [self._run_entry(r) for r in _runs(text)]
        if any(a[2] and b[1] for a, b in pairwise(entries)):
            # a special case may span two runs: do the whole document's pass
            return self._ids_of(split_words(text))
        return np.concatenate([e[0] for e in entries])

    def tokenize(self, text: str) -> list[str]:
        """Tokens of `text`, identical to fastai 2.8.12 `tokenize_texts`."""
        toks = self.tokens
        return [toks[i] for i in self.encode(text)]
