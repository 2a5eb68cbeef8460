"""DropConnect on a weight matrix with a mask that is never stored.

AWD-LSTM drops entries of each layer's hidden-to-hidden weight once per forward. fastai keeps
the dropped copy and autograd keeps dropout's mask; here the mask is a pure function of
``(seed, shape, device)``: the forward and the backward both regenerate it from the seed, so the
op saves nothing for backward. The caller draws ``seed`` from torch's default generator, which
activation checkpointing replays, so a recomputed forward gets the same mask.

- Triton path: ``tl.rand(seed, offset)`` (Philox 4x32, 10 rounds) per element. Philox is plain
  Triton code, so the interpreter on a CPU and a CUDA GPU give the same mask for the same seed;
  :func:`philox_uniform_reference` is the same stream in numpy, for tests.
- torch path, fp32/fp64 on a CPU: a splitmix64 hash of ``(seed, offset)`` per element, in one
  numba pass that also applies the mask (25x faster than ``torch.rand`` + two multiplies at
  1024 x 256; in the classifier, which redraws the mask for every bptt chunk, that was 6% of
  an epoch). :func:`splitmix_keep_reference` is the same rule in plain Python, for tests.
- torch path otherwise: ``torch.rand`` from a ``torch.Generator`` seeded with ``seed``.
Each path is deterministic in the seed; the three are different streams.
"""

from __future__ import annotations

import numpy as np
import torch
from fastulm.kernels.dispatch import INTERPRET, device_guard, tl, triton, use_triton

from fastulm.text.jit import kernel

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_A, _MIX_B = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_KEEP_BITS = 24  # the top 24 bits of each hash, compared with p * 2**24

if triton is not None:

    @triton.jit
    def _weight_drop_kernel(x_ptr, out_ptr, n, seed, p, scale, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < n
        keep = tl.rand(seed, offs) >= p
        x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        y = tl.where(keep, x * scale, 0.0)
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=inside)


def _apply_triton(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    block = 4096 if INTERPRET else 1024
    with device_guard(x):
        _weight_drop_kernel[(triton.cdiv(n, block),)](
            x, out, n, seed, p, 1.0 / (1.0 - p), BLOCK=block
        )
    return out


@kernel(nogil=True)
def _splitmix(z):
    z = (z ^ (z >> np.uint64(30))) * _MIX_A
    z = (z ^ (z >> np.uint64(27))) * _MIX_B
    return z ^ (z >> np.uint64(31))


@kernel(nogil=True)
def _drop_kernel(x, out, seed, threshold, scale):
    base = _splitmix(np.uint64(seed))
    shift = np.uint64(64 - _KEEP_BITS)
    for i in range(x.size):
        keep = (_splitmix(base + np.uint64(i + 1) * _GOLDEN) >> shift) >= threshold
        out[i] = x[i] * scale if keep else x.dtype.type(0)


def _apply_numba(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    x = x.detach().contiguous()
    out = torch.empty_like(x)
    threshold = np.uint64(round(p * 2**_KEEP_BITS))
    scale = x.new_tensor(1.0 / (1.0 - p)).numpy()[()]  # the scale in x's own dtype
    _drop_kernel(x.view(-1).numpy(), out.view(-1).numpy(), seed, threshold, scale)
    return out


def splitmix_keep_reference(seed: int, n: int, p: float) -> np.ndarray:
    """bool [n]: the CPU numba path's keep mask, in plain Python integers."""
    m64 = 2**64 - 1

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m64
        return z ^ (z >> 31)

    base, threshold = mix(seed), round(p * 2**_KEEP_BITS)
    hashes = [mix((base + (i + 1) * 0x9E3779B97F4A7C15) & m64) for i in range(n)]
    return np.array([h >> (64 - _KEEP_BITS) >= threshold for h in hashes])


def _apply_torch(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=x.device).manual_seed(seed)
    # uniform >= p, as Triton's path does (2x faster than bernoulli_ on a CPU)
    keep = torch.rand(x.shape, generator=gen, device=x.device) >= p
    out = x * (1.0 / (1.0 - p))
    return out.mul_(keep)


def _check(p: float, seed: int) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"weight_drop: p must be in [0, 1), got {p}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"weight_drop: seed must be in [0, 2**63), got {seed}")


@torch.library.custom_op("fastulm::weight_drop", mutates_args=())
def _weight_drop_op(weight: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    _check(p, seed)
    if weight.numel() >= 2**31:
        raise ValueError("weight_drop: tensors of 2**31 elements or more are not supported")
    if use_triton(weight.device):
        return _apply_triton(weight, p, seed)
    if weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.float64):
        return _apply_numba(weight, p, seed)
    return _apply_torch(weight, p, seed)


@_weight_drop_op.register_fake
def _(weight, p, seed):
    return torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    ctx.p, ctx.seed = inputs[1], inputs[2]


def _backward(ctx, grad):
    # the gradient goes through the same mask and scale: regenerate it from the seed
    return _weight_drop_op(grad, ctx.p, ctx.seed), None, None


_weight_drop_op.register_autograd(_backward, setup_context=_setup_context)


def weight_drop(weight: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """DropConnect: ``weight * mask / (1 - p)``, the mask a pure function of (seed, shape, device).

    ``p == 0`` returns ``weight`` itself. Keeps the weight's dtype.
    """
    _check(p, seed)
    if p == 0.0:
        return weight
    return _weight_drop_op(weight, float(p), int(seed))


def weight_drop_reference(weight: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """Plain dropout with a given keep mask (what ``F.dropout`` computes): the tests' oracle."""
    return weight * keep.to(weight.dtype) * (1.0 / (1.0 - p))


_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_M32 = 0xFFFFFFFF


def philox_uniform_reference(seed: int, n: int) -> np.ndarray:
    """float32 [n]: what ``tl.rand(seed, arange(n))`` returns, written independently in numpy."""
    c0 = np.arange(n, dtype=np.uint64)
    c1 = np.zeros(n, dtype=np.uint64)
    c2 = np.zeros(n, dtype=np.uint64)
    c3 = np.zeros(n, dtype=np.uint64)
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    a, b = np.uint64(_PHILOX_ROUND_A), np.uint64(_PHILOX_ROUND_B)
    for _ in range(10):
        prod_b = b * c2  # < 2**64: exact in uint64
        prod_a = a * c0
        c0 = (prod_b >> np.uint64(32)) ^ c1 ^ np.uint64(k0)
        c2 = (prod_a >> np.uint64(32)) ^ c3 ^ np.uint64(k1)
        c1 = prod_b & np.uint64(_M32)
        c3 = prod_a & np.uint64(_M32)
        k0 = (k0 + _PHILOX_KEY_A) & _M32
        k1 = (k1 + _PHILOX_KEY_B) & _M32
    signed = c0.astype(np.uint32).view(np.int32).astype(np.int64)
    signed = np.where(signed < 0, -signed - 1, signed)
    return signed.astype(np.float32) * np.float32(4.6566127342e-10)
