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

from fastulm import export, generate, predict, prediction
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


def expected_csv(model, texts, ids=None, id_name="id"):
    """Independent expectation: each text alone through the model, no batching or padding;
    the id column is the row number unless ``ids`` are given."""
    stoi = {t: i for i, t in enumerate(VOCAB)}
    ids = ids or [str(i) for i in range(1, len(texts) + 1)]
    model.eval()
    lines = [f"{id_name},label,p_neg,p_pos"]
    with torch.no_grad():
        for row_id, toks in zip(ids, tokenize_texts(texts)):
            model.reset()
            x = torch.tensor([[stoi.get(t, 0) for t in toks]])
            p = torch.softmax(model(x).logits.float(), -1)[0].tolist()
            label = ["neg", "pos"][p[1] > p[0]]
            lines.append(",".join([row_id, label, *[f"{v:.6f}" for v in p]]))
    return "\r\n".join(lines) + "\r\n"  # csv.writer's line ends


def _one_error_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.fixture(autouse=True)
def auto_is_fp32_on_the_cpu(monkeypatch):
    """The expectations here are fp32 on the CPU; on a CPU with avx512_bf16 or AMX
    ``--precision auto`` would choose bf16 (tested on its own below), and ``--device auto``
    a GPU where there is one."""
    monkeypatch.setattr(prediction, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


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
    """Without --out the predictions go beside the input, never into the run directory."""
    run, model = clas
    out = tmp_path / "o.csv"
    out.write_text("id,label,p_neg,p_pos\n1,neg,0.9,0.1\n")  # an earlier predict's output
    assert predict.main([str(run), "--file", str(texts_file), "--out", str(out)]) == 0
    assert out.read_bytes().decode() == expected_csv(model, TEXTS)
    assert predict.main([str(run), "--file", str(texts_file)]) == 0
    beside = tmp_path / "reviews.predictions.csv"
    assert beside.read_bytes().decode() == expected_csv(model, TEXTS)
    assert not (run / "predictions.csv").exists()
    assert capsys.readouterr().out == ""  # the note went to stderr


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


@pytest.mark.parametrize(
    "case", ["user_file", "default_beside_is_users", "the_input", "inside_the_run"]
)
def test_out_never_replaces_a_users_file(
    clas, texts_file, tmp_path, capsys, model_must_not_run, case
):
    """Only an empty file or an earlier predictions CSV is replaced: the input itself, a file
    in the model's folder, or any other file of the user's is one error, left as it was."""
    run, _ = clas
    argv = [str(run), "--file", str(texts_file)]
    if case == "user_file":
        out = tmp_path / "results.csv"
        out.write_text("name,score\nalice,3\n")
        argv += ["--out", str(out)]
        says = "is not a predictions file fastulm wrote"
    elif case == "default_beside_is_users":
        out = tmp_path / "reviews.predictions.csv"
        out.write_text("my own notes on these reviews\n")
        says = "is not a predictions file fastulm wrote"
    elif case == "the_input":
        out = texts_file
        argv += ["--out", str(out)]
        says = "is the input file"
    else:
        out = run / "config.json"
        argv += ["--out", str(out)]
        says = "is inside the model folder"
    before = out.read_bytes()
    assert predict.main(argv) == 1
    assert says in _one_error_line(capsys)
    assert out.read_bytes() == before
    # a new file in the model's folder is refused too, and not made
    assert predict.main([*argv[:3], "--out", str(run / "p.csv")]) == 1
    assert "is inside the model folder" in _one_error_line(capsys)
    assert not (run / "p.csv").exists()


def test_out_an_empty_file_is_replaced(clas, texts_file, tmp_path):
    run, model = clas
    out = tmp_path / "made_by_touch.csv"
    out.write_text("")
    assert predict.main([str(run), "--file", str(texts_file), "--out", str(out)]) == 0
    assert out.read_bytes().decode() == expected_csv(model, TEXTS)


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
        (["some text", "--threads", "0"], "--threads must be >= 1, got 0"),
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


@pytest.mark.parametrize("cli", [predict, generate, export], ids=["predict", "generate", "export"])
def test_help_shows_each_default_once(cli):
    check_defaults_shown_once(cli._parser())


def test_a_line_is_a_text_whatever_it_holds(tmp_path):
    """Only \n (or \r\n) ends a text: a form feed or U+2028 inside a review used to split it
    in two, and the output rows no longer matched the input lines. Blank lines are skipped
    (not scored as reviews); each text's id is its line number."""
    from fastulm.predict import read_rows

    path = tmp_path / "in.txt"
    path.write_bytes("one\x0cstill one\r\ntwo\u2028still two\n\n  \nfive\n".encode())
    assert read_rows(path, None) == (
        ["1", "2", "5"],
        ["one\x0cstill one", "two\u2028still two", "five"],
    )


# ------------------------------------------------------------------ batch prediction


def _model_probs(model, texts, multi=False):
    """Each text alone through the model: softmax (or per-class sigmoid) of its logits."""
    stoi = {t: i for i, t in enumerate(VOCAB)}
    model.eval()
    out = []
    with torch.no_grad():
        for toks in tokenize_texts(texts):
            model.reset()
            logits = model(torch.tensor([[stoi.get(t, 0) for t in toks]])).logits.float()[0]
            out.append((torch.sigmoid(logits) if multi else torch.softmax(logits, -1)).tolist())
    return out


def _read_csv(text):
    import csv

    return list(csv.reader(io.StringIO(text)))


def assert_csv_close(got, want):
    """Same header, ids and labels; probabilities within 2e-6 (batching and padding change
    the float rounding, which may move the sixth decimal)."""
    got, want = _read_csv(got), _read_csv(want)
    assert [r[:2] for r in got] == [r[:2] for r in want]
    for g, w in zip(got[1:], want[1:]):
        assert [float(v) for v in g[2:]] == pytest.approx([float(v) for v in w[2:]], abs=2e-6)


def test_many_texts_keep_input_order_and_ids(clas, tmp_path, capsys):
    """Batches are cut from texts sorted by length; rows still come back in input order,
    with the --id-col value (blank lines of a .txt are skipped, ids are line numbers)."""
    run, model = clas
    words = ["great", "awful", "fun", "dull", "film", "was", "the"]
    texts = [" ".join(words[(i + k) % 7] for k in range(1 + (i * 5) % 23)) for i in range(30)]
    src = tmp_path / "r.csv"
    src.write_text("key,text\n" + "".join(f"k{i},{t}\n" for i, t in enumerate(texts)))
    args = [str(run), "--file", str(src), "--id-col", "key", "--bs", "4", "--out", "-"]
    assert predict.main(args) == 0
    want = expected_csv(model, texts, [f"k{i}" for i in range(30)], id_name="key")
    assert_csv_close(capsys.readouterr().out, want)
    txt = tmp_path / "r.txt"
    txt.write_text("\n".join(["", texts[0], "   ", texts[1], ""]) + "\n")
    assert predict.main([str(run), "--file", str(txt), "--out", "-"]) == 0
    assert_csv_close(capsys.readouterr().out, expected_csv(model, texts[:2], ["2", "4"]))


def test_threads_give_the_same_predictions_and_are_restored(clas, tmp_path, capsys):
    """--threads sets torch's CPU threads for the model while it runs (a busy machine runs
    faster on fewer), changes no prediction, and leaves torch's setting as it was."""
    import torch

    run, model = clas
    texts = [f"the film was {'great ' * (i % 5)}and {'dull ' * (i % 3)}fun" for i in range(20)]
    src = tmp_path / "r.txt"
    src.write_text("\n".join(texts) + "\n")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert predict.main([str(run), "--file", str(src), "--out", "-", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    ids = [str(i) for i in range(1, 21)]
    assert_csv_close(capsys.readouterr().out, expected_csv(model, texts, ids))


def test_long_inputs_are_read_whole_and_pool_the_last_max_len(tmp_path, capsys):
    """A document longer than max_len: the LSTM reads all of it, the head pools the last
    max_len tokens (as in training) -- the same as the model on the whole document, not
    the model on its first max_len tokens."""
    torch.manual_seed(1)
    model = get_classifier(len(VOCAB), 2, bptt=4, max_len=8, **SMALL)
    run = tmp_path / "clas"
    write_run(run, model, VOCAB, ["neg", "pos"], {"kind": "clas"})
    long = "great fun film . " * 6 + "awful dull film ."
    texts = [long, long.replace("great", "dull"), "great"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    args = [str(run), "--file", str(tmp_path / "in.txt"), "--bs", "1", "--out", "-"]
    assert predict.main(args) == 0
    assert_csv_close(capsys.readouterr().out, expected_csv(model, texts))
    head = " ".join(tokenize_texts([long])[0][1:7])  # about the first max_len tokens
    assert _model_probs(model, [long]) != _model_probs(model, [head])


def test_also_averages_the_runs(clas, tmp_path, texts_file, capsys):
    run, model = clas
    torch.manual_seed(7)
    other = get_classifier(len(VOCAB), 2, **SMALL)
    write_run(tmp_path / "other", other, VOCAB, ["neg", "pos"], {"kind": "clas"})
    args = [str(run), "--file", str(texts_file), "--also", str(tmp_path / "other"), "--out", "-"]
    assert predict.main(args) == 0
    rows = _read_csv(capsys.readouterr().out)[1:]
    a, b = _model_probs(model, TEXTS), _model_probs(other, TEXTS)
    for row, pa, pb in zip(rows, a, b):
        avg = [(x + y) / 2 for x, y in zip(pa, pb)]
        assert row[1] == ["neg", "pos"][avg[1] > avg[0]]
        assert [float(v) for v in row[2:]] == pytest.approx(avg, abs=1e-6)


def _write_multi_run(path, names=("action", "comedy", "drama"), delim="|", threshold=0.5):
    torch.manual_seed(5)
    model = get_classifier(len(VOCAB), len(names), **SMALL)
    with torch.no_grad():  # spread the logits so that some classes are over 0.5, some not
        model.head.layers[0][0].running_var.fill_(1e-3)
        model.head.layers[-1][-1].weight.mul_(3)
    settings = {"kind": "clas", "task": "multi_label", "label_delim": delim}
    write_run(path, model, VOCAB, list(names), {**settings, "threshold": threshold})
    return model


@pytest.mark.parametrize("threshold", [None, 0.2, 0.999])
def test_multi_label_run_sigmoids_and_threshold(tmp_path, texts_file, capsys, threshold):
    """task=multi_label: one sigmoid per class; the label is every class over the threshold
    (the run's, or --threshold), joined by the run's label_delim, empty when none is."""
    names = ["action", "comedy", "drama"]
    model = _write_multi_run(tmp_path / "multi", names)
    more = ["film film", "great great great", "the dull and the awful"]
    texts_file.write_text("\n".join(TEXTS + more) + "\n")
    args = [str(tmp_path / "multi"), "--file", str(texts_file), "--out", "-"]
    args += [] if threshold is None else ["--threshold", str(threshold)]
    assert predict.main(args) == 0
    rows = _read_csv(capsys.readouterr().out)
    assert rows[0] == ["id", "label", "p_action", "p_comedy", "p_drama"]
    t = 0.5 if threshold is None else threshold
    labels = []
    for row, p in zip(rows[1:], _model_probs(model, TEXTS + more, multi=True)):
        assert [float(v) for v in row[2:]] == pytest.approx(p, abs=1e-6)
        assert row[1] == "|".join(n for n, v in zip(names, p) if v > t)
        labels.append(row[1])
    if threshold is None:  # the model was made so that the default threshold discriminates
        assert any("|" in lab for lab in labels) and len(set(labels)) > 1
    if threshold == 0.999:
        assert "" in labels


def test_multi_label_single_text_prints_its_classes(tmp_path, capsys):
    model = _write_multi_run(tmp_path / "multi", delim=None)
    assert predict.main([str(tmp_path / "multi"), "great great great", "--threshold", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("action;comedy;drama  (action: ")  # no delimiter: ';'
    p = _model_probs(model, ["great great great"], multi=True)[0]
    assert f"drama: {p[2]:.4f}" in out


def test_workers_tokenize_as_the_corpus_does(monkeypatch):
    """Tokenizing in worker processes gives each text the ids of the corpus tokenizer
    (tokenize_texts + the vocab), in input order."""
    from fastulm import prediction
    from fastulm.generation import encode_texts

    monkeypatch.setattr(prediction, "POOL_MIN_TEXTS", 10)
    monkeypatch.setattr(prediction, "TASK_TEXTS", 7)
    texts = [
        f"The film was {'GREAT' if i % 3 else 'awful'}!!! {'fun ' * (i % 5)}" for i in range(40)
    ]
    got = prediction.encode_ids(VOCAB, texts, workers=2)
    want = encode_texts(VOCAB, texts)
    assert len(got) == len(want) and all(list(g) == list(w) for g, w in zip(got, want))


def test_progress_bar_reports_docs_per_second(clas, capsys):
    from fastulm.prediction import predict_texts

    run, _ = clas
    predict_texts([run], TEXTS, device="cpu", progress=True)
    err = capsys.readouterr().err
    assert "predicting" in err and "doc/s" in err


@pytest.mark.parametrize("native", [False, True])
def test_auto_is_bf16_only_where_the_cpu_has_it_natively(monkeypatch, native):
    monkeypatch.setattr(prediction, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert prediction.resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert prediction.resolve_precision("fp32", cpu) == "fp32"


def test_bf16_on_cpu_runs_near_fp32_or_is_one_error(clas, texts_file, capsys):
    from fastulm.prediction import cpu_bf16_lstm_works, predict_texts

    run, _ = clas
    if not cpu_bf16_lstm_works():  # below AVX-512 oneDNN has no bf16 LSTM
        args = [str(run), "--file", str(texts_file), "--out", "-", "--precision", "bf16"]
        assert predict.main(args) == 1
        assert "oneDNN has no bf16 LSTM here" in _one_error_line(capsys)
        return
    fp32 = predict_texts([run], TEXTS, device="cpu", precision="fp32")
    bf16 = predict_texts([run], TEXTS, device="cpu", precision="bf16")
    assert abs(bf16.probs - fp32.probs).max() < 2e-2


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--id-col", "nope"], "no column 'nope'"),
    ],
)
def test_bad_device_or_column_is_one_error(clas, tmp_path, capsys, flags, says):
    run, _ = clas
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,great film\n")
    assert predict.main([str(run), "--file", str(src), "--out", "-", *flags]) == 1
    assert says in _one_error_line(capsys)


def test_bad_threshold_is_a_usage_error(clas, capsys):
    run, _ = clas
    assert predict.main([str(run), "text", "--threshold", "1.5"]) == 2
    assert "--threshold must be in [0, 1]" in _one_error_line(capsys)


def test_an_lm_run_is_one_error(tmp_path, capsys):
    from fastulm.model import get_language_model

    write_run(tmp_path / "lm", get_language_model(len(VOCAB), **SMALL), VOCAB, None, {"kind": "lm"})
    assert predict.main([str(tmp_path / "lm"), "text"]) == 1
    assert "a lm run, not a classifier" in _one_error_line(capsys)


def test_out_of_memory_says_lower_bs(clas, texts_file, monkeypatch, capsys):
    from fastulm import prediction

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(prediction, "classifier_logits", oom)
    run, _ = clas
    assert predict.main([str(run), "--file", str(texts_file), "--out", "-", "--bs", "512"]) == 1
    assert "out of memory on cpu at 512 texts a batch; lower --bs" in _one_error_line(capsys)


# ------------------------------------------------------------------ damaged run files


def _edit_json(path, edit):
    import json

    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


@pytest.mark.parametrize(
    "file, edit, says",
    [
        # three names for a two-class head: predictions would be named by the wrong list
        ("config.json", lambda c: {**c, "label_names": ["neg", "pos", "meh"]}, "label_names"),
        # a token removed: every id after it shifts
        ("vocab.json", lambda v: v[:5] + v[6:], "embedding rows"),
        ("vocab.json", lambda v: [*v[:-1], "film"], "'film' is listed twice"),
        ("config.json", lambda c: {**c, "n_classes": 3, "label_names": []}, "has 2 outputs"),
    ],
)
def test_a_run_whose_files_disagree_is_one_error(tmp_path, file, edit, says, capsys):
    run = tmp_path / "clas"
    _write_clas_run(run)
    _edit_json(run / file, edit)
    assert predict.main([str(run), "great film"]) == 1
    err = _one_error_line(capsys)
    assert err.startswith(f"error: {run / file}: damaged") and says in err


def _export(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    _write_clas_run(tmp_path / "clas")
    export.export_run(tmp_path / "clas", tmp_path / "export")
    return tmp_path / "export"


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "file, damage",
    [
        ("model.onnx", _flip_middle_byte),
        ("labels.json", lambda p: _edit_json(p, lambda lab: {**lab, "names": ["pos", "neg"]})),
        ("vocab.json", lambda p: _edit_json(p, lambda v: v[:5] + v[6:])),
    ],
)
def test_a_damaged_export_is_one_error(tmp_path, file, damage, capsys):
    """A flipped byte in the weights or an edited vocab/labels would predict quietly wrong."""
    folder = _export(tmp_path)
    damage(folder / file)
    assert predict.main([str(folder), "--onnx", "great film"]) == 1
    err = _one_error_line(capsys)
    assert err.startswith(f"error: {folder / file}: damaged: its sha256 does not match")


def test_an_export_without_checksums_still_predicts(tmp_path, capsys):
    """An export by an earlier fastulm (no sha256 in tokenizer.json) is read as before."""
    folder = _export(tmp_path)
    assert predict.main([str(folder), "--onnx", "great film"]) == 0
    want = capsys.readouterr().out
    _edit_json(folder / "tokenizer.json", lambda s: {k: v for k, v in s.items() if k != "sha256"})
    assert predict.main([str(folder), "--onnx", "great film"]) == 0
    assert capsys.readouterr().out == want != ""
    # without them, the class names are still checked against the model
    _edit_json(folder / "labels.json", lambda lab: {**lab, "names": ["a", "b", "c"]})
    assert predict.main([str(folder), "--onnx", "great film"]) == 1
    assert "labels.json: damaged (3 names for 2 classes)" in _one_error_line(capsys)


def test_file_a_folder_is_one_error(clas, tmp_path, capsys):
    run, _ = clas
    assert predict.main([str(run), "--file", str(tmp_path)]) == 1
    assert (
        _one_error_line(capsys)
        == f"error: {tmp_path}: is a folder; give a file (one text per line, or a CSV)\n"
    )


@pytest.mark.parametrize("given", [True, False])
def test_several_text_columns_are_joined_as_in_training(tmp_path, given):
    """A classifier trained on title + body (xxfld-marked) reads a CSV's same columns: given
    with repeated --text-col, or by default the ones its corpus recorded."""
    torch.manual_seed(0)
    model = get_classifier(len(VOCAB), 2, **SMALL)
    run = tmp_path / "clas"
    write_run(run, model, VOCAB, ["neg", "pos"], {"kind": "clas", "text_cols": ["title", "body"]})
    src = tmp_path / "r.csv"
    src.write_text("title,body\nGreat,The film was great and fun!\nAwful,It was awful.\n")
    flags = ["--text-col", "title", "--text-col", "body"] if given else []
    out = tmp_path / "o.csv"
    assert predict.main([str(run), "--file", str(src), "--out", str(out), *flags]) == 0
    joined = [
        "xxfld 1 Great xxfld 2 The film was great and fun!",
        "xxfld 1 Awful xxfld 2 It was awful.",
    ]
    assert out.read_bytes().decode() == expected_csv(model, joined)


@pytest.mark.parametrize("name", ["reviews.csv", "reviews.txt"])
def test_a_file_not_in_utf8_names_its_line(clas, tmp_path, capsys, name):
    run, _ = clas
    src = tmp_path / name
    src.write_bytes(b"text\nfine film\ncaf\xe9 was dull\n")
    out = tmp_path / "out.csv"
    assert predict.main([str(run), "--file", str(src), "--out", str(out)]) == 1
    line = _one_error_line(capsys)
    assert f"{src}: line 3 is not UTF-8 (byte 0xe9)" in line, line
    assert not out.exists()
