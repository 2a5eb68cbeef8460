"""``python -m fastulm.predict RUN_DIR "text"``: label and probabilities from a trained classifier.

    python -m fastulm.predict RUN_DIR "I really loved that movie, it was awesome!"
    python -m fastulm.predict RUN_DIR --file reviews.txt          # -> reviews.predictions.csv
    python -m fastulm.predict RUN_DIR --file reviews.csv --text-col review --id-col id \
        [--out predictions.csv] [--also RUN_DIR_BWD] [--device auto] [--precision auto]
    python -m fastulm.predict EXPORT_DIR --onnx --file reviews.csv   # onnxruntime, no torch
    cat reviews.txt | python -m fastulm.predict RUN_DIR --file - > predictions.csv

``--file`` reads one text per line (blank lines skipped), or a CSV when the name ends in
``.csv`` or ``--text-col``/``--id-col`` is given (the text column defaults to ``text``).
``--file -`` reads standard input by the same rule. Any text size the tokenizer takes is
read, however long one CSV field is.

Predictions go to a CSV with an id column (the ``--id-col`` value, else the input's line or
row number), ``label`` and one ``p_<class>`` per class, rows in input order. ``--out``
defaults to NAME.predictions.csv beside the input (standard output for ``--file -``), never
the run directory; it is written by ``fastulm.files`` (atomic for a regular file, written
through for a FIFO or device, ``-`` is standard output) and checked before the model runs:
never the input file, never inside a model's folder, and an existing file only when it is
empty or a predictions CSV (so a rerun replaces its own output, never a user's file).
The "wrote N predictions" note and the progress bar (docs/s, when stderr is a terminal) go
to standard error, so standard output stays a clean CSV.

Single-label runs give softmax probabilities and the likeliest class; multi-label runs
(config.json ``task``) one sigmoid per class and every class over the threshold (the run's,
or ``--threshold``), joined by the run's ``label_delim`` (``;`` when it has none; empty when
no class is over). ``--also`` averages the probabilities of more runs (e.g. a backward
classifier, the paper's best IMDB result). The loop itself is ``fastulm.prediction``.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from fastulm.cli import parser
from fastulm.text.rules import join_fields


def _parser() -> argparse.ArgumentParser:
    # No abbreviations: a typo such as --dev must not silently mean --device.
    p = parser(
        "python -m fastulm.predict",
        "Classify texts with a classifier trained by python -m fastulm.train clas.",
    )
    p.add_argument("run_dir", help="classifier run directory (with --onnx: an export folder)")
    p.add_argument("text", nargs="?", help="a text to classify")
    p.add_argument(
        "--file", help="one text per line, or a CSV (.csv or --text-col); - = standard input"
    )
    p.add_argument(
        "--text-col",
        action="append",
        help="the CSV column holding the text; repeat it for several, joined with xxfld as in "
        "training (default: the columns the classifier was trained on, else text)",
    )
    p.add_argument(
        "--id-col", help="the CSV column copied to the output as the id (default: row number)"
    )
    p.add_argument(
        "--out",
        help="where --file predictions go; - = standard output "
        "(default: beside the input, NAME.predictions.csv; standard output for --file -)",
    )
    p.add_argument("--also", action="append", default=[], help="another run to average with")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="RUN_DIR (and --also) are folders written by python -m fastulm.export, run by "
        "onnxruntime",
    )
    p.add_argument("--bs", type=int, default=64, help="texts per batch (default 64)")
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present), cpu, cuda, cuda:1 (default auto)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="auto: bf16 where the device has it natively (default auto)",
    )
    p.add_argument("--workers", type=int, help="tokenizer processes (default: all cores)")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for the model (default: all cores; on a busy machine 1 is faster)",
    )
    p.add_argument(
        "--threshold", type=float, help="multi-label runs: a class is predicted over this"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def _no_csv_field_limit() -> None:
    """csv refuses fields over 128 KB by default; a review may be several MB."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # C long is 32 bits on some platforms
            limit //= 10


