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


def test_damage_is_reported(tmp_path):
    out = _write(tmp_path / "c")
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
    with pytest.raises(DataError, match="exists and is not empty"):
        _write(target)
    _write(target, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
