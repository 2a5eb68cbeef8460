"""``python -m fastulm.predict RUN_DIR "text"``: label and probabilities from a trained classifier.

    python -m fastulm.predict RUN_DIR "I really loved that movie, it was awesome!"
    python -m fastulm.predict RUN_DIR --file reviews.txt [--out predictions.csv]
    python -m fastulm.predict RUN_DIR --file reviews.csv --text-col text [--also RUN_DIR_BWD]

``--file`` reads one text per line, or a CSV (``.csv``) with a text column; predictions go
to a CSV (default ``RUN_DIR/predictions.csv``) written atomically. ``--also`` averages the
probabilities of more classifier runs (e.g. a backward one, the paper's best IMDB result).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastulm.predict",
        description="Classify texts with a classifier trained by python -m fastulm.train clas.",
    )
    p.add_argument("run_dir", help="classifier run directory")
    p.add_argument("text", nargs="?", help="a text to classify")
    p.add_argument("--file", help="one text per line, or a .csv with a text column")
    p.add_argument("--text-col", default="text", help="CSV column holding the text")
    p.add_argument("--out", help="where --file predictions go (default RUN_DIR/predictions.csv)")
    p.add_argument("--also", action="append", default=[], help="another run to average with")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--device", default="cpu")
    return p


def read_texts(path: Path, text_col: str) -> list[str]:
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start})") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(raw))
        if reader.fieldnames is None or text_col not in reader.fieldnames:
            raise ValueError(f"{path}: no column {text_col!r} (columns: {reader.fieldnames})")
        texts = [row[text_col] or "" for row in reader]
    else:
        texts = raw.splitlines()
    if not texts:
        raise ValueError(f"{path}: no texts")
    return texts


def predict_runs(run_dirs: list[str], texts: list[str], bs: int, device: str):
    """Average class probabilities over one or more classifier runs."""
    import torch

    from fastulm.train.run_dir import load_run
    from fastulm.train.text_learners import predict_labels

    probs, names = None, None
    for rd in run_dirs:
        run = load_run(rd, device)
        if run.kind != "clas":
            raise ValueError(f"{rd}: a {run.kind} run, not a classifier")
        backwards = run.config.get("settings", {}).get("backwards", False)
        _, p = predict_labels(run.model, run.vocab, run.label_names, texts, bs, backwards)
        if names is not None and run.label_names != names:
            raise ValueError(f"{rd}: labels {run.label_names} differ from {names}")
        names = run.label_names
        probs = p if probs is None else probs + p
    probs = probs / len(run_dirs)
    labels = [names[i] if names else str(i) for i in torch.argmax(probs, 1).tolist()]
    return labels, probs, names or [str(i) for i in range(probs.shape[1])]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from fastulm.files import atomic_write
    from fastulm.train.checkpoint import CheckpointError

    if (args.text is None) == (args.file is None):
        print("error: give a text or --file (not both)", file=sys.stderr)
        return 2
    try:
        texts = [args.text] if args.file is None else read_texts(Path(args.file), args.text_col)
        labels, probs, names = predict_runs([args.run_dir, *args.also], texts, args.bs, args.device)
    except (CheckpointError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.file is None:
        cells = ", ".join(f"{n}: {p:.4f}" for n, p in zip(names, probs[0].tolist()))
        print(f"{labels[0]}  ({cells})")
        return 0
    out = Path(args.out) if args.out else Path(args.run_dir) / "predictions.csv"
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["label", *[f"p_{n}" for n in names]])
    for label, row in zip(labels, probs.tolist()):
        w.writerow([label, *[f"{v:.6f}" for v in row]])
    atomic_write(out, lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8"))
    print(f"wrote {len(labels)} predictions to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
