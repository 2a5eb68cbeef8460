"""New plain ASCII runs (about 95% of new runs) split in numba (ascii_split.split_runs),
their values written into the tokenizer's RunStore.

The kernel knows tokens, replace_wrep words and special cases by id through numba string
tables kept here beside the store's Python lists; what Python added to the store since the
last call is copied in first. A run the kernel cannot decide (a possible URL, or tokens
that spell a multi-token special case) is handed back to the Python path.
"""

from __future__ import annotations

import numpy as np

from fastulm.text import ascii_split
from fastulm.text.links import BY_FIRST, BY_LAST, FIRST_TWO, LAST_TWO
from fastulm.text.run_kernels import csr, pass_tables
from fastulm.text.run_store import RunStore
from fastulm.text.table import StringTable
from fastulm.text.words import PATTERNS, SPECIALS


class PlainRuns:
    """The numba path for new plain ASCII runs, with the tables it shares with a RunStore:
    tokens, replace_wrep words, special cases, final-pass patterns."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        # every token a special case or a pattern can produce gets its id now, so the
        # kernel knows them by id
        keys = list(SPECIALS)
        values = [store.ids_of(list(SPECIALS[k])) for k in keys]
        self.spec = StringTable(keys)
        self.spec_val = csr(values)
        # a pattern replaced by its own tokens changes nothing (and what it blocks still
        # has to match to change anything): the kernel need not look for it
        changing = sorted(p for p, v in PATTERNS.items() if tuple(v) != p)
        self.pats = pass_tables(changing, store.ids_of)[:4]
        first = [store.token_id(t) for t in BY_FIRST]
        last = [store.token_id(t) for t in BY_LAST]
        n = max(first + last, default=-1) + 1
        self.edges = (np.zeros(n, np.bool_), np.zeros(n, np.bool_))
        self.edges[0][first] = True
        self.edges[1][last] = True
        # LinkIds.ids by token ids: the edge pairs that can start / end a two-token part, the
        # tokens that can start / end any part, and a memo per side keyed as LinkIds does
        two = store.token_id
        self.first_two = {(two(a), two(b)) for a, b in FIRST_TWO}
        self.last_two = {(two(a), two(b)) for a, b in LAST_TWO}
        self.by_first, self.by_last = set(first), set(last)
        self.link_memo: tuple[dict, dict] = ({}, {})
        # the same memo as arrays for the commonest key, a run of several tokens whose edge
        # pair starts (ends) no two-token part: by its first (last) token id, -1 unknown
        self.edge_memo = (np.full(0, -1, np.int32), np.full(0, -1, np.int32))
        self.two_keys = (_pair_keys(self.first_two), _pair_keys(self.last_two))
        self.extra = max((len(v) - 1 for v in SPECIALS.values()), default=0)
        self.tokens = StringTable(store.tokens)
        self.words = StringTable()
        self.classes, self.prefix, self.suffix, self.infix = ascii_split.COMPILED

    def fill(self, ents: np.ndarray) -> np.ndarray:
        """Values of the plain-run entries `ents` (keys lowercased); which were done."""
        store = self.store
        if len(ents) == 0:
            return np.zeros(0, np.bool_)
        self.tokens.add(store.tokens[self.tokens.n :])  # what Python added meanwhile
        self.words.add(store.words[self.words.n :])
        keys = store.runs
        n_chars = int((keys.key_start[ents + 1] - keys.key_start[ents]).sum())
        self.tokens.reserve(n_chars, n_chars)
        self.words.reserve(len(ents), n_chars)
        status, ids, off, wid, stem, edge, n_tok, n_word = ascii_split.split_runs(
            ents, keys.key_start, keys.key_pool, self.classes, self.prefix, self.suffix,
            self.infix, self.spec.arrays, self.spec_val, self.tokens.arrays, self.tokens.n,
            self.words.arrays, self.words.n, self.pats, self.edges, self.extra,
        )  # fmt: skip
        store.add_tokens(self.tokens.strings(self.tokens.n, n_tok))
        self.tokens.n = n_tok
        store.add_words(self.words.strings(self.words.n, n_word))
        self.words.n = n_word
        done = status == 0
        start = store.append_ids(ids)
        links = np.zeros((len(ents), 2), np.int32)
        rows = np.flatnonzero(edge & done)
        if len(rows):
            links[rows] = self._edge_links(ids, off, rows)
        # no rule-made spaces: the same ids before the final pass
        store.set_values(
            ents[done], start + off[:-1][done], np.diff(off)[done],
            lead=False, wdup=False, wmulti=False, wfirst=wid[done], wlast=wid[done],
            wstem=stem[done], link_first=links[done, 0], link_last=links[done, 1],
        )  # fmt: skip
        return done

    def _edge_links(self, ids: np.ndarray, off: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """_links of `rows` as an [n, 2] array: runs of several tokens whose edge pairs
        start (end) no two-token part, 99.9% of them, from the memo arrays in numpy; the
        others, and the first run with each edge token, through _links."""
        a, b = off[rows], off[rows + 1]
        first, last = ids[a], ids[b - 1]
        several = b - a > 1
        second, before = ids[np.minimum(a + 1, b - 1)], ids[np.maximum(b - 2, a)]
        plain = several & ~_among(_pack(first, second), self.two_keys[0])
        plain &= ~_among(_pack(before, last), self.two_keys[1])
        n_tok = len(self.store.tokens)
        if len(self.edge_memo[0]) < n_tok:
            self.edge_memo = tuple(grown_filled(m, 2 * n_tok, -1) for m in self.edge_memo)
        rmemo, lmemo = self.edge_memo
        # a side whose edge token starts (ends) no part at all has the empty set, 0
        starts, ends = self.edges
        out = np.stack(
            (
                np.where(_member(first, starts), rmemo[first], 0),
                np.where(_member(last, ends), lmemo[last], 0),
            ),
            axis=1,
        )
        slow = np.flatnonzero(~plain | (out[:, 0] < 0) | (out[:, 1] < 0))
        if len(slow):
            out[slow] = self._links(ids.tolist(), off.tolist(), rows[slow].tolist())
            known = slow[plain[slow]]  # the memo's keys (1, first) and (1, last)
            rmemo[first[known]] = out[known, 0]
            lmemo[last[known]] = out[known, 1]
        return out

    def _links(self, ids: list[int], off: list[int], rows: list[int]) -> list[tuple[int, int]]:
        """LinkIds.ids of the runs ids[off[r]:off[r+1]], memoized on token ids."""
        rmemo, lmemo = self.link_memo
        first_two, last_two = self.first_two, self.last_two
        by_first, by_last = self.by_first, self.by_last
        toks = self.store.tokens
        out = []
        for r in rows:
            a, b = off[r], off[r + 1]
            first, last = ids[a], ids[b - 1]
            if b - a == 1:
                rkey = lkey = (0, first)
            else:
                second, before = ids[a + 1], ids[b - 2]
                if (first, second) in first_two:
                    rkey = (2, first, second, ids[a + 2] if b - a > 2 else -1)
                else:
                    rkey = (1, first)
                if (before, last) in last_two:
                    lkey = (2, ids[b - 3] if b - a > 2 else -1, before, last)
                else:
                    lkey = (1, last)
            # a side whose edge token starts (ends) no part at all has the empty set
            rid = 0 if rkey[0] < 2 and first not in by_first else rmemo.get(rkey)
            lid = 0 if lkey[0] < 2 and last not in by_last else lmemo.get(lkey)
            if rid is None or lid is None:
                rid, lid = self.store.links.ids([toks[i] for i in ids[a:b]])
                rmemo[rkey], lmemo[lkey] = rid, lid
            out.append((rid, lid))
        return out


def _pack(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pairs of token ids as one int64 each."""
    return (x.astype(np.int64) << 32) | y.astype(np.int64)


def _member(tok: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """flags[tok], False past its end."""
    inside = tok < len(flags)
    return inside & flags[np.where(inside, tok, 0)] if len(flags) else inside


def _among(x: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each x is in the sorted ``keys`` (np.isin costs 0.1 ms a call on small arrays)."""
    if not len(keys):
        return np.zeros(len(x), np.bool_)
    at = np.minimum(np.searchsorted(keys, x), len(keys) - 1)
    return keys[at] == x


def _pair_keys(pairs: set[tuple[int, int]]) -> np.ndarray:
    if not pairs:
        return np.zeros(0, np.int64)
    x, y = (np.array(v, np.int64) for v in zip(*sorted(pairs)))
    return _pack(x, y)


def grown_filled(a: np.ndarray, cap: int, fill: int) -> np.ndarray:
    """``a`` with room for ``cap`` elements, the new ones set to ``fill``."""
    new = np.full(cap, fill, a.dtype)
    new[: len(a)] = a
    return new
