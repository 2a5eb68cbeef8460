"""Shared fixtures and helpers for the kernel tests (imported by name: a conftest here would
shadow the root conftest's need_fastai)."""

import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(name="backend", params=["triton", "torch"])
def backend_fixture(request, monkeypatch):
    """Force one implementation (Triton runs in the interpreter on CPU tensors)."""
    if request.param == "triton":
        from fastulm.kernels.dispatch import triton

        if triton is None:
            pytest.skip("triton is not installed")
    monkeypatch.setenv("FASTULM_KERNELS", request.param)
    return request.param


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
