"""Serving a model without torch: load a folder written by ``python -m fastulm.export`` and
predict with onnxruntime.

    from fastulm import inference
    model = inference.load("export/clas")
    pred = model.predict(["I really loved that movie, it was awesome!"])
    pred.labels, pred.probs, pred.names

The folder holds ``model.onnx``, ``vocab.json``, ``labels.json`` (class names, task,
label_delim, threshold) and ``tokenizer.json`` (how texts become ids, and the sha256 of the
other three); nothing pickled. Each file is checked before use -- its sha256, the class
names against the model's outputs, an LM's vocab against its logits -- and a damaged one is
an ``ExportError`` naming it. An export by an earlier fastulm, without the sha256, is read
as before.
Texts are tokenized by fastulm's tokenizer (no torch, no spaCy) and batched exactly as the
torch path batches them (longest first, ``bs`` a batch), so each document's pooled window --
the last ``max_len`` tokens, cut at the same bptt boundary as in training -- is the same and
the probabilities agree with torch's to float rounding.

This module imports neither torch nor ``fastulm.train`` (a test checks it): its only
dependencies are numpy, onnxruntime and fastulm's tokenizer (numba, regex).
``load`` also accepts a training run directory, which it runs with torch (imported then).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastulm.checksums import file_sha256
from fastulm.scores import Predictions, Task, check_threshold, class_names, pick_labels
from fastulm.scores import probabilities as _probabilities

FORMAT = "fastulm-export-1"
FILES = ("model.onnx", "vocab.json", "labels.json", "tokenizer.json")


class ExportError(ValueError):
    """An export folder that is missing, damaged or of another kind."""


def vocab_problem(vocab: Any) -> str | None:
    """Why a vocab.json's content cannot be a model's vocab (None: it can). ``xxfake``, the
    padding entry, may repeat; a real token listed twice would shift every id after it."""
    from fastulm.data.vocab import FAKE_TOKEN

    if not (isinstance(vocab, list) and vocab and all(isinstance(t, str) for t in vocab)):
        return "not a list of tokens"
    seen: set[str] = set()
    for t in vocab:
        if t in seen and t != FAKE_TOKEN:
            return f"the token {t!r} is listed twice"
        seen.add(t)
    return None


def sorted_batches(lengths: np.ndarray, bs: int) -> list[np.ndarray]:
    """Document indices, longest first, ``bs`` a batch: the torch path's batching."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + bs] for i in range(0, len(order), bs)]


def pooled_from(lengths: np.ndarray, bptt: int, max_len: int | None) -> np.ndarray:
    """Per document of one batch, the index of its first pooled token.

    The classifier reads each document whole and pools the positions at or after the first
    bptt boundary within the batch's last ``max_len`` (its width is the longest document;
    shorter ones are padded in front by whole chunks): SentenceEncoder's rule, restated on
    each document's own tokens.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if max_len is None or len(lengths) == 0:
        return np.zeros(len(lengths), dtype=np.int64)
    width = int(lengths.max())
    first_kept = -(-max(0, width - max_len) // bptt) * bptt
    lead = (width - lengths) // bptt * bptt
    return np.maximum(0, first_kept - lead)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path}: missing (export the run again)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{path}: unreadable ({err})") from None


def _verify(folder: Path, settings: dict[str, Any]) -> None:
    """Each file against the sha256 that export recorded in tokenizer.json, which it writes
    last: a flipped byte or an edited vocab is an error, never a silently different model."""
    sums = settings.get("sha256")
    if sums is None:  # an export by an earlier fastulm
        return
    names = ["model.onnx", "vocab.json"] + (["labels.json"] if settings["kind"] == "clas" else [])
    if not (isinstance(sums, dict) and all(isinstance(sums.get(n), str) for n in names)):
        raise ExportError(f"{folder / 'tokenizer.json'}: damaged (its sha256 table)")
    for name in names:
        path = folder / name
        try:
            digest = file_sha256(path)
        except FileNotFoundError:
            raise ExportError(f"{path}: missing (export the run again)") from None
        except OSError as err:
            raise ExportError(f"{path}: unreadable ({err})") from None
        if digest != sums[name]:
            raise ExportError(
                f"{path}: damaged: its sha256 does not match the export's tokenizer.json "
                "(export the run again)"
            )


def _session(path: Path, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("onnxruntime is not installed (pip install fastulm[onnx])") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise ExportError(
            f"{path}: not a loadable ONNX model ({str(err).splitlines()[0]})"
        ) from None


class _Exported:
    """What both exported kinds share: the folder's settings, vocab and tokenizer."""

    def __init__(self, folder: Path, settings: dict[str, Any], threads: int | None):
        _verify(folder, settings)
        self.folder = folder
        self.settings = settings
        vocab = _read_json(folder / "vocab.json")
        problem = vocab_problem(vocab)
        if problem:
            raise ExportError(f"{folder / 'vocab.json'}: damaged ({problem})")
        self.vocab = vocab
        self.session = _session(folder / "model.onnx", threads)
        # logits' last axis: the classes, or an LM's vocab (None where the graph leaves it open)
        width = self.session.get_outputs()[0].shape[-1]
        self.out_width = width if isinstance(width, int) else None

    def encode(self, texts: Sequence[str], workers: int | None = 1) -> list[np.ndarray]:
        """Each text's vocab ids, tokenized as the training corpus was (xxbos first)."""
        from fastulm.prediction import encode_ids  # numpy + tokenizer; torch-free

        return encode_ids(self.vocab, texts, workers)


