"""Where reviews come from: an aclImdb folder, its .tar.gz, a CSV or a Parquet file.

Every source yields records ``(text, label, split, id)``. Only review files are read: the
``*.txt`` files inside the class folders (``train/neg``, ``test/pos``, ``train/unsup``,
``unsup`` ...); ``urls_*.txt``, ``README``, ``imdb.vocab`` and anything else are ignored.
Archives are streamed member by member and never extracted, so no member name can write
anywhere (path traversal is impossible by construction; odd names are simply skipped).
"""

from __future__ import annotations

import lzma
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from fastulm.data import DataError
from fastulm.data.tar import (
    BLOCK,
    Stream,
    archive_format,
    chunks,
    inflate,
    is_tar_header,
    iter_tar,
)

IMDB_SPLITS = ("train", "test", "unsup")
TABLE_SPLITS = ("train", "valid")
IMDB_LABELS = ["neg", "pos"]
_CLASS_DIRS = {"neg": 0, "pos": 1}


class Record(NamedTuple):
    """One document. ``label`` is -1 when unlabelled."""

    text: str
    label: int
    split: str
    id: str


class RawRecord(NamedTuple):
    """A record whose text may still be bytes or a file's path (decoded by the worker; a
    source with ``file_paths`` gives paths as str)."""

    data: str | bytes | Path
    label: int
    split: str
    id: str


def read_file(path: str | os.PathLike) -> bytes:
    """A file's bytes with plain os calls: 5 us a review file, against 12 for Path.read_bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [os.read(fd, 1 << 16)]
        if len(chunks[0]) < 1 << 16:  # a short read of a regular file is its end
            return chunks[0]
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def decode_text(
    data: str | bytes | Path, from_file: bool = True, is_path: bool = False
) -> tuple[str, bool]:
    """UTF-8 text of a review and whether it was *not* valid UTF-8.

    Invalid bytes become U+FFFD instead of stopping the run: one damaged review among
    100,000 should not cost the whole job, and meta.json counts (and names) such files.
    Files get universal newlines, as fastai's ``Path.read_text`` gives them.
    """
    if is_path or isinstance(data, Path):
        data = read_file(data)
    bad = False
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text, bad = data.decode("utf-8", errors="replace"), True
    else:
        text = data
    if from_file and "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text, bad


def review_key(parts: list[str]) -> tuple[str, int] | None:
    """(split, label) of a path relative to the dataset root, or None if not a review."""
    if not parts[-1].endswith(".txt") or len(parts[-1]) == 4:
        return None
    if len(parts) == 3 and parts[0] in ("train", "test"):
        if parts[1] in _CLASS_DIRS:
            return parts[0], _CLASS_DIRS[parts[1]]
        if parts[0] == "train" and parts[1] == "unsup":
            return "unsup", -1
    if len(parts) == 2 and parts[0] == "unsup":
        return "unsup", -1
    return None


@dataclass
class Source:
    """An opened input. ``sort_by`` says how the canonical document order is keyed within a
    split: ``"id"`` (file sources) or ``"row"`` (tables, whose ids are row numbers)."""

    path: str
    kind: str
    splits: tuple[str, ...]
    label_names: list[str]
    sort_by: str
    n_docs: int | None = None
    _reader: object = field(default=None, repr=False)
    #: raw records hold file paths (str) for the worker to read, not texts
    file_paths: bool = False
    #: for sources of unknown size: how much of the input has been read (0..1), for an ETA
    read_fraction: Callable[[], float] | None = field(default=None, repr=False)

    def raw_records(self, num_shards: int = 1, shard_index: int = 0) -> Iterator[RawRecord]:
        """Records in the source's natural order; with shards, those whose ordinal % K == i."""
        for i, rec in enumerate(self._reader()):
            if i % num_shards == shard_index:
                yield rec

    def records(self) -> Iterator[Record]:
        """Decoded records in the source's natural order (not the corpus's sorted order)."""
        for data, label, split, doc_id in self.raw_records():
            text, _ = decode_text(data, self.sort_by == "id", self.file_paths)
            yield Record(text, label, split, doc_id)


