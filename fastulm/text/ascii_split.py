"""spaCy's split of lowercase plain-ASCII runs, in numba.

Most new runs a tokenizer meets are lowercased ASCII without whitespace (`movie.`,
`"the`, `(1990)`, `don't`). For them the splitter's regexes reduce to small tables:
spaCy's prefix, suffix and infix patterns are parsed (with the stdlib's own regex
parser) into flat alternatives -- an optional one-character lookbehind, a sequence of
character classes, an optional greedy repeat at the end, an optional one-character
lookahead or negative lookahead -- with every class cut down to ASCII. Alternatives that
need a non-ASCII character are dropped (they cannot match here); anything outside this
shape makes `COMPILED` None and the tokenizer keeps its Python path. Matching then follows
Python's `re` exactly: the prefix is the first alternative matching at the start; the
suffix starts at the leftmost position where some alternative reaches the end; infixes
are found left to right like `finditer`.

`split_runs` runs words.py's algorithm (`_split_affixes`, `_split_core`, the final pass)
on many runs at once and writes token ids. A run whose core could be a URL (it holds a
dot), or whose tokens spell a multi-token special case, is handed back to Python.
"""

from __future__ import annotations

import re

import numpy as np

from fastulm.text.jit import kernel

try:  # the stdlib's own regex parser
    from re import _parser as _sre
except ImportError:  # Python 3.10
    import sre_parse as _sre  # type: ignore[no-redef]

from fastulm.text import spacy_tables as _tables
from fastulm.text.table import intern, lookup

_ASCII = frozenset(range(128))
_CATEGORIES = {
    _sre.CATEGORY_DIGIT: lambda c: chr(c).isdigit(),
    _sre.CATEGORY_NOT_DIGIT: lambda c: not chr(c).isdigit(),
    _sre.CATEGORY_SPACE: lambda c: chr(c).isspace(),
    _sre.CATEGORY_NOT_SPACE: lambda c: not chr(c).isspace(),
    _sre.CATEGORY_WORD: lambda c: chr(c).isalnum() or c == 95,
    _sre.CATEGORY_NOT_WORD: lambda c: not (chr(c).isalnum() or c == 95),
}


class _Unsupported(Exception):
    """A pattern outside the shape this module handles."""


def _ascii_class(op, av) -> frozenset:
    """ASCII code points one parsed single-character item matches."""
    if op is _sre.LITERAL:
        return frozenset([av]) & _ASCII
    if op is _sre.NOT_LITERAL:
        return _ASCII - {av}
    if op is _sre.ANY:
        return _ASCII - {10}
    if op is _sre.IN:
        negate = False
        out: set[int] = set()
        for item_op, item in av:
            if item_op is _sre.NEGATE:
                negate = True
            elif item_op is _sre.LITERAL:
                out |= {item} & _ASCII
            elif item_op is _sre.RANGE:
                out |= set(range(item[0], min(item[1], 127) + 1))
            elif item_op is _sre.CATEGORY and item in _CATEGORIES:
                out |= {c for c in _ASCII if _CATEGORIES[item](c)}
            else:
                raise _Unsupported(f"class item {item_op}")
        return frozenset(_ASCII - out if negate else out)
    raise _Unsupported(f"item {op}")


def _one_char(seq) -> frozenset:
    """The class of a lookahead that is exactly one character."""
    items = list(seq)
    if len(items) != 1:
        raise _Unsupported("lookahead longer than one character")
    return _ascii_class(*items[0])


def _behind(seq) -> tuple:
    """A lookbehind as classes of the characters before the position, nearest last
    (at most two); empty classes when it needs a non-ASCII character."""
    alts = _alternatives(list(seq))
    if len(alts) != 1 or alts[0]["rep"] is not None or len(alts[0]["body"]) > 2:
        raise _Unsupported("lookbehind of this shape")
    return tuple(alts[0]["body"])


