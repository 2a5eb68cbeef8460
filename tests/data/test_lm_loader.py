"""LMLoader: stream layout against fastai's LMDataLoader, shuffling, DDP slicing, resume."""

import numpy as np
import pytest
import torch

from fastulm.data.lm_loader import LMLoader


class FakeSplit:
    """The Split interface (flat ids + offsets), built from token arrays for tests."""

    def __init__(self, docs):
        lens = np.array([len(d) for d in docs], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        self.ids = np.concatenate(docs).astype(np.int32) if docs else np.zeros(0, np.int32)
        self.lengths = lens
        self.labels = np.full(len(docs), -1, dtype=np.int64)

    def __len__(self):
        return len(self.lengths)


def make_docs(n_docs, max_len, vocab=500, seed=0, min_len=1):
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, vocab, rng.integers(min_len, max_len + 1)).astype(np.int32)
        for _ in range(n_docs)
    ]


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def fastai_batches(fastai_text, docs, bs, bptt):
    dl = fastai_text.LMDataLoader(
        [torch.from_numpy(d.astype(np.int64)) for d in docs], bs=bs, seq_len=bptt
    )
    return [(torch.as_tensor(x), torch.as_tensor(y)) for x, y in dl]


def assert_same_batches(ours, ref):
    assert len(ours) == len(ref)
    for (x, y), (rx, ry) in zip(ours, ref):
        assert x.dtype == torch.int64 and y.dtype == torch.int64
        assert torch.equal(x, rx.long()) and torch.equal(y, ry.long())


@pytest.mark.reference
@pytest.mark.parametrize(
    "n_docs,max_len,bs,bptt",
    [(37, 60, 4, 7), (5, 10, 3, 4), (50, 30, 8, 9), (1, 200, 5, 13), (12, 40, 1, 72)],
)
def test_matches_fastai_unshuffled(fastai_text, n_docs, max_len, bs, bptt):
    docs = make_docs(n_docs, max_len, seed=n_docs + bs)
    ours = batches(LMLoader(FakeSplit(docs), bs=bs, bptt=bptt))
    assert_same_batches(ours, fastai_batches(fastai_text, docs, bs, bptt))


@pytest.mark.reference
def test_stream_length_multiple_of_bptt(fastai_text):
    # 4 streams of exactly 3 windows: the last window is a full bptt, not empty.
    docs = [np.arange(4 * 15 + 1, dtype=np.int32)]
    loader = LMLoader(FakeSplit(docs), bs=4, bptt=5)
    ours = batches(loader)
    assert len(loader) == 3 and all(x.shape == (4, 5) for x, _ in ours)
    assert_same_batches(ours, fastai_batches(fastai_text, docs, 4, 5))


@pytest.mark.reference
def test_shuffled_epoch_is_fastai_on_permuted_docs(fastai_text):
    docs = make_docs(40, 50, seed=3)
    loader = LMLoader(FakeSplit(docs), bs=4, bptt=8, shuffle=True, seed=11)
    for epoch in range(2):
        order = loader.doc_order(epoch)
        assert sorted(order.tolist()) == list(range(len(docs)))
        loader.set_epoch(epoch)
        ref = fastai_batches(fastai_text, [docs[i] for i in order], 4, 8)
        assert_same_batches(batches(loader), ref)
    assert not np.array_equal(loader.doc_order(0), loader.doc_order(1))
    again = LMLoader(FakeSplit(docs), bs=4, bptt=8, shuffle=True, seed=11)
    assert np.array_equal(again.doc_order(1), loader.doc_order(1))
    other = LMLoader(FakeSplit(docs), bs=4, bptt=8, shuffle=True, seed=12)
    assert not np.array_equal(other.doc_order(0), loader.doc_order(0))


@pytest.mark.reference
def test_backwards_reverses_each_document(fastai_text):
    docs = make_docs(20, 40, seed=5)
    ours = batches(LMLoader(FakeSplit(docs), bs=3, bptt=6, backwards=True))
    assert_same_batches(ours, fastai_batches(fastai_text, [d[::-1] for d in docs], 3, 6))


