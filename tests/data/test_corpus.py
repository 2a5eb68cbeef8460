"""The corpus on disk: read back by pyarrow and polars, opened zero-copy, damage detected."""

import json
import re

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from fastulm.data import DataError
from fastulm.data.corpus import OutputDir, open_corpus, split_batch, write_corpus
from fastulm.data.vocab import Vocab
from fastulm.files import WriteError

ITOS = [
    "xxunk",
    "xxpad",
    "xxbos",
    "xxeos",
    "xxfld",
    "xxrep",
    "xxwrep",
    "xxup",
    "xxmaj",
    "the",
    "film",
    ".",
] + ["xxfake"] * 4
DOCS = {
    "train": ([[2, 9, 10, 11], [2, 8, 10], [2]], [0, 1, 1], ["train/neg/0_1.txt", "b", "c"]),
    "test": ([[2, 0, 11, 9, 9]], [-1], ["x"]),
}


def _write(path, **kw):
    batches = {}
    for name, (docs, labels, ids) in DOCS.items():
        values = np.concatenate([np.array(d, np.int32) for d in docs])
        offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
        batches[name] = split_batch(values, offsets, np.array(labels), ids)
    return write_corpus(path, Vocab(ITOS), batches, {"label_names": ["neg", "pos"]}, **kw)


def test_read_back_with_pyarrow_and_polars(tmp_path):
    out = _write(tmp_path / "c")
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json",
        "test.arrow",
        "train.arrow",
        "vocab.json",
    ]
    for name, (docs, labels, ids) in DOCS.items():
        table = pa.ipc.open_file(str(out / f"{name}.arrow")).read_all()
        assert table.schema.field("ids").type == pa.large_list(pa.int32())
        assert table.column("ids").to_pylist() == docs
        assert table.column("label").to_pylist() == labels
        assert table.column("id").to_pylist() == ids
        df = pl.read_ipc(out / f"{name}.arrow")
        assert df["ids"].to_list() == docs
        assert df["label"].to_list() == labels
        assert df["id"].to_list() == ids
        assert df["ids"].list.len().to_list() == [len(d) for d in docs]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["test"] == {"docs": 1, "tokens": 5, "unknown_rate": 0.2}
    assert meta["vocab_size"] == len(ITOS)


def test_open_is_zero_copy(tmp_path):
    out = _write(tmp_path / "c")
    before = pa.total_allocated_bytes()
    corpus = open_corpus(out)
    train = corpus["train"]
    assert pa.total_allocated_bytes() - before < 1024  # nothing copied into Arrow memory
    for arr in (train.ids, train.offsets, train.labels):
        assert not arr.flags.owndata and not arr.flags.writeable  # views of the mapped file
    assert train.ids.dtype == np.int32 and train.offsets.dtype == np.int64
    assert [train.doc(i).tolist() for i in range(len(train))] == DOCS["train"][0]
    assert train.lengths.tolist() == [4, 3, 1]
    assert train.labels.tolist() == [0, 1, 1]
    assert train.doc_ids.to_pylist() == DOCS["train"][2]
    assert corpus.split_names == ["train", "test"]
    assert corpus.label_names == ["neg", "pos"]
    assert corpus.decode(train.doc(0)) == "xxbos the film ."
    shown = corpus.show("train", n=2)
    assert "train/neg/0_1.txt] (neg, 4 tokens) xxbos the film ." in shown


def test_fastulm_open_corpus_is_the_same(tmp_path):
    import fastulm

    out = _write(tmp_path / "c")
    assert fastulm.open_corpus(out)["test"].ids.tolist() == [2, 0, 11, 9, 9]


def _unseal(out):
    """Drop meta.json's checksums, as in a corpus written before them: the checks below
    are what still guards such a corpus."""
    meta = json.loads((out / "meta.json").read_text())
    del meta["sha256"]
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def test_damage_is_reported(tmp_path):
    out = _unseal(_write(tmp_path / "c"))
    data = (out / "train.arrow").read_bytes()
    (out / "train.arrow").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=re.escape("train.arrow: not a readable corpus file")):
        open_corpus(out)
    out = _write(tmp_path / "d")
    meta = json.loads((out / "meta.json").read_text())
    meta["splits"]["test"]["tokens"] = 6
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=re.escape("meta.json says 1 / 6")):
        open_corpus(out)
    (out / "meta.json").unlink()
    with pytest.raises(DataError, match="not a complete fastulm corpus"):
        open_corpus(out)
    with pytest.raises(DataError, match="no such corpus folder"):
        open_corpus(tmp_path / "nope")


