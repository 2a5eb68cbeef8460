"""Tokenize a source into a corpus: worker processes, token-table merge, vocab, numericalize.

Each worker owns a ``fastulm.text.tokenizer.Tokenizer`` (with its chunk cache) and returns,
per batch of documents, the token ids in its *local* table plus the table entries it added
since its last batch. The parent (a ``Collector``) keeps one *union* table of token
strings and turns each batch's local ids into union ids with one ``numpy.take``. At the end
the documents are put in canonical order (split, then name or row), counted, the vocab is
built and every union id becomes a vocab id with one more ``take``. Nothing loops over
tokens in Python, and the result depends only on the documents' tokens, so it is
byte-identical whatever the number of workers or shards.

For more than one machine, see parts.py: each machine collects every K-th document into a
*part*, and the parts are merged by the same Collector and ``finish``.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from fastulm.data import DataError
from fastulm.data.corpus import (
    OutputDir,
    split_batch,
    string_array,
    write_corpus,
)
from fastulm.data.labels import check_labels, class_order, random_valid
from fastulm.data.sources import RawRecord, Source, SourceOptions, open_source
from fastulm.data.vocab import Vocab, check_specials, make_itos
from fastulm.data.workers import WorkerPool, default_workers, run_here
from fastulm.text.jit import kernel

_BATCH_BYTES = 1 << 19
_BATCH_DOCS = 512


@dataclass
class VocabOptions:
    """How the vocab is made: fastai's make_vocab on the ``vocab_from`` splits (default:
    all), or an existing vocab reused from ``vocab_path``."""

    max_vocab: int | None = 60000
    min_freq: int = 2
    vocab_from: Sequence[str] | None = None
    vocab_path: str | None = None

    def describe(self) -> dict:
        return {
            "max_vocab": self.max_vocab,
            "min_freq": self.min_freq,
            "vocab_from": list(self.vocab_from) if self.vocab_from else None,
            "vocab": self.vocab_path,
        }


def load_given_vocab(path) -> Vocab:
    """``--vocab PATH``: a vocab the tokenizer's tokens and the model's ids fit."""
    vocab = Vocab.load(path)
    check_specials(vocab.itos, str(path))
    return vocab


# ---------------------------------------------------------------- numba kernels


@kernel(nogil=True)
def _count_first(src, doc_start, doc_len, perm, pos, counts, first):
    """Token counts over documents ``perm`` (in that order) and each token's first position
    in that order, counting from ``pos`` (first < 0 = not seen yet)."""
    for k in range(perm.shape[0]):
        d = perm[k]
        a = doc_start[d]
        for j in range(doc_len[d]):
            t = src[a + j]
            counts[t] += 1
            if first[t] < 0:
                first[t] = pos
            pos += 1
    return pos


@kernel(nogil=True)
def _gather_map(src, doc_start, doc_len, perm, lut, out, out_off):
    """Documents ``perm`` one after another in ``out``, each id ``t`` written as ``lut[t]``."""
    pos = 0
    for k in range(perm.shape[0]):
        d = perm[k]
        a = doc_start[d]
        out_off[k] = pos
        for j in range(doc_len[d]):
            out[pos + j] = lut[src[a + j]]
        pos += doc_len[d]
    out_off[perm.shape[0]] = pos


# ---------------------------------------------------------------- collecting


@dataclass
class Canonical:
    """Where each document is, and the documents of each split in canonical order."""

    src: np.ndarray  # every document's union ids, in arrival order
    doc_start: np.ndarray
    doc_len: np.ndarray
    perms: dict[str, np.ndarray]  # split -> document indices, sorted by name or row
    names: np.ndarray  # every document's id (str), in arrival order

    def n_tokens(self, split: str) -> int:
        return int(self.doc_len[self.perms[split]].sum())

    def gather(self, split: str, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, offsets) of a split with every union id mapped through ``lut``."""
        perm = self.perms[split]
        out = np.empty(self.n_tokens(split), np.int32)
        offsets = np.empty(len(perm) + 1, np.int64)
        _gather_map(self.src, self.doc_start, self.doc_len, perm, lut, out, offsets)
        return out, offsets


def _anonymous_map(size: int) -> mmap.mmap:
    """A private anonymous map (a shared one grown with mremap faults past its first size)."""
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    return mmap.mmap(-1, size, flags=flags) if flags else mmap.mmap(-1, size)


