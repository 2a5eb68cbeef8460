"""``python -m fastulm.predict RUN_DIR "text"``: label and probabilities from a trained classifier.

    python -m fastulm.predict RUN_DIR "I really loved that movie, it was awesome!"
    python -m fastulm.predict RUN_DIR --file reviews.txt [--out predictions.csv]
    python -m fastulm.predict RUN_DIR --file reviews.csv --text-col text [--also RUN_DIR_BWD]
    cat reviews.txt | python -m fastulm.predict RUN_DIR --file - --out - > predictions.csv

``--file`` reads one text per line, or a CSV when the name ends in ``.csv`` or ``--text-col``
is given (the column defaults to ``text``). ``--file -`` reads standard input by the same
rule: lines, or a CSV when ``--text-col`` is given (there is no name to tell). Any text size
the tokenizer takes is read, however long one CSV field is.

Predictions go to a CSV, ``--out`` (default ``RUN_DIR/predictions.csv``), written by
``fastulm.files``: a regular file is replaced atomically, a FIFO or device (``/dev/stdout``)
is written through, ``-`` is standard output. ``--out`` is checked before the model runs,
and the "wrote N predictions" note goes to standard error so that standard output stays a
clean CSV. ``--also`` averages the probabilities of more classifier runs (e.g. a backward
one, the paper's best IMDB result).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from fastulm.cli import parser


def _parser() -> argparse.ArgumentParser:
    # No abbreviations: a typo such as --dev must not silently mean --device.
    p = parser(
        "python -m fastulm.predict",
        "Classify texts with a classifier trained by python -m fastulm.train clas.",
    )
    p.add_argument("run_dir", help="classifier run directory")
    p.add_argument("text", nargs="?", help="a text to classify")
    p.add_argument(
        "--file", help="one text per line, or a CSV (.csv or --text-col); - = standard input"
    )
    p.add_argument("--text-col", help="the CSV column holding the text (default text)")
    p.add_argument(
        "--out",
        help="where --file predictions go; - = standard output (default RUN_DIR/predictions.csv)",
    )
    p.add_argument("--also", action="append", default=[], help="another run to average with")
    p.add_argument("--bs", type=int, default=64, help="texts per batch (default 64)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default cpu)")
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
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    return str(path), path.read_bytes()


def read_texts(source: str | Path, text_col: str | None = None) -> list[str]:
    """The texts of ``source`` (a path, or ``-``): one per line, or the ``text_col`` column
    of a CSV when the name ends in .csv or ``text_col`` is given (default column ``text``)."""
    name, data = _read_source(str(source))
    try:
        raw = data.decode("utf-8-sig")  # a spreadsheet's byte-order mark is not text
    except UnicodeDecodeError as err:
        raise ValueError(f"{name}: not UTF-8 text (byte {err.start})") from None
    if text_col is not None or str(source).lower().endswith(".csv"):
        col = text_col or "text"
        _no_csv_field_limit()
        reader = csv.DictReader(io.StringIO(raw, newline=""))
        try:
            if reader.fieldnames is None or col not in reader.fieldnames:
                raise ValueError(f"{name}: no column {col!r} (columns: {reader.fieldnames})")
            texts = [row[col] or "" for row in reader]
        except csv.Error as err:
            raise ValueError(
                f"{name}: not a readable CSV (line {reader.line_num}: {err})"
            ) from None
    else:
        # lines end at \n (or \r\n) only: str.splitlines would also break a review at a
        # form feed or U+2028 inside it, and the rows would stop lining up with the input
        texts = [line.removesuffix("\r") for line in raw.split("\n")]
        if texts and texts[-1] == "":
            texts.pop()
    if not texts:
        raise ValueError(f"{name}: no texts")
    return texts


def predict_runs(run_dirs: list[str], texts: list[str], bs: int, device: str):
    """Average class probabilities over one or more classifier runs."""
    import torch

    from fastulm.generation import NonFiniteError
    from fastulm.prediction import predict_labels
    from fastulm.run_reader import load_run

    probs, names = None, None
    for rd in run_dirs:
        run = load_run(rd, device)
        if run.kind != "clas":
            raise ValueError(f"{rd}: a {run.kind} run, not a classifier")
        backwards = run.config.get("settings", {}).get("backwards", False)
        try:
            _, p = predict_labels(run.model, run.vocab, run.label_names, texts, bs, backwards)
        except NonFiniteError as err:
            raise ValueError(f"{rd}: {err}") from None
        if names is not None and run.label_names != names:
            raise ValueError(f"{rd}: labels {run.label_names} differ from {names}")
        names = run.label_names
        probs = p if probs is None else probs + p
    probs = probs / len(run_dirs)
    labels = [names[i] if names else str(i) for i in torch.argmax(probs, 1).tolist()]
    return labels, probs, names or [str(i) for i in range(probs.shape[1])]


def _csv_text(labels: list[str], probs, names: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["label", *[f"p_{n}" for n in names]])
    for label, row in zip(labels, probs.tolist()):
        w.writerow([label, *[f"{v:.6f}" for v in row]])
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (args.text is None) == (args.file is None):
        print("error: give a text or --file (not both)", file=sys.stderr)
        return 2
    if args.out is not None and args.file is None:
        print("error: --out goes with --file (a single text's label is printed)", file=sys.stderr)
        return 2
    if args.bs < 1:
        print(f"error: --bs must be >= 1, got {args.bs}", file=sys.stderr)
        return 2
    from fastulm.files import check_writable, write_text
    from fastulm.weights import CheckpointError

    out = None
    if args.file is not None:
        out = args.out if args.out is not None else str(Path(args.run_dir) / "predictions.csv")
    try:
        if out is not None:
            check_writable(out)  # before the model runs, not after
        texts = [args.text] if args.file is None else read_texts(args.file, args.text_col)
        labels, probs, names = predict_runs([args.run_dir, *args.also], texts, args.bs, args.device)
        if out is not None:
            write_text(out, _csv_text(labels, probs, names))
    except (CheckpointError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if out is None:
        cells = ", ".join(f"{n}: {p:.4f}" for n, p in zip(names, probs[0].tolist()))
        print(f"{labels[0]}  ({cells})")
    else:
        where = "standard output" if out == "-" else out
        print(f"wrote {len(labels)} predictions to {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
