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

import json
import multiprocessing as mp
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
import pyarrow as pa

from fastulm.data import DataError
from fastulm.data.corpus import (
    OutputDir,
    split_batch,
    string_array,
    write_corpus,
)
from fastulm.data.sources import RawRecord, Source, decode_text, open_source
from fastulm.data.vocab import Vocab, make_itos

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


# ---------------------------------------------------------------- numba kernels


@numba.njit(cache=True, nogil=True)
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


@numba.njit(cache=True, nogil=True)
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


# ---------------------------------------------------------------- workers

_TOKENIZER = None
_SENT = 0


def default_tokenizer():
    from fastulm.text.tokenizer import Tokenizer

    return Tokenizer()


def _worker_init(factory: Callable, child: bool = False) -> None:
    global _TOKENIZER, _SENT
    if child:  # the parent handles Ctrl-C and SIGTERM and stops the pool itself
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _TOKENIZER, _SENT = factory(), 0


def _worker_run(task: tuple[int, list, bool, bool]):
    """Tokenize one batch; return local ids, doc lengths, new table entries, bad docs."""
    global _SENT
    index, items, from_file, is_path = task
    tok = _TOKENIZER
    texts, bad = [], []
    for j, data in enumerate(items):
        text, not_utf8 = decode_text(data, from_file, is_path)
        if not_utf8:
            bad.append(j)
        texts.append(text)
    if hasattr(tok, "encode_batch"):
        ids, offsets = tok.encode_batch(texts)
        lengths = np.diff(offsets).astype(np.int64)
    else:
        arrays = [tok.encode(t) for t in texts]
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        ids = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
    ids = np.ascontiguousarray(ids, dtype=np.int32)
    start, table = _SENT, tok.tokens
    new = table[start:]
    _SENT = len(table)
    return index, os.getpid(), start, new, ids, lengths, bad


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


class _Growable:
    """An int32 array that grows by appending (amortised doubling)."""

    def __init__(self):
        self.data = np.zeros(1024, np.int32)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        n = self.size + len(values)
        if n > len(self.data):
            grown = np.zeros(max(n, 2 * len(self.data)), np.int32)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : n] = values
        self.size = n


@dataclass
class Collector:
    """Union token table plus every document's union ids, in arrival order."""

    source: dict
    splits: tuple[str, ...]
    label_names: list[str]
    sort_by: str
    _index: dict[str, int] = field(default_factory=dict)  # token -> union id (insertion order)
    _maps: dict[object, _Growable] = field(default_factory=dict)
    _chunks: list[np.ndarray] = field(default_factory=list)
    _lengths: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    doc_splits: list[str] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)
    non_utf8: list[str] = field(default_factory=list)

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
        self._chunks.append(np.take(m.data[: m.size], ids))
        self._lengths.append(np.asarray(lengths, np.int64))
        for label, split, doc_id in records:
            self.labels.append(label)
            self.doc_splits.append(split)
            self.doc_ids.append(doc_id)
        self.non_utf8.extend(records[j][2] for j in bad)

    def canonical(self) -> Canonical:
        """Documents sorted by split, then by name (files) or row (tables); a document seen
        twice (overlapping parts) is an error.

        Consumes the collected chunks: they are moved into one flat array."""
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
        # One flat array, each chunk released as soon as it is copied (peak: one chunk over).
        src = np.empty(int(doc_len.sum()), np.int32)
        chunks, self._chunks = self._chunks, []
        pos = 0
        for i, c in enumerate(chunks):
            src[pos : pos + len(c)] = c
            pos += len(c)
            chunks[i] = None
        return Canonical(src, doc_start, doc_len, perms, names)


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
    vocab_from = list(options.vocab_from or collector.splits)
    for s in vocab_from:
        if s not in collector.splits:
            raise DataError(
                f"--vocab-from: no split {s!r} in this source (has {', '.join(collector.splits)})"
            )
    canon = collector.canonical()
    tokens = collector.tokens
    n_union = len(tokens)
    if options.vocab_path:
        vocab = Vocab.load(options.vocab_path)
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
    labels = np.asarray(collector.labels, np.int64)

    check = check or (lambda: None)

    def batches() -> Iterator[tuple[str, pa.RecordBatch]]:
        for s, perm in canon.perms.items():  # one split in memory at a time
            check()
            ids, offsets = canon.gather(s, lut)
            yield (
                s,
                split_batch(ids, offsets, labels[perm], string_array(canon.names[perm].tolist())),
            )
        check()  # last chance to stop before the corpus is renamed into place

    from fastulm import __version__

    non_utf8 = sorted(collector.non_utf8)
    meta = {
        "fastulm_version": __version__,
        "source": collector.source,
        "options": options.describe(),
        "label_names": collector.label_names,
        "non_utf8_files": len(non_utf8),
        "non_utf8_examples": non_utf8[:20],
    }
    return write_corpus(out, vocab, batches(), meta, force=force)


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


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _widen_pipes(pool) -> None:
    """1 MB pipes between the parent and the pool (Linux; 64 KB by default): a child then
    hands over a batch's ids (about 500 KB) at once instead of waiting, chunk by chunk, for
    the parent's result thread to get the GIL back from the parent's own tokenizing. Only
    a speed-up: skipped where the pool's pipes or the fcntl are not there."""
    try:
        import fcntl

        for conn in (pool._outqueue._reader, pool._inqueue._writer):
            fcntl.fcntl(conn.fileno(), 1031, 1 << 20)  # F_SETPIPE_SZ
    except (ImportError, AttributeError, OSError):
        pass


