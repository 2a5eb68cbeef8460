"""scripts/imdb_pipeline.py on a CPU slice of the archive, so it works the first time a GPU
is at hand: a call that runs out of its time budget exits 75 and the next call resumes."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastulm.train.presets import get_preset

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "imdb_pipeline.py"


def _load():
    spec = importlib.util.spec_from_file_location("imdb_pipeline", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.full_data
def test_pipeline_slice_resumes(imdb_archive, tmp_path):
    pipe = _load()
    work = tmp_path / "work"
    base = ["--archive", str(imdb_archive), "--work", str(work), "--limit", "12"]
    base += ["--preset", "tiny", "--device", "cpu", "--workers", "1"]
    base += ["--lm-args", "--threads 1 --bs 16", "--clas-args", "--threads 1 --bs 8"]
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
    assert set(state["elapsed"]) == {"slice", "tokenize", "lm", "clas"}
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
    }
    args = ["--limit", "8", "--preset", "tiny", "--device", "cpu", "--workers", "1"]
    args += ["--lm-args", "--threads 1 --bs 8", "--clas-args", "--threads 1 --bs 8"]
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
    assert {"pipeline.json", "clas_log.csv", "lm_losses.png"} <= {p.name for p in out.iterdir()}
