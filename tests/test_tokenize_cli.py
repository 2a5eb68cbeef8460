"""``python -m fastulm.tokenize`` end to end, and its answers to bad input."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

from fastulm.data.corpus import open_corpus
from fastulm.tokenize import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_imdb(tmp_path):
    """A few reviews in the official layout, plus files that are not reviews."""
    root = tmp_path / "aclImdb"
    reviews = {
        "train/neg/0_1.txt": "Dull. Really dull.",
        "train/neg/1_2.txt": "Awful acting!!!",
        "train/pos/0_9.txt": "A GREAT film.",
        "train/pos/1_8.txt": "I loved it.",
        "test/neg/0_3.txt": "Not good.",
        "test/pos/0_7.txt": "Good fun.",
        "train/unsup/0_0.txt": "Saw it twice.",
        "train/urls_pos.txt": "http://x",
        "README": "readme",
    }
    for rel, text in reviews.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root, reviews


def _cli(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "fastulm.tokenize", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        **kw,
    )


def test_cli_end_to_end_on_sample(imdb_sample, tmp_path):
    out = tmp_path / "imdb_tok"
    run = _cli(imdb_sample / "texts.csv", out, "--workers", "2")
    assert run.returncode == 0, run.stderr
    assert "1000 docs" in run.stderr and "doc/s" in run.stderr  # summary and progress bar
    corpus = open_corpus(out)
    assert {s: len(corpus[s]) for s in corpus.split_names} == {"train": 800, "valid": 200}
    assert corpus.meta["source"]["kind"] == "csv"
    show = _cli("--show", out, "-n", "2")
    assert show.returncode == 0, show.stderr
    first = corpus["train"].doc(0)
    assert corpus.decode(first[:20]) in show.stdout
    assert "(negative," in show.stdout or "(positive," in show.stdout


def _error(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if "tokenizing" not in line]
    assert code == 1
    assert len(err) == 1 and err[0].startswith("fastulm.tokenize: error: "), err
    return err[0]


def test_bad_inputs_give_one_line(capsys, tmp_path):
    out = tmp_path / "out"
    assert "nope: no such file or folder" in _error(capsys, tmp_path / "nope", out)
    (tmp_path / "empty").mkdir()
    assert "empty: empty folder" in _error(capsys, tmp_path / "empty", out)
    (tmp_path / "junk" / "train").mkdir(parents=True)
    (tmp_path / "junk" / "README").write_text("x")
    assert "junk: no review files" in _error(capsys, tmp_path / "junk", out)
    bad_csv = tmp_path / "bad.csv"
    pcsv.write_csv(pa.table({"label": ["pos"], "review": ["hi"], "is_valid": [False]}), bad_csv)
    assert "bad.csv: missing column(s) text" in _error(capsys, bad_csv, out)
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--workers", "0"], "--workers must be at least 1, got 0"),
        (["--max-vocab", "-1"], "--max-vocab must be >= 0 (0 = no limit), got -1"),
    ],
)
def test_bad_numbers_are_usage_errors(capsys, tmp_path, tiny_imdb, flags, says):
    root, _ = tiny_imdb
    with pytest.raises(SystemExit) as stop:
        main([str(root), str(tmp_path / "out"), *flags])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(says)
    assert not (tmp_path / "out").exists()


def test_out_with_other_content_needs_force(capsys, tmp_path, tiny_imdb):
    root, _ = tiny_imdb
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert "out: exists and is not empty (use --force" in _error(capsys, root, out)
    assert (out / "notes.txt").exists()
    assert main([str(root), str(out), "--force", "--workers", "1", "--quiet"]) == 0
    assert open_corpus(out)["train"].labels.tolist() == [0, 0, 1, 1]


def test_subprocess_error_has_no_traceback(tmp_path):
    run = _cli(tmp_path / "missing", tmp_path / "out")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"fastulm.tokenize: error: {tmp_path / 'missing'}: no such file or folder"
    ]


def test_shards_and_merge_via_cli(tmp_path, tiny_imdb):
    root, _ = tiny_imdb
    for i in range(2):
        assert (
            main(
                [
                    str(root),
                    str(tmp_path / f"p{i}"),
                    "--num-shards",
                    "2",
                    "--shard-index",
                    str(i),
                    "--workers",
                    "1",
                    "--quiet",
                ]
            )
            == 0
        )
    assert main(["--merge", str(tmp_path / "p0"), str(tmp_path / "p1"), str(tmp_path / "m")]) == 0
    assert main([str(root), str(tmp_path / "s"), "--workers", "1", "--quiet"]) == 0
    for name in ("vocab.json", "train.arrow", "test.arrow", "unsup.arrow", "meta.json"):
        assert (tmp_path / "m" / name).read_bytes() == (tmp_path / "s" / name).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_run_leaves_nothing_that_looks_complete(imdb_sample, tmp_path, sig):
    table = pcsv.read_csv(imdb_sample / "texts.csv")
    big = tmp_path / "big.csv"
    pcsv.write_csv(pa.concat_tables([table] * 30), big)  # 30,000 reviews
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastulm.tokenize", str(big), str(out), "--workers", "1"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = ""
    while "doc/s" not in seen:  # the progress bar is up: OUT is claimed, tokenizing started
        seen += os.read(proc.stderr.fileno(), 4096).decode()
        assert proc.poll() is None, f"finished before it could be interrupted: {seen}"
    time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(sig)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode != 0, rest
    assert not out.exists()
    left = [p.name for p in tmp_path.iterdir() if p.name != "big.csv"]
    if sig == signal.SIGTERM:  # stops at the next batch and cleans up on the way out
        assert proc.returncode == 143, rest
        assert "interrupted, nothing written" in rest
        assert left == [], (proc.returncode, rest)
    else:  # a hard kill can leave the hidden temporary, never a corpus
        assert all(p.startswith(".out.tmp-") for p in left)
        assert all(not (tmp_path / p / "meta.json").exists() for p in left)