def open_source(
    src: str | os.PathLike, cache_dir: str | os.PathLike | None = None, sha256: str | None = None
) -> Source:
    """Recognise ``src`` (folder, archive, CSV, Parquet or http(s) URL) and check its layout."""
    s = str(src)
    if s.startswith(("http://", "https://")):
        from fastulm.data.download import fetch

        local = fetch(s, cache_dir=cache_dir, sha256=sha256)
        source = open_source(local)
        source.path = s
        return source
    path = Path(src)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return _open_folder(path)
    suffix = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() == ".csv":
        return _open_table(path, "csv")
    if path.suffix.lower() in (".parquet", ".pq"):
        return _open_table(path, "parquet")
    if archive_format(path) is not None:
        return _open_archive(path)
    raise DataError(
        f"{path}: not a folder, .tar(.gz) archive, .csv or .parquet file (suffix {suffix!r})"
    )


# ---------------------------------------------------------------- folders


def _find_root(path: Path) -> Path | None:
    """The folder holding train/ test/ unsup/, which is ``path`` or its only subfolder."""
    if any((path / s).is_dir() for s in IMDB_SPLITS):
        return path
    subdirs = [p for p in path.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and any((subdirs[0] / s).is_dir() for s in IMDB_SPLITS):
        return subdirs[0]
    return None


def _open_folder(path: Path) -> Source:
    try:
        if not any(path.iterdir()):
            raise DataError(f"{path}: empty folder")
        root = _find_root(path)
    except PermissionError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    if root is None:
        raise DataError(
            f"{path}: no review files (expected train/{{neg,pos}}/*.txt, test/{{neg,pos}}/*.txt"
            " or unsup/*.txt)"
        )
    # (split, label) follow from the folder: each folder's names are sorted once, and the
    # folders put in canonical order (split, then path)
    groups = []
    for rel_dir in ("train/neg", "train/pos", "train/unsup", "test/neg", "test/pos", "unsup"):
        folder = root / rel_dir
        key = review_key([*rel_dir.split("/"), "0_0.txt"])
        if key is None or not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            names = [
                e.name for e in it if e.name.endswith(".txt") and len(e.name) > 4 and e.is_file()
            ]
        names.sort()
        groups.append((IMDB_SPLITS.index(key[0]), rel_dir, str(folder), *key, names))
    groups.sort(key=lambda g: g[:2])
    n_files = sum(len(g[-1]) for g in groups)
    if not n_files:
        raise DataError(f"{path}: no review files (*.txt inside train/neg, train/pos, ...)")

    def reader() -> Iterator[RawRecord]:
        for _, rel_dir, folder, split, label, names in groups:
            for name in names:
                yield RawRecord(f"{folder}/{name}", label, split, f"{rel_dir}/{name}")

    return Source(
        str(path),
        "imdb-folder",
        IMDB_SPLITS,
        list(IMDB_LABELS),
        "id",
        n_files,
        reader,
        file_paths=True,
    )


# ---------------------------------------------------------------- archives


def archive_review_key(name: str) -> tuple[str, str, int] | None:
    """(id, split, label) of an archive member, or None. The top folder (``aclImdb/``) is
    dropped; absolute names and names with ``..`` are never reviews."""
    if name.startswith("/"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    if parts[0] not in IMDB_SPLITS and len(parts) > 1:
        parts = parts[1:]
    key = review_key(parts)
    return None if key is None else ("/".join(parts), *key)


class _ArchiveKeys:
    """archive_review_key, memoized on the member's folder: a review's key is its folder's
    (id prefix, split, label) plus its file name, when that name is a review file's."""

    def __init__(self) -> None:
        self._folders: dict[str, tuple[str, str, int] | None] = {}

    def __call__(self, name: str) -> tuple[str, str, int] | None:
        folder, _, base = name.rpartition("/")
        if not base.endswith(".txt") or len(base) == 4 or base in (".", ".."):
            return archive_review_key(name)  # not a review file (or an odd name)
        key = self._folders.get(folder, False)
        if key is False:
            probe = archive_review_key(f"{folder}/0_0.txt")
            key = self._folders[folder] = None if probe is None else (probe[0][:-7], *probe[1:])
        return None if key is None else (key[0] + base, key[1], key[2])


def _open_archive(path: Path) -> Source:
    # Check the stream opens and starts with a tar header before any work starts.
    try:
        first = Stream(chunks(path, archive_format(path))).read(BLOCK)
    except (OSError, EOFError, zlib.error, inflate.error, lzma.LZMAError) as err:
        raise DataError(f"{path}: damaged archive ({err})") from None
    if not is_tar_header(first):
        raise DataError(f"{path}: not a tar archive")

    size = max(1, path.stat().st_size)
    read = [0]

    def reader() -> Iterator[RawRecord]:
        found = False
        keys = _ArchiveKeys()
        try:
            for name, data in iter_tar(path, read):
                key = keys(name)
                if key is not None:
                    found = True
                    yield RawRecord(data, key[2], key[1], key[0])
        except (OSError, EOFError, zlib.error, inflate.error, lzma.LZMAError) as err:
            raise DataError(f"{path}: damaged archive ({err})") from None
        if not found:
            raise DataError(
                f"{path}: no review files in the archive (expected "
                "aclImdb/train/{neg,pos}/*.txt ...)"
            )

    source = Source(str(path), "imdb-archive", IMDB_SPLITS, list(IMDB_LABELS), "id", None, reader)
    source.read_fraction = lambda: read[0] / size
    return source


# ---------------------------------------------------------------- tables


def _open_table(path: Path, kind: str) -> Source:
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        if kind == "csv":
            from pyarrow import csv

            table = csv.read_csv(
                path,
                convert_options=csv.ConvertOptions(
                    column_types={"text": pa.string()},
                    strings_can_be_null=True,
                ),
            )
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: cannot read as {kind.upper()} ({msg})") from None
    missing = [c for c in ("label", "text", "is_valid") if c not in table.column_names]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)} (needs label, text, is_valid;"
            f" found {', '.join(table.column_names) or 'none'})"
        )
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows")
    text = table["text"]
    if not pa.types.is_string(text.type) and not pa.types.is_large_string(text.type):
        raise DataError(f"{path}: column text must hold strings, not {text.type}")
    valid = table["is_valid"]
    if not pa.types.is_boolean(valid.type):
        try:
            valid = valid.cast(pa.bool_())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(f"{path}: column is_valid must be true/false") from None
    if valid.null_count:
        raise DataError(f"{path}: column is_valid has {valid.null_count} empty value(s)")
    label = table["label"]
    if pa.types.is_string(label.type) or pa.types.is_large_string(label.type):
        label = pc.if_else(pc.equal(label, ""), pa.scalar(None, label.type), label)
    names_arr = pc.unique(label.drop_null())
    names_arr = names_arr.take(pc.sort_indices(names_arr))
    label_names = [str(v) for v in names_arr.to_pylist()]
    codes = pc.fill_null(pc.index_in(label, value_set=names_arr), -1)
    codes = codes.cast(pa.int64()).to_numpy()
    texts = pc.fill_null(text, "")
    is_valid = valid.to_numpy(zero_copy_only=False)
    n = table.num_rows

    def reader() -> Iterator[RawRecord]:
        step = 4096
        for lo in range(0, n, step):
            chunk = texts.slice(lo, step).to_pylist()
            for j, t in enumerate(chunk):
                i = lo + j
                yield RawRecord(t, int(codes[i]), "valid" if is_valid[i] else "train", str(i))

    return Source(str(path), kind, TABLE_SPLITS, label_names, "row", n, reader)
