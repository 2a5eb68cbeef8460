"""ClasLoader: batches and padding against fastai's SortedDL + pad_chunk, DDP, resume."""

import numpy as np
import pytest
import torch

from fastulm.data.clas_loader import ClasLoader, pad_batch


class FakeSplit:
    """The Split interface (flat ids + offsets + labels), built from token arrays for tests."""

    def __init__(self, docs, labels):
        lens = np.array([len(d) for d in docs], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        self.ids = np.concatenate(docs).astype(np.int32)
        self.lengths = lens
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self):
        return len(self.lengths)


def make_split(n_docs, max_len, seed=0, n_classes=2, min_len=1):
    rng = np.random.default_rng(seed)
    # Token ids >= 2 so padding (1) never appears inside a document.
    docs = [
        rng.integers(2, 300, rng.integers(min_len, max_len + 1)).astype(np.int32)
        for _ in range(n_docs)
    ]
    return docs, FakeSplit(docs, rng.integers(0, n_classes, n_docs))


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def fastai_batches(fastai_text, docs, labels, bs, bptt, shuffle, np_seed=None):
    ds = [
        (
            fastai_text.TensorText(torch.from_numpy(d.astype(np.int64))),
            fastai_text.TensorCategory(int(lab)),
        )
        for d, lab in zip(docs, labels)
    ]
    dl = fastai_text.SortedDL(
        ds,
        res=[len(d) for d in docs],
        bs=bs,
        shuffle=shuffle,
        drop_last=shuffle,
        before_batch=fastai_text.Pad_Chunk(pad_idx=1, seq_len=bptt),
    )
    if np_seed is not None:
        np.random.seed(np_seed)
    return [(torch.as_tensor(x), torch.as_tensor(y)) for x, y in dl]


def assert_same_batches(ours, ref):
    assert len(ours) == len(ref)
    for (x, y), (rx, ry) in zip(ours, ref):
        assert x.dtype == torch.int64 and y.dtype == torch.int64
        assert torch.equal(x, rx.long()), (x, rx)
        assert torch.equal(y, ry.long())


@pytest.mark.reference
@pytest.mark.parametrize("bptt", [1, 3, 5, 72])
def test_pad_batch_is_fastai_pad_chunk(fastai_text, bptt):
    rng = np.random.default_rng(bptt)
    docs = [rng.integers(2, 50, n).astype(np.int64) for n in [1, 7, 150, 3, 149, 73, 72, 2]]
    width = max(len(d) for d in docs)
    ours = pad_batch(docs, pad_id=1, bptt=bptt)
    for row, d in zip(ours, docs):
        ref = fastai_text.pad_chunk(torch.from_numpy(d), pad_idx=1, seq_len=bptt, pad_len=width)
        assert row.tolist() == ref.tolist()


@pytest.mark.reference
@pytest.mark.parametrize("n_docs,bs,bptt", [(23, 4, 5), (300, 3, 7), (8, 8, 72), (9, 4, 4)])
def test_validation_batches_match_fastai(fastai_text, n_docs, bs, bptt):
    docs, split = make_split(n_docs, 40, seed=n_docs)
    ours = batches(ClasLoader(split, bs=bs, bptt=bptt))
    assert_same_batches(ours, fastai_batches(fastai_text, docs, split.labels, bs, bptt, False))


@pytest.mark.reference
@pytest.mark.parametrize("n_docs,bs", [(23, 4), (700, 3), (8, 4), (12, 4)])
def test_training_batches_match_fastai_sorteddl(fastai_text, n_docs, bs):
    # Same numpy stream as fastai's shuffle_fn: the order (random perm, longest first,
    # chunks of bs*50 sorted, middle batches shuffled, last partial batch dropped) matches.
    docs, split = make_split(n_docs, 30, seed=n_docs + 1)
    loader = ClasLoader(split, bs=bs, bptt=6, shuffle=True, seed=5)
    for epoch in range(2):
        loader.set_epoch(epoch)
        ref = fastai_batches(fastai_text, docs, split.labels, bs, 6, True, np_seed=[5, epoch, 0])
        assert_same_batches(batches(loader), ref)
    assert len(loader) == n_docs // bs


def test_training_order_properties():
    _, split = make_split(1000, 200, seed=3)
    loader = ClasLoader(split, bs=8, bptt=72, shuffle=True, seed=1)
    idx = loader.batch_indices(0)
    lens = split.lengths
    assert lens[idx[0][0]] == lens.max()  # the longest batch comes first
    assert all(np.all(np.diff(lens[b]) <= 0) for b in idx)  # each batch sorted, longest first
    flat = np.concatenate(idx)
    assert len(set(flat.tolist())) == len(flat) == 1000 // 8 * 8
    assert not np.array_equal(np.concatenate(loader.batch_indices(1)), flat)
    # Within a batch lengths are close (sorted chunks), far closer than a random batch.
    spread = np.mean([lens[b].max() - lens[b].min() for b in idx])
    assert spread < 0.2 * (lens.max() - lens.min())


@pytest.mark.reference
def test_backwards_is_fastai_on_reversed_docs(fastai_text):
    docs, split = make_split(30, 25, seed=4)
    ours = batches(ClasLoader(split, bs=4, bptt=5, backwards=True))
    ref = fastai_batches(fastai_text, [d[::-1] for d in docs], split.labels, 4, 5, False)
    assert_same_batches(ours, ref)
    assert ours[0][0][0, -1].item() == docs[int(np.argmax(split.lengths))][0]


