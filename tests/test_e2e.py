"""End to end on the IMDB sample with the tiny preset, through the commands a user types:
tokenize → LM → classifier → predict → generate."""

import csv
import json

import pytest

from fastulm import generate, predict
from fastulm.tokenize import main as tokenize_main
from fastulm.train.__main__ import main as train_main
from fastulm_testkit import one_torch_thread  # noqa: F401 (autouse here)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_imdb_sample_end_to_end(imdb_sample, tmp_path, capsys):
    corpus, lm, clas = tmp_path / "corpus", tmp_path / "lm", tmp_path / "clas"
    src = imdb_sample / "texts.csv"
    argv = [str(src), str(corpus), "--workers", "1", "--quiet", "--max-vocab", "2000"]
    assert tokenize_main(argv) == 0
    common = ["--preset", "tiny", "--quiet", "--threads", "1", "--device", "cpu"]

    assert train_main(["lm", str(corpus), str(lm), *common]) == 0
    rows = _rows(lm / "log.jsonl")
    assert rows[-1]["valid_loss"] < rows[0]["valid_loss"] - 0.1  # the LM learned
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert (lm / "losses.png").is_file() and (lm / "encoder.safetensors").is_file()

    assert train_main(["clas", str(corpus), str(clas), *common, "--encoder", str(lm)]) == 0
    rows = _rows(clas / "log.jsonl")
    assert rows[-1]["valid_loss"] < rows[0]["valid_loss"]
    # 200 validation reviews, half positive: chance is 0.5 with a standard deviation of 0.035,
    # so 0.6 is ~3 standard deviations above it (the tiny preset reaches 0.6-0.7 here)
    assert rows[-1]["accuracy"] >= 0.6, rows

    # predict --file on the validation rows agrees with the training log (export path)
    with open(src, newline="") as f:
        valid = [r for r in csv.DictReader(f) if r["is_valid"] == "True"]
    assert len(valid) == 200
    out = tmp_path / "pred.csv"
    assert predict.main([str(clas), "--file", str(src), "--out", str(out)]) == 0
    with open(src, newline="") as f:
        all_rows = list(csv.DictReader(f))
    with open(out, newline="") as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == len(all_rows)
    hits = [p["label"] == r["label"] for p, r in zip(preds, all_rows) if r["is_valid"] == "True"]
    assert abs(sum(hits) / len(hits) - rows[-1]["accuracy"]) <= 0.01
    capsys.readouterr()
    assert predict.main([str(clas), "I really loved that movie, it was awesome!"]) == 0
    assert capsys.readouterr().out.split()[0] in {"positive", "negative"}

    argv = [str(lm), "I liked this movie because", "--n-words", "20", "--seed", "0"]
    assert generate.main(argv) == 0
    first = capsys.readouterr().out
    assert generate.main(argv) == 0
    assert capsys.readouterr().out == first
    assert first.startswith("I liked this movie because") and "xxbos" not in first
