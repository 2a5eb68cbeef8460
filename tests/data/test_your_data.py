"""Your own data: tables with any columns, folders of any classes, multi-label, label regex,
random splits, texts of any size, DataFrames in memory, and the answers to bad input."""

import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastulm.data import DataError
from fastulm.data.corpus import open_corpus
from fastulm.data.frame import tokenize_df
from fastulm.data.parts import merge_parts, tokenize_shard
from fastulm.data.pipeline import VocabOptions, tokenize_source
from fastulm.data.sources import OptionError, SourceOptions, open_source
from fastulm.tokenize import main

ALL = VocabOptions(min_freq=1)  # every token in the vocab: decoding gives the tokens back


def _run(src, out, options=ALL, **kw):
    return open_corpus(
        tokenize_source(
            src, out, options, workers=1, progress=False, source_options=SourceOptions(**kw)
        )
    )


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def _docs(corpus, split):
    """(id, decoded tokens, label) of every document of a split."""
    data = corpus[split]
    return [
        (data.doc_ids[i].as_py(), corpus.vocab.decode(data.doc(i)), int(data.labels[i]))
        for i in range(len(data))
    ]


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


# ---------------------------------------------------------------- folders of classes

MOVIES = {
    "train/pos/1_9.txt": "Loved it.",
    "train/pos/2_10.txt": "Great fun.",
    "train/neg/3_1.txt": "Hated it.",
    "train/neg/4_2.txt": "So dull.",
    "train/neutral/5_5.txt": "It was fine.",
    "train/neutral/6_6.txt": "Watchable.",
    "valid/pos/7_8.txt": "Very good.",
    "valid/neutral/8_5.txt": "Average.",
    "unsup/9_0.txt": "No label here.",
}


def test_folder_of_three_classes_with_valid_and_unsup(tmp_path):
    """train/neutral beside neg and pos is a third class (it used to be dropped)."""
    root = _write(tmp_path / "movies", MOVIES)
    corpus = _run(root, tmp_path / "out")
    assert corpus.label_names == ["neg", "neutral", "pos"]
    assert corpus.task == "single_label" and corpus.meta["text_cols"] is None
    assert corpus.split_names == ["train", "valid", "unsup"]
    neg, neutral, pos = 0, 1, 2
    assert _docs(corpus, "train") == [
        ("train/neg/3_1.txt", ["xxbos", "xxmaj", "hated", "it", "."], neg),
        ("train/neg/4_2.txt", ["xxbos", "xxmaj", "so", "dull", "."], neg),
        ("train/neutral/5_5.txt", ["xxbos", "xxmaj", "it", "was", "fine", "."], neutral),
        ("train/neutral/6_6.txt", ["xxbos", "xxmaj", "watchable", "."], neutral),
        ("train/pos/1_9.txt", ["xxbos", "xxmaj", "loved", "it", "."], pos),
        ("train/pos/2_10.txt", ["xxbos", "xxmaj", "great", "fun", "."], pos),
    ]
    assert [(d[0], d[2]) for d in _docs(corpus, "valid")] == [
        ("valid/neutral/8_5.txt", neutral),
        ("valid/pos/7_8.txt", pos),
    ]
    assert [(d[0], d[2]) for d in _docs(corpus, "unsup")] == [("unsup/9_0.txt", -1)]
    assert corpus["train"].label_sets is None


def test_folder_archive_same_corpus(tmp_path):
    root = _write(tmp_path / "movies", MOVIES)
    folder = _run(root, tmp_path / "f")
    with tarfile.open(tmp_path / "m.tar.gz", "w:gz") as tf:
        tf.add(root, arcname="movies")
    archive = _run(tmp_path / "m.tar.gz", tmp_path / "a")
    a, b = _files(folder.path), _files(archive.path)
    assert all(a[k] == b[k] for k in a if k != "meta.json") and a.keys() == b.keys()
    assert archive.label_names == ["neg", "neutral", "pos"]


