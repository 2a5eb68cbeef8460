"""Keep a lent GPU run of the IMDB pipeline, and plot every kept run's accuracy against time.

    python scripts/imdb_record.py FILES_AT/result.json [FILES_AT/pipeline.log ...]
    python scripts/imdb_record.py --plot-only

The first form copies ``result.json`` (scripts/imdb_pipeline.py's record: ``device``,
``test_accuracy``, ``n_test``, ``wall_s``, ``pretrained``, ``recipe``, per-stage times, LM
tokens/s, validation accuracy and perplexity) to
``benchmarks/results/gpu/imdb-YYYY-MM-DD-N.json`` (the run's date, N the next free number),
and each further file beside it as ``imdb-YYYY-MM-DD-N.<its name>``. A kept file is never
replaced: runs are recorded as they came out, good or bad. Both forms then redraw
``imdb_accuracy_vs_time.png`` from every ``imdb-*.json`` there: test accuracy against the
call's wall time, one point a run, with the issue's goal (94.5% in 600 s) and the published
anchors as lines.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "gpu"
REQUIRED = ("device", "test_accuracy", "n_test", "wall_s", "pretrained", "recipe")
GOAL = (600.0, 0.945)  # one device call of at most 600 s; test accuracy
# Published test accuracies of ULMFiT on IMDB (with WikiText-103 weights; fastulm has none)
ANCHORS = {
    "fastai 2 ULMFiT example (WT103, ~90 min LM)": 0.9451,
    "fastai 1 forward (WT103, Titan RTX)": 0.9496,
}


def record(result: Path, extras: list[Path], folder: Path = RESULTS) -> Path:
    """Copy ``result`` (and ``extras``) in as the next run of its date; the new path."""
    data = json.loads(result.read_text(encoding="utf-8"))
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{result}: not a pipeline record (no {', '.join(missing)})")
    date = str(data.get("date") or "")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise ValueError(f"{result}: no date of the run (YYYY-MM-DD)")
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        stem = folder / f"imdb-{date}-{n}"
        try:
            with open(f"{stem}.json", "x", encoding="utf-8") as f:  # never replaces a run
                f.write(result.read_text(encoding="utf-8"))
        except FileExistsError:
            continue
        for extra in extras:
            shutil.copyfile(extra, f"{stem}.{extra.name}")
        return Path(f"{stem}.json")
    raise ValueError(f"{folder}: a thousand runs of {date} already")


def load_runs(folder: Path = RESULTS) -> list[dict]:
    """Every kept run, oldest first, with its file name under ``"file"``."""

    def order(path: Path) -> tuple:
        date, n = re.fullmatch(r"imdb-(\d{4}-\d{2}-\d{2})-(\d+)", path.stem).groups()
        return date, int(n)

    paths = [p for p in folder.glob("imdb-*.json") if re.fullmatch(r"imdb-.+-\d+", p.stem)]
    return [{**json.loads(p.read_text()), "file": p.name} for p in sorted(paths, key=order)]


def plot(runs: list[dict], path: Path) -> None:
    """Test accuracy against wall time, a point a run (complete runs only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastulm.files import atomic_write

    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = [r for r in runs if r.get("test_accuracy") is not None]
    for r in done:
        ax.plot(r["wall_s"], 100 * r["test_accuracy"], "o", color="C0")
        label = f"{r['file'][5:-5]} ({r.get('device') or '?'})"
        ax.annotate(label, (r["wall_s"], 100 * r["test_accuracy"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.axhline(100 * GOAL[1], color="C3", ls="--", lw=1, label="goal: 94.5% within 600 s")
    ax.axvline(GOAL[0], color="C3", ls=":", lw=1)
    for i, (name, acc) in enumerate(ANCHORS.items()):
        ax.axhline(100 * acc, color=f"C{i + 1}", ls="-.", lw=0.8, label=name)
    ax.set_xlabel("wall time of the call, s (archive to test accuracy)")
    ax.set_ylabel("accuracy on the 25,000 test reviews, %")
    ax.set_title(f"fastulm on IMDB, no pretrained weights: {len(done)} complete run(s)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=Path, help="result.json, then logs and plots")
    p.add_argument("--plot-only", action="store_true")
    p.add_argument("--folder", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        if not args.plot_only:
            if not args.files:
                p.error("give result.json (or --plot-only)")
            kept = record(args.files[0], args.files[1:], args.folder)
            print(f"kept {kept}")
        runs = load_runs(args.folder)
        out = args.folder / "imdb_accuracy_vs_time.png"
        plot(runs, out)
        print(f"plotted {len(runs)} run(s) to {out}")
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
