"""The whole IMDB pipeline on one machine: archive → tokens → LM → classifier → test accuracy.

    python scripts/imdb_pipeline.py --time-budget 9       # full data, paper sizes, on a GPU
    python scripts/imdb_pipeline.py --limit 50 --preset tiny --device cpu   # a CPU slice (CI)

Steps, each skipped when its output exists: (1) with ``--limit N``, a slice of the archive
(N reviews per class of train and test, N unlabelled) written as an aclImdb folder;
(2) ``python -m fastulm.tokenize`` into WORK/corpus; (3) the LM stage on every review
(train + test + unsup, 10% held out, as the walkthrough) into WORK/lm; (4) the classifier
stage into WORK/clas, validated on the test split; (5) the final evaluation: the trained
classifier run over every review of the test split (all 25,000 on the full data), written
with the timings to WORK/result.json.

A budgeted recipe (the default): ``--time-budget MINUTES`` is the whole call's time, counted
from the script's start (or from ``$FASTULM_CALL_T0``, epoch seconds, which
scripts/gpu_pipeline.sh sets at the start of the device call). After tokenizing, a probe
measures the real trainer's tokens/s (a few warm-up steps, then timed ones, on the corpus's
own batches) for the LM and the unfrozen classifier, and the plan follows from it: the
classifier's gradual unfreezing (its last stage cut from the preset's epochs to 1 when
short), then as many LM epochs as fit in the rest, in one one-cycle that finishes (from
scratch, everything trains; fewer documents only when not even one epoch of all of them
fits). The stages, not the budget, decide what runs: the trainer's ``--time-limit`` is only
a safety net past the plan (a stage stopped by it exits 75, and the same call again resumes
from WORK with the saved plan). ``--no-plan`` runs the preset's fixed schedule instead.

WORK/pipeline.json keeps the plan and the wall time of each step across calls;
WORK/time_to_accuracy.md the time at which each classifier epoch reached its test accuracy
(``--record FILE`` appends it to FILE).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXIT_TIME_LIMIT = 75
# Startup of a training process (imports, opening the corpus, building the model, loading the
# encoder) is not inside the trainer's --time-limit.
STARTUP_MARGIN_MIN = 0.5
# On a GPU: fastbook's LM batch (ch. 10: bs 128, seq_len 80) and a classifier batch of 128.
GPU_LM = {"bs": 128, "bptt": 80, "lr": 1e-2}
GPU_CLAS_BS = 128


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    default_archive = Path(os.environ.get("FASTULM_DATA", REPO.parent / "shared" / "data"))
    p.add_argument("--archive", default=str(default_archive / "aclImdb_v1.tar.gz"))
    p.add_argument("--work", default=str(REPO / "runs" / "imdb"), help="resumable work folder")
    p.add_argument("--limit", type=int, help="reviews per class and split (a CPU slice)")
    p.add_argument("--preset", default="paper", help="paper, cpu or tiny")
    p.add_argument("--device", help="cpu or cuda (default: cuda if present)")
    p.add_argument("--workers", type=int, help="tokenizer processes (default: all cores)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=9.0,
        help="minutes for the whole call (from the start, or from $FASTULM_CALL_T0)",
    )
    p.add_argument("--no-plan", action="store_true", help="the preset's fixed schedule instead")
    p.add_argument("--lm-bs", type=int, help=f"LM batch (GPU default {GPU_LM['bs']})")
    p.add_argument("--lm-bptt", type=int, help=f"LM window (GPU default {GPU_LM['bptt']})")
    p.add_argument("--lm-lr", type=float, help="the LM one-cycle's peak rate (preset's first)")
    p.add_argument("--clas-bs", type=int, help=f"classifier batch (GPU default {GPU_CLAS_BS})")
    p.add_argument(
        "--arch",
        choices=("lstm", "qrnn"),
        default="lstm",
        help="recurrent layers of the LM and the classifier (qrnn: faster on a GPU)",
    )
    p.add_argument("--max-lm-epochs", type=int, default=12, help="the plan's LM epochs at most")
    p.add_argument("--probe-steps", type=int, default=6, help="timed steps per probe")
    p.add_argument(
        "--safety", type=float, default=1.15, help="the plan's estimates are multiplied by this"
    )
    p.add_argument("--lm-args", default="", help="extra LM-stage arguments")
    p.add_argument("--clas-args", default="", help="extra classifier-stage arguments")
    p.add_argument("--eval-bs", type=int, default=128, help="batch of the final evaluation")
    p.add_argument("--record", help="append the time-to-accuracy table to this file")
    p.add_argument(
        "--ratings",
        action="store_true",
        help="then the 8-class rating task (#16): the archive tokenized with --label-regex and "
        "the LM's vocab, a classifier on the same LM encoder, scored on all test reviews",
    )
    return p


class Budget:
    """The call's wall clock: ``minutes`` from ``t0`` (epoch seconds)."""

    def __init__(self, minutes: float, t0: float | None = None):
        self.t0 = time.time() if t0 is None else t0
        self.end = self.t0 + minutes * 60

    def left_s(self) -> float:
        return self.end - time.time()

    def left_min(self) -> float:
        return self.left_s() / 60

    def elapsed_s(self) -> float:
        return time.time() - self.t0


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


