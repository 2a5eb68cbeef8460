"""Vocab: fastai's make_vocab rules, checked by hand and against fastai itself."""

import json
import random
import re
from collections import Counter

import numpy as np
import pytest

from fastulm.data import DataError
from fastulm.data.vocab import Vocab, make_itos
from fastulm.text.rules import SPECIAL_TOKENS


def test_hand_computed():
    counts = Counter({"b": 3, "a": 3, "c": 5, "xxbos": 4, "d": 1, "e": 2})
    v = Vocab.build(counts, max_vocab=60000, min_freq=2)
    # specials first in fastai order, then by count, ties in insertion order (b before a)
    real = [*SPECIAL_TOKENS, "c", "b", "a", "e"]
    assert v.itos[: len(real)] == real
    assert v.itos[len(real) :] == ["xxfake"] * (8 - len(real) % 8)
    assert len(v) % 8 == 0


def test_pads_eight_when_already_multiple():
    # 9 specials + 7 words = 16, a multiple of 8: fastai 2.8.12 still appends 8 xxfake
    counts = Counter({f"w{i}": 10 - i for i in range(7)})
    v = Vocab.build(counts, min_freq=1)
    assert len(v) == 24 and v.itos[16:] == ["xxfake"] * 8


def test_max_vocab_cuts_after_specials():
    counts = Counter({"xxbos": 100, "xxmaj": 90, "the": 80, "a": 70, "of": 60, "to": 50})
    v = Vocab.build(counts, max_vocab=5, min_freq=1)
    # most_common(5) keeps xxbos, xxmaj, the, a, of; specials moved first, cut to 5
    assert v.itos == SPECIAL_TOKENS[:5] + ["xxfake"] * 3


def test_unknown_maps_to_zero_and_fake_is_not_a_token():
    v = Vocab(["xxunk", "xxpad", "hello", "xxfake", "xxfake"])
    assert v.numericalize(["hello", "nope", "xxfake"]).tolist() == [2, 0, 0]
    assert v.stoi["nope"] == 0 and "nope" not in v.stoi
    assert v.decode(np.array([2, 0])) == ["hello", "xxunk"]


def test_ties_follow_tiebreak_array():
    tokens = ["x", "y", "z"]
    itos = make_itos(tokens, np.array([2, 2, 2]), min_freq=1, tiebreak=np.array([5, 1, 3]))
    assert itos[9:12] == ["y", "z", "x"]


def test_save_load_roundtrip(tmp_path):
    v = Vocab.build(Counter(["the", "cat", "sat", "on", "the", "mat", "the", "end"]), min_freq=1)
    v.save(tmp_path / "vocab.json")
    assert json.loads((tmp_path / "vocab.json").read_text()) == v.itos
    assert Vocab.load(tmp_path / "vocab.json") == v
    assert Vocab.load(tmp_path) == v  # a corpus folder
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]  # no temporary left


@pytest.mark.parametrize(
    "content,msg",
    [
        ("{not json", "not a JSON vocab"),
        ('{"a": 1}', "non-empty JSON list"),
        ("[]", "non-empty"),
        ('["a", "b", "a"]', "twice"),
    ],
)
def test_load_errors(tmp_path, content, msg):
    (tmp_path / "v.json").write_text(content)
    with pytest.raises(DataError, match=msg):
        Vocab.load(tmp_path / "v.json")
    with pytest.raises(DataError, match="not found"):
        Vocab.load(tmp_path / "missing.json")


def _random_counter(rng: random.Random, n: int) -> Counter:
    words = [f"w{i}" for i in range(n)] + SPECIAL_TOKENS[:5] + ["xxfake"]
    rng.shuffle(words)
    return Counter({w: rng.choice([1, 1, 2, 2, 3, 5, 8, 40]) for w in words})


@pytest.mark.reference
@pytest.mark.parametrize(
    "max_vocab,min_freq", [(60000, 2), (60000, 3), (20, 1), (31, 2), (7, 1), (100, 5)]
)
def test_same_as_fastai_make_vocab(fastai_text, max_vocab, min_freq):
    from fastai.text.data import make_vocab

    rng = random.Random(max_vocab * 10 + min_freq)
    for n in (0, 5, 60, 300):
        counts = _random_counter(rng, n)
        want = make_vocab(counts, min_freq=min_freq, max_vocab=max_vocab)
        assert Vocab.build(counts, max_vocab=max_vocab, min_freq=min_freq).itos == want


@pytest.mark.reference
def test_same_as_fastai_on_sample_and_numericalize(fastai_text, imdb_sample):
    from fastai.text.data import Numericalize, make_vocab

    rows = [json.loads(line) for line in (imdb_sample / "fastai_tokens.jsonl").open()]
    docs = [r["tokens"] for r in rows]
    counts = Counter(t for d in docs for t in d)
    for max_vocab, min_freq in [(60000, 2), (60000, 3), (3000, 2)]:
        v = Vocab.build(counts, max_vocab=max_vocab, min_freq=min_freq)
        assert v.itos == make_vocab(counts, min_freq=min_freq, max_vocab=max_vocab)
    v = Vocab.build(counts)
    num = Numericalize(vocab=v.itos)
    for d in docs[:50]:
        assert v.numericalize(d).tolist() == num.encodes(d).tolist()
        assert v.decode(v.numericalize(d)) == list(num.decodes(num.encodes(d)))


def test_saved_vocab_follows_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        Vocab(["xxunk", "xxpad", "a"]).save(tmp_path / "vocab.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "vocab.json").stat().st_mode) == 0o644  # not mkstemp's 0600
    assert Vocab.load(tmp_path / "vocab.json").itos == ["xxunk", "xxpad", "a"]


@pytest.mark.parametrize(
    "itos, says",
    [
        (["the", "a", "film"], r"must start with 'xxunk', 'xxpad'"),
        (["xxpad", "xxunk", "xxbos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj"], "must start"),
        (["xxunk", "xxpad", "xxbos", "the"], r"lacks the special token\(s\) xxfld, xxrep"),
    ],
)
def test_given_vocab_without_the_special_tokens_is_one_error(tmp_path, capsys, itos, says):
    """--vocab: a vocab whose ids the tokenizer's tokens cannot fit (every document would
    start with xxunk, capitals would lose their xxmaj) is refused before any work."""
    from fastulm.tokenize import main

    src = tmp_path / "t.csv"
    src.write_text("text,label\nA film.,pos\nThe end.,neg\n")
    (tmp_path / "v.json").write_text(json.dumps(itos))
    out = tmp_path / "out"
    assert main([str(src), str(out), "--vocab", str(tmp_path / "v.json"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(says, err[0]), err
    assert not out.exists()
    # fastai's own order (xxeos included or not) is taken
    good = ["xxunk", "xxpad", "xxbos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj", "film"]
    (tmp_path / "v.json").write_text(json.dumps(good))
    assert main([str(src), str(out), "--vocab", str(tmp_path / "v.json"), "--quiet"]) == 0