def test_output_dir_is_atomic(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), OutputDir(target) as o:
        (o.tmp / "half.arrow").write_text("x")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []  # neither OUT nor a temporary
    _write(target)
    with pytest.raises(WriteError, match="a corpus is already there"):
        _write(target)
    _write(target, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _overwrite(path, old: np.ndarray, new: np.ndarray) -> None:
    """Replace the one place ``old``'s bytes occur in ``path`` with ``new``'s: damage inside
    the data region, which Arrow's own checks on opening do not look at."""
    data = path.read_bytes()
    at = data.find(old.tobytes())
    assert at >= 0 and data.find(old.tobytes(), at + 1) < 0
    path.write_bytes(data[:at] + new.tobytes() + data[at + len(old.tobytes()) :])


@pytest.mark.parametrize("bad", [0x7FFFFFFF, len(ITOS), -3])
def test_token_id_outside_the_vocab_is_damage(tmp_path, bad):
    out = _unseal(_write(tmp_path / "c"))
    ids = np.array([2, 9, 10, 11, 2, 8, 10, 2], np.int32)  # train's documents end to end
    damaged = ids.copy()
    damaged[5] = bad  # the 8 of the second document
    _overwrite(out / "train.arrow", ids, damaged)
    want = f"train.arrow: damaged: token id {bad} at position 5 (document 1)"
    with pytest.raises(DataError, match=re.escape(want)):
        open_corpus(out)


def test_label_outside_label_names_is_damage(tmp_path):
    out = _unseal(_write(tmp_path / "c"))
    _overwrite(out / "train.arrow", np.array([0, 1, 1], np.int64), np.array([0, 1, 2], np.int64))
    with pytest.raises(DataError, match=re.escape("train.arrow: damaged: label 2 of document 2")):
        open_corpus(out)


def test_offsets_going_backwards_are_damage(tmp_path):
    out = _unseal(_write(tmp_path / "c"))
    offsets = np.array([0, 4, 7, 8], np.int64)
    _overwrite(out / "train.arrow", offsets, np.array([0, 4, 3, 8], np.int64))
    with pytest.raises(DataError, match=re.escape("train.arrow: damaged: document 1 has a neg")):
        open_corpus(out)


def test_damage_that_stays_in_range_is_caught_by_the_checksums(tmp_path):
    """A token id changed into another valid id passes every value check; meta.json's
    sha256 of each file catches it, and a changed vocab.json too."""
    out = _write(tmp_path / "c")
    ids = np.array([2, 9, 10, 11, 2, 8, 10, 2], np.int32)
    damaged = ids.copy()
    damaged[5] = 9  # "xxmaj" -> "the": still inside the vocab
    _overwrite(out / "train.arrow", ids, damaged)
    want = "train.arrow: damaged (its sha256 does not match meta.json); tokenize again"
    with pytest.raises(DataError, match=re.escape(want)):
        open_corpus(out)
    out = _write(tmp_path / "d")
    vocab = json.loads((out / "vocab.json").read_text())
    vocab[9], vocab[10] = vocab[10], vocab[9]
    (out / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(DataError, match=re.escape("vocab.json: damaged (its sha256 does not")):
        open_corpus(out)


def test_checksums_list_every_file_and_old_corpora_still_open(tmp_path):
    out = _write(tmp_path / "c")
    meta = json.loads((out / "meta.json").read_text())
    assert sorted(meta["sha256"]) == ["test.arrow", "train.arrow", "vocab.json"]
    assert open_corpus(_unseal(out))["train"].ids.tolist() == [2, 9, 10, 11, 2, 8, 10, 2]
    out = _write(tmp_path / "d")
    meta = json.loads((out / "meta.json").read_text())
    del meta["sha256"]["test.arrow"]
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=re.escape("meta.json: damaged (its sha256 table")):
        open_corpus(out)


def test_splits_written_in_any_order_are_listed_in_the_given_order(tmp_path):
    """finish builds the largest split first; meta.json still lists them canonically."""
    first = _write(tmp_path / "a")
    batches = {}
    for name, (docs, labels, ids) in reversed(DOCS.items()):
        values = np.concatenate([np.array(d, np.int32) for d in docs])
        offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
        batches[name] = split_batch(values, offsets, np.array(labels), ids)
    assert list(batches) == ["test", "train"]
    meta = {"label_names": ["neg", "pos"]}
    second = write_corpus(tmp_path / "b", Vocab(ITOS), batches, meta, order=["train", "test"])
    for name in ("meta.json", "train.arrow", "test.arrow", "vocab.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    unordered = write_corpus(tmp_path / "c", Vocab(ITOS), batches, meta)
    assert list(json.loads((unordered / "meta.json").read_text())["splits"]) == ["test", "train"]
