"""The token corpus on disk: ``vocab.json``, one Arrow IPC file per split, ``meta.json``.

Each ``<split>.arrow`` is an uncompressed Arrow IPC file with one record batch and the
columns ``ids: large_list<int32>`` (``xxbos`` first), ``label: int64`` (the class id, -1 =
none) and ``id: string``; a multi-label corpus adds ``labels: large_list<int32>`` (each
document's class ids, sorted) and its ``label`` is 0 for a labelled document. ``meta.json``
names the task, the classes in class-id order and the delimiter of multi-label cells, and
holds the sha256 of every other file, checked on opening: a flipped byte inside the token ids
passes Arrow's checks and the vocab range check, and would train on damaged data unnoticed
(about 0.1 s for all of IMDB). Opening maps the files and hands out numpy views: nothing is
copied, so a training run pays neither the time nor the memory of loading the corpus.

A corpus is written into a temporary sibling folder, ``meta.json`` last, and renamed into
place: an interrupted run leaves no folder that looks like a finished corpus, and a killed
run's temporary folder is removed by the next run writing beside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from fastulm.checksums import file_sha256
from fastulm.data import DataError
from fastulm.data.vocab import Vocab
from fastulm.files import StagedFolder, cannot_write, check_replaceable

FORMAT = "fastulm-corpus-1"
PART_FORMAT = "fastulm-part-1"  # a shard's part folder (see parts.py)
SCHEMA = pa.schema([("ids", pa.large_list(pa.int32())), ("label", pa.int64()), ("id", pa.string())])
#: a multi-label corpus: each document's class ids (sorted), ``label`` 0 (-1: unlabelled)
MULTI_SCHEMA = SCHEMA.append(pa.field("labels", pa.large_list(pa.int32())))


# ---------------------------------------------------------------- writing


_NUMPY = {pa.int32(): np.dtype(np.int32), pa.int64(): np.dtype(np.int64)}


def numpy_array(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A primitive Arrow array over a numpy array's memory.

    Built from buffers: ``pa.array``/``to_numpy`` import pandas (0.8 s), for nothing here."""
    values = np.ascontiguousarray(values, dtype=_NUMPY[type_])
    return pa.Array.from_buffers(type_, len(values), [None, pa.py_buffer(values)])


def numpy_view(arr: pa.Array) -> np.ndarray:
    """A read-only numpy view of a primitive Arrow array without nulls (no copy)."""
    if arr.null_count:
        raise DataError(f"unexpected empty values in a {arr.type} column")
    dtype = _NUMPY[arr.type]
    buf = arr.buffers()[1]
    if buf is None:
        return np.zeros(0, dtype)
    return np.frombuffer(buf, dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize)


def string_array(values: Iterable[str]) -> pa.Array:
    """A UTF-8 Arrow string array. A file name that is not UTF-8 comes from os.fsdecode with
    its bytes as lone surrogates, which UTF-8 cannot hold: those bytes become U+FFFD, so one
    odd name never costs the run (the fast path is kept for the usual all-valid ids)."""
    values = values if isinstance(values, list) else list(values)
    try:
        encoded = [v.encode("utf-8") for v in values]
    except UnicodeEncodeError:
        encoded = [
            v.encode("utf-8", "surrogateescape").decode("utf-8", "replace").encode("utf-8")
            for v in values
        ]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    if offsets[-1] < 2**31:
        return pa.Array.from_buffers(
            pa.string(),
            len(encoded),
            [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))],
        )
    raise DataError("document ids too long")


def list_array(offsets: np.ndarray, values: np.ndarray) -> pa.Array:
    """A ``large_list<int32>`` over numpy offsets and values, without copying them."""
    return pa.LargeListArray.from_arrays(
        numpy_array(offsets, pa.int64()), numpy_array(values, pa.int32())
    )


def split_batch(
    values: np.ndarray,
    offsets: np.ndarray,
    labels: np.ndarray,
    doc_ids: Iterable[str] | pa.Array,
    label_sets: tuple[np.ndarray, np.ndarray] | None = None,
) -> pa.RecordBatch:
    """One split as a record batch, wrapping the numpy buffers without copying them.
    ``label_sets`` (offsets, class ids) makes it a multi-label split."""
    label = numpy_array(labels, pa.int64())
    doc_ids = doc_ids if isinstance(doc_ids, pa.Array) else string_array(doc_ids)
    columns = [list_array(offsets, values), label, doc_ids]
    if label_sets is None:
        return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)
    columns.append(list_array(*label_sets))
    return pa.RecordBatch.from_arrays(columns, schema=MULTI_SCHEMA)