def _alternatives(seq) -> list[dict]:
    """A parsed pattern as flat alternatives, in the order `re` tries them."""
    alts = [{"lb": None, "body": [], "rep": None, "la": None, "nla": None, "start": False,
             "end": False}]  # fmt: skip
    for op, av in seq:
        if op is _sre.BRANCH:
            options = [a for branch in av[1] for a in _alternatives(branch)]
        elif op is _sre.SUBPATTERN:
            options = _alternatives(av[-1])
        elif op is _sre.MAX_REPEAT or op is _sre.MIN_REPEAT:
            lo, hi, item = av
            items = list(item)
            if hi == _sre.MAXREPEAT:
                if op is _sre.MIN_REPEAT or len(items) != 1:
                    raise _Unsupported("unbounded repeat")
                options = [{"rep": (_ascii_class(*items[0]), lo)}]
            else:
                counts = range(hi, lo - 1, -1) if op is not _sre.MIN_REPEAT else range(lo, hi + 1)
                options = []
                for n in counts:
                    for sub in _alternatives(items * n):
                        options.append(sub)
        elif op is _sre.AT:
            if av is _sre.AT_BEGINNING:
                options = [{"start": True}]
            elif av is _sre.AT_END:
                options = [{"end": True}]
            else:
                raise _Unsupported(f"anchor {av}")
        elif op is _sre.ASSERT:
            direction, sub = av
            options = [{"lb": _behind(sub)} if direction < 0 else {"la": _one_char(sub)}]
        elif op is _sre.ASSERT_NOT:
            direction, sub = av
            if direction < 0:
                raise _Unsupported("negative lookbehind")
            options = [{"nla": _one_char(sub)}]
        else:
            options = [{"body": [_ascii_class(op, av)]}]
        alts = [_join(a, o) for a in alts for o in options]
    return alts


def _join(a: dict, b: dict) -> dict:
    """Alternative a followed by b (b may hold only some of the keys)."""
    out = dict(a)
    a_chars = bool(a["body"]) or a["rep"] is not None
    b_chars = bool(b.get("body")) or b.get("rep") is not None
    if b.get("start"):
        if a_chars or a["lb"] is not None:
            raise _Unsupported("^ inside a pattern")
        out["start"] = True
    if b.get("lb") is not None:
        if a_chars:
            raise _Unsupported("lookbehind after characters")
        if a["lb"] is not None:
            raise _Unsupported("two lookbehinds")
        out["lb"] = b["lb"]
    if b_chars:
        if a["rep"] is not None or a["la"] is not None or a["nla"] is not None or a["end"]:
            raise _Unsupported("characters after a repeat, a lookahead or $")
        out["body"] = a["body"] + list(b.get("body", []))
        out["rep"] = b.get("rep")
    for key in ("la", "nla"):
        if b.get(key) is not None:
            if out[key] is not None:
                raise _Unsupported(f"two {key}")
            out[key] = b[key]
    if b.get("end"):
        out["end"] = True
    if out["rep"] is not None and (out["la"] is not None or out["nla"] is not None):
        raise _Unsupported("lookahead after a repeat")
    return out


def _possible(a: dict) -> bool:
    """False when the alternative needs a character no ASCII string has."""
    classes = list(a["body"]) + list(a["lb"] or ()) + ([a["la"]] if a["la"] is not None else [])
    if a["rep"] is not None and a["rep"][1] > 0:
        classes.append(a["rep"][0])
    return all(len(c) > 0 for c in classes) and (a["body"] or a["rep"] is not None)


class _Classes:
    def __init__(self) -> None:
        self.index: dict[frozenset, int] = {}

    def __call__(self, c: frozenset | None) -> int:
        if c is None:
            return -1
        return self.index.setdefault(c, len(self.index))

    def table(self) -> np.ndarray:
        out = np.zeros((max(len(self.index), 1), 128), np.bool_)
        for c, i in self.index.items():
            out[i, sorted(c)] = True
        return out


