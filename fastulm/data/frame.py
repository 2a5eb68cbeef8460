"""Tables as sources: CSV, TSV, JSONL and Parquet files, or a pandas/polars frame in memory.

polars reads every format (its CSV reader takes fields of any size, where pyarrow's stops at
its 1 MB block). The text of a row is its text column, or with several text columns their
fields joined as fastai's ``tokenize_df`` joins them (``xxfld 1 <a> xxfld 2 <b>``). Labels
get fastai's class order (sorted unique values); ``label_delim`` splits multi-label cells.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from fastulm.data import DataError, not_utf8
from fastulm.data.labels import check_labels
from fastulm.data.sources import TABLE_SPLITS, RawRecord, Source, SourceOptions

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def read_table(path: Path, kind: str, text_cols: Sequence[str]):
    """The file as a polars DataFrame; text columns are read as text, whatever they hold."""
    import polars as pl

    try:
        if kind in ("csv", "tsv"):
            return pl.read_csv(
                path,
                separator="\t" if kind == "tsv" else ",",
                schema_overrides={c: pl.String for c in text_cols},
                infer_schema_length=None,
            )
        if kind == "jsonl":
            return pl.read_ndjson(path, infer_schema_length=None)
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError, ValueError) as err:
        where = _bad_line(path, kind)
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: cannot read as {kind.upper()} ({where or msg})") from None


def _bad_line(path: Path, kind: str) -> str | None:
    """The first line a user can go and fix (polars names a byte offset, or nothing): bytes
    that are not UTF-8 (a file saved as Latin-1 or cp1252), a JSONL line that is not a JSON
    object, a CSV row with another number of fields than the header. Read again only on
    this error path."""
    import csv
    import json

    if kind not in ("csv", "tsv", "jsonl"):
        return None
    try:
        data = path.read_bytes()
        data.decode("utf-8")
    except OSError:
        return None
    except UnicodeDecodeError as err:
        return not_utf8(data, err)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if kind == "jsonl":
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            obj = json.loads(line)
                        except ValueError as err:
                            return f"line {n} is not valid JSON: {err.msg}"
                        if not isinstance(obj, dict):
                            return f"line {n} is not a JSON object"
            elif kind in ("csv", "tsv"):
                csv.field_size_limit(2**31 - 1)
                rows = csv.reader(f, delimiter="\t" if kind == "tsv" else ",")
                header = next(rows, [])
                for row in rows:
                    if row and len(row) != len(header):
                        return (
                            f"line {rows.line_num} has {len(row)} fields, "
                            f"the header has {len(header)}"
                        )
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None


def open_table(path: Path, kind: str, options: SourceOptions) -> Source:
    df = read_table(path, kind, list(options.text_cols or ["text"]))
    return frame_source(df, str(path), kind, options)


def _column(df, name: str | None, default: str, where: str, flag: str):
    """The column asked for, None when the default one is absent; a missing column that was
    asked for by name is an error listing the columns there are."""
    col = name or default
    if col in df.columns:
        return df[col]
    if name is None:
        return None
    found = ", ".join(df.columns) or "none"
    raise DataError(f"{where}: no column {col!r} ({flag}); the columns are: {found}")


def _texts(df, text_cols: list[str], where: str):
    """One string per row: the text column, or the fields marked as fastai marks them."""
    import polars as pl

    cols = []
    for c in text_cols:
        s = _column(df, c, c, where, "--text-col")
        if s.dtype == pl.Null or isinstance(s.dtype, pl.Categorical | pl.Enum):
            s = s.cast(pl.String)
        if s.dtype != pl.String:
            raise DataError(f"{where}: column {c!r} must hold text, not {s.dtype}")
        cols.append(s.fill_null(""))
    if len(cols) == 1:
        return cols[0]
    parts = []
    for i, s in enumerate(cols):
        parts += [pl.lit(f"xxfld {i + 1} " if i == 0 else f" xxfld {i + 1} "), s]
    return pl.select(pl.concat_str(parts)).to_series()


def _is_valid(s, where: str) -> np.ndarray:
    """A validation flag per row: booleans, 0/1, or the words true/false."""
    import polars as pl

    name = s.name
    if s.null_count():
        raise DataError(f"{where}: column {name!r} has {s.null_count()} empty value(s)")
    if s.dtype == pl.Boolean:
        return s.to_numpy()
    if s.dtype.is_integer():
        return (s != 0).to_numpy()
    if s.dtype == pl.String:
        low = s.str.strip_chars().str.to_lowercase()
        ok = low.is_in(list(_TRUE | _FALSE))
        if ok.all():
            return low.is_in(list(_TRUE)).to_numpy()
        bad = s.filter(~ok)[0]
        raise DataError(f"{where}: column {name!r} must be true/false, found {bad!r}")
    raise DataError(f"{where}: column {name!r} must be true/false, not {s.dtype}")


def _single_labels(s) -> tuple[list[str], np.ndarray]:
    """Class names (sorted unique values) and each row's class id (-1: empty cell)."""
    import polars as pl

    if s.dtype.is_nested() or s.dtype == pl.Object:
        raise DataError(f"column {s.name!r} must hold labels (text or numbers), not {s.dtype}")
    if s.dtype == pl.String:
        s = s.replace("", None)
    values = s.drop_nulls().unique().sort()
    names = [str(v) for v in values.to_list()]
    codes = (s.rank("dense") - 1).fill_null(-1).cast(pl.Int64).to_numpy()
    return names, codes


