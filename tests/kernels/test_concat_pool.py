"""masked_concat_pool against fastai's formula: forward, backward, dtypes, layouts, compile."""

import pytest
import torch
from fastulm.kernels import masked_concat_pool
from fastulm.kernels.concat_pool import masked_concat_pool_reference
from kernel_helpers import REL_TOL, backend_fixture, device_fixture, rel_err  # noqa: F401

from fastulm_testkit import need_fastai

# (bs, T, H, bptt, [(pads before, real tokens) per row]); the rest of each row is end padding
LAYOUTS = {
    "pad_first": (3, 12, 37, 4, [(4, 8), (0, 12), (8, 4)]),
    "pad_last": (3, 12, 37, 4, [(0, 9), (0, 12), (0, 1)]),
    "pad_chunk": (4, 45, 21, 8, [(8, 30), (0, 45), (16, 29), (40, 3)]),
    "length_one_rows": (3, 9, 16, 4, [(8, 1), (0, 1), (4, 1)]),
    "batch_one": (1, 7, 5, 3, [(3, 4)]),
    "wide_hidden": (2, 40, 600, 16, [(16, 20), (0, 33)]),
    "long_rows": (2, 300, 8, 72, [(72, 200), (0, 300)]),  # several time blocks on every path
}


def make_mask(bs, T, rows, device):
    mask = torch.ones(bs, T, dtype=torch.bool, device=device)
    for b, (front, n) in enumerate(rows):
        mask[b, front : front + n] = False
    return mask


def make_input(bs, T, H, dtype, device):
    """Random values that are exact and distinct along time in every dtype, so every path and
    the reference pick the same argmax (bf16 would otherwise tie often)."""
    perm = torch.argsort(torch.rand(bs, H, T), dim=-1).transpose(1, 2).float()
    x = (perm - T / 2) / 8 + torch.randint(-4, 4, (bs, 1, H)).float()
    return x.to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_matches_reference(layout, dtype, backend, device):
    bs, T, H, bptt, rows = LAYOUTS[layout]
    torch.manual_seed(0)
    x = make_input(bs, T, H, dtype, device).requires_grad_()
    if dtype == torch.float32:  # general floats too (ties have probability ~0)
        x = torch.randn(bs, T, H, device=device).requires_grad_()
    mask = make_mask(bs, T, rows, device)
    out = masked_concat_pool(x, mask, bptt)
    assert out.shape == (bs, 3 * H) and out.dtype == dtype
    g = torch.randn(bs, 3 * H, device=device).to(dtype)
    (gx,) = torch.autograd.grad(out, x, g)
    # reference: fastai's formula in fp32 on the same (exactly representable) values
    x32 = x.detach().float().requires_grad_()
    ref = masked_concat_pool_reference(x32, mask, bptt)
    (gref,) = torch.autograd.grad(ref, x32, g.float())
    tol = REL_TOL[dtype]
    assert rel_err(out, ref) <= tol
    assert rel_err(gx, gref) <= tol
    # last and max are copies of input values: exact in every dtype
    assert torch.equal(out[:, : 2 * H].float(), ref[:, : 2 * H])
    # written everywhere (no stale memory), zero on padding except fastai's "last" index, which
    # lands on a pad when a row ends with bptt or more pads
    assert torch.isfinite(gx).all()
    pads = mask.clone()
    pads[torch.arange(bs), T - 1 - mask[:, -bptt:].sum(dim=1)] = False
    assert (gx.float()[pads] == 0).all()


def test_argmax_gradient_goes_to_first_maximum(backend):
    """Ties: like torch's max, the first position of the maximum gets the whole gradient."""
    x = torch.zeros(1, 6, 3, requires_grad=True)
    mask = torch.tensor([[True, False, False, False, False, True]])
    out = masked_concat_pool(x, mask, 2)
    (gx,) = torch.autograd.grad(
        out, x, torch.cat([torch.zeros(3), torch.ones(3), torch.zeros(3)])[None]
    )
    assert gx[0, :, 0].tolist() == [0, 1, 0, 0, 0, 0]


