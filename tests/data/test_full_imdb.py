"""The main job once, on the full 100k-review archive (CI: FASTULM_REQUIRE_DATA=1)."""

import numpy as np
import pytest

from fastulm.data.corpus import open_corpus
from fastulm.data.pipeline import tokenize_source
from fastulm.data.sources import iter_tar

pytestmark = [pytest.mark.full_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def full_corpus(imdb_archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "imdb_tok"
    return open_corpus(tokenize_source(imdb_archive, out, progress=False))


def test_counts_and_labels_match_the_archive(full_corpus, imdb_archive):
    # independent count: the archive's member names, read without the pipeline's rules
    names = [n for n, _ in iter_tar(imdb_archive) if n.endswith(".txt")]
    want = {
        "train": {
            0: sum("/train/neg/" in n for n in names),
            1: sum("/train/pos/" in n for n in names),
        },
        "test": {
            0: sum("/test/neg/" in n for n in names),
            1: sum("/test/pos/" in n for n in names),
        },
        "unsup": {-1: sum("/train/unsup/" in n for n in names)},
    }
    assert want == {
        "train": {0: 12500, 1: 12500},
        "test": {0: 12500, 1: 12500},
        "unsup": {-1: 50000},
    }
    corpus = full_corpus
    assert corpus.split_names == ["train", "test", "unsup"]
    for split, labels in want.items():
        got = corpus[split]
        assert len(got) == sum(labels.values())
        values, counts = np.unique(got.labels, return_counts=True)
        assert dict(zip(values.tolist(), counts.tolist())) == labels
        assert (got.ids[got.offsets[:-1]] == 2).all()  # every document starts with xxbos
        assert corpus.meta["splits"][split]["docs"] == len(got)
    ids = corpus["train"].doc_ids.to_pylist()
    assert ids == sorted(ids) and ids[0].startswith("train/neg/")


def test_vocab_is_fastai_shaped(full_corpus):
    itos = full_corpus.vocab.itos
    assert itos[:9] == [
        "xxunk",
        "xxpad",
        "xxbos",
        "xxeos",
        "xxfld",
        "xxrep",
        "xxwrep",
        "xxup",
        "xxmaj",
    ]
    # more than 60,000 tokens occur twice: cut to 60,000 and padded with 8 xxfake (fastai 2)
    assert len(itos) == 60008 and itos[-8:] == ["xxfake"] * 8


def test_rating_task_straight_from_the_archive(full_corpus, imdb_archive, tmp_path):
    """--label-regex on <id>_<rating>.txt: an 8-class task, the same tokens as the 2-class one."""
    import re
    from collections import Counter

    from fastulm.data.sources import SourceOptions

    out = tokenize_source(
        imdb_archive,
        tmp_path / "rating",
        progress=False,
        source_options=SourceOptions(label_regex=r"_(\d+)\.txt$"),
    )
    corpus = open_corpus(out)
    # independent count: the ratings in the member names, per split
    want = {"train": Counter(), "test": Counter()}
    for name, _ in iter_tar(imdb_archive):
        m = re.fullmatch(r"aclImdb/(train|test)/(neg|pos)/\d+_(\d+)\.txt", name)
        if m:
            want[m[1]][m[3]] += 1
    assert sorted(want["train"]) == ["1", "10", "2", "3", "4", "7", "8", "9"]
    assert corpus.label_names == sorted(want["train"])  # fastai's CategoryMap: sorted strings
    for split in ("train", "test"):
        values, counts = np.unique(corpus[split].labels, return_counts=True)
        got = {corpus.label_names[v]: int(k) for v, k in zip(values, counts)}
        assert got == dict(want[split])
        assert np.array_equal(corpus[split].ids, full_corpus[split].ids)
    assert (corpus["unsup"].labels == -1).all() and corpus.meta["task"] == "single_label"
