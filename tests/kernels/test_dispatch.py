"""FASTULM_KERNELS dispatch, and fastulm.kernels without triton installed."""

import os
import subprocess
import sys

import pytest
import torch
from fastulm.kernels import dispatch


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120
    )


def test_auto_uses_torch_on_cpu(monkeypatch):
    monkeypatch.setenv("FASTULM_KERNELS", "auto")
    assert dispatch.use_triton(torch.device("cpu")) is False
    monkeypatch.setenv("FASTULM_KERNELS", "torch")
    assert dispatch.use_triton(torch.device("cpu")) is False


def test_bad_setting_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("FASTULM_KERNELS", "cuda")
    with pytest.raises(ValueError, match="FASTULM_KERNELS='cuda': expected one of auto, triton"):
        dispatch.use_triton(torch.device("cpu"))


def test_imports_and_runs_without_triton():
    """Where triton cannot be imported (macOS, Windows) every op runs on the torch path."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from fastulm.kernels import linear_cross_entropy, masked_concat_pool, weight_drop\n"
        "from fastulm.kernels import dispatch\n"
        "assert dispatch.triton is None\n"
        "x = torch.randn(2, 5, 3, requires_grad=True)\n"
        "m = torch.tensor([[True, False, False, False, False], [False] * 5])\n"
        "masked_concat_pool(x, m, 2).sum().backward()\n"
        "w = torch.randn(4, 3, requires_grad=True)\n"
        "weight_drop(w, 0.5, 1).sum().backward()\n"
        "loss, n = linear_cross_entropy(torch.randn(6, 3), w, None, torch.arange(6) % 4)\n"
        "print('ok', float(loss) > 0)\n"
    )
    proc = run_python(code, FASTULM_KERNELS="auto")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok True"


def test_forcing_triton_without_interpreter_says_how():
    """FASTULM_KERNELS=triton on CPU tensors when the interpreter was not enabled at import."""
    if dispatch.triton is None:
        pytest.skip("triton is not installed")
    if dispatch.INTERPRETER_PROBLEM:
        pytest.skip(dispatch.INTERPRETER_PROBLEM)
    code = (
        "import os, torch\n"
        "import fastulm.kernels as k\n"
        "os.environ['FASTULM_KERNELS'] = 'triton'\n"
        "k.weight_drop(torch.randn(3, 3), 0.5, 1)\n"
    )
    proc = run_python(code, FASTULM_KERNELS="auto", TRITON_INTERPRET="0", CUDA_VISIBLE_DEVICES="")
    assert proc.returncode != 0
    assert "needs TRITON_INTERPRET=1 set before fastulm.kernels is imported" in proc.stderr


def test_forcing_triton_at_start_enables_the_interpreter():
    """Asking for triton in the environment on a machine without a GPU turns the
    interpreter on before the kernels are decorated, so the Triton path runs."""
    if dispatch.triton is None:
        pytest.skip("triton is not installed")
    if dispatch.INTERPRETER_PROBLEM:
        pytest.skip(dispatch.INTERPRETER_PROBLEM)
    code = (
        "import os, torch\n"
        "import fastulm.kernels as k\n"
        "from fastulm.kernels.weight_drop import philox_uniform_reference\n"
        "out = k.weight_drop(torch.ones(40), 0.5, 7)\n"
        "keep = torch.from_numpy(philox_uniform_reference(7, 40) >= 0.5)\n"
        "print(os.environ['TRITON_INTERPRET'], bool(torch.equal(out != 0, keep)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(FASTULM_KERNELS="triton", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "1 True"


@pytest.mark.parametrize(
    "triton_v, numpy_v, broken",
    [
        ("3.6.0", "2.4.0", True),
        ("3.6.0", "2.3.5", False),
        ("3.7.1", "2.4.6", False),
        ("3.6.0", "2.10.1", True),
        ("3.10.0", "2.5.0", False),
        ("3.6.0", "2.4.0rc1", True),
        ("3.6.1+git", "2.3", False),
    ],
)
def test_interpreter_problem_names_the_versions(monkeypatch, triton_v, numpy_v, broken):
    """Triton 3.6's interpreter calls int() on one-element arrays, which numpy 2.4 refuses."""
    if dispatch.triton is None:
        pytest.skip("triton is not installed")
    import numpy

    monkeypatch.setattr(dispatch.triton, "__version__", triton_v)
    monkeypatch.setattr(numpy, "__version__", numpy_v)
    problem = dispatch._interpreter_problem()
    if broken:
        assert problem and f"triton {triton_v}" in problem and f"numpy {numpy_v}" in problem
    else:
        assert problem is None
