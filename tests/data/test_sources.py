"""Sources: which files are reviews, labels, splits, archives read without extracting."""

import io
import os
import re
import tarfile

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from imdb_fakes import make_imdb, make_tar

from fastulm.data import DataError
from fastulm.data.sources import archive_review_key, iter_tar, open_source


def _records(source):
    return {(r.split, r.id): (r.text, r.label) for r in source.records()}


def test_imdb_folder_reads_only_reviews(tiny_imdb):
    root, expected = tiny_imdb
    source = open_source(root)
    assert source.kind == "imdb-folder"
    assert source.label_names == ["neg", "pos"]
    assert source.n_docs == len(expected)
    assert _records(source) == expected
    # natural order of a folder is the canonical one: split (train, test, unsup) then name
    keys = [(r.split, r.id) for r in source.records()]
    rank = {"train": 0, "test": 1, "unsup": 2}
    assert keys == sorted(keys, key=lambda k: (rank[k[0]], k[1]))


def test_parent_of_aclimdb_folder(tiny_imdb):
    root, expected = tiny_imdb
    assert _records(open_source(root.parent)) == expected


def test_fastai_layout(tmp_path):
    expected = make_imdb(tmp_path / "imdb", fastai_layout=True)
    got = _records(open_source(tmp_path / "imdb"))
    assert got == expected
    assert {k for k in got if k[0] == "unsup"} == {k for k in expected if k[1].startswith("unsup/")}


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("w:gz", tarfile.GNU_FORMAT),
        ("w:gz", tarfile.PAX_FORMAT),
        ("w:bz2", tarfile.USTAR_FORMAT),
        ("w:xz", tarfile.PAX_FORMAT),
        ("w", tarfile.GNU_FORMAT),
    ],
)
def test_archive_same_records_as_folder(tiny_imdb, tmp_path, mode, fmt):
    root, expected = tiny_imdb
    archive = make_tar(root, tmp_path / "a.tar", mode, fmt)
    source = open_source(archive)
    assert source.kind == "imdb-archive"
    assert _records(source) == expected


def _tar_bytes(members, fmt=tarfile.PAX_FORMAT, gz=True):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=fmt) as tf:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
                tf.addfile(info)
            elif kind == tarfile.DIRTYPE:
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_iter_tar_matches_tarfile(tmp_path, fmt):
    long_dir = "aclImdb/train/pos/"
    members = [
        ("aclImdb", b"", tarfile.DIRTYPE),
        (long_dir + "x" * 120 + ".txt", b"long name review", tarfile.REGTYPE),
        ("aclImdb/train/neg/é_1.txt", b"unicode name", tarfile.REGTYPE),
        ("aclImdb/train/neg/empty_2.txt", b"", tarfile.REGTYPE),
        ("aclImdb/train/neg/big_3.txt", os.urandom(5000), tarfile.REGTYPE),
        ("aclImdb/train/neg/link_4.txt", b"", tarfile.SYMTYPE),
    ]
    if fmt == tarfile.USTAR_FORMAT:  # ustar: long names only via the 155-byte prefix field
        members[1] = (
            "aclImdb/train/pos/" + "d" * 90 + "/" + "x" * 90 + ".txt",
            b"deep",
            tarfile.REGTYPE,
        )
    path = tmp_path / "t.tar.gz"
    path.write_bytes(_tar_bytes(members, fmt))
    with tarfile.open(path) as tf:
        want = [(m.name, tf.extractfile(m).read()) for m in tf if m.isfile()]
    assert list(iter_tar(path)) == want


