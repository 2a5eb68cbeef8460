"""scripts/imdb_pipeline.py on the CPU, so it works the first time a GPU is at hand: the
budgeted recipe (probe, plan, LM, classifier, final evaluation, result.json) on a small
synthetic aclImdb folder; the plan's arithmetic; a CPU slice of the real archive, where a call
without time for one LM epoch exits 75 and the next call resumes."""

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fastulm.train.presets import get_preset

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "imdb_pipeline.py"


def _load():
    spec = importlib.util.spec_from_file_location("imdb_pipeline", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


POS = [
    "great",
    "wonderful",
    "loved",
    "superb",
    "brilliant",
    "moving",
    "funny",
    "best",
    "enjoyed",
    "beautiful",
]
NEG = [
    "awful",
    "boring",
    "hated",
    "terrible",
    "worst",
    "dull",
    "stupid",
    "waste",
    "poor",
    "annoying",
]
FILL = [
    "the",
    "movie",
    "film",
    "plot",
    "actors",
    "story",
    "scenes",
    "it",
    "was",
    "and",
    "a",
    "of",
    "to",
    "this",
    "with",
]


def make_fake_imdb(root: Path, n: int = 24, seed: int = 0, ratings: bool = False) -> Path:
    """An aclImdb folder of ``n`` reviews per class of train and test and ``n`` unlabelled:
    filler words plus words of the review's class, so a tiny classifier can learn it.
    ``ratings``: the file names' ratings cycle through 7-10 (pos) and 1-4 (neg), not 7 / 2."""
    rng = random.Random(seed)
    for folder, words in (
        ("train/pos", POS),
        ("train/neg", NEG),
        ("test/pos", POS),
        ("test/neg", NEG),
        ("train/unsup", POS + NEG),
    ):
        d = root / "aclImdb" / folder
        d.mkdir(parents=True)
        for i in range(n):
            text = " ".join(rng.choice(words if rng.random() < 0.3 else FILL) for _ in range(40))
            rating = (7 if "pos" in folder else 1) + (
                i % 4 if ratings else 0 if "pos" in folder else 1
            )
            if "unsup" in folder:
                rating = 0
            (d / f"{i}_{rating}.txt").write_text(text.capitalize() + ".")
    return root / "aclImdb"


@pytest.mark.slow
def test_budgeted_recipe_end_to_end_on_the_cpu(tmp_path):
    """Probe, plan, the planned LM one-cycle, the classifier, then every test review scored:
    result.json holds the figure, the plan and the timings."""
    pipe = _load()
    src = make_fake_imdb(tmp_path / "data")
    work = tmp_path / "work"
    args = ["--archive", str(src), "--work", str(work), "--preset", "tiny", "--device", "cpu"]
    args += ["--workers", "1", "--time-budget", "4", "--max-lm-epochs", "2"]
    args += ["--lm-bs", "8", "--clas-bs", "8", "--probe-steps", "2"]
    args += ["--lm-args", "--threads 1", "--clas-args", "--threads 1"]
    assert pipe.main(args) == 0
    result = json.loads((work / "result.json").read_text())
    assert result["complete"] and result["within_budget"]
    assert result["n_test"] == 48 and 0.0 <= result["test_accuracy"] <= 1.0
    plan = result["plan"]
    assert plan["feasible"] and plan["lm_epochs"] == 2  # capped by --max-lm-epochs
    assert result["lm_epochs"] == 2  # the one-cycle ran to its end
    train_args = json.loads((work / "lm" / "train_args.json").read_text())
    assert [(s["freeze_to"], s["epochs"]) for s in train_args["stages"]] == [(0, 2)]
    n_clas = 3 + plan["clas_final_epochs_run"]
    assert len(result["clas_epochs"]) == n_clas
    # the final evaluation and the last validation epoch score the same documents
    assert result["test_accuracy"] == pytest.approx(result["clas_epochs"][-1]["accuracy"])
    assert result["measured"]["lm"]["tokens_per_s"] > 0
    assert set(result["elapsed"]) == {"tokenize", "probe", "lm", "clas", "evaluate"}
    # the record the IMDB issue names
    assert result["pretrained"] is None and result["recipe"]["lm"]["bs"] == 8
    assert result["recipe"]["clas_bs"] == 8 and result["recipe"]["device"] == "cpu"
    assert result["device"] and result["device"] != "cpu"  # the CPU's model
    assert result["lm_valid_accuracy"] == result["lm_rows"][-1]["accuracy"]
    assert result["lm_perplexity"] == result["lm_rows"][-1]["perplexity"]
    assert result["lm_tokens_per_s"]["stage"] > 0
    # a finished work folder: the next call only reports
    assert pipe.main(args) == 0
    _kept_and_plotted(work / "result.json", work / "pipeline.json", tmp_path / "gpu")


def _kept_and_plotted(result: Path, extra: Path, folder: Path) -> None:
    """scripts/imdb_record.py keeps each run under the next free number, never replacing
    one, and plots every complete run."""
    spec = importlib.util.spec_from_file_location("imdb_record", SCRIPT.with_name("imdb_record.py"))
    rec = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rec)
    date = json.loads(result.read_text())["date"]
    for n in (1, 2):
        assert rec.main([str(result), str(extra), "--folder", str(folder)]) == 0
        assert (folder / f"imdb-{date}-{n}.json").read_text() == result.read_text()
        assert (folder / f"imdb-{date}-{n}.pipeline.json").read_bytes() == extra.read_bytes()
    runs = rec.load_runs(folder)
    assert [r["file"] for r in runs] == [f"imdb-{date}-1.json", f"imdb-{date}-2.json"]
    png = folder / "imdb_accuracy_vs_time.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = folder.parent / "bad.json"
    bad.write_text('{"test_accuracy": 0.9}')
    assert rec.main([str(bad), "--folder", str(folder)]) == 1
    assert len(rec.load_runs(folder)) == 2