def _read_source(source: str) -> tuple[str, bytes]:
    """The name to report and the raw bytes of a file or of ``-`` (standard input)."""
    from fastulm.files import is_stdio

    if is_stdio(source):
        stdin = sys.stdin
        buf = getattr(stdin, "buffer", None)
        return "standard input", buf.read() if buf is not None else stdin.read().encode("utf-8")
    path = Path(source)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give a file (one text per line, or a CSV)")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    return str(path), path.read_bytes()


def read_rows(
    source: str | Path,
    text_col: str | list[str] | None = None,
    id_col: str | None = None,
) -> tuple[list[str], list[str]]:
    """(ids, texts) of ``source`` (a path, or ``-``).

    A CSV (the name ends in .csv, or a column is named; the text column defaults to
    ``text``): one text per row, several columns joined as ``tokenize`` joined them
    (``xxfld 1 <a> xxfld 2 <b>``), its id the ``id_col`` cell, else the row number (1 = the
    first row after the header). Otherwise one text per line, its id the line number; blank
    lines are skipped, not scored as reviews.
    """
    cols = [text_col] if isinstance(text_col, str) else list(text_col or [])
    name, data = _read_source(str(source))
    try:
        raw = data.decode("utf-8-sig")  # a spreadsheet's byte-order mark is not text
    except UnicodeDecodeError as err:
        from fastulm.data import not_utf8

        raise ValueError(f"{name}: {not_utf8(data, err)}") from None
    if cols or id_col is not None or str(source).lower().endswith(".csv"):
        cols = cols or ["text"]
        _no_csv_field_limit()
        reader = csv.DictReader(io.StringIO(raw, newline=""))
        try:
            for c in (*cols, id_col):
                if c is not None and (reader.fieldnames is None or c not in reader.fieldnames):
                    raise ValueError(f"{name}: no column {c!r} (columns: {reader.fieldnames})")
            rows = [
                (row[id_col] if id_col else str(i), join_fields([row[c] or "" for c in cols]))
                for i, row in enumerate(reader, 1)
            ]
        except csv.Error as err:
            raise ValueError(
                f"{name}: not a readable CSV (line {reader.line_num}: {err})"
            ) from None
    else:
        # lines end at \n (or \r\n) only: str.splitlines would also break a review at a
        # form feed or U+2028 inside it, and the rows would stop lining up with the input
        lines = [line.removesuffix("\r") for line in raw.split("\n")]
        rows = [(str(i), line) for i, line in enumerate(lines, 1) if line.strip()]
    if not rows:
        raise ValueError(f"{name}: no texts")
    return [r[0] for r in rows], [r[1] for r in rows]


def read_texts(source: str | Path, text_col: str | None = None) -> list[str]:
    """The texts of ``source`` (see ``read_rows``)."""
    return read_rows(source, text_col)[1]


def predict_runs(run_dirs: list[str], texts: list[str], args: argparse.Namespace):
    """Labels and probabilities of ``texts``, averaged over one or more runs."""
    common = dict(bs=args.bs, workers=args.workers, threshold=args.threshold, threads=args.threads)
    progress = False if args.no_progress else None
    if args.onnx:
        from fastulm.inference import predict_exported

        return predict_exported(run_dirs, texts, progress=progress, **common)
    from fastulm.prediction import predict_texts

    return predict_texts(
        run_dirs, texts, device=args.device, precision=args.precision, progress=progress, **common
    )


def _csv_text(ids: list[str], id_name: str, pred) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([id_name, "label", *[f"p_{n}" for n in pred.names]])
    for i, label, row in zip(ids, pred.labels, pred.probs.tolist()):
        w.writerow([i, label, *[f"{v:.6f}" for v in row]])
    return buf.getvalue()


