"""The GPU suite (benchmarks/gpu) rehearsed on the CPU, so a lent GPU session does not lose
its minutes to a typo: argument parsing, the stage order, the time guards, the JSON written
after every measurement, the "claims" object's exact shape and the file count under $OUT."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu" / "suite.py"
CLAIM_KEYS = {"device", "cuda_tests", "lm_step", "clas_step", "max_bs_8gib"}
STEP_KEYS = {"bs", "fastai_s", "fastulm_s", "fastai_peak_mib", "fastulm_peak_mib"}


def _suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check_claims(claims: dict) -> None:
    assert set(claims) == CLAIM_KEYS
    assert set(claims["cuda_tests"]) == {"passed", "failed"}
    assert set(claims["lm_step"]) == STEP_KEYS and set(claims["clas_step"]) == STEP_KEYS
    assert set(claims["max_bs_8gib"]) == {"clas", "lm"}
    for side in claims["max_bs_8gib"].values():
        assert set(side) == {"fastai", "fastulm"}


def _run(args, tmp_path, timeout=300):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OUT", None)
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--cpu", "--out", str(out), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (path,) = out.glob("suite-*.json")
    return proc, out, json.loads(path.read_text())


def test_claims_pick_each_sides_best_and_leave_the_unmeasured_null():
    suite = _suite()
    data = {
        "env": {"device_name": "NVIDIA H200"},
        "tests": {"runs": [{}], "passed": 150, "failed": 2},
        "steps": [
            {"variant": "lm/fastai-fp16", "bs": 48, "step_s": 0.2, "peak_mib": 3000.0},
            {"variant": "lm/fastulm", "bs": 48, "step_s": 0.12, "peak_mib": 900.0},
            {"variant": "lm/fastulm-ckpt", "bs": 48, "step_s": 0.15, "peak_mib": 400.0},
            {"variant": "clas/fastai-fp16", "bs": 48, "error": "OutOfMemoryError: ..."},
            {"variant": "clas/fastulm", "bs": 48, "skipped": "time budget"},
        ],
        "max_batch": [
            {"variant": "lm/fastai-fp16", "largest_fitting_bs": 96},
            {"variant": "lm/fastulm-ckpt", "largest_fitting_bs": 384},
            {"variant": "lm/fastulm", "largest_fitting_bs": 256},
        ],
    }
    claims = suite.claims(data)
    _check_claims(claims)
    assert claims["device"] == "NVIDIA H200"
    assert claims["cuda_tests"] == {"passed": 150, "failed": 2}
    assert claims["lm_step"] == {
        "bs": 48,
        "fastai_s": 0.2,
        "fastulm_s": 0.12,
        "fastai_peak_mib": 3000.0,
        "fastulm_peak_mib": 900.0,
    }
    assert claims["clas_step"] == dict.fromkeys(STEP_KEYS)
    assert claims["max_bs_8gib"] == {
        "clas": {"fastai": None, "fastulm": None},
        "lm": {"fastai": 96, "fastulm": 384},
    }
    assert suite.claims_sources(data)["lm_step"]["fastulm"] == "lm/fastulm"
    # nothing measured at all: the same keys, all null
    _check_claims(suite.claims({}))


def test_deadlines_leave_later_stages_their_seconds():
    suite = _suite()
    clock = suite.Clock(100.0, {s: 10.0 for s in suite.STAGES})
    assert suite.STAGES == [
        "env",
        "bf16_lstm",
        "tests",
        "steps",
        "lm_sweep",
        "max_batch",
        "kernels",
    ]
    assert 39 < clock.start("env") <= 40  # 100 - 6 later stages x 10
    assert 99 < clock.start("kernels") <= 100


def test_no_time_left_still_writes_every_file(tmp_path):
    """A budget of 0: each guarded stage is skipped with its reason, the claims are all there
    (null), and the run still ends 0 with its files."""
    _, out, data = _run(["--budget", "0", "--skip", "tests"], tmp_path)
    _check_claims(data["claims"])
    assert list(data["stages"]) == _suite().STAGES
    assert data["stages"]["tests"] == {"skipped": "--skip"}
    assert all(r.get("skipped") == "time budget" for r in data["steps"])
    assert all(r.get("skipped") == "time budget" for r in data["lm_sweep"])
    assert all(r.get("note") == "time budget" for r in data["max_batch"])
    assert data["claims"]["lm_step"]["fastulm_s"] is None
    assert data["precision"] in ("bf16", "fp32")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"suite-{data['env']['date'][:10]}.json", "suite.md"]
    )


@pytest.mark.slow
def test_cpu_rehearsal_measures_every_stage(tmp_path):
    """Tiny sizes, every stage's code path (the tests stage runs a few CPU kernel cases):
    steps, sweep rows with tokens/s, the batch search, the kernel timings."""
    # a budget no CPU run reaches (every stage ends on its own), so that none is cut short
    proc, out, data = _run(["--budget", "1200", "--test-k", "philox and shape0"], tmp_path, 1500)
    _check_claims(data["claims"])
    assert [s for s, v in data["stages"].items() if v.get("status") != "ok"] == []
    assert data["claims"]["cuda_tests"]["passed"] >= 1
    assert data["claims"]["lm_step"]["fastulm_s"] > 0
    if data["env"]["fastai"]:
        assert data["claims"]["clas_step"]["fastai_s"] > 0
    assert data["claims"]["max_bs_8gib"]["lm"]["fastulm"] == 4
    assert {r["ce_chunk_mb"] for r in data["lm_sweep"]} == {"default", 1024}
    assert all(r["tokens_per_s"] > 0 for r in data["lm_sweep"])
    assert {r.get("impl") for r in data["kernels"]} >= {"fastulm", "reference", "F.dropout"}
    assert not [r for r in data["kernels"] if "ms" not in r]
    assert "tests/kernels" in (out / "tests.log").read_text()
    assert len(list(out.iterdir())) <= 8
    assert "claims {" in proc.stdout


def test_bad_arguments_fail_before_any_work(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--cpu", "--out", str(tmp_path), "--skip", "stepz"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and "stepz" in proc.stderr
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--cpu"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2 and "$OUT" in proc.stderr


@pytest.mark.slow
def test_run_sh_as_on_the_device(tmp_path):
    """benchmarks/gpu/run.sh the way the device call runs it: fastulm installed by
    device_env.sh (no venv there), every file in $OUT, within the 8 that come back."""
    out = tmp_path / "out"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHON": sys.executable,
        "FASTULM_SITE": str(tmp_path / "site"),
        "OUT": str(out),
    }
    args = ["--cpu", "--budget", "0", "--skip", "tests"]
    proc = subprocess.run(
        ["bash", "benchmarks/gpu/run.sh", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    names = {p.name for p in out.iterdir()}
    assert {"suite.log", "env.txt", "suite.md"} <= names
    assert any(n.startswith("suite-") and n.endswith(".json") for n in names)
    assert len(names) <= 8
    assert "claims {" in (out / "suite.log").read_text()
