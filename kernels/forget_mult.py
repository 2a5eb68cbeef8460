"""The QRNN recurrence ("fo-pooling"), fused: gate activations, forget-mult and output gate.

A QRNN layer (Bradbury et al. 2016; MultiFiT, Eisenschlos et al. 2019) replaces the LSTM's
hidden-to-hidden matmuls with one input matmul for all time steps, giving raw gates
``[bs, T, 3H]`` (z, f, o), and a cheap elementwise recurrence over time::

    z = tanh(z_raw), f = sigmoid(f_raw), o = sigmoid(o_raw)
    c_t = f_t * z_t + (1 - f_t) * c_{t-1}
    h_t = o_t * c_t

Only that recurrence is sequential, so the layer trains several times faster than an LSTM
on a GPU. Unfused, autograd keeps z, f, o, each product and every c; here the forward
saves the raw gates (the matmul's output, kept anyway) and c in fp32, and the backward
recomputes the activations on the fly.

- Triton path: one program per (batch row, block of H columns) walks the time steps; the
  state stays in fp32 registers, so bf16/fp16 gates lose nothing in the recurrence.
- torch path (CPU): the activations in bulk, then ``torch.lerp`` step by step.
- :func:`forget_mult_reference` is the plain autograd formula, for tests.
"""

from __future__ import annotations

import torch
from fastulm.kernels.dispatch import INTERPRET, acc_dtype, device_guard, tl, triton, use_triton

