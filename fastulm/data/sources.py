"""Where documents come from: a folder of classes (aclImdb's layout), its .tar.gz, or a
table (CSV, TSV, JSONL, Parquet; see frame.py).

Every source yields records ``(text, label, split, id)``. In a folder only the ``*.txt``
files inside the class folders are read (``train/<class>``, ``valid/<class>``,
``test/<class>``, and ``train/unsup`` or ``unsup`` for unlabelled texts); ``urls_*.txt``,
``README``, ``imdb.vocab`` and anything else are ignored. Archives are streamed member by
member and never extracted, so no member name can write anywhere (path traversal is
impossible by construction; odd names are simply skipped).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fastulm.checksums import file_sha256
from fastulm.data import DataError
from fastulm.data.labels import Coder, check_labels
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
FOLDER_SPLITS = ("train", "valid", "test", "unsup")
TABLE_SPLITS = ("train", "valid")
IMDB_LABELS = ["neg", "pos"]
TABLE_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class OptionError(DataError):
    """Options that do not fit together or do not fit the source: a usage error."""


@dataclass
class SourceOptions:
    """Which columns (tables) or names (folders) hold what. ``None`` keeps today's defaults:
    text in ``text``, labels in ``label`` (none: an unlabelled corpus), the split in
    ``is_valid`` (none: every row is training)."""

    text_cols: Sequence[str] | None = None
    label_col: str | None = None
    valid_col: str | None = None
    valid_pct: float | None = None
    seed: int = 0
    label_delim: str | None = None
    label_regex: str | None = None
    drop_unlabelled: bool = False

    def check(self, kind: str) -> None:
        """Usage errors, before any work."""
        p = self.valid_pct
        if p is not None and not 0 < p < 1:
            raise OptionError(f"--valid-pct must be between 0 and 1 (exclusive), got {p}")
        table = kind in TABLE_SUFFIXES.values() or kind == "frame"
        if table:
            if self.label_regex is not None:
                raise OptionError("--label-regex reads file names: only for folders and archives")
            if p is not None and self.valid_col is not None:
                raise OptionError("--valid-col and --valid-pct exclude each other")
            if self.text_cols is not None and not list(self.text_cols):
                raise OptionError("--text-col: give at least one column")
        else:
            given = [
                flag
                for flag, v in (
                    ("--text-col", self.text_cols),
                    ("--label-col", self.label_col),
                    ("--valid-col", self.valid_col),
                    ("--label-delim", self.label_delim),
                )
                if v is not None
            ]
            if given:
                raise OptionError(f"{given[0]} is for tables (CSV, TSV, JSONL, Parquet)")
        if self.label_delim == "":
            raise OptionError("--label-delim must not be empty")
        if self.label_regex is not None:
            try:
                groups = re.compile(self.label_regex).groups
            except re.error as err:
                raise OptionError(f"--label-regex {self.label_regex!r}: {err}") from None
            if groups < 1:
                raise OptionError(
                    f"--label-regex {self.label_regex!r} needs a group, such as '_(\\d+)\\.txt$'"
                )


class Record(NamedTuple):
    """One document. ``label`` is -1 when unlabelled; a multi-label source gives a tuple of
    class ids instead."""

    text: str
    label: int | tuple[int, ...]
    split: str
    id: str


class RawRecord(NamedTuple):
    """A record whose text may still be bytes or a file's path (decoded by the worker; a
    source with ``file_paths`` gives paths as str)."""

    data: str | bytes | Path
    label: int | tuple[int, ...]
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


def is_text_name(name: str) -> bool:
    """Whether a file name is a review's: ``*.txt`` in any case, not hidden. As fastai's
    get_text_files: macOS's ``._name.txt`` (AppleDouble resource forks, found in copies and
    archives made on a Mac) and other dot files are not texts, and ``REVIEW.TXT`` is one."""
    return name[-4:].lower() == ".txt" and not name.startswith(".")


FOLDER_HELP = "expected train/<class>/*.txt with valid/<class>/ or test/<class>/, or unsup/*.txt"


def review_key(parts: list[str]) -> tuple[str, str | None] | None:
    """(split, class) of a path relative to the dataset root, or None if not a document.
    The class is None for unlabelled texts (``train/unsup``, ``unsup``)."""
    if not is_text_name(parts[-1]):
        return None
    if len(parts) == 3 and parts[0] in ("train", "valid", "test"):
        if parts[1] == "unsup":
            return ("unsup", None) if parts[0] == "train" else None
        if parts[1].startswith("."):
            return None
        return parts[0], parts[1]
    if len(parts) == 2 and parts[0] == "unsup":
        return "unsup", None
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
    #: "single_label", "multi_label" or "none"
    task: str = "single_label"
    label_delim: str | None = None
    text_cols: list[str] | None = None
    #: label_names already in class-id order (False: first-seen order, sorted at the end)
    labels_sorted: bool = True
    options: SourceOptions = field(default_factory=SourceOptions)
    #: documents left out for want of a label (``drop_unlabelled``) before tokenizing
    dropped: int = 0
    #: the file or folder read, where ``path`` is a URL (its downloaded copy)
    local: str | None = None

    def fingerprint(self) -> dict:
        """What tells this source's content from another's on any machine, whatever its path
        there: a file's size and sha256; for a folder, the names and sizes of its text files
        (reading every file would cost a shard what tokenizing all of them does)."""
        path = Path(self.local or self.path)
        if path.is_file():
            return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        h, n = hashlib.sha256(), 0
        for folder, subdirs, names in os.walk(path):
            subdirs.sort()
            rel = os.path.relpath(folder, path)
            for name in sorted(filter(is_text_name, names)):
                size = os.stat(os.path.join(folder, name)).st_size
                h.update(f"{rel}/{name}\0{size}\n".encode("utf-8", "surrogateescape"))
                n += 1
        return {"text_files": n, "names_and_sizes_sha256": h.hexdigest()}

    def plan(self) -> dict:
        """What the corpus is made of besides the texts (kept in a part's part.json)."""
        o = self.options
        return {
            "task": self.task,
            "label_delim": self.label_delim,
            "text_cols": self.text_cols,
            "labels_sorted": self.labels_sorted,
            "valid_pct": o.valid_pct,
            "seed": o.seed if o.valid_pct is not None else None,
            "drop_unlabelled": o.drop_unlabelled,
            "dropped": self.dropped,
        }

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
    src: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    options: SourceOptions | None = None,
) -> Source:
    """Recognise ``src`` (folder, archive, CSV, TSV, JSONL, Parquet or http(s) URL) and
    check its layout and labels."""
    options = options or SourceOptions()
    s = str(src)
    if s.startswith(("http://", "https://")):
        from fastulm.data.download import fetch

        local = fetch(s, cache_dir=cache_dir, sha256=sha256)
        source = open_source(local, options=options)
        source.path, source.local = s, str(local)
        return source
    path = Path(src)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        options.check("folder")
        return _open_folder(path, options)
    suffix = "".join(path.suffixes[-2:]).lower()
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is not None:
        from fastulm.data.frame import open_table

        options.check(kind)
        return open_table(path, kind, options)
    if archive_format(path) is not None:
        options.check("archive")
        return _open_archive(path, options)
    raise DataError(
        f"{path}: not a folder, .tar(.gz) archive, .csv, .tsv, .jsonl or .parquet file"
        f" (suffix {suffix!r})"
    )