def test_label_regex_takes_the_class_from_the_file_name(tmp_path):
    """IMDB's <id>_<rating>.txt: the rating is the class, sorted as fastai sorts strings."""
    root = _write(tmp_path / "movies", {k: v for k, v in MOVIES.items() if "valid" not in k})
    corpus = _run(root, tmp_path / "out", label_regex=r"_(\d+)\.txt$")
    assert corpus.label_names == ["1", "10", "2", "5", "6", "9"]  # sorted(str), as CategoryMap
    got = {d[0]: corpus.label_names[d[2]] for d in _docs(corpus, "train")}
    assert got == {k: k.rsplit("_", 1)[1][:-4] for k in MOVIES if k.startswith("train/")}
    assert _docs(corpus, "unsup")[0][2] == -1  # unsup stays unlabelled
    # the same from an archive, whose classes are known only at its end
    with tarfile.open(tmp_path / "m.tar.gz", "w:gz") as tf:
        tf.add(root, arcname="movies")
    archive = _run(tmp_path / "m.tar.gz", tmp_path / "a", label_regex=r"_(\d+)\.txt$")
    assert _files(archive.path)["train.arrow"] == _files(corpus.path)["train.arrow"]
    assert archive.label_names == corpus.label_names


def test_label_regex_no_match_is_an_error_or_dropped(tmp_path):
    root = _write(tmp_path / "m", {**MOVIES, "train/pos/oops.txt": "No rating in my name."})
    shutil_rm(root / "valid")
    with tarfile.open(tmp_path / "m.tar.gz", "w:gz") as tf:
        tf.add(root, arcname="m")
    regex = {"label_regex": r"_(\d+)\.txt$"}
    says = re.escape("no label for 1 file(s): train/pos/oops.txt")
    # a folder fails before tokenizing, an archive once read: the same line, nothing written
    for src in (root, tmp_path / "m.tar.gz"):
        with pytest.raises(DataError, match=says):
            _run(src, tmp_path / "x", **regex)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.tar.gz"]
        corpus = _run(src, tmp_path / "ok", drop_unlabelled=True, **regex)
        assert "train/pos/oops.txt" not in corpus["train"].doc_ids.to_pylist()
        assert corpus.meta["dropped_unlabelled"] == 1
        shutil_rm(corpus.path)


def shutil_rm(path):
    import shutil

    shutil.rmtree(path)


def test_valid_pct_is_a_seeded_random_split(tmp_path):
    files = {f"train/{'ab'[i % 2]}/{i:02d}_1.txt": f"Review number {i}." for i in range(20)}
    root = _write(tmp_path / "m", files)
    c1 = _run(root, tmp_path / "s1", valid_pct=0.25, seed=7)
    c2 = _run(root, tmp_path / "s2", valid_pct=0.25, seed=7)
    c3 = _run(root, tmp_path / "s3", valid_pct=0.25, seed=8)
    ids = sorted(files)
    # fastai's RandomSplitter rule: the first int(pct * n) of a seeded permutation
    perm = np.random.default_rng(7).permutation(20)
    want_valid = sorted(ids[i] for i in perm[:5])
    assert c1["valid"].doc_ids.to_pylist() == want_valid
    assert c1["train"].doc_ids.to_pylist() == sorted(set(ids) - set(want_valid))
    assert _files(c1.path)["valid.arrow"] == _files(c2.path)["valid.arrow"]
    assert c3["valid"].doc_ids.to_pylist() != want_valid
    assert c1.meta["valid_pct"] == 0.25 and c1.meta["seed"] == 7
    with pytest.raises(OptionError, match="has a valid/ or test/ folder already"):
        _run(_write(tmp_path / "v", MOVIES), tmp_path / "x", valid_pct=0.2)


def test_valid_pct_on_an_archive_with_a_test_split_stops_at_its_first_test_member(tmp_path):
    """An archive's layout is known only as it is read: the refusal comes at the first
    valid/ or test/ member, not after tokenizing everything, and nothing is written."""
    root = _write(tmp_path / "v", MOVIES)
    with tarfile.open(tmp_path / "m.tar", "w") as tf:
        for sub in ("train", "unsup", "valid"):  # training members first, valid/ last
            tf.add(root / sub, arcname=f"v/{sub}")
    src = open_source(tmp_path / "m.tar", options=SourceOptions(valid_pct=0.2))
    n_train = sum(1 for k in MOVIES if not k.startswith("valid/"))
    seen = []
    with pytest.raises(OptionError, match="has a valid/ or test/ folder already"):
        for rec in src.raw_records():
            seen.append(rec[2])
    assert len(seen) == n_train and set(seen) == {"train", "unsup"}
    with pytest.raises(OptionError, match="--valid-pct is for archives without"):
        _run(tmp_path / "m.tar", tmp_path / "x", valid_pct=0.2)
    assert not (tmp_path / "x").exists()