def test_archive_never_writes_and_skips_unsafe_names(tmp_path):
    members = [
        ("../evil.txt", b"escape", tarfile.REGTYPE),
        ("/abs/train/pos/1_1.txt", b"absolute", tarfile.REGTYPE),
        ("aclImdb/train/pos/../../../evil_2.txt", b"escape", tarfile.REGTYPE),
        ("aclImdb/train/pos/link_3.txt", b"", tarfile.SYMTYPE),
        ("aclImdb/train/pos/ok_4.txt", b"fine review", tarfile.REGTYPE),
    ]
    path = tmp_path / "sub" / "bad.tar.gz"
    path.parent.mkdir()
    path.write_bytes(_tar_bytes(members))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    recs = list(open_source(path).records())
    assert [(r.id, r.text, r.label) for r in recs] == [("train/pos/ok_4.txt", "fine review", 1)]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_archive_review_key():
    key = archive_review_key
    assert key("aclImdb/train/pos/0_9.txt") == ("train/pos/0_9.txt", "train", "pos")
    assert key("aclImdb/train/unsup/5_0.txt") == ("train/unsup/5_0.txt", "unsup", None)
    assert key("imdb/unsup/5_0.txt") == ("unsup/5_0.txt", "unsup", None)
    assert key("test/neg/1_2.txt") == ("test/neg/1_2.txt", "test", "neg")
    assert key("data/valid/neutral/3_5.txt") == ("valid/neutral/3_5.txt", "valid", "neutral")
    for name in [
        "aclImdb/train/urls_pos.txt",
        "aclImdb/README",
        "aclImdb/imdb.vocab",
        "aclImdb/train/labeledBow.feat",
        "aclImdb/train/pos/x.md",
        "../x/train/pos/1.txt",
        "aclImdb/train/pos/sub/1_1.txt",
        "/train/pos/1_1.txt",
        "aclImdb/test/unsup/1.txt",
        "aclImdb/train/.cache/1_1.txt",
        "aclImdb/extra/1_1.txt",
    ]:
        assert archive_review_key(name) is None, name


def test_truncated_archive(tiny_imdb, tmp_path):
    root, _ = tiny_imdb
    archive = make_tar(root, tmp_path / "a.tar.gz")
    data = archive.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match=re.escape("cut.tar.gz: truncated")):
        list(open_source(cut).records())


def test_not_an_archive(tmp_path):
    bad = tmp_path / "reviews.tar.gz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 100)
    with pytest.raises(DataError, match=re.escape("reviews.tar.gz")):
        list(open_source(bad).records())
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(DataError, match=re.escape("notes.txt: not a folder")):
        open_source(other)


