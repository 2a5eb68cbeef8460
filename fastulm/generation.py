"""Inference with trained models: sampling text from the language model, classifying documents.

Generation runs the prompt through the model once, then feeds each sampled token once, the
LSTM's hidden state carrying everything before it: O(n) work for n tokens. (The reference
reruns the whole sequence from a reset state at every step, O(n^2) for the same distribution
in eval mode.) Sampling follows the reference: xxunk can be excluded, probabilities under
`min_p` dropped, then probs ** (1 / temperature) sampled; here that is computed as
softmax(log p / temperature), the same distribution without underflow at low temperatures.

A model whose scores are NaN or infinite (corrupt weights) raises `NonFiniteError` rather
than sampling garbage or returning NaN probabilities.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastulm.data.clas_loader import pad_batch
from fastulm.data.vocab import as_vocab
from fastulm.text.detokenize import detokenize

UNK_ID = 0
SENTENCE_ENDS = (".", "!", "?", "…")


class NonFiniteError(ValueError):
    """The model's scores are NaN or infinite: any token or label drawn from them is noise."""


def _check_finite(scores: torch.Tensor, model: nn.Module) -> None:
    if bool(torch.isfinite(scores).all()):
        return
    if any(not bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise NonFiniteError(
            "the model's weights are not finite (NaN/inf); retrain or use another checkpoint"
        )
    raise NonFiniteError("the model's output is not finite (NaN/inf) although its weights are")


def check_sampling(temperature: float, min_p: float | None) -> None:
    """Refuse settings that would only fail later, deep inside sampling (or sample noise)."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if min_p is not None and not 0 <= min_p < 1:
        raise ValueError(f"min_p is a probability threshold in [0, 1), got {min_p}")


def _logits(out: Any) -> torch.Tensor:
    if hasattr(out, "logits"):
        return out.logits
    return out[0] if isinstance(out, (tuple, list)) else out


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


class LMStepper:
    """A language model primed on a prompt; `feed` runs one more token, keeping the state."""

    def __init__(self, lm: nn.Module, prompt_ids: Iterable[int]) -> None:
        self.lm = lm
        self.device = _device(lm)
        ids = torch.as_tensor(np.asarray(list(prompt_ids), dtype=np.int64), device=self.device)
        if ids.numel() == 0:
            raise ValueError("the prompt is empty: give at least one token (e.g. xxbos)")
        lm.reset()
        self.logits = _logits(lm(ids.view(1, -1)))[0, -1].float()
        _check_finite(self.logits, lm)

    def feed(self, token_id: int) -> torch.Tensor:
        """Logits for the token after `token_id`."""
        x = torch.tensor([[token_id]], dtype=torch.long, device=self.device)
        self.logits = _logits(self.lm(x))[0, -1].float()
        _check_finite(self.logits, self.lm)
        return self.logits


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    no_unk: bool = True,
    min_p: float | None = None,
    generator: torch.Generator | None = None,
    unk_id: int = UNK_ID,
) -> int:
    """One token id from next-token logits [vocab]; temperature 0 means argmax.

    `min_p` is a probability (fastai's): tokens less likely than it are dropped; 0 keeps all.
    """
    check_sampling(temperature, min_p)
    logp = F.log_softmax(logits.detach().float().cpu(), dim=-1)
    if no_unk:
        logp[unk_id] = -math.inf
    if min_p:
        keep = logp >= math.log(min_p)
        if keep.any():
            logp = logp.masked_fill(~keep, -math.inf)
        else:
            warnings.warn(f"no token has probability >= {min_p}; min_p ignored", stacklevel=2)
    if temperature == 0:
        return int(logp.argmax())
    probs = torch.softmax(logp / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(
    lm: nn.Module,
    prompt_ids: Sequence[int] | np.ndarray | torch.Tensor,
    n_words: int,
    temperature: float = 1.0,
    no_unk: bool = True,
    min_p: float | None = None,
    seed: int | None = None,
    n_sentences: int | None = None,
    sentence_end_ids: Iterable[int] = (),
    unk_id: int = UNK_ID,
    stop_after_sentences: int | None = None,
) -> list[int]:
    """The prompt's ids followed by up to `n_words` sampled ones.

    Stops early after `n_sentences` sampled tokens from `sentence_end_ids`
    (`stop_after_sentences` is another name for it). `seed` makes the sample repeatable.
    The model runs in eval mode and is reset afterwards; its training flag is restored.
    """
    if n_sentences is None:
        n_sentences = stop_after_sentences
    ends = {int(i) for i in sentence_end_ids}
    if n_sentences is not None and not ends:
        raise ValueError("n_sentences needs sentence_end_ids (the ids of '.', '!', '?')")
    check_sampling(temperature, min_p)
    ids = [int(i) for i in torch.as_tensor(prompt_ids).view(-1).tolist()]
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    was_training = lm.training
    lm.eval()
    try:
        with torch.no_grad():
            stepper = LMStepper(lm, ids)
            n_ends = 0
            for k in range(n_words):
                tok = sample_next(stepper.logits, temperature, no_unk, min_p, gen, unk_id)
                ids.append(tok)
                if tok in ends:
                    n_ends += 1
                    if n_sentences is not None and n_ends >= n_sentences:
                        break
                if k + 1 < n_words:
                    stepper.feed(tok)
    finally:
        lm.reset()
        lm.train(was_training)
    return ids


def encode_texts(vocab: Any, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each text, tokenized and numericalized exactly as the corpus was."""
    from fastulm.text import tokenize_texts

    stoi = as_vocab(vocab).stoi
    return [np.array([stoi[t] for t in toks], dtype=np.int64) for toks in tokenize_texts(texts)]


def generate_text(
    lm: nn.Module,
    vocab: Any,
    prompt: str,
    n_words: int,
    temperature: float = 1.0,
    n_sentences: int | None = None,
    **kwargs: Any,
) -> str:
    """The prompt and its continuation as readable text (what `learn.predict` returns).

    The prompt is tokenized like the training corpus (xxbos first); `kwargs` go to `generate`.
    """
    vocab = as_vocab(vocab)
    ids = encode_texts(vocab, [prompt])[0].tolist()
    ends = [vocab.stoi[t] for t in SENTENCE_ENDS if t in vocab.stoi]
    out = generate(
        lm, ids, n_words, temperature, n_sentences=n_sentences, sentence_end_ids=ends, **kwargs
    )
    return detokenize([vocab.itos[i] for i in out])


def classify(
    clf: nn.Module,
    docs: Sequence[np.ndarray],
    bs: int = 64,
    pad_id: int | None = None,
    bptt: int | None = None,
    backwards: bool = False,
) -> torch.Tensor:
    """Class probabilities [n_docs, n_classes] (float32, CPU), rows in the order of `docs`.

    Documents are batched longest first so each batch holds similar lengths, padded in the
    encoder's layout; `pad_id`/`bptt` default to the model's config.
    """
    config = getattr(clf, "config", None)
    pad_id = pad_id if pad_id is not None else getattr(config, "pad_token", 1)
    bptt = bptt if bptt is not None else getattr(config, "bptt", 72)
    docs = [np.asarray(d)[::-1] if backwards else np.asarray(d) for d in docs]
    if not docs:
        return torch.empty(0, 0)
    if any(len(d) == 0 for d in docs):
        raise ValueError("classify: a document has no tokens (each starts with xxbos)")
    order = np.argsort(-np.array([len(d) for d in docs]), kind="stable")
    device = _device(clf)
    parts = []
    was_training = clf.training
    clf.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(docs), bs):
                x = pad_batch([docs[j] for j in order[i : i + bs]], pad_id, bptt)
                clf.reset()
                logits = _logits(clf(torch.from_numpy(x).to(device))).float()
                _check_finite(logits, clf)
                parts.append(torch.softmax(logits, dim=-1).cpu())
    finally:
        clf.reset()
        clf.train(was_training)
    probs = torch.empty(len(docs), parts[0].shape[1])
    probs[torch.from_numpy(order)] = torch.cat(parts)
    return probs