class ExportedClassifier(_Exported):
    """A classifier export: ``predict(texts)`` gives labels and probabilities."""

    def __init__(self, folder: Path, settings: dict[str, Any], threads: int | None):
        super().__init__(folder, settings, threads)
        labels = _read_json(folder / "labels.json")
        if not isinstance(labels, dict) or not isinstance(labels.get("names"), list):
            raise ExportError(f"{folder / 'labels.json'}: damaged (no list of names)")
        try:
            self.task = Task.from_config(labels, str(folder / "labels.json"))
        except ValueError as err:
            raise ExportError(str(err)) from None
        n_classes = int(settings["n_classes"])
        if self.out_width not in (None, n_classes):
            raise ExportError(
                f"{folder / 'tokenizer.json'}: damaged (n_classes {n_classes}, but the model "
                f"has {self.out_width} outputs)"
            )
        if labels["names"] and len(labels["names"]) != n_classes:
            raise ExportError(
                f"{folder / 'labels.json'}: damaged ({len(labels['names'])} names for "
                f"{n_classes} classes)"
            )
        self.names = class_names(labels["names"], n_classes)

    def logits(self, docs: Sequence[np.ndarray], bs: int = 64, progress: bool | None = False):
        """Scores [n_docs, n_classes] float32 for token-id documents, in their order."""
        from fastulm.prediction import progress_bar  # tqdm; torch-free

        s = self.settings
        bptt, max_len, pad = int(s["bptt"]), s.get("max_len"), int(s["pad_id"])
        if bs < 1:
            raise ValueError(f"batch size must be >= 1, got {bs}")
        if s.get("backwards"):
            docs = [np.asarray(d)[::-1] for d in docs]
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        if (lengths == 0).any():
            raise ValueError("a document has no tokens (each starts with xxbos)")
        out = np.empty((len(docs), int(s["n_classes"])), dtype=np.float32)
        bar = progress_bar(len(docs), progress)
        try:
            for rows in sorted_batches(lengths, bs):
                lens = lengths[rows]
                ids = np.full((len(rows), int(lens.max())), pad, dtype=np.int64)
                for r, j in enumerate(rows):
                    ids[r, : lens[r]] = docs[j]
                feeds = {
                    "ids": ids,
                    "lengths": lens,
                    "pooled_from": pooled_from(lens, bptt, max_len),
                }
                (scores,) = self.session.run(["logits"], feeds)
                if not np.isfinite(scores).all():
                    raise ValueError(f"{self.folder}: the model's output is not finite (NaN/inf)")
                out[rows] = scores
                bar.update(len(rows))
        finally:
            bar.close()
        return out

    def probabilities(self, texts: Sequence[str], bs: int = 64, workers=None, progress=False):
        return _probabilities(self.logits(self.encode(texts, workers), bs, progress), self.task)

    def predict(
        self,
        texts: Sequence[str],
        bs: int = 64,
        workers: int | None = None,
        threshold: float | None = None,
        progress: bool | None = False,
    ) -> Predictions:
        check_threshold(threshold)
        probs = self.probabilities(texts, bs, workers, progress)
        return Predictions(pick_labels(probs, self.names, self.task, threshold), probs, self.names)