def _compile_pattern(pattern: str | None, flags: int, classes: _Classes, anchor: str):
    """(alternatives as an int32 [n, 8] table, CSR of alternatives by character: the first
    one they match, or for a suffix (`$`-anchored) the last)."""
    if pattern is None:
        empty = np.zeros(0, np.int32)
        return np.zeros((0, 8), np.int32), np.zeros(129, np.int32), empty, 0, empty
    if flags & (re.IGNORECASE | re.MULTILINE | re.VERBOSE):
        raise _Unsupported("flags")
    alts = [a for a in _alternatives(_sre.parse(pattern, flags).data) if _possible(a)]
    rows, bodies, keys = [], [], []
    max_fixed = 0
    for a in alts:
        if (anchor == "start") != a["start"]:
            raise _Unsupported("^ where not expected")
        if (anchor == "end") != a["end"]:
            raise _Unsupported("$ where not expected")
        rep_cls, rep_min = (-1, 0) if a["rep"] is None else (classes(a["rep"][0]), a["rep"][1])
        if a["rep"] is None:
            max_fixed = max(max_fixed, len(a["body"]))
        lb = [None, None, *(a["lb"] or ())][-2:]  # [two before, one before]
        rows.append([classes(lb[1]), classes(lb[0]), classes(a["la"]), classes(a["nla"]),
                     rep_cls, rep_min, len(bodies), len(a["body"])])  # fmt: skip
        bodies.extend(classes(c) for c in a["body"])
        if anchor == "end":  # suffix_len tries the alternatives that can end with a[hi-1]
            key = _ASCII if a["rep"] is not None else a["body"][-1]
        else:
            key = a["body"][0] if a["body"] else a["rep"][0]
        keys.append(key)
    table = np.array(rows, np.int32).reshape(-1, 8)
    by_char = [[k for k, f in enumerate(keys) if c in f] for c in range(128)]
    start = np.zeros(129, np.int32)
    np.cumsum([len(x) for x in by_char], out=start[1:])
    flat = np.array([k for x in by_char for k in x], np.int32)
    return table, start, flat, max_fixed, np.array(bodies, np.int32)


def _compile():
    classes = _Classes()
    try:
        if _tables.TOKEN_MATCH_PATTERN is not None:
            raise _Unsupported("token_match")
        out = {}
        for name, anchor in (("PREFIX", "start"), ("SUFFIX", "end"), ("INFIX", None)):
            pattern = getattr(_tables, f"{name}_PATTERN")
            flags = getattr(_tables, f"{name}_FLAGS")
            out[name] = _compile_pattern(pattern, flags, classes, anchor)
    except _Unsupported:
        return None
    return classes.table(), out["PREFIX"], out["SUFFIX"], out["INFIX"]


COMPILED = _compile()


# ---------------------------------------------------------------------------- matching


@kernel(allocates=False)
def _match_at(a, lo, hi, i, alts, row, body, cls):
    """Length of alternative alts[row] matched at a[i] within the string a[lo:hi], or -1."""
    lb1, lb2, la, nla = alts[row, 0], alts[row, 1], alts[row, 2], alts[row, 3]
    rep, rep_min, b0, blen = alts[row, 4], alts[row, 5], alts[row, 6], alts[row, 7]
    if lb1 >= 0 and (i == lo or not cls[lb1, a[i - 1]]):
        return -1
    if lb2 >= 0 and (i - 1 <= lo or not cls[lb2, a[i - 2]]):
        return -1
    j = i
    for t in range(blen):
        if j >= hi or not cls[body[b0 + t], a[j]]:
            return -1
        j += 1
    if rep >= 0:
        n = 0
        while j < hi and cls[rep, a[j]]:
            j += 1
            n += 1
        if n < rep_min:
            return -1
    if la >= 0 and (j >= hi or not cls[la, a[j]]):
        return -1
    if nla >= 0 and j < hi and cls[nla, a[j]]:
        return -1
    return j - i


@kernel(allocates=False)
def prefix_len(a, lo, hi, alts, start, flat, body, cls):
    if hi <= lo:
        return 0
    c = a[lo]
    for k in range(start[c], start[c + 1]):
        n = _match_at(a, lo, hi, lo, alts, flat[k], body, cls)
        if n >= 0:
            return n
    return 0