def _file_label(options: SourceOptions) -> Callable[[str, str], str | None]:
    """A document's class from its folder's class, or with ``label_regex`` from the first
    group of a search in its file name (None: no match)."""
    if options.label_regex is None:
        return lambda cls, name: cls
    search = re.compile(options.label_regex).search

    def label(cls: str, name: str) -> str | None:
        m = search(name)
        return None if m is None else m.group(1)

    return label


# ---------------------------------------------------------------- folders


def _find_root(path: Path) -> Path | None:
    """The folder holding train/ test/ unsup/ ..., which is ``path`` or its only subfolder."""
    if any((path / s).is_dir() for s in FOLDER_SPLITS):
        return path
    subdirs = [p for p in path.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and any((subdirs[0] / s).is_dir() for s in FOLDER_SPLITS):
        return subdirs[0]
    return None


def _txt_names(folder: Path, flat: str | None = None) -> list[str]:
    """The review files right in ``folder``. ``flat`` names it when it is a class (or
    unsup) folder: texts in a folder inside it are then an error, not silently left out."""
    with os.scandir(folder) as it:
        entries = list(it)
    names = sorted(e.name for e in entries if is_text_name(e.name) and e.is_file())
    if flat:
        subdirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
        for e in sorted(subdirs, key=lambda e: e.name):
            if _holds_texts(Path(e.path)):
                raise DataError(nested_message(Path(e.path), flat))
    return names


def _holds_texts(folder: Path) -> bool:
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(is_text_name(f) for f in files):
            return True
    return False


def nested_message(where: str | Path, folder: str) -> str:
    return (
        f"{where}: texts in a folder inside {folder}/, which fastulm does not read "
        f"({FOLDER_HELP}); move them into {folder}/ itself, or into a class folder of their own"
    )


def _open_folder(path: Path, options: SourceOptions) -> Source:
    try:
        if not any(path.iterdir()):
            raise DataError(f"{path}: empty folder")
        root = _find_root(path)
        if root is None:
            raise DataError(f"{path}: no review files ({FOLDER_HELP})")
        # (split, class) follow from the folder: each folder's names are sorted once, and
        # the folders put in canonical order (split, then path)
        groups = []
        for split in ("train", "valid", "test"):
            top = root / split
            if not top.is_dir():
                continue
            with os.scandir(top) as it:
                subdirs = sorted(e.name for e in it if e.is_dir())
            for sub in subdirs:
                key = review_key([split, sub, "0_0.txt"])
                names = _txt_names(top / sub, flat=f"{split}/{sub}") if key is not None else []
                if names:
                    groups.append((f"{split}/{sub}", *key, names))
        if (root / "unsup").is_dir():
            groups.append(("unsup", "unsup", None, _txt_names(root / "unsup", flat="unsup")))
    except PermissionError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    groups = [g for g in groups if g[-1]]
    rank = {s: i for i, s in enumerate(FOLDER_SPLITS)}
    groups.sort(key=lambda g: (rank[g[1]], g[0]))
    labelled = [g for g in groups if g[2] is not None]
    no_classes = not any(g[1] == "train" for g in labelled)
    flat = (root / "train").is_dir() and any(  # texts right in train/ (aclImdb keeps urls there)
        not n.startswith("urls_") for n in _txt_names(root / "train")
    )
    if no_classes and (labelled or flat):
        raise DataError(f"{root / 'train'}: no class subfolders (expected train/<class>/*.txt)")
    if not groups:
        raise DataError(f"{path}: no review files ({FOLDER_HELP})")
    has_valid = any(g[1] in ("valid", "test") for g in groups)
    if options.valid_pct is not None and has_valid:
        raise OptionError(
            f"{path}: has a valid/ or test/ folder already; --valid-pct is for folders without"
        )
    # class codes in fastai's order: sorted class (or regex) names; per folder, not per
    # file, unless the class comes from the file name
    label_of = _file_label(options)
    found = [
        [None] * len(names)
        if cls is None
        else [label_of(cls, n) for n in names]
        if options.label_regex
        else [cls] * len(names)
        for _, _, cls, names in groups
    ]
    label_names = sorted({x for f in found for x in set(f) if x is not None})
    code = {n: i for i, n in enumerate(label_names)}
    codes = [[-1 if x is None else code[x] for x in f] for f in found]
    sizes = [len(g[-1]) for g in groups]
    splits = np.repeat(np.array([g[1] for g in groups]), sizes)
    task = "single_label" if labelled else "none"
    keep = check_labels(
        str(path),
        "file",
        task,
        label_names,
        splits,
        lambda: np.array([f"{g[0]}/{n}" for g in groups for n in g[-1]]),
        np.concatenate([np.asarray(c, np.int64) for c in codes]),
        drop=options.drop_unlabelled,
    )
    kept = None if keep is None else np.split(keep, np.cumsum(sizes)[:-1])

    def reader() -> Iterator[RawRecord]:
        for k, (rel_dir, split, _, names) in enumerate(groups):
            folder = str(root / rel_dir)
            for j, (name, c) in enumerate(zip(names, codes[k])):
                if kept is None or kept[k][j]:
                    yield RawRecord(f"{folder}/{name}", c, split, f"{rel_dir}/{name}")

    dropped = 0 if keep is None else int((~keep).sum())
    return Source(
        str(path),
        "imdb-folder",
        FOLDER_SPLITS,
        label_names,
        "id",
        sum(sizes) - dropped,
        reader,
        file_paths=True,
        task=task,
        options=options,
        dropped=dropped,
    )


# ---------------------------------------------------------------- archives


def archive_review_key(name: str) -> tuple[str, str, str | None] | None:
    """(id, split, class) of an archive member, or None. The top folder (``aclImdb/``) is
    dropped; absolute names and names with ``..`` are never reviews."""
    if name.startswith("/"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    if parts[0] not in FOLDER_SPLITS and len(parts) > 1:
        parts = parts[1:]
    key = review_key(parts)
    return None if key is None else ("/".join(parts), *key)


class _ArchiveKeys:
    """archive_review_key, memoized on the member's folder: a review's key is its folder's
    (id prefix, split, class) plus its file name, when that name is a review file's."""

    def __init__(self) -> None:
        self._folders: dict[str, tuple[str, str, str | None] | None] = {}

    def __call__(self, name: str) -> tuple[str, str, str | None] | None:
        folder, _, base = name.rpartition("/")
        if not is_text_name(base):
            return archive_review_key(name)  # not a review file (or an odd name)
        key = self._folders.get(folder, False)
        if key is False:
            probe = archive_review_key(f"{folder}/0_0.txt")
            key = self._folders[folder] = None if probe is None else (probe[0][:-7], *probe[1:])
            if key is None:
                _refuse_nested(folder)
        return None if key is None else (key[0] + base, key[1], key[2])


def _refuse_nested(folder: str) -> None:
    """An archive folder of texts inside a class (or unsup) folder: an error, as for folders."""
    parts = [p for p in folder.split("/") if p not in ("", ".")]
    top = 1 if parts and parts[0] not in FOLDER_SPLITS and len(parts) > 1 else 0
    rel = parts[top:]
    if any(p.startswith(".") for p in rel):  # hidden, or ".."
        return
    inside = 2 if rel[:1] in (["train"], ["valid"], ["test"]) else 1 if rel[:1] == ["unsup"] else 0
    if inside and len(rel) > inside:
        where = "/".join(parts[: top + inside + 1])  # the first folder too deep
        raise DataError(nested_message(where, "/".join(rel[:inside])))


def _open_archive(path: Path, options: SourceOptions) -> Source:
    # Check the stream opens and starts with a tar header before any work starts.
    try:
        first = Stream(chunks(path, archive_format(path))).read(BLOCK)
    except (OSError, EOFError, zlib.error, inflate.error, lzma.LZMAError) as err:
        raise DataError(f"{path}: damaged archive ({err})") from None
    if not is_tar_header(first):
        raise DataError(f"{path}: not a tar archive")

    size = max(1, path.stat().st_size)
    read = [0]
    label_of = _file_label(options)
    # Classes are known only at the archive's end: codes in first-seen order (IMDB's neg and
    # pos first), put in class order once everything is read (pipeline.finish).
    coder = Coder(IMDB_LABELS if options.label_regex is None else ())

    def reader() -> Iterator[RawRecord]:
        found = False
        keys = _ArchiveKeys()
        try:
            for name, data in iter_tar(path, read):
                key = keys(name)
                if key is not None:
                    if key[1] in ("valid", "test") and options.valid_pct is not None:
                        raise OptionError(  # at its first such member, not after the whole run
                            f"{path}: has a valid/ or test/ folder already; --valid-pct is for "
                            "archives without"
                        )
                    found = True
                    cls = key[2] if key[2] is None else label_of(key[2], key[0].rpartition("/")[2])
                    yield RawRecord(data, -1 if cls is None else coder(cls), key[1], key[0])
        except (OSError, EOFError, zlib.error, inflate.error, lzma.LZMAError) as err:
            raise DataError(f"{path}: damaged archive ({err})") from None
        if not found:
            raise DataError(f"{path}: no review files in the archive ({FOLDER_HELP})")

    source = Source(
        str(path),
        "imdb-archive",
        FOLDER_SPLITS,
        coder.names,
        "id",
        None,
        reader,
        labels_sorted=False,
        options=options,
    )
    source.read_fraction = lambda: read[0] / size
    return source