@pytest.mark.reference
def test_matches_fastai(backend):
    need_fastai()
    from fastai.text.models.core import masked_concat_pool as fastai_pool

    bs, T, H, bptt, rows = LAYOUTS["pad_chunk"]
    torch.manual_seed(1)
    x = torch.randn(bs, T, H, requires_grad=True)
    mask = make_mask(bs, T, rows, "cpu")
    g = torch.randn(bs, 3 * H)
    out = masked_concat_pool(x, mask, bptt)
    ref = fastai_pool(x, mask, bptt)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0], rtol=1e-5, atol=1e-6
    )


def test_bad_masks_raise(backend):
    x = torch.randn(2, 5, 3)
    all_pad = torch.tensor([[False] * 5, [True] * 5])
    with pytest.raises(ValueError, match="row 1 is all padding"):
        masked_concat_pool(x, all_pad, 2)
    holes = torch.tensor([[False] * 5, [False, True, False, False, True]])
    with pytest.raises(ValueError, match="row 1's real tokens are not one contiguous run"):
        masked_concat_pool(x, holes, 2)
    with pytest.raises(ValueError, match="bool mask"):
        masked_concat_pool(x, holes.long(), 2)


def test_opcheck(backend, device):
    bs, T, H, bptt, rows = LAYOUTS["pad_first"]
    x = torch.randn(bs, T, H, device=device, requires_grad=True)
    mask = make_mask(bs, T, rows, device)
    torch.library.opcheck(torch.ops.fastulm.masked_concat_pool.default, (x, mask, bptt))
    out, arg, meta = torch.ops.fastulm.masked_concat_pool(x, mask, bptt)
    g = torch.randn_like(out)
    torch.library.opcheck(torch.ops.fastulm.masked_concat_pool_backward.default, (g, arg, meta, T))


def test_torch_compile(backend, device):
    bs, T, H, bptt, rows = LAYOUTS["pad_chunk"]
    x = torch.randn(bs, T, H, device=device, requires_grad=True)
    mask = make_mask(bs, T, rows, device)

    def f(x):
        return (masked_concat_pool(x * 2, mask, bptt) ** 2).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(x)
    (g,) = torch.autograd.grad(loss, x)
    ref = f(x)
    (gref,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(g, gref)


def test_autocast_bf16_keeps_input_dtype(backend, device):
    """Under autocast the op takes whatever the layer before produced (here a bf16 linear)."""
    bs, T, H, bptt, rows = LAYOUTS["pad_last"]
    torch.manual_seed(2)
    x = torch.randn(bs, T, H, device=device, requires_grad=True)
    lin = torch.nn.Linear(H, H).to(device)
    mask = make_mask(bs, T, rows, device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        h = lin(x)
        out = masked_concat_pool(h, mask, bptt)
    assert h.dtype == out.dtype == torch.bfloat16
    (gx,) = torch.autograd.grad(out.float().sum(), x)
    assert gx.dtype == torch.float32
    ref = masked_concat_pool_reference(h.detach().float(), mask, bptt)
    assert rel_err(out, ref) <= REL_TOL[torch.bfloat16]


def test_float64_torch_path_is_fp64_throughout(monkeypatch):
    """fp64 inputs keep fp64 sums on the torch path (the mean is not rounded to fp32)."""
    monkeypatch.setenv("FASTULM_KERNELS", "torch")
    bs, T, H, bptt, rows = LAYOUTS["pad_chunk"]
    torch.manual_seed(0)
    x = torch.randn(bs, T, H, dtype=torch.float64, requires_grad=True)
    mask = make_mask(bs, T, rows, "cpu")
    out = masked_concat_pool(x, mask, bptt)
    assert out.dtype == torch.float64
    assert rel_err(out, masked_concat_pool_reference(x, mask, bptt)) <= 1e-14
    assert torch.autograd.gradcheck(lambda t: masked_concat_pool(t, mask, bptt), (x,))
