"""Faults while a command writes: a full disk, a kill at any moment, damaged files read back.

A full disk is simulated with ``RLIMIT_FSIZE`` (a write past N bytes fails with EFBIG, "File
too large", as a full disk fails with ENOSPC; no root needed). Every command must answer
with one error line naming the file and the cause, exit non-zero, leave no half-written
output or temporary behind, and keep what the user had (an earlier run's checkpoint, an
earlier export).
"""

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastulm.model import get_classifier
from fastulm.train.__main__ import main as train_main
from fastulm.train.run_dir import write_run
from fastulm_testkit import REPO, TINY_TRAIN, one_torch_thread, write_small_corpus  # noqa: F401

TIMEOUT = 120


def run_limited(args, limit, stdout=subprocess.PIPE, env=None):
    """``python -m *args`` with every file it writes limited to ``limit`` bytes."""

    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", *map(str, args)],
        preexec_fn=limit_files,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
        timeout=TIMEOUT,
    )


def error_line(proc) -> str:
    """The one line a failed command prints; a traceback or a second line fails the test."""
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def files(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) with its sha256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders of an interrupted write under or beside ``folder``."""
    near = [*folder.parent.iterdir(), *(folder.rglob("*") if folder.is_dir() else [])]
    return sorted(str(p) for p in near if p.name.startswith(".") or p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_small_corpus(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def clas(corpus, tmp_path_factory):
    """A small classifier run on the corpus's vocab (random weights: export is the subject)."""
    vocab = json.loads((corpus / "vocab.json").read_text())
    run = tmp_path_factory.mktemp("clas") / "clas"
    torch.manual_seed(0)
    model = get_classifier(len(vocab), 2, emb_sz=16, n_hid=24, n_layers=2)
    write_run(run, model, vocab, ["neg", "pos"], {"kind": "clas"})
    return run


@pytest.fixture(scope="module")
def lm(corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("lm") / "lm"
    assert train_main(["lm", str(corpus), str(run), *TINY_TRAIN, "--epochs", "0"]) == 0
    return run


# ------------------------------------------------------------------ a full disk: tokenize


@pytest.mark.parametrize("limit", [0, 1])  # /dev/shm (the pool's semaphores) is full too
def test_worker_processes_that_cannot_start_are_one_clear_line(corpus, tmp_path, limit):
    """Used to say only "error: File too large", or "error: Error" (errno 0)."""
    src = corpus.parent / "t.csv"
    out = tmp_path / "out"
    proc = run_limited(["fastulm.tokenize", src, out, "--workers", "2", "--quiet"], limit)
    line = error_line(proc)
    assert line.startswith("fastulm.tokenize: error: cannot start 1 tokenizer process ("), line
    assert line.endswith("); try --workers 1"), line
    assert not out.exists() and leftovers(out) == []


def test_a_full_disk_while_writing_a_split_names_the_file(corpus, tmp_path):
    src = corpus.parent / "t.csv"
    out = tmp_path / "out"
    line = error_line(
        run_limited(["fastulm.tokenize", src, out, "--workers", "1", "--quiet"], 2_000)
    )
    assert not out.exists() and leftovers(out) == []
    assert f"{out}" in line and ".arrow" in line and "File too large" in line, line


# ------------------------------------------------------------------ a full disk: train


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last_one(corpus, tmp_path):
    """torch.save's zip writer used to hide the OSError behind its own RuntimeError (a
    traceback); the checkpoint written before must stay, and resume."""
    run = tmp_path / "run"
    argv = ["lm", str(corpus), str(run), *TINY_TRAIN, "--frozen-epochs", "0", "--epochs", "1"]
    assert train_main([*argv, "--time-limit", "0"]) == 75  # a first checkpoint, at step 0
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    resume = ["fastulm.train", "lm", corpus, run, "--resume", "--quiet", "--threads", "1"]
    line = error_line(run_limited(resume, 200_000))  # logs and plots fit, a checkpoint not
    assert line.startswith(f"error: {last}: cannot write (File too large)"), line
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]
    assert not (run / "config.json").exists()
    assert train_main(["lm", str(corpus), str(run), "--resume", "--quiet"]) == 0


def test_a_full_disk_while_saving_the_encoder_is_one_line(corpus, tmp_path):
    """safetensors reports a full disk as its own SafetensorError: it used to escape as a
    traceback from save_encoder."""
    run = tmp_path / "run"
    argv = ["fastulm.train", "lm", corpus, run, *TINY_TRAIN, "--frozen-epochs", "0"]
    line = error_line(run_limited([*argv, "--epochs", "0"], 5_000))
    assert line.startswith(f"error: {run / 'encoder.safetensors'}: cannot write ("), line
    assert "File too large" in line
    assert not (run / "config.json").exists() and not (run / "model.safetensors").exists()
    assert leftovers(run) == []