# ------------------------------------------------------------------ the probe and the plan
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_steps(learn, n_warm: int, n_timed: int) -> tuple[float, int, int]:
    """(seconds, padded tokens, real tokens) of ``n_timed`` training steps of ``learn`` on its
    own batches, after ``n_warm`` untimed ones (cuDNN plans, Triton compiles)."""
    from fastulm.train.optimizer import lr_range

    # a small rate: the probe's weights are thrown away, but must stay finite
    lrs = lr_range(1e-4, len(learn.layer_groups))
    dl = learn.train_dl
    dl.set_epoch(0)
    learn.model.train()
    pad = getattr(getattr(learn.model, "config", None), "pad_token", 1)
    padded, real, t0 = 0, 0, None
    # a short loader is read again: the warm-up never eats the timed steps
    batches = itertools.chain.from_iterable(dl for _ in range(n_warm + n_timed))
    for i, (x, y) in enumerate(batches):
        if i == n_warm + n_timed:
            break
        if i == n_warm:
            _sync(learn.device)
            t0 = time.perf_counter()
        if i >= n_warm:
            padded += x.numel()
            real += int((x != pad).sum()) if learn.kind == "clas" else x.numel()
        learn._reset_model()
        learn._step(x, y, lrs, 0.9)
    _sync(learn.device)
    seconds = time.perf_counter() - t0 if t0 is not None else 0.0
    learn.opt.zero_grad(set_to_none=True)
    return seconds, padded, real


def _time_valid(learn, n: int) -> tuple[float, int]:
    """(seconds, padded tokens) of ``n`` validation batches (forward only)."""
    import torch

    learn.model.eval()
    seconds, tokens, t0 = 0.0, 0, None
    with torch.no_grad():
        for i, (x, y) in enumerate(learn.valid_dl):
            if i == 1:
                _sync(learn.device)
                t0 = time.perf_counter()
            learn._reset_model()
            x, y = x.to(learn.device), y.to(learn.device)
            with learn.precision.autocast():
                learn._forward(x, y)
            if i >= 1:
                tokens += x.numel()
            if i == n:
                break
    _sync(learn.device)
    if t0 is not None:
        seconds = time.perf_counter() - t0
    learn.model.train()
    return seconds, tokens


