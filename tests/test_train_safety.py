"""`python -m fastulm.train` never loses a user's files and stops with a checkpoint:
existing run folders, unwritable places, failed saves, Ctrl-C, --resume's options, damaged
checkpoints, one-class data, file modes, and the small things of its command line."""

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from fastulm import __main__ as fastulm_main
from fastulm.train import __main__ as train_cli
from fastulm.train.__main__ import main as train_main
from fastulm_testkit import TINY_TRAIN, one_torch_thread, write_small_corpus  # noqa: F401


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_small_corpus(tmp_path_factory.mktemp("safety"))


def _files(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _err_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_an_earlier_run_is_refused_without_resume_or_force(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["lm", str(corpus), str(run), *TINY_TRAIN, "--epochs", "1"]) == 0
    before = _files(run)
    capsys.readouterr()
    assert train_main(["lm", str(corpus), str(run), *TINY_TRAIN, "--epochs", "1"]) == 1
    assert "use --force" in _err_line(capsys)
    assert _files(run) == before
    # --force replaces it: a different seed gives different weights
    argv = ["lm", str(corpus), str(run), *TINY_TRAIN, "--epochs", "1", "--seed", "1", "--force"]
    assert train_main(argv) == 0
    assert _files(run)["model.safetensors"] != before["model.safetensors"]


def test_force_never_deletes_a_folder_fastulm_did_not_write(corpus, tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("years of work")
    argv = ["lm", str(corpus), str(notes), *TINY_TRAIN, "--epochs", "1", "--force"]
    assert train_main(argv) == 1
    assert "thesis.tex" in _err_line(capsys)
    assert sorted(p.name for p in notes.iterdir()) == ["thesis.tex"]
    # a run folder with a user's file inside is not a run folder either
    run = tmp_path / "run"
    assert train_main(["lm", str(corpus), str(run), *TINY_TRAIN, "--epochs", "0"]) == 0
    (run / "my_notes.txt").write_text("keep")
    assert train_main(["lm", str(corpus), str(run), *TINY_TRAIN, "--epochs", "0", "--force"]) == 1
    assert (run / "my_notes.txt").read_text() == "keep"


def test_an_unwritable_run_dir_fails_before_any_work(corpus, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    t0 = time.monotonic()
    assert train_main(["lm", str(corpus), str(tmp_path / "file" / "run"), *TINY_TRAIN]) == 1
    assert "cannot write" in _err_line(capsys)
    assert time.monotonic() - t0 < 5  # refused up front, not after training


def test_a_failed_save_names_the_file_and_keeps_what_was_saved(
    corpus, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    argv = ["lm", str(corpus), str(run), *TINY_TRAIN, "--frozen-epochs", "1", "--epochs", "1"]
    real_save = torch.save
    calls = []

    def full_disk(obj, f, *a, **kw):  # the first checkpoint is written, then the disk fills
        calls.append(1)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    assert train_main(argv) == 1
    line = _err_line(capsys)
    assert "last.pt" in line and "No space left on device" in line
    # the first epoch's checkpoint is intact and resumable, and no temporary file is left
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"]
    assert train_main(["lm", str(corpus), str(run), *TINY_TRAIN, "--resume"]) == 0


def test_resume_takes_the_runs_own_options(corpus, tmp_path, capsys):
    """The run was started with --preset tiny and --emb-sz 32; a resume that repeats
    neither used to build the paper-size model and fail on the checkpoint's shapes."""
    run = tmp_path / "run"
    argv = ["lm", str(corpus), str(run), *TINY_TRAIN, "--emb-sz", "32", "--time-limit", "0"]
    assert train_main(argv) == train_cli.EXIT_TIME_LIMIT
    assert train_main(["lm", str(corpus), str(run), "--resume", "--quiet", "--threads", "1"]) == 0
    weights = load_file(str(run / "model.safetensors"))
    assert weights["0.encoder.weight"].shape[1] == 32
    capsys.readouterr()
    again = ["lm", str(corpus), str(run), "--resume", "--emb-sz", "48"]
    assert train_main(again) == 1
    assert "--emb-sz 48 differs from the run's 32" in _err_line(capsys)


def test_resume_refuses_a_damaged_checkpoint(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["lm", str(corpus), str(run), *TINY_TRAIN, "--time-limit", "0"]
    assert train_main(argv) == train_cli.EXIT_TIME_LIMIT
    last = run / "checkpoints" / "last.pt"
    raw = bytearray(last.read_bytes())
    raw[raw.index(b"data/0") + 200] ^= 0x04  # inside a stored tensor
    last.write_bytes(bytes(raw))
    capsys.readouterr()
    assert train_main(["lm", str(corpus), str(run), "--resume"]) == 1
    assert "last.pt" in _err_line(capsys)
    assert not (run / "model.safetensors").exists()


def test_stop_request_checkpoints_at_a_step_and_resumes_to_the_same_model(corpus, tmp_path):
    """What Ctrl-C does, in process: stop after some steps with a checkpoint, resume, and
    end with exactly the weights of an uninterrupted run."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    base = ["lm", str(corpus)]
    assert train_main([*base, str(whole), *TINY_TRAIN]) == 0

    class StopAfter:  # the signal handler's flag, as the trainer asks it at each step
        def __init__(self, n):
            self.asked, self.n = 0, n

        @property
        def requested(self):
            self.asked += 1
            return self.asked >= self.n

        def check(self):
            pass

    from fastulm.train.learner import StopRequested

    args = train_cli._parser().parse_args([*base, str(split), *TINY_TRAIN])
    with pytest.raises(StopRequested, match="checkpoint written"):
        train_cli.run(args, StopAfter(5))
    assert (split / "checkpoints" / "last.pt").is_file()
    assert not (split / "model.safetensors").exists()
    assert train_main([*base, str(split), "--resume"]) == 0
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigint_stops_with_a_checkpoint_and_true_advice(corpus, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "fastulm.train", "lm", str(corpus), str(run), *TINY_TRAIN]
    cmd += ["--epochs", "500"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the epoch table's header is printed as training starts
    for line in proc.stdout:
        if "train_loss" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "checkpoint written to" in err and "--resume" in err
    assert (run / "checkpoints" / "last.pt").is_file()


def test_a_stop_before_training_does_not_promise_a_resume(corpus, tmp_path, capsys):
    class Stopped:  # Ctrl-C came while the corpus was being opened
        requested = True
        exit_code = 130

        def check(self):
            raise KeyboardInterrupt

    args = train_cli._parser().parse_args(["lm", str(corpus), str(tmp_path / "r"), *TINY_TRAIN])
    assert train_cli._main(args, Stopped()) == 130
    line = _err_line(capsys)
    assert "nothing to resume" in line and "--resume" not in line


def test_one_class_training_set_is_refused(tmp_path, capsys):
    """tokenize refuses a one-class table; a corpus made another way (the Python API) is
    refused by train clas, before a 1-class classifier that always answers the same."""
    import numpy as np

    from fastulm.data.corpus import split_batch, write_corpus
    from fastulm.data.vocab import Vocab
    from fastulm.tokenize import main as tokenize_main

    rows = ["label,text,is_valid"] + [f"pos,review {i} was fine,{i % 4 == 0}" for i in range(40)]
    (tmp_path / "one.csv").write_text("\n".join(rows) + "\n")
    argv = [str(tmp_path / "one.csv"), str(tmp_path / "tok"), "--workers", "1", "--quiet"]
    assert tokenize_main(argv) == 1
    assert "one class" in _err_line(capsys)
    vocab = Vocab(["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "fine"])
    docs = np.array([2, 8] * 20, np.int32)
    offsets = np.arange(0, 41, 2)
    batch = split_batch(docs, offsets, np.zeros(20, np.int64), map(str, range(20)))
    corpus = write_corpus(
        tmp_path / "corpus", vocab, {"train": batch, "valid": batch}, {"label_names": ["pos"]}
    )
    argv = ["clas", str(corpus), str(tmp_path / "c"), *TINY_TRAIN]
    assert train_main(argv) == 1
    assert "only one class ('pos')" in _err_line(capsys)
    assert not (tmp_path / "c").exists()


def test_run_files_follow_the_umask(corpus, tmp_path):
    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        assert train_main(["lm", str(corpus), str(run), *TINY_TRAIN, "--epochs", "1"]) == 0
    finally:
        os.umask(old)
    modes = {str(p.relative_to(run)): stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*")}
    assert "checkpoints/last.pt" in modes and "losses.png" in modes
    for name, mode in modes.items():
        assert mode == (0o755 if (run / name).is_dir() else 0o644), name


def test_quiet_keeps_the_epoch_table(corpus, tmp_path, capsys):
    assert train_main(["lm", str(corpus), str(tmp_path / "r"), *TINY_TRAIN, "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "train_loss" in out and "valid_loss" in out


def test_a_long_cpu_run_says_so_before_starting(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_cli, "CPU_WARN_S", 0)
    assert train_main(["lm", str(corpus), str(tmp_path / "r"), *TINY_TRAIN, "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "warning: the 'tiny' preset on this CPU: about" in err


def test_training_seconds_is_six_flops_per_parameter_per_token():
    from fastulm.model import AWDLSTMConfig, get_classifier, get_language_model
    from fastulm.train import estimate

    lm = get_language_model(100, AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2))
    n = sum(p.numel() for p in lm.parameters())
    assert estimate.training_seconds(lm, "lm", 1000, 6e9) == pytest.approx(n * 1e-6)
    clas = get_classifier(100, 2, AWDLSTMConfig(emb_sz=8, n_hid=16, n_layers=2))
    m = sum(p.numel() for p in clas.parameters()) - 100 * 8  # the embedding is only looked up
    assert estimate.training_seconds(clas, "clas", 1000, 6e9) == pytest.approx(m * 1e-6)
    assert estimate.describe(3 * 86400) == "about 3 days"


@pytest.mark.parametrize("flag", ["--epoch", "--frozen", "--check"])
def test_abbreviated_options_are_usage_errors(corpus, tmp_path, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        train_main(["lm", str(corpus), str(tmp_path / "r"), *TINY_TRAIN, flag, "1"])
    assert exc.value.code == 2
    assert not (tmp_path / "r").exists()


def test_help_shows_each_default_once():
    for stage in ("lm", "clas"):
        text = train_cli._parser()._subparsers._group_actions[0].choices[stage].format_help()
        assert "(default: None)" not in text and "(default: False)" not in text
        for line in text.splitlines():
            assert line.count("default") <= 1, line


def test_one_fastulm_command_runs_every_cli(corpus, tmp_path, capsys):
    assert fastulm_main.main([]) == 0
    listing = capsys.readouterr().out
    for name in ("tokenize", "train", "predict", "generate"):
        assert f"  {name}" in listing
    assert fastulm_main.main(["nope"]) == 2
    argv = ["train", "lm", str(corpus), str(tmp_path / "r"), *TINY_TRAIN, "--epochs", "0"]
    assert fastulm_main.main(argv) == 0
    assert (tmp_path / "r" / "model.safetensors").is_file()
    res = subprocess.run([sys.executable, "-m", "fastulm"], capture_output=True, text=True)
    assert res.returncode == 0 and "generate" in res.stdout


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda c, v: c.pop("model"), "config.json: damaged (kind or model missing)"),
        (lambda c, v: c.update(kind="x"), "config.json: damaged (kind or model missing)"),
        (lambda c, v: c.update(model={"emb_sz": "big"}), "config.json: damaged model config"),
        # the vocab no longer fits the weights: the file at fault is named, not a tensor shape
        (lambda c, v: v.append("extra"), "vocab.json: damaged ("),
        (lambda c, v: v.clear(), "vocab.json: damaged"),
    ],
)
def test_damaged_run_files_are_one_error_line(corpus, tmp_path, capsys, change, says):
    """What predict and generate read back: a hand-edited or damaged config.json or vocab.json
    used to give a KeyError/TypeError traceback, or torch's many-line state-dict dump."""
    import json

    from fastulm import generate

    run = tmp_path / "run"
    assert train_main(["lm", str(corpus), str(run), *TINY_TRAIN, "--epochs", "0"]) == 0
    config = json.loads((run / "config.json").read_text())
    vocab = json.loads((run / "vocab.json").read_text())
    change(config, vocab)
    (run / "config.json").write_text(json.dumps(config))
    (run / "vocab.json").write_text(json.dumps(vocab))
    capsys.readouterr()
    assert generate.main([str(run), "hello"]) == 1
    assert says in _err_line(capsys)


def test_force_never_clears_the_run_whose_encoder_it_reads(corpus, tmp_path, capsys):
    lm = tmp_path / "lm"
    assert train_main(["lm", str(corpus), str(lm), *TINY_TRAIN, "--epochs", "0"]) == 0
    before = _files(lm)
    capsys.readouterr()
    argv = ["clas", str(corpus), str(lm), *TINY_TRAIN, "--encoder", str(lm), "--force"]
    assert train_main(argv) == 1
    assert "would replace the source" in _err_line(capsys)
    assert _files(lm) == before


def test_max_memory_plans_before_training(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["clas", str(corpus), str(run), *TINY_TRAIN, "--final-epochs", "1"]
    assert train_main([*argv, "--max-memory", "1GiB"]) == 0
    out = capsys.readouterr().out
    assert "bs 8" in out  # an ample budget keeps the asked batch size (--bs 8 is the maximum)
    settings = json.loads((run / "train_args.json").read_text())["settings"]
    assert settings["bs"] == 8
    bad = ["clas", str(corpus), str(tmp_path / "r2"), *TINY_TRAIN, "--max-memory"]
    assert train_main([*bad, "8XB"]) == 1
    assert "is not a size" in _err_line(capsys)
    assert train_main([*bad, "1KiB"]) == 1
    assert "the smallest budget that works is" in _err_line(capsys)
    assert not (tmp_path / "r2").exists()


@pytest.mark.parametrize(
    "mine", ["checkpoints/notes.txt", "models/keep/best.safetensors", "checkpoints/last.pt/x"]
)
def test_force_looks_inside_a_runs_subfolders(corpus, tmp_path, capsys, mine):
    """--force clears a run's own checkpoints/ and models/ files, never what a user put
    there; an old run's predictions.csv (the user's output) stays where it is."""
    run = tmp_path / "run"
    assert train_main(["lm", str(corpus), str(run), *TINY_TRAIN, "--epochs", "0"]) == 0
    if mine == "checkpoints/last.pt/x":
        (run / "checkpoints" / "last.pt").unlink(missing_ok=True)
    (run / mine).parent.mkdir(parents=True, exist_ok=True)
    (run / mine).write_text("the user's")
    capsys.readouterr()
    argv = ["lm", str(corpus), str(run), *TINY_TRAIN, "--epochs", "0", "--force"]
    assert train_main(argv) == 1
    assert "is not a run directory fastulm wrote" in _err_line(capsys)
    assert (run / mine).read_text() == "the user's"
    # without it, --force clears the run, and keeps a predictions.csv
    (run / mine).unlink()
    (run / "models" / "saved.safetensors").parent.mkdir(exist_ok=True)
    (run / "predictions.csv").write_text("id,label,p_neg,p_pos\n1,neg,0.9,0.1\n")
    for folder in sorted({(run / mine).parent, *(run / mine).parents} - {run, *run.parents}):
        if (
            folder.is_dir()
            and not any(folder.iterdir())
            and folder.name
            not in (
                "checkpoints",
                "models",
            )
        ):
            folder.rmdir()
    assert train_main(argv) == 0
    assert (run / "predictions.csv").read_text().startswith("id,label")
    assert not (run / "models").exists()


# ------------------------------------------------------------------ --force keeps the earlier run
# until the new one has a checkpoint or its model


def test_force_gives_the_earlier_run_back_when_the_new_one_fails_early(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["lm", str(corpus), str(run), *TINY_TRAIN, "--epochs", "1"]) == 0
    (run / "predictions.csv").write_text("id,label\n1,neg\n")
    before = _files(run)
    capsys.readouterr()
    # the memory plan fails after the run folder was prepared, before any checkpoint
    argv = ["lm", str(corpus), str(run), *TINY_TRAIN, "--epochs", "1", "--seed", "1", "--force"]
    assert train_main([*argv, "--max-memory", "1KiB"]) == 1
    assert "memory" in _err_line(capsys)
    assert _files(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing left aside
    assert train_main(argv) == 0  # a run that gets somewhere replaces it
    assert _files(run)["model.safetensors"] != before["model.safetensors"]
    assert (run / "predictions.csv").read_text() == "id,label\n1,neg\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


KILLED_FORCE = """
import os, signal, sys
from pathlib import Path
from fastulm.train.run_dir import prepare_run_dir

run = Path(sys.argv[1])
prepare_run_dir(run, force=True)
(run / "train_args.json").write_text("{}")  # the new run started ...
if sys.argv[2] == "checkpoint":  # ... and got as far as a checkpoint
    (run / "checkpoints" / "last.pt").write_bytes(b"the new run's")
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("got_to", ["nowhere", "checkpoint"])
def test_a_killed_force_run_is_settled_by_the_next_start(corpus, tmp_path, capsys, got_to):
    run = tmp_path / "run"
    assert train_main(["lm", str(corpus), str(run), *TINY_TRAIN, "--epochs", "0"]) == 0
    before = _files(run)
    proc = subprocess.run([sys.executable, "-c", KILLED_FORCE, str(run), got_to])
    assert proc.returncode == -signal.SIGKILL
    aside = [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.old-")]
    assert len(aside) == 1  # the earlier run, set aside
    capsys.readouterr()
    assert train_main(["lm", str(corpus), str(run), *TINY_TRAIN, "--epochs", "0"]) == 1
    assert "use --force" in _err_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    if got_to == "nowhere":  # the earlier run is back, whole
        assert _files(run) == before
    else:  # the killed run had a checkpoint: it stands, to be resumed
        assert (run / "checkpoints" / "last.pt").read_bytes() == b"the new run's"
        assert "model.safetensors" not in _files(run)


def test_a_folder_aside_that_is_not_a_run_is_left_alone(corpus, tmp_path):
    mine = tmp_path / ".run.old-7"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    run = tmp_path / "run"
    assert train_main(["lm", str(corpus), str(run), *TINY_TRAIN, "--epochs", "0"]) == 0
    assert (mine / "notes.txt").read_text() == "mine"


def test_force_clears_the_earlier_run_where_it_cannot_be_set_aside(
    corpus, tmp_path, capsys, monkeypatch
):
    """RUN_DIR a mount point: its files cannot be renamed beside it (EXDEV). What was moved
    goes back, and --force clears the earlier run as it always did, saying so."""
    run = tmp_path / "run"
    assert train_main(["lm", str(corpus), str(run), *TINY_TRAIN, "--epochs", "1"]) == 0
    before = _files(run)
    rename = os.replace
    moved = []

    def across_devices(src, dst):
        if ".run.old-" in str(dst) and ".run.old-" not in str(src):
            if moved:  # the second file: the first has moved already
                raise OSError(18, "Invalid cross-device link")
            moved.append(src)
        rename(src, dst)

    monkeypatch.setattr(os, "replace", across_devices)
    capsys.readouterr()
    argv = ["lm", str(corpus), str(run), *TINY_TRAIN, "--epochs", "1", "--seed", "1", "--force"]
    assert train_main(argv) == 0
    assert "cannot set the earlier run aside" in capsys.readouterr().err
    assert moved and _files(run)["model.safetensors"] != before["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_run_in_the_working_directory_keeps_its_layout(corpus, tmp_path, monkeypatch):
    """RUN_DIR "." used to put the encoder in models/ (``Path(".") / "encoder"`` is a bare
    name, which the learner reads as one of models/), and the folder was then no run folder
    for --force or --resume. --force there sets the earlier run aside beside it."""
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    argv = ["lm", str(corpus), ".", *TINY_TRAIN, "--epochs", "0"]
    assert train_main(argv) == 0
    assert (run / "encoder.safetensors").is_file() and not (run / "models").exists()
    before = _files(run)
    assert train_main([*argv, "--force", "--max-memory", "1KiB"]) == 1  # fails: put back
    assert _files(run) == before
    assert train_main([*argv, "--force", "--seed", "1"]) == 0
    assert _files(run)["model.safetensors"] != before["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
