"""python -m fastulm.predict: where texts come from, where predictions go, and bad input.

The runs here are written by ``write_run`` from a small random classifier (no training):
these tests are about the command, and the expected probabilities are computed from the
model itself, one text at a time.
"""

import io
import os
import re
import stat
import sys
import threading

import pytest
import torch

from fastulm import generate, predict
from fastulm.model import get_classifier
from fastulm.text import tokenize_texts
from fastulm.train.run_dir import write_run
from fastulm_testkit import one_torch_thread  # noqa: F401 (autouse here)

SPECIALS = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj"]
VOCAB = [*SPECIALS, "great", "awful", "film", "was", "the", ".", "!", "fun", "dull", "and"]
SMALL = dict(emb_sz=16, n_hid=24, n_layers=2)
TEXTS = ["The film was great and fun!", "It was awful.", "dull dull film"]


def _write_clas_run(path, nan=False):
    torch.manual_seed(0)
    model = get_classifier(len(VOCAB), 2, **SMALL)
    if nan:
        with torch.no_grad():
            model.body.encoder.weight[3:].fill_(float("nan"))
    write_run(path, model, VOCAB, ["neg", "pos"], {"kind": "clas"})
    return model


@pytest.fixture(scope="module")
def clas(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "clas"
    return run, _write_clas_run(run)


def expected_csv(model, texts):
    """Independent expectation: each text alone through the model, no batching or padding."""
    stoi = {t: i for i, t in enumerate(VOCAB)}
    model.eval()
    lines = ["label,p_neg,p_pos"]
    with torch.no_grad():
        for toks in tokenize_texts(texts):
            model.reset()
            ids = torch.tensor([[stoi.get(t, 0) for t in toks]])
            p = torch.softmax(model(ids).logits.float(), -1)[0].tolist()
            lines.append(",".join([["neg", "pos"][p[1] > p[0]], *[f"{v:.6f}" for v in p]]))
    return "\r\n".join(lines) + "\r\n"  # csv.writer's line ends


def _one_error_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.fixture
def texts_file(tmp_path):
    path = tmp_path / "reviews.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return path


@pytest.mark.parametrize("through_link", [False, True])
def test_out_fifo_is_written_through(clas, texts_file, tmp_path, through_link):
    """--out /dev/stdout is a link to a pipe: the pipe gets the CSV, nothing replaces it."""
    run, model = clas
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    out = fifo
    if through_link:
        out = tmp_path / "stdout"
        out.symlink_to(fifo)
    got = []

    def read():
        with open(fifo, "rb") as f:
            got.append(f.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert predict.main([str(run), "--file", str(texts_file), "--out", str(out)]) == 0
    finally:
        reader.join(10)
        if reader.is_alive():  # nothing was written: let the reader see end of file
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            reader.join(10)
    assert got[0].decode() == expected_csv(model, TEXTS)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert not through_link or out.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["pipe", "reviews.txt", *(["stdout"] if through_link else [])]
    )  # no temporary file left beside it


def test_out_dash_is_a_clean_csv_on_stdout(clas, texts_file, capsys):
    run, model = clas
    assert predict.main([str(run), "--file", str(texts_file), "--out", "-"]) == 0
    res = capsys.readouterr()
    assert res.out == expected_csv(model, TEXTS)
    assert res.err == "wrote 3 predictions to standard output\n"
    assert not (run / "predictions.csv").exists()


def test_out_regular_file_and_default(clas, texts_file, tmp_path, capsys):
    run, model = clas
    out = tmp_path / "o.csv"
    out.write_text("old")
    assert predict.main([str(run), "--file", str(texts_file), "--out", str(out)]) == 0
    assert out.read_bytes().decode() == expected_csv(model, TEXTS)
    assert predict.main([str(run), "--file", str(texts_file)]) == 0
    assert (run / "predictions.csv").read_bytes().decode() == expected_csv(model, TEXTS)
    assert capsys.readouterr().out == ""  # the note went to stderr
    (run / "predictions.csv").unlink()


def _stdin(monkeypatch, data: bytes):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="ascii"))


def test_file_dash_reads_stdin_lines(clas, monkeypatch, capsys):
    run, model = clas
    _stdin(monkeypatch, ("\n".join(TEXTS) + "\n").encode())
    assert predict.main([str(run), "--file", "-", "--out", "-"]) == 0
    assert capsys.readouterr().out == expected_csv(model, TEXTS)


def test_file_dash_with_text_col_reads_a_csv(clas, monkeypatch, capsys):
    """stdin has no name to tell a CSV by: an explicit --text-col says it is one. UTF-8 is
    read from the bytes, whatever encoding sys.stdin was opened with."""
    run, model = clas
    texts = ["Great, great film!\nand fun", "awful… dull", ""]
    csv_text = 'id,review\n1,"Great, great film!\nand fun"\n2,awful… dull\n3,""\n'
    _stdin(monkeypatch, csv_text.encode("utf-8"))
    assert predict.main([str(run), "--file", "-", "--text-col", "review", "--out", "-"]) == 0
    assert capsys.readouterr().out == expected_csv(model, texts)