def default_out(source: str) -> str:
    """Beside the input (NAME.predictions.csv), never into the model's run directory;
    standard output when the input is standard input."""
    from fastulm.files import is_stdio

    if is_stdio(source):
        return "-"
    path = Path(source)
    return str(path.with_name(f"{path.stem}.predictions.csv"))


def _trained_text_cols(run_dir: str, onnx: bool) -> list[str] | None:
    """The columns the classifier's corpus joined (several: a CSV needs the same ones), or
    None; an unreadable file is left for the model loader to report."""
    import json

    try:
        if onnx:
            cols = json.loads((Path(run_dir) / "tokenizer.json").read_text()).get("text_cols")
        else:
            config = json.loads((Path(run_dir) / "config.json").read_text())
            cols = config.get("settings", {}).get("text_cols")
    except (OSError, ValueError, AttributeError):
        return None
    ok = isinstance(cols, list) and len(cols) > 1 and all(isinstance(c, str) for c in cols)
    return cols if ok else None


def _is_predictions_csv(path: Path) -> bool:
    """Does ``path`` start as ``_csv_text`` writes (id, ``label``, ``p_<class>``...)?"""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader([f.readline()]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return len(header) >= 3 and header[1] == "label" and all(c.startswith("p_") for c in header[2:])


def check_out(out: str, source: str, run_dirs: list[str]) -> None:
    """Refuse an ``--out`` that would lose a user's file: the input itself, a file inside a
    model's folder, or an existing file that is not a predictions CSV (an empty one is
    taken). Raises ``WriteError``."""
    import os

    from fastulm.files import WriteError, is_stdio

    if is_stdio(out):
        return
    path = Path(out)
    real = Path(os.path.realpath(path))
    for run in run_dirs:
        home = Path(os.path.realpath(run))
        if home in real.parents:
            raise WriteError(
                f"{out}: is inside the model folder {run}; write predictions elsewhere"
            )
    if not path.exists():
        return
    if not is_stdio(source) and Path(source).exists() and os.path.samefile(path, source):
        raise WriteError(f"{out}: is the input file; choose another --out")
    if path.is_file() and path.stat().st_size and not _is_predictions_csv(path):
        raise WriteError(
            f"{out}: exists and is not a predictions file fastulm wrote; "
            "will not replace it (move it, or choose another --out)"
        )


def main(argv: list[str] | None = None) -> int:
    # intermixed: the text may follow an option (``RUN --onnx "text"``)
    args = _parser().parse_intermixed_args(argv)
    if (args.text is None) == (args.file is None):
        print("error: give a text or --file (not both)", file=sys.stderr)
        return 2
    if args.out is not None and args.file is None:
        print("error: --out goes with --file (a single text's label is printed)", file=sys.stderr)
        return 2
    if args.bs < 1:
        print(f"error: --bs must be >= 1, got {args.bs}", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print(f"error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        print(f"error: --threshold must be in [0, 1], got {args.threshold}", file=sys.stderr)
        return 2
    from fastulm.files import check_writable, write_text
    from fastulm.weights import CheckpointError

    out = None
    if args.file is not None:
        out = args.out if args.out is not None else default_out(args.file)
    try:
        if out is not None:
            check_out(out, args.file, [args.run_dir, *args.also])
            check_writable(out)  # before the model runs, not after
        if args.file is None:
            ids, texts = ["1"], [args.text]
        else:
            cols = args.text_col or _trained_text_cols(args.run_dir, args.onnx)
            ids, texts = read_rows(args.file, cols, args.id_col)
        pred = predict_runs([args.run_dir, *args.also], texts, args)
        if out is not None:
            write_text(out, _csv_text(ids, args.id_col or "id", pred))
        else:
            cells = ", ".join(f"{n}: {p:.4f}" for n, p in zip(pred.names, pred.probs[0].tolist()))
            write_text("-", f"{pred.labels[0] or '(no label)'}  ({cells})\n")
    except (CheckpointError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if out is not None:
        where = "standard output" if out == "-" else out
        print(f"wrote {len(pred.labels)} predictions to {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
