"""The tokenize pipeline: corpus content, determinism, shards, vocab options, bad input."""

import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pytest
from imdb_fakes import TEXTS, make_tar

from fastulm.data import DataError
from fastulm.data.corpus import open_corpus
from fastulm.data.parts import merge_parts, tokenize_shard
from fastulm.data.pipeline import VocabOptions, tokenize_source
from fastulm.files import WriteError
from fastulm.text import tokenize_texts

RANK = {"train": 0, "test": 1, "unsup": 2, "valid": 1}


def _run(src, out, **kw):
    kw.setdefault("workers", 1)
    return tokenize_source(src, out, progress=False, **kw)


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_corpus_holds_every_review_in_order(tiny_imdb, tmp_path):
    root, expected = tiny_imdb
    corpus = open_corpus(_run(root, tmp_path / "out", options=VocabOptions(min_freq=1)))
    assert corpus.split_names == ["train", "test", "unsup"]
    assert corpus.label_names == ["neg", "pos"]
    want = sorted(expected, key=lambda k: (RANK[k[0]], k[1]))
    got = [
        (s, corpus[s].doc_ids[i].as_py()) for s in corpus.split_names for i in range(len(corpus[s]))
    ]
    assert got == want
    # min_freq=1: every token is in the vocab, so decoding gives the tokenizer's tokens back
    for split, doc_id in want:
        data = corpus[split]
        i = data.doc_ids.to_pylist().index(doc_id)
        text, label = expected[(split, doc_id)]
        assert corpus.vocab.decode(data.doc(i)) == tokenize_texts([text])[0]
        assert data.labels[i] == label
        assert data.doc(i)[0] == 2  # xxbos
    meta = corpus.meta
    assert meta["splits"]["train"]["docs"] == 7 and meta["splits"]["unsup"]["docs"] == 5
    for s in corpus.split_names:
        ids = corpus[s].ids
        assert meta["splits"][s]["tokens"] == len(ids)
        assert meta["splits"][s]["unknown_rate"] == pytest.approx(np.mean(ids == 0))
    assert meta["source"]["kind"] == "imdb-folder" and meta["non_utf8_files"] == 0


def test_folder_archive_and_worker_counts_byte_identical(tiny_imdb, tmp_path):
    root, _ = tiny_imdb
    one = _run(root, tmp_path / "w1")
    two = _run(root, tmp_path / "w2", workers=2)
    assert _files(one) == _files(two)
    tar = _run(make_tar(root, tmp_path / "a.tar.gz"), tmp_path / "tar", workers=2)
    a, b = _files(one), _files(tar)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a if k != "meta.json")  # meta names the source


def test_shards_then_merge_equal_single_run(tiny_imdb, tmp_path):
    root, _ = tiny_imdb
    single = _run(root, tmp_path / "single")
    parts = [
        tokenize_shard(root, tmp_path / f"part{i}", 3, i, workers=1, progress=False)
        for i in (2, 0, 1)
    ]
    merged = merge_parts(parts, tmp_path / "merged")
    assert _files(single) == _files(merged)
    with pytest.raises(DataError, match=r"missing shard\(s\) \[1\]"):
        merge_parts(parts[:2], tmp_path / "bad")
    with pytest.raises(DataError, match="part0: not a complete part"):
        (parts[1] / "part.json").unlink()
        merge_parts(parts, tmp_path / "bad")


