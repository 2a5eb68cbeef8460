"""What a tokenizer has learnt, in one place: its tokens, its replace_wrep words, its run
table and each run's values.

Two paths fill it -- the Python one for any run (tokenizer.py) and the numba one for plain
ASCII runs (plain_runs.py) -- and the kernels (run_kernels.py) read it as plain arrays.
Both write through the methods here, so neither reaches into the other's state.

A run's values: where its token ids lie in `pool` and how many there are (`val_start`,
`val_len`; column 0 as the run is, column 1 before the final special-case pass, or for a
whitespace run, followed by a rule-made space), then the facts in `FACTS`:

- `lead`: the rules put a space at its start;
- `link_first`, `link_last`: its link set ids (links.LinkIds) on each side;
- `wfirst`, `wlast`: its first and last replace_wrep word (-1 none), `wdup`: a word repeats
  inside it, `wstem`: the word characters it starts with, `wmulti`: it holds several words.
"""

from __future__ import annotations

import re

import numpy as np

from fastulm.text.links import LinkIds
from fastulm.text.rules import SPECIAL_TOKENS
from fastulm.text.table import StringTable, grown

FACTS = ("lead", "link_first", "link_last", "wfirst", "wlast", "wdup", "wstem", "wmulti")
_FACT_TYPES = {
    "lead": (np.bool_, 0),
    "link_first": (np.int32, 0),
    "link_last": (np.int32, 0),
    "wfirst": (np.int32, -1),
    "wlast": (np.int32, -1),
    "wdup": (np.bool_, 0),
    "wstem": (np.int32, -1),
    "wmulti": (np.bool_, 0),
}
_WORD = re.compile(r"\w+")


class RunStore:
    """Tokens (local id -> str, only growing; ids 0..8 are fastai's special tokens), words,
    the run table's keys (`runs`) and the values of its entries."""

    def __init__(self) -> None:
        self.tokens: list[str] = list(SPECIAL_TOKENS)
        self._token_ids: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        self._word_ids: dict[str, int] = {}
        self.words: list[str] = []  # replace_wrep words, in id order
        self.runs = StringTable()  # the run table's keys; the values are the arrays below
        self._grow(len(self.runs.ent_hash))
        self.pool = np.zeros(1 << 17, np.int32)  # every entry's token ids
        self.n_pool = 0
        self.links = LinkIds()

    # -- tokens and words

    def token_id(self, tok: str) -> int:
        i = self._token_ids.get(tok)
        if i is None:
            i = len(self.tokens)
            self.tokens.append(tok)
            self._token_ids[tok] = i
        return i

    def ids_of(self, toks: list) -> list[int]:
        """Local ids of tokens without spaces (None, a spaCy-run boundary mark, gives -2)."""
        get = self._token_ids.get
        ids = [get(t) for t in toks]
        if None in ids:
            ids = [-2 if t is None else self.token_id(t) for t in toks]
        return ids

    def add_tokens(self, new: list[str]) -> None:
        """Tokens known to be new, as the next ids."""
        n = len(self.tokens)
        self._token_ids.update(zip(new, range(n, n + len(new))))
        self.tokens.extend(new)

    def word_key(self, word: str) -> int:
        i = self._word_ids.get(word)
        if i is None:
            i = self._word_ids[word] = len(self.words)
            self.words.append(word)
        return i

    def add_words(self, new: list[str]) -> None:
        """Words known to be new, as the next ids."""
        n = len(self.words)
        self._word_ids.update(zip(new, range(n, n + len(new))))
        self.words.extend(new)

    def word_id(self, word: str) -> int:
        """Id of a replace_wrep candidate word, case folded: runs looked up lowercased only
        know their words in lowercase, so all are compared so (more candidates, never fewer)."""
        if not _WORD.fullmatch(word):
            return -1
        word = word.lower()
        return self.word_key(word.lower())

    def stem_id(self, word: str) -> int:
        """Id of the word characters a word starts with (what replace_wrep's third
        repetition must be), -1 if none."""
        m = _WORD.match(word)
        return -1 if m is None else self.word_id(m.group())

    # -- entries

    def _grow(self, cap: int) -> None:
        """Room for `cap` entries' values."""

        def grow(name, shape, dtype, fill=0):
            new = np.empty(shape, dtype)
            old = getattr(self, name, None)
            n_old = 0 if old is None else len(old)
            if n_old:
                new[:n_old] = old
            new[n_old:] = fill
            setattr(self, name, new)

        grow("val_start", (cap, 2), np.int64)
        grow("val_len", (cap, 2), np.int32)
        for name in FACTS:
            grow(name, cap, *_FACT_TYPES[name])

    def reserve(self, n_new: int, n_chars: int) -> None:
        """Room for n_new more entries with n_chars more key characters."""
        self.runs.reserve(n_new, n_chars)
        if len(self.val_start) < len(self.runs.ent_hash):
            self._grow(len(self.runs.ent_hash))

    def append_ids(self, ids) -> int:
        """Token ids added at the end of `pool`; returns where they start."""
        start = self.n_pool
        end = start + len(ids)
        if end > len(self.pool):
            self.pool = grown(self.pool, start, max(end, 2 * len(self.pool)))
        self.pool[start:end] = ids
        self.n_pool = end
        return start

    def set_values(self, ents, starts: np.ndarray, lens: np.ndarray, **facts) -> None:
        """Values of entries `ents`: their ids' starts and lengths in `pool` ([n, 2], or [n]
        for the same ids in both columns), and facts by name (FACTS)."""
        if starts.ndim == 1:
            starts, lens = starts[:, None], lens[:, None]
        self.val_start[ents] = starts
        self.val_len[ents] = lens
        for name, value in facts.items():
            if name not in _FACT_TYPES:
                raise KeyError(name)
            getattr(self, name)[ents] = value
