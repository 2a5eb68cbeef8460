"""The prediction loop: texts in, labels and class probabilities out.

Used by the classifier learner's ``predict``, by ``python -m fastulm.predict`` and by
``fastulm.inference.load`` on a run directory, so it lives outside the trainer. Where the
time goes and what is done about it:

- tokenizing: fastulm's tokenizer in worker processes (forked, each one numericalizing its
  share with the run's vocab), for inputs large enough to pay for the pool;
- the model: documents sorted by length (longest first) so a batch pads little, run under
  ``torch.inference_mode`` (no autograd bookkeeping), in bf16 where the device has native
  bf16 (a CUDA GPU that supports it, a CPU with avx512_bf16 or AMX), else fp32;
- each document is read whole, as the classifier is trained: chunks before the last
  ``max_len`` tokens only carry the LSTM state into the pooled window;
- results are put back in input order.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastulm.devices import resolve_device
from fastulm.scores import (
    Predictions,
    Task,
    check_threshold,
    class_names,
    pick_labels,
    probabilities,
)

POOL_MIN_TEXTS = 2000  # below this, starting worker processes costs more than it saves
TASK_TEXTS = 500  # texts per worker task


def predict_labels(
    model,
    vocab,
    label_names,
    texts: Sequence[str],
    bs=64,
    backwards=False,
    task: Task | str | None = None,
    threshold: float | None = None,
):
    """Tokenize like the corpus, classify, and name each text's label: (labels, probs as a
    CPU float tensor [n_texts, n_classes]). ``task`` (default single_label) says how:
    softmax and the likeliest class, or per-class sigmoids over ``threshold``."""
    import torch

    if not isinstance(task, Task):
        task = Task(task or "single_label")
    check_threshold(threshold)
    itos = getattr(vocab, "itos", vocab)
    logits = classifier_logits(model, encode_ids(itos, texts, workers=1), bs, backwards)
    probs = probabilities(logits, task)
    names = class_names(label_names, probs.shape[1])
    return pick_labels(probs, names, task, threshold), torch.from_numpy(probs)


# ------------------------------------------------------------------ devices and precision


def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: where oneDNN's bf16 LSTM is faster than fp32 (elsewhere it is
    emulated, and slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


@functools.cache
def cpu_bf16_lstm_works() -> bool:
    """Whether oneDNN runs an LSTM in bf16 here (it has no bf16 LSTM below AVX-512)."""
    import torch

    x = torch.zeros(1, 1, 4)
    w = [torch.zeros(16, 4), torch.zeros(16, 4), torch.zeros(16), torch.zeros(16)]
    h = (torch.zeros(1, 1, 4), torch.zeros(1, 1, 4))
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            torch.lstm(x, h, w, True, 1, 0.0, False, False, True)
    except RuntimeError:
        return False
    return True


def resolve_precision(precision: str, device: Any) -> str:
    """``auto`` is bf16 where the device runs it natively, else fp32."""
    import torch

    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16_lstm_works():
        raise ValueError("bf16 on this CPU: oneDNN has no bf16 LSTM here; use --precision fp32")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's intra-op CPU threads set to ``n`` for a block (None: left as they are)."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------ tokenizing


class _Encoder:
    """A tokenizer plus the map from its local token ids to the run's vocab ids."""

    def __init__(self, itos: Sequence[str]):
        from fastulm.data.vocab import as_vocab
        from fastulm.text.tokenizer import Tokenizer

        self.stoi = as_vocab(itos).stoi  # the corpus's rules: unknown -> 0, no xxfake
        self.tok = Tokenizer()
        self.lut = np.zeros(0, dtype=np.int32)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vocab ids int32, lengths int64) of ``texts``; unknown tokens are 0 (xxunk)."""
        ids, offsets = self.tok.encode_batch(texts)
        tokens = self.tok.tokens
        if len(self.lut) < len(tokens):
            new = [self.stoi[t] for t in tokens[len(self.lut) :]]
            self.lut = np.concatenate([self.lut, np.asarray(new, dtype=np.int32)])
        return self.lut[ids], np.diff(offsets).astype(np.int64)


_ENCODER: _Encoder | None = None


def _worker_init(itos: Sequence[str] | None) -> None:
    global _ENCODER
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool
    if itos is not None or _ENCODER is None:
        _ENCODER = _Encoder(itos)


def _worker_encode(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    assert _ENCODER is not None
    return _ENCODER.encode(texts)


def encode_ids(itos: Sequence[str], texts: Sequence[str], workers: int | None = None):
    """Each text's vocab ids (a list of int32 arrays, views into one buffer), tokenized as
    the corpus was; in ``workers`` processes (default: the usable cores) for large inputs."""
    global _ENCODER
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is a {type(t).__name__}, not a str")
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    tasks = [texts[i : i + TASK_TEXTS] for i in range(0, len(texts), TASK_TEXTS)]
    if workers <= 1 or len(texts) < POOL_MIN_TEXTS:
        enc = _Encoder(itos)
        parts = [enc.encode(t) for t in tasks]
    else:
        methods = mp.get_all_start_methods()
        # children inherit a warmed-up tokenizer and the vocab; but a fork of a process
        # running other threads (torch's, pyarrow's) can inherit a held lock and hang for
        # ever (seen in CI), so fork only while this process is its only thread
        if "fork" in methods and _one_thread():
            _ENCODER = _Encoder(itos)
            _ENCODER.encode(["Warm up the tokenizer, once."])
            ctx, initargs = mp.get_context("fork"), (None,)
        else:
            ctx, initargs = mp.get_context("spawn"), (list(itos),)
        try:
            with ctx.Pool(workers, initializer=_worker_init, initargs=initargs) as pool:
                parts = pool.map(_worker_encode, tasks, chunksize=1)
        finally:
            _ENCODER = None
    if not parts:
        return []
    ids = np.concatenate([p[0] for p in parts])
    lengths = np.concatenate([p[1] for p in parts])
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [ids[bounds[i] : bounds[i + 1]] for i in range(len(lengths))]


# ------------------------------------------------------------------ the model


def _one_thread() -> bool:
    """Whether this process runs a single OS thread (Linux: /proc/self/task)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def progress_bar(total: int, progress: bool | None):
    from tqdm import tqdm

    if progress is None:
        progress = sys.stderr.isatty()
    return tqdm(total=total, unit="doc", desc="predicting", disable=not progress, file=sys.stderr)


