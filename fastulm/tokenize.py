"""``python -m fastulm.tokenize``: reviews -> fastai-identical tokens -> an Arrow corpus.

    python -m fastulm.tokenize SRC OUT [--workers N] [--max-vocab 60000] [--min-freq 2]
                                       [--vocab-from train,unsup | --vocab PATH] [--force]
    python -m fastulm.tokenize DATA.csv OUT [--text-col COL]... [--label-col COL]
                      [--valid-col COL | --valid-pct P --seed S] [--label-delim D]
    python -m fastulm.tokenize FOLDER_OR_TGZ OUT [--label-regex R] [--valid-pct P]
    python -m fastulm.tokenize SRC PART --num-shards K --shard-index I   (one slice)
    python -m fastulm.tokenize --merge PART... OUT                        (combine slices)
    python -m fastulm.tokenize --show OUT [--split train] [-n 5]

SRC is a folder of classes (train/<class>/*.txt, valid/ or test/, unsup/: aclImdb's
layout), its .tar.gz, a CSV, TSV, JSONL or Parquet file (columns text, label, is_valid by
default), or an http(s) URL of one of those.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

from fastulm.cli import parser
from fastulm.data import DataError
from fastulm.data.sources import OptionError, SourceOptions
from fastulm.data.workers import WorkerPool, default_workers
from fastulm.stop import StopRequest


def _parser() -> argparse.ArgumentParser:
    p = parser(
        "python -m fastulm.tokenize",
        "Tokenize reviews (fastai-identical) into a memory-mapped Arrow corpus.",
        epilog=__doc__.split("\n\n", 2)[1],
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="SRC OUT, or PART... OUT with --merge")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--max-vocab", type=int, default=60000, help="0 = no limit (default 60000)")
    p.add_argument("--min-freq", type=int, default=2, help="fewer occurrences -> xxunk (default 2)")
    p.add_argument(
        "--vocab-from",
        default=None,
        metavar="SPLITS",
        help="comma-separated splits the vocab counts (default: all)",
    )
    p.add_argument(
        "--vocab",
        default=None,
        metavar="PATH",
        help="reuse this vocab.json (or a corpus folder's) instead of building one",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace OUT if it is a corpus (or part) fastulm wrote; never any other folder",
    )
    p.add_argument(
        "--text-col",
        action="append",
        default=None,
        metavar="COL",
        help="tables: the text column (default: text); repeat it for several fields, each"
        " then starts with xxfld N as fastai marks them",
    )
    p.add_argument(
        "--label-col",
        default=None,
        metavar="COL",
        help="tables: the label column (default: label; without one, unlabelled texts)",
    )
    p.add_argument(
        "--valid-col",
        default=None,
        metavar="COL",
        help="tables: true/false column of validation rows (default: is_valid, if there)",
    )
    p.add_argument(
        "--valid-pct",
        type=float,
        default=None,
        metavar="P",
        help="put a random share P of the training documents in a valid split",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --valid-pct (default 0)")
    p.add_argument(
        "--label-delim",
        default=None,
        metavar="D",
        help="tables: multi-label cells, class names separated by D (e.g. ';')",
    )
    p.add_argument(
        "--label-regex",
        default=None,
        metavar="R",
        help="folders and archives: the label is the first group of R searched in each file's"
        r" name (IMDB ratings: '_(\d+)\.txt$')",
    )
    p.add_argument(
        "--drop-unlabelled",
        action="store_true",
        help="leave out documents without a label instead of stopping",
    )
    p.add_argument("--num-shards", type=int, default=None, metavar="K")
    p.add_argument("--shard-index", type=int, default=None, metavar="I")
    p.add_argument("--merge", action="store_true", help="combine shard parts: PART... OUT")
    p.add_argument("--show", default=None, metavar="OUT", help="print a few decoded documents")
    p.add_argument("--split", default=None, help="with --show: which split (default: first)")
    p.add_argument("-n", type=int, default=5, help="with --show: how many documents")
    p.add_argument("--cache-dir", default=None, help="where URLs are downloaded")
    p.add_argument("--sha256", default=None, help="expected sha256 of a downloaded SRC")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _vocab_options(args: argparse.Namespace):
    from fastulm.data.pipeline import VocabOptions

    return VocabOptions(
        max_vocab=args.max_vocab if args.max_vocab > 0 else None,
        min_freq=args.min_freq,
        vocab_from=args.vocab_from.split(",") if args.vocab_from else None,
        vocab_path=args.vocab,
    )


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser, check) -> None:
    if args.show is not None:
        from fastulm.data.corpus import open_corpus
        from fastulm.files import write_text

        corpus = open_corpus(args.show)
        splits = [args.split] if args.split else corpus.split_names
        for name in splits:
            if name not in corpus:
                raise DataError(f"{args.show}: no split {name!r} (has {corpus.split_names})")
            write_text("-", corpus.show(name, n=args.n) + "\n")
        return
    if args.vocab and args.vocab_from:
        parser.error("--vocab and --vocab-from exclude each other")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.max_vocab < 0:
        parser.error(f"--max-vocab must be >= 0 (0 = no limit), got {args.max_vocab}")
    if args.merge:
        from fastulm.data.parts import merge_parts

        if len(args.paths) < 2:
            parser.error("--merge needs PART... OUT")
        merge_parts(
            args.paths[:-1], args.paths[-1], _vocab_options(args), force=args.force, check=check
        )
        return
    if len(args.paths) != 2:
        parser.error("expected SRC OUT")
    sharded = args.num_shards is not None or args.shard_index is not None
    if sharded and (args.num_shards is None or args.shard_index is None or args.num_shards < 1):
        parser.error("--num-shards K and --shard-index I go together (K >= 1)")
    workers = default_workers() if args.workers is None else args.workers
    # The worker processes start first, so that their start-up overlaps the parent's.
    pool = WorkerPool(workers - 1) if workers > 1 and not sharded else None
    with pool or contextlib.nullcontext():
        _tokenize(args, check, pool)


def _tokenize(args: argparse.Namespace, check, pool) -> None:
    from fastulm.data.parts import tokenize_shard
    from fastulm.data.pipeline import tokenize_source

    src, out = args.paths
    source_options = SourceOptions(
        text_cols=args.text_col,
        label_col=args.label_col,
        valid_col=args.valid_col,
        valid_pct=args.valid_pct,
        seed=args.seed,
        label_delim=args.label_delim,
        label_regex=args.label_regex,
        drop_unlabelled=args.drop_unlabelled,
    )
    common = dict(
        source_options=source_options,
        workers=args.workers,
        force=args.force,
        progress=not args.quiet,
        cache_dir=args.cache_dir,
        sha256=args.sha256,
        check=check,
    )
    if pool is None and (args.num_shards is not None or args.shard_index is not None):
        tokenize_shard(src, out, args.num_shards, args.shard_index, **common)
        return
    tokenize_source(src, out, _vocab_options(args), pool=pool, **common)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # Nothing here multiplies matrices: without this, numpy's OpenBLAS starts a thread pool
    # in every process, whose idle spinning costs CPU the workers need.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # Ctrl-C and SIGTERM stop the run at its next safe point; temporary output is removed.
    stop = StopRequest()
    stop.install()
    try:
        _run(args, parser, stop.check)
    except OptionError as err:
        parser.error(str(err))  # a usage error: exit 2
    except DataError as err:
        print(f"fastulm.tokenize: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fastulm.tokenize: interrupted, nothing written", file=sys.stderr)
        return 128 + (stop.signum or signal.SIGINT)
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        print(f"fastulm.tokenize: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    # The tokenizer's tables are millions of small objects; freeing them one by one at
    # exit takes about 0.4 s and serves nothing once the corpus is on disk (or the error
    # reported): flush and leave.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