def test_resume_removes_what_a_killed_save_left(corpus, tmp_path):
    """A SIGKILL while a checkpoint (GBs for the paper model) or a log is being written
    leaves its temporary file; the resumed run used to keep it for ever."""
    run = tmp_path / "run"
    argv = ["lm", str(corpus), str(run), *TINY_TRAIN, "--frozen-epochs", "0", "--epochs", "1"]
    assert train_main([*argv, "--time-limit", "0"]) == 75
    last = run / "checkpoints" / "last.pt"
    killed = [last.with_name(".last.pt.k1ll3d.tmp"), run / ".log.csv.k1ll3d.tmp"]
    for path in killed:
        path.write_bytes(last.read_bytes()[:1000])  # cut off mid-write
    assert train_main(["lm", str(corpus), str(run), "--resume", "--quiet"]) == 0
    assert [p for p in killed if p.exists()] == []
    assert leftovers(run) == []


@pytest.mark.parametrize("name", ["config.json", "vocab.json"])
def test_a_truncated_run_file_is_named(lm, tmp_path, name):
    """A run file cut off (a copy that ran out of space): the error used to name only the
    folder, not which of its files is damaged."""
    run = tmp_path / "run"
    shutil.copytree(lm, run)
    (run / name).write_bytes((lm / name).read_bytes()[:40])
    proc = subprocess.run(
        [sys.executable, "-m", "fastulm.generate", run, "the film"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=TIMEOUT,
    )
    assert error_line(proc).startswith(f"error: {run / name}: unreadable (")


# ------------------------------------------------------------------ a full disk: export


def test_a_failed_export_leaves_nothing_and_keeps_the_earlier_one(clas, tmp_path):
    pytest.importorskip("onnx")
    from fastulm import inference

    out = tmp_path / "export"
    limit = 1_000  # model.onnx cannot be written
    line = error_line(run_limited(["fastulm.export", clas, out], limit))
    assert line.startswith(f"error: {out}") and "File too large" in line, line
    assert not out.exists() and leftovers(out) == []  # no half export, no temporary
    assert subprocess.run([sys.executable, "-m", "fastulm.export", clas, out]).returncode == 0
    before = files(out)
    line = error_line(run_limited(["fastulm.export", clas, out, "--force"], limit))
    assert "File too large" in line, line
    assert files(out) == before and leftovers(out) == []
    inference.load(out)  # still complete: its checksums hold


# ------------------------------------------------------------------ a full standard output


@pytest.mark.parametrize("unbuffered", [False, True])
@pytest.mark.parametrize("command", ["predict --out -", "predict TEXT", "generate"])
def test_a_full_standard_output_is_one_error(clas, lm, tmp_path, command, unbuffered):
    """Standard output redirected to a file on a full disk. Under PYTHONUNBUFFERED (set in
    many container images) a short write used to be dropped silently (exit 0, a truncated
    CSV); otherwise the exit failed with "Exception ignored" lines."""
    texts = tmp_path / "texts.txt"
    texts.write_text("a great film\nawful\n")
    one = ["--workers", "1"]
    args = {
        "predict --out -": ["fastulm.predict", clas, "--file", texts, "--out", "-", *one],
        "predict TEXT": ["fastulm.predict", clas, "a great film " * 20, *one],
        "generate": ["fastulm.generate", lm, "the film", "--n-words", "30", "--seed", "0"],
    }[command]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    with open(tmp_path / "out.txt", "wb") as out:
        proc = run_limited(args, 8, stdout=out, env=env)
    assert error_line(proc) == "error: standard output: cannot write (File too large)"


# ------------------------------------------------------------------ killed while writing


HOLD_FOLDER = """
import sys, time
from pathlib import Path
from fastulm.files import atomic_folder

def write(tmp):
    (tmp / "model.onnx").write_bytes(b"half")
    print(tmp, flush=True)
    time.sleep(600)

atomic_folder(sys.argv[1], write)
"""


def _hold_folder(out: Path) -> tuple[subprocess.Popen, Path]:
    """A process stopped inside atomic_folder's write, and the temporary folder it fills."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_FOLDER, str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    return proc, Path(proc.stdout.readline().strip())


def test_a_killed_export_keeps_the_earlier_one_and_the_next_run_sweeps(clas, tmp_path):
    pytest.importorskip("onnx")
    from fastulm import export, inference

    out = tmp_path / "export"
    export.export_run(clas, out)
    before = files(out)
    proc, tmp = _hold_folder(out)
    live, live_tmp = _hold_folder(tmp_path / "other")
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(TIMEOUT)
        assert files(out) == before and tmp.is_dir()  # the earlier export, whole
        inference.load(out)
        export.export_run(clas, out, force=True)  # sweeps the killed run's folder ...
        assert not tmp.exists() and files(out) == before
        export.export_run(clas, tmp_path / "other")  # ... never a live run's
        assert live_tmp.is_dir() and (live_tmp / "model.onnx").read_bytes() == b"half"
    finally:
        live.kill()
        live.wait(TIMEOUT)


def test_an_export_moved_aside_by_a_killed_run_is_put_back(clas, tmp_path):
    """Killed between moving the earlier export aside and renaming the new one in: the next
    run puts the earlier one back (it used to sweep it away as a leftover)."""
    pytest.importorskip("onnx")
    from fastulm import export, inference
    from fastulm.files import WriteError

    out = tmp_path / "export"
    export.export_run(clas, out)
    before = files(out)
    os.replace(out, tmp_path / ".export.old-99999")
    with pytest.raises(WriteError, match="a model export is already there"):
        export.export_run(clas, out)
    assert files(out) == before and leftovers(out) == []
    inference.load(out)
