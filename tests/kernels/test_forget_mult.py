"""forget_mult: the fused QRNN recurrence against the step-by-step autograd formula."""

import pytest
import torch
from fastulm.kernels import forget_mult
from fastulm.kernels.forget_mult import forget_mult_reference
from kernel_helpers import (  # noqa: F401
    REL_TOL,
    backend_fixture,
    device_fixture,
    rel_err,
    skip_unless_triton_runs,
)

# (bs, T, H): odd sizes, one step, one row, H over one Triton block
SHAPES = [(3, 7, 5), (1, 1, 4), (2, 13, 130), (5, 2, 1)]


def _inputs(shape, dtype, device, seed=0):
    bs, T, H = shape
    g = torch.Generator().manual_seed(seed)
    gates = (torch.randn(bs, T, 3 * H, generator=g) * 2).to(device=device, dtype=dtype)
    c0 = torch.randn(bs, H, generator=g).to(
        device=device, dtype=torch.promote_types(dtype, torch.float32)
    )
    return gates.requires_grad_(), c0.requires_grad_()


def _loss_weights(shape, device, seed=1):
    bs, T, H = shape
    g = torch.Generator().manual_seed(seed)
    return torch.randn(bs, T, H, generator=g).to(device), torch.randn(bs, H, generator=g).to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_the_stepwise_formula(shape, dtype, backend, device):
    """h, every c, and the gradients of the gates and of c0 (through h and the last c)."""
    gates, c0 = _inputs(shape, dtype, device)
    wh, wc = _loss_weights(shape, device)
    h, c = forget_mult(gates, c0)
    assert h.dtype == dtype and c.dtype == torch.float32
    assert h.shape == c.shape == (shape[0], shape[1], shape[2])
    loss = (h.float() * wh).sum() + (c[:, -1] * wc).sum()
    dg, dc0 = torch.autograd.grad(loss, (gates, c0))
    # the oracle runs in fp32 on the same (rounded) inputs
    g32, c32 = gates.detach().float().requires_grad_(), c0.detach().float().requires_grad_()
    rh, rc = forget_mult_reference(g32, c32)
    rloss = (rh * wh).sum() + (rc[:, -1] * wc).sum()
    rdg, rdc0 = torch.autograd.grad(rloss, (g32, c32))
    tol = REL_TOL[dtype]
    assert rel_err(c, rc) < 1e-5  # the state is kept in fp32 whatever the gates' dtype
    assert rel_err(h.float(), rh) < tol
    assert rel_err(dg.float(), rdg) < tol
    assert rel_err(dc0, rdc0) < 1e-5 if dtype == torch.float32 else tol
    assert dg.dtype == dtype and dc0.dtype == torch.float32


def test_fp64_is_exact_to_rounding(backend, device):
    gates, c0 = _inputs((4, 9, 6), torch.float64, device)
    wh, wc = (w.double() for w in _loss_weights((4, 9, 6), device))
    h, c = forget_mult(gates, c0)
    assert c.dtype == torch.float64
    dg, dc0 = torch.autograd.grad((h * wh).sum() + (c[:, -1] * wc).sum(), (gates, c0))
    rh, rc = forget_mult_reference(gates, c0)
    rdg, rdc0 = torch.autograd.grad((rh * wh).sum() + (rc[:, -1] * wc).sum(), (gates, c0))
    for a, b in ((h, rh), (c, rc), (dg, rdg), (dc0, rdc0)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gradcheck_torch_path(monkeypatch):
    monkeypatch.setenv("FASTULM_KERNELS", "torch")
    gates, c0 = _inputs((2, 5, 3), torch.float64, "cpu")
    assert torch.autograd.gradcheck(lambda g, c: forget_mult(g, c), (gates, c0))


def test_unused_state_gradient_costs_nothing_and_is_right(backend, device):
    """Only h in the loss (as in a language model, which detaches the state)."""
    gates, c0 = _inputs((3, 6, 8), torch.float32, device)
    wh, _ = _loss_weights((3, 6, 8), device)
    h, _ = forget_mult(gates, c0)
    dg, dc0 = torch.autograd.grad((h * wh).sum(), (gates, c0))
    rh, _ = forget_mult_reference(gates, c0)
    rdg, rdc0 = torch.autograd.grad((rh * wh).sum(), (gates, c0))
    assert rel_err(dg, rdg) < 1e-5 and rel_err(dc0, rdc0) < 1e-5


def test_hand_computed_two_steps():
    """c1 = f1 z1 + (1 - f1) c0, c2 = f2 z2 + (1 - f2) c1, h = o c, from raw gates by hand."""
    import math

    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    raw = [[0.3, -1.0, 2.0], [-0.7, 0.5, -0.2]]  # (z, f, o) raw at t = 0, 1; H = 1
    c, want_h, want_c = 0.25, [], []
    for z, f, o in raw:
        c = sig(f) * math.tanh(z) + (1 - sig(f)) * c
        want_c.append(c)
        want_h.append(sig(o) * c)
    gates = torch.tensor([raw], dtype=torch.float64)
    h, cs = forget_mult(gates, torch.tensor([[0.25]], dtype=torch.float64))
    assert h.flatten().tolist() == pytest.approx(want_h, rel=1e-12)
    assert cs.flatten().tolist() == pytest.approx(want_c, rel=1e-12)


def test_opcheck():
    gates, c0 = _inputs((2, 4, 3), torch.float32, "cpu")
    for op in (torch.ops.fastulm.forget_mult.default,):
        torch.library.opcheck(op, (gates, c0))


def test_bad_shapes_are_one_clear_error():
    with pytest.raises(ValueError, match=r"gates \[bs, T, 3\*H\]"):
        forget_mult(torch.zeros(2, 3, 4), torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"c0 \[2, 2\]"):
        forget_mult(torch.zeros(2, 3, 6), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="empty"):
        forget_mult(torch.zeros(2, 0, 6), torch.zeros(2, 2))


def test_under_torch_compile(monkeypatch):
    monkeypatch.setenv("FASTULM_KERNELS", "torch")
    gates, c0 = _inputs((2, 5, 4), torch.float32, "cpu")
    fn = torch.compile(lambda g, c: forget_mult(g, c)[0].sum(), backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(fn(gates, c0), gates)[0]
    want = torch.autograd.grad(forget_mult_reference(gates, c0)[0].sum(), gates)[0]
    assert rel_err(got, want) < 1e-5
