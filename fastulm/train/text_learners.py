"""The walkthrough's two learners: ``language_model_learner`` and ``text_classifier_learner``.

They read a tokenized corpus (``python -m fastulm.tokenize``), build the AWD-LSTM and its
loaders, and return a Learner with the text-specific extras: ``predict`` (generation for the
LM, label and probabilities for the classifier) and the encoder hand-off
(``save_encoder`` / ``load_encoder``). ``export`` writes a run directory (see run_dir.py)
that predict/generate read without the corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastulm.data import DataError
from fastulm.data.clas_loader import ClasLoader
from fastulm.data.corpus import Corpus, Docs, open_corpus
from fastulm.data.lm_loader import LMLoader
from fastulm.model import AWDLSTMConfig, get_classifier, get_language_model
from fastulm.model.encoder_io import load_encoder, save_encoder
from fastulm.model.pretrained import load_pretrained
from fastulm.prediction import predict_labels
from fastulm.scores import Task
from fastulm.train import distributed as ddp
from fastulm.train.learner import Learner
from fastulm.train.run_dir import write_run

# fastai's TextLearner default; the generic Learner keeps fit_one_cycle's (0.95, 0.85, 0.95)
TEXT_MOMS = (0.8, 0.7, 0.8)
# the model settings the learners take as keywords (the rest of AWDLSTMConfig via config=)
MODEL_KEYS = ("emb_sz", "n_hid", "n_layers", "arch")


class DocSubset(Docs):
    """Some documents of a split, in the split layout the loaders read (ids, offsets, labels).

    The chosen documents' tokens are gathered once into one array (a copy of that share of
    the corpus): the loaders index documents by their start offsets in one flat array.
    """

    def __init__(self, split: Any, docs: np.ndarray):
        docs = np.asarray(docs, dtype=np.int64)
        offsets = np.asarray(split.offsets, dtype=np.int64)
        lengths = offsets[docs + 1] - offsets[docs]
        self.offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        self.ids = _gather(np.asarray(split.ids), offsets[docs], lengths, self.offsets)
        self.labels = np.asarray(split.labels, dtype=np.int64)[docs]
        self.name = getattr(split, "name", "subset")


def _gather(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, out_offsets) -> np.ndarray:
    total = int(out_offsets[-1])
    if total == 0:
        return np.zeros(0, dtype=ids.dtype)
    # position j of the output reads ids[start of its doc + (j - start of its doc in out)]
    shift = np.repeat(starts - out_offsets[:-1], lengths)
    return ids[np.arange(total, dtype=np.int64) + shift]


def _open(corpus: Corpus | str | Path) -> Corpus:
    return corpus if isinstance(corpus, Corpus) else open_corpus(corpus)


def lm_splits(
    corpus: Corpus,
    splits: Sequence[str] | None = None,
    valid_split: str | None = None,
    valid_pct: float = 0.1,
    seed: int = 0,
) -> tuple[list[Any], list[Any]]:
    """Training and validation documents for the language model.

    With ``valid_split`` that split validates and the others (or ``splits``) train; without
    it, a seeded ``valid_pct`` of every document is held out (the walkthrough: all 100k
    reviews, 10% for validation).
    """
    names = list(splits) if splits else corpus.split_names
    if valid_split is not None:
        return [corpus[s] for s in names if s != valid_split], [corpus[valid_split]]
    if not 0 < valid_pct < 1:
        raise ValueError(f"valid_pct must be between 0 and 1, got {valid_pct}")
    rng = np.random.default_rng(seed)
    train, valid = [], []
    for name in names:
        split = corpus[name]
        held = rng.random(len(split)) < valid_pct
        train.append(DocSubset(split, np.flatnonzero(~held)))
        valid.append(DocSubset(split, np.flatnonzero(held)))
    valid = [v for v in valid if len(v)]
    if not valid:
        raise DataError(f"{corpus.path}: too few documents to hold out {valid_pct:.0%}")
    return train, valid


def _settings(bs: int) -> tuple[ddp.DistContext, int]:
    """This rank's coordinates and per-rank batch size (``bs`` is the global batch)."""
    ctx = ddp.current()
    if bs % ctx.world_size:
        raise ValueError(f"batch size {bs} does not split over {ctx.world_size} processes")
    return ctx, bs // ctx.world_size


class TextLearner(Learner):
    """A Learner over a tokenized corpus; ``export`` writes the run directory."""

    settings: dict[str, Any]

    def export(self, run_dir: str | Path | None = None) -> Path:
        """Write what predict/generate read (config, vocab, weights) to ``run_dir``."""
        run_dir = Path(run_dir) if run_dir is not None else self.path
        if self.dist.is_main:
            settings = {**getattr(self, "settings", {}), "kind": self.kind}
            write_run(run_dir, self.model, self.vocab, self.label_names, settings)
        return run_dir


