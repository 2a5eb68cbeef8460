"""Shards for more than one machine: a *part* per slice, merged into one corpus.

``--num-shards K --shard-index i`` runs the pipeline's collection on every K-th document and
writes a part folder (union token table with counts, documents as union ids); ``merge_parts``
feeds the parts to a ``Collector`` and finishes exactly as a single run would, so the merged
corpus is byte-identical to one written in one go.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from fastulm.data import DataError
from fastulm.data.corpus import (
    PART_FORMAT,
    OutputDir,
    check_digests,
    list_array,
    numpy_array,
    numpy_view,
    string_array,
    write_arrow,
    write_json,
)
from fastulm.data.labels import Coder
from fastulm.data.pipeline import Collector, VocabOptions, collect, finish
from fastulm.data.sources import SourceOptions, open_source

PART_SCHEMA = pa.schema(
    [
        ("ids", pa.large_list(pa.int32())),
        ("label", pa.int64()),
        ("id", pa.string()),
        ("split", pa.string()),
    ]
)


def tokenize_shard(
    src: str | os.PathLike,
    out: str | os.PathLike,
    num_shards: int,
    shard_index: int,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
    cache_dir: str | None = None,
    sha256: str | None = None,
    tokenizer_factory: Callable | None = None,
    check: Callable[[], None] | None = None,
    source_options: SourceOptions | None = None,
) -> Path:
    """Tokenize every ``num_shards``-th document (from ``shard_index``) into a part folder."""
    if not 0 <= shard_index < num_shards:
        raise DataError(f"--shard-index must be in 0..{num_shards - 1}, got {shard_index}")
    with OutputDir(out, force, sources=[src], what="part") as target:
        source = open_source(src, cache_dir=cache_dir, sha256=sha256, options=source_options)
        collector = collect(
            source, workers, num_shards, shard_index, progress, tokenizer_factory, check
        )
        if collector.n_docs == 0:
            raise DataError(f"{source.path}: shard {shard_index} of {num_shards} has no documents")
        if check is not None:
            check()
        return _write_part(collector, target, num_shards, shard_index, source.fingerprint())


def _write_part(
    collector: Collector, target: OutputDir, num_shards: int, shard_index: int, fingerprint: dict
) -> Path:
    canon = collector.canonical()
    tokens_list = collector.tokens
    identity = np.arange(len(tokens_list), dtype=np.int32)
    perm = np.concatenate([canon.perms[s] for s in canon.perms])
    parts = [canon.gather(s, identity) for s in canon.perms]
    stream = np.concatenate([p[0] for p in parts])
    sizes = np.concatenate([np.diff(p[1]) for p in parts])
    offsets = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    counts = np.bincount(stream, minlength=len(tokens_list)).astype(np.int64)
    labels = [collector.labels[p] for p in perm.tolist()]
    multi = collector.plan.get("task") == "multi_label"
    columns = [
        list_array(offsets, stream),
        numpy_array(np.array([-2 if isinstance(x, tuple) else x for x in labels]), pa.int64()),
        string_array(collector.doc_ids[p] for p in perm),
        string_array(collector.doc_splits[p] for p in perm),
    ]
    if multi:  # label -2: the document's classes are in ``labels``
        sets = [x if isinstance(x, tuple) else () for x in labels]
        set_offsets = np.zeros(len(sets) + 1, np.int64)
        np.cumsum([len(x) for x in sets], out=set_offsets[1:])
        values = np.fromiter((c for x in sets for c in x), np.int32, int(set_offsets[-1]))
        columns.append(list_array(set_offsets, values))
    schema = PART_SCHEMA.append(pa.field("labels", pa.large_list(pa.int32()))) if multi else None
    docs = pa.RecordBatch.from_arrays(columns, schema=schema or PART_SCHEMA)
    tokens = pa.RecordBatch.from_arrays(
        [string_array(tokens_list), numpy_array(counts, pa.int64())], names=["token", "count"]
    )
    meta = {
        "format": PART_FORMAT,
        "num_shards": num_shards,
        "shard_index": shard_index,
        "source": collector.source,
        "fingerprint": fingerprint,
        "splits": list(collector.splits),
        "label_names": collector.label_names,
        "plan": collector.plan,
        "sort_by": collector.sort_by,
        "docs": collector.n_docs,
        "non_utf8": sorted(collector.non_utf8),
    }
    meta["sha256"] = {
        "tokens.arrow": write_arrow(target.tmp / "tokens.arrow", tokens),
        "docs.arrow": write_arrow(target.tmp / "docs.arrow", docs),
    }
    write_json(target.tmp / "part.json", meta)
    return target.commit()


def _read_part(path: Path) -> tuple[dict, pa.RecordBatch, pa.RecordBatch]:
    meta_path = path / "part.json"
    if not meta_path.exists():
        raise DataError(f"{path}: not a complete part (no part.json)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != PART_FORMAT:
            raise DataError(f"{meta_path}: not a {PART_FORMAT} file")
        check_digests(meta_path, meta, ["tokens.arrow", "docs.arrow"], "write this part again")
        tables = []
        for name in ("tokens.arrow", "docs.arrow"):
            reader = pa.ipc.open_file(pa.memory_map(str(path / name), "r"))
            tables.append(reader.get_batch(0))
    except DataError:
        raise
    except (OSError, ValueError, pa.ArrowInvalid) as err:
        raise DataError(f"{path}: unreadable part ({str(err).splitlines()[0]})") from None
    return meta, tables[0], tables[1]


def merge_parts(
    parts: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    options: VocabOptions | None = None,
    force: bool = False,
    check: Callable[[], None] | None = None,
) -> Path:
    """Combine the parts of a sharded run into the same corpus a single run writes."""
    options = options or VocabOptions()
    if not parts:
        raise DataError("--merge needs at least one part")
    with OutputDir(out, force, sources=parts) as target:
        return finish(_collect_parts(parts), target, options, check=check)


def _collect_parts(parts: Sequence[str | os.PathLike]) -> Collector:
    read = [(Path(p), *_read_part(Path(p))) for p in parts]
    first = read[0][1]
    k = first["num_shards"]
    got = sorted(m["shard_index"] for _, m, _, _ in read)
    if got != list(range(k)):
        missing = sorted(set(range(k)) - set(got))
        raise DataError(
            f"parts do not make a whole: {k} shards expected, "
            + (f"missing shard(s) {missing}" if missing else f"shard indices {got}")
        )
    # The same source on several machines may lie at different paths: its fingerprint, where
    # every part has one, tells whether the parts read the same data
    same = ("fingerprint",) if all("fingerprint" in m for _, m, _, _ in read) else ("source",)
    for path, m, _, _ in read:
        for key in ("num_shards", *same, "splits", "sort_by", "plan"):
            if m.get(key) != first.get(key):
                raise DataError(
                    f"{path}: {key} differs from {read[0][0]}'s ({m.get(key)!r}):"
                    " the parts were not cut from the same source"
                )
    plan = dict(first.get("plan") or {})
    # An archive's parts each number the classes they saw first-come: renumber to the union
    # (put in class order by finish); a table's or folder's parts all have the same names.
    coder = Coder()
    if any(m["label_names"] != first["label_names"] for _, m, _, _ in read):
        plan["labels_sorted"] = False
    collector = Collector(first["source"], tuple(first["splits"]), [], first["sort_by"], plan=plan)
    for path, m, tokens, docs in read:
        lut = [coder(n) for n in m["label_names"]]
        labels = docs.column("label").to_pylist()
        if "labels" in docs.schema.names:
            sets = docs.column("labels").to_pylist()
            labels = [tuple(lut[c] for c in s) if x == -2 else x for x, s in zip(labels, sets)]
        else:
            labels = [lut[x] if x >= 0 else x for x in labels]
        collector.add_tokens(path, 0, tokens.column("token").to_pylist())
        col = docs.column("ids")
        collector.add_docs(
            path,
            numpy_view(col.values),
            np.diff(numpy_view(col.offsets)),
            list(zip(labels, docs.column("split").to_pylist(), docs.column("id").to_pylist())),
        )
        collector.non_utf8.extend(m["non_utf8"])
    collector.label_names = coder.names
    return collector