@pytest.mark.slow
def test_budgeted_recipe_with_qrnn_layers(tmp_path):
    """--arch qrnn: the probe, the LM and the classifier all run QRNN layers."""
    pipe = _load()
    src = make_fake_imdb(tmp_path / "data", n=12)
    work = tmp_path / "work"
    args = ["--archive", str(src), "--work", str(work), "--preset", "tiny", "--device", "cpu"]
    args += ["--workers", "1", "--time-budget", "4", "--max-lm-epochs", "1", "--arch", "qrnn"]
    args += ["--lm-bs", "8", "--clas-bs", "8", "--probe-steps", "2"]
    args += ["--lm-args", "--threads 1", "--clas-args", "--threads 1"]
    assert pipe.main(args) == 0
    result = json.loads((work / "result.json").read_text())
    assert result["complete"] and result["n_test"] == 24 and "arch qrnn" in result["setup"]
    for run in ("lm", "clas"):
        config = json.loads((work / run / "config.json").read_text())
        assert config["model"]["arch"] == "qrnn", run


@pytest.mark.slow
def test_ratings_stage_on_the_same_lm(tmp_path):
    """--ratings: after the 2-class run, the 8-class rating task from the file names, on the
    LM's vocab and encoder, scored on every test review; a call cut short resumes it."""
    import numpy as np

    from fastulm.data.corpus import open_corpus

    pipe = _load()
    src = make_fake_imdb(tmp_path / "data", n=16, ratings=True)
    work = tmp_path / "work"
    args = ["--archive", str(src), "--work", str(work), "--preset", "tiny", "--device", "cpu"]
    args += ["--workers", "1", "--max-lm-epochs", "1", "--lm-bs", "8", "--clas-bs", "8"]
    args += ["--probe-steps", "2", "--lm-args", "--threads 1", "--clas-args", "--threads 1"]
    assert pipe.main([*args, "--time-budget", "4"]) == 0  # the 2-class run alone
    state = json.loads((work / "pipeline.json").read_text())
    state["elapsed"]["clas"] = 1e6  # pretend the budget is spent: ratings must wait
    (work / "pipeline.json").write_text(json.dumps(state))
    os.environ["FASTULM_CALL_T0"] = str(0)  # the call started long ago
    try:
        assert pipe.main([*args, "--time-budget", "4", "--ratings"]) == pipe.EXIT_TIME_LIMIT
    finally:
        del os.environ["FASTULM_CALL_T0"]
    assert (work / "ratings_corpus" / "meta.json").is_file()  # done before the budget check
    assert not (work / "ratings" / "model.safetensors").exists()
    assert pipe.main([*args, "--time-budget", "4", "--ratings"]) == 0  # resumes
    rc = open_corpus(work / "ratings_corpus")
    assert rc.label_names == ["1", "10", "2", "3", "4", "7", "8", "9"]  # fastai's str order
    assert (work / "ratings_corpus" / "vocab.json").read_text() == (
        work / "corpus" / "vocab.json"
    ).read_text()
    result = json.loads((work / "result.json").read_text())
    r = result["ratings"]
    assert r["n_test"] == 32 and r["n_classes"] == 8 and r["label_names"] == rc.label_names
    # the figures from the run's own predictions, recomputed here
    from fastulm.prediction import classifier_logits
    from fastulm.run_reader import load_run

    test = rc["test"]
    logits = classifier_logits(load_run(work / "ratings").model, [test.doc(i) for i in range(32)])
    labels = np.asarray(test.labels)
    assert r["test_accuracy"] == pytest.approx(float((logits.argmax(1) == labels).mean()))
    assert r["majority_class_accuracy"] == pytest.approx(4 / 32)  # 4 reviews per rating
    assert result["ratings_epochs"] and result["test_accuracy"] is not None


