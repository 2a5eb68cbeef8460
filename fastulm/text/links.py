"""Cross-run links: which neighbouring runs could share a multi-token special case.

spaCy's final special-case pass (words.special_pass) looks at the whole document, so two
neighbouring runs can share a multi-token special case (e.g. `''` `''`) only if the first
run's tokens end like the left part of some split pattern and the second run's tokens
start like its right part. A run stores the set of splits it is compatible with on each
side (as a small id); a document is redone whole when two neighbours share a split (never
a missed case, rarely a needless redo).
"""

from __future__ import annotations

import numpy as np

from fastulm.text.words import PATTERNS

BY_LAST: dict[str, list] = {}  # token -> [(left part ending in it, split number)]
BY_FIRST: dict[str, list] = {}  # token -> [(right part starting with it, split number)]
for _n, (_p, _i) in enumerate((p, i) for p in sorted(PATTERNS) for i in range(len(p) - 1)):
    BY_LAST.setdefault(_p[_i], []).append((_p[: _i + 1], _n))
    BY_FIRST.setdefault(_p[_i + 1], []).append((_p[_i + 1 :], _n))
# Lookups for link_sets: splits whose part is one token always fit; a run of one token
# fits every split it can be inside of; longer parts are found by their two edge tokens.
_FIRST_ONE = {t: frozenset(n for part, n in v if len(part) == 1) for t, v in BY_FIRST.items()}
_LAST_ONE = {t: frozenset(n for part, n in v if len(part) == 1) for t, v in BY_LAST.items()}
_FIRST_ALL = {t: frozenset(n for _, n in v) for t, v in BY_FIRST.items()}
_LAST_ALL = {t: frozenset(n for _, n in v) for t, v in BY_LAST.items()}
FIRST_TWO: dict[tuple, list] = {}
LAST_TWO: dict[tuple, list] = {}
for _t, _v in BY_FIRST.items():
    for _part, _n in _v:
        if len(_part) > 1:
            FIRST_TWO.setdefault(_part[:2], []).append((_part, _n))
for _t, _v in BY_LAST.items():
    for _part, _n in _v:
        if len(_part) > 1:
            LAST_TWO.setdefault(_part[-2:], []).append((_part, _n))
_EMPTY: frozenset = frozenset()


def link_sets(toks: list) -> tuple[frozenset, frozenset]:
    """(splits the tokens can start the right part of, splits they can end the left part of)."""
    if None in toks:
        toks = [t for t in toks if t is not None]
    n_t = len(toks)
    if n_t == 1:
        return _FIRST_ALL.get(toks[0], _EMPTY), _LAST_ALL.get(toks[0], _EMPTY)
    right = _FIRST_ONE.get(toks[0], _EMPTY)
    cand = FIRST_TWO.get((toks[0], toks[1]))
    if cand:
        head = tuple(toks[:3])
        # compared on up to 3 tokens: a longer part may pass needlessly (only an extra redo)
        more = [n for part, n in cand if head[: len(part)] == part[: len(head)]]
        if more:
            right = right | frozenset(more)
    left = _LAST_ONE.get(toks[-1], _EMPTY)
    cand = LAST_TWO.get((toks[-2], toks[-1]))
    if cand:
        tail = tuple(toks[-3:])
        more = [n for part, n in cand if tail[-len(part) :] == part[-len(tail) :]]
        if more:
            left = left | frozenset(more)
    return right, left


class LinkIds:
    """Small ids for the link sets runs have, and `compat[left id, right id]`: whether a
    run with that left set followed by one with that right set may share a split."""

    def __init__(self) -> None:
        self._lsets: dict[frozenset, int] = {frozenset(): 0}
        self._rsets: dict[frozenset, int] = {frozenset(): 0}
        self.compat = np.zeros((1, 1), np.bool_)
        self._memo: tuple[dict, dict] = ({}, {})  # right, left: key -> set id

    def ids(self, toks) -> tuple[int, int]:
        """Ids of the run's right / left split sets (0 = none).

        Each side is memoized on what it looks at: its edge token, and the next two when
        the edge pair can start (end) a two-token part; a lone token has its own key."""
        first, last = toks[0], toks[-1]
        if first not in BY_FIRST and last not in BY_LAST:
            return 0, 0
        if len(toks) == 1:
            rkey = lkey = ("1", first)
        else:
            rkey = ("h", *toks[:3]) if (first, toks[1]) in FIRST_TWO else ("f", first)
            lkey = ("t", *toks[-3:]) if (toks[-2], last) in LAST_TWO else ("l", last)
        rmemo, lmemo = self._memo
        rid, lid = rmemo.get(rkey), lmemo.get(lkey)
        if rid is None or lid is None:
            right, left = link_sets(toks)
            rid = rmemo[rkey] = self._rsets.setdefault(right, len(self._rsets))
            lid = lmemo[lkey] = self._lsets.setdefault(left, len(self._lsets))
            if self.compat.shape != (len(self._lsets), len(self._rsets)):
                ls, rs = list(self._lsets), list(self._rsets)
                self.compat = np.array([[bool(a & b) for b in rs] for a in ls], dtype=np.bool_)
        return rid, lid
