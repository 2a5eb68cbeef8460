"""Masked concat pooling ([last, max, mean] over each row's real tokens) without masked copies.

fastai pools the classifier's padded ``[bs, seq, hidden]`` output through two ``masked_fill``
copies, and its backward allocates several more tensors of that size: that is where the
walkthrough runs out of GPU memory. Here the forward reads the activations once and writes
``[bs, 3*hidden]`` plus the argmax position of every max (int32); the backward writes each
input-gradient element exactly once (the max gradient at the argmax, the mean gradient over
the real tokens, the last-state gradient at its position): no masked copies, no ``-inf``
buffers, no atomics. Each row's real tokens must be one contiguous run (fastai's pad_chunk
layout: padding first and/or last), which the op checks.

Three implementations of the same maths: the Triton kernels (CUDA, or the CPU interpreter), a
memory-lean torch path (per-row views, no ``[bs, seq, hidden]`` temporaries), and
:func:`masked_concat_pool_reference`, fastai's formula, which the tests compare against.
"""

from __future__ import annotations

import torch
from fastulm.kernels.dispatch import (
    INTERPRET,
    acc_dtype,
    device_guard,
    next_pow2,
    tl,
    triton,
    use_triton,
)

# ---------------------------------------------------------------------------------------------
# Triton kernels (maths in fp32: the interpreter cannot do arithmetic on bf16 values)
# ---------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _pool_fwd_kernel(
        x_ptr,
        meta_ptr,
        out_ptr,
        arg_ptr,
        H,
        stride_xb,
        stride_xt,
        BLOCK_T: tl.constexpr,
        BLOCK_H: tl.constexpr,
    ):
        b = tl.program_id(0)
        offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        hmask = offs_h < H
        start = tl.load(meta_ptr + b * 3)
        end = tl.load(meta_ptr + b * 3 + 1)
        last = tl.load(meta_ptr + b * 3 + 2)
        row = x_ptr + b.to(tl.int64) * stride_xb
        run_max = tl.full([BLOCK_H], float("-inf"), tl.float32)
        run_arg = tl.zeros([BLOCK_H], dtype=tl.int32) + start
        run_sum = tl.zeros([BLOCK_H], dtype=tl.float32)
        for t0 in range(start, end, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            m2 = (offs_t < end)[:, None] & hmask[None, :]
            ptrs = row + offs_t.to(tl.int64)[:, None] * stride_xt + offs_h[None, :]
            tile = tl.load(ptrs, mask=m2, other=0.0).to(tl.float32)
            run_sum += tl.sum(tile, axis=0)
            tile = tl.where(m2, tile, float("-inf"))
            tile_max = tl.max(tile, axis=0)
            tile_arg = tl.argmax(tile, axis=0).to(tl.int32)
            better = tile_max > run_max  # strict: the first maximum wins, as in torch
            run_arg = tl.where(better, t0 + tile_arg, run_arg)
            run_max = tl.where(better, tile_max, run_max)
        last_v = tl.load(row + last.to(tl.int64) * stride_xt + offs_h, mask=hmask, other=0.0)
        mean = run_sum / (end - start).to(tl.float32)
        out_row = out_ptr + b.to(tl.int64) * (3 * H)
        out_ty = out_ptr.dtype.element_ty
        tl.store(out_row + offs_h, last_v, mask=hmask)
        tl.store(out_row + H + offs_h, run_max.to(out_ty), mask=hmask)
        tl.store(out_row + 2 * H + offs_h, mean.to(out_ty), mask=hmask)
        tl.store(arg_ptr + b.to(tl.int64) * H + offs_h, run_arg, mask=hmask)

    @triton.jit
    def _pool_bwd_kernel(
        g_ptr,
        arg_ptr,
        meta_ptr,
        gx_ptr,
        T,
        H,
        BLOCK_T: tl.constexpr,
        BLOCK_H: tl.constexpr,
    ):
        b = tl.program_id(0)
        offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_h = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
        hmask = offs_h < H
        start = tl.load(meta_ptr + b * 3)
        end = tl.load(meta_ptr + b * 3 + 1)
        last = tl.load(meta_ptr + b * 3 + 2)
        g_row = g_ptr + b.to(tl.int64) * (3 * H)
        g_last = tl.load(g_row + offs_h, mask=hmask, other=0.0).to(tl.float32)
        g_max = tl.load(g_row + H + offs_h, mask=hmask, other=0.0).to(tl.float32)
        g_mean = tl.load(g_row + 2 * H + offs_h, mask=hmask, other=0.0).to(tl.float32)
        g_mean = g_mean / (end - start).to(tl.float32)
        arg = tl.load(arg_ptr + b.to(tl.int64) * H + offs_h, mask=hmask, other=-1)
        t2 = offs_t[:, None]
        in_run = (t2 >= start) & (t2 < end)
        g = tl.where(in_run, g_mean[None, :], 0.0)
        g += tl.where(t2 == arg[None, :], g_max[None, :], 0.0)
        g += tl.where(t2 == last, g_last[None, :], 0.0)
        m2 = (offs_t < T)[:, None] & hmask[None, :]
        ptrs = gx_ptr + (b.to(tl.int64) * T + offs_t.to(tl.int64)[:, None]) * H + offs_h[None, :]
        tl.store(ptrs, g.to(gx_ptr.dtype.element_ty), mask=m2)


def _blocks(H: int) -> tuple[int, int]:
    """(BLOCK_T, BLOCK_H): the interpreter wants few, large programs; a GPU wants many."""
    if INTERPRET:
        return 32, min(next_pow2(H), 512)
    return 16, min(next_pow2(H), 128)


def _fwd_triton(x: torch.Tensor, meta: torch.Tensor, out: torch.Tensor, arg: torch.Tensor):
    bs, _, H = x.shape
    block_t, block_h = _blocks(H)
    grid = (bs, triton.cdiv(H, block_h))
    with device_guard(x):
        _pool_fwd_kernel[grid](
            x, meta, out, arg, H, x.stride(0), x.stride(1), BLOCK_T=block_t, BLOCK_H=block_h
        )


def _bwd_triton(g: torch.Tensor, arg: torch.Tensor, meta: torch.Tensor, gx: torch.Tensor):
    bs, T, H = gx.shape
    block_t, block_h = _blocks(H)
    grid = (bs, triton.cdiv(T, block_t), triton.cdiv(H, block_h))
    with device_guard(gx):
        _pool_bwd_kernel[grid](g, arg, meta, gx, T, H, BLOCK_T=block_t, BLOCK_H=block_h)


# ---------------------------------------------------------------------------------------------
# Memory-lean torch path: vectorized, but no temporary as large as [bs, seq, hidden]
# ---------------------------------------------------------------------------------------------
_TIME_BLOCK = 256  # max over time in blocks: only a block touching padding gets a masked copy


def _fwd_torch(x: torch.Tensor, meta: torch.Tensor, out: torch.Tensor, arg: torch.Tensor):
    bs, T, H = x.shape
    start, end, last = (meta[:, i].long() for i in range(3))
    pos = torch.arange(T, device=x.device)
    pad = (pos < start[:, None]) | (pos >= end[:, None])
    rows = torch.arange(bs, device=x.device)
    out[:, :H] = x[rows, last]
    # mean: one batched matmul with the 0/1 row masks, no masked copy of x
    real = (~pad).to(x.dtype)[:, None, :]
    acc = acc_dtype(x.dtype)
    total = torch.bmm(real, x).squeeze(1).to(acc)
    out[:, 2 * H :] = total / (end - start).to(acc)[:, None]
    run_max = torch.full((bs, H), float("-inf"), dtype=x.dtype, device=x.device)
    run_arg = torch.zeros(bs, H, dtype=torch.long, device=x.device)
    for t0 in range(0, T, _TIME_BLOCK):
        block = x[:, t0 : t0 + _TIME_BLOCK]
        block_pad = pad[:, t0 : t0 + _TIME_BLOCK]
        if bool(block_pad.any()):
            block = block.masked_fill(block_pad[:, :, None], float("-inf"))
        block_max, block_arg = block.max(dim=1)
        better = block_max > run_max  # strict: the first maximum wins, as in torch
        run_max = torch.where(better, block_max, run_max)
        run_arg = torch.where(better, block_arg + t0, run_arg)
    out[:, H : 2 * H] = run_max
    arg.copy_(run_arg)


def _bwd_torch(g: torch.Tensor, arg: torch.Tensor, meta: torch.Tensor, gx: torch.Tensor):
    bs, T, H = gx.shape
    start, end, last = (meta[:, i].long() for i in range(3))
    pos = torch.arange(T, device=gx.device)
    real = ((pos >= start[:, None]) & (pos < end[:, None])).to(gx.dtype)
    acc = acc_dtype(gx.dtype)
    g_mean = (g[:, 2 * H :].to(acc) / (end - start).to(acc)[:, None]).to(gx.dtype)
    torch.mul(real[:, :, None], g_mean[:, None, :], out=gx)  # the only [bs, seq, hidden] write
    gx.scatter_add_(1, arg[:, None, :].long(), g[:, None, H : 2 * H])
    rows = torch.arange(bs, device=gx.device)
    gx.index_put_((rows, last), g[:, :H], accumulate=True)


# ---------------------------------------------------------------------------------------------
# The ops
# ---------------------------------------------------------------------------------------------
def _row_meta(mask: torch.Tensor, bptt: int) -> torch.Tensor:
    """int32 [bs, 3]: start and end of each row's real run, and fastai's last-state index."""
    T = mask.shape[1]
    real = ~mask
    n = real.sum(dim=1)
    if bool((n == 0).any()):
        row = int((n == 0).nonzero()[0, 0])
        raise ValueError(f"masked_concat_pool: row {row} is all padding (no real token)")
    start = real.to(torch.int32).argmax(dim=1)
    end = start + n
    pos = torch.arange(T, device=mask.device)
    in_run = (pos >= start[:, None]) & (pos < end[:, None])
    if not bool((in_run == real).all()):
        row = int((in_run != real).any(dim=1).nonzero()[0, 0])
        raise ValueError(
            f"masked_concat_pool: row {row}'s real tokens are not one contiguous run "
            "(expected padding only before and/or after them)"
        )
    # fastai's last hidden state: index -(pads among the last bptt positions) - 1
    last = T - 1 - mask[:, -bptt:].sum(dim=1)
    return torch.stack([start, end, last], dim=1).to(torch.int32).contiguous()


@torch.library.custom_op("fastulm::masked_concat_pool", mutates_args=())
def _pool_op(
    output: torch.Tensor, mask: torch.Tensor, bptt: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if output.dim() != 3 or mask.shape != output.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(
            "masked_concat_pool: expected output [bs, seq, hidden] and a bool mask [bs, seq], "
            f"got {tuple(output.shape)} and {tuple(mask.shape)} {mask.dtype}"
        )
    x = output.contiguous()
    bs, _, H = x.shape
    meta = _row_meta(mask, bptt)
    out = x.new_empty(bs, 3 * H)
    arg = torch.empty(bs, H, dtype=torch.int32, device=x.device)
    if use_triton(x.device):
        _fwd_triton(x, meta, out, arg)
    else:
        _fwd_torch(x, meta, out, arg)
    return out, arg, meta


@_pool_op.register_fake
def _(output, mask, bptt):
    bs, _, H = output.shape
    return (
        output.new_empty(bs, 3 * H),
        output.new_empty(bs, H, dtype=torch.int32),
        output.new_empty(bs, 3, dtype=torch.int32),
    )


@torch.library.custom_op("fastulm::masked_concat_pool_backward", mutates_args=())
def _pool_backward_op(
    grad: torch.Tensor, arg: torch.Tensor, meta: torch.Tensor, seq_len: int
) -> torch.Tensor:
    g = grad.contiguous()
    bs, H = arg.shape
    gx = g.new_empty(bs, seq_len, H)
    if use_triton(g.device):
        _bwd_triton(g, arg, meta, gx)
    else:
        _bwd_torch(g, arg, meta, gx)
    return gx


@_pool_backward_op.register_fake
def _(grad, arg, meta, seq_len):
    bs, H = arg.shape
    return grad.new_empty(bs, seq_len, H)


def _setup_context(ctx, inputs, output):
    _, arg, meta = output
    ctx.seq_len = inputs[0].shape[1]
    ctx.save_for_backward(arg, meta)


def _backward(ctx, grad_out, _grad_arg, _grad_meta):
    arg, meta = ctx.saved_tensors
    return _pool_backward_op(grad_out, arg, meta, ctx.seq_len), None, None


_pool_op.register_autograd(_backward, setup_context=_setup_context)


def masked_concat_pool(output: torch.Tensor, mask: torch.Tensor, bptt: int) -> torch.Tensor:
    """[last, max, mean] over each row's real tokens -> [bs, 3*hidden] (mask: True at pads).

    Keeps the input's dtype (bf16 under autocast stays bf16); sums run in fp32.
    """
    return _pool_op(output, mask, bptt)[0]


def masked_concat_pool_reference(
    output: torch.Tensor, mask: torch.Tensor, bptt: int
) -> torch.Tensor:
    """fastai 2.8.12's formula, with its masked copies: the exact reference for tests."""
    n_real = output.shape[1] - mask.long().sum(dim=1)
    n_last_pad = mask[:, -bptt:].long().sum(dim=1)
    mean = output.masked_fill(mask[:, :, None], 0).sum(dim=1) / n_real.to(output.dtype)[:, None]
    mx = output.masked_fill(mask[:, :, None], -float("inf")).max(dim=1)[0]
    rows = torch.arange(output.shape[0], device=output.device)
    return torch.cat([output[rows, -n_last_pad - 1], mx, mean], dim=1)