class LMLearner(TextLearner):
    """A language-model Learner: ``predict`` writes text, ``save_encoder`` hands off."""

    def predict(
        self,
        text: str,
        n_words: int = 1,
        no_unk: bool = True,
        temperature: float = 1.0,
        min_p: float | None = None,
        seed: int | None = None,
        n_sentences: int | None = None,
    ) -> str:
        """The prompt continued by ``n_words`` sampled tokens, as readable text.

        The leading arguments are in fastai's order (text, n_words, no_unk, temperature).
        """
        from fastulm.generation import generate_text

        return generate_text(
            self.model,
            self.vocab,
            text,
            n_words,
            temperature,
            n_sentences,
            no_unk=no_unk,
            min_p=min_p,
            seed=seed,
        )

    def save_encoder(self, name: str | Path) -> Path:
        path = self._model_file(name, "")
        if self.dist.is_main:
            save_encoder(self.model, path, self.vocab)
        return path.with_name(path.name + ".safetensors")


class ClassifierLearner(TextLearner):
    """A classifier Learner: ``load_encoder`` takes the fine-tuned LM's encoder."""

    def load_encoder(self, name: str | Path, remap_vocab: bool = False) -> ClassifierLearner:
        """The fine-tuned LM's encoder. ``remap_vocab`` accepts an encoder trained on another
        vocab: its rows are mapped onto this corpus's (new tokens start from the mean row)."""
        load_encoder(self.model, self._model_file(name, ""), self.vocab, remap_vocab)
        return self

    def predict(self, text: str) -> tuple[str, torch.Tensor, torch.Tensor]:
        """(label, prediction, class probabilities) for one text, as fastai returns them: the
        prediction is the class index (single-label) or one bool per class over the
        threshold (multi-label, whose label is those classes joined by the delimiter)."""
        labels, probs = self.predict_texts([text])
        if self.task == "multi_label":
            return labels[0], probs[0] > self.threshold, probs[0]
        return labels[0], probs[0].argmax(), probs[0]

    def predict_texts(self, texts: Sequence[str], bs: int = 64) -> tuple[list[str], torch.Tensor]:
        """Labels and probabilities (softmax, or multi-label: per-class sigmoids) of texts."""
        settings = getattr(self, "settings", {})
        task = Task(self.task, settings.get("label_delim"), self.threshold)
        backwards = settings.get("backwards", False)
        return predict_labels(
            self.model, self.vocab, self.label_names, texts, bs, backwards, task=task
        )


def language_model_learner(
    corpus: Corpus | str | Path,
    drop_mult: float = 0.3,
    bs: int = 48,
    bptt: int = 72,
    valid_pct: float = 0.1,
    splits: Sequence[str] | None = None,
    valid_split: str | None = None,
    pretrained: tuple[str | Path, str | Path] | None = None,
    config: AWDLSTMConfig | None = None,
    path: str | Path = ".",
    seed: int = 0,
    backwards: bool = False,
    random_bptt: bool = False,
    grad_checkpoint: bool = False,
    **kwargs: Any,
) -> LMLearner:
    """The walkthrough's ``language_model_learner``: an AWD-LSTM LM over the whole corpus.

    ``pretrained=(weights.pth, itos.pkl)`` loads fastai-format weights (e.g. WikiText-103)
    remapped to this vocab and freezes the body, as fastai does. Model sizes go in ``config``
    or as ``emb_sz=``/``n_hid=``/``n_layers=``/``arch=`` (``"lstm"`` or ``"qrnn"``); other
    keywords go to ``Learner``.
    """
    corpus = _open(corpus)
    kwargs.setdefault("moms", TEXT_MOMS)
    model_kw = {k: kwargs.pop(k) for k in MODEL_KEYS if k in kwargs}
    if config is None:
        config = AWDLSTMConfig.lm(drop_mult, bptt=bptt, checkpoint=grad_checkpoint, **model_kw)
    ctx, rank_bs = _settings(bs)
    train, valid = lm_splits(corpus, splits, valid_split, valid_pct, seed)
    common = dict(bptt=bptt, backwards=backwards, rank=ctx.rank, world_size=ctx.world_size)
    train_dl = LMLoader(train, rank_bs, shuffle=True, seed=seed, random_bptt=random_bptt, **common)
    valid_dl = LMLoader(valid, rank_bs, shuffle=False, **common)
    torch.manual_seed(seed)  # the same initial weights on every rank
    model = get_language_model(len(corpus.vocab), config)
    torch.manual_seed(seed + ctx.rank)  # different dropout masks per rank
    if pretrained is not None:
        load_pretrained(model, pretrained[0], pretrained[1], corpus.vocab.itos)
    learn = LMLearner(
        model,
        train_dl,
        valid_dl,
        kind="lm",
        path=path,
        vocab=corpus.vocab.itos,
        label_names=corpus.label_names,
        **kwargs,
    )
    learn.settings = dict(kind="lm", bs=bs, bptt=bptt, backwards=backwards, corpus=str(corpus.path))
    if pretrained is not None:
        learn.freeze()
    return learn


