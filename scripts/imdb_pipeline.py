"""The whole IMDB pipeline on one machine: archive → tokens → LM → classifier → test accuracy.

    python scripts/imdb_pipeline.py                       # full data, paper sizes, on a GPU
    python scripts/imdb_pipeline.py --limit 50 --preset tiny --device cpu   # a CPU slice (CI)

Steps, each skipped when its output exists: (1) with ``--limit N``, a slice of the archive
(N reviews per class of train and test, N unlabelled) written as an aclImdb folder;
(2) ``python -m fastulm.tokenize`` into WORK/corpus; (3) the LM stage on every review
(train + test + unsup, 10% held out, as the walkthrough) into WORK/lm; (4) the classifier
stage into WORK/clas, validated on the test split, so its final accuracy *is* the accuracy on
the 25,000 test reviews (the walkthrough's setup).

Each call works for at most ``--time-budget`` minutes (default 9, for 10-minute device
calls): the training stages stop with a checkpoint and the script exits with code 75; call it
again with the same WORK folder and it resumes where it stopped. Wall time spent in each
step is accumulated across calls in WORK/pipeline.json, and WORK/time_to_accuracy.md gives
the time at which each classifier epoch reached its test accuracy (``--record FILE`` appends
that table to FILE, e.g. benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXIT_TIME_LIMIT = 75
# Startup (imports, opening the corpus, building the model) is not inside --time-limit.
STARTUP_MARGIN_MIN = 0.75
# On a GPU, fastbook's larger batches (ch. 10: bs 128, seq_len 80, lr 2e-2 then 2e-3).
GPU_LM_ARGS = "--bs 128 --bptt 80 --lr 2e-2"
GPU_CLAS_ARGS = "--bs 128"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_archive = Path(os.environ.get("FASTULM_DATA", REPO.parent / "shared" / "data"))
    p.add_argument("--archive", default=str(default_archive / "aclImdb_v1.tar.gz"))
    p.add_argument("--work", default=str(REPO / "runs" / "imdb"), help="resumable work folder")
    p.add_argument("--limit", type=int, help="reviews per class and split (a CPU slice)")
    p.add_argument("--preset", default="paper", help="paper, cpu or tiny")
    p.add_argument("--device", help="cpu or cuda (default: cuda if present)")
    p.add_argument("--workers", type=int, help="tokenizer processes (default: all cores)")
    p.add_argument("--time-budget", type=float, default=9.0, help="minutes for this call")
    p.add_argument("--lm-args", help=f"extra LM-stage arguments (GPU default: {GPU_LM_ARGS!r})")
    p.add_argument("--clas-args", help=f"extra classifier arguments (GPU: {GPU_CLAS_ARGS!r})")
    p.add_argument("--record", help="append the time-to-accuracy table to this file")
    return p


class Budget:
    def __init__(self, minutes: float):
        self.end = time.monotonic() + minutes * 60

    def left_min(self) -> float:
        return (self.end - time.monotonic()) / 60


def _state(work: Path) -> dict:
    path = work / "pipeline.json"
    return json.loads(path.read_text()) if path.exists() else {"elapsed": {}, "done": []}


def _save_state(work: Path, state: dict) -> None:
    tmp = work / "pipeline.json.tmp"
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, work / "pipeline.json")


def make_slice(archive: Path, out: Path, limit: int) -> None:
    """An aclImdb folder with ``limit`` reviews per (split, class) and ``limit`` unlabelled."""
    from fastulm.data.sources import open_source

    tmp = out.with_name(out.name + ".tmp")
    counts: dict[tuple[str, int], int] = {}
    names = {0: "neg", 1: "pos", -1: "unsup"}
    for rec in open_source(archive).records():
        key = (rec.split, rec.label)
        if counts.get(key, 0) >= limit:
            continue
        counts[key] = counts.get(key, 0) + 1
        folder = "train" if rec.split == "unsup" else rec.split
        d = tmp / "aclImdb" / folder / names[rec.label]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{Path(rec.id).name.removesuffix('.txt')}.txt").write_text(rec.text, encoding="utf-8")
        if len(counts) == 5 and all(v >= limit for v in counts.values()):
            break
    os.replace(tmp, out)


def _run(cmd: list[str], log: Path) -> int:
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    with open(log, "a") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode


def _train(stage, args, work, budget, extra) -> int:
    out = work / stage
    left = budget.left_min() - STARTUP_MARGIN_MIN
    if left <= 0.1:
        return EXIT_TIME_LIMIT
    cmd = [sys.executable, "-m", "fastulm.train", stage, str(work / "corpus"), str(out)]
    cmd += ["--preset", args.preset, "--resume", "--time-limit", f"{left:.2f}", "--quiet"]
    if args.device:
        cmd += ["--device", args.device]
    if stage == "clas":
        cmd += ["--encoder", str(work / "lm"), "--valid-split", "test"]
    cmd += shlex.split(extra)
    rc = _run(cmd, work / f"{stage}.log")
    if rc not in (0, EXIT_TIME_LIMIT):
        tail = (work / f"{stage}.log").read_text().strip().splitlines()[-1:]
        raise SystemExit(f"error: {stage} stage failed ({tail[0] if tail else rc}); see {work}")
    return rc


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def report(work: Path, state: dict) -> str:
    el = state["elapsed"]
    before_clas = sum(el.get(k, 0.0) for k in ("slice", "tokenize", "lm"))
    lines = [
        f"IMDB pipeline ({state.get('setup', '')})",
        "",
        "| step | wall time (s) |",
        "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in el.items()],
        "",
        "| classifier epoch | time from raw text (min) | test accuracy |",
        "|---|---|---|",
    ]
    t = before_clas
    for i, row in enumerate(_rows(work / "clas" / "log.jsonl")):
        t += row["time"]
        lines.append(f"| {i + 1} | {t / 60:.1f} | {row['accuracy']:.4f} |")
    lm_rows = _rows(work / "lm" / "log.jsonl")
    if lm_rows:
        lines += [
            "",
            f"LM: valid accuracy {lm_rows[-1]['accuracy']:.4f}, "
            f"perplexity {lm_rows[-1]['perplexity']:.2f} after {len(lm_rows)} epochs",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    budget = Budget(args.time_budget)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    state = _state(work)
    device = args.device or ("cuda" if _has_cuda() else "cpu")
    if args.lm_args is None:
        args.lm_args = GPU_LM_ARGS if device.startswith("cuda") else ""
    if args.clas_args is None:
        args.clas_args = GPU_CLAS_ARGS if device.startswith("cuda") else ""
    state["setup"] = (
        f"preset {args.preset}, limit {args.limit or 'none'}, device {device}, "
        f"LM args '{args.lm_args}', classifier args '{args.clas_args}'"
    )

    def timed(step, fn):
        t0 = time.monotonic()
        try:
            return fn()
        finally:
            state["elapsed"][step] = state["elapsed"].get(step, 0.0) + time.monotonic() - t0
            _save_state(work, state)

    src = Path(args.archive)
    if not src.exists():
        print(f"error: {src}: no such archive", file=sys.stderr)
        return 1
    if args.limit:
        sliced = work / "slice"
        if not sliced.exists():
            timed("slice", lambda: make_slice(src, sliced, args.limit))
        src = sliced
    if not (work / "corpus" / "meta.json").exists():
        cmd = [sys.executable, "-m", "fastulm.tokenize", str(src), str(work / "corpus"), "--quiet"]
        cmd += ["--workers", str(args.workers)] if args.workers else []
        if timed("tokenize", lambda: _run(cmd, work / "tokenize.log")) != 0:
            print(f"error: tokenizing failed; see {work / 'tokenize.log'}", file=sys.stderr)
            return 1
    for stage, extra, done in (
        ("lm", args.lm_args, work / "lm" / "encoder.safetensors"),
        ("clas", args.clas_args, work / "clas" / "model.safetensors"),
    ):
        if done.exists():
            continue
        rc = timed(stage, lambda stage=stage, extra=extra: _train(stage, args, work, budget, extra))
        if rc == EXIT_TIME_LIMIT:
            print(f"time budget used up during the {stage} stage: run again to resume", flush=True)
            return EXIT_TIME_LIMIT
    text = report(work, state)
    (work / "time_to_accuracy.md").write_text(text)
    print(text)
    if args.record:
        with open(args.record, "a") as f:
            f.write("\n" + text)
    return 0


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