@kernel(allocates=False)
def suffix_len(a, lo, hi, alts, start, flat, max_fixed, body, cls):
    """The suffix `re.search` finds: the leftmost start from which some alternative reaches
    the end, so the longest such match. Only the alternatives that can end with a[hi-1]
    are tried (the table is keyed so), a fixed-length one only where it would start."""
    if hi <= lo:
        return 0
    best = 0
    c = a[hi - 1]
    for k in range(start[c], start[c + 1]):
        row = flat[k]
        rep, blen = alts[row, 4], alts[row, 7]
        if rep < 0:
            i = hi - blen
            if blen > best and i >= lo and _match_at(a, lo, hi, i, alts, row, body, cls) == blen:
                best = blen
            continue
        # a greedy repeat reaching the end: the match starts at most blen before the run
        # of the repeat's class that ends the string
        j = hi
        while j > lo and cls[rep, a[j - 1]]:
            j -= 1
        for i in range(max(lo, j - blen), hi - best):
            n = _match_at(a, lo, hi, i, alts, row, body, cls)
            if n >= 0 and i + n == hi:
                best = hi - i
                break
    return best


@kernel(allocates=False)
def infixes(a, lo, hi, alts, start, flat, body, cls, out):
    """Infix matches in a[lo:hi] as `finditer` finds them: (start, end) pairs in `out`,
    their number returned."""
    m = 0
    i = lo
    while i < hi:
        c = a[i]
        step = 1
        for k in range(start[c], start[c + 1]):
            n = _match_at(a, lo, hi, i, alts, flat[k], body, cls)
            if n >= 0:
                out[m, 0] = i
                out[m, 1] = i + n
                m += 1
                step = max(n, 1)
                break
        i += step
    return m


# ---------------------------------------------------------------------------- whole runs


@kernel(inline="always")
def _letters(a, s, e):
    for j in range(s, e):
        c = a[j] | 32
        if not 97 <= c <= 122:
            return False
    return True


@kernel(inline="always")
def _word_char(c):
    return 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c == 95


@kernel(inline="always")
def _host_tail(a, p, hi):
    """Whether a[p:hi] is what may follow a URL's host: `(?::\\d{2,5})?(?:[/?#]\\S*)?$`."""
    if p == hi or a[p] == 47 or a[p] == 63 or a[p] == 35:
        return True
    if a[p] != 58:
        return False
    j = p + 1
    while j < hi and 48 <= a[j] <= 57:
        j += 1
    n = j - p - 1
    return 2 <= n <= 5 and (j == hi or a[j] == 47 or a[j] == 63 or a[j] == 35)


@kernel(inline="always")
def _alnum(c):
    return 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122


@kernel(allocates=False)
def _domain(a, h, p):
    """Whether a[h:p] is `(?:(?:[A-Za-z0-9][A-Za-z0-9_-]{0,62})?[A-Za-z0-9]\\.)+[a-z]{2,63}`."""
    d = p - 1  # the last dot
    while d >= h and a[d] != 46:
        d -= 1
    if d <= h or not 2 <= p - d - 1 <= 63:
        return False
    for j in range(d + 1, p):
        if not 97 <= a[j] <= 122:
            return False
    start = h
    for j in range(h, d + 1):
        if a[j] == 46:  # a label: 1-64 characters, alphanumeric at both ends
            n = j - start
            if n < 1 or n > 64 or not _alnum(a[start]) or not _alnum(a[j - 1]):
                return False
            start = j + 1
        elif not (_alnum(a[j]) or a[j] == 95 or a[j] == 45):
            return False
    return True


@kernel(allocates=False)
def url_match(a, lo, hi):
    """spaCy's URL pattern on a[lo:hi], for ASCII without whitespace or `/` and with at
    most two dots (no IPv4 host): 1 match, 0 none, -1 not decided here."""
    n_dot = 0
    for j in range(lo, hi):
        if a[j] == 47 or hi - lo > 64:
            return -1  # a scheme or a long run: Python decides
        n_dot += a[j] == 46
    if n_dot > 2:
        return -1
    for h in range(lo, hi):  # the host starts at lo or after an `@` (user info before)
        if h > lo and not (a[h - 1] == 64 and h - 1 > lo):
            continue
        for p in range(h + 4, hi + 1):
            if _host_tail(a, p, hi) and _domain(a, h, p):
                return 1
    return 0