def _multi_labels(s, delim: str | None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Class names and each row's sorted class ids (offsets, values) from cells such as
    ``"drama;comedy"``, split on ``delim`` exactly as fastai's ``ColReader`` splits them
    (spaces are kept: ``--label-delim "; "`` for ``"drama; comedy"``), or from list cells
    (a Parquet/JSONL list, a pandas column of lists), whose items are the classes. Empty
    names and repeats are ignored; an empty cell is a row with no class."""
    import polars as pl

    if isinstance(s.dtype, pl.List | pl.Array):
        lists = s.cast(pl.List(pl.String))
    else:
        lists = s.cast(pl.String).str.split(delim)
    lists = (
        lists.list.eval(pl.element().filter(pl.element().is_not_null() & (pl.element() != "")))
        .list.unique()
        .list.sort()
    )
    lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = lists.explode().drop_nulls()
    names = flat.unique().sort().to_list()
    values = (flat.rank("dense") - 1).cast(pl.Int32).to_numpy()
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return names, offsets, values


def _is_list(s) -> bool:
    import polars as pl

    return isinstance(s.dtype, pl.List | pl.Array)


def frame_source(df, where: str, kind: str, options: SourceOptions) -> Source:
    """A polars DataFrame as a source: one document a row, its id the row number."""
    text_cols = list(options.text_cols or ["text"])
    n = df.height
    texts = _texts(df, text_cols, where)
    if n == 0:
        raise DataError(f"{where}: no rows")
    valid_col = _column(df, options.valid_col, "is_valid", where, "--valid-col")
    valid = np.zeros(n, bool) if valid_col is None else _is_valid(valid_col, where)
    if valid_col is not None and options.valid_pct is not None:
        raise DataError(
            f"{where}: has a column {valid_col.name!r} already; --valid-pct is for tables without"
        )
    label_col = _column(
        df, options.label_col or (options.label_delim and "label"), "label", where, "--label-col"
    )
    splits = np.where(valid, "valid", "train")
    ids = np.arange(n)
    sets = None
    if label_col is None:
        task, names, codes = "none", [], np.full(n, -1, np.int64)
    elif options.label_delim is not None or _is_list(label_col):
        task = "multi_label"  # a list cell holds a row's classes, as fastai reads it
        names, offsets, values = _multi_labels(label_col, options.label_delim)
        sets, codes = (offsets, values), np.zeros(n, np.int64)
    else:
        task = "single_label"
        names, codes = _single_labels(label_col)
    keep = check_labels(
        where, "row", task, names, splits, ids, codes, sets, drop=options.drop_unlabelled
    )
    rows = ids if keep is None else ids[keep]
    if sets is None:
        label_of = codes.tolist()
    else:
        offsets, values = sets
        label_of = [tuple(values[offsets[i] : offsets[i + 1]].tolist()) for i in range(n)]
    split_of = splits.tolist()

    def reader() -> Iterator[RawRecord]:
        step = 4096
        for lo in range(0, len(rows), step):
            chunk = rows[lo : lo + step]
            for i, t in zip(chunk.tolist(), texts.gather(chunk).to_list()):
                yield RawRecord(t, label_of[i], split_of[i], str(i))

    return Source(
        where,
        kind,
        TABLE_SPLITS,
        [str(x) for x in names],
        "row",
        len(rows),
        reader,
        task=task,
        label_delim=(options.label_delim or ";") if task == "multi_label" else None,
        text_cols=text_cols,
        options=options,
        dropped=n - len(rows),
    )


def _from_pandas(df):
    """A pandas frame as polars; a column polars cannot type (mixed values) is named."""
    import polars as pl

    if type(df).__module__.split(".")[0] != "pandas" or not hasattr(df, "columns"):
        raise DataError(f"tokenize_df: not a pandas or polars DataFrame ({type(df).__name__})")
    try:
        return pl.from_pandas(df)
    except Exception as err:  # pyarrow/polars raise several kinds for one mixed column
        for col in df.columns:
            try:
                pl.from_pandas(df[[col]])
            except Exception:
                raise DataError(
                    f"tokenize_df: column {col!r} mixes types ({err}); make it one type, "
                    f"e.g. df[{col!r}].astype(str)"
                ) from None
        raise DataError(f"tokenize_df: cannot read the DataFrame ({err})") from None


def tokenize_df(
    df,
    out: str | os.PathLike,
    text_cols: str | Sequence[str] = "text",
    label_col: str | None = None,
    valid_col: str | None = None,
    valid_pct: float | None = None,
    seed: int = 0,
    label_delim: str | None = None,
    drop_unlabelled: bool = False,
    max_vocab: int | None = 60000,
    min_freq: int = 2,
    vocab_from: Sequence[str] | None = None,
    vocab: str | None = None,
    workers: int | None = None,
    force: bool = False,
    progress: bool = False,
) -> Path:
    """Tokenize a pandas or polars DataFrame into a corpus at ``out``, as
    ``python -m fastulm.tokenize`` does a CSV: the same columns, labels, splits and files.

    ``label_col``/``valid_col`` default to ``label``/``is_valid`` when the frame has them
    (no label column: an unlabelled corpus for the LM; no split column: all training, or a
    ``valid_pct`` random split)."""
    import polars as pl

    from fastulm.data.pipeline import VocabOptions, tokenize_source

    if not isinstance(df, pl.DataFrame):
        df = _from_pandas(df)
    options = SourceOptions(
        text_cols=[text_cols] if isinstance(text_cols, str) else list(text_cols),
        label_col=label_col,
        valid_col=valid_col,
        valid_pct=valid_pct,
        seed=seed,
        label_delim=label_delim,
        drop_unlabelled=drop_unlabelled,
    )
    options.check("frame")
    source = frame_source(df, "<DataFrame>", "frame", options)
    vocab_options = VocabOptions(max_vocab, min_freq, vocab_from, vocab)
    return tokenize_source(
        source, out, vocab_options, workers=workers, force=force, progress=progress
    )