def test_folder_bad_layouts(tmp_path):
    flat = _write(tmp_path / "flat", {"train/1.txt": "a", "train/2.txt": "b"})
    with pytest.raises(DataError, match=re.escape("train: no class subfolders")):
        open_source(flat)
    one = _write(tmp_path / "one", {"train/pos/1.txt": "a", "train/pos/2.txt": "b"})
    with pytest.raises(DataError, match=re.escape("one: only one class ('pos') among")):
        open_source(one)
    unseen = _write(tmp_path / "u", {**MOVIES, "valid/angry/1_1.txt": "Grr."})
    with pytest.raises(
        DataError, match=re.escape("class 'angry' of the valid files never appears in the train")
    ):
        open_source(unseen)
    lm = _write(tmp_path / "lm", {"unsup/1.txt": "Just text.", "unsup/2.txt": "More text."})
    assert open_source(lm).task == "none"


@pytest.mark.parametrize(
    "nested, says",
    [
        ("train/pos/part2/9_7.txt", "train/pos/part2: texts in a folder inside train/pos/"),
        ("valid/neutral/more/deeper/9_5.txt", "valid/neutral/more: texts in a folder inside"),
        ("unsup/batch2/9_0.txt", "unsup/batch2: texts in a folder inside unsup/"),
    ],
)
@pytest.mark.parametrize("archive", [False, True])
def test_texts_nested_in_a_class_folder_are_an_error(tmp_path, nested, says, archive):
    """They used to be left out without a word (fastai reads them, labelled by their own
    folder's name: a class no one meant)."""
    src = _write(tmp_path / "m", {**MOVIES, nested: "Left out before."})
    if archive:
        with tarfile.open(tmp_path / "m.tar.gz", "w:gz") as tf:
            tf.add(src, arcname="m")
        src = tmp_path / "m.tar.gz"
    with pytest.raises(DataError, match=re.escape(says)):
        _run(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hidden_and_non_text_folders_in_a_class_folder_are_fine(tmp_path):
    extra = {"train/pos/.ipynb_checkpoints/1_9-checkpoint.txt": "x", "train/neg/img/a.png": "x"}
    src = _write(tmp_path / "m", {**MOVIES, **extra})
    got = _files(_run(src, tmp_path / "a").path)
    want = _files(_run(_write(tmp_path / "plain", MOVIES), tmp_path / "b").path)
    del got["meta.json"], want["meta.json"]  # it names the source
    assert got == want


# ---------------------------------------------------------------- tables

TABLE = pd.DataFrame(
    {
        "title": ["Great", "Awful", "Fine", "Superb", "Meh", "Bad"],
        "body": ["I LOVED it!!!", "Worst film.", "It's OK.", "A masterpiece.", "So so.", "No."],
        "genres": ["drama;comedy", "horror", "comedy", "drama", "", "horror;comedy"],
        "stars": [5, 1, 3, 5, 3, 1],
        "split": [False, False, False, True, True, False],
    }
)


def test_text_label_and_valid_columns(tmp_path):
    path = tmp_path / "t.csv"
    TABLE.to_csv(path, index=False)
    corpus = _run(path, tmp_path / "out", text_cols=["body"], label_col="stars", valid_col="split")
    assert corpus.label_names == ["1", "3", "5"]  # int column: numeric order
    assert corpus.meta["text_cols"] == ["body"]
    train = _docs(corpus, "train")
    assert [(d[0], d[2]) for d in train] == [("0", 2), ("1", 0), ("2", 1), ("5", 0)]
    assert train[0][1] == ["xxbos", "i", "xxup", "loved", "it", "xxrep", "3", "!"]
    assert [(d[0], d[2]) for d in _docs(corpus, "valid")] == [("3", 2), ("4", 1)]


def test_several_text_columns_are_marked_fields(tmp_path):
    path = tmp_path / "t.csv"
    TABLE.to_csv(path, index=False)
    corpus = _run(path, tmp_path / "out", text_cols=["title", "body"], label_col="stars")
    assert _docs(corpus, "train")[1][1] == [
        *["xxbos", "xxfld", "1", "xxmaj", "awful"],
        *["xxfld", "2", "xxmaj", "worst", "film", "."],
    ]
    assert corpus.meta["text_cols"] == ["title", "body"]


def test_multi_label(tmp_path):
    path = tmp_path / "t.csv"
    TABLE.to_csv(path, index=False)
    corpus = _run(path, tmp_path / "out", text_cols=["body"], label_col="genres", label_delim=";")
    assert corpus.task == "multi_label" and corpus.label_delim == ";"
    assert corpus.label_names == ["comedy", "drama", "horror"]
    meta = json.loads((corpus.path / "meta.json").read_text())
    assert meta["task"] == "multi_label" and meta["label_delim"] == ";"
    offsets, values = corpus["train"].label_sets
    assert offsets.dtype == np.int64 and values.dtype == np.int32
    sets = [values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]
    # no is_valid column: rows 0-5 all train; "" (row 4) is a row with no class
    assert sets == [[0, 1], [2], [0], [1], [], [0, 2]]
    assert corpus["train"].labels.tolist() == [0] * 6
    # the files alone, read with polars
    df = pl.read_ipc(corpus.path / "train.arrow")
    assert df.columns == ["ids", "label", "id", "labels"]
    assert df["labels"].to_list() == sets
    assert "comedy;drama" in corpus.show("train", n=6)


def test_multi_label_valid_class_unseen_in_training(tmp_path):
    df = pl.DataFrame({"text": ["a", "b", "c"], "label": ["x;y", "y", "z"], "is_valid": [0, 0, 1]})
    with pytest.raises(
        DataError, match=re.escape("<DataFrame>: class 'z' of the valid rows never appears")
    ):
        tokenize_df(df, tmp_path / "out", label_delim=";")
    assert not (tmp_path / "out").exists()


def test_nulls_in_text_are_empty_texts_counted(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [
        {"text": "Fine film.", "label": "a", "is_valid": False},
        {"text": None, "label": "b", "is_valid": False},
        {"text": "  ", "label": "a", "is_valid": True},
        {"text": "Good.", "label": "b", "is_valid": False},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = _run(path, tmp_path / "out")
    assert corpus.meta["empty_texts"] == {"train": 1, "valid": 1}
    assert _docs(corpus, "train")[1][1] == ["xxbos"]
    # several text columns: a row whose fields are all empty is empty too
    df = pl.DataFrame({"a": ["x", None, ""], "b": ["y", None, None], "label": ["p", "q", "p"]})
    two = open_corpus(tokenize_df(df, tmp_path / "two", text_cols=["a", "b"], min_freq=1))
    assert two.meta["empty_texts"] == {"train": 2}


def test_empty_label_cells_name_the_rows_or_are_dropped(tmp_path):
    df = pl.DataFrame({"text": ["a", "b", "c", "d"], "label": ["x", None, "y", ""]})
    with pytest.raises(DataError, match=re.escape("no label for 2 row(s): 1, 3;")):
        tokenize_df(df, tmp_path / "out")
    corpus = open_corpus(tokenize_df(df, tmp_path / "out", drop_unlabelled=True))
    assert corpus["train"].doc_ids.to_pylist() == ["0", "2"]  # the rows keep their numbers
    assert corpus.meta["dropped_unlabelled"] == 2  # left out before tokenizing


def test_tokenize_df_pandas_and_polars_equal_the_csv(tmp_path):
    path = tmp_path / "t.csv"
    TABLE.to_csv(path, index=False)
    kw = dict(text_cols=["title", "body"], label_col="stars", valid_col="split")
    from_csv = _run(path, tmp_path / "csv", VocabOptions(), **kw)
    from_pd = tokenize_df(TABLE, tmp_path / "pd", **kw)
    from_pl = tokenize_df(pl.from_pandas(TABLE), tmp_path / "pl", **kw)
    want = _files(from_csv.path)
    for got in (from_pd, from_pl):
        files = _files(got)
        assert files.keys() == want.keys()
        assert all(files[k] == want[k] for k in want if k != "meta.json")
    import fastulm

    assert fastulm.tokenize_df is tokenize_df


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "parquet"])
def test_5mb_text_reads_from_every_format(tmp_path, kind):
    """pyarrow's CSV reader stopped at fields over its 1 MB block."""
    big = ("A long review, again and again. " * 160_000)[:5_000_000]
    df = pl.DataFrame({"label": ["a", "b"], "text": [big, "short"], "is_valid": [False, False]})
    path = tmp_path / f"t.{kind}"
    {
        "csv": lambda: df.write_csv(path),
        "tsv": lambda: df.write_csv(path, separator="\t"),
        "jsonl": lambda: df.write_ndjson(path),
        "parquet": lambda: df.write_parquet(path),
    }[kind]()
    texts = [r.text for r in open_source(path).records()]
    assert texts == [big, "short"]


def test_5mb_text_tokenized(tmp_path):
    one = "A long review, again and again. "
    big = one * 160_000
    path = tmp_path / "t.csv"
    pl.DataFrame({"text": [big, "short"], "label": ["a", "b"]}).write_csv(path)
    corpus = _run(path, tmp_path / "out")
    doc = corpus["train"].doc(0)
    assert len(big) > 5_000_000
    # "a long review , again and again ." per copy (fastai's xxmaj skips one-letter words)
    assert len(doc) == 1 + 8 * 160_000
    assert corpus.decode(doc[:17]) == "xxbos" + " a long review , again and again ." * 2


def test_table_bad_input(tmp_path):
    path = tmp_path / "t.csv"
    TABLE.to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        open_source(path, options=SourceOptions(text_cols=["body"], label_col="genre"))
    assert str(err.value) == (
        f"{path}: no column 'genre' (--label-col); the columns are: title, body, genres, stars,"
        " split"
    )
    with pytest.raises(DataError, match=re.escape("only one class ('1') among the training rows")):
        df = pl.DataFrame({"text": ["a", "b"], "label": [1, 1]})
        open_source_df(df)
    with pytest.raises(DataError, match=re.escape("class '3' of the valid rows never appears")):
        open_source_df(pl.DataFrame({"text": list("abc"), "label": [1, 2, 3], "v": [0, 0, 1]}), "v")


def open_source_df(df, valid_col=None):
    from fastulm.data.frame import frame_source

    return frame_source(df, "<DataFrame>", "frame", SourceOptions(valid_col=valid_col))


@pytest.mark.parametrize(
    "kw, says",
    [
        (dict(valid_pct=0.0), "--valid-pct must be between 0 and 1 (exclusive), got 0.0"),
        (dict(valid_pct=1.5), "--valid-pct must be between 0 and 1 (exclusive), got 1.5"),
        (dict(valid_pct=0.2, valid_col="split"), "--valid-col and --valid-pct exclude each other"),
        (dict(label_regex="[0-9]+"), "--label-regex reads file names"),
        (dict(label_delim=""), "--label-delim must not be empty"),
    ],
)
def test_option_errors(tmp_path, kw, says):
    path = tmp_path / "t.csv"
    TABLE.to_csv(path, index=False)
    with pytest.raises(OptionError, match=re.escape(says)):
        open_source(path, options=SourceOptions(text_cols=["body"], **kw))


# ---------------------------------------------------------------- the command line


def _cli_error(capsys, *argv, code=1):
    if code == 2:
        with pytest.raises(SystemExit) as stop:
            main([str(a) for a in argv])
        assert stop.value.code == 2
        return capsys.readouterr().err.strip().splitlines()[-1]
    assert main([str(a) for a in argv]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastulm.tokenize: error: "), err
    return err[0]


def test_cli_bad_input_one_line_nothing_written(capsys, tmp_path):
    path = tmp_path / "t.csv"
    TABLE.to_csv(path, index=False)
    out = tmp_path / "out"
    q = ["--quiet", "--workers", "1"]
    assert "the columns are: title, body, genres, stars, split" in _cli_error(
        capsys, path, out, "--text-col", "body", "--label-col", "nope", *q
    )
    pl.DataFrame({"text": ["a", "b", "c"], "label": ["x", None, "y"]}).write_csv(tmp_path / "e.csv")
    assert "e.csv: no label for 1 row(s): 1;" in _cli_error(capsys, tmp_path / "e.csv", out, *q)
    one = _write(tmp_path / "one", {"train/pos/1.txt": "a", "train/pos/2.txt": "b"})
    assert "only one class ('pos')" in _cli_error(capsys, one, out, *q)
    unseen = _write(tmp_path / "u", {**MOVIES, "valid/angry/1_1.txt": "Grr."})
    assert "class 'angry' of the valid files" in _cli_error(capsys, unseen, out, *q)
    flat = _write(tmp_path / "flat", {"train/1.txt": "a"})
    assert "train: no class subfolders" in _cli_error(capsys, flat, out, *q)
    err = _cli_error(capsys, path, out, "--text-col", "body", "--valid-pct", "1", code=2)
    assert err.endswith("--valid-pct must be between 0 and 1 (exclusive), got 1.0")
    err = _cli_error(capsys, one, out, "--label-col", "x", code=2)
    assert err.endswith("--label-col is for tables (CSV, TSV, JSONL, Parquet)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.csv", "flat", "one", "t.csv", "u"]


def test_cli_columns_and_multi_label(tmp_path):
    path = tmp_path / "t.tsv"
    TABLE.to_csv(path, index=False, sep="\t")
    out = tmp_path / "out"
    argv = [str(path), str(out), "--text-col", "title", "--text-col", "body"]
    argv += ["--label-col", "genres", "--label-delim", ";", "--valid-pct", "0.3", "--seed", "1"]
    assert main([*argv, "--quiet", "--workers", "1"]) == 0
    corpus = open_corpus(out)
    assert corpus.task == "multi_label" and corpus.label_names == ["comedy", "drama", "horror"]
    assert corpus.meta["text_cols"] == ["title", "body"]
    perm = np.random.default_rng(1).permutation(6)
    assert corpus["valid"].doc_ids.to_pylist() == [str(i) for i in sorted(perm[:1])]


# ---------------------------------------------------------------- shards


def test_shards_of_multi_label_and_regex_archives_merge_to_a_single_run(tmp_path):
    path = tmp_path / "t.parquet"
    TABLE.to_parquet(path)
    kw = dict(text_cols=["body"], label_col="genres", label_delim=";", valid_col="split")
    root = _write(tmp_path / "movies", {k: v for k, v in MOVIES.items() if "valid" not in k})
    with tarfile.open(tmp_path / "m.tar.gz", "w:gz") as tf:
        tf.add(root, arcname="movies")
    regex = dict(label_regex=r"_(\d+)\.txt$")
    for name, src, opts in (("t", path, kw), ("m", tmp_path / "m.tar.gz", regex)):
        single = _run(src, tmp_path / f"{name}-single", VocabOptions(), **opts)
        parts = [
            tokenize_shard(
                src,
                tmp_path / f"{name}-p{i}",
                3,
                i,
                workers=1,
                progress=False,
                source_options=SourceOptions(**opts),
            )
            for i in range(3)
        ]
        merged = merge_parts(parts, tmp_path / f"{name}-merged")
        assert _files(merged) == {k: v for k, v in _files(single.path).items()}, name


# ---------------------------------------------------------------- parity with fastai


@pytest.mark.reference
def test_splits_labels_and_fields_match_fastai(fastai_text, tmp_path):
    """The same split (ColSplitter), class order (CategoryMap, MultiCategorize) and
    xxfld token streams (tokenize_df with two text columns) as fastai on the same file."""
    from fastai.data.transforms import ColReader, ColSplitter, MultiCategorize

    path = tmp_path / "t.csv"
    TABLE.to_csv(path, index=False)
    df = pd.read_csv(path)
    single = _run(
        path, tmp_path / "s", text_cols=["title", "body"], label_col="stars", valid_col="split"
    )
    train_idx, valid_idx = ColSplitter("split")(df)
    assert [int(i) for i in single["train"].doc_ids.to_pylist()] == list(train_idx)
    assert [int(i) for i in single["valid"].doc_ids.to_pylist()] == list(valid_idx)
    vocab = fastai_text.CategoryMap(df["stars"].iloc[list(train_idx)])
    assert single.label_names == [str(v) for v in vocab]
    tok, _ = fastai_text.tokenize_df(df, text_cols=["title", "body"], n_workers=1)
    want = [list(t) for t in tok["text"]]
    got = {int(d[0]): d[1] for s in ("train", "valid") for d in _docs(single, s)}
    assert [got[i] for i in range(len(df))] == want
    assert want[0][:3] == ["xxbos", "xxfld", "1"]

    multi = _run(path, tmp_path / "m", text_cols=["body"], label_col="genres", label_delim=";")
    df["genres"] = df["genres"].fillna("")
    items = [ColReader("genres", label_delim=";")(row) for _, row in df.iterrows()]
    mc = MultiCategorize()
    mc.setups(items)
    assert multi.label_names == list(mc.vocab)
    offsets, values = multi["train"].label_sets
    for i, item in enumerate(items):
        want_ids = sorted(mc.vocab.o2i[x] for x in item)
        assert values[offsets[i] : offsets[i + 1]].tolist() == want_ids


@pytest.mark.reference
def test_folder_classes_match_fastai(fastai_text, tmp_path):
    """fastai's parent_label + CategoryMap on the training files give our class order."""
    from fastai.data.transforms import parent_label

    root = _write(tmp_path / "movies", MOVIES)
    corpus = _run(root, tmp_path / "out")
    files = sorted((root / "train").glob("*/*.txt"))
    vocab = fastai_text.CategoryMap([parent_label(f) for f in files])
    assert corpus.label_names == list(vocab)
    labels = {d[0]: d[2] for d in _docs(corpus, "train")}
    assert labels == {f"train/{f.parent.name}/{f.name}": vocab.o2i[parent_label(f)] for f in files}


# ---------------------------------------------------------------- corpus files


def test_damaged_label_sets_are_caught(tmp_path):
    df = pl.DataFrame({"text": ["a", "b"], "label": ["x;y", "y"]})
    out = tokenize_df(df, tmp_path / "c", label_delim=";")
    table = pa.ipc.open_file(str(out / "train.arrow")).read_all()
    bad = table.set_column(3, "labels", pa.array([[0, 1], [5]], pa.large_list(pa.int32())))
    with (
        pa.OSFile(str(out / "train.arrow"), "wb") as sink,
        pa.ipc.new_file(sink, bad.schema) as writer,
    ):
        writer.write_table(bad)
    with pytest.raises(DataError, match=r"train.arrow: damaged \(its sha256 does not match"):
        open_corpus(out)
    meta = json.loads((out / "meta.json").read_text())
    del meta["sha256"]  # as a corpus written before checksums: the value check still guards it
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="class id 5 of document 1 is not one of the 2 label names"):
        open_corpus(out)


def test_old_single_label_corpus_keeps_its_three_columns(tmp_path, imdb_sample):
    """A single-label corpus keeps the 3-column schema; a corpus without "task" in its
    meta.json (written before tasks) opens as single-label."""
    root = _write(tmp_path / "movies", MOVIES)
    corpus = _run(root, tmp_path / "out")
    assert pa.ipc.open_file(str(corpus.path / "train.arrow")).schema.names == ["ids", "label", "id"]
    meta = json.loads((corpus.path / "meta.json").read_text())
    for key in ("task", "label_delim", "text_cols", "empty_texts"):
        del meta[key]
    (corpus.path / "meta.json").write_text(json.dumps(meta))
    old = open_corpus(corpus.path)
    assert old.task == "single_label" and old.label_delim is None
    assert old["train"].label_sets is None


def test_parquet_written_by_pyarrow(tmp_path):
    table = pa.table({"text": ["x y", "z"], "label": ["b", "a"], "is_valid": [False, False]})
    pq.write_table(table, tmp_path / "t.parquet")
    corpus = _run(tmp_path / "t.parquet", tmp_path / "out")
    assert corpus.label_names == ["a", "b"]
    assert corpus["train"].labels.tolist() == [1, 0]


# ---------------------------------------------------------------- list-typed label columns

GENRE_LISTS = [["drama", "comedy"], ["horror"], ["comedy"], ["drama"], [], ["horror", "comedy"]]


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "pandas", "polars"])
def test_list_label_cells_are_a_rows_classes(tmp_path, kind):
    """A list cell (Parquet list<string>, a JSON array, a pandas column of lists) holds the
    row's classes, as fastai's ColReader hands a list to MultiCategorize: the same corpus
    as the ";"-joined cells of a CSV."""
    body = list(TABLE["body"])
    csv_path = tmp_path / "t.csv"
    TABLE.to_csv(csv_path, index=False)
    want = _run(
        csv_path, tmp_path / "want", text_cols=["body"], label_col="genres", label_delim=";"
    )
    frame = pl.DataFrame({"body": body, "genres": GENRE_LISTS})
    if kind == "parquet":
        frame.write_parquet(tmp_path / "t.parquet")
        got = _run(tmp_path / "t.parquet", tmp_path / "got", text_cols=["body"], label_col="genres")
    elif kind == "jsonl":
        with open(tmp_path / "t.jsonl", "w") as f:
            for b, g in zip(body, GENRE_LISTS):
                f.write(json.dumps({"body": b, "genres": g}) + "\n")
        got = _run(tmp_path / "t.jsonl", tmp_path / "got", text_cols=["body"], label_col="genres")
    else:
        df = pd.DataFrame({"body": body, "genres": GENRE_LISTS}) if kind == "pandas" else frame
        got = open_corpus(
            tokenize_df(df, tmp_path / "got", text_cols="body", label_col="genres", min_freq=1)
        )
    assert got.task == "multi_label" and got.label_delim == ";"
    assert got.label_names == want.label_names == ["comedy", "drama", "horror"]
    assert [list(s) for s in _sets(got)] == [list(s) for s in _sets(want)]
    # with --label-delim too, the items are the classes (not split again, no traceback)
    frame.write_parquet(tmp_path / "d.parquet")
    again = _run(
        tmp_path / "d.parquet",
        tmp_path / "d",
        text_cols=["body"],
        label_col="genres",
        label_delim="|",
    )
    assert again.label_names == want.label_names and again.label_delim == "|"


