"""fastulm.export + fastulm.inference: the ONNX model against the torch one it came from.

Runs are written by ``write_run`` from random models (no training): these tests are about
export and serving. The expectation is always the torch model on the same texts.
"""

import csv
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import pytest
import torch

from fastulm import export, inference, predict
from fastulm.model import get_classifier, get_language_model
from fastulm.prediction import predict_texts
from fastulm.text import SPECIAL_TOKENS, tokenize_texts
from fastulm.train.run_dir import write_run
from fastulm_testkit import REPO, need_data

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

SIZES = dict(emb_sz=40, n_hid=56, n_layers=3)


@pytest.fixture(scope="module")
def sample_texts():
    path = need_data("imdb_sample/texts.csv")
    with open(path, newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def vocab(sample_texts):
    counts = Counter(t for toks in tokenize_texts(sample_texts) for t in toks)
    words = [t for t, n in counts.most_common() if n >= 3 and t not in SPECIAL_TOKENS]
    return [*SPECIAL_TOKENS, *words[:3000]]


def _randomize_batchnorm(model):
    """Non-trivial running statistics, so that folding them into the graph is checked."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.05)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _clas_run(path, vocab, names, settings, **config):
    torch.manual_seed(0)
    model = get_classifier(len(vocab), len(names), **SIZES, **config)
    _randomize_batchnorm(model)
    write_run(path, model, vocab, names, {"kind": "clas", **settings})
    return model


CASES = {
    # the walkthrough's chunking; reviews longer than max_len pool their last 1440 tokens
    "single_label": ({}, {}),
    # short chunks and window (most reviews are longer than max_len), a backward model
    "multi_label_backwards": (
        {"task": "multi_label", "label_delim": ";", "threshold": 0.5, "backwards": True},
        dict(bptt=16, max_len=64),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_onnx_equals_torch_on_the_sample(tmp_path, sample_texts, vocab, case):
    """1,000 sample reviews: labels identical, probabilities within 1e-4."""
    settings, config = CASES[case]
    names = ["negative", "positive"] if case == "single_label" else ["a", "b", "c"]
    _clas_run(tmp_path / "run", vocab, names, settings, **config)
    export.export_run(tmp_path / "run", tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == sorted(export.FILES)
    want = predict_texts([tmp_path / "run"], sample_texts, bs=32, device="cpu", precision="fp32")
    got = inference.load(tmp_path / "export").predict(sample_texts, bs=32)
    assert got.names == want.names == names
    assert got.labels == want.labels
    assert np.abs(got.probs - want.probs).max() < 1e-4
    if case != "single_label":  # a threshold among the probabilities: labels of all kinds
        t, some = float(np.median(want.probs)), sample_texts[:200]
        want = predict_texts(
            [tmp_path / "run"], some, bs=32, device="cpu", threshold=t, precision="fp32"
        )
        got = inference.load(tmp_path / "export").predict(some, bs=32, threshold=t)
        assert got.labels == want.labels and len(set(want.labels)) > 1


def test_onnx_pools_each_documents_window_as_torch_batches_it(tmp_path, vocab):
    """Short texts and long ones in the same batches, as a serving batch holds them."""
    _clas_run(tmp_path / "run", vocab, ["n", "p"], {}, bptt=4, max_len=12)
    export.export_run(tmp_path / "run", tmp_path / "export")
    base = ["a fine film", "the worst thing i ever saw , and long"]
    texts = [" ".join(base * k) for k in range(1, 9)] + ["good", "bad ."]
    for bs in (1, 3, 64):
        want = predict_texts([tmp_path / "run"], texts, bs=bs, device="cpu", precision="fp32")
        got = inference.load(tmp_path / "export").predict(texts, bs=bs)
        assert np.abs(got.probs - want.probs).max() < 1e-5


def test_lm_export_scores_next_tokens_as_torch(tmp_path, vocab):
    torch.manual_seed(0)
    lm = get_language_model(len(vocab), **SIZES)
    write_run(tmp_path / "lm", lm, vocab, None, {"kind": "lm"})
    export.export_run(tmp_path / "lm", tmp_path / "export")
    assert not (tmp_path / "export" / "labels.json").exists()
    model = inference.load(tmp_path / "export")
    ids = np.random.default_rng(0).integers(2, len(vocab), (3, 21))
    lm.eval()
    lm.reset()
    with torch.no_grad():
        want = lm(torch.from_numpy(ids)).logits.numpy()
    got, _ = model.logits(ids)
    assert np.abs(got - want).max() < 1e-4
    # the state carries: the last 7 tokens fed after the first 14 score the same
    _, state = model.logits(ids[:, :14])
    rest, _ = model.logits(ids[:, 14:], state)
    assert np.abs(rest - want[:, 14:]).max() < 1e-4
    text = "I liked this movie because"
    lm.reset()
    with torch.no_grad():
        enc = torch.tensor(
            [[vocab.index(t) if t in vocab else 0 for t in tokenize_texts([text])[0]]]
        )
        last = lm(enc).logits[0, -1].numpy()
    assert np.abs(model.next_token_logits(text) - last).max() < 1e-4


def test_predict_onnx_cli_writes_what_torch_predict_writes(tmp_path, vocab, capsys):
    texts = ["A great film, I loved it.", "", "Awful. Just awful!", "meh"]
    _clas_run(tmp_path / "run", vocab, ["neg", "pos"], {})
    assert export.main([str(tmp_path / "run"), str(tmp_path / "export")]) == 0
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n")
    assert (
        predict.main(
            [
                str(tmp_path / "run"),
                "--file",
                str(src),
                "--out",
                "-",
                "--precision",
                "fp32",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    torch_rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    args = [str(tmp_path / "export"), "--onnx", "--file", str(src), "--out", "-", "--threads", "1"]
    assert predict.main(args) == 0
    onnx_rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert [r[:2] for r in onnx_rows] == [r[:2] for r in torch_rows]
    assert [r[0] for r in onnx_rows[1:]] == ["1", "3", "4"]  # the blank line is skipped
    for a, b in zip(onnx_rows[1:], torch_rows[1:]):
        assert np.allclose([float(v) for v in a[2:]], [float(v) for v in b[2:]], atol=2e-6)


def test_export_bad_input_is_one_error_line(tmp_path, vocab, capsys):
    assert export.main([str(tmp_path / "nope"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a run directory" in err
    _clas_run(tmp_path / "run", vocab, ["neg", "pos"], {})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    assert export.main([str(tmp_path / "run"), str(tmp_path / "busy")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'mine.txt'" in err
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep"
    assert export.main([str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    assert export.main([str(tmp_path / "run"), str(tmp_path / "out")]) == 1
    assert "--force" in capsys.readouterr().err
    assert export.main([str(tmp_path / "run"), str(tmp_path / "out"), "--force"]) == 0
    settings = json.loads((tmp_path / "out" / "tokenizer.json").read_text())
    assert settings["kind"] == "clas" and settings["bptt"] == 72


def test_predict_onnx_bad_folder_is_one_error_line(tmp_path, vocab, capsys):
    assert predict.main([str(tmp_path), "--onnx", "some text"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no model.onnx" in err
    torch.manual_seed(0)
    lm = get_language_model(len(vocab), **SIZES)
    write_run(tmp_path / "lm", lm, vocab, None, {"kind": "lm"})
    export.export_run(tmp_path / "lm", tmp_path / "lmx")
    assert predict.main([str(tmp_path / "lmx"), "--onnx", "some text"]) == 1
    assert "an exported language model, not a classifier" in capsys.readouterr().err


def test_import_inference_imports_neither_torch_nor_the_trainer():
    code = (
        "import sys, fastulm.inference, fastulm.scores, fastulm.predict; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('fastulm.train')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_a_venv_without_torch_predicts(tmp_path, vocab):
    """A fresh virtual environment with only the runtime dependencies (numpy, numba,
    pyarrow, regex, tqdm, onnxruntime; no torch) loads the export and predicts what torch
    predicts. fastulm comes from the source tree (PYTHONPATH), without its torch dependency."""
    texts = ["A great film, I loved it.", "Awful. Just awful!", "It was fine I guess " * 40]
    _clas_run(tmp_path / "run", vocab, ["neg", "pos"], {})
    export.export_run(tmp_path / "run", tmp_path / "export")
    want = predict_texts([tmp_path / "run"], texts, device="cpu", precision="fp32")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    deps = ["numpy", "numba", "pyarrow", "regex", "tqdm", "onnxruntime"]
    subprocess.run([*pip, *deps], check=True, timeout=600)
    script = textwrap.dedent(
        f"""
        import json, sys
        from fastulm import inference
        pred = inference.load({str(tmp_path / "export")!r}).predict({texts!r})
        assert "torch" not in sys.modules
        print(json.dumps({{"labels": pred.labels, "probs": pred.probs.tolist()}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONPATH"] = str(REPO)
    res = subprocess.run(
        [str(py), "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["labels"] == want.labels
    assert np.abs(np.array(got["probs"]) - want.probs).max() < 1e-4
    check = subprocess.run([str(py), "-c", "import torch"], capture_output=True, env=env)
    assert check.returncode != 0  # the venv really has no torch


def test_predict_and_generate_run_without_the_trainer(tmp_path, vocab):
    """The CLIs read runs through fastulm.run_reader / fastulm.weights / fastulm.prediction:
    running them loads no fastulm.train module."""
    _clas_run(tmp_path / "clas", vocab, ["neg", "pos"], {})
    torch.manual_seed(0)
    write_run(tmp_path / "lm", get_language_model(len(vocab), **SIZES), vocab, None, {"kind": "lm"})
    code = textwrap.dedent(
        f"""
        import sys
        from fastulm import generate, predict
        assert predict.main([{str(tmp_path / "clas")!r}, "A great film."]) == 0
        assert generate.main([{str(tmp_path / "lm")!r}, "A great", "--n-words", "3"]) == 0
        print(sorted(m for m in sys.modules if m.startswith("fastulm.train")))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_export_records_sha256_and_an_old_lm_export_checks_its_vocab(tmp_path):
    """tokenizer.json holds the sha256 of each other file; without them (an earlier
    fastulm's export), an LM's vocab is still checked against its logits."""
    import hashlib

    small = [*SPECIAL_TOKENS, "good", "bad", "film"]
    torch.manual_seed(0)
    write_run(tmp_path / "lm", get_language_model(len(small), **SIZES), small, None, {"kind": "lm"})
    folder = export.export_run(tmp_path / "lm", tmp_path / "export")
    settings = json.loads((folder / "tokenizer.json").read_text())
    assert settings["sha256"] == {
        n: hashlib.sha256((folder / n).read_bytes()).hexdigest()
        for n in ("model.onnx", "vocab.json")
    }
    del settings["sha256"]
    (folder / "tokenizer.json").write_text(json.dumps(settings))
    inference.load(folder)  # an export without checksums loads
    (folder / "vocab.json").write_text(json.dumps(small[:-1]))
    with pytest.raises(
        inference.ExportError, match=r"vocab.json: damaged \(11 tokens for a model of 12\)"
    ):
        inference.load(folder)