def probe(
    corpus_dir: Path,
    preset_name: str,
    device: str,
    lm: dict,
    clas_bs: int,
    n: int,
    arch: str = "lstm",
) -> dict:
    """Measured throughput of the real trainer (its step: forward, AR/TAR, backward, AdamW) on
    this corpus: the LM at ``lm`` bs x bptt, the unfrozen classifier at ``clas_bs``, and the
    classifier's validation (forward only)."""
    import gc

    import numpy as np
    import torch

    from fastulm.data.clas_loader import sorted_batches
    from fastulm.data.corpus import open_corpus
    from fastulm.train.presets import get_preset
    from fastulm.train.text_learners import language_model_learner, text_classifier_learner

    t_start = time.monotonic()
    preset = get_preset(preset_name)
    corpus = open_corpus(corpus_dir)
    common = dict(device=device, show_progress=False, show_table=False, **preset.model_kw())
    common["arch"] = arch
    out: dict = {}
    learn = language_model_learner(
        corpus, drop_mult=preset.lm.drop_mult, bs=lm["bs"], bptt=lm["bptt"], **common
    )
    out["precision"] = learn.precision.mode
    n_iter, n_valid = len(learn.train_dl), len(learn.valid_dl)
    sec, tok, _ = _time_steps(learn, 3, n)
    out["lm"] = {
        "bs": lm["bs"],
        "bptt": lm["bptt"],
        "tokens_per_s": tok / sec if sec > 0 else None,
        "steps_per_epoch": n_iter,
        "tokens_per_epoch": n_iter * lm["bs"] * lm["bptt"],
        "valid_tokens": n_valid * lm["bs"] * lm["bptt"],
        "timed_steps": n,
    }
    del learn
    gc.collect()
    clas_recipe = preset.clas
    learn = text_classifier_learner(
        corpus,
        drop_mult=clas_recipe.drop_mult,
        bs=clas_bs,
        bptt=clas_recipe.bptt,
        max_len=clas_recipe.max_len,
        valid_split="test",
        **common,
    )
    learn.unfreeze()  # the dearest stage: every layer trains
    n_iter = len(learn.train_dl)
    sec, padded, real = _time_steps(learn, 3, n)
    v_sec, v_tok = _time_valid(learn, min(n, len(learn.valid_dl) - 1))

    def padded_tokens(lengths: np.ndarray, bs: int) -> int:
        return int(sum(len(b) * int(lengths[b].max()) for b in sorted_batches(lengths, bs, False)))

    train_len = np.asarray(corpus["train"].lengths)
    test_len = np.asarray(corpus["test"].lengths)
    # a shuffled epoch pads more than the sorted lower bound: scale it by what the probe saw
    pad_factor = max(1.0, padded / max(real, 1) / 1.02)
    if sec <= 0 or out["lm"]["tokens_per_s"] is None:
        raise SystemExit("error: the probe timed no training step (too few batches?)")
    clas_tok_s = padded / sec
    out["clas"] = {
        "bs": clas_bs,
        "tokens_per_s": clas_tok_s,
        # validation is forward only: about 3x a training step's tokens/s where unmeasured
        "valid_tokens_per_s": v_tok / v_sec if v_sec > 0 else 3 * clas_tok_s,
        "train_tokens_per_epoch": int(padded_tokens(train_len, clas_bs) * pad_factor),
        "valid_tokens": padded_tokens(test_len, clas_bs),
        "steps_per_epoch": n_iter,
    }
    out["lm_splits"] = {s: int(np.asarray(corpus[s].lengths).sum()) for s in corpus.split_names}
    del learn
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    out["seconds"] = round(time.monotonic() - t_start, 1)
    return out


# subsets of the corpus the LM may train on when not even one epoch of everything fits,
# largest first
LM_SUBSETS = [None, ("train", "unsup"), ("unsup",), ("train", "test"), ("train",)]


