"""Text -> fastai-identical tokens -> local ids, fast.

fastai applies its rules to the whole document, then spaCy splits the result. Almost all of
that work is local to a whitespace-free run of the (HTML-fixed) text: replace_rep,
spec_add_spaces, replace_all_caps, replace_maj and lowercase never look across whitespace,
and spaCy's splitting works run by run. So each distinct run is processed once, in Python
(rules.py + words.py), and its token ids are cached in a hash table that numba probes
directly on the text's code points; the whitespace between runs is cached the same way.
Plain ASCII runs are looked up lowercased, their xxup/xxmaj marker found by the kernel.
Three things are not run-local, and a document that meets one of them is redone:

- replace_wrep (a word repeated 3+ times): flagged when a word follows itself and the next
  word starts with it, confirmed with fastai's pattern, then the exact whole-document path
  (rules on the document, then words.split_words);
- spaCy's final special-case pass, when the last tokens of a run and the first tokens of
  the next could belong to one multi-token special case (e.g. `''` `''`): the document's
  pass is redone over the cached pre-pass tokens;
- a text holding U+0000, the separator used to batch documents: whole-document path.

docs/tokenizer.md explains the design and the measured parity and speed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise

import numpy as np
from numba import njit

from fastulm.text import ascii_split
from fastulm.text.ascii_split import spells
from fastulm.text.rules import (
    BOS,
    RE_REP,
    RE_WREP,
    SPECIAL_TOKENS,
    apply_rules,
    fix_html,
    replace_all_caps,
    replace_maj,
    replace_rep,
    replace_space,
    rm_useless_spaces,
    spec_add_spaces,
)
from fastulm.text.table import FNV_OFFSET, FNV_PRIME, StringTable
from fastulm.text.table import fnv as _hash
from fastulm.text.table import prefetch as _prefetch
from fastulm.text.table import probe as _probe
from fastulm.text.table import slot_value as _slot_value
from fastulm.text.words import (
    LETTERS_PASS_THROUGH,
    PATTERNS,
    SPECIALS,
    TOKEN_MATCH_PATTERN_SET,
    pre_tokens,
    prefix_len,
    run_tokens,
    special_pass,
    split_words,
    suffix_len,
)

_WS_LIMIT = 0x3001  # every str.isspace() code point is below this
_WS = np.array([chr(i).isspace() for i in range(_WS_LIMIT)], dtype=np.bool_)
_WS_ALL = np.zeros(0x110000, np.bool_)  # every code point, for counting runs with numpy
_WS_ALL[:_WS_LIMIT] = _WS
_WORD = re.compile(r"\w+")
_SEP = "\x00"
# ASCII letters are one token or their special case (words.LETTERS_PASS_THROUGH), and no
# special-case pattern is made of letter tokens only: then the final pass changes nothing.
_LETTER_WORDS_PLAIN = (
    LETTERS_PASS_THROUGH
    and not TOKEN_MATCH_PATTERN_SET
    and not any(all(t.isascii() and t.isalpha() for t in p) for p in PATTERNS)
)


def _letters_then_one(s: str) -> list[str] | None:
    """spaCy's affix loop for ASCII letters + one other character, when it strips that
    character as a suffix and nothing as a prefix (else None: take the general path).

    The same steps as words._split_affixes, with the same regexes: the last character is
    the suffix; then the letters are a special case (stop) or one token (no affix matches
    ASCII letters)."""
    if prefix_len(s) or suffix_len(s) != 1:
        return None
    word = s[:-1]
    return [*SPECIALS.get(word, (word,)), s[-1]]


# _scan hands out the markers as ids 7 (xxup) and 8 (xxmaj), the local table's fixed ids;
# they must stay plain special cases for the lowercase lookup to be exact.
assert SPECIAL_TOKENS[7:9] == ["xxup", "xxmaj"]
assert SPECIALS["xxup"] == ("xxup",) and SPECIALS["xxmaj"] == ("xxmaj",)

# Two neighbouring runs can share a multi-token special case (see words.special_pass) only
# if the first run's tokens end like the left part of some split pattern and the second
# run's tokens start like its right part. A run stores the set of splits it is compatible
# with on each side (as a small id); a document is redone whole when two neighbours share a
# split (never a missed case, rarely a needless redo).
_BY_LAST: dict[str, list] = {}  # token -> [(left part ending in it, split number)]
_BY_FIRST: dict[str, list] = {}  # token -> [(right part starting with it, split number)]
for _n, (_p, _i) in enumerate((p, i) for p in sorted(PATTERNS) for i in range(len(p) - 1)):
    _BY_LAST.setdefault(_p[_i], []).append((_p[: _i + 1], _n))
    _BY_FIRST.setdefault(_p[_i + 1], []).append((_p[_i + 1 :], _n))
# Lookups for _link_sets: splits whose part is one token always fit; a run of one token
# fits every split it can be inside of; longer parts are found by their two edge tokens.
_FIRST_ONE = {t: frozenset(n for part, n in v if len(part) == 1) for t, v in _BY_FIRST.items()}
_LAST_ONE = {t: frozenset(n for part, n in v if len(part) == 1) for t, v in _BY_LAST.items()}
_FIRST_ALL = {t: frozenset(n for _, n in v) for t, v in _BY_FIRST.items()}
_LAST_ALL = {t: frozenset(n for _, n in v) for t, v in _BY_LAST.items()}
_FIRST_TWO: dict[tuple, list] = {}
_LAST_TWO: dict[tuple, list] = {}
for _t, _v in _BY_FIRST.items():
    for _part, _n in _v:
        if len(_part) > 1:
            _FIRST_TWO.setdefault(_part[:2], []).append((_part, _n))
for _t, _v in _BY_LAST.items():
    for _part, _n in _v:
        if len(_part) > 1:
            _LAST_TWO.setdefault(_part[-2:], []).append((_part, _n))
_EMPTY: frozenset = frozenset()


def _link_sets(toks: list) -> tuple[frozenset, frozenset]:
    """(splits the tokens can start the right part of, splits they can end the left part of)."""
    if None in toks:
        toks = [t for t in toks if t is not None]
    n_t = len(toks)
    if n_t == 1:
        return _FIRST_ALL.get(toks[0], _EMPTY), _LAST_ALL.get(toks[0], _EMPTY)
    right = _FIRST_ONE.get(toks[0], _EMPTY)
    cand = _FIRST_TWO.get((toks[0], toks[1]))
    if cand:
        head = tuple(toks[:3])
        # compared on up to 3 tokens: a longer part may pass needlessly (only an extra redo)
        more = [n for part, n in cand if head[: len(part)] == part[: len(head)]]
        if more:
            right = right | frozenset(more)
    left = _LAST_ONE.get(toks[-1], _EMPTY)
    cand = _LAST_TWO.get((toks[-2], toks[-1]))
    if cand:
        tail = tuple(toks[-3:])
        more = [n for part, n in cand if tail[-len(part) :] == part[-len(tail) :]]
        if more:
            left = left | frozenset(more)
    return right, left


# ---------------------------------------------------------------------------- numba kernels


@njit(cache=True, inline="always")
def _is_ws(c, ws):
    return c < 0x3001 and ws[c]


@njit(cache=True, nogil=True)
def _scan(arr, ws, cap, slots, ent_hash, key_start, key_pool, key_low, n_ent):
    """Cut the text into runs and look each up.

    A run not in the table is added at once (its key only: the caller fills in its values)
    as entry n_ent, n_ent+1, ...: the table must have room for one entry per run, and `cap`
    must bound the number of runs. Returns per run: kind, entry and marker; then the new
    entries' runs, with their start and end in `arr`. Kinds:
    0 text, 1 whitespace, 2 document end (a U+0000 or the end), 3 text looked up in
    lowercase. A run of ASCII without `/#\\` and without a character repeated 3 times is
    untouched by fastai's rules but for replace_all_caps / replace_maj and lowercase: it is
    looked up lowercased, and its marker (xxup 7 / xxmaj 8, or 0) is worked out here.
    """
    n = len(arr)
    r_kind = np.empty(cap, np.int8)
    r_ent = np.empty(cap, np.int32)
    r_mark = np.zeros(cap, np.int8)
    r_start = np.empty(cap, np.int32)
    r_end = np.empty(cap, np.int32)
    r_hash = np.empty(cap, np.uint64)
    # pass 1: runs, kinds, markers and hashes (a sequential read of the text)
    m = 0
    i = 0
    while i <= n:
        if i == n or arr[i] == 0:
            r_kind[m] = 2
            r_start[m] = i
            r_end[m] = i
            m += 1
            i += 1
            continue
        c = arr[i]
        if _is_ws(c, ws):
            j = i + 1
            while j < n and arr[j] != 0 and _is_ws(arr[j], ws):
                j += 1
            if j == i + 1 and c == 32:
                i = j  # a single space, the commonest run, is left implicit (entry 0)
                continue
            kind = 1
            h = _hash(arr, i, j)
        else:
            # the run's end, whether it is plain, and its hash raw and lowercased
            plain = True
            n_up = 0
            n_low = 0
            h = FNV_OFFSET
            h_low = FNV_OFFSET
            j = i
            while j < n:
                c = arr[j]
                if c < 128:
                    if c <= 32 and (c == 0 or c == 32 or 9 <= c <= 13 or 28 <= c <= 31):
                        break
                    low = c
                    if 65 <= c <= 90:
                        n_up += 1
                        low = c + 32
                    elif 97 <= c <= 122:
                        n_low += 1
                    elif c == 47 or c == 35 or c == 92:
                        plain = False
                    if j >= i + 2 and c == arr[j - 1] and c == arr[j - 2]:
                        plain = False
                else:
                    if c < 0x3001 and ws[c]:
                        break
                    plain = False
                    low = c
                h = (h ^ np.uint64(c)) * FNV_PRIME
                h_low = (h_low ^ np.uint64(low)) * FNV_PRIME
                j += 1
            if plain:
                kind = 3
                h = h_low
                if j - i > 1 and 65 <= arr[i] <= 90:
                    if n_low == 0:
                        r_mark[m] = 7
                    elif n_up == 1:
                        r_mark[m] = 8
            else:
                kind = 0
        r_kind[m] = kind
        r_start[m] = i
        r_end[m] = j
        r_hash[m] = h
        m += 1
        i = j
    # pass 2: the lookups (independent of each other, so their cache misses overlap)
    new_runs = np.empty(m, np.int64)
    n_new = 0
    mask = len(slots) - 1
    for r in range(m):
        # fetch ahead: the slot of run r+16, then the key of run r+8 (its slot is in cache)
        if r + 16 < m:
            _prefetch(slots, np.int64(r_hash[r + 16] & np.uint64(mask)))
        if r + 8 < m:
            v = slots[np.int64(r_hash[r + 8] & np.uint64(mask))]
            if v >= 0:
                _prefetch(key_start, v & 0xFFFFFFFF)
                _prefetch(key_pool, key_start[v & 0xFFFFFFFF])
        kind = r_kind[r]
        if kind == 2:
            r_ent[r] = -1
            continue
        i, j, h = r_start[r], r_end[r], r_hash[r]
        lower = kind == 3
        k = _probe(arr, i, j, h, lower, slots, ent_hash, key_start, key_pool, key_low)
        if k < 0:  # new: add the key (lowercased for kind 3) as entry n_ent
            ks = key_start[n_ent]
            for t in range(i, j):
                c = arr[t]
                if lower and 65 <= c <= 90:
                    c += 32
                key_pool[ks + t - i] = c
            key_start[n_ent + 1] = ks + j - i
            ent_hash[n_ent] = h
            key_low[n_ent] = lower
            slots[-k - 1] = _slot_value(h, lower, n_ent)
            k = n_ent
            n_ent += 1
            new_runs[n_new] = r
            n_new += 1
        r_ent[r] = k
    new = new_runs[:n_new]
    return (
        r_kind[:m],
        r_ent[:m],
        r_mark[:m],
        new,
        r_start[new].astype(np.int64),
        r_end[new].astype(np.int64),
    )


@njit(cache=True, nogil=True)
def _assemble(
    r_kind,
    r_ent,
    r_mark,
    val_start,
    val_len,
    lead,
    link_first,
    link_last,
    compat,
    wfirst,
    wlast,
    wdup,
    wstem,
    wmulti,
    tok_pool,
    n_docs,
    bos,
):
    """Token ids of every document (BOS first), its offsets, and a flag per document.

    Flags: 1 = a special case may span two runs, 2 = a word may repeat (replace_wrep:
    the same word twice in a row, then a word starting with it).
    Entries hold two values: [0] as is, [1] for whitespace followed by a rule-made space.
    """
    out = np.empty(4 * len(r_kind) + 16, np.int32)  # grown below when a batch needs more
    offsets = np.zeros(n_docs + 1, np.int64)
    flags = np.zeros(n_docs, np.int8)
    o = 0
    d = 0
    prev = -1  # entry of the previous text run in this document
    pend = -1  # whitespace entry waiting for the next text run
    wait = -1  # a word just seen twice in a row (replace_wrep needs a third)
    out[o] = bos
    o += 1
    n_runs = len(r_kind)
    for r in range(n_runs):
        kind = r_kind[r]
        e = r_ent[r]
        if kind != 1:  # room for a BOS, or for a marker, the whitespace and the run's ids
            need = 2 + (val_len[e, 0] if e >= 0 else 0)
            need += max(val_len[pend, 0], val_len[pend, 1]) if pend >= 0 else 0
            if len(out) - o < need:
                out = np.concatenate((out[:o], np.empty(len(out) + need, np.int32)))
        if kind == 2:
            d += 1
            offsets[d] = o
            if d < n_docs:
                out[o] = bos
                o += 1
            prev = -1
            pend = -1
            wait = -1
        elif kind == 1:
            if prev >= 0:
                pend = e
        else:
            mark = r_mark[r]
            if prev >= 0:
                v = 1 if lead[e] else 0
                n_ws = val_len[pend, v]
                s = val_start[pend, v]
                for t in range(n_ws):
                    out[o] = tok_pool[s + t]
                    o += 1
                right = 0 if mark else link_first[e]
                if n_ws == 0 and compat[link_last[prev], right]:
                    flags[d] |= 1
                if wait >= 0 and wstem[e] == wait:
                    flags[d] |= 2
                wait = -1
                if wlast[prev] >= 0 and wlast[prev] == wfirst[e]:
                    if wmulti[e]:
                        flags[d] |= 2
                    else:
                        wait = wfirst[e]
            if wdup[e]:
                flags[d] |= 2
            if mark:
                out[o] = mark
                o += 1
            s = val_start[e, 0]
            for t in range(val_len[e, 0]):
                out[o] = tok_pool[s + t]
                o += 1
            prev = e
            pend = 0  # a single space unless a whitespace run says otherwise
    return out[:o], offsets, flags


@njit(cache=True, nogil=True)
def _pre_tokens(r_kind, r_ent, r_mark, lo, hi, val_start, val_len, lead, tok_pool, bos):
    """One document's ids before the final special-case pass, and the spaCy-level run each
    token belongs to (the input of words.special_pass); runs lo..hi-1 as _assemble."""
    space = max(val_len[0, 0], val_len[0, 1])  # entry 0: the implicit single space
    total = 1
    for r in range(lo, hi):
        e = r_ent[r]
        total += 1 + max(val_len[e, 0], val_len[e, 1]) + space
    ids = np.empty(total, np.int32)
    owner = np.empty(total, np.int32)
    ids[0] = bos
    owner[0] = -1
    o = 1
    k = 0
    prev = -1
    pend = -1
    for r in range(lo, hi):
        e = r_ent[r]
        if r_kind[r] == 1:
            pend = e if prev >= 0 else -1
            continue
        if prev >= 0:
            v = 1 if lead[e] else 0
            s = val_start[pend, v]
            for t in range(val_len[pend, v]):
                k += 1
                ids[o] = tok_pool[s + t]
                owner[o] = k
                o += 1
        k += 1
        if r_mark[r]:
            ids[o] = r_mark[r]
            owner[o] = k
            o += 1
            k += 1
        s = val_start[e, 1]
        for t in range(val_len[e, 1]):
            i = tok_pool[s + t]
            if i == -2:
                k += 1
            else:
                ids[o] = i
                owner[o] = k
                o += 1
        prev = e
        pend = 0  # a single space unless a whitespace run says otherwise
    return ids[:o], owner[:o]


@njit(cache=True, nogil=True)
def _special_pass(ids, owner, pf_start, pf_list, p_off, p_ids, r_off, r_ids):
    """words.special_pass on token ids: every pattern match, longest first (leftmost first
    among equals), kept when its first and last tokens are unclaimed, replaced when it lies
    in one spaCy run (`owner`); patterns by first token id (pf_start/pf_list), their tokens
    (p_off/p_ids) and replacements (r_off/r_ids)."""
    n = len(ids)
    m_start = np.empty(4 * n + 4, np.int64)
    m_pat = np.empty(4 * n + 4, np.int64)
    m_len = np.empty(4 * n + 4, np.int64)
    n_m = 0
    longest = 0
    for i in range(n):
        t = ids[i]
        if t < 0 or t + 1 >= len(pf_start):
            continue
        for q in range(pf_start[t], pf_start[t + 1]):
            pt = pf_list[q]
            size = p_off[pt + 1] - p_off[pt]
            if spells(ids, i, n, pt, p_off, p_ids):
                if n_m == len(m_start):
                    m_start = np.concatenate((m_start, np.empty(n_m, np.int64)))
                    m_pat = np.concatenate((m_pat, np.empty(n_m, np.int64)))
                    m_len = np.concatenate((m_len, np.empty(n_m, np.int64)))
                m_start[n_m] = i
                m_pat[n_m] = pt
                m_len[n_m] = size
                longest = max(longest, size)
                n_m += 1
    if n_m == 0:
        return ids
    key = (longest - m_len[:n_m]) * (n + 1) + m_start[:n_m]
    order = np.argsort(key, kind="mergesort")
    seen = np.zeros(n, np.bool_)
    kept_pat = np.full(n, -1, np.int64)  # by start position
    for k in order:
        s = m_start[k]
        e = s + m_len[k]
        if not seen[s] and not seen[e - 1] and owner[s] == owner[e - 1]:
            kept_pat[s] = m_pat[k]
        seen[s:e] = True
    out = np.empty(n + len(r_ids) * n_m, np.int32)
    o = 0
    i = 0
    while i < n:
        pt = kept_pat[i]
        if pt < 0:
            out[o] = ids[i]
            o += 1
            i += 1
            continue
        for x in range(r_off[pt], r_off[pt + 1]):
            out[o] = r_ids[x]
            o += 1
        i += p_off[pt + 1] - p_off[pt]
    return out[:o]


# ---------------------------------------------------------------------------- the tokenizer


def _concat(pieces: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(pieces) + 1, np.int64)
    np.cumsum([len(p) for p in pieces], out=offsets[1:])
    flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    return flat.astype(np.int32, copy=False), offsets


class _PlainRuns:
    """The numba path for new plain ASCII runs (ascii_split), with the tables it shares
    with a Tokenizer: tokens, replace_wrep words, special cases, final-pass patterns."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        # every token a special case or a pattern can produce gets its id now, so the
        # kernel knows them by id
        keys = list(SPECIALS)
        values = [tok._ids_of(list(SPECIALS[k])) for k in keys]
        self.spec = StringTable(keys)
        self.spec_val = _csr(values)
        # a pattern replaced by its own tokens changes nothing (and what it blocks still
        # has to match to change anything): the kernel need not look for it
        changing = sorted(p for p, v in PATTERNS.items() if tuple(v) != p)
        self.pats = tok._pass_tables(changing)[:4]
        first = [tok._token_id(t) for t in _BY_FIRST]
        last = [tok._token_id(t) for t in _BY_LAST]
        n = max(first + last, default=-1) + 1
        self.edges = (np.zeros(n, np.bool_), np.zeros(n, np.bool_))
        self.edges[0][first] = True
        self.edges[1][last] = True
        # _link_ids by token ids: the edge pairs that can start / end a two-token part, the
        # tokens that can start / end any part, and a memo per side keyed as _link_ids does
        two = tok._token_id
        self.first_two = {(two(a), two(b)) for a, b in _FIRST_TWO}
        self.last_two = {(two(a), two(b)) for a, b in _LAST_TWO}
        self.by_first, self.by_last = set(first), set(last)
        self.link_memo: tuple[dict, dict] = ({}, {})
        self.extra = max((len(v) - 1 for v in SPECIALS.values()), default=0)
        self.tokens = StringTable(tok.tokens)
        self.words = StringTable()
        self.classes, self.prefix, self.suffix, self.infix = ascii_split.COMPILED

    def fill(self, ents: np.ndarray) -> np.ndarray:
        """Values of the plain-run entries `ents` (keys lowercased); which were done."""
        tok = self.tok
        if len(ents) == 0:
            return np.zeros(0, np.bool_)
        self.tokens.add(tok.tokens[self.tokens.n :])  # what Python added meanwhile
        self.words.add(tok._word_list[self.words.n :])
        keys = tok._runs
        n_chars = int((keys.key_start[ents + 1] - keys.key_start[ents]).sum())
        self.tokens.reserve(n_chars, n_chars)
        self.words.reserve(len(ents), n_chars)
        status, ids, off, wid, stem, edge, n_tok, n_word = ascii_split.split_runs(
            ents, keys.key_start, keys.key_pool, self.classes, self.prefix, self.suffix,
            self.infix, self.spec.arrays, self.spec_val, self.tokens.arrays, self.tokens.n,
            self.words.arrays, self.words.n, self.pats, self.edges, self.extra,
        )  # fmt: skip
        new = self.tokens.strings(self.tokens.n, n_tok)
        tok._ids.update(zip(new, range(len(tok.tokens), len(tok.tokens) + len(new))))
        tok.tokens.extend(new)
        self.tokens.n = n_tok
        new = self.words.strings(self.words.n, n_word)
        tok._words.update(zip(new, range(len(tok._word_list), n_word)))
        tok._word_list.extend(new)
        self.words.n = n_word
        done = status == 0
        ent = ents[done]
        end = tok._n_tok + len(ids)
        if end > len(tok._tok_pool):
            tok._tok_pool = np.resize(tok._tok_pool, max(end, 2 * len(tok._tok_pool)))
        tok._tok_pool[tok._n_tok : end] = ids
        starts = tok._n_tok + off[:-1][done]
        lens = np.diff(off)[done]
        tok._n_tok = end
        for v in (0, 1):  # no rule-made spaces: the same ids before the final pass
            tok._val_start[ent, v] = starts
            tok._val_len[ent, v] = lens
        for name in ("_lead", "_wdup", "_wmulti"):
            getattr(tok, name)[ent] = False
        tok._wfirst[ent] = wid[done]
        tok._wlast[ent] = wid[done]
        tok._wstem[ent] = stem[done]
        links = np.zeros((len(ents), 2), np.int32)
        rows = np.flatnonzero(edge & done).tolist()
        if rows:
            links[rows] = self._links(ids.tolist(), off.tolist(), rows)
        tok._link_first[ent] = links[done, 0]
        tok._link_last[ent] = links[done, 1]
        return done

    def _links(self, ids: list[int], off: list[int], rows: list[int]) -> list[tuple[int, int]]:
        """Tokenizer._link_ids of the runs ids[off[r]:off[r+1]], memoized on token ids."""
        rmemo, lmemo = self.link_memo
        first_two, last_two = self.first_two, self.last_two
        by_first, by_last = self.by_first, self.by_last
        toks = self.tok.tokens
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
                rid, lid = self.tok._link_ids([toks[i] for i in ids[a:b]])
                rmemo[rkey], lmemo[lkey] = rid, lid
            out.append((rid, lid))
        return out