def test_text_col_given_reads_any_file_as_csv(clas, tmp_path, capsys):
    run, model = clas
    src = tmp_path / "reviews.tsv.txt"
    src.write_text("review,label\nIt was awful.,neg\n")
    assert predict.main([str(run), "--file", str(src), "--text-col", "review", "--out", "-"]) == 0
    assert capsys.readouterr().out == expected_csv(model, ["It was awful."])


def test_a_5mb_review_in_a_csv(clas, tmp_path, capsys):
    """csv's default field limit is 128 KB; the whole 5 MB field is read, up to its last word
    (its spaces collapse, so it predicts as the short text)."""
    run, model = clas
    big = "The film was great" + " " * 5_000_000 + "but dull."
    src = tmp_path / "big.csv"
    src.write_text(f'text\n"{big}"\nIt was awful.\n')
    assert predict.main([str(run), "--file", str(src), "--out", "-"]) == 0
    want = expected_csv(model, ["The film was great but dull.", "It was awful."])
    assert capsys.readouterr().out == want
    assert predict.read_texts(src) == [big, "It was awful."]


@pytest.fixture
def model_must_not_run(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model ran before --out was checked")

    monkeypatch.setattr(predict, "predict_runs", fail)


def test_out_a_folder_is_one_error_before_the_model(
    clas, texts_file, tmp_path, capsys, model_must_not_run
):
    run, _ = clas
    assert predict.main([str(run), "--file", str(texts_file), "--out", str(tmp_path)]) == 1
    err = _one_error_line(capsys)
    assert err == f"error: {tmp_path}: is a folder, not a file\n"


def test_out_under_a_file_is_one_error_before_the_model(
    clas, texts_file, tmp_path, capsys, model_must_not_run
):
    """A place that cannot be written (root ignores permission bits, a file as a folder not)."""
    run, _ = clas
    out = texts_file / "x.csv"
    assert predict.main([str(run), "--file", str(texts_file), "--out", str(out)]) == 1
    assert str(out) in _one_error_line(capsys)
    assert texts_file.read_text() == "\n".join(TEXTS) + "\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_in_a_read_only_folder_is_one_error(
    clas, texts_file, tmp_path, capsys, model_must_not_run
):
    run, _ = clas
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        out = folder / "x.csv"
        assert predict.main([str(run), "--file", str(texts_file), "--out", str(out)]) == 1
        assert "no permission" in _one_error_line(capsys)
    finally:
        folder.chmod(0o700)


def test_nan_weights_are_one_error_not_nan_probabilities(tmp_path, texts_file, capsys):
    run = tmp_path / "nan"
    _write_clas_run(run, nan=True)
    out = tmp_path / "o.csv"
    assert predict.main([str(run), "--file", str(texts_file), "--out", str(out)]) == 1
    err = _one_error_line(capsys)
    assert err.startswith(f"error: {run}: the model's weights are not finite (NaN/inf)"), err
    assert not out.exists()
    assert predict.main([str(run), "It was awful."]) == 1
    assert "not finite" in _one_error_line(capsys)


@pytest.mark.parametrize(
    "flags, says",
    [
        (["some text", "--out", "o.csv"], "--out goes with --file"),
        (["some text", "--bs", "0"], "--bs must be >= 1, got 0"),
        ([], "give a text or --file"),
    ],
)
def test_usage_errors(clas, capsys, flags, says):
    run, _ = clas
    assert predict.main([str(run), *flags]) == 2
    assert says in _one_error_line(capsys)


def test_abbreviated_option_is_a_usage_error(clas, capsys):
    run, _ = clas
    with pytest.raises(SystemExit) as info:
        predict.main([str(run), "some text", "--dev", "cpu"])  # not --device
    assert info.value.code == 2
    assert "unrecognized arguments: --dev" in capsys.readouterr().err


def help_entries(parser):
    """Each option's whole help entry (its lines joined) from the formatted --help."""
    entries, cur = [], None
    for line in parser.format_help().splitlines():
        if re.match(r"^  -", line):
            cur = [line]
            entries.append(cur)
        elif cur is not None and line.startswith("    "):
            cur.append(line)
        else:
            cur = None
    return {e[0].split()[0].rstrip(","): " ".join(" ".join(e).split()) for e in entries}


def check_defaults_shown_once(parser):
    entries = help_entries(parser)
    for action in parser._actions:
        if not action.option_strings or action.option_strings[0] == "-h":
            continue
        entry = entries[action.option_strings[0]]
        assert entry.count("default") <= 1, entry
        if action.default not in (None, False, []):
            assert entry.count("default") == 1 and str(action.default) in entry, entry


@pytest.mark.parametrize("cli", [predict, generate], ids=["predict", "generate"])
def test_help_shows_each_default_once(cli):
    check_defaults_shown_once(cli._parser())


def test_a_line_is_a_text_whatever_it_holds(tmp_path):
    """Only \n (or \r\n) ends a text: a form feed or U+2028 inside a review used to split it
    in two, and the output rows no longer matched the input lines."""
    from fastulm.predict import read_texts

    path = tmp_path / "in.txt"
    path.write_bytes("one\x0cstill one\r\ntwo\u2028still two\n\nfour\n".encode())
    assert read_texts(path, None) == ["one\x0cstill one", "two\u2028still two", "", "four"]