def text_classifier_learner(
    corpus: Corpus | str | Path,
    drop_mult: float = 0.5,
    bs: int = 64,
    bptt: int = 72,
    max_len: int | None = 72 * 20,
    train_split: str = "train",
    valid_split: str | None = None,
    config: AWDLSTMConfig | None = None,
    path: str | Path = ".",
    seed: int = 0,
    backwards: bool = False,
    grad_checkpoint: bool = False,
    threshold: float = 0.5,
    **kwargs: Any,
) -> ClassifierLearner:
    """The walkthrough's ``text_classifier_learner``, frozen to the head like fastai's.

    Validates on ``valid_split`` (default: ``valid`` if the corpus has it, else ``test``).
    The task comes from the corpus: single-label (one class a document) or multi-label (any
    number of classes; one sigmoid each, ``threshold`` decides which are predicted).
    """
    corpus = _open(corpus)
    kwargs.setdefault("moms", TEXT_MOMS)
    if valid_split is None:
        valid_split = "valid" if "valid" in corpus else "test"
        if valid_split not in corpus:
            raise ValueError(
                f"{corpus.path}: no validation split (it has {', '.join(corpus.split_names)});"
                " tokenize with --valid-pct P or --valid-col COL, or name one with --valid-split"
            )
    names = corpus.label_names
    task = getattr(corpus, "task", "single_label")
    train, valid = corpus[train_split], corpus[valid_split]
    for split in (train, valid):
        if len(split) == 0 or int(np.max(split.labels)) < 0:
            raise DataError(f"{corpus.path}: split {split.name!r} has no labelled documents")
    if task == "multi_label":
        n_classes = len(names)
        hot = [_multi_hot(s, n_classes) for s in (train, valid)]
        keep = [np.flatnonzero(np.asarray(s.labels) >= 0) for s in (train, valid)]
        train, valid = (_labelled(s) for s in (train, valid))
        train_hot, valid_hot = (h[k] for h, k in zip(hot, keep))
        if n_classes < 1 or not train_hot.any():
            raise DataError(f"{corpus.path}: split {train_split!r} has no labels set")
    else:
        n_classes = len(names) or int(np.max(train.labels)) + 1
        train, valid = (_labelled(s) for s in (train, valid))
        train_hot = valid_hot = None
        _check_classes(corpus, train_split, valid_split, train, valid, names, n_classes)
    model_kw = {k: kwargs.pop(k) for k in MODEL_KEYS if k in kwargs}
    if config is None:
        config = AWDLSTMConfig.classifier(
            drop_mult, bptt=bptt, max_len=max_len, checkpoint=grad_checkpoint, **model_kw
        )
    ctx, rank_bs = _settings(bs)
    # Whole documents, as fastai's loader gives them: the model runs every chunk (those before
    # the last max_len positions without grad) and pools the last max_len, so the state
    # entering that window has read the document's start, exactly as predict/classify do.
    common = dict(bptt=bptt, backwards=backwards, rank=ctx.rank, world_size=ctx.world_size)
    train_dl = ClasLoader(train, rank_bs, shuffle=True, seed=seed, multi_hot=train_hot, **common)
    valid_dl = ClasLoader(valid, rank_bs, shuffle=False, multi_hot=valid_hot, **common)
    torch.manual_seed(seed)
    model = get_classifier(len(corpus.vocab), n_classes, config)
    torch.manual_seed(seed + ctx.rank)
    learn = ClassifierLearner(
        model,
        train_dl,
        valid_dl,
        kind="clas",
        path=path,
        vocab=corpus.vocab.itos,
        label_names=names,
        task=task,
        threshold=threshold,
        **kwargs,
    )
    learn.settings = dict(
        kind="clas",
        bs=bs,
        bptt=bptt,
        backwards=backwards,
        corpus=str(corpus.path),
        task=task,
        label_delim=getattr(corpus, "label_delim", None),
        threshold=threshold,
        # the table columns a document was made of: predict joins a CSV's the same way
        text_cols=corpus.meta.get("text_cols"),
    )
    learn.freeze()
    return learn


def _check_classes(corpus, train_split, valid_split, train, valid, names, n_classes) -> None:
    """A single-label classifier needs two classes to learn, and cannot be judged on a class
    it never saw."""
    present = np.unique(np.asarray(train.labels))

    def name(c: int) -> str:
        return names[c] if c < len(names) else str(c)

    if n_classes < 2 or len(present) < 2:
        raise DataError(
            f"{corpus.path}: split {train_split!r} has only one class ({name(present[0])!r}); "
            "a classifier needs at least two"
        )
    unseen = np.setdiff1d(np.unique(np.asarray(valid.labels)), present)
    if len(unseen):
        raise DataError(
            f"{corpus.path}: split {valid_split!r} has class {name(unseen[0])!r}, never seen in "
            f"{train_split!r}"
        )


def _multi_hot(split: Any, n_classes: int) -> np.ndarray:
    """[n_docs, n_classes] 0/1 from the split's label sets (offsets, class ids)."""
    offsets, values = split.label_sets
    hot = np.zeros((len(split.labels), n_classes), dtype=np.float32)
    rows = np.repeat(np.arange(len(split.labels)), np.diff(np.asarray(offsets)))
    hot[rows, np.asarray(values, dtype=np.int64)] = 1.0
    return hot


def _labelled(split: Any) -> Any:
    labels = np.asarray(split.labels)
    if (labels >= 0).all():
        return split
    return DocSubset(split, np.flatnonzero(labels >= 0))