@kernel(inline="always")
def spells(ids, i, end, pt, p_off, p_ids):
    """Whether ids[i:end] starts with the tokens of pattern `pt` (p_off/p_ids: the final
    pass's patterns as token ids, one after another)."""
    size = p_off[pt + 1] - p_off[pt]
    if i + size > end:
        return False
    for x in range(size):  # noqa: SIM110 (a loop: numba compiles it, not a generator)
        if ids[i + x] != p_ids[p_off[pt] + x]:
            return False
    return True


@kernel(nogil=True)
def split_runs(ents, key_start, a, cls, pre_pat, suf_pat, inf_pat, spec, spec_val, tok, n_tok, words, n_word,
               pats, link_edges, extra):  # fmt: skip
    """words.py's split (plus the final pass) of runs a[key_start[e]:key_start[e+1]] for the
    entries `ents`: plain ASCII, no whitespace. Returns per run a status (0 done, 1 left to
    Python: a possible URL or a multi-token special case), token ids (new tokens interned
    in `tok`), the replace_wrep word and stem (interned in `words`) and whether its edge
    tokens can join a multi-token special case; then the tables' new sizes.

    spec: the special-case keys' table; spec_val: (offsets, token ids) of their values;
    pats: (CSR by first token id, pattern offsets, pattern token ids) of the final pass;
    link_edges: (token can start / end a part of a pattern) by token id.
    """
    p_alts, p_start, p_flat, _pm, p_body = pre_pat
    s_alts, s_start, s_flat, s_max, s_body = suf_pat
    i_alts, i_start, i_flat, _im, i_body = inf_pat
    sv_off, sv_ids = spec_val
    # each table's arrays by name: a call given `*tok` builds a tuple of five arrays, and
    # numba counts references to each with atomic instructions at every such call (a
    # third of this kernel's time)
    t_slots, t_hash, t_start, t_pool, t_low = tok
    w_slots, w_hash, w_start, w_pool, w_low = words
    k_slots, k_hash, k_start, k_pool, k_low = spec
    pat_start, pat_list, pat_off, pat_ids = pats
    edge_first, edge_last = link_edges
    n_runs = len(ents)
    total = 0
    longest = 0
    for r in range(n_runs):
        n = key_start[ents[r] + 1] - key_start[ents[r]]
        total += n
        longest = max(longest, n)
    out = np.empty(total + n_runs * (1 + extra), np.int32)
    off = np.zeros(n_runs + 1, np.int64)
    status = np.zeros(n_runs, np.int8)
    wid = np.full(n_runs, -1, np.int32)
    stem = np.full(n_runs, -1, np.int32)
    edge = np.zeros(n_runs, np.bool_)
    pre = np.empty((longest + 1, 2), np.int64)
    suf = np.empty((longest + 1, 2), np.int64)
    inf = np.empty((longest + 1, 2), np.int64)
    o = 0
    for r in range(n_runs):
        s0 = key_start[ents[r]]
        e0 = key_start[ents[r] + 1]
        # _split_affixes
        s, e = s0, e0
        n_pre = 0
        n_suf = 0
        last = -1
        while e > s and e - s != last:
            if lookup(a, s, e, k_slots, k_hash, k_start, k_pool, k_low) >= 0 or _letters(a, s, e):
                break
            last = e - s
            p = prefix_len(a, s, e, p_alts, p_start, p_flat, p_body, cls)
            if (
                p
                and e > s + p
                and lookup(a, s + p, e, k_slots, k_hash, k_start, k_pool, k_low) >= 0
            ):
                pre[n_pre, 0], pre[n_pre, 1] = s, s + p
                n_pre += 1
                s += p
                break
            q = suffix_len(a, s + p, e, s_alts, s_start, s_flat, s_max, s_body, cls)
            if (
                q
                and e - q > s
                and lookup(a, s, e - q, k_slots, k_hash, k_start, k_pool, k_low) >= 0
            ):
                suf[n_suf, 0], suf[n_suf, 1] = e - q, e
                n_suf += 1
                e -= q
                break
            if p and q and p + q <= e - s:
                pre[n_pre, 0], pre[n_pre, 1] = s, s + p
                n_pre += 1
                suf[n_suf, 0], suf[n_suf, 1] = e - q, e
                n_suf += 1
                s += p
                e -= q
            elif p:
                pre[n_pre, 0], pre[n_pre, 1] = s, s + p
                n_pre += 1
                s += p
            elif q:
                suf[n_suf, 0], suf[n_suf, 1] = e - q, e
                n_suf += 1
                e -= q
        # _split_core: a special case, letters, else a possible URL (Python) or infixes
        special = -1
        n_inf = -1  # -1: the core is one token
        if e > s:
            special = lookup(a, s, e, k_slots, k_hash, k_start, k_pool, k_low)
            if special < 0 and not _letters(a, s, e):
                dot = False
                for j in range(s, e):
                    if a[j] == 46:
                        dot = True
                        break
                url = url_match(a, s, e) if dot else 0
                if url < 0:
                    status[r] = 1
                    off[r + 1] = o
                    continue
                if url == 0:
                    n_inf = infixes(a, s, e, i_alts, i_start, i_flat, i_body, cls, inf)
        o0 = o
        for k in range(n_pre):
            out[o], n_tok = intern(
                a, pre[k, 0], pre[k, 1], n_tok, t_slots, t_hash, t_start, t_pool, t_low
            )
            o += 1
        if special >= 0:
            for k in range(sv_off[special], sv_off[special + 1]):
                out[o] = sv_ids[k]
                o += 1
        elif e > s and n_inf <= 0:
            out[o], n_tok = intern(a, s, e, n_tok, t_slots, t_hash, t_start, t_pool, t_low)
            o += 1
        elif e > s:
            start = s
            for k in range(n_inf):
                i0, i1 = inf[k, 0], inf[k, 1]
                if i0 == s:  # an infix at the very start is ignored, as in spaCy
                    continue
                if i0 != start:
                    out[o], n_tok = intern(
                        a, start, i0, n_tok, t_slots, t_hash, t_start, t_pool, t_low
                    )
                    o += 1
                out[o], n_tok = intern(a, i0, i1, n_tok, t_slots, t_hash, t_start, t_pool, t_low)
                o += 1
                start = i1
            if start < e:
                out[o], n_tok = intern(a, start, e, n_tok, t_slots, t_hash, t_start, t_pool, t_low)
                o += 1
        for k in range(n_suf - 1, -1, -1):
            out[o], n_tok = intern(
                a, suf[k, 0], suf[k, 1], n_tok, t_slots, t_hash, t_start, t_pool, t_low
            )
            o += 1
        # the final pass: any multi-token special case among the tokens goes to Python
        hit = False
        for i in range(o0, o):
            t = out[i]
            if t + 1 >= len(pat_start):
                continue
            for q in range(pat_start[t], pat_start[t + 1]):
                if spells(out, i, o, pat_list[q], pat_off, pat_ids):
                    hit = True
                    break
            if hit:
                break
        if hit:
            status[r] = 1
            o = o0
            off[r + 1] = o
            continue
        off[r + 1] = o
        first, final = out[o0], out[o - 1]
        edge[r] = (first < len(edge_first) and edge_first[first]) or (
            final < len(edge_last) and edge_last[final]
        )
        # replace_wrep's words: the whole run if all word characters, and its stem
        j = s0
        while j < e0 and _word_char(a[j]):
            j += 1
        if j > s0:
            w, n_word = intern(a, s0, j, n_word, w_slots, w_hash, w_start, w_pool, w_low)
            stem[r] = w
            if j == e0:
                wid[r] = w
    return status, out[:o], off, wid, stem, edge, n_tok, n_word
