"""The tokenizer's numba kernels: cut a batch into runs and look them up (scan), put each
document's ids together from the runs' cached ids (assemble), and redo spaCy's final
special-case pass on token ids for a flagged document (pre_tokens, special_pass).

The kernels read the run table (table.StringTable) and the entries' values (run_store.RunStore)
as plain arrays; docs/tokenizer.md, "Fast path", describes the steps.
"""

from __future__ import annotations

import numpy as np

from fastulm.text.ascii_split import spells
from fastulm.text.jit import kernel
from fastulm.text.table import FNV_OFFSET, FNV_PRIME
from fastulm.text.table import fnv as _hash
from fastulm.text.table import prefetch as _prefetch
from fastulm.text.table import probe as _probe
from fastulm.text.table import slot_value as _slot_value
from fastulm.text.words import PATTERNS

WS_LIMIT = 0x3001  # every str.isspace() code point is below this
WS = np.array([chr(i).isspace() for i in range(WS_LIMIT)], dtype=np.bool_)
WS_PAD = np.append(WS, False)  # and False at WS_LIMIT, where every code point above it goes


@kernel(inline="always")
def _is_ws(c, ws):
    return c < 0x3001 and ws[c]


@kernel(nogil=True)
def max_runs(arr, ws_pad):
    """A bound on the runs scan cuts `arr` into: the first run, one per change between
    whitespace and text, two per document end (a U+0000) and per `/`, `#` or `\\`, and the
    last document's end. Branch-free (`ws_pad`: WS_PAD): 0.4 ns a character."""
    n = 2
    prev = 0
    for i in range(len(arr)):
        c = arr[i]
        w = np.int64(ws_pad[min(c, WS_LIMIT)])
        n += w ^ prev
        prev = w
        n += 2 * ((c == 0) | (c == 47) | (c == 35) | (c == 92))
    return n


@kernel(nogil=True)
def scan(arr, ws, cap, slots, ent_hash, key_start, key_pool, key_low, n_ent):
    """Cut the text into runs and look each up.

    A run not in the table is added at once (its key only: the caller fills in its values)
    as entry n_ent, n_ent+1, ...: the table must have room for one entry per run, and `cap`
    must bound the number of runs (max_runs). Returns per run: kind, entry and marker; then
    the new entries' runs, with their start and end in `arr`. Kinds:
    0 text, 1 whitespace, 2 document end (a U+0000 or the end), 3 text looked up in
    lowercase. A text run is cut after each `/`, `#` and `\\` (each one a run of its own,
    as spec_add_spaces makes it), unless a character repeats 3 times in it. A piece of
    ASCII without a character repeated 3 times is untouched by fastai's rules but for
    replace_all_caps / replace_maj and lowercase: it is looked up lowercased, and its
    marker (xxup 7 / xxmaj 8, or 0) is worked out here.
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
            # A text run, cut after each `/`, `#` and `\\`: spec_add_spaces puts spaces around
            # them before any rule that looks at words, so the pieces (and each of those
            # characters) are runs of their own, which other runs share. Unless a character
            # repeats 3 times in the run: replace_rep comes first and sees the whole run,
            # which is then one raw run (kind 0), as is any run but plain ASCII.
            i0 = i
            m0 = m
            rep = False
            while True:
                plain = True
                n_up = 0
                n_low = 0
                h = FNV_OFFSET
                h_low = FNV_OFFSET
                cut = False
                j = i
                while j < n:
                    c = arr[j]
                    if c < 128:
                        if c <= 32 and (c == 0 or c == 32 or 9 <= c <= 13 or 28 <= c <= 31):
                            break
                        if j >= i0 + 2 and c == arr[j - 1] and c == arr[j - 2]:
                            plain = False
                            rep = True
                        if c == 47 or c == 35 or c == 92:
                            cut = True
                            break
                        low = c
                        if 65 <= c <= 90:
                            n_up += 1
                            low = c + 32
                        elif 97 <= c <= 122:
                            n_low += 1
                    else:
                        if c < 0x3001 and ws[c]:
                            break
                        if j >= i0 + 2 and c == arr[j - 1] and c == arr[j - 2]:
                            rep = True
                        plain = False
                        low = c
                    h = (h ^ np.uint64(c)) * FNV_PRIME
                    h_low = (h_low ^ np.uint64(low)) * FNV_PRIME
                    j += 1
                if j > i:
                    r_kind[m] = 0
                    r_hash[m] = h
                    if plain:
                        r_kind[m] = 3
                        r_hash[m] = h_low
                        if j - i > 1 and 65 <= arr[i] <= 90:
                            if n_low == 0:
                                r_mark[m] = 7
                            elif n_up == 1:
                                r_mark[m] = 8
                    r_start[m] = i
                    r_end[m] = j
                    m += 1
                if not cut:
                    break
                r_kind[m] = 0  # the separator
                r_start[m] = j
                r_end[m] = j + 1
                r_hash[m] = (FNV_OFFSET ^ np.uint64(arr[j])) * FNV_PRIME
                m += 1
                i = j + 1
            if rep and m - m0 > 1:  # cut after all, but replace_rep acts on the whole run
                r_mark[m0:m] = 0
                m = m0
                r_kind[m] = 0
                r_start[m] = i0
                r_end[m] = j
                r_hash[m] = _hash(arr, i0, j)
                m += 1
            i = j
            continue
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


@kernel(nogil=True)
def assemble(
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


@kernel(nogil=True)
def pre_tokens(r_kind, r_ent, r_mark, lo, hi, val_start, val_len, lead, tok_pool, bos):
    """One document's ids before the final special-case pass, and the spaCy-level run each
    token belongs to (the input of words.special_pass); runs lo..hi-1 as assemble."""
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


@kernel(nogil=True)
def special_pass(ids, owner, pf_start, pf_list, p_off, p_ids, r_off, r_ids):
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


def csr(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(lists) + 1, np.int64)
    np.cumsum([len(x) for x in lists], out=offsets[1:])
    flat = np.array([i for x in lists for i in x], np.int32)
    return offsets, flat


def pass_tables(pats: list[tuple[str, ...]], ids_of) -> tuple:
    """Final-pass patterns (keys of words.PATTERNS) by token id, for special_pass: which
    start with each token, their tokens and their replacements; `ids_of` gives token ids."""
    pat_ids = [ids_of(list(p)) for p in pats]
    by_first: dict[int, list[int]] = {}
    for k, ids in enumerate(pat_ids):
        by_first.setdefault(ids[0], []).append(k)
    starts, flat = csr([by_first.get(t, []) for t in range(max(by_first, default=-1) + 1)])
    p_off, p_ids = csr(pat_ids)
    r_off, r_ids = csr([ids_of(list(PATTERNS[p])) for p in pats])
    return starts, flat, p_off, p_ids, r_off, r_ids