def test_missing_and_empty_and_no_reviews(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        open_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: empty folder"):
        open_source(tmp_path / "empty")
    junk = tmp_path / "junk"
    (junk / "train" / "pos").mkdir(parents=True)
    (junk / "train" / "urls_pos.txt").write_text("x")
    (junk / "README").write_text("x")
    with pytest.raises(DataError, match="junk: no review files"):
        open_source(junk)
    (tmp_path / "other" / "stuff").mkdir(parents=True)
    (tmp_path / "other" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="other: no review files"):
        open_source(tmp_path / "other")


def test_non_utf8_file_decoded_with_replacement(tiny_imdb):
    root, _ = tiny_imdb
    (root / "train" / "pos" / "99_9.txt").write_bytes(b"Caf\xe9 au lait\r\nnext line")
    recs = {r.id: r.text for r in open_source(root).records()}
    assert recs["train/pos/99_9.txt"] == "Caf\ufffd au lait\nnext line"


CSV = (
    "label,text,is_valid\n"
    'positive,"Great, really ""great"" film",False\n'
    'negative,"Bad\nfilm",True\n'
    "negative,Dull,False\n"
)


def test_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(CSV + "positive,,False\n", encoding="utf-8")
    source = open_source(path)
    assert source.label_names == ["negative", "positive"]
    assert source.splits == ("train", "valid")
    assert source.task == "single_label"
    assert [tuple(r) for r in source.records()] == [
        ('Great, really "great" film', 1, "train", "0"),
        ("Bad\nfilm", 0, "valid", "1"),
        ("Dull", 0, "train", "2"),
        ("", 1, "train", "3"),
    ]


def test_parquet_tsv_jsonl_same_as_csv(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text(CSV, encoding="utf-8")
    table = pa.table(
        {
            "label": ["positive", "negative", "negative"],
            "text": ['Great, really "great" film', "Bad\nfilm", "Dull"],
            "is_valid": [False, True, False],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    pl.from_arrow(table).write_ndjson(tmp_path / "t.jsonl")
    pl.from_arrow(table).write_csv(tmp_path / "t.tsv", separator="\t")
    want = list(open_source(csv_path).records())
    assert len(want) == 3
    for name in ("t.parquet", "t.jsonl", "t.tsv"):
        assert list(open_source(tmp_path / name).records()) == want, name


def test_parquet_integer_labels_sort_numerically(tmp_path):
    table = pa.table({"label": [10, 2, 2], "text": ["a", "b", "c"], "is_valid": [0, 0, 1]})
    pq.write_table(table, tmp_path / "t.parquet")
    source = open_source(tmp_path / "t.parquet")
    assert source.label_names == ["2", "10"]
    assert [r.label for r in source.records()] == [1, 0, 0]


def test_csv_missing_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("label,review,is_valid\npos,hi,0\n")
    with pytest.raises(
        DataError,
        match=re.escape("t.csv: no column 'text' (--text-col); the columns are: label, review,"),
    ):
        open_source(path)
    # without the default label column: unlabelled texts (an LM corpus); without is_valid:
    # every row is training
    path.write_text("text\nhello\nworld\n")
    source = open_source(path)
    assert source.task == "none" and source.label_names == []
    assert [tuple(r) for r in source.records()] == [
        ("hello", -1, "train", "0"),
        ("world", -1, "train", "1"),
    ]


def test_csv_bad_is_valid(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("label,text,is_valid\npos,hi,maybe\nneg,ho,false\n")
    with pytest.raises(DataError, match=re.escape("t.csv: column 'is_valid' must be true/false")):
        open_source(path)


def test_damaged_tar_header(tiny_imdb, tmp_path):
    root, _ = tiny_imdb
    data = bytearray(make_tar(root, tmp_path / "a.tar", "w").read_bytes())
    data[512 + 257 : 512 + 262] = b"xxxxx"  # the second header loses its magic
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(
        DataError, match=r"bad\.tar: damaged tar archive \(bad header at byte 512\)"
    ):
        list(open_source(bad).records())


# macOS copies and archives carry AppleDouble resource forks next to each file
APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02"
HIDDEN_AND_CASED = {
    "train/pos/._0_1.txt": APPLE_DOUBLE,
    "train/neg/.hidden_2.txt": b"a hidden file",
    "train/unsup/._3_0.txt": APPLE_DOUBLE,
    "train/pos/REVIEW_9.TXT": b"Upper case name",
    "test/neg/Mixed_4.Txt": b"Mixed case name",
}
CASED = {
    ("train", "train/pos/REVIEW_9.TXT"): ("Upper case name", 1),
    ("test", "test/neg/Mixed_4.Txt"): ("Mixed case name", 0),
}


def test_folder_skips_hidden_files_and_reads_any_case_txt(tiny_imdb):
    root, expected = tiny_imdb
    for rel, data in HIDDEN_AND_CASED.items():
        (root / rel).write_bytes(data)
    source = open_source(root)
    assert _records(source) == {**expected, **CASED}
    assert source.n_docs == len(expected) + 2


def test_archive_skips_hidden_files_and_reads_any_case_txt(tmp_path):
    members = [("aclImdb/train/pos/0_1.txt", b"a review", tarfile.REGTYPE)]
    members += [("aclImdb/" + rel, data, tarfile.REGTYPE) for rel, data in HIDDEN_AND_CASED.items()]
    path = tmp_path / "mac.tar.gz"
    path.write_bytes(_tar_bytes(members))
    assert _records(open_source(path)) == {("train", "train/pos/0_1.txt"): ("a review", 1), **CASED}