class _Growable:
    """An int32 array that grows by appending, in an anonymous memory map that grows in
    place (mremap): a corpus's whole token stream (about 120 MB for IMDB) is collected in
    it and never copied, where per-batch arrays concatenated at the end cost a second
    copy and as much fresh memory again, in the serial end of the run. Views of it are
    taken only for a moment (a map with views cannot grow)."""

    def __init__(self, capacity: int = 1024):
        self._map = _anonymous_map(4 * capacity)
        self.size = 0

    def view(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.size if stop is None else stop
        return np.frombuffer(self._map, np.int32, stop - start, 4 * start)

    def grow(self, n: int) -> np.ndarray:
        """Room for n more values: the view to fill (size grows by n)."""
        need = 4 * (self.size + n)
        if need > len(self._map):
            new_size = max(need, 2 * len(self._map))
            try:
                self._map.resize(new_size)
            except (OSError, SystemError, ValueError):  # no mremap: copy into a new map
                bigger = _anonymous_map(new_size)
                bigger[: 4 * self.size] = self._map[: 4 * self.size]
                self._map = bigger
        self.size += n
        return self.view(self.size - n)

    def extend(self, values: np.ndarray) -> None:
        self.grow(len(values))[:] = values


@dataclass
class Collector:
    """Union token table plus every document's union ids, in arrival order."""

    source: dict
    splits: tuple[str, ...]
    label_names: list[str]
    sort_by: str
    _index: dict[str, int] = field(default_factory=dict)  # token -> union id (insertion order)
    _maps: dict[object, _Growable] = field(default_factory=dict)
    _ids: _Growable = field(default_factory=lambda: _Growable(1 << 20))  # union ids
    _lengths: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    doc_splits: list[str] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)
    non_utf8: list[str] = field(default_factory=list)
    #: the source's task, label delimiter, text columns, split options (Source.plan)
    plan: dict = field(default_factory=dict)

    @property
    def tokens(self) -> list[str]:
        return list(self._index)

    @property
    def n_docs(self) -> int:
        return len(self.labels)

    def add_tokens(self, table: object, start: int, new: Sequence[str]) -> None:
        """Entries ``start...`` of a worker's (or part's) local table."""
        m = self._maps.setdefault(table, _Growable())
        if m.size != start:
            raise RuntimeError(f"token table {table}: got entries from {start}, have {m.size}")
        index = self._index
        missing = [t for t in new if t not in index]  # a worker's new entries are distinct
        index.update(zip(missing, range(len(index), len(index) + len(missing))))
        m.extend(np.fromiter(map(index.__getitem__, new), np.int32, len(new)))

    def add_docs(
        self,
        table: object,
        ids: np.ndarray,
        lengths: np.ndarray,
        records: Sequence[tuple[int, str, str]],
        bad: Sequence[int] = (),
    ) -> None:
        """Documents (label, split, id) whose tokens are ``ids`` in ``table``'s local ids."""
        m = self._maps[table]
        # mode="clip": with the default "raise", numpy copies `out` aside and back (so an
        # error leaves it untouched), touching the fresh map twice; a worker's ids are
        # indices into its own map by construction
        np.take(m.view(), ids, out=self._ids.grow(len(ids)), mode="clip")
        self._lengths.append(np.asarray(lengths, np.int64))
        for label, split, doc_id in records:
            self.labels.append(label)  # a class id, or a tuple of them (multi-label)
            self.doc_splits.append(split)
            self.doc_ids.append(doc_id)
        self.non_utf8.extend(records[j][2] for j in bad)

    def canonical(self) -> Canonical:
        """Documents sorted by split, then by name (files) or row (tables); a document seen
        twice (overlapping parts) is an error.

        Its ``src`` is a view of the collected ids: nothing is collected after this."""
        rank = {s: i for i, s in enumerate(self.splits)}
        for s in set(self.doc_splits) - set(rank):
            raise DataError(f"unexpected split {s!r}")
        ranks = np.array([rank[s] for s in self.doc_splits], np.int64)
        names = np.array(self.doc_ids, dtype=str)  # sorts in code point order, as str does
        keys = names.astype(np.int64) if self.sort_by == "row" else names
        order = np.lexsort((keys, ranks))  # stable, like sorted()
        same = (ranks[order[1:]] == ranks[order[:-1]]) & (keys[order[1:]] == keys[order[:-1]])
        if same.any():
            d = order[1:][same][0]
            raise DataError(
                f"document {self.doc_splits[d]}/{self.doc_ids[d]} appears twice (overlapping parts?)"
            )
        split_of = ranks[order]
        perms = {s: order[split_of == r] for s, r in rank.items() if (split_of == r).any()}
        doc_len = np.concatenate(self._lengths)
        doc_start = np.zeros(len(doc_len), np.int64)
        np.cumsum(doc_len[:-1], out=doc_start[1:])
        return Canonical(self._ids.view(), doc_start, doc_len, perms, names)


