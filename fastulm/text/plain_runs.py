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
        rows = np.flatnonzero(edge & done).tolist()
        if rows:
            links[rows] = self._links(ids.tolist(), off.tolist(), rows)
        # no rule-made spaces: the same ids before the final pass
        store.set_values(
            ents[done], start + off[:-1][done], np.diff(off)[done],
            lead=False, wdup=False, wmulti=False, wfirst=wid[done], wlast=wid[done],
            wstem=stem[done], link_first=links[done, 0], link_last=links[done, 1],
        )  # fmt: skip
        return done

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