def test_epoch_advances_without_set_epoch():
    loader = LMLoader(FakeSplit(make_docs(30, 20, seed=1)), bs=2, bptt=5, shuffle=True, seed=0)
    first = batches(loader)
    second = batches(loader)
    assert loader.epoch == 2
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, second))
    loader.set_epoch(1)
    assert_same_batches(batches(loader), second)


def test_several_splits_are_one_corpus():
    docs = make_docs(30, 25, seed=2)
    one = LMLoader(FakeSplit(docs), bs=3, bptt=7, shuffle=True, seed=4)
    three = LMLoader(
        [FakeSplit(docs[:10]), FakeSplit(docs[10:12]), FakeSplit(docs[12:])],
        bs=3,
        bptt=7,
        shuffle=True,
        seed=4,
    )
    assert_same_batches(batches(three), batches(one))


@pytest.mark.parametrize("random_bptt", [False, True])
def test_ranks_together_equal_one_process(random_bptt):
    docs = make_docs(60, 40, seed=9)
    kw = dict(bptt=6, shuffle=True, seed=7, random_bptt=random_bptt, backwards=True)
    single = batches(LMLoader(FakeSplit(docs), bs=6, **kw))
    ranks = [batches(LMLoader(FakeSplit(docs), bs=2, rank=r, world_size=3, **kw)) for r in range(3)]
    assert all(len(r) == len(single) for r in ranks)
    for i, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([r[i][0] for r in ranks]), x)
        assert torch.equal(torch.cat([r[i][1] for r in ranks]), y)


def streams(loader):
    """Each row's tokens over the whole epoch: x windows joined, then the final target."""
    bs = list(batches(loader))
    xs = torch.cat([x for x, _ in bs], dim=1)
    return torch.cat([xs, bs[-1][1][:, -1:]], dim=1)


def test_random_bptt_windows():
    docs = make_docs(200, 80, seed=6, min_len=20)
    fixed = LMLoader(FakeSplit(docs), bs=4, bptt=30)
    rand = LMLoader(FakeSplit(docs), bs=4, bptt=30, random_bptt=True, seed=1)
    lens = [x.shape[1] for x, _ in rand]
    assert sum(lens) == rand.bl == fixed.bl
    assert min(lens[:-1]) >= 5 and max(lens) <= 50
    assert len(set(lens)) > 5  # really random
    # Every row is the same contiguous stream whatever the window lengths.
    assert torch.equal(streams(rand), streams(fixed))
    # Each window's y is its x shifted by one within the stream.
    for x, y in rand:
        assert torch.equal(x[:, 1:], y[:, :-1])
    # The draw is seeded: same epoch, same windows; next epoch, new ones.
    rand.set_epoch(0)
    assert [x.shape[1] for x, _ in rand] == lens
    assert [x.shape[1] for x, _ in rand] != lens


def test_random_bptt_mean_follows_awd_lstm():
    loader = LMLoader(FakeSplit([np.zeros(200_001, np.int32)]), bs=1, bptt=70, random_bptt=True)
    lens = np.array([x.shape[1] for x, _ in loader][:-1])
    # 0.95 * 70 + 0.05 * 35 = 68.25; the floor of the normal draw takes 0.5 off.
    assert abs(lens.mean() - 67.75) < 0.5
    assert abs((lens < 50).mean() - 0.05) < 0.01


@pytest.mark.parametrize("stop_at", [0, 3, 7])
def test_resume_mid_epoch_is_exact(stop_at):
    docs = make_docs(40, 30, seed=8)
    kw = dict(bs=3, bptt=5, shuffle=True, seed=2, random_bptt=True)
    full = LMLoader(FakeSplit(docs), **kw)
    expected = batches(full) + batches(full)  # epochs 0 and 1

    run = LMLoader(FakeSplit(docs), **kw)
    it = iter(run)  # epoch 0, interrupted after stop_at batches
    got = [tuple(t.clone() for t in next(it)) for _ in range(stop_at)]
    state = run.state_dict()
    assert state["epoch"] == 0 and state["batch"] == stop_at

    resumed = LMLoader(FakeSplit(docs), **kw)
    resumed.load_state_dict(state)
    assert resumed.state_dict()["batch"] == stop_at
    resumed.set_epoch(0)  # a trainer calling set_epoch for the same epoch keeps the position
    got += batches(resumed)
    assert resumed.state_dict() == {**state, "epoch": 1, "batch": 0}
    got += batches(resumed)
    assert_same_batches(got, expected)