def make_plan(measured: dict, preset, left_s: float, args, startup_s: float) -> dict:
    """The LM epochs (and documents) and the classifier's last-stage epochs that fit in
    ``left_s`` seconds, from the probe's throughput; ``feasible`` False when not even one
    LM epoch of the smallest subset and the shortest classifier fit."""
    lm, clas, k = measured["lm"], measured["clas"], args.safety
    ckpt_s = 2.0 if measured.get("precision") != "fp32" else 1.0
    lm_epoch_s = k * (lm["tokens_per_epoch"] + lm["valid_tokens"] / 3) / lm["tokens_per_s"]
    lm_epoch_s += ckpt_s
    clas_epoch_s = k * clas["train_tokens_per_epoch"] / clas["tokens_per_s"]
    clas_epoch_s += k * clas["valid_tokens"] / clas["valid_tokens_per_s"] + ckpt_s
    stages = preset.clas.stages
    first = sum(st.epochs for st in stages[:-1])
    eval_s = k * clas["valid_tokens"] / clas["valid_tokens_per_s"] + startup_s / 2
    plan = {
        "lm_epoch_s": round(lm_epoch_s, 1),
        "clas_epoch_s": round(clas_epoch_s, 1),
        "eval_s": round(eval_s, 1),
        "startup_s": startup_s,
        "left_s": round(left_s, 1),
        "feasible": False,
    }
    for final in sorted({stages[-1].epochs, 1}, reverse=True):
        clas_s = (first + final) * clas_epoch_s + startup_s
        lm_s = left_s - clas_s - eval_s - startup_s
        epochs = min(args.max_lm_epochs, math.floor(lm_s / lm_epoch_s)) if lm_s > 0 else 0
        if epochs >= 1:
            plan.update(lm_epochs=epochs, lm_splits=None, clas_final_epochs=final)
            plan.update(lm_s=round(epochs * lm_epoch_s, 1), clas_s=round(clas_s, 1))
            plan["feasible"] = True
            return plan
    # not one epoch of everything: the largest subset of documents that fits one epoch
    final = 1
    clas_s = (first + final) * clas_epoch_s + startup_s
    lm_s = left_s - clas_s - eval_s - startup_s
    total = sum(measured["lm_splits"].values())
    for subset in LM_SUBSETS[1:]:
        if not all(s in measured["lm_splits"] for s in subset):
            continue
        share = sum(measured["lm_splits"][s] for s in subset) / total
        if share * lm_epoch_s <= lm_s:
            plan.update(lm_epochs=1, lm_splits=list(subset), clas_final_epochs=final)
            plan.update(lm_s=round(share * lm_epoch_s, 1), clas_s=round(clas_s, 1))
            plan["feasible"] = True
            return plan
    return plan


def _lm_stage_args(plan: dict, lm: dict) -> list[str]:
    """One one-cycle of ``lm_epochs`` at ``lr``, everything training (from scratch)."""
    out = ["--bs", str(lm["bs"]), "--bptt", str(lm["bptt"]), "--lr", f"{lm['lr']:g}"]
    out += ["--frozen-epochs", str(plan["lm_epochs"]), "--epochs", "0"]
    if plan.get("lm_splits"):
        out += ["--splits", ",".join(plan["lm_splits"])]
    return out


# ------------------------------------------------------------------ the stages
def _train(
    stage, args, work, limit_min: float, stage_args: list[str], corpus="corpus", name=None
) -> int:
    """``train STAGE WORK/corpus WORK/name`` (name: the stage) under a --time-limit."""
    name = name or stage
    out = work / name
    if limit_min <= 0.1:
        return EXIT_TIME_LIMIT
    cmd = [sys.executable, "-m", "fastulm.train", stage, str(work / corpus), str(out)]
    cmd += ["--preset", args.preset, "--resume", "--time-limit", f"{limit_min:.2f}", "--quiet"]
    if args.device:
        cmd += ["--device", args.device]
    if stage == "clas":
        if (work / "lm" / "encoder.safetensors").exists():
            cmd += ["--encoder", str(work / "lm")]
        cmd += ["--valid-split", "test"]
    cmd += stage_args
    rc = _run(cmd, work / f"{name}.log")
    if rc not in (0, EXIT_TIME_LIMIT):
        tail = (work / f"{name}.log").read_text().strip().splitlines()[-1:]
        raise SystemExit(f"error: {name} stage failed ({tail[0] if tail else rc}); see {work}")
    return rc


