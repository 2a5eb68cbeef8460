"""Shared fixtures and helpers for the kernel tests (imported by name: a conftest here would
shadow the root conftest's need_fastai)."""

import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(name="backend", params=["triton", "torch"])
def backend_fixture(request, monkeypatch):
    """Force one implementation (Triton runs in the interpreter on CPU tensors)."""
    if request.param == "triton":
        skip_unless_triton_runs(request)
    monkeypatch.setenv("FASTULM_KERNELS", request.param)
    return request.param


def skip_unless_triton_runs(request) -> None:
    """Skip when Triton cannot run this test's tensors: not installed, or CPU tensors on a
    machine with a GPU (the interpreter is only on when the root conftest finds no GPU)."""
    from fastulm.kernels.dispatch import INTERPRET, INTERPRETER_PROBLEM, triton

    if triton is None:
        pytest.skip("triton is not installed")
    callspec = getattr(request.node, "callspec", None)
    device = callspec.params.get("device", "cpu") if callspec else "cpu"
    if device == "cpu" and not INTERPRET:
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (CPU-only machines)")
    if device == "cpu" and INTERPRETER_PROBLEM:
        pytest.skip(INTERPRETER_PROBLEM)


@pytest.fixture(name="device", params=DEVICES)
def device_fixture(request):
    return torch.device(request.param)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (0 when both are zero)."""
    a, b = a.double(), b.double()
    den = b.norm().item()
    return (a - b).norm().item() / den if den else (a - b).norm().item()


# relative-norm tolerance of a low-precision result against the fp32 maths on the same inputs
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
