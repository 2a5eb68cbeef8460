"""``python -m fastulm.tokenize`` end to end, and its answers to bad input."""

import os
import re
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
    assert (
        "bad.csv: no column 'text' (--text-col); the columns are: label, review, is_valid"
        in _error(capsys, bad_csv, out)
    )
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


def test_force_never_replaces_a_user_folder(capsys, tmp_path, tiny_imdb):
    root, _ = tiny_imdb
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for force in ([], ["--force"]):
        err = _error(capsys, root, out, *force, "--workers", "1", "--quiet")
        assert err.endswith(
            "out: is not a corpus fastulm wrote (no meta.json);"
            " will not replace it, even with --force"
        )
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"


def test_force_replaces_an_earlier_corpus(capsys, tmp_path, tiny_imdb):
    root, _ = tiny_imdb
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    assert main([str(root), str(out), "--workers", "1", "--quiet", "--min-freq", "1"]) == 0
    assert "out: a corpus is already there (use --force" in _error(capsys, root, out, "--quiet")
    assert open_corpus(out).meta["options"]["min_freq"] == 1
    assert main([str(root), str(out), "--force", "--workers", "1", "--quiet"]) == 0
    assert open_corpus(out).meta["options"]["min_freq"] == 2
    assert open_corpus(out)["train"].labels.tolist() == [0, 0, 1, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aclImdb", "out"]


def test_out_never_is_or_holds_the_source(capsys, tmp_path, imdb_sample):
    folder = tmp_path / "mydir"
    folder.mkdir()
    src = folder / "a.csv"
    src.write_bytes((imdb_sample / "texts.csv").read_bytes())
    for out in (folder, src):
        err = _error(capsys, src, out, "--force", "--quiet")
        assert err.endswith(f"{out}: would replace the source {src}; choose another output")
    assert src.read_bytes() == (imdb_sample / "texts.csv").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["mydir"]
    assert [p.name for p in folder.iterdir()] == ["a.csv"]


def test_merge_never_replaces_a_part(capsys, tmp_path, tiny_imdb):
    root, _ = tiny_imdb
    for i in range(2):
        args = [str(root), str(tmp_path / f"p{i}"), "--num-shards", "2", "--shard-index", str(i)]
        assert main([*args, "--workers", "1", "--quiet"]) == 0
    part = (tmp_path / "p1" / "docs.arrow").read_bytes()
    err = _error(capsys, "--merge", tmp_path / "p0", tmp_path / "p1", tmp_path / "p1", "--force")
    assert "p1: would replace the source" in err
    assert (tmp_path / "p1" / "docs.arrow").read_bytes() == part


def test_stale_temporaries_are_swept_live_ones_kept(tmp_path, tiny_imdb):
    root, _ = tiny_imdb
    stale = tmp_path / ".out.tmp-xyz"  # as a kill -9 leaves it
    stale.mkdir()
    (stale / "train.arrow").write_bytes(b"half")
    live = tmp_path / ".out.tmp-live"
    live.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY);"
            " fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
            str(live),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main([str(root), str(tmp_path / "out"), "--workers", "1", "--quiet"]) == 0
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.tmp-live", "aclImdb", "out"]


@pytest.mark.parametrize("flag", [["--forc"], ["--work", "2"], ["--max-voc", "10"]])
def test_abbreviated_flags_are_usage_errors(capsys, tmp_path, tiny_imdb, flag):
    root, _ = tiny_imdb
    with pytest.raises(SystemExit) as stop:
        main([str(root), str(tmp_path / "out"), *flag])
    assert stop.value.code == 2
    assert f"unrecognized arguments: {' '.join(flag)}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_gives_each_default_once(capsys):
    """A guard: the help texts state their defaults, so the formatter must not add them."""
    with pytest.raises(SystemExit):
        main(["--help"])
    options = capsys.readouterr().out.split("\noptions:\n", 1)[1].split("\n\n")[0]
    entries = re.split(r"\n  (?=-)", options)  # one per option, its help wrapped over lines
    assert len(entries) > 10
    assert all(e.count("default") <= 1 for e in entries), entries
    assert sum("(default 60000)" in e for e in entries) == 1


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
        # the next run writing there removes it
        small = imdb_sample / "texts.csv"
        assert main([str(small), str(out), "--workers", "1", "--quiet"]) == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["big.csv", "out"]


def test_refusal_names_the_users_file_in_a_corpus(capsys, tmp_path, tiny_imdb):
    root, _ = tiny_imdb
    out = tmp_path / "out"
    assert main([str(root), str(out), "--workers", "1", "--quiet"]) == 0
    (out / "mine.txt").write_text("my notes")
    err = _error(capsys, root, out, "--force", "--workers", "1", "--quiet")
    assert "(it holds 'mine.txt')" in err
    assert (out / "mine.txt").read_text() == "my notes"


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc/*/stat: kernels without .../children)."""
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_parent_is_killed(tmp_path):
    root = tmp_path / "imdb"
    text = " ".join(f"Review number {i}, quite long and rather dull!" for i in range(150))
    for cls in ("pos", "neg"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(2000):
            (root / "train" / cls / f"{i}_1.txt").write_text(text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastulm.tokenize", root, tmp_path / "out", "--workers", "2"],
        cwd=REPO,
        stderr=subprocess.PIPE,
    )
    workers: list[int] = []
    try:
        seen, deadline = b"", time.monotonic() + 60
        while not (workers and re.search(rb" [1-9]\d*/4000 ", seen)):  # tokenizing has begun
            assert proc.poll() is None, f"finished before it could be killed: {seen}"
            assert time.monotonic() < deadline, seen
            seen += os.read(proc.stderr.fileno(), 4096)
            workers = [
                p
                for p in _children(proc.pid)
                if b"multiprocessing" in Path(f"/proc/{p}/cmdline").read_bytes()
            ]
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in workers if _running(p)], "workers outlived their parent"
    finally:
        proc.kill()
        proc.wait()
        for p in workers:  # do not leak them if the test fails
            if _running(p):
                os.kill(p, signal.SIGKILL)
        proc.stderr.close()


def test_file_name_not_utf8_is_tokenized(tmp_path, tiny_imdb):
    root, _ = tiny_imdb
    fd = os.open(os.fsencode(root / "train" / "pos") + b"/caf\xe9_1.txt", os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"Nice film.")
    os.close(fd)
    out = tmp_path / "out"
    assert main([str(root), str(out), "--workers", "1", "--min-freq", "1", "--quiet"]) == 0
    corpus = open_corpus(out)
    train = corpus["train"]
    assert len(train) == 5
    ids = train.doc_ids.to_pylist()
    assert "train/pos/caf\ufffd_1.txt" in ids
    doc = train.doc(ids.index("train/pos/caf\ufffd_1.txt"))
    assert "nice film" in corpus.decode(doc)