def evaluate(
    work: Path, device: str, bs: int, run_name: str = "clas", corpus_name: str = "corpus"
) -> dict:
    """The trained classifier (WORK/clas) over every review of the corpus's test split:
    accuracy, macro-F1 and, for scale, the majority class of the training split."""
    import numpy as np

    from fastulm.data.corpus import open_corpus
    from fastulm.prediction import classifier_logits, resolve_device, resolve_precision
    from fastulm.run_reader import load_run

    t0 = time.monotonic()
    dev = resolve_device(device)
    run = load_run(work / run_name, dev)
    corpus = open_corpus(work / corpus_name)
    test = corpus["test"]
    docs = [test.doc(i) for i in range(len(test))]
    precision = resolve_precision("auto", dev)
    logits = classifier_logits(run.model, docs, bs=bs, precision=precision)
    labels = np.asarray(test.labels)
    pred = logits.argmax(1)
    correct = int((pred == labels).sum())
    n_classes = logits.shape[1]
    f1 = []
    for c in range(n_classes):
        tp = int(((pred == c) & (labels == c)).sum())
        wrong = int(((pred == c) != (labels == c)).sum())
        f1.append(2 * tp / (2 * tp + wrong) if tp + wrong else 0.0)
    train = np.asarray(corpus["train"].labels)
    majority = int(np.bincount(train[train >= 0], minlength=n_classes).argmax())
    return {
        "test_accuracy": correct / len(labels),
        "n_test": len(labels),
        "n_correct": correct,
        "macro_f1": float(np.mean(f1)),
        "n_classes": n_classes,
        "label_names": list(corpus.label_names),
        "majority_class_accuracy": float((labels == majority).mean()),
        "precision": precision,
        "seconds": round(time.monotonic() - t0, 1),
    }


RATING_REGEX = r"_(\d+)\.txt$"  # aclImdb's <id>_<rating>.txt


