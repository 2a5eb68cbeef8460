"""fastulm.text.words against spaCy's English tokenizer (as fastai sets it up)."""

import random
import re

import pytest
from tricky import TRICKY, random_texts

from fastulm.text import spacy_tables, words
from fastulm.text.rules import SPECIAL_TOKENS, apply_rules


@pytest.fixture(scope="module")
def spacy_tok(fastai_text):
    """spaCy blank('en') with fastai's special cases: what fastai's SpacyTokenizer calls."""
    import spacy
    from spacy.symbols import ORTH

    nlp = spacy.blank("en")
    for w in SPECIAL_TOKENS:
        nlp.tokenizer.add_special_case(w, [{ORTH: w}])
    return lambda text: [t.text for t in nlp.tokenizer(text)]


@pytest.mark.reference
def test_tricky_texts_match_spacy(spacy_tok):
    for text in TRICKY:
        assert words.split_words(text) == spacy_tok(text), text
        ruled = apply_rules(text)
        assert words.split_words(ruled) == spacy_tok(ruled), ruled


@pytest.mark.reference
def test_random_texts_match_spacy(spacy_tok):
    for text in random_texts(1500, seed=7):
        assert words.split_words(text) == spacy_tok(text), text
        ruled = apply_rules(text)
        assert words.split_words(ruled) == spacy_tok(ruled), ruled


@pytest.mark.reference
def test_every_special_case_and_its_neighbours_match_spacy(spacy_tok):
    keys = [k for k in spacy_tables.SPECIAL_CASES if not k.isspace()]
    rng = random.Random(3)
    for key in keys:
        for text in (key, f"({key})", f'"{key},', f"{key}.", f"{key}{rng.choice(keys)}"):
            assert words.split_words(text) == spacy_tok(text), text


@pytest.mark.reference
def test_cross_run_special_case_quirk(spacy_tok):
    # spaCy's final pass sees `''` spanning two chunks; it changes nothing there, but it
    # claims the tokens, so the second chunk's `''` stays split.
    text = "back'' ''return"
    assert words.split_words(text) == spacy_tok(text) == ["back", "''", "'", "'", "return"]


def test_whitespace_runs_are_tokens():
    assert words.split_words("a  b") == ["a", " ", "b"]
    assert words.split_words("a \n b") == ["a", "\n ", "b"]
    assert words.split_words(" a") == [" ", "a"]
    assert words.split_words("a\n") == ["a", "\n"]


def test_letters_shortcut_is_sound():
    """The parse-tree argument says no pattern matches ASCII letters; check it by search."""
    assert words.LETTERS_PASS_THROUGH
    pats = [
        re.compile(p, f)
        for p, f in (
            (spacy_tables.PREFIX_PATTERN, spacy_tables.PREFIX_FLAGS),
            (spacy_tables.SUFFIX_PATTERN, spacy_tables.SUFFIX_FLAGS),
            (spacy_tables.INFIX_PATTERN, spacy_tables.INFIX_FLAGS),
            (spacy_tables.URL_MATCH_PATTERN, spacy_tables.URL_MATCH_FLAGS),
        )
    ]
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    samples = [*letters, *(a + b for a in letters for b in letters)]
    samples += [
        "".join(rng.choice(letters) for _ in range(rng.randint(3, 30))) for _ in range(3000)
    ]
    for s in samples:
        for p in pats:
            m = p.search(s)
            assert m is None or m.end() == m.start(), (p.pattern[:40], s)


def test_suffix_window_matches_plain_search():
    suffix = re.compile(spacy_tables.SUFFIX_PATTERN, spacy_tables.SUFFIX_FLAGS)
    rng = random.Random(1)
    alphabet = "ab.,!?'\")(:;-0123456789%$°CFkm…’sS"
    for _ in range(20000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 16)))
        m = suffix.search(s)
        assert words._suffix_len(s) == (m.end() - m.start() if m else 0), s


def test_long_word_is_linear():
    """A 300k-character run is split without quadratic blow-up (spaCy's loop strips one
    affix per pass; dots are handled in one step)."""
    import time

    t = time.perf_counter()
    assert words.split_words("a" * 300_000) == ["a" * 300_000]
    assert words.split_words("." * 3000) == ["." * 3000]
    assert time.perf_counter() - t < 5


def test_pre_checks_never_hide_a_match():
    """The prefix/infix start classes and the URL dot rule only skip strings the real
    patterns cannot match."""
    prefix = re.compile(spacy_tables.PREFIX_PATTERN, spacy_tables.PREFIX_FLAGS)
    infix = re.compile(spacy_tables.INFIX_PATTERN, spacy_tables.INFIX_FLAGS)
    url = re.compile(spacy_tables.URL_MATCH_PATTERN, spacy_tables.URL_MATCH_FLAGS)
    rng = random.Random(2)
    alphabet = "aZ09.,:;-–—~/\\<>=+*^'\"()[]{}!?…$£€%#@&_|°©®™😀 \u00a0é東"
    samples = [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(20000)
    ]
    samples += ["www.imdb.com", "http://x.org/a", "a.b", "1.2.3.4", "x@y.co", "a-b", "10-15"]
    for s in samples:
        m = prefix.search(s)
        if m and m.end() > m.start():
            assert words._PREFIX_START.match(s), s
        if any(m.end() > m.start() for m in infix.finditer(s)):
            assert words._INFIX_START.search(s), s
        if url.match(s):
            assert "." in s, s