def _shared(tasks: Iterator[tuple], pool, n_children: int) -> Iterator[tuple]:
    """Results of every task, in no set order. The parent is one of the workers: it keeps
    each child four batches ahead and tokenizes the next batch itself while they work, so
    one core is not spent on passing half the data through pipes."""
    pending: deque = deque()
    for task in tasks:
        while pending and pending[0].ready():
            yield pending.popleft().get()
        if len(pending) < 4 * n_children:
            pending.append(pool.apply_async(_worker_run, (task,)))
        else:
            yield _worker_run(task)
    while pending:
        yield pending.popleft().get()


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
) -> Collector:
    """Tokenize every document of ``source`` (or of one shard) in ``workers`` processes."""
    factory = tokenizer_factory or default_tokenizer
    workers = default_workers() if workers is None else max(1, workers)
    collector = Collector(
        {"path": source.path, "kind": source.kind},
        source.splits,
        source.label_names,
        source.sort_by,
    )
    meta: dict[int, list] = {}
    from_file = source.sort_by == "id"
    records = source.raw_records(num_shards, shard_index)
    tasks = _batches(records, meta, from_file, source.file_paths)
    total = None if source.n_docs is None else len(range(shard_index, source.n_docs, num_shards))
    pool = None
    _worker_init(factory)
    if workers > 1:
        _TOKENIZER.encode("Warm up the tokenizer, once.")  # forked workers inherit it warm
        methods = mp.get_all_start_methods()
        ctx = mp.get_context("fork" if "fork" in methods else "spawn")
        pool = ctx.Pool(workers - 1, initializer=_worker_init, initargs=(factory, True))
        _widen_pipes(pool)
        results = _shared(tasks, pool, workers - 1)
    else:
        results = map(_worker_run, tasks)
    bar = _Progress(total, source.read_fraction, progress)
    try:
        for index, pid, start, new, ids, lengths, bad in results:
            collector.add_tokens(pid, start, new)
            collector.add_docs(pid, ids, lengths, meta.pop(index), bad)
            bar.advance(len(lengths))
            if check is not None:
                check()
        bar.done()
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return collector


def tokenize_source(
    src: str | os.PathLike,
    out: str | os.PathLike,
    options: VocabOptions | None = None,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
    cache_dir: str | None = None,
    sha256: str | None = None,
    tokenizer_factory: Callable | None = None,
    check: Callable[[], None] | None = None,
) -> Path:
    """``python -m fastulm.tokenize SRC OUT``: the whole job in one process tree.

    ``check`` is called between batches and before each file is written; it raises to stop
    the run (the CLI's Ctrl-C/SIGTERM handling), leaving no output behind."""
    options = options or VocabOptions()
    if options.vocab_path:
        Vocab.load(options.vocab_path)  # fail before the work, not after
    t0 = time.perf_counter()
    # Claim OUT first (refused before any work if it may not be replaced): the run writes
    # under a temporary name for its whole length.
    with OutputDir(out, force, sources=[src]) as target:
        source = open_source(src, cache_dir=cache_dir, sha256=sha256)
        collector = collect(
            source, workers, progress=progress, tokenizer_factory=tokenizer_factory, check=check
        )
        path = finish(collector, target, options, check=check)
    if progress:
        n_tok = sum(
            v["tokens"] for v in json.loads((path / "meta.json").read_text())["splits"].values()
        )
        dt = time.perf_counter() - t0
        print(f"{collector.n_docs} docs, {n_tok} tokens in {dt:.1f} s -> {path}", file=sys.stderr)
    return path
