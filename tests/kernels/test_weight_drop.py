"""weight_drop: the mask is a pure function of the seed, nothing is stored, backward replays it."""

import numpy as np
import pytest
import torch
from fastulm.kernels import weight_drop
from fastulm.kernels.weight_drop import (
    philox_uniform_reference,
    splitmix_keep_reference,
    weight_drop_reference,
)
from kernel_helpers import (  # noqa: F401
    backend_fixture,
    device_fixture,
    skip_unless_triton_runs,
)
from torch.utils.checkpoint import checkpoint

SHAPES = [(37, 29), (4 * 23, 23), (5000,), (1, 1)]


def keep_mask(out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The mask an output reveals (inputs are drawn nonzero)."""
    assert (weight != 0).all()
    return out != 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_mask_is_philox(shape, dtype, device, monkeypatch, request):
    """The Triton path's mask is tl.rand's Philox stream, recomputed here in numpy: so the
    interpreter on a CPU and a CUDA GPU drop the same entries for the same seed."""
    skip_unless_triton_runs(request)
    monkeypatch.setenv("FASTULM_KERNELS", "triton")
    torch.manual_seed(0)
    p, seed = 0.35, 987654321
    w = (torch.rand(shape) + 0.5).to(device=device, dtype=dtype).requires_grad_()
    out = weight_drop(w, p, seed)
    u = philox_uniform_reference(seed, w.numel()).reshape(shape)
    keep = torch.from_numpy(u >= np.float32(p)).to(device)
    assert torch.equal(keep_mask(out, w), keep)
    # values: exact in fp32; one rounding of the fp32 product in fp16/bf16 (the interpreter's
    # bf16 cast may round differently from torch's: allow one unit in the last place)
    rtol = {torch.float32: 0.0, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    expected = weight_drop_reference(w.detach().float(), keep, p)
    torch.testing.assert_close(out.float(), expected, rtol=rtol, atol=0)
    g = (torch.rand(shape, device=device) + 0.5).to(dtype)
    (gw,) = torch.autograd.grad(out, w, g)
    assert torch.equal(keep_mask(gw, g), keep)
    expected_g = weight_drop_reference(g.float(), keep, p)
    torch.testing.assert_close(gw.float(), expected_g, rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_follows_seed(dtype, backend, device):
    torch.manual_seed(0)
    p = 0.5
    w = (torch.rand(64, 48) + 0.5).to(device=device, dtype=dtype).requires_grad_()
    a, b, c = weight_drop(w, p, 11), weight_drop(w, p, 11), weight_drop(w, p, 12)
    assert torch.equal(a, b)
    assert not torch.equal(keep_mask(a, w), keep_mask(c, w))
    keep = keep_mask(a, w)
    # kept fraction within 4 sigma of 1 - p, kept entries scaled by 1 / (1 - p)
    n = keep.numel()
    assert abs(keep.float().mean().item() - (1 - p)) < 4 * (p * (1 - p) / n) ** 0.5
    torch.testing.assert_close(a, weight_drop_reference(w.detach(), keep, p))
    # backward: the same mask, regenerated from the seed
    g = torch.randn_like(a)
    (gw,) = torch.autograd.grad(a, w, g)
    torch.testing.assert_close(gw, weight_drop_reference(g, keep, p))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_cpu_mask_is_splitmix(dtype, p, monkeypatch):
    """The CPU numba path keeps exactly the entries the plain-Python splitmix64 rule keeps,
    forward and backward, and a kept entry is scaled by 1 / (1 - p) in the weight's dtype."""
    monkeypatch.setenv("FASTULM_KERNELS", "torch")
    torch.manual_seed(1)
    w = (torch.rand(23, 17, dtype=dtype) + 0.5).requires_grad_()
    out = weight_drop(w, p, 987654321)
    keep = torch.from_numpy(splitmix_keep_reference(987654321, w.numel(), p)).view(w.shape)
    assert torch.equal(keep_mask(out, w), keep)
    assert torch.equal(out, torch.where(keep, w.detach() * (1.0 / (1.0 - p)), 0.0).to(dtype))
    g = torch.rand_like(w) + 0.5
    (gw,) = torch.autograd.grad(out, w, g)
    assert torch.equal(keep_mask(gw, g), keep)
    big = weight_drop(torch.ones(200_000, dtype=dtype), p, 5)  # 4 sigma of 1 - p
    assert abs((big != 0).double().mean().item() - (1 - p)) < 4 * (p * (1 - p) / 200_000) ** 0.5


def test_nothing_saved_for_backward(backend):
    """The autograd graph keeps no tensor for the op's backward (no mask, no weight copy)."""
    w = torch.randn(40, 30, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = weight_drop(w, 0.4, 3)
    assert out.grad_fn is not None
    assert saved == []


def test_p_zero_is_identity_and_bad_args_raise(backend):
    w = torch.randn(5, 4)
    assert weight_drop(w, 0.0, 1) is w
    with pytest.raises(ValueError, match="p must be in"):
        weight_drop(w, 1.0, 1)
    with pytest.raises(ValueError, match="seed must be in"):
        weight_drop(w, 0.5, -1)


def test_checkpoint_replays_mask(backend):
    """Seeds drawn from torch's RNG inside a checkpointed block give identical gradients with
    and without checkpointing (the recompute replays the RNG, hence the seed, hence the mask)."""
    torch.manual_seed(0)
    w = torch.randn(16, 8, requires_grad=True)
    x = torch.randn(5, 8)

    def block(x):
        seed = int(torch.randint(2**31 - 1, (1,)).item())
        return torch.tanh(x @ weight_drop(w, 0.5, seed).t())

    torch.manual_seed(42)
    (g_plain,) = torch.autograd.grad(block(x).sum(), w)
    torch.manual_seed(42)
    out = checkpoint(block, x, use_reentrant=False)
    (g_ckpt,) = torch.autograd.grad(out.sum(), w)
    assert torch.equal(g_plain, g_ckpt)


def test_opcheck(backend, device):
    w = torch.randn(13, 7, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.fastulm.weight_drop.default, (w, 0.3, 5))


def test_torch_compile(backend, device):
    w = torch.randn(13, 7, device=device, requires_grad=True)
    x = torch.randn(3, 7, device=device)

    def f(w):
        return (x @ weight_drop(w, 0.3, 77).t()).pow(2).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(w)
    (g,) = torch.autograd.grad(loss, w)
    ref = f(w)
    (gref,) = torch.autograd.grad(ref, w)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(g, gref)


def test_autocast_keeps_weight_dtype(backend, device):
    """The dropped weight keeps its fp32 master dtype; autocast casts it where it is used."""
    w = torch.randn(12, 6, device=device, requires_grad=True)
    x = torch.randn(4, 6, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        wd = weight_drop(w, 0.25, 9)
        y = torch.nn.functional.linear(x, wd)
    assert wd.dtype == torch.float32 and y.dtype == torch.bfloat16
    (g,) = torch.autograd.grad(y.float().sum(), w)
    keep = wd != 0
    expected = weight_drop_reference(x.sum(0).expand_as(w), keep, 0.25)
    torch.testing.assert_close(g, expected, rtol=2e-2, atol=2e-2)