def classifier_logits(
    model: Any,
    docs: Sequence[np.ndarray],
    bs: int = 64,
    backwards: bool = False,
    precision: str = "fp32",
    progress: bool | None = False,
) -> np.ndarray:
    """The classifier's scores [n_docs, n_classes] (float32), rows in the order of ``docs``.

    Batches are cut from the documents sorted longest first, padded in the encoder's layout
    (pad_chunk), run under inference_mode, in bf16 autocast when ``precision`` says so.
    NaN/inf scores raise ``NonFiniteError``.
    """
    import torch

    from fastulm.data.clas_loader import pad_batch
    from fastulm.generation import _check_finite

    if bs < 1:
        raise ValueError(f"batch size must be >= 1, got {bs}")
    if any(len(d) == 0 for d in docs):
        raise ValueError("a document has no tokens (each starts with xxbos)")
    config = model.config
    device = next(model.parameters()).device
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    order = np.argsort(-lengths, kind="stable")
    n_classes = _n_classes(model)
    out = np.empty((len(docs), n_classes), dtype=np.float32)
    if precision == "bf16":
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext()
    was_training = model.training
    model.eval()
    bar = progress_bar(len(docs), progress)
    try:
        with torch.inference_mode(), autocast:
            for i in range(0, len(docs), bs):
                rows = order[i : i + bs]
                batch = [docs[j][::-1] if backwards else docs[j] for j in rows]
                x = pad_batch(batch, config.pad_token, config.bptt)
                model.reset()
                logits = model(torch.from_numpy(x).to(device)).logits.float()
                _check_finite(logits, model)
                out[rows] = logits.cpu().numpy()
                bar.update(len(rows))
    finally:
        bar.close()
        model.reset()
        model.train(was_training)
    return out


def _n_classes(model: Any) -> int:
    import torch

    return [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


# ------------------------------------------------------------------ runs and ensembles


def predict_texts(
    runs: Sequence[Any],
    texts: Sequence[str],
    bs: int = 64,
    device: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    threshold: float | None = None,
    progress: bool | None = False,
    threads: int | None = None,
) -> Predictions:
    """Labels and probabilities of ``texts`` from one classifier run, or the average of the
    probabilities of several (``runs``: run directories or loaded ``Run`` objects; e.g. a
    forward and a backward classifier). Rows are in the order of ``texts``.

    ``threads``: torch's CPU threads while this runs (default: torch's, all cores). On a
    machine whose cores are busy with other jobs, one thread can be several times faster:
    each LSTM time step ends in a barrier that waits for every thread, and a thread that
    has lost its core holds all of them up (measured: 1,500 reviews, tiny model, both cores
    of a 2-core machine busy: 27 s with 2 threads, 14 s with 1; quiet: 6.5 s and 9 s).

    Runs that share a vocab tokenize the texts once. All runs must have the same task and
    class names. ``threshold`` overrides the runs' own (multi_label only).
    """
    import torch

    from fastulm.generation import NonFiniteError
    from fastulm.run_reader import load_run

    check_threshold(threshold)
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if isinstance(runs, (str, Path)) or not isinstance(runs, Sequence):
        runs = [runs]
    if not runs:
        raise ValueError("no classifier run given")
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    total, names, task, encoded = None, None, None, {}
    with torch_threads(threads):
        for r in runs:
            where = str(r)
            run = load_run(r, dev) if isinstance(r, (str, Path)) else r
            if run.kind != "clas":
                raise ValueError(f"{where}: a {run.kind} run, not a classifier")
            t = Task.from_config(run.config, f"{where}/config.json")
            n = _n_classes(run.model)
            run_names = class_names(run.label_names, n)
            if names is not None and (run_names != names or t.kind != task.kind):
                raise ValueError(
                    f"{where}: labels {run_names} ({t.kind}) differ from {names} ({task.kind})"
                )
            names, task = run_names, task or t
            key = tuple(run.vocab)
            if key not in encoded:
                encoded[key] = encode_ids(run.vocab, texts, workers)
            backwards = run.config.get("settings", {}).get("backwards", False)
            try:
                logits = classifier_logits(
                    run.model, encoded[key], bs, backwards, precision, progress
                )
            except NonFiniteError as err:
                raise ValueError(f"{where}: {err}") from None
            except torch.OutOfMemoryError:
                raise ValueError(
                    f"{where}: out of memory on {dev} at {bs} texts a batch; lower --bs"
                ) from None
            p = probabilities(logits, t)
            total = p if total is None else total + p
    probs = (total / len(runs)).astype(np.float32)
    return Predictions(pick_labels(probs, names, task, threshold), probs, names)