class ExportedLM(_Exported):
    """A language-model export (encoder + tied decoder): next-token scores; the recurrent
    state is passed in and out, so a caller can feed tokens one at a time."""

    def __init__(self, folder: Path, settings: dict[str, Any], threads: int | None):
        super().__init__(folder, settings, threads)
        if self.out_width not in (None, len(self.vocab)):
            raise ExportError(
                f"{folder / 'vocab.json'}: damaged ({len(self.vocab)} tokens for a model of "
                f"{self.out_width})"
            )

    def zero_state(self, bs: int) -> list[np.ndarray]:
        widths = self.settings.get("state_widths")  # older exports: (h, c) per LSTM layer
        if widths is None:
            widths = [n for n in self.settings["state_sizes"] for _ in ("h", "c")]
        return [np.zeros((1, bs, n), dtype=np.float32) for n in widths]

    def logits(
        self, ids: np.ndarray, state: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """(logits [bs, seq, vocab], the state after the last token) for ids [bs, seq]."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"ids must be [bs, seq] with seq >= 1, got shape {ids.shape}")
        state = self.zero_state(ids.shape[0]) if state is None else state
        names = [o.name for o in self.session.get_outputs()]
        feeds = {"ids": ids, **{f"state_in_{i}": s for i, s in enumerate(state)}}
        out = self.session.run(names, feeds)
        return out[0], list(out[1:])

    def next_token_logits(self, text: str) -> np.ndarray:
        """Scores [vocab] of the token after ``text`` (tokenized with xxbos first)."""
        ids = self.encode([text])[0]
        return self.logits(ids[None].astype(np.int64))[0][0, -1]


def read_settings(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such folder")
    if not (folder / "model.onnx").is_file():
        raise ExportError(f"{folder}: no model.onnx (write one with python -m fastulm.export)")
    settings = _read_json(folder / "tokenizer.json")
    if not isinstance(settings, dict) or settings.get("format") != FORMAT:
        raise ExportError(f"{folder / 'tokenizer.json'}: not a {FORMAT} file")
    if settings.get("kind") not in ("lm", "clas"):
        raise ExportError(f"{folder / 'tokenizer.json'}: damaged (kind {settings.get('kind')!r})")
    return settings


def load(path: str | Path, threads: int | None = None, device: str = "auto"):
    """An export folder as an ``ExportedClassifier`` / ``ExportedLM`` (onnxruntime, no torch);
    a training run directory as a torch classifier with the same ``predict``."""
    path = Path(path)
    if (path / "config.json").is_file() and not (path / "model.onnx").is_file():
        return TorchClassifier(path, device)
    settings = read_settings(path)
    cls = ExportedClassifier if settings["kind"] == "clas" else ExportedLM
    return cls(path, settings, threads)


class TorchClassifier:
    """A classifier run directory behind the same ``predict`` as an export (needs torch)."""

    def __init__(self, run_dir: Path, device: str = "auto"):
        from fastulm.prediction import resolve_device
        from fastulm.run_reader import load_run

        self.run_dir = run_dir
        self.run = load_run(run_dir, resolve_device(device))
        if self.run.kind != "clas":
            raise ValueError(f"{run_dir}: a {self.run.kind} run, not a classifier")

    def predict(self, texts: Sequence[str], **kwargs: Any) -> Predictions:
        from fastulm.prediction import predict_texts

        kwargs.setdefault("device", str(next(self.run.model.parameters()).device))
        return predict_texts([self.run], texts, **kwargs)


def predict_exported(
    folders: Sequence[str | Path],
    texts: Sequence[str],
    bs: int = 64,
    workers: int | None = None,
    threshold: float | None = None,
    progress: bool | None = False,
    threads: int | None = None,
) -> Predictions:
    """``predict --onnx``: the probabilities of one export, or the average of several.
    ``threads``: onnxruntime's intra-op threads (default: its own choice)."""
    check_threshold(threshold)
    total, first = None, None
    encoded: dict[tuple, list[np.ndarray]] = {}
    for folder in folders:
        model = load_exported(folder, threads)
        if first is not None and (model.names != first.names or model.task.kind != first.task.kind):
            raise ValueError(f"{folder}: labels {model.names} differ from {first.names}")
        first = first or model
        key = tuple(model.vocab)
        if key not in encoded:
            encoded[key] = model.encode(texts, workers)
        p = _probabilities(model.logits(encoded[key], bs, progress), model.task)
        total = p if total is None else total + p
    probs = (total / len(folders)).astype(np.float32)
    return Predictions(pick_labels(probs, first.names, first.task, threshold), probs, first.names)


def load_exported(folder: str | Path, threads: int | None = None) -> ExportedClassifier:
    """An exported classifier (an error naming the folder for anything else)."""
    settings = read_settings(folder)
    if settings["kind"] != "clas":
        raise ExportError(f"{folder}: an exported language model, not a classifier")
    return ExportedClassifier(Path(folder), settings, threads)