def write_arrow(path: Path, batch: pa.RecordBatch) -> str:
    """Write ``batch`` as an Arrow IPC file; its sha256 (read back from the page cache)."""
    try:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
            writer.write_batch(batch)
    except OSError as err:  # pyarrow's message names no file
        raise cannot_write(path, err) from None
    return file_sha256(path)


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def not_written_by_fastulm(path: Path) -> str | None:
    """What makes ``path`` something other than a folder fastulm wrote, holding nothing
    else: a corpus (``meta.json`` of this format, ``vocab.json``, ``*.arrow``) or a shard
    part (``part.json``, ``tokens.arrow``, ``docs.arrow``). None: it is one, and only such a
    folder may be replaced with ``--force``."""
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as err:
        return f"unreadable: {err.strerror or err}"
    odd = [e.name for e in entries if not e.is_file(follow_symlinks=False)]
    if odd:
        return f"it holds {odd[0]!r}, not a plain file"
    names = [e.name for e in entries]
    if "meta.json" in names:
        meta_name, fmt = "meta.json", FORMAT
    elif "part.json" in names:
        meta_name, fmt = "part.json", PART_FORMAT
    else:
        return "no meta.json"
    try:
        meta = json.loads((path / meta_name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        meta = None
    if not (isinstance(meta, dict) and meta.get("format") == fmt):
        return f"its {meta_name} is not fastulm's"
    if meta_name == "meta.json":
        # only the splits meta.json names: another .arrow beside them is the user's
        splits = meta.get("splits")
        splits = splits if isinstance(splits, dict) else {}
        fits = {f"{name}.arrow" for name in splits} | {"meta.json", "vocab.json"}
    else:
        fits = {"part.json", "tokens.arrow", "docs.arrow"}
    other = [n for n in names if n not in fits]
    if other:
        return f"it holds {other[0]!r}"
    return None


class OutputDir(StagedFolder):
    """A corpus or shard part written as a ``files.StagedFolder``.

    ``path`` must be absent or an empty folder, or (with ``force``) a corpus or part fastulm
    wrote; never one of ``sources`` or a folder holding one (``files.check_replaceable``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        force: bool = False,
        sources: Iterable[str | os.PathLike] = (),
        what: str = "corpus",
    ):
        local = [s for s in sources if not str(s).startswith(("http://", "https://"))]
        rules = dict(force=force, foreign=not_written_by_fastulm, what=what, sources=local)
        super().__init__(path, check=lambda: check_replaceable(path, **rules))


def write_corpus(
    out: str | os.PathLike | OutputDir,
    vocab: Vocab,
    splits: Mapping[str, pa.RecordBatch] | Iterable[tuple[str, pa.RecordBatch]],
    meta: dict,
    force: bool = False,
    sources: Iterable[str | os.PathLike] = (),
    order: Sequence[str] | None = None,
) -> Path:
    """Write a whole corpus atomically; ``meta`` gets the format and per-split counts.

    ``out`` may be an ``OutputDir`` claimed before a long job started; ``sources`` are the
    inputs ``out`` must not replace; ``order``: the order meta.json lists the splits in
    (default: as they come; a caller may build the largest first, so that its write
    overlaps the building of the others)."""
    with (
        out if isinstance(out, OutputDir) else OutputDir(out, force, sources) as target,
        ThreadPoolExecutor(1) as writer,  # a split is written while the next is built
    ):
        vocab.save(target.tmp / "vocab.json")
        digests = {"vocab.json": file_sha256(target.tmp / "vocab.json")}
        counts = {}
        written = []
        for name, batch in splits.items() if isinstance(splits, Mapping) else splits:
            file = f"{name}.arrow"
            written.append((file, writer.submit(write_arrow, target.tmp / file, batch)))
            values = numpy_view(batch.column("ids").values)
            n_tok = len(values)
            counts[name] = {
                "docs": batch.num_rows,
                "tokens": n_tok,
                "unknown_rate": float(np.count_nonzero(values == 0) / n_tok) if n_tok else 0.0,
            }
        for file, done in written:
            digests[file] = done.result()
        if order is not None:
            counts = {name: counts[name] for name in order}
            digests = {"vocab.json": digests["vocab.json"]} | {
                f"{name}.arrow": digests[f"{name}.arrow"] for name in order
            }
        meta = {
            "format": FORMAT,
            **meta,
            "vocab_size": len(vocab),
            "splits": counts,
            "sha256": digests,
        }
        write_json(target.tmp / "meta.json", meta)
        return target.commit()


# ---------------------------------------------------------------- reading


class Docs:
    """Documents laid out as the loaders read them: `ids` end to end, `offsets` (n + 1),
    `labels` (n)."""

    ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.doc(i) for i in range(len(self)))


@dataclass
class Split(Docs):
    """One split's documents as zero-copy views of the memory-mapped file."""

    name: str
    ids: np.ndarray  # int32, every document's tokens end to end
    offsets: np.ndarray  # int64, n_docs + 1
    labels: np.ndarray  # int64, -1 = unlabelled (multi-label: 0 = labelled)
    doc_ids: pa.Array  # strings
    table: pa.RecordBatch
    #: multi-label corpora: (offsets int64 [n_docs + 1], class ids int32); else None
    label_sets: tuple[np.ndarray, np.ndarray] | None = None


def _read_split(path: Path, name: str, multi: bool = False) -> Split:
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        if reader.num_record_batches != 1:
            raise DataError(f"{path}: expected one record batch, found {reader.num_record_batches}")
        batch = reader.get_batch(0)
        for field in MULTI_SCHEMA if multi else SCHEMA:
            if batch.schema.field(field.name).type != field.type:
                raise DataError(f"{path}: column {field.name} is not {field.type}")
        batch.validate()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, KeyError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: not a readable corpus file ({msg})") from None
    col = batch.column("ids")
    offsets = numpy_view(col.offsets)
    values = numpy_view(col.values)
    if offsets[0] != 0:
        values, offsets = values[offsets[0] : offsets[-1]], offsets - offsets[0]
    labels = numpy_view(batch.column("label"))
    sets = None
    if multi:
        col = batch.column("labels")
        sets = numpy_view(col.offsets), numpy_view(col.values)
        if sets[0][0] != 0:
            sets = sets[0] - sets[0][0], sets[1][sets[0][0] : sets[0][-1]]
    return Split(name, values, offsets, labels, batch.column("id"), batch, sets)


class Corpus:
    """A tokenized corpus folder, opened memory-mapped (see ``open_corpus``)."""

    def __init__(self, path: Path, vocab: Vocab, meta: dict, splits: dict[str, Split]):
        self.path = path
        self.vocab = vocab
        self.meta = meta
        self._splits = splits

    @property
    def label_names(self) -> list[str]:
        return list(self.meta.get("label_names", []))

    @property
    def task(self) -> str:
        """ "single_label" (also every corpus written before tasks), "multi_label" or "none"."""
        return self.meta.get("task", "single_label")

    @property
    def label_delim(self) -> str | None:
        """How the source's multi-label cells were split (None: single-label)."""
        return self.meta.get("label_delim")

    @property
    def split_names(self) -> list[str]:
        return list(self._splits)

    def __getitem__(self, split: str) -> Split:
        try:
            return self._splits[split]
        except KeyError:
            raise KeyError(f"{self.path}: no split {split!r} (has {self.split_names})") from None

    def __contains__(self, split: str) -> bool:
        return split in self._splits

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}: {len(v)} docs" for k, v in self._splits.items())
        return f"Corpus({self.path}, vocab {len(self.vocab)}, {parts})"

    def decode(self, ids) -> str:
        """Token ids back to text: the tokens joined by spaces, as fastai shows them."""
        return " ".join(self.vocab.decode(ids))

    def show(self, split: str | None = None, n: int = 3, max_tokens: int = 80) -> str:
        """A few decoded documents with their labels, like the walkthrough's show_batch."""
        name = split or self.split_names[0]
        data = self[name]
        names = self.label_names
        lines = [f"{self.path.name}/{name}: {len(data)} docs, {len(data.ids)} tokens"]
        for i in np.linspace(0, len(data) - 1, num=min(n, len(data)), dtype=np.int64):
            doc = data.doc(int(i))
            label = int(data.labels[i])
            text = self.decode(doc[:max_tokens]) + (" ..." if len(doc) > max_tokens else "")
            tag = names[label] if 0 <= label < len(names) else "-"
            if data.label_sets is not None and label >= 0:
                offsets, values = data.label_sets
                tag = ";".join(names[c] for c in values[offsets[i] : offsets[i + 1]]) or "none"
            lines.append(f"[{data.doc_ids[int(i)]}] ({tag}, {len(doc)} tokens) {text}")
        return "\n".join(lines)


def open_corpus(path: str | os.PathLike) -> Corpus:
    """Open a corpus folder written by ``python -m fastulm.tokenize``, zero-copy."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such corpus folder")
    meta_path = path / "meta.json"
    if not meta_path.exists():
        raise DataError(f"{path}: not a complete fastulm corpus (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{meta_path}: unreadable ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{meta_path}: not a {FORMAT} corpus")
    names = ["vocab.json"] + [f"{s}.arrow" for s in meta.get("splits", {})]
    check_digests(meta_path, meta, names, "tokenize again")
    vocab = Vocab.load(path / "vocab.json")
    multi = meta.get("task") == "multi_label"
    splits = {}
    for name, counts in meta.get("splits", {}).items():
        split = _read_split(path / f"{name}.arrow", name, multi)
        if len(split) != counts["docs"] or len(split.ids) != counts["tokens"]:
            raise DataError(
                f"{path / (name + '.arrow')}: holds {len(split)} docs / {len(split.ids)} tokens,"
                f" meta.json says {counts['docs']} / {counts['tokens']}"
            )
        _check_values(path / f"{name}.arrow", split, len(vocab), meta.get("label_names"))
        splits[name] = split
    return Corpus(path, vocab, meta, splits)


def check_digests(meta_path: Path, meta: dict, names: list[str], remedy: str) -> None:
    """Check each of ``names`` (files beside ``meta_path``) against the sha256 that
    ``meta`` holds for it. A folder written before checksums (no ``sha256``) is read as
    before."""
    digests = meta.get("sha256")
    if digests is None:
        return
    if not isinstance(digests, dict) or set(digests) != set(names):
        raise DataError(f"{meta_path}: damaged (its sha256 table does not list {names})")
    for name in names:
        file = meta_path.parent / name
        try:
            actual = file_sha256(file)
        except OSError as err:
            raise DataError(f"{file}: unreadable ({err.strerror or err})") from None
        if actual != digests[name]:
            raise DataError(
                f"{file}: damaged (its sha256 does not match {meta_path.name}); {remedy}"
            )


def _check_values(path: Path, split: Split, n_vocab: int, label_names: list | None) -> None:
    """Damage inside a file's data region passes Arrow's checks; an id outside the vocab
    would then crash training deep inside the embedding. A min/max over the mapped ids costs
    about 40 ms for all of IMDB (29M tokens, once in the page cache)."""
    ids, offsets, labels = split.ids, split.offsets, split.labels
    if len(ids) and (ids.min() < 0 or ids.max() >= n_vocab):
        pos = int(np.flatnonzero((ids < 0) | (ids >= n_vocab))[0])
        doc = int(np.searchsorted(offsets, pos, side="right")) - 1
        raise DataError(
            f"{path}: damaged: token id {ids[pos]} at position {pos} (document {doc}) is"
            f" outside the vocab of {n_vocab}"
        )
    if len(offsets) > 1 and (np.diff(offsets) < 0).any():
        doc = int(np.flatnonzero(np.diff(offsets) < 0)[0])
        raise DataError(f"{path}: damaged: document {doc} has a negative length")
    if label_names is not None and len(labels):
        n = len(label_names)
        if labels.min() < -1 or labels.max() >= n:
            row = int(np.flatnonzero((labels < -1) | (labels >= n))[0])
            raise DataError(
                f"{path}: damaged: label {labels[row]} of document {row} is neither -1 nor"
                f" one of the {n} label names"
            )
    if split.label_sets is not None:
        offsets, values = split.label_sets
        n = len(label_names or [])
        if len(offsets) != len(labels) + 1 or (np.diff(offsets) < 0).any():
            raise DataError(f"{path}: damaged: column labels does not fit the documents")
        if len(values) and (values.min() < 0 or values.max() >= n):
            pos = int(np.flatnonzero((values < 0) | (values >= n))[0])
            doc = int(np.searchsorted(offsets, pos, side="right")) - 1
            raise DataError(
                f"{path}: damaged: class id {values[pos]} of document {doc} is not one of the"
                f" {n} label names"
            )