if triton is not None:

    @triton.jit
    def _tanh(x):
        return 2.0 * tl.sigmoid(2.0 * x) - 1.0

    @triton.jit
    def _fwd_kernel(g_ptr, c0_ptr, h_ptr, c_ptr, T, H, BLOCK: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < H
        acc = c_ptr.dtype.element_ty  # fp32, or fp64 for fp64 gates
        c = tl.load(c0_ptr + b * H + cols, mask=inside, other=0.0).to(acc)
        for t in range(T):
            row = b * T + t
            g = g_ptr + row * 3 * H + cols
            z = _tanh(tl.load(g, mask=inside, other=0.0).to(acc))
            f = tl.sigmoid(tl.load(g + H, mask=inside, other=0.0).to(acc))
            o = tl.sigmoid(tl.load(g + 2 * H, mask=inside, other=0.0).to(acc))
            c = f * z + (1.0 - f) * c
            tl.store(c_ptr + row * H + cols, c, mask=inside)
            tl.store(h_ptr + row * H + cols, (o * c).to(h_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _bwd_kernel(
        g_ptr, c0_ptr, c_ptr, dh_ptr, dc_ptr, dg_ptr, dc0_ptr, T, H,
        HAS_DC: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < H
        acc = c_ptr.dtype.element_ty
        carry = tl.zeros([BLOCK], dtype=acc)  # dL/dc_t flowing back from t + 1
        for i in range(T):
            t = T - 1 - i
            row = b * T + t
            g = g_ptr + row * 3 * H + cols
            z = _tanh(tl.load(g, mask=inside, other=0.0).to(acc))
            f = tl.sigmoid(tl.load(g + H, mask=inside, other=0.0).to(acc))
            o = tl.sigmoid(tl.load(g + 2 * H, mask=inside, other=0.0).to(acc))
            c = tl.load(c_ptr + row * H + cols, mask=inside, other=0.0).to(acc)
            # c_{t-1}: the saved state before t, or c0 at t == 0 (one of the two loads is masked)
            prev = tl.load(c_ptr + (row - 1) * H + cols, mask=inside & (t > 0), other=0.0)
            prev += tl.load(c0_ptr + b * H + cols, mask=inside & (t == 0), other=0.0)
            prev = prev.to(acc)
            dh = tl.load(dh_ptr + row * H + cols, mask=inside, other=0.0).to(acc)
            dc = dh * o + carry
            if HAS_DC:
                dc += tl.load(dc_ptr + row * H + cols, mask=inside, other=0.0).to(acc)
            dg = dg_ptr + row * 3 * H + cols
            kind = dg_ptr.dtype.element_ty
            tl.store(dg, (dc * f * (1.0 - z * z)).to(kind), mask=inside)
            tl.store(dg + H, (dc * (z - prev) * f * (1.0 - f)).to(kind), mask=inside)
            tl.store(dg + 2 * H, (dh * c * o * (1.0 - o)).to(kind), mask=inside)
            carry = dc * (1.0 - f)
        tl.store(dc0_ptr + b * H + cols, carry.to(dc0_ptr.dtype.element_ty), mask=inside)


def _grid(bs: int, H: int) -> tuple[tuple[int, int], int]:
    block = 128 if INTERPRET else min(256, max(32, triton.next_power_of_2(H)))
    return (bs, triton.cdiv(H, block)), block


def _fwd_triton(g, c0, h, c):
    bs, T, H = h.shape
    grid, block = _grid(bs, H)
    with device_guard(g):
        _fwd_kernel[grid](g, c0, h, c, T, H, BLOCK=block)


def _bwd_triton(g, c0, c, dh, dc, dg, dc0):
    bs, T, H = c.shape
    grid, block = _grid(bs, H)
    with device_guard(g):
        _bwd_kernel[grid](
            g, c0, c, dh, dh if dc is None else dc, dg, dc0, T, H,
            HAS_DC=dc is not None, BLOCK=block,
        )  # fmt: skip


def _activations(gates: torch.Tensor, dtype: torch.dtype):
    z, f, o = gates.to(dtype).chunk(3, dim=2)
    return torch.tanh(z), torch.sigmoid(f), torch.sigmoid(o)


def _fwd_torch(gates, c0, h, c):
    z, f, o = _activations(gates, c.dtype)
    cur = c0.to(c.dtype)
    for t in range(gates.shape[1]):
        cur = torch.lerp(cur, z[:, t], f[:, t])  # f * z + (1 - f) * c_prev
        c[:, t] = cur
    h.copy_(o * c)


def _bwd_torch(gates, c0, c, dh, dc_all, dg, dc0):
    z, f, o = _activations(gates, c.dtype)
    dh = dh.to(c.dtype)
    prev = torch.cat([c0.to(c.dtype)[:, None], c[:, :-1]], dim=1)
    dc = dh * o
    if dc_all is not None:
        dc += dc_all
    carry = torch.zeros_like(c0, dtype=c.dtype)
    for t in range(gates.shape[1] - 1, -1, -1):
        dc[:, t] += carry
        carry = dc[:, t] * (1 - f[:, t])
    dz, df, do = dg.chunk(3, dim=2)
    dz.copy_(dc * f * (1 - z * z))
    df.copy_(dc * (z - prev) * f * (1 - f))
    do.copy_(dh * c * o * (1 - o))
    dc0.copy_(carry)


def _check(gates: torch.Tensor, c0: torch.Tensor) -> None:
    if gates.dim() != 3 or gates.shape[2] % 3 != 0:
        raise ValueError(f"forget_mult: expected gates [bs, T, 3*H], got {tuple(gates.shape)}")
    H = gates.shape[2] // 3
    if c0.shape != (gates.shape[0], H):
        raise ValueError(f"forget_mult: expected c0 [{gates.shape[0]}, {H}], got {tuple(c0.shape)}")
    if gates.shape[1] == 0:
        raise ValueError("forget_mult: the sequence is empty (T = 0)")


@torch.library.custom_op("fastulm::forget_mult", mutates_args=())
def _fm_op(gates: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check(gates, c0)
    g = gates.contiguous()
    bs, T, H3 = g.shape
    H = H3 // 3
    h = g.new_empty(bs, T, H)
    c = g.new_empty(bs, T, H, dtype=acc_dtype(g.dtype))
    if use_triton(g.device):
        _fwd_triton(g, c0.contiguous(), h, c)
    else:
        _fwd_torch(g, c0, h, c)
    return h, c


@_fm_op.register_fake
def _(gates, c0):
    bs, T, H3 = gates.shape
    h = gates.new_empty(bs, T, H3 // 3)
    return h, gates.new_empty(bs, T, H3 // 3, dtype=acc_dtype(gates.dtype))


@torch.library.custom_op("fastulm::forget_mult_backward", mutates_args=())
def _fm_backward_op(
    gates: torch.Tensor,
    c0: torch.Tensor,
    c: torch.Tensor,
    grad_h: torch.Tensor,
    grad_c: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    g = gates.contiguous()
    dg = torch.empty_like(g)
    dc0 = torch.empty_like(c0)
    dh = grad_h.contiguous()
    dc = None if grad_c is None else grad_c.contiguous()
    if use_triton(g.device):
        _bwd_triton(g, c0.contiguous(), c, dh, dc, dg, dc0)
    else:
        _bwd_torch(g, c0, c, dh, dc, dg, dc0)
    return dg, dc0


@_fm_backward_op.register_fake
def _(gates, c0, c, grad_h, grad_c):
    return torch.empty_like(gates), torch.empty_like(c0)


def _setup_context(ctx, inputs, output):
    gates, c0 = inputs
    ctx.save_for_backward(gates, c0, output[1])
    ctx.set_materialize_grads(False)  # an unused c (the LM detaches it) costs no zeros


def _backward(ctx, grad_h, grad_c):
    gates, c0, c = ctx.saved_tensors
    if grad_h is None:
        grad_h = torch.zeros(c.shape, dtype=gates.dtype, device=gates.device)
    return _fm_backward_op(gates, c0, c, grad_h, grad_c)


_fm_op.register_autograd(_backward, setup_context=_setup_context)


def forget_mult(gates: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The QRNN recurrence: raw gates ``[bs, T, 3H]`` (z, f, o) and the state ``c0 [bs, H]``
    give ``h [bs, T, H]`` (the gates' dtype) and every state ``c [bs, T, H]`` (fp32 for
    half types; ``c[:, -1]`` is the next window's ``c0``)."""
    return _fm_op(gates, c0)


def forget_mult_reference(
    gates: torch.Tensor, c0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same maths in plain autograd ops, step by step: the tests' oracle."""
    z, f, o = gates.chunk(3, dim=2)
    z, f, o = torch.tanh(z), torch.sigmoid(f), torch.sigmoid(o)
    cs, cur = [], c0
    for t in range(gates.shape[1]):
        cur = f[:, t] * z[:, t] + (1 - f[:, t]) * cur
        cs.append(cur)
    c = torch.stack(cs, dim=1)
    return o * c, c