def _csr(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(lists) + 1, np.int64)
    np.cumsum([len(x) for x in lists], out=offsets[1:])
    flat = np.array([i for x in lists for i in x], np.int32)
    return offsets, flat


class Tokenizer:
    """Per-process tokenizer: fastai's rules, spaCy-compatible splitting, local ids.

    `tokens` maps local id -> token string; it only grows, and starts with fastai's
    special tokens, so ids 0..8 are xxunk..xxmaj. Use `encode_batch` for many texts.
    """

    def __init__(self) -> None:
        self.tokens: list[str] = list(SPECIAL_TOKENS)
        self._ids: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        self._words: dict[str, int] = {}
        self._word_list: list[str] = []  # self._words' keys in id order
        self._runs = StringTable()  # the run table's keys; the values are the arrays below
        self._grow_entries(len(self._runs.ent_hash))
        self._tok_pool = np.zeros(1 << 17, np.int32)
        self._n_tok = 0
        self._split_cache: dict[str, list[str]] = {}  # spaCy-level run -> tokens
        self._lsets: dict[frozenset, int] = {frozenset(): 0}
        self._rsets: dict[frozenset, int] = {frozenset(): 0}
        self._compat = np.zeros((1, 1), np.bool_)
        self._link_memo: tuple[dict, dict] = ({}, {})  # right, left: key -> set id
        # entry 0 is the single space, which _scan uses without a lookup
        self._runs.add([" "])
        self._fill(np.zeros(1, np.int64), [(1, " ")])
        self._pass = self._pass_tables(sorted(PATTERNS))
        self._plain = _PlainRuns(self) if ascii_split.COMPILED is not None else None

    # -- storage

    def _grow_entries(self, cap: int) -> None:
        """Room for `cap` entries' values."""

        def grow(name, shape, dtype, fill=0):
            new = np.full(shape, fill, dtype)
            old = getattr(self, name, None)
            if old is not None:
                new[: len(old)] = old
            setattr(self, name, new)

        grow("_val_start", (cap, 2), np.int64)
        grow("_val_len", (cap, 2), np.int32)
        grow("_lead", cap, np.bool_)
        grow("_link_first", cap, np.int32)
        grow("_link_last", cap, np.int32)
        grow("_wfirst", cap, np.int32, -1)
        grow("_wlast", cap, np.int32, -1)
        grow("_wdup", cap, np.bool_)
        grow("_wstem", cap, np.int32, -1)
        grow("_wmulti", cap, np.bool_)

    def _token_id(self, tok: str) -> int:
        i = self._ids.get(tok)
        if i is None:
            i = len(self.tokens)
            self.tokens.append(tok)
            self._ids[tok] = i
        return i

    def _ids_of(self, toks: list) -> list[int]:
        """Local ids of tokens without spaces (None, a spaCy-run boundary mark, gives -2)."""
        get = self._ids.get
        ids = [get(t) for t in toks]
        if None in ids:
            ids = [-2 if t is None else self._token_id(t) for t in toks]
        return ids

    def _link_ids(self, toks) -> tuple[int, int]:
        """Ids of the run's right / left split sets (0 = none), kept in self._compat.

        Each side is memoized on what it looks at: its edge token, and the next two when
        the edge pair can start (end) a two-token part; a lone token has its own key."""
        first, last = toks[0], toks[-1]
        if first not in _BY_FIRST and last not in _BY_LAST:
            return 0, 0
        if len(toks) == 1:
            rkey = lkey = ("1", first)
        else:
            rkey = ("h", *toks[:3]) if (first, toks[1]) in _FIRST_TWO else ("f", first)
            lkey = ("t", *toks[-3:]) if (toks[-2], last) in _LAST_TWO else ("l", last)
        rmemo, lmemo = self._link_memo
        rid, lid = rmemo.get(rkey), lmemo.get(lkey)
        if rid is None or lid is None:
            right, left = _link_sets(toks)
            rid = rmemo[rkey] = self._rsets.setdefault(right, len(self._rsets))
            lid = lmemo[lkey] = self._lsets.setdefault(left, len(self._lsets))
            if self._compat.shape != (len(self._lsets), len(self._rsets)):
                ls, rs = list(self._lsets), list(self._rsets)
                self._compat = np.array([[bool(a & b) for b in rs] for a in ls], dtype=np.bool_)
        return rid, lid

    def _stem_id(self, word: str) -> int:
        """Id of the word characters a word starts with (what replace_wrep's third
        repetition must be), -1 if none."""
        m = _WORD.match(word)
        return -1 if m is None else self._word_id(m.group())

    def _word_key(self, word: str) -> int:
        i = self._words.get(word)
        if i is None:
            i = self._words[word] = len(self._word_list)
            self._word_list.append(word)
        return i

    def _word_id(self, word: str) -> int:
        """Id of a replace_wrep candidate word, case folded: runs looked up lowercased only
        know their words in lowercase, so all are compared so (more candidates, never fewer)."""
        if not _WORD.fullmatch(word):
            return -1
        word = word.lower()
        return self._word_key(word.lower())

    # -- one run, the slow way

    def _split(self, core: str, cached: bool = True) -> tuple[list[str], list, int, int]:
        """Tokens of a rule-processed run (single spaces only), the same before the final
        special-case pass with None between spaCy runs, and the run's link masks."""
        cache = self._split_cache if cached else None
        subs = core.split(" ")
        if len(subs) == 1:
            pre = run_tokens(core, cache)
            return special_pass(pre), pre, *self._link_ids(pre)
        pres = [run_tokens(sub, cache) for sub in subs]
        flat = [t for pre in pres for t in pre]
        owner = [k for k, pre in enumerate(pres) for _ in pre]
        marked = [t for pre in pres for t in (None, *pre)][1:]
        return special_pass(flat, owner), marked, *self._link_ids(flat)

    def _lower_run(self, low: str) -> tuple:
        """Values of a lowercased plain ASCII run (kind 3 in _scan): the rules only add the
        marker _scan works out, so this is the spaCy split of `low` alone."""
        if _LETTER_WORDS_PLAIN and low.isalpha():  # ASCII letters (about 40% of new runs)
            word = SPECIALS.get(low, (low,))
            ids = self._ids_of(word)
            wid = self._word_key(low)
            return ids, ids, False, *self._link_ids(word), wid, wid, False, wid, False
        if _LETTER_WORDS_PLAIN and low[:-1].isalpha() and low not in SPECIALS:
            pre = _letters_then_one(low)
            if pre is not None:  # ASCII letters + one non-letter (about 25% of new runs)
                toks = special_pass(pre)
                ids = self._ids_of(toks)
                pre_ids = ids if toks is pre else self._ids_of(pre)
                wid = self._word_id(low)
                # not all word characters: the stem is the letters
                stem = wid if wid >= 0 else self._word_key(low[:-1])
                return ids, pre_ids, False, *self._link_ids(pre), wid, wid, False, stem, False
        toks, pre, first, last = self._split(low, cached=False)  # the run table caches it
        wid = self._word_id(low)  # lowercase: more replace_wrep candidates, never fewer
        ids = self._ids_of(toks)
        pre_ids = ids if pre is toks else self._ids_of(pre)
        stem = wid if wid >= 0 else self._stem_id(low)
        return ids, pre_ids, False, first, last, wid, wid, False, stem, False

    def _text_run(self, run: str) -> tuple:
        """Values of a whitespace-free run: ids, ids before the special-case pass, lead space,
        link indices, replace_wrep words."""
        rep = replace_rep(run) if RE_REP.search(run) else run
        words = rep.split()
        wdup = len(words) > 1 and any(a == b and _WORD.fullmatch(a) for a, b in pairwise(words))
        text = spec_add_spaces(rep) if ("/" in rep or "#" in rep or "\\" in rep) else rep
        if "  " in text:
            text = rm_useless_spaces(text)
        if text.lower() != text:  # both rules need a capital A-Z
            text = replace_maj(replace_all_caps(text))
        text = text.lower()
        toks, pre, first, last = self._split(text.strip(" "))
        wf = self._word_id(words[0])
        wl = wf if len(words) == 1 else self._word_id(words[-1])
        lead = text.startswith(" ")
        stem = wf if wf >= 0 else self._stem_id(words[0])
        multi = len(words) > 1
        return self._ids_of(toks), self._ids_of(pre), lead, first, last, wf, wl, wdup, stem, multi

    def _space_run(self, run: str) -> tuple:
        """Values of a whitespace run between two text runs, without / with a space after."""
        plain = rm_useless_spaces(" " + run)[1:]
        spaced = rm_useless_spaces(" " + run + " ")[1:]
        ids = []
        for text in (plain, spaced):
            toks = split_words(text, self._split_cache) if text else []
            ids.append([self._token_id(replace_space(t)) for t in toks])
        return ids[0], ids[1], False, 0, 0, -1, -1, False, -1, False

    def _reserve(self, n_new: int, n_chars: int) -> None:
        """Room for n_new more entries with n_chars more key characters."""
        self._runs.reserve(n_new, n_chars)
        if len(self._val_start) < len(self._runs.ent_hash):
            self._grow_entries(len(self._runs.ent_hash))

    def _fill(self, ents: np.ndarray, runs: list[tuple[int, str]]) -> None:
        """Values of the new entries `ents` from their (kind, key)."""
        todo = {1: self._space_run, 0: self._text_run, 3: self._lower_run}
        vals = [todo[kind](key) for kind, key in runs]
        flat: list[int] = []
        lens = []
        for v in vals:
            flat += v[0]
            flat += v[1]
            lens.append(len(v[0]))
            lens.append(len(v[1]))
        end = self._n_tok + len(flat)
        if end > len(self._tok_pool):
            self._tok_pool = np.resize(self._tok_pool, max(end, 2 * len(self._tok_pool)))
        self._tok_pool[self._n_tok : end] = flat
        lens = np.array(lens, np.int64).reshape(-1, 2)
        starts = np.cumsum(lens.ravel()).reshape(-1, 2) - lens + self._n_tok
        sl = ents
        self._val_start[sl] = starts
        self._val_len[sl] = lens
        self._n_tok = end
        names = ("_lead", "_link_first", "_link_last", "_wfirst", "_wlast", "_wdup", "_wstem")
        names += ("_wmulti",)
        for k, name in enumerate(names, 2):
            getattr(self, name)[sl] = [v[k] for v in vals]

    def _pass_tables(self, pats: list[tuple[str, ...]]) -> tuple:
        """Final-pass patterns (keys of words.PATTERNS) by token id: which start with each
        token, their tokens and their replacements, for _special_pass."""
        pat_ids = [self._ids_of(list(p)) for p in pats]
        by_first: dict[int, list[int]] = {}
        for k, ids in enumerate(pat_ids):
            by_first.setdefault(ids[0], []).append(k)
        starts, flat = _csr([by_first.get(t, []) for t in range(max(by_first, default=-1) + 1)])
        p_off, p_ids = _csr(pat_ids)
        r_off, r_ids = _csr([self._ids_of(list(PATTERNS[p])) for p in pats])
        return starts, flat, p_off, p_ids, r_off, r_ids

    # -- documents

    def _exact_ids(self, text: str) -> np.ndarray:
        """The slow, whole-document path (always exact)."""
        toks, owner = pre_tokens(apply_rules(text), self._split_cache)
        ids = np.array([self._token_id(replace_space(t)) for t in toks], dtype=np.int32)
        return _special_pass(ids, np.array(owner, np.int32), *self._pass)

    def _relink(self, r_kind, r_ent, r_mark, lo: int, hi: int) -> np.ndarray:
        """Ids of the document made of runs lo..hi-1, with the document-wide special-case
        pass (for a document where two runs may share a multi-token special case)."""
        ids, owner = _pre_tokens(
            r_kind, r_ent, r_mark, lo, hi, self._val_start, self._val_len, self._lead,
            self._tok_pool, self._ids[BOS],
        )  # fmt: skip
        return _special_pass(ids, owner, *self._pass)

    def _encode_fixed(self, fixed: list[str]) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Ids and offsets of HTML-fixed texts, and the documents that need the slow path."""
        joined = _SEP.join(fixed)
        arr = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), np.uint32)
        ws = _WS_ALL[arr]
        n_runs = np.count_nonzero(ws[1:] != ws[:-1]) + 2 * len(fixed) + 1  # separators too
        self._reserve(n_runs, len(arr))
        first = self._runs.n
        r_kind, r_ent, r_mark, new, new_start, new_end = _scan(
            arr, _WS, n_runs, *self._runs.arrays, first
        )
        if len(new):
            self._runs.n = first + len(new)
            todo = np.ones(len(new), np.bool_)
            if self._plain is not None:  # plain ASCII runs in numba; what it leaves, below
                plain = np.flatnonzero(r_kind[new] == 3)
                todo[plain[self._plain.fill(r_ent[new[plain]])]] = False
            rest = np.flatnonzero(todo)
            starts, ends = new_start[rest].tolist(), new_end[rest].tolist()
            kinds = r_kind[new[rest]].tolist()
            runs = [
                (k, joined[s:e].lower() if k == 3 else joined[s:e])
                for k, s, e in zip(kinds, starts, ends)
            ]
            self._fill(r_ent[new[rest]], runs)
        ids, offsets, flags = _assemble(
            r_kind, r_ent, r_mark, self._val_start, self._val_len, self._lead, self._link_first,
            self._link_last, self._compat, self._wfirst, self._wlast, self._wdup, self._wstem,
            self._wmulti, self._tok_pool,
            len(fixed), self._ids[BOS],
        )  # fmt: skip
        flagged = np.flatnonzero(flags).tolist()
        if not flagged:
            return ids, offsets, []
        slow, redo = [], {}
        for d in flagged:
            if flags[d] & 2 and RE_WREP.search(replace_rep(fixed[d])):
                slow.append(d)
            elif flags[d] & 1:
                redo[d] = None
        if redo:
            ends = np.flatnonzero(r_kind == 2)
            for d in redo:
                lo = ends[d - 1] + 1 if d else 0
                redo[d] = self._relink(r_kind, r_ent, r_mark, lo, ends[d])
            pieces = [ids[offsets[i] : offsets[i + 1]] for i in range(len(fixed))]
            for d, new_ids in redo.items():
                pieces[d] = new_ids
            ids, offsets = _concat(pieces)
        return ids, offsets, slow

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of many texts: (flat int32 ids, int64 offsets with len(texts)+1 entries)."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is a {type(t).__name__}, not a str")
        fixed = ["" if _SEP in t else fix_html(t) for t in texts]
        ids, offsets, slow = self._encode_fixed(fixed)
        slow = set(slow) | {i for i, t in enumerate(texts) if _SEP in t}
        if not slow:
            return ids, offsets
        pieces = [ids[offsets[i] : offsets[i + 1]] for i in range(len(texts))]
        for d in slow:
            pieces[d] = self._exact_ids(texts[d])
        return _concat(pieces)

    def encode(self, text: str) -> np.ndarray:
        """Local token ids of `text` (int32, `xxbos` first)."""
        ids, _ = self.encode_batch([text])
        return ids

    def tokenize(self, text: str) -> list[str]:
        """Tokens of `text`, identical to fastai 2.8.12 `tokenize_texts`."""
        toks = self.tokens
        return [toks[i] for i in self.encode(text).tolist()]

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[str]]:
        """Tokens of many texts (faster than calling `tokenize` on each)."""
        ids, offsets = self.encode_batch(texts)
        toks = self.tokens
        flat = [toks[i] for i in ids.tolist()]
        return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