def _sets(corpus, split="train"):
    offsets, values = corpus[split].label_sets
    return [values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


def test_a_multi_label_column_with_no_class_is_one_error(tmp_path, capsys):
    path = tmp_path / "t.csv"
    pl.DataFrame({"text": ["a", "b"], "genres": ["", None]}).write_csv(path)
    out = tmp_path / "out"
    argv = [str(path), str(out), "--label-col", "genres", "--label-delim", ";", "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no training row has a class" in err[0]
    assert not out.exists()


def test_a_struct_label_column_is_one_error(tmp_path):
    df = pl.DataFrame({"text": ["a", "b"], "label": [{"x": 1}, {"x": 2}]})
    with pytest.raises(DataError, match="column 'label' must hold labels"):
        tokenize_df(df, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.reference
def test_multi_label_cells_split_as_fastai_splits_them(fastai_text, tmp_path):
    """Spaces around a name are part of it, as in fastai (ColReader only splits)."""
    from fastai.data.transforms import ColReader, MultiCategorize

    df = pd.DataFrame({"text": ["a", "b", "c"], "genres": ["drama; comedy", "comedy", " horror"]})
    corpus = open_corpus(tokenize_df(df, tmp_path / "o", label_col="genres", label_delim=";"))
    items = [ColReader("genres", label_delim=";")(row) for _, row in df.iterrows()]
    mc = MultiCategorize()
    mc.setups(items)
    assert corpus.label_names == list(mc.vocab) == [" comedy", " horror", "comedy", "drama"]
    for i, item in enumerate(items):
        assert _sets(corpus)[i] == sorted(mc.vocab.o2i[x] for x in item)


def test_tokenize_df_names_a_pandas_column_of_mixed_types(tmp_path):
    df = pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", 2, "x"]})
    with pytest.raises(DataError, match=r"column 'label' mixes types .*astype\(str\)"):
        tokenize_df(df, tmp_path / "out")
    with pytest.raises(DataError, match=r"not a pandas or polars DataFrame \(list\)"):
        tokenize_df([["a", "x"]], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name, body, says",
    [
        (
            "bad.jsonl",
            '{"text":"a","label":"x"}\n{"text": "b", "label"\n',
            "line 2 is not valid JSON",
        ),
        ("arr.jsonl", '{"text":"a","label":"x"}\n\n[1, 2]\n', "line 3 is not a JSON object"),
        ("rag.csv", "text,label\na,x\nb,y,z\nc,x\n", "line 3 has 3 fields, the header has 2"),
        ("rag.tsv", "text\tlabel\na\tx\nb\ty\tz\n", "line 3 has 3 fields, the header has 2"),
        # saved as Latin-1 / cp1252: polars said only "invalid utf-8 sequence"
        ("l1.csv", "text,label\na,x\ncaf\xe9,y\n", "line 3 is not UTF-8 (byte 0xe9)"),
        (
            "l1.jsonl",
            '{"text":"a","label":"x"}\n{"text":"\x93b\x94","label":"y"}\n',
            "line 2 is not UTF-8 (byte 0x93)",
        ),
    ],
)
def test_a_broken_table_names_the_line_to_fix(tmp_path, capsys, name, body, says):
    (tmp_path / name).write_bytes(body.encode("latin-1"))
    assert main([str(tmp_path / name), str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "out").exists()