def _measured(lm_tok_s=1e5, clas_tok_s=1e5):
    return {
        "precision": "bf16",
        "lm": {"tokens_per_s": lm_tok_s, "tokens_per_epoch": 1e7, "valid_tokens": 3e6},
        "clas": {
            "tokens_per_s": clas_tok_s,
            "valid_tokens_per_s": 3 * clas_tok_s,
            "train_tokens_per_epoch": 1e6,
            "valid_tokens": 3e6,
        },
        "lm_splits": {"train": 2e6, "test": 2e6, "unsup": 6e6},
    }


def test_plan_sizes_the_lm_to_the_time_left():
    pipe = _load()
    preset = get_preset("paper")
    args = SimpleNamespace(safety=1.0, max_lm_epochs=12)
    # LM epoch 110 s (+2 checkpoint); classifier epoch 10 + 10 + 2 = 22 s, 5 epochs
    plan = pipe.make_plan(_measured(), preset, 600.0, args, startup_s=20.0)
    assert plan["feasible"] and plan["clas_final_epochs"] == 2 and plan["lm_splits"] is None
    # 600 - (5 x 22 + 20) - eval (10 + 10) - startup 20 = 430 s: 3 epochs of 112 s
    assert plan["lm_epochs"] == 3
    # more time: capped by --max-lm-epochs
    assert pipe.make_plan(_measured(), preset, 1e5, args, 20.0)["lm_epochs"] == 12
    # short: the classifier's last stage drops to 1 epoch before the LM loses its only epoch
    plan = pipe.make_plan(_measured(), preset, 280.0, args, 20.0)
    assert (plan["lm_epochs"], plan["clas_final_epochs"]) == (1, 1)
    # shorter: one epoch of fewer documents (train + unsup: 80% of the tokens)
    plan = pipe.make_plan(_measured(), preset, 250.0, args, 20.0)
    assert plan["lm_splits"] == ["train", "unsup"] and plan["lm_epochs"] == 1
    # nothing fits
    assert not pipe.make_plan(_measured(), preset, 100.0, args, 20.0)["feasible"]
    lm = {"bs": 128, "bptt": 80, "lr": 1e-2}
    assert pipe._lm_stage_args({"lm_epochs": 3, "lm_splits": None}, lm) == [
        *("--bs", "128", "--bptt", "80", "--lr", "0.01"),
        *("--frozen-epochs", "3", "--epochs", "0"),
    ]