def test_parts_must_come_from_the_same_data_wherever_it_lies(tiny_imdb, tmp_path):
    """part.json carries the source's fingerprint: the same reviews copied to another path
    (another machine) merge; a folder changed between two shards' runs, or another archive
    at the same path, is refused rather than merged into a corpus of neither."""
    root, _ = tiny_imdb
    single = _run(root, tmp_path / "single")
    copy = tmp_path / "elsewhere" / "aclImdb"
    shutil.copytree(root, copy)

    def shard(src, i, name):
        return tokenize_shard(src, tmp_path / name, 2, i, workers=1, progress=False)

    merged = merge_parts([shard(root, 0, "a0"), shard(copy, 1, "a1")], tmp_path / "merged")
    assert _files(single) == _files(merged)

    first = shard(root, 0, "b0")
    review = next((root / "train" / "pos").glob("*.txt"))
    review.write_text(review.read_text() + " An edit made between the two shards' runs.")
    second = shard(root, 1, "b1")
    with pytest.raises(DataError, match=r"b1: fingerprint differs from .*b0's"):
        merge_parts([first, second], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()

    tar = make_tar(root, tmp_path / "a.tar.gz")
    first = shard(tar, 0, "c0")
    make_tar(copy, tar)  # the archive replaced by one of the unedited reviews
    with pytest.raises(DataError, match="fingerprint differs"):
        merge_parts([first, shard(tar, 1, "c1")], tmp_path / "bad")


def test_a_damaged_part_is_refused(tiny_imdb, tmp_path):
    """A changed byte in a part's token ids, still a valid id, is caught by part.json's
    sha256 of each file."""
    root, _ = tiny_imdb
    parts = [
        tokenize_shard(root, tmp_path / f"p{i}", 2, i, workers=1, progress=False) for i in (0, 1)
    ]
    docs = parts[1] / "docs.arrow"
    ids = open_part_ids(docs)
    data = docs.read_bytes()
    at = data.find(ids.tobytes())
    swapped = ids.copy()
    swapped[[1, 2]] = swapped[[2, 1]]
    assert at >= 0 and ids[1] != ids[2]
    docs.write_bytes(data[:at] + swapped.tobytes() + data[at + len(ids.tobytes()) :])
    want = "docs.arrow: damaged (its sha256 does not match part.json); write this part again"
    with pytest.raises(DataError, match=re.escape(want)):
        merge_parts(parts, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def open_part_ids(path: Path) -> np.ndarray:
    batch = pa.ipc.open_file(pa.memory_map(str(path), "r")).get_batch(0)
    return np.asarray(batch.column("ids").values)


def test_empty_shard_is_an_error(tiny_imdb, tmp_path):
    root, _ = tiny_imdb
    with pytest.raises(DataError, match=r"shard 40 of 41 has no documents"):
        tokenize_shard(root, tmp_path / "p", 41, 40, workers=1, progress=False)
    assert not (tmp_path / "p").exists()


def test_vocab_from_and_reuse(tiny_imdb, tmp_path):
    root, expected = tiny_imdb
    test_only = Counter(
        t
        for (s, _), (text, _) in expected.items()
        if s == "test"
        for t in tokenize_texts([text])[0]
    )
    others = Counter(
        t
        for (s, _), (text, _) in expected.items()
        if s != "test"
        for t in tokenize_texts([text])[0]
    )
    only = sorted(set(test_only) - set(others))
    assert only
    full = open_corpus(_run(root, tmp_path / "all", options=VocabOptions(min_freq=1)))
    part = open_corpus(
        _run(root, tmp_path / "tu", options=VocabOptions(min_freq=1, vocab_from=["train", "unsup"]))
    )
    assert all(t in full.vocab.stoi for t in only)
    assert not any(t in part.vocab.stoi for t in only)
    assert part.meta["splits"]["test"]["unknown_rate"] > 0
    reused = open_corpus(
        _run(
            root,
            tmp_path / "re",
            options=VocabOptions(vocab_path=str(tmp_path / "tu" / "vocab.json")),
        )
    )
    assert reused.vocab == part.vocab
    assert np.array_equal(reused["test"].ids, part["test"].ids)
    with pytest.raises(DataError, match="no split 'valid'"):
        _run(root, tmp_path / "x", options=VocabOptions(vocab_from=["valid"]))


def test_empty_whitespace_non_utf8_and_huge_reviews(tiny_imdb, tmp_path):
    root, _ = tiny_imdb
    pos = root / "train" / "pos"
    (pos / "100_1.txt").write_text("")
    (pos / "101_1.txt").write_text("   \n\t  ")
    (pos / "102_1.txt").write_bytes(b"Caf\xe9 au lait. " * 3)
    review = TEXTS[12]  # "The actors try hard ... fall flat."
    big = "\n".join([review] * (3_000_000 // len(review) + 1))
    assert len(big) > 3_000_000
    (pos / "103_1.txt").write_text(big)
    corpus = open_corpus(_run(root, tmp_path / "out", options=VocabOptions(min_freq=1)))
    train = corpus["train"]
    ids = train.doc_ids.to_pylist()

    def doc(name):
        return corpus.vocab.decode(train.doc(ids.index(f"train/pos/{name}")))

    assert doc("100_1.txt") == ["xxbos"]
    assert doc("101_1.txt") == ["xxbos"]
    assert doc("102_1.txt") == tokenize_texts(["Caf\ufffd au lait. " * 3])[0]
    assert corpus.meta["non_utf8_files"] == 1
    assert corpus.meta["non_utf8_examples"] == ["train/pos/102_1.txt"]
    one = tokenize_texts([review])[0][1:]
    copies = big.count("\n") + 1
    assert doc("103_1.txt") == ["xxbos"] + ([*one, "\n"]) * (copies - 1) + one


@pytest.mark.reference
def test_huge_review_same_as_fastai_with_raised_limit(fastai_text):
    """Two copies through fastai (its spaCy refuses >1e6 chars) fix the join's tokens."""
    review = TEXTS[12]
    want = fastai_text.tokenize_texts(["\n".join([review] * 2)])[0]
    one = tokenize_texts([review])[0][1:]
    assert list(want) == ["xxbos", *one, "\n", *one]


def test_force_replaces_only_what_fastulm_wrote(tiny_imdb, tmp_path):
    root, _ = tiny_imdb
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    for force in (False, True):
        with pytest.raises(WriteError, match="out: is not a corpus fastulm wrote"):
            _run(root, out, force=force)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert (out / "mine.txt").read_text() == "precious"
    corpus = _run(root, tmp_path / "c", options=VocabOptions(min_freq=1))
    with pytest.raises(WriteError, match="c: a corpus is already there"):
        _run(root, corpus)
    _run(root, corpus, force=True)  # min_freq 2 now: a smaller vocab
    assert open_corpus(corpus).meta["options"]["min_freq"] == 2
    # a shard's part folder is fastulm's too: a part or a corpus may replace it
    part = tokenize_shard(root, tmp_path / "p", 2, 0, workers=1, progress=False)
    with pytest.raises(WriteError, match="p: a part is already there"):
        tokenize_shard(root, part, 2, 1, workers=1, progress=False)
    tokenize_shard(root, part, 2, 1, workers=1, progress=False, force=True)
    assert json.loads((part / "part.json").read_text())["shard_index"] == 1
    _run(root, part, force=True)
    assert open_corpus(part).split_names == ["train", "test", "unsup"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aclImdb", "c", "out", "p"]


def test_out_never_is_or_holds_a_source(tiny_imdb, tmp_path):
    root, _ = tiny_imdb
    before = _files_under(root)
    for out in (root, tmp_path):
        with pytest.raises(WriteError, match="would replace the source"):
            _run(root, out, force=True)
    assert _files_under(root) == before
    # parts are fastulm's, but never the output of the merge that reads them
    (tmp_path / "parts").mkdir()
    parts = [
        tokenize_shard(root, tmp_path / "parts" / f"p{i}", 2, i, workers=1, progress=False)
        for i in range(2)
    ]
    kept = {p.name: _files(p) for p in parts}
    for out in (parts[0], tmp_path / "parts"):
        with pytest.raises(WriteError, match="would replace the source"):
            merge_parts(parts, out, force=True)
    assert {p.name: _files(p) for p in parts} == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aclImdb", "parts"]


def _files_under(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_empty_out_folder_is_fine(tiny_imdb, tmp_path):
    root, _ = tiny_imdb
    (tmp_path / "out").mkdir()
    open_corpus(_run(root, tmp_path / "out"))


def test_csv_sample_split_and_labels(imdb_sample, tmp_path):
    import pyarrow.csv as pcsv

    table = pcsv.read_csv(imdb_sample / "texts.csv")
    table = table.take(list(range(0, 800, 10)) + list(range(800, 1000, 5)))  # valid rows last
    small = tmp_path / "small.csv"
    pcsv.write_csv(table, small)
    corpus = open_corpus(_run(small, tmp_path / "out"))
    assert corpus.split_names == ["train", "valid"]
    assert corpus.label_names == ["negative", "positive"]
    rows = table.to_pylist()
    for split, flag in (("train", False), ("valid", True)):
        want = [i for i, r in enumerate(rows) if r["is_valid"] == flag]
        data = corpus[split]
        assert [int(x) for x in data.doc_ids.to_pylist()] == want
        assert data.labels.tolist() == [corpus.label_names.index(rows[i]["label"]) for i in want]


@pytest.mark.reference
def test_sample_vocab_and_ids_match_fastai(imdb_sample, fastai_text, tmp_path):
    """The whole sample: fastai's reference tokens, Counter in corpus order, make_vocab and
    Numericalize give exactly our vocab.json and ids."""
    from fastai.text.data import Numericalize, make_vocab

    corpus = open_corpus(_run(imdb_sample / "texts.csv", tmp_path / "out", workers=2))
    ref = {
        json.loads(line)["row"]: json.loads(line)["tokens"]
        for line in (imdb_sample / "fastai_tokens.jsonl").open()
    }
    order = [int(i) for s in corpus.split_names for i in corpus[s].doc_ids.to_pylist()]
    counts = Counter(t for r in order for t in ref[r])
    assert corpus.vocab.itos == make_vocab(counts, min_freq=2, max_vocab=60000)
    num = Numericalize(min_freq=2, max_vocab=60000)
    num.setups([ref[r] for r in order])
    assert num.vocab == corpus.vocab.itos
    got = [corpus[s].doc(i).tolist() for s in corpus.split_names for i in range(len(corpus[s]))]
    assert got == [num.encodes(ref[r]).tolist() for r in order]


def test_damaged_archive_midway_fails_cleanly(tiny_imdb, tmp_path):
    root, _ = tiny_imdb
    big = root / "train" / "unsup"
    for i in range(300):  # enough members that the cut falls after the first batches
        (big / f"{1000 + i}_0.txt").write_text(f"Review number {i}. " * 200)
    data = make_tar(root, tmp_path / "a.tar.gz").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(DataError, match=r"cut\.tar\.gz: truncated"):
        _run(cut, tmp_path / "out", workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz", "aclImdb", "cut.tar.gz"]


class _Bar:
    """Stands in for tqdm: records the total and the position after every change."""

    shown: ClassVar[list] = []

    def __init__(self, total=None, **kw):
        self._total, self.n = total, 0
        self.shown.append((total, 0))

    @property
    def total(self):
        return self._total

    @total.setter
    def total(self, value):
        self._total = value
        self.shown.append((value, self.n))

    def update(self, n=1):
        self.n += n
        self.shown.append((self._total, self.n))

    def refresh(self, *a, **kw):
        pass

    set_postfix_str = set_postfix = close = refresh


def test_progress_of_an_archive_never_goes_backwards(tiny_imdb, tmp_path, monkeypatch):
    """An archive's document count is known only at its end; the bar has a total from the
    start anyway and only moves forward, ending full."""
    import tqdm

    from fastulm.data import pipeline

    root, _ = tiny_imdb
    rng = np.random.default_rng(0)
    unsup = root / "train" / "unsup"
    for i in range(300):  # reviews of many sizes, and members that are not reviews
        (unsup / f"{1000 + i}_0.txt").write_text(f"Review {i}. " * (i % 7 * 90))
        if i % 10 == 0:  # incompressible: the archive is several MB, read in 1 MB steps
            (unsup / f"{1000 + i}_0.dat").write_bytes(rng.bytes(100_000))
    tar = make_tar(root, tmp_path / "a.tar.gz")
    monkeypatch.setattr(tqdm, "tqdm", _Bar)
    monkeypatch.setattr(pipeline, "_BATCH_BYTES", 1 << 16)  # many batches, many updates
    _Bar.shown = []
    tokenize_source(tar, tmp_path / "out", workers=1, progress=True)
    totals = {t for t, _ in _Bar.shown}
    assert len(totals) == 1 and None not in totals, sorted(totals, key=str)[:5]
    (total,) = totals
    done = [n / total for _, n in _Bar.shown]
    assert len(done) > 3 and done == sorted(done) and done[-1] == pytest.approx(1.0)


def test_collected_ids_survive_growing_their_map_many_times():
    """The collector's id buffer grows in place (mremap) from a tiny start: every value
    written before a growth is still there after it, and views see the whole stream."""
    from fastulm.data.pipeline import _Growable

    buf = _Growable(3)
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, 1 << 30, rng.integers(0, 5000), dtype=np.int32) for _ in range(60)]
    for c in chunks:
        buf.extend(c)
    expected = np.concatenate(chunks)
    assert buf.size == len(expected)
    assert np.array_equal(buf.view(), expected)
    assert np.array_equal(buf.view(100, 200), expected[100:200])