def test_max_len_keeps_the_end_of_long_documents():
    docs, split = make_split(12, 60, seed=6, min_len=30)
    whole = ClasLoader(split, bs=4, bptt=8)
    capped = ClasLoader(split, bs=4, bptt=8, max_len=20)
    for idx, (x, _) in zip(capped.batch_indices(), capped):
        assert x.shape[1] == 20
        for row, i in zip(x, idx):
            assert row[row != 1].tolist() == docs[i][-20:].tolist()
    assert batches(whole)[0][0].shape[1] == max(len(d) for d in docs)
    back = ClasLoader(split, bs=4, bptt=8, max_len=20, backwards=True)
    x, _ = next(iter(back))
    i = back.batch_indices()[0][0]
    assert x[0].tolist() == docs[i][::-1][-20:].tolist()


@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_together_cover_the_global_batch(shuffle):
    _, split = make_split(50, 40, seed=7)
    single = ClasLoader(split, bs=6, bptt=5, shuffle=shuffle, seed=3)
    ranks = [
        ClasLoader(split, bs=2, bptt=5, shuffle=shuffle, seed=3, rank=r, world_size=3)
        for r in range(3)
    ]
    s_idx, s_batches = single.batch_indices(), batches(single)
    r_idx = [r.batch_indices() for r in ranks]
    r_batches = [batches(r) for r in ranks]
    if shuffle:  # training: every rank gets the same number of full batches
        assert all(len(r) == len(s_idx) for r in r_idx)
    for i, (idx, (x, y)) in enumerate(zip(s_idx, s_batches)):
        for r in range(3):
            if i >= len(r_idx[r]):
                assert len(idx[r::3]) == 0
                continue
            assert np.array_equal(r_idx[r][i], idx[r::3])
            rx, ry = r_batches[r][i]
            assert torch.equal(ry, y[r::3])
            # the very rows one process pads: same width (the global batch's longest), so
            # per-position means such as AR/TAR have the same normaliser on every rank
            assert torch.equal(rx, x[r::3])


@pytest.mark.parametrize("stop_at", [0, 2, 5])
def test_resume_mid_epoch_is_exact(stop_at):
    _, split = make_split(60, 30, seed=8)
    kw = dict(bs=4, bptt=5, shuffle=True, seed=2)
    full = ClasLoader(split, **kw)
    expected = batches(full) + batches(full)
    run = ClasLoader(split, **kw)
    it = iter(run)
    got = [tuple(t.clone() for t in next(it)) for _ in range(stop_at)]
    resumed = ClasLoader(split, **kw)
    resumed.load_state_dict(run.state_dict())
    got += batches(resumed) + batches(resumed)
    assert_same_batches(got, expected)


def test_show_batch(capsys):
    _, split = make_split(10, 20, seed=9)
    itos = [f"w{i}" for i in range(300)]
    loader = ClasLoader(split, bs=4, bptt=5)
    rows = loader.show_batch(itos, ["neg", "pos"], n=3)
    x, y = next(iter(loader))
    assert rows == [
        (" ".join(itos[t] for t in x[r][x[r] != 1].tolist()), ["neg", "pos"][y[r]])
        for r in range(3)
    ]
    out = capsys.readouterr().out
    assert "category" in out and rows[0][1] in out


def test_bad_arguments():
    _, split = make_split(10, 20)
    with pytest.raises(ValueError, match="rank"):
        ClasLoader(split, bs=2, rank=3, world_size=2)
    with pytest.raises(ValueError, match="max_len"):
        ClasLoader(split, bs=2, max_len=0)
    split.labels[3] = -1
    with pytest.raises(ValueError, match="1 of 10 documents have no label"):
        ClasLoader(split, bs=2)


@pytest.mark.reference
def test_imdb_sample_corpus_matches_fastai(fastai_text, imdb_sample, tmp_path, capsys):
    import csv
    import json
    from collections import Counter

    from fastulm.data.corpus import open_corpus, split_batch, write_corpus
    from fastulm.data.vocab import Vocab

    lines = (imdb_sample / "fastai_tokens.jsonl").read_text(encoding="utf-8").split("\n")
    rows = sorted((json.loads(x) for x in lines if x.strip()), key=lambda r: r["row"])
    tokens = [r["tokens"] for r in rows]
    with open(imdb_sample / "texts.csv", encoding="utf-8", newline="") as f:
        labels = [int(m["label"] == "positive") for m in csv.DictReader(f)]
    vocab = Vocab.build(Counter(t for doc in tokens for t in doc), min_freq=2)
    docs = [vocab.numericalize(t) for t in tokens]
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    batch = split_batch(np.concatenate(docs), offsets, labels, [str(i) for i in range(len(docs))])
    write_corpus(tmp_path / "c", vocab, {"train": batch}, {"label_names": ["neg", "pos"]})
    corpus = open_corpus(tmp_path / "c")

    valid = ClasLoader(corpus["train"], bs=64, bptt=72)
    assert_same_batches(batches(valid), fastai_batches(fastai_text, docs, labels, 64, 72, False))
    train = ClasLoader(corpus["train"], bs=64, bptt=72, shuffle=True, seed=0)
    ref = fastai_batches(fastai_text, docs, labels, 64, 72, True, np_seed=[0, 0, 0])
    assert_same_batches(batches(train), ref)
    shown = valid.show_batch(corpus.vocab, corpus.label_names, n=2)
    longest = int(np.argmax([len(d) for d in docs]))
    expected = " ".join(vocab.decode(docs[longest][:40]))  # rare words are xxunk now
    assert shown[0] == (expected, ["neg", "pos"][labels[longest]])
    assert expected.startswith("xxbos xxmaj with xxmaj iphigenia")
