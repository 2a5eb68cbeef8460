"""Small stand-ins shared by the trainer tests: a token-stream loader with the LMLoader
contract (set_epoch, state_dict/load_state_dict, rank slicing) and tiny models."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fastulm.model import get_classifier, get_language_model


class StreamLoader:
    """``bs`` parallel streams of a shuffled token array, ``bptt`` windows, resumable."""

    def __init__(self, ids, bs, bptt, seed=0, shuffle=True, rank=0, world_size=1, doc_len=17):
        self.ids, self.bs, self.bptt = np.asarray(ids, dtype=np.int64), bs, bptt
        self.seed, self.shuffle, self.doc_len = seed, shuffle, doc_len
        self.rank, self.world_size = rank, world_size
        self.epoch, self.pos = 0, 0
        usable = len(self.ids) // doc_len * doc_len if shuffle else len(self.ids)
        self.n_stream = (usable - 1) // bs

    def __len__(self):
        return -(-(self.n_stream) // self.bptt)

    def set_epoch(self, epoch):
        self.epoch, self.pos = epoch, 0

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state):
        self.epoch, self.pos = state["epoch"], state["pos"]

    def _streams(self):
        ids = self.ids
        if self.shuffle:
            n_docs = len(ids) // self.doc_len
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n_docs)
            ids = ids[: n_docs * self.doc_len].reshape(n_docs, self.doc_len)[order].reshape(-1)
        n = self.n_stream
        x = ids[: self.bs * n].reshape(self.bs, n)
        y = ids[1 : self.bs * n + 1].reshape(self.bs, n)
        per = self.bs // self.world_size
        rows = slice(self.rank * per, (self.rank + 1) * per)
        return x[rows], y[rows]

    def __iter__(self):
        if self.pos >= len(self):  # a finished pass starts over; a restored one continues
            self.pos = 0
        x, y = self._streams()
        while self.pos < len(self):
            t = self.pos * self.bptt
            self.pos += 1
            yield (
                torch.from_numpy(x[:, t : t + self.bptt].copy()),
                torch.from_numpy(y[:, t : t + self.bptt].copy()),
            )


class LabelLoader:
    """Fixed-length documents with labels (no padding): enough to drive a classifier."""

    def __init__(self, x, y, bs, seed=0, shuffle=True):
        self.x, self.y, self.bs, self.seed, self.shuffle = x, y, bs, seed, shuffle
        self.epoch, self.pos = 0, 0

    def __len__(self):
        return -(-len(self.x) // self.bs)

    def set_epoch(self, epoch):
        self.epoch, self.pos = epoch, 0

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state):
        self.epoch, self.pos = state["epoch"], state["pos"]

    def __iter__(self):
        if self.pos >= len(self):
            self.pos = 0
        n = len(self.x)
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        while self.pos < len(self):
            idx = order[self.pos * self.bs : (self.pos + 1) * self.bs]
            self.pos += 1
            yield self.x[idx], self.y[idx]


def toy_tokens(n=4000, vocab=24, seed=0):
    """A learnable stream: mostly ``t+1 mod vocab`` after ``t``, some noise."""
    rng = np.random.default_rng(seed)
    ids = np.empty(n, dtype=np.int64)
    ids[0] = 2
    noise = rng.random(n) < 0.2
    rand = rng.integers(2, vocab, n)
    for i in range(1, n):
        ids[i] = rand[i] if noise[i] else 2 + (ids[i - 1] - 1) % (vocab - 2)
    return ids


def tiny_lm(vocab=24, drop=True, seed=0):
    torch.manual_seed(seed)
    kw = {} if drop else {"drop_mult": 0.0}
    return get_language_model(vocab, emb_sz=8, n_hid=16, n_layers=3, **kw)


def tiny_classifier(vocab=24, n_classes=2, seed=0, bptt=8):
    torch.manual_seed(seed)
    return get_classifier(vocab, n_classes, emb_sz=8, n_hid=16, n_layers=3, bptt=bptt)


class PlainLM(nn.Module):
    """A dropout-free GRU LM following the model contract (for exact DDP comparisons)."""

    def __init__(self, vocab=24, dim=12):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.dec = nn.Linear(dim, vocab)
        self.hidden = None

    def reset(self):
        self.hidden = None

    def layer_groups(self):
        return [list(self.rnn.parameters()), [*self.emb.parameters(), *self.dec.parameters()]]

    def loss(self, x, y):
        out, h = self.rnn(self.emb(x), self.hidden)
        self.hidden = h.detach()
        logits = self.dec(out)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        correct = (logits.argmax(-1) == y).sum()
        return {
            "loss": loss,
            "n_correct": correct,
            "n_tokens": y.numel(),
            "raw": out,
            "dropped": out,
        }
