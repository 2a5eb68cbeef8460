"""AR/TAR against a direct element-by-element computation."""

import pytest
import torch

from fastulm.train.regularizer import ar_tar


def direct(raw, dropped, alpha, beta):
    bs, t, h = raw.shape
    ar = sum(float(dropped[b, i, j]) ** 2 for b in range(bs) for i in range(t) for j in range(h))
    tar = sum(
        (float(raw[b, i + 1, j]) - float(raw[b, i, j])) ** 2
        for b in range(bs)
        for i in range(t - 1)
        for j in range(h)
    )
    return alpha * ar / (bs * t * h) + beta * tar / (bs * (t - 1) * h)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ar_tar_direct(dtype):
    torch.manual_seed(0)
    raw = torch.randn(3, 5, 4).to(dtype)
    dropped = (raw * (torch.rand(3, 5, 4) > 0.3)).to(dtype)
    got = ar_tar(raw, dropped, alpha=2.0, beta=1.0)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(direct(raw, dropped, 2.0, 1.0), rel=1e-5)
    assert float(ar_tar(raw, dropped, 0.0, 1.0)) == pytest.approx(
        direct(raw, dropped, 0.0, 1.0), rel=1e-5
    )


def test_single_step_has_no_tar():
    raw = torch.ones(2, 1, 3)
    assert float(ar_tar(raw, raw, 2.0, 1.0)) == pytest.approx(2.0)


def test_gradient_flows():
    raw = torch.randn(2, 4, 3, requires_grad=True)
    ar_tar(raw, raw * 2, 2.0, 1.0).backward()
    assert raw.grad is not None and raw.grad.abs().sum() > 0
