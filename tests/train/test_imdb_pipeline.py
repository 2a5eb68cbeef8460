"""scripts/imdb_pipeline.py on a CPU slice of the archive, so it works the first time a GPU
is at hand: a call that runs out of its time budget exits 75 and the next call resumes."""

import importlib.util
import json
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
