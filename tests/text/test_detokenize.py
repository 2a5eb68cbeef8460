"""detokenize: special tokens undone, spacing as a person writes it."""

import pytest

from fastulm.text.detokenize import detokenize


@pytest.mark.parametrize(
    "tokens,expected",
    [
        (["xxbos", "xxmaj", "this", "movie", "is", "xxup", "great", "."], "This movie is GREAT."),
        (["xxpad", "xxpad", "xxbos", "hello"], "hello"),
        (["i", "liked", "it", "xxrep", "3", "!"], "I liked it!!!"),
        (["xxwrep", "3", "xxmaj", "yes", "!"], "Yes Yes Yes!"),
        (["it", "was", "xxwrep", "4", "bad", "."], "it was bad bad bad bad."),
        (["it", "'s", "good", ",", "is", "n't", "it", "?"], "it's good, isn't it?"),
        (["i", "ca", "n't", "and", "wo", "n't", "."], "I can't and won't."),
        (
            ["you", "'re", "i", "'m", "we", "'ve", "she", "'ll", "he", "'d"],
            "you're I'm we've she'll he'd",
        ),
        (["a", "(", "b", ")", "c", "[", "d", "]"], "a (b) c [d]"),
        (["he", "said", '"', "no", "way", '"', "and", "left", "."], 'he said "no way" and left.'),
        (['"', "a", '"', "and", '"', "b", '"'], '"a" and "b"'),
        (["the", "actors", "'", "lines"], "the actors' lines"),
        (["it", "was", "'", "meh", "'", ","], "it was 'meh',"),
        (["wait", "…", "what", "?", "!"], "wait… what?!"),
        (["note", ":", "one", ";", "two", "%"], "note: one; two%"),
        (["$", "30", "and", "#", "1"], "$30 and #1"),
        (["horn", "-", "tooting", "--", "then", "-", "ok"], "horn-tooting -- then-ok"),
        (["and", "/", "or", "1", "/", "10"], "and/or 1/10"),
        (["1", ",", "xxrep", "3", "0", "in", "2", "xxrep", "3", "0"], "1,000 in 2000"),
        (["3", ".", "5", "stars", ",", "10", "people"], "3.5 stars, 10 people"),
        (["s", "xxrep", "5", "o", "bad"], "sooooo bad"),
        (["sl", "xxrep", "4", "o", "w", "motion"], "sloooow motion"),
        (["h", "xxrep", "4", "m", ","], "hmmmm,"),
        (["a", "xxrep", "3", "k", "hood"], "a kkk hood"),
        (["f", "xxrep", "3", "*", "ing", "great"], "f***ing great"),
        (["xxup", "re", "xxrep", "4", "a", "xxup", "lly", "bad"], "REAAAALLY bad"),
        (["godfather", "xxrep", "3", "i"], "godfather iii"),
        (["a", "l", "xxrep", "4", "o", "xxup", "ng", "movie"], "a LOOOONG movie"),
        (["gon", "na", "and", "wan", "na", "got", "ta"], "gonna and wanna gotta"),
        (["end", ".", "\n\n", "xxmaj", "next"], "end.\n\nNext"),
        (["great", ":)", "really"], "great :) really"),
        (["xxunk", "is", "unknown"], "xxunk is unknown"),
        (["xxrep", "x", "word", "xxmaj"], "x word"),  # malformed markers are dropped
        ([], ""),
    ],
)
def test_hand_written(tokens, expected):
    assert detokenize(tokens) == expected


@pytest.mark.reference
def test_fastai_decode_spec_tokens_repeats_everything_after_xxrep(fastai_text):
    tokens = ["xxmaj", "wow", "xxrep", "3", "!", "and", "xxwrep", "2", "more", "words", "."]
    theirs = fastai_text.decode_spec_tokens(tokens)
    # The reference never clears its rule after xxrep: every later token is repeated.
    assert theirs[:3] == ["Wow", "!!!", "andandand"]
    assert detokenize(tokens) == "Wow!!! and more more words."


@pytest.mark.reference
def test_agrees_with_fastai_where_fastai_is_right(fastai_text):
    # No xxrep/xxwrep (where the reference is buggy): the same words, only spacing differs.
    tokens = ["xxbos", "xxmaj", "the", "xxup", "best", "film", ",", "xxmaj", "period", "."]
    ref = [t for t in fastai_text.decode_spec_tokens(tokens) if t != "xxbos"]
    assert detokenize(tokens).replace(",", " ,").replace(".", " .").split() == ref


@pytest.mark.reference
@pytest.mark.parametrize(
    "text",
    [
        "This movie is great. I can't believe it's so good!",
        "He said \"no way\" (twice) and left; the actors' lines were bad, weren't they?",
        "I rated it 7/10 -- a well-made, low-budget film from 1999. It cost $30,000.",
        "What a LOOOONG movie!!! Never again... Yes yes yes.",
    ],
)
def test_round_trip_of_ordinary_text(fastai_text, text):
    tokens = fastai_text.tokenize1(text, tok=fastai_text.SpacyTokenizer())
    out = detokenize(tokens)
    assert out == text.replace("...", "…")  # fix_html turns "..." into "…"


def test_special_token_strings_match_the_rules():
    from fastulm.text.detokenize import BOS, EOS, FLD, MAJ, PAD, REP, UNK, UP, WREP

    try:
        from fastulm.text.rules import SPECIAL_TOKENS
    except ImportError:
        pytest.skip("fastulm.text.rules not available")
    assert [UNK, PAD, BOS, EOS, FLD, REP, WREP, UP, MAJ] == SPECIAL_TOKENS