def _class_ids(collector: Collector) -> tuple[list[str], list]:
    """Class names in class-id order and every document's label(s) renumbered to it.

    Sources that know their classes up front give them in order already; an archive's are
    in first-seen order, put in fastai's order (sorted) here, unused ones left out."""
    names, labels = list(collector.label_names), collector.labels
    if collector.plan.get("labels_sorted", True) or not names:
        return names, labels
    used = sorted({c for x in labels for c in (x if isinstance(x, tuple) else (x,)) if c >= 0})
    order = [used[k] for k in class_order([names[c] for c in used])]
    lut = dict(zip(order, range(len(order))))
    new = [
        tuple(sorted(lut[c] for c in x)) if isinstance(x, tuple) else lut.get(x, -1) for x in labels
    ]
    return [names[c] for c in order], new


def _label_sets(labels: list, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, class ids) of the multi-label documents ``docs`` (an unlabelled one: none)."""
    picked = [labels[d] if isinstance(labels[d], tuple) else () for d in docs.tolist()]
    offsets = np.zeros(len(picked) + 1, np.int64)
    np.cumsum([len(x) for x in picked], out=offsets[1:])
    values = np.fromiter((c for x in picked for c in x), np.int32, int(offsets[-1]))
    return offsets, values


def _final_splits(collector: Collector, canon: Canonical, task: str, names, labels) -> dict:
    """The splits as written: ``valid_pct`` of ``train`` moved to ``valid`` (seeded), the
    labels checked (check_labels) and unlabelled documents left out if asked."""
    plan = collector.plan
    where = str(collector.source.get("path"))
    perms = dict(canon.perms)
    pct = plan.get("valid_pct")
    if pct is not None:
        given = [s for s in ("valid", "test") if s in perms]
        if given:
            raise DataError(
                f"{where}: has {given[0]} documents already; --valid-pct is for sources without"
            )
        if "train" not in perms:
            raise DataError(f"{where}: no training documents to take --valid-pct from")
        train = perms["train"]
        valid = random_valid(len(train), pct, plan.get("seed") or 0, where)
        perms["train"], perms["valid"] = train[~valid], train[valid]
    rank = {s: i for i, s in enumerate(collector.splits)}
    perms = {s: perms[s] for s in sorted(perms, key=rank.__getitem__) if len(perms[s])}
    order = np.concatenate(list(perms.values()))
    split_of = np.repeat(np.array(list(perms), dtype=object), [len(p) for p in perms.values()])
    if task == "multi_label":
        flat = np.zeros(len(order), np.int64)
        sets = _label_sets(labels, order)
    else:
        flat = np.asarray(labels, np.int64)[order]
        sets = None
    what = "row" if collector.sort_by == "row" else "file"
    keep = check_labels(
        where,
        what,
        task,
        names,
        split_of.astype(str),
        canon.names[order],
        flat,
        sets,
        drop=bool(plan.get("drop_unlabelled")),
    )
    if keep is not None:
        bounds = np.cumsum([0] + [len(p) for p in perms.values()])
        perms = {s: p[keep[bounds[i] : bounds[i + 1]]] for i, (s, p) in enumerate(perms.items())}
        perms = {s: p for s, p in perms.items() if len(p)}
    return perms


def finish(
    collector: Collector,
    out: str | os.PathLike | OutputDir,
    options: VocabOptions,
    force: bool = False,
    check: Callable[[], None] | None = None,
) -> Path:
    """Vocab, numericalization and the corpus files from everything collected."""
    if collector.n_docs == 0:
        raise DataError(f"{collector.source.get('path')}: no documents")
    plan = collector.plan
    canon = collector.canonical()
    names, labels = _class_ids(collector)
    task = plan.get("task", "single_label")
    if task == "single_label" and not names:
        task = "none"  # an archive of unlabelled texts only
    n_before = sum(len(p) for p in canon.perms.values())
    canon.perms = _final_splits(collector, canon, task, names, labels)
    dropped = plan.get("dropped", 0) + n_before - sum(len(p) for p in canon.perms.values())
    vocab_from = list(options.vocab_from or canon.perms)
    for s in vocab_from:
        if s not in canon.perms:
            raise DataError(
                f"--vocab-from: no split {s!r} in this source (has {', '.join(canon.perms)})"
            )
    tokens = collector.tokens
    n_union = len(tokens)
    if options.vocab_path:
        vocab = load_given_vocab(options.vocab_path)
    else:
        counts = np.zeros(n_union, np.int64)
        first = np.full(n_union, -1, np.int64)
        pos = 0
        for s, perm in canon.perms.items():  # canonical order, so positions are global
            if s in vocab_from:
                _count_first(
                    canon.src,
                    canon.doc_start,
                    canon.doc_len,
                    perm,
                    pos,
                    counts,
                    first,
                )
            pos += canon.n_tokens(s)
        first[first < 0] = pos
        vocab = Vocab(
            make_itos(tokens, counts, options.max_vocab, options.min_freq, tiebreak=first)
        )
    # union id -> vocab id (0 = xxunk for tokens outside the vocab)
    lut = np.zeros(n_union, np.int32)
    index = collector._index
    for tok, i in vocab.stoi.items():
        u = index.get(tok)
        if u is not None:
            lut[u] = i
    if task == "multi_label":  # 0: labelled (any number of classes), -1: unlabelled
        label_col = np.array([0 if isinstance(x, tuple) else -1 for x in labels], np.int64)
    else:
        label_col = np.asarray(labels, np.int64)
    # a document with no text is xxbos alone (with several text columns: xxbos and the
    # fields' xxfld markers, two tokens each)
    n_fields = len(plan.get("text_cols") or [None])
    empty_len = 1 + 2 * n_fields if n_fields > 1 else 1
    empty = {s: int((canon.doc_len[p] == empty_len).sum()) for s, p in canon.perms.items()}

    check = check or (lambda: None)

    def batches() -> Iterator[tuple[str, pa.RecordBatch]]:
        # one split in memory at a time (and the one being written); the largest first, so
        # that its write overlaps the building of the others
        by_size = sorted(canon.perms.items(), key=lambda item: -canon.n_tokens(item[0]))
        for s, perm in by_size:
            check()
            ids, offsets = canon.gather(s, lut)
            sets = _label_sets(labels, perm) if task == "multi_label" else None
            doc_ids = string_array(canon.names[perm].tolist())
            yield s, split_batch(ids, offsets, label_col[perm], doc_ids, sets)
        check()  # last chance to stop before the corpus is renamed into place

    from fastulm import __version__

    non_utf8 = sorted(collector.non_utf8)
    meta = {
        "fastulm_version": __version__,
        "source": collector.source,
        "options": options.describe(),
        "task": task,
        "label_names": names,
        "label_delim": plan.get("label_delim") if task == "multi_label" else None,
        "text_cols": plan.get("text_cols"),
        "valid_pct": plan.get("valid_pct"),
        "seed": plan.get("seed"),
        "dropped_unlabelled": dropped,
        "empty_texts": empty,
        "non_utf8_files": len(non_utf8),
        "non_utf8_examples": non_utf8[:20],
    }
    return write_corpus(out, vocab, batches(), meta, force=force, order=list(canon.perms))


# ---------------------------------------------------------------- running


def _batches(
    records: Iterable[RawRecord], meta: dict[int, list], from_file: bool, is_path: bool
) -> Iterator[tuple[int, list, bool, bool]]:
    """Batches of about 512 KB (or 512 documents)."""
    items: list = []
    recs: list = []
    size = 0
    index = 0
    for data, label, split, doc_id in records:
        items.append(data)
        recs.append((label, split, doc_id))
        size += 1024 if is_path else len(data)
        if size >= _BATCH_BYTES or len(items) >= _BATCH_DOCS:
            meta[index] = recs
            yield index, items, from_file, is_path
            index, items, recs, size = index + 1, [], [], 0
    if items:
        meta[index] = recs
        yield index, items, from_file, is_path


class _Progress:
    """Progress in documents when their number is known up front (folders, tables); for an
    archive, whose count is known only at its end, in the share of the input read so far:
    a fixed total that only moves forward, where an estimated document count rose and fell
    as reviews and members of other sizes went by."""

    def __init__(self, total: int | None, read_fraction, progress: bool):
        from tqdm import tqdm

        self.read_fraction = read_fraction if total is None else None
        self.docs = 0
        self.percent = 0.0
        common = dict(disable=not progress, smoothing=0.1, file=sys.stderr, desc="tokenizing")
        if self.read_fraction is None:
            self.bar = tqdm(total=total, unit="doc", **common)
        else:
            fmt = "{desc}: {percentage:3.0f}%|{bar}| of the input [{elapsed}<{remaining}{postfix}]"
            self.bar = tqdm(total=100, unit="%", bar_format=fmt, **common)

    def advance(self, docs: int) -> None:
        self.docs += docs
        if self.read_fraction is None:
            self.bar.update(docs)
        else:
            self.bar.set_postfix_str(f"{self.docs} docs", refresh=False)
            self._to(100.0 * self.read_fraction())

    def done(self) -> None:
        if self.read_fraction is not None:
            self._to(100.0)

    def _to(self, percent: float) -> None:
        percent = min(percent, 100.0)
        if percent > self.percent:
            self.bar.update(percent - self.percent)
            self.percent = percent

    def close(self) -> None:
        self.bar.close()


def collect(
    source: Source,
    workers: int | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    progress: bool = True,
    tokenizer_factory: Callable | None = None,
    check: Callable[[], None] | None = None,
    pool: WorkerPool | None = None,
) -> Collector:
    """Tokenize every document of ``source`` (or of one shard) in ``workers`` processes, or
    in ``pool`` (started earlier; it then decides the workers and the tokenizer)."""
    workers = default_workers() if workers is None else max(1, workers)
    collector = Collector(
        {"path": source.path, "kind": source.kind},
        source.splits,
        source.label_names,
        source.sort_by,
        plan=source.plan(),
    )
    meta: dict[int, list] = {}
    from_file = source.sort_by == "id"
    records = source.raw_records(num_shards, shard_index)
    tasks = _batches(records, meta, from_file, source.file_paths)
    total = None if source.n_docs is None else len(range(shard_index, source.n_docs, num_shards))
    if pool is None and workers > 1:
        pool = WorkerPool(workers - 1, tokenizer_factory)
    results = run_here(tasks, tokenizer_factory) if pool is None else pool.results(tasks)
    bar = _Progress(total, source.read_fraction, progress)
    try:
        for index, pid, start, new, ids, lengths, bad in results:
            collector.add_tokens(pid, start, new)
            collector.add_docs(pid, ids, lengths, meta.pop(index), bad)
            bar.advance(len(lengths))
            if check is not None:
                check()
        bar.done()
    except BaseException:
        if pool is not None:
            pool.stop()
        raise
    finally:
        bar.close()
    if pool is not None:
        pool.close()
    collector.label_names = list(source.label_names)  # an archive's grow as it is read
    return collector


def tokenize_source(
    src: str | os.PathLike | Source,
    out: str | os.PathLike,
    options: VocabOptions | None = None,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
    cache_dir: str | None = None,
    sha256: str | None = None,
    tokenizer_factory: Callable | None = None,
    check: Callable[[], None] | None = None,
    source_options: SourceOptions | None = None,
    pool: WorkerPool | None = None,
) -> Path:
    """``python -m fastulm.tokenize SRC OUT``: the whole job in one process tree.

    ``src`` is a path or URL (opened with ``source_options``) or an opened ``Source``.
    ``pool``: worker processes started earlier (see WorkerPool). ``check`` is called
    between batches and before each file is written; it raises to stop the run (the CLI's
    Ctrl-C/SIGTERM handling), leaving no output behind."""
    options = options or VocabOptions()
    if options.vocab_path:
        load_given_vocab(options.vocab_path)  # fail before the work, not after
    t0 = time.perf_counter()
    n_workers = default_workers() if workers is None else max(1, workers)
    opened = isinstance(src, Source)
    with contextlib.ExitStack() as stack:
        if pool is None and n_workers > 1:  # first: the children start while the parent works
            pool = stack.enter_context(WorkerPool(n_workers - 1, tokenizer_factory))
        # Claim OUT (refused before any work if it may not be replaced): the run writes
        # under a temporary name for its whole length.
        target = stack.enter_context(OutputDir(out, force, sources=[] if opened else [src]))
        source = (
            src
            if opened
            else open_source(src, cache_dir=cache_dir, sha256=sha256, options=source_options)
        )
        collector = collect(
            source,
            workers,
            progress=progress,
            tokenizer_factory=tokenizer_factory,
            check=check,
            pool=pool,
        )
        path = finish(collector, target, options, check=check)
    if progress:
        n_tok = sum(
            v["tokens"] for v in json.loads((path / "meta.json").read_text())["splits"].values()
        )
        dt = time.perf_counter() - t0
        print(f"{collector.n_docs} docs, {n_tok} tokens in {dt:.1f} s -> {path}", file=sys.stderr)
    return path