@pytest.mark.slow
@pytest.mark.full_data
def test_pipeline_slice_resumes(imdb_archive, tmp_path):
    pipe = _load()
    work = tmp_path / "work"
    base = ["--archive", str(imdb_archive), "--work", str(work), "--limit", "12"]
    base += ["--preset", "tiny", "--device", "cpu", "--workers", "1"]
    base += ["--lm-bs", "16", "--clas-bs", "8", "--max-lm-epochs", "2"]
    base += ["--lm-args", "--threads 1", "--clas-args", "--threads 1"]
    # a budget too small for any training: the data steps run, then it asks to be called again
    assert pipe.main([*base, "--time-budget", "0.2"]) == pipe.EXIT_TIME_LIMIT
    assert (work / "corpus" / "meta.json").is_file()
    meta = json.loads((work / "corpus" / "meta.json").read_text())
    assert {k: v["docs"] for k, v in meta["splits"].items()} == {
        "train": 24,
        "test": 24,
        "unsup": 12,
    }
    assert not (work / "lm").exists()
    assert pipe.main([*base, "--time-budget", "20"]) == 0
    n_epochs = sum(st.epochs for st in get_preset("tiny").clas.stages)
    report = (work / "time_to_accuracy.md").read_text()
    assert f"| {n_epochs} |" in report  # every classifier epoch with its test accuracy
    state = json.loads((work / "pipeline.json").read_text())
    assert set(state["elapsed"]) == {"slice", "tokenize", "probe", "lm", "clas", "evaluate"}
    assert json.loads((work / "result.json").read_text())["n_test"] == 24
    rows = [json.loads(x) for x in (work / "clas" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == n_epochs and 0.0 <= rows[-1]["accuracy"] <= 1.0
    # a finished work folder: the next call only reports
    assert pipe.main([*base, "--time-budget", "1"]) == 0


@pytest.mark.slow
@pytest.mark.full_data
def test_gpu_pipeline_script_as_on_the_device(imdb_archive, tmp_path):
    """scripts/gpu_pipeline.sh the way a device call runs it: fastulm installed by
    device_env.sh (no venv there), the archive carried in ./devdata or named by
    FASTULM_DATA, results copied to $OUT."""
    repo = SCRIPT.parents[1]
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHON": sys.executable,
        "FASTULM_SITE": str(tmp_path / "site"),
        "FASTULM_PIPELINE_WORK": str(work),
        "FASTULM_DATA": str(imdb_archive.parent),
        "OUT": str(out),
        "OMP_NUM_THREADS": "1",  # the probe runs in the pipeline's own process
    }
    args = [
        "--time-budget",
        "20",
        "--limit",
        "8",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--workers",
        "1",
    ]
    args += ["--lm-bs", "8", "--clas-bs", "8", "--max-lm-epochs", "1", "--probe-steps", "2"]
    args += ["--lm-args", "--threads 1", "--clas-args", "--threads 1"]
    proc = subprocess.run(
        ["bash", "scripts/gpu_pipeline.sh", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    n_epochs = sum(st.epochs for st in get_preset("tiny").clas.stages)
    assert f"| {n_epochs} |" in (out / "time_to_accuracy.md").read_text()
    names = {p.name for p in out.iterdir()}
    assert {"result.json", "pipeline.log", "clas.log", "lm_losses.png"} <= names
    assert len(names) <= 8  # what a device call brings back
