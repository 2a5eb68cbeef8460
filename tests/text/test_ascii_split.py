"""fastulm.text.ascii_split: the numba tables split plain ASCII exactly like words.py's regexes."""

import itertools
import random
import re
import string

import numpy as np
import pandas as pd
import pytest
from numba import njit

from fastulm.text import Tokenizer, ascii_split, spacy_tables, words

# what the numba functions are meant for: ASCII code points 1..127 but whitespace
ALPHABET = [chr(c) for c in range(1, 128) if not chr(c).isspace()]


def _pack(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """All strings in one code point buffer (so reads past lo/hi would show) and offsets."""
    starts = np.zeros(len(strings) + 1, np.int64)
    np.cumsum([len(s) for s in strings], out=starts[1:])
    a = np.frombuffer("".join(strings).encode("utf-32-le"), np.uint32)
    return a, starts


@njit
def _affixes_all(a, starts, cls, pre, suf, inf):
    """prefix_len, suffix_len and infixes of every packed string, as words.py calls them."""
    p_alts, p_start, p_flat, _pm, p_body = pre
    s_alts, s_start, s_flat, s_max, s_body = suf
    i_alts, i_start, i_flat, _im, i_body = inf
    n = len(starts) - 1
    p_len = np.zeros(n, np.int64)
    s_len = np.zeros(n, np.int64)
    i_off = np.zeros(n + 1, np.int64)
    i_pairs = np.zeros((len(a) + n, 2), np.int64)
    buf = np.zeros((len(a) + 1, 2), np.int64)
    m = 0
    for r in range(n):
        lo, hi = starts[r], starts[r + 1]
        p_len[r] = ascii_split.prefix_len(a, lo, hi, p_alts, p_start, p_flat, p_body, cls)
        s_len[r] = ascii_split.suffix_len(a, lo, hi, s_alts, s_start, s_flat, s_max, s_body, cls)
        k = ascii_split.infixes(a, lo, hi, i_alts, i_start, i_flat, i_body, cls, buf)
        for j in range(k):
            i_pairs[m, 0] = buf[j, 0] - lo
            i_pairs[m, 1] = buf[j, 1] - lo
            m += 1
        i_off[r + 1] = m
    return p_len, s_len, i_off, i_pairs[:m]


@njit
def _urls_all(a, starts):
    n = len(starts) - 1
    out = np.zeros(n, np.int64)
    for r in range(n):
        out[r] = ascii_split.url_match(a, starts[r], starts[r + 1])
    return out


def _regex_affixes(s: str) -> tuple[int, int, list[tuple[int, int]]]:
    """The expectation: words.py's compiled spaCy patterns, searched the plain `re` way."""
    m = words._PREFIX.search(s)
    p = m.end() - m.start() if m else 0
    m = words._SUFFIX.search(s)
    q = m.end() - m.start() if m else 0
    return p, q, [(m.start(), m.end()) for m in words._INFIX.finditer(s)]


def _mismatches(strings: list[str], limit: int = 10) -> list[tuple]:
    """(string, numba's (prefix, suffix, infixes), the regexes') for strings that differ."""
    cls, pre, suf, inf = ascii_split.COMPILED
    a, starts = _pack(strings)
    p_len, s_len, i_off, i_pairs = _affixes_all(a, starts, cls, pre, suf, inf)
    p_len, s_len, i_off, i_pairs = (x.tolist() for x in (p_len, s_len, i_off, i_pairs))
    bad = []
    for r, s in enumerate(strings):
        got = (p_len[r], s_len[r], [tuple(x) for x in i_pairs[i_off[r] : i_off[r + 1]]])
        want = _regex_affixes(s)
        if got != want:
            bad.append((s, got, want))
            if len(bad) >= limit:
                break
    return bad


def _ascii_units() -> list[str]:
    """The ASCII units spaCy's suffix pattern splits off after a digit (`5km`, `10mph`)."""
    groups = re.findall(r"\(\?<=\[0-9\]\)\(\?:([^()]*)\)\$", spacy_tables.SUFFIX_PATTERN)
    units = [u for g in groups for u in g.split("|") if re.fullmatch(r"[A-Za-z%/]+", u)]
    assert "km" in units and "mph" in units  # the pattern is still read correctly
    return units


def test_tables_compile():
    """The shipped spaCy tables fit the compiler's shape: the numba path is on."""
    assert ascii_split.COMPILED is not None
    assert Tokenizer()._plain is not None


def test_affixes_all_short_strings():
    """Every ASCII string of one or two characters: lookbehinds/lookaheads at the edges."""
    strings = ALPHABET + [x + y for x in ALPHABET for y in ALPHABET]
    assert not _mismatches(strings)


def test_affixes_digit_and_units():
    """A digit then every string of 1-4 unit letters or `%` (`5km`, `3mbar`, `7kmh`, `2%%`)."""
    letters = sorted({c for u in _ascii_units() for c in u if c.islower()} | set("esx"))
    symbols = [*letters, "%"]
    strings = []
    for n in range(1, 5):
        for tail in itertools.product(symbols, repeat=n):
            strings.append(str(len(strings) % 10) + "".join(tail))
    assert not _mismatches(strings)


def test_affixes_units_cased_and_punctuated():
    """Each ASCII unit in the pattern, cased three ways, with and without digits and dots."""
    strings = []
    for u in _ascii_units():
        for v in {u, u.lower(), u.upper(), u.title()}:
            for w in (v, "5" + v, "10" + v, "5" + v + ".", "5" + v + "!", "5." + v, "a" + v):
                strings.append(w)
    assert not _mismatches(strings)


def test_affixes_random_strings():
    """100k seeded random strings over a weighted alphabet (letters, digits, punctuation)."""
    rng = random.Random(1234)
    weighted = {
        string.ascii_lowercase: 30,
        string.ascii_uppercase: 6,
        string.digits: 12,
        ".": 10,
        ",:;!?": 8,
        "'\"`": 8,
        "()[]{}<>": 6,
        "-_/+*^=~": 8,
        "#&%$@|\\": 4,
        "\x01\x7f": 1,
    }
    chars, weights = [], []
    for group, w in weighted.items():
        chars += list(group)
        weights += [w / len(group)] * len(group)
    strings = ["".join(rng.choices(chars, weights, k=rng.randint(1, 10))) for _ in range(100_000)]
    assert not _mismatches(strings)


_URL_PIECES = {
    "www": 4, "imdb": 4, "com": 6, "co": 3, "uk": 3, "org": 2, "a": 3, "x1": 2, "ab-c": 2,
    "a_b": 2, "b-": 1, "-a": 1, "Example": 2, "COM": 2, "Www": 1, "7": 2, "42": 2,
    ".": 12, "@": 4, ":": 2, "?": 2, "#": 1, "-": 2, "_": 2, ":80": 2, ":8080": 2,
    ":8": 1, ":123456": 1, "?q=1": 1, "..": 1,
}  # fmt: skip


_LABELS = ["www", "imdb", "com", "co", "uk", "a", "x1", "ab-c", "a_b", "b-", "-a", "Example",
           "COM", "7", "42", "x" * 20, "y" * 60]  # fmt: skip
_TAILS = ["", "", "", ":80", ":8080", ":8", ":123456", "?", "?q=1", "#top", ":80?x", "."]


def _url_strings(n: int, seed: int) -> list[str]:
    """Half pieces glued at random, half host-like (`[user@]label.label[.label][:port][?..]`),
    some of those with one piece inserted at random."""
    rng = random.Random(seed)
    pieces, weights = list(_URL_PIECES), list(_URL_PIECES.values())
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            out.append("".join(rng.choices(pieces, weights, k=rng.randint(1, 8))))
            continue
        host = ".".join(rng.choice(_LABELS) for _ in range(rng.randint(2, 3)))
        user = rng.choice(["", "", "", "me@", "a.b@", "@", "x@y@"])
        s = user + host + rng.choice(_TAILS)
        if rng.random() < 0.3:
            k = rng.randint(0, len(s))
            s = s[:k] + rng.choices(pieces, weights)[0] + s[k:]
        out.append(s)
    return out


def test_url_match_random():
    """Wherever url_match decides, it is spaCy's URL pattern; and it decides most strings."""
    strings = _url_strings(20_000, seed=77)
    got = _urls_all(*_pack(strings)).tolist()
    bad = [
        (s, g, bool(words._URL_MATCH.match(s)))
        for s, g in zip(strings, got)
        if g >= 0 and g != bool(words._URL_MATCH.match(s))
    ]
    assert not bad[:10]
    decided = [s for s, g in zip(strings, got) if g >= 0]
    assert len(decided) > 0.6 * len(strings)
    assert got.count(1) > 500 and got.count(0) > 500  # both answers are exercised
    # what it leaves undecided is only what it says it leaves: > 2 dots or > 64 characters
    assert all(s.count(".") > 2 or len(s) > 64 for s, g in zip(strings, got) if g < 0)


@pytest.mark.parametrize(
    "s", ["end.the", "www.imdb.com", "e.g", "a@b.co", "x.y:80", "x.y:8", "mr.smith?x", "7.5", "a.b"]
)
def test_url_match_hand_picked(s):
    """Runs the splitter meets often (sentence joins, abbreviations, hosts): decided, right."""
    got = _urls_all(*_pack([s]))[0]
    assert got != -1
    assert got == bool(words._URL_MATCH.match(s))


def test_url_match_leaves_slashes_and_many_dots_to_python():
    """A scheme or path, an IPv4-like run (three dots) or a long run is Python's to decide."""
    got = _urls_all(*_pack(["a.b/c", "http://x.org", "a.b.c.d", "x." + "a" * 70 + ".com"]))
    assert got.tolist() == [-1, -1, -1, -1]


# -- end to end: the numba path against the pure-Python path of the same tokenizer


def _both_paths(texts: list[str]) -> tuple[list, list]:
    """Tokens from the numba path (checked to have split runs) and from the Python path."""
    fast = Tokenizer()
    fill, n_done = fast._plain.fill, []

    def counting_fill(ents):
        done = fill(ents)
        n_done.append(int(done.sum()))
        return done

    fast._plain.fill = counting_fill
    slow = Tokenizer()
    slow._plain = None  # every new run through words.py
    out = fast.tokenize_batch(texts), slow.tokenize_batch(texts)
    assert sum(n_done) > 100
    return out


def _first_difference(texts, fast, slow):
    for text, f, s in zip(texts, fast, slow):
        if f != s:
            return text, f, s
    return None


def test_sample_reviews_both_paths(imdb_sample):
    """The 1,000 sample reviews: numba and Python paths give the same tokens."""
    texts = pd.read_csv(imdb_sample / "texts.csv")["text"].tolist()
    fast, slow = _both_paths(texts)
    assert _first_difference(texts, fast, slow) is None


_E2E_PIECES = [
    # words, cased
    "the", "movie", "was", "good", "Great", "BAD", "John", "iPhone", "McDonald", "a", "I",
    # punctuation runs and quotes
    ".", ",", "!", "?", "!!!", "?!", "...", "..", ";", ":", "'", '"', "``", "''", "`",
    "(", ")", "[", "]", "{", "}", "<", ">", "*", "#", "&", "_", "~", "^", "|", "\\", "$",
    # emoticons
    ":)", ";-)", ":-(", ":(", ":P", "<3", "^_^", "-_-", "o.O", "8)", ":'(",
    # contractions
    "don't", "he's", "'em", "y'all", "can't", "I'm", "it's", "'s", "n't", "ma'am", "'cause",
    # URLs and emails
    "www.imdb.com", "imdb.com", "x@y.com", "john.doe@example.co.uk", "http://a.b/c",
    "example.org:8080", "a.b?x=1",
    # numbers with units
    "5km", "10mph", "3.5mm", "100%", "5%", "2kg", "7KB", "1990s", "10pm", "3.5", "1,000",
    "10-15", "5+3", "2*3", "$5.99", "10:30",
    # dots
    "e.g.", "e.g", "i.e.", "end.the", "...and", "U.S.", "etc.", "Mr.", "a.m.", "wait....",
    # hyphens and dashes
    "-", "--", "---", "state-of-the-art", "e-mail", "A-Team", "x--y", "well-",
    # a few non-ASCII
    "café", "naïve", "…", "’", "“", "—", "東京",
]  # fmt: skip
_E2E_SEPARATORS = [" "] * 8 + ["", "", "\n", "  "]


def test_generated_texts_both_paths():
    """3,000 seeded texts glued from tricky pieces (often with no space between them)."""
    rng = random.Random(2024)
    texts = []
    for _ in range(3000):
        parts = []
        for _ in range(rng.randint(1, 30)):
            piece = rng.choice(_E2E_PIECES)
            r = rng.random()
            if r < 0.08:
                piece = piece.upper()
            elif r < 0.16:
                piece = piece.capitalize()
            parts.append(piece + rng.choice(_E2E_SEPARATORS))
        texts.append("".join(parts))
    fast, slow = _both_paths(texts)
    assert _first_difference(texts, fast, slow) is None


# -- the pattern compiler


def _compile(pattern: str, anchor):
    return ascii_split._compile_pattern(pattern, 0, ascii_split._Classes(), anchor)


@pytest.mark.parametrize(
    ("pattern", "anchor"),
    [
        (r"a+b", None),  # characters after an unbounded repeat
        (r"(?<=ab|c)x", None),  # a lookbehind with alternatives
        (r"(?<!a)x", None),  # a negative lookbehind
        (r"x(?=ab)", None),  # a lookahead longer than one character
        (r"a*?", None),  # a lazy unbounded repeat
        (r"x$", None),  # `$` where the pattern is no suffix pattern
        (r"^x", "end"),  # `^` in a suffix pattern
        (r"x\b", None),  # an anchor it does not know
    ],
)
def test_compiler_rejects_unsupported_shapes(pattern, anchor):
    with pytest.raises(ascii_split._Unsupported):
        _compile(pattern, anchor)


def test_compiler_drops_non_ascii_alternatives():
    """An alternative that needs `é` can never match plain ASCII: it is left out."""
    alts, *_ = _compile("é|x", None)
    assert len(alts) == 1
    alts, *_ = _compile("(?<=é)x|(?<=[0-9])y(?=ü)|z", None)
    assert len(alts) == 1


def test_compiler_suffix_anchor():
    alts, _start, _flat, max_fixed, _body = _compile(r"x$|(?<=[0-9])(?:km|m)$|\.\.+$", "end")
    assert len(alts) == 4
    assert max_fixed == 2


@pytest.mark.parametrize(
    ("pattern", "anchor"),
    [
        (r"x$|(?<=[0-9])(?:km|m|kmh)$|\.\.+$|(?<=[a-c][0-9])\.$|'s$", "end"),
        (r"^a|^\+(?![0-9])|^\.\.+|^ab?c|^US\$", "start"),
        (r"\.\.+|(?<=[0-9])[+\-*^](?=[0-9-])|(?<=[a-z])(?:-|--|~)(?=[a-z])|a[^b]", None),
    ],
)
def test_compiled_small_patterns_match_like_re(pattern, anchor):
    """Small patterns of each kind, compiled and matched, agree with `re` on all short strings."""
    classes = ascii_split._Classes()
    alts, start, flat, max_fixed, body = ascii_split._compile_pattern(pattern, 0, classes, anchor)
    cls = classes.table()
    rx = re.compile(pattern)
    alphabet = "ab0.-+sU$'k"
    strings = ["".join(t) for n in range(1, 5) for t in itertools.product(alphabet, repeat=n)]
    a, starts = _pack(strings)
    table = (alts, start, flat, max_fixed, body)
    none = ascii_split._compile_pattern(None, 0, classes, None)  # matches nothing
    pre, suf, inf = (
        (table, none, none) if anchor == "start" else
        (none, table, none) if anchor == "end" else (none, none, table)
    )  # fmt: skip
    p_len, s_len, i_off, i_pairs = _affixes_all(a, starts, cls, pre, suf, inf)
    bad = []
    for r, s in enumerate(strings):
        if anchor == "start":
            m = rx.search(s)
            got, want = p_len[r], (m.end() if m else 0)
        elif anchor == "end":
            m = rx.search(s)
            got, want = s_len[r], (m.end() - m.start() if m else 0)
        else:
            got = [tuple(x) for x in i_pairs[i_off[r] : i_off[r + 1]].tolist()]
            want = [(m.start(), m.end()) for m in rx.finditer(s)]
        if got != want:
            bad.append((s, got, want))
    assert not bad[:10]
