"""The walkthrough's Python API on a small real corpus, and the LM's document holdout."""

import numpy as np
import pytest
import torch

import fastulm
from fastulm.tokenize import main as tokenize_main
from fastulm.train.text_learners import DocSubset, lm_splits


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    good, bad = ["great", "superb", "fun"], ["awful", "dull", "boring"]
    rows = ["label,text,is_valid"]
    for i in range(90):
        w = good if i % 2 else bad
        rows.append(
            f'{"pos" if i % 2 else "neg"},"A {w[i % 3]} film. Truly {w[(i + 1) % 3]}!",{i % 5 == 0}'
        )
    (root / "t.csv").write_text("\n".join(rows) + "\n")
    assert tokenize_main([str(root / "t.csv"), str(root / "c"), "--workers", "1", "--quiet"]) == 0
    return fastulm.open_corpus(root / "c")


def test_doc_subset_gathers_documents(corpus):
    split = corpus["train"]
    docs = np.array([5, 0, 3])
    sub = DocSubset(split, docs)
    assert len(sub) == 3
    for j, i in enumerate(docs):
        assert np.array_equal(sub.doc(j), split.doc(int(i)))
        assert sub.labels[j] == split.labels[i]


def test_lm_holdout_is_disjoint_and_complete(corpus):
    train, valid = lm_splits(corpus, valid_pct=0.2, seed=3)
    n = sum(len(corpus[s]) for s in corpus.split_names)
    assert sum(map(len, train)) + sum(map(len, valid)) == n
    assert 0 < sum(map(len, valid)) < n
    tokens = sum(len(s.ids) for s in train) + sum(len(s.ids) for s in valid)
    assert tokens == sum(len(corpus[s].ids) for s in corpus.split_names)
    again = lm_splits(corpus, valid_pct=0.2, seed=3)[1]
    assert [len(v) for v in again] == [len(v) for v in valid]  # seeded
    train, valid = lm_splits(corpus, valid_split="valid")
    assert [len(v) for v in valid] == [len(corpus["valid"])]


def test_walkthrough_api(corpus, tmp_path):
    torch.set_num_threads(1)
    kw = dict(emb_sz=16, n_hid=32, n_layers=2, path=tmp_path, show_progress=False)
    learn = fastulm.language_model_learner(corpus, drop_mult=0.3, bs=8, bptt=8, **kw)
    assert isinstance(learn, fastulm.train.LMLearner)
    assert learn.moms == (0.8, 0.7, 0.8)  # fastai TextLearner default
    learn.fit_one_cycle(1, 1e-2, moms=(0.8, 0.7))
    learn.save("fit_head")
    learn.unfreeze()
    learn.fit_one_cycle(1, 1e-3)
    learn.load("fit_head")
    text = learn.predict("Truly great", n_words=5, temperature=0.75, seed=0)
    assert text.startswith("Truly great") and text == learn.predict(
        "Truly great", 5, True, 0.75, seed=0
    )
    learn.save_encoder("fine_tuned_enc")

    clas = fastulm.text_classifier_learner(corpus, drop_mult=0.5, bs=8, bptt=8, **kw)
    clas.load_encoder("fine_tuned_enc")
    enc = clas.model.body.encoder.weight
    assert torch.equal(enc, learn.model.body.encoder.weight.cpu())
    assert not enc.requires_grad  # created frozen, like fastai
    clas.fit_one_cycle(1, 2e-2)
    clas.freeze_to(-2)
    clas.fit_one_cycle(1, slice(1e-2 / 2.6**4, 1e-2))
    label, idx, probs = clas.predict("I really loved that movie, it was awesome!")
    assert label in corpus.label_names and label == corpus.label_names[int(idx)]
    assert probs.shape == (2,) and float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    assert label == corpus.label_names[int(probs.argmax())]


def test_multi_label_learner_predicts_sigmoids_over_its_threshold(tmp_path):
    """A multi-label classifier's predict/predict_texts give one sigmoid per class and the
    classes over the learner's threshold, joined by the corpus's delimiter (they used to
    give a softmax and its argmax), as the model's own logits say, computed by hand."""
    from fastulm.prediction import classifier_logits, encode_ids

    words = ["action", "comedy", "drama"]
    rows = ["label,text,is_valid"]
    for i in range(60):
        tags = [w for k, w in enumerate(words) if (i >> k) & 1] or ["drama"]
        rows.append(f'{"|".join(tags)},"A {" ".join(tags)} film, number {i % 7}.",{i % 6 == 0}')
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    args = [str(tmp_path / "m.csv"), str(tmp_path / "c"), "--label-delim", "|", "--quiet"]
    assert tokenize_main([*args, "--workers", "1"]) == 0
    corpus = fastulm.open_corpus(tmp_path / "c")
    torch.manual_seed(0)
    kw = dict(emb_sz=16, n_hid=32, n_layers=2, path=tmp_path / "run", show_progress=False)
    learn = fastulm.text_classifier_learner(corpus, bs=8, bptt=8, threshold=0.45, **kw)
    learn.fit_one_cycle(1, 1e-2)
    texts = ["An action comedy film.", "A drama.", "Nothing to see."]
    labels, probs = learn.predict_texts(texts)
    logits = classifier_logits(learn.model, encode_ids(corpus.vocab.itos, texts))
    want = torch.sigmoid(torch.from_numpy(logits))
    assert torch.allclose(probs, want, atol=1e-6)
    assert not torch.allclose(probs.sum(1), torch.ones(3))  # not a softmax
    names = corpus.label_names
    assert labels == ["|".join(names[j] for j in range(3) if want[i, j] > 0.45) for i in range(3)]
    label, pred, p = learn.predict(texts[0])
    assert label == labels[0] and torch.equal(pred, want[0] > 0.45)
    assert torch.allclose(p, want[0], atol=1e-6)
