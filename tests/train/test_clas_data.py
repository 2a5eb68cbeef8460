"""The classifier on data that is not IMDB's: no encoder, an encoder with another vocab,
classes that do not line up between the splits."""

import numpy as np
import pytest
from safetensors.torch import load_file

from fastulm.data.corpus import split_batch, write_corpus
from fastulm.data.vocab import Vocab
from fastulm.train.__main__ import main as train_main
from fastulm.train.text_learners import text_classifier_learner
from fastulm_testkit import TINY_TRAIN, one_torch_thread, write_small_corpus  # noqa: F401

SPECIAL = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_small_corpus(tmp_path_factory.mktemp("clasdata"))


def _corpus(path, train_labels, valid_labels, names, words=("good", "bad", "film")):
    """A hand-made corpus: every document is xxbos + a few words."""
    vocab = Vocab([*SPECIAL, *words])

    def batch(labels):
        docs = [[2, 9 + (i % len(words)), 9 + ((i + 1) % len(words))] for i in range(len(labels))]
        values = np.concatenate([np.array(d, np.int32) for d in docs])
        offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
        return split_batch(values, offsets, np.array(labels, np.int64), map(str, range(len(docs))))

    splits = {"train": batch(train_labels), "valid": batch(valid_labels)}
    return write_corpus(path, vocab, splits, {"label_names": names})


def _err(capsys):
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_without_an_encoder_the_classifier_starts_from_scratch(corpus, tmp_path, capsys):
    argv = ["clas", str(corpus), str(tmp_path / "c"), *TINY_TRAIN, "--final-epochs", "1"]
    assert train_main(argv) == 0
    assert "trains from scratch" in capsys.readouterr().err
    assert (tmp_path / "c" / "model.safetensors").is_file()


def test_an_encoder_with_another_vocab_is_mapped_onto_the_corpus(corpus, tmp_path, capsys):
    lm = tmp_path / "lm"
    assert train_main(["lm", str(corpus), str(lm), *TINY_TRAIN, "--epochs", "1"]) == 0
    other = _corpus(
        tmp_path / "other",
        [0, 1] * 8,
        [0, 1] * 2,
        ["neg", "pos"],
        words=("film", "zzzunseen", "great"),
    )
    learn = text_classifier_learner(other, emb_sz=64, n_hid=128, n_layers=2, bs=4, bptt=8)
    with pytest.raises(ValueError, match="--vocab"):  # the error says how to share the vocab
        learn.load_encoder(lm / "encoder")
    learn.load_encoder(lm / "encoder", remap_vocab=True)
    enc = load_file(str(lm / "encoder.safetensors"))["encoder.weight"]
    lm_itos = Vocab.load(corpus).itos
    got = learn.model.body.encoder.weight.detach()
    itos = learn.vocab
    for token in ("film", "great", "xxbos"):
        assert np.allclose(got[itos.index(token)], enc[lm_itos.index(token)])
    assert np.allclose(got[itos.index("zzzunseen")], enc.mean(0), atol=1e-6)
    # from the command line it is done with a note that says how many tokens are new
    capsys.readouterr()
    argv = ["clas", str(other), str(tmp_path / "c"), *TINY_TRAIN, "--encoder", str(lm)]
    assert train_main([*argv, "--final-epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "start from the mean embedding" in err and "--vocab" in err


def test_a_validation_class_never_seen_in_training_is_refused(tmp_path, capsys):
    path = _corpus(tmp_path / "c", [0, 1] * 8, [0, 1, 2], ["a", "b", "c"])
    argv = ["clas", str(path), str(tmp_path / "r"), *TINY_TRAIN]
    assert train_main(argv) == 1
    assert "class 'c', never seen in 'train'" in _err(capsys)


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2"])
def test_threshold_must_be_a_probability(corpus, tmp_path, capsys, value):
    argv = ["clas", str(corpus), str(tmp_path / "r"), *TINY_TRAIN, "--threshold", value]
    assert train_main(argv) == 1
    assert "threshold" in _err(capsys)
    assert not (tmp_path / "r").exists()


def _frame(n=96):
    """Reviews whose words give their genres away: 'laugh' comedy, 'scream' horror, 'kiss'
    romance (several at once), and three single-label moods."""
    import polars as pl

    cues = {"comedy": "laugh", "horror": "scream", "romance": "kiss"}
    names = sorted(cues)
    rows = []
    for i in range(n):
        genres = [g for k, g in enumerate(names) if (i >> k) & 1] or ["comedy"]
        text = "this film " + " and ".join(cues[g] for g in genres) + f" scene {i % 7}"
        rows.append({"text": text, "genres": ";".join(genres), "mood": names[i % 3]})
    return pl.DataFrame(rows)


def test_multi_label_from_a_frame_end_to_end(tmp_path, capsys):
    import json

    from fastulm import tokenize_df

    corpus = tokenize_df(
        _frame(),
        tmp_path / "c",
        label_col="genres",
        label_delim=";",
        valid_pct=0.25,
        seed=0,
        min_freq=1,
    )
    lm, clas = tmp_path / "lm", tmp_path / "clas"
    assert train_main(["lm", str(corpus), str(lm), *TINY_TRAIN, "--epochs", "1"]) == 0
    argv = ["clas", str(corpus), str(clas), *TINY_TRAIN, "--encoder", str(lm)]
    assert train_main([*argv, "--final-epochs", "1", "--threshold", "0.4"]) == 0
    config = json.loads((clas / "config.json").read_text())
    assert config["task"] == "multi_label" and config["label_delim"] == ";"
    assert config["threshold"] == 0.4 and config["label_names"] == ["comedy", "horror", "romance"]
    rows = [json.loads(line) for line in (clas / "log.jsonl").read_text().splitlines()]
    assert {"micro_f1", "macro_f1"} <= rows[-1].keys()
    assert 0 <= rows[-1]["micro_f1"] <= 1
    assert not (clas / "confusion.png").exists()


def test_three_classes_end_to_end_save_a_confusion_matrix(tmp_path):
    import json

    from fastulm import tokenize_df

    corpus = tokenize_df(
        _frame(), tmp_path / "c", label_col="mood", valid_pct=0.25, seed=0, min_freq=1
    )
    clas = tmp_path / "clas"
    assert train_main(["clas", str(corpus), str(clas), *TINY_TRAIN, "--final-epochs", "1"]) == 0
    rows = [json.loads(line) for line in (clas / "log.jsonl").read_text().splitlines()]
    assert "macro_f1" in rows[-1] and "micro_f1" not in rows[-1]
    assert (clas / "confusion.png").stat().st_size > 1000
    assert json.loads((clas / "config.json").read_text())["n_classes"] == 3