def test_resume_rejects_other_global_batch():
    docs = make_docs(40, 30, seed=8)
    state = LMLoader(FakeSplit(docs), bs=4, bptt=5).state_dict()
    with pytest.raises(ValueError, match="global batch"):
        LMLoader(FakeSplit(docs), bs=3, bptt=5).load_state_dict(state)
    # Same global batch split over two ranks is fine.
    LMLoader(FakeSplit(docs), bs=2, bptt=5, rank=1, world_size=2).load_state_dict(state)


def test_reads_memory_mapped_ids(tmp_path):
    docs = make_docs(25, 30, seed=12)
    split = FakeSplit(docs)
    path = tmp_path / "ids.bin"
    split.ids.tofile(path)
    split.ids = np.memmap(path, dtype=np.int32, mode="r")
    assert_same_batches(
        batches(LMLoader(split, bs=3, bptt=4)), batches(LMLoader(FakeSplit(docs), bs=3, bptt=4))
    )


def test_too_small_corpus_is_a_clear_error():
    with pytest.raises(ValueError, match="too few"):
        LMLoader(FakeSplit([np.arange(5, dtype=np.int32)]), bs=8, bptt=4)
    with pytest.raises(ValueError, match="rank"):
        LMLoader(FakeSplit([np.arange(50, dtype=np.int32)]), bs=2, bptt=4, rank=2, world_size=2)


def test_show_batch_decodes_rows(capsys):
    itos = [f"w{i}" for i in range(500)]
    docs = make_docs(10, 30, seed=13)
    loader = LMLoader(FakeSplit(docs), bs=3, bptt=8)
    rows = loader.show_batch(itos, n=2)
    x, y = next(iter(loader))
    assert rows == [
        (" ".join(itos[i] for i in x[r].tolist()), " ".join(itos[i] for i in y[r].tolist()))
        for r in range(2)
    ]
    out = capsys.readouterr().out
    assert "text_" in out and rows[0][0][:20] in out


def write_sample_corpus(imdb_sample, out):
    """The IMDB sample's reference tokens as a corpus written by fastulm.data.corpus."""
    import csv
    import json
    from collections import Counter

    from fastulm.data.corpus import open_corpus, split_batch, write_corpus
    from fastulm.data.vocab import Vocab

    lines = (imdb_sample / "fastai_tokens.jsonl").read_text(encoding="utf-8").split("\n")
    rows = sorted((json.loads(x) for x in lines if x.strip()), key=lambda r: r["row"])
    tokens = [r["tokens"] for r in rows]
    with open(imdb_sample / "texts.csv", encoding="utf-8", newline="") as f:
        meta = list(csv.DictReader(f))
    vocab = Vocab.build(Counter(t for doc in tokens for t in doc), min_freq=2)
    splits, docs = {}, {}
    for name, valid in (("train", "False"), ("valid", "True")):
        sel = [i for i, m in enumerate(meta) if m["is_valid"] == valid]
        docs[name] = [vocab.numericalize(tokens[i]) for i in sel]
        offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs[name]])])
        labels = [int(meta[i]["label"] == "positive") for i in sel]
        splits[name] = split_batch(
            np.concatenate(docs[name]), offsets, labels, [str(i) for i in sel]
        )
    write_corpus(out, vocab, splits, {"label_names": ["negative", "positive"]})
    return open_corpus(out), docs


@pytest.mark.reference
def test_imdb_sample_corpus_matches_fastai(fastai_text, imdb_sample, tmp_path, capsys):
    corpus, docs = write_sample_corpus(imdb_sample, tmp_path / "corpus")
    loader = LMLoader([corpus["train"], corpus["valid"]], bs=64, bptt=72)
    ref = fastai_batches(fastai_text, docs["train"] + docs["valid"], 64, 72)
    assert_same_batches(batches(loader), ref)
    rows = loader.show_batch(corpus.vocab, n=3)
    assert rows[0][0].startswith("xxbos xxmaj check out the film 's website")
    assert rows[0][1].startswith("xxmaj check out the film 's website")
