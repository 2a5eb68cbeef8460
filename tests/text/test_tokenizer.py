"""fastulm.text.Tokenizer / tokenize_texts: fastai's token stream, fast paths vs exact path."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from tricky import TRICKY, random_texts, unicode_texts

from fastulm.text import Tokenizer, tokenize_texts
from fastulm.text.rules import SPECIAL_TOKENS, apply_rules, replace_space
from fastulm.text.words import split_words


def exact(text: str) -> list[str]:
    """The slow reference path: all rules on the document, then the splitter."""
    return [replace_space(t) for t in split_words(apply_rules(text))]


@pytest.fixture(scope="module")
def fastai_tok(fastai_text):
    tok = fastai_text.TokenizeWithRules(fastai_text.SpacyTokenizer())
    return lambda texts: [list(t) for t in tok(texts)]


def test_sample_matches_fastai_tokens(imdb_sample):
    """All 1,000 sample reviews equal the stored fastai 2.8.12 output."""
    df = pd.read_csv(imdb_sample / "texts.csv")
    ref = {}
    with open(imdb_sample / "fastai_tokens.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            ref[row["row"]] = row["tokens"]
    got = tokenize_texts(df["text"].tolist())
    assert len(got) == len(ref) == 1000
    bad = [i for i in range(len(got)) if got[i] != ref[i]]
    assert not bad, f"{len(bad)} differ, first row {bad[:1]}"


@pytest.mark.reference
def test_tricky_and_random_texts_match_fastai(fastai_tok):
    texts = TRICKY + random_texts(1500, seed=11, max_pieces=60) + unicode_texts(600, seed=3)
    expected = fastai_tok(texts)
    assert tokenize_texts(texts) == expected
    tok = Tokenizer()  # one text at a time, with a warm cache
    assert [tok.tokenize(t) for t in texts] == expected


def test_fast_path_equals_exact_path():
    texts = TRICKY + random_texts(800, seed=5, max_pieces=80) + unicode_texts(800, seed=5)
    got = Tokenizer().tokenize_batch(texts)
    for text, toks in zip(texts, got):
        assert toks == exact(text), text


def test_ids_and_table():
    tok = Tokenizer()
    assert tok.tokens[:9] == SPECIAL_TOKENS
    ids = tok.encode("Hello HELLO hello!")
    assert ids.dtype == np.int32
    assert [tok.tokens[i] for i in ids] == [
        "xxbos",
        "xxmaj",
        "hello",
        "xxup",
        "hello",
        "hello",
        "!",
    ]
    assert ids[0] == 2 and ids[1] == 8 and ids[3] == 7
    n = len(tok.tokens)
    tok.encode("hello")
    assert len(tok.tokens) == n  # known tokens are not added again
    flat, offsets = tok.encode_batch(["a b", "", "c"])
    assert offsets.tolist() == [0, 3, 4, 6]
    assert [tok.tokens[i] for i in flat] == ["xxbos", "a", "b", "xxbos", "xxbos", "c"]


@pytest.mark.parametrize(
    "text",
    [
        "no no no way",  # replace_wrep spans runs
        "very very good",  # a repeated pair only: flagged, then confirmed absent
        "back'' ''return",  # a special case may span two runs
        "a\x00b",  # the batch separator inside a text
        "Hello\x00 World \x00",
        "Noooo!!!No No No",  # replace_wrep over a raw-keyed and two lowercase-keyed runs
        "HELLO, Hello, hello, HeLLo, I, A1, ÉTÉ CAFÉ iPhone McDonald's U.S.A. DON'T Don't",
        "wow.. Wow.. WOW.. aAa AaA Aaa",
        "lone \ud800 surrogate\udfff!",  # from surrogateescape decoding: still code points
    ],
)
def test_whole_document_cases(text):
    assert Tokenizer().tokenize(text) == exact(text)
    assert Tokenizer().tokenize_batch(["x", text, "y"])[1] == exact(text)


def test_three_megabyte_review_is_linear_and_consistent(imdb_sample):
    """A 3 MB review (fastai/spaCy refuse > 1,000,000 characters) tokenizes like its pieces."""
    import time

    texts = pd.read_csv(imdb_sample / "texts.csv")["text"].tolist()
    pieces, size = [], 0
    for t in texts:
        if size > 3_000_000:
            break
        pieces.append(t)
        size += len(t) + 1
    tok = Tokenizer()
    start = time.perf_counter()
    big = tok.tokenize(" ".join(pieces))
    elapsed = time.perf_counter() - start
    parts = Tokenizer().tokenize_batch(pieces)
    assert big == ["xxbos"] + [t for p in parts for t in p[1:]]
    assert elapsed < 60


def test_word_repeats_fast_path_equals_exact_path():
    """replace_wrep is the one rule across runs: many near-repeats, cased and punctuated."""
    import random

    rng = random.Random(4)
    pieces = ["no", "No", "NO", "no,", "no!", "no.", "nooo", "no's", "so", "so-so", "très", "ha"]
    seps = [" ", " ", "  ", "\n", " \n ", "\t"]
    texts = [
        "".join(rng.choice(pieces) + rng.choice(seps) for _ in range(rng.randint(1, 12)))
        for _ in range(1500)
    ]
    got = Tokenizer().tokenize_batch(texts)
    for text, toks in zip(texts, got):
        assert toks == exact(text), text


@pytest.mark.parametrize(
    "text",
    [
        " ".join(["no"] * 111) + "!",  # the count 111 is itself a replace_rep match
        " ".join(["Go"] * 222) + " home",
        "a " + "b " * 1000 + "c",  # 1000: a triple 0
        "wow wow wow/wow wow wow #tag ha ha ha\\ha",
        "NO NO NO, No no no... can't can't can't :) :) :)",
        "x x x x",
        "x x x",
        "\n the the the\n",
        "é é é é très très très",
    ],
)
def test_word_repeat_documents_equal_the_exact_path(text):
    """A document where replace_wrep matches gets replace_rep and replace_wrep on the whole
    text, then the fast path; where that could differ from fastai, the exact path."""
    assert Tokenizer().tokenize(text) == exact(text)
    assert Tokenizer().tokenize_batch(["x", text, "no no no", text])[1] == exact(text)


def test_runs_cut_at_slash_hash_backslash_equal_the_exact_path():
    """scan cuts a run after each `/`, `#` and `\\` (spec_add_spaces' characters), unless a
    character repeats 3 times in it; the pieces meet the case rules, replace_wrep, special
    cases across runs and whitespace on either side."""
    import random

    rng = random.Random(7)
    words = ["and", "AND", "Or", "w", "o", "I", "U.S.", "can't", "no", "No", "NO", "café", "ÉTÉ",
             "10", "9.5", "x", "", ":", ")", "(", "''", "...", "…", "!!!", "!", "aaa", "http:",
             "www.x.com", "e.g.", "don't", "1990s", "'s", "-", "--"]  # fmt: skip
    cuts = ["/", "#", "\\", "//", "///", "/#", "#\\", "\\\\\\"]
    seps = [" ", " ", " ", "  ", "\n", " \n", "\t", ""]

    def run() -> str:
        parts = [rng.choice(words)]
        for _ in range(rng.randint(0, 4)):
            parts += [rng.choice(cuts), rng.choice(words)]
        return "".join(parts)

    texts = [
        "".join(run() + rng.choice(seps) for _ in range(rng.randint(1, 10))) for _ in range(3000)
    ]
    texts += ["/", "#", "\\", "/a", "a/", "a/b/c", "no no no/x", "no no/no", "A/B C/D", "\n/x"]
    got = Tokenizer().tokenize_batch(texts)
    for text, toks in zip(texts, got):
        assert toks == exact(text), text


def test_max_runs_bounds_the_runs_scan_cuts():
    """scan writes one slot per run without bounds checks: max_runs must never be short,
    whatever mix of whitespace, separators, `/#\\` cuts and repeats a batch holds."""
    import random

    from fastulm.text.run_kernels import WS, WS_PAD, max_runs, scan
    from fastulm.text.table import StringTable

    rng = random.Random(3)
    alphabet = ["a", "B", "/", "#", "\\", " ", "  ", "\n", "\x00", "é", "!", "\u3000", "\u2009"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    texts += ["/" * 50, "\x00" * 20, "a/" * 30, "/ " * 30, " /" * 30, "\x00/\x00/", "a b c"]
    for text in texts:
        arr = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        room = 3 * len(arr) + 2  # a safe cap: at most three runs a character, and the end
        table = StringTable()
        table.reserve(room, len(arr))
        kinds = scan(arr, WS, room, *table.arrays, table.n)[0]
        assert len(kinds) <= max_runs(arr, WS_PAD), text


def test_non_text_is_refused_clearly():
    with pytest.raises(TypeError, match="text 1 is a float"):
        Tokenizer().encode_batch(["ok", float("nan")])


def test_importing_the_rules_or_the_vocab_loads_no_numba():
    """fastulm.text is lazy: the vocab (which needs only the rules) does not pay for numba."""
    code = (
        "import sys, fastulm.text, fastulm.text.rules, fastulm.data.vocab\n"
        "assert 'numba' not in sys.modules and 'fastulm.text.words' not in sys.modules\n"
        "from fastulm.text import Tokenizer, SPECIAL_TOKENS, split_words, apply_rules\n"
        "assert 'numba' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_edge_links_equal_the_link_ids_of_each_runs_tokens():
    """PlainRuns._edge_links (memo arrays by edge token, in numpy) gives every run the link
    ids LinkIds.ids gives its tokens; runs of one token, runs whose edge pair starts or ends
    a two-token part, and edge tokens seen for the first time take the memoized path."""
    from fastulm.text.links import BY_FIRST, BY_LAST, FIRST_TWO, LAST_TWO
    from fastulm.text.plain_runs import PlainRuns
    from fastulm.text.run_store import RunStore

    rng = np.random.default_rng(0)
    edge = sorted(set(BY_FIRST) | set(BY_LAST))
    pairs = sorted(set(FIRST_TWO) | set(LAST_TWO))
    words = ["movie", "film", "the", "a", "it", "1990", "x"]
    runs = []
    for _ in range(3000):
        kind = rng.integers(4)
        if kind == 0:  # a pair that starts or ends a two-token part, padded on one side
            toks = list(pairs[rng.integers(len(pairs))])
            if rng.integers(2):
                toks.insert(0 if rng.integers(2) else len(toks), words[rng.integers(7)])
        else:
            n = int(rng.integers(1, 4))
            pool = edge if kind == 1 else words + edge[:20]
            toks = [pool[rng.integers(len(pool))] for _ in range(n)]
        runs.append(toks)
    store = RunStore()
    plain = PlainRuns(store)
    for half in (runs[:1500], runs[1500:], runs[:1500]):  # the memo empty, partly filled, full
        ids = np.array([store.token_id(t) for toks in half for t in toks], np.int32)
        off = np.zeros(len(half) + 1, np.int64)
        np.cumsum([len(toks) for toks in half], out=off[1:])
        rows = np.arange(len(half))
        got = plain._edge_links(ids, off, rows)
        want = [store.links.ids(toks) for toks in half]
        assert got.tolist() == [list(w) for w in want]