def ratings(args, work: Path, src: Path, clas_bs: int, state: dict, budget, timed) -> int:
    """The 8-class rating task on the same LM (``--ratings``): tokenize the archive with the
    rating from each file name and the LM corpus's vocab, train a classifier on the LM's
    encoder (the preset's stages; the last one as the 2-class run had it), score every test
    review. Steps done are skipped, so a call cut short resumes here."""
    corpus = work / "ratings_corpus"
    if not (corpus / "meta.json").exists():
        cmd = [sys.executable, "-m", "fastulm.tokenize", str(src), str(corpus), "--quiet"]
        cmd += ["--label-regex", RATING_REGEX, "--vocab", str(work / "corpus" / "vocab.json")]
        cmd += ["--workers", str(args.workers)] if args.workers else []
        if timed("ratings_tokenize", lambda: _run(cmd, work / "ratings_tokenize.log")) != 0:
            print(f"error: tokenizing failed; see {work / 'ratings_tokenize.log'}", file=sys.stderr)
            return 1
    if not (work / "ratings" / "model.safetensors").exists():
        stage_args = ["--bs", str(clas_bs), *shlex.split(args.clas_args)]
        plan = state.get("plan") or {}
        final = plan.get("clas_final_epochs_run")
        if final is not None and not args.no_plan:
            stage_args = ["--final-epochs", str(final), *stage_args]
        limit = (budget.left_s() - plan.get("eval_s", 0.0)) / 60 - STARTUP_MARGIN_MIN
        rc = timed(
            "ratings",
            lambda: _train("clas", args, work, limit, stage_args, "ratings_corpus", "ratings"),
        )
        if rc == EXIT_TIME_LIMIT:
            return rc
    return 0


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def report(work: Path, state: dict) -> str:
    el = state["elapsed"]
    before_clas = sum(el.get(k, 0.0) for k in ("slice", "tokenize", "probe", "lm"))
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
    t0_env = os.environ.get("FASTULM_CALL_T0")
    budget = Budget(args.time_budget, float(t0_env) if t0_env else None)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    state = _state(work)
    device = args.device or ("cuda" if _has_cuda() else "cpu")
    on_gpu = device.startswith("cuda")
    from fastulm.train.presets import get_preset

    preset = get_preset(args.preset)
    lm = {
        "bs": args.lm_bs or (GPU_LM["bs"] if on_gpu else preset.lm.bs),
        "bptt": args.lm_bptt or (GPU_LM["bptt"] if on_gpu else preset.lm.bptt),
        "lr": args.lm_lr or (GPU_LM["lr"] if on_gpu else _first_lr(preset.lm.stages)),
    }
    clas_bs = args.clas_bs or (GPU_CLAS_BS if on_gpu else preset.clas.bs)
    state["recipe"] = {
        "preset": args.preset,
        "arch": args.arch,
        "limit": args.limit,
        "device": device,
        "lm": lm,
        "clas_bs": clas_bs,
        "time_budget_min": args.time_budget,
        "planned": not args.no_plan,
        "argv": sys.argv[1:],
    }
    state["device_name"] = _device_name(device)
    state["setup"] = (
        f"preset {args.preset}, arch {args.arch}, limit {args.limit or 'none'}, device {device}, "
        f"LM bs {lm['bs']} x bptt {lm['bptt']} lr {lm['lr']:g}, classifier bs {clas_bs}, "
        f"budget {args.time_budget} min" + (" (no plan)" if args.no_plan else "")
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
    print(f"[{budget.elapsed_s():.0f} s] corpus ready; {budget.left_s():.0f} s left", flush=True)

    lm_done = (work / "lm" / "encoder.safetensors").exists()
    clas_done = (work / "clas" / "model.safetensors").exists()
    startup_s = 20.0 if on_gpu else 10.0
    lm_args = ["--arch", args.arch, *shlex.split(args.lm_args)]  # the classifiers follow it
    clas_args = shlex.split(args.clas_args)
    if args.no_plan:
        lm_args = ["--bs", str(lm["bs"]), "--bptt", str(lm["bptt"]), *lm_args]
        clas_args = ["--bs", str(clas_bs), *clas_args]
    elif not lm_done and "plan" not in state:
        measured = timed(
            "probe",
            lambda: probe(
                work / "corpus", args.preset, device, lm, clas_bs, args.probe_steps, args.arch
            ),
        )
        state["measured"] = measured
        plan = make_plan(measured, preset, budget.left_s(), args, startup_s)
        state["plan"] = plan
        _save_state(work, state)
        print(f"[{budget.elapsed_s():.0f} s] probe {json.dumps(measured)}", flush=True)
        print(f"[{budget.elapsed_s():.0f} s] plan {json.dumps(plan)}", flush=True)
        if not plan["feasible"]:
            print(
                f"the time left ({budget.left_s():.0f} s) fits no LM epoch and classifier: "
                "run again with a larger --time-budget to continue",
                flush=True,
            )
            del state["plan"]  # the next call measures and plans again
            _save_state(work, state)
            return EXIT_TIME_LIMIT
    if not args.no_plan and not lm_done and "plan" in state:
        lm_args = [*_lm_stage_args(state["plan"], lm), *lm_args]

    if not lm_done:
        # the safety net: the LM may run into the classifier's time, not past the call's end
        reserve = (state.get("plan") or {}).get("eval_s", 0.0) + startup_s
        limit = (budget.left_s() - reserve) / 60 - STARTUP_MARGIN_MIN
        t_lm = time.monotonic()
        rc = timed("lm", lambda: _train("lm", args, work, limit, lm_args))
        if rc == EXIT_TIME_LIMIT:
            print("time budget used up during the lm stage: run again to resume", flush=True)
            _finish(work, state, budget, None)
            return EXIT_TIME_LIMIT
        if "plan" in state:
            state["plan"]["lm_actual_s"] = round(time.monotonic() - t_lm, 1)
    if not clas_done:
        if not args.no_plan:
            plan = state.get("plan") or {}
            if (work / "clas" / "train_args.json").exists() and "clas_final_epochs_run" in plan:
                final = plan["clas_final_epochs_run"]  # a resume: the run's own options
            else:
                final = _clas_final_epochs(state, preset, budget.left_s(), startup_s)
            clas_args = ["--bs", str(clas_bs), "--final-epochs", str(final), *clas_args]
            state.setdefault("plan", {})["clas_final_epochs_run"] = final
        limit = (budget.left_s() - (state.get("plan") or {}).get("eval_s", 0.0)) / 60
        rc = timed(
            "clas", lambda: _train("clas", args, work, limit - STARTUP_MARGIN_MIN, clas_args)
        )
        if rc == EXIT_TIME_LIMIT:
            print("time budget used up during the clas stage: run again to resume", flush=True)
            _finish(work, state, budget, None)
            return EXIT_TIME_LIMIT
    final_eval = state.get("final_eval")
    if final_eval is None:
        final_eval = timed("evaluate", lambda: evaluate(work, device, args.eval_bs))
        state["final_eval"] = final_eval
        _save_state(work, state)
    if args.ratings and "ratings_eval" not in state:
        rc = ratings(args, work, src, clas_bs, state, budget, timed)
        if rc == EXIT_TIME_LIMIT:
            print("time budget used up during the ratings stage: run again to resume", flush=True)
            _finish(work, state, budget, final_eval)
            return rc
        if rc:
            return rc
        state["ratings_eval"] = timed(
            "ratings_evaluate",
            lambda: evaluate(work, device, args.eval_bs, "ratings", "ratings_corpus"),
        )
        _save_state(work, state)
    text = report(work, state)
    (work / "time_to_accuracy.md").write_text(text)
    print(text)
    result = _finish(work, state, budget, final_eval)
    print("result " + json.dumps(result), flush=True)
    if args.record:
        with open(args.record, "a") as f:
            f.write("\n" + text)
    return 0


def _first_lr(stages) -> float:
    lr = stages[0].lr
    return lr[1] if isinstance(lr, tuple) else lr


def _clas_final_epochs(state: dict, preset, left_s: float, startup_s: float) -> int:
    """The classifier's last-stage epochs for the time left: the preset's, else 1. The probe's
    estimate is corrected by how far the LM's real time was from its planned time."""
    plan = state.get("plan") or {}
    per_epoch = plan.get("clas_epoch_s")
    final = preset.clas.stages[-1].epochs
    if per_epoch is None:
        return final
    if plan.get("lm_s") and plan.get("lm_actual_s"):
        ratio = (plan["lm_actual_s"] - plan.get("startup_s", 0)) / plan["lm_s"]
        per_epoch *= min(2.0, max(0.8, ratio))
    first = sum(st.epochs for st in preset.clas.stages[:-1])
    spare = left_s - plan.get("eval_s", 0.0) - startup_s
    return final if (first + final) * per_epoch <= spare else 1


def _finish(work: Path, state: dict, budget: Budget, final_eval: dict | None) -> dict:
    """WORK/result.json: the figure, the plan against what happened, every step's time."""
    lm_rows = _rows(work / "lm" / "log.jsonl")
    clas_rows = _rows(work / "clas" / "log.jsonl")
    last_lm = lm_rows[-1] if lm_rows else {}
    measured = state.get("measured") or {}
    lm_s = state["elapsed"].get("lm")
    lm_tokens = (measured.get("lm") or {}).get("tokens_per_epoch")
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "device": state.get("device_name"),
        "test_accuracy": final_eval and final_eval["test_accuracy"],
        "n_test": final_eval and final_eval["n_test"],
        "wall_s": round(budget.elapsed_s(), 1),
        "pretrained": None,  # the LM trains from scratch: no weights can be downloaded
        "recipe": {**(state.get("recipe") or {}), "plan": state.get("plan")},
        "lm_tokens_per_s": {
            "probe": (measured.get("lm") or {}).get("tokens_per_s"),
            # the whole LM stage, start-up and validation included
            "stage": lm_tokens * len(lm_rows) / lm_s if lm_tokens and lm_s else None,
        },
        "lm_valid_accuracy": last_lm.get("accuracy"),
        "lm_perplexity": last_lm.get("perplexity"),
        "budget_s": round(budget.end - budget.t0, 1),
        "within_budget": budget.left_s() >= 0,
        "complete": final_eval is not None,
        "setup": state.get("setup"),
        "elapsed": {k: round(v, 1) for k, v in state["elapsed"].items()},
        "measured": state.get("measured"),
        "plan": state.get("plan"),
        "lm": lm_rows[-1] if lm_rows else None,
        "lm_epochs": len(lm_rows),
        "lm_rows": lm_rows,
        "clas_epochs": clas_rows,
        "final_eval": final_eval,
        "ratings": state.get("ratings_eval"),
        "ratings_epochs": _rows(work / "ratings" / "log.jsonl") or None,
    }
    tmp = work / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    os.replace(tmp, work / "result.json")
    return result


def _device_name(device: str) -> str:
    """The GPU's name, or the CPU's model (what a reader compares runs by)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
