"""Linear layer + cross-entropy in row chunks: the LM decoder's loss without full logits.

At bs 48 x bptt 70 x vocab 60k the decoder's logits are ~800 MB in fp32 and autograd keeps
them plus their gradient of the same size. Here the rows go through in chunks of at most
~``FASTULM_CE_CHUNK_MB`` MB of fp32 logits (64 on a GPU; on a CPU 4, or ``2 * D`` rows when
that is more, see :func:`chunk_rows_for`): each chunk's logits are turned into their
gradient ``(softmax - onehot) / n_valid``, which is multiplied straight into ``grad_x``,
``grad_W`` and ``grad_b`` (fp32 accumulators), and dropped. The gradients are
computed in the forward (as Liger-Kernel's fused linear cross-entropy does) when autograd
needs them, so the whole step costs the three matmuls of the unfused version and the backward
only scales them by the incoming gradient. The accuracy count comes out of the same pass.

The per-chunk softmax/CE step is a Triton kernel (one program per row, an online
max/log-sum-exp over vocab blocks, then the gradient written over the logits) or the same
maths in in-place torch ops. :func:`linear_cross_entropy_reference` is the unfused formula.
Under autocast the matmuls run in the autocast dtype and the softmax in fp32, as autocast does
for ``linear`` + ``cross_entropy``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from fastulm.kernels.dispatch import (
    INTERPRET,
    acc_dtype,
    device_guard,
    next_pow2,
    tl,
    triton,
    use_triton,
)

if triton is not None:

    @triton.jit
    def _ce_chunk_kernel(
        z_ptr,
        stride_z,
        target_ptr,
        loss_ptr,
        correct_ptr,
        V,
        ignore_index,
        inv_n,
        WRITE_GRAD: tl.constexpr,
        BLOCK_V: tl.constexpr,
    ):
        row = tl.program_id(0)
        z_row = z_ptr + row.to(tl.int64) * stride_z
        tgt = tl.load(target_ptr + row).to(tl.int32)
        valid = tgt != ignore_index
        m = float("-inf")
        s = 0.0
        best = 0
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            z = tl.load(z_row + offs, mask=offs < V, other=0.0).to(tl.float32)
            z = tl.where(offs < V, z, float("-inf"))
            block_max = tl.max(z, axis=0)
            block_arg = tl.argmax(z, axis=0).to(tl.int32)
            best = tl.where(block_max > m, v0 + block_arg, best)  # first maximum wins
            m_new = tl.maximum(m, block_max)
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
            m = m_new
        lse = m + tl.log(s)
        z_t = tl.load(z_row + tl.where(valid, tgt, 0)).to(tl.float32)
        tl.store(loss_ptr + row, tl.where(valid, lse - z_t, 0.0))
        tl.store(correct_ptr + row, (valid & (best == tgt)).to(tl.int32))
        if WRITE_GRAD:
            scale = tl.where(valid, inv_n, 0.0)
            for v0 in range(0, V, BLOCK_V):
                offs = v0 + tl.arange(0, BLOCK_V)
                z = tl.load(z_row + offs, mask=offs < V, other=0.0).to(tl.float32)
                g = tl.exp(z - lse)
                g = tl.where(offs == tgt, g - 1.0, g) * scale
                tl.store(z_row + offs, g.to(z_ptr.dtype.element_ty), mask=offs < V)


def _ce_chunk_triton(z, target, loss, correct, ignore_index, inv_n, write_grad):
    rows, V = z.shape
    block_v = min(next_pow2(V), 8192 if INTERPRET else 4096)
    with device_guard(z):
        _ce_chunk_kernel[(rows,)](
            z,
            z.stride(0),
            target,
            loss,
            correct,
            V,
            ignore_index,
            inv_n,
            WRITE_GRAD=write_grad,
            BLOCK_V=block_v,
            num_warps=1 if INTERPRET else 8,
        )
    return z


def _ce_chunk_torch(z, target, loss, correct, ignore_index, inv_n, write_grad, work):
    """The kernel's maths in torch ops on a cache-sized chunk; returns the fp32 gradient.

    The probabilities come from ATen's softmax, in place (its vectorised exp is about twice
    as fast as ``exp_`` here): over ``z`` itself when fp32, else over its fp32 upcast in
    ``work``. The largest probability is ``1 / sum(exp(z - max))``, so the loss is
    ``max - z_t - log(p_max)``: exact for every row, also where ``p_t`` underflows. The
    accuracy count avoids a full argmax: a row can only be right when its target logit is
    the row maximum, and only those rows are searched, so the first maximum wins.
    """
    valid = target != ignore_index
    safe_t = torch.where(valid, target, 0)[:, None]
    acc = loss.dtype  # fp32, or fp64 for fp64 inputs
    z_t = z.gather(1, safe_t).squeeze(1).to(acc)
    m = z.amax(dim=1).to(acc)
    hit = valid & (z_t == m)
    maybe = hit.nonzero().squeeze(1)
    if maybe.numel():
        hit[maybe] = z[maybe].argmax(dim=1) == target[maybe]
    correct.copy_(hit)
    p = z if z.dtype == acc else work[: z.shape[0]].copy_(z)
    torch.ops.aten._softmax.out(p, 1, False, out=p)
    loss.copy_(torch.where(valid, m - z_t - p.amax(dim=1).log(), 0.0))
    if not write_grad:
        return p
    scale = valid.to(acc)[:, None] * inv_n
    p.mul_(scale).scatter_add_(1, safe_t, -scale)
    if p is not z:
        z.copy_(p)
    return p


def chunk_rows_for(vocab: int, device_type: str = "cuda", dim: int = 0) -> int:
    """Rows per chunk: one chunk's fp32 logits under ``FASTULM_CE_CHUNK_MB``.

    The default budget is 64 MB on a GPU (fewer, larger matmuls). On a CPU it is 4 MB, so
    that a chunk stays in cache between its matmul, softmax and gradient matmuls -- raised to
    ``2 * dim`` rows (within 64 MB): every chunk adds a rank-``rows`` update into the whole
    ``[vocab, dim]`` weight gradient, and below that the update's memory traffic outweighs
    the cache gain (at 60k x 400, 17-row chunks take twice as long as 279-row ones).
    """
    env = os.environ.get("FASTULM_CE_CHUNK_MB")
    big = max(1, int(float(env or 64) * 2**20 // (4 * vocab)))
    if device_type != "cpu" or env is not None:
        return big
    small = max(1, int(4 * 2**20 // (4 * vocab)))
    return max(small, min(2 * dim, big))


@torch.library.custom_op("fastulm::linear_cross_entropy", mutates_args=())
def _lce_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    ignore_index: int,
    compute_grad: bool,
    chunk_rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    N, D = x.shape
    V = weight.shape[0]
    if weight.shape[1] != D or target.shape != (N,) or (bias is not None and bias.shape != (V,)):
        raise ValueError(
            f"linear_cross_entropy: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
            f"bias {None if bias is None else tuple(bias.shape)}, target {tuple(target.shape)} "
            "do not fit x[N,D] @ weight[V,D].T + bias[V] against target[N]"
        )
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= V))
    if bool(bad.any()):
        value = int(target[bad][0])
        raise ValueError(f"linear_cross_entropy: target {value} outside [0, {V})")
    n_valid = int(valid.sum())
    inv_n = 1.0 / max(n_valid, 1)
    triton_path = use_triton(x.device)
    target = target.contiguous()
    acc = acc_dtype(x.dtype)
    loss_rows = torch.empty(N, dtype=acc, device=x.device)
    correct = torch.empty(N, dtype=torch.int32, device=x.device)
    empty = x.new_empty(0)
    if compute_grad:
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros(V, D, dtype=acc, device=x.device)
        grad_b = None if bias is None else torch.zeros(V, dtype=acc, device=x.device)
    # one logits buffer (and, for bf16/fp16 on the torch path, its fp32 upcast) reused by
    # every chunk: on a CPU a fresh [rows, V] allocation per chunk costs more in page faults
    # than the softmax, and a cache-sized chunk keeps the whole chain in cache
    rows = max(1, min(chunk_rows, N))
    z_buf = torch.empty(rows, V, dtype=x.dtype, device=x.device)
    low = x.dtype != acc
    work = None
    if low and not triton_path:
        work = torch.empty(rows, V, dtype=acc, device=x.device)
    with torch.autocast(x.device.type, enabled=False):
        for s in range(0, N, rows):
            e = min(s + rows, N)
            xc, z = x[s:e], z_buf[: e - s]
            if bias is None:
                torch.mm(xc, weight.t(), out=z)
            else:
                torch.addmm(bias, xc, weight.t(), out=z)
            args = (z, target[s:e], loss_rows[s:e], correct[s:e], ignore_index, inv_n)
            if triton_path:
                g32 = None
                _ce_chunk_triton(*args, compute_grad)
            else:
                g32 = _ce_chunk_torch(*args, compute_grad, work)
            if not compute_grad:
                continue
            # z now holds d loss / d logits for these rows (g32: the same in fp32, torch path)
            torch.mm(z, weight, out=grad_x[s:e])
            if not low:
                grad_w.addmm_(z.t(), xc)
            else:  # fp32 accumulation of a low-precision product
                grad_w.add_(z.t() @ xc)
            if grad_b is not None:
                grad_b.add_(z.sum(dim=0, dtype=acc) if g32 is None else g32.sum(dim=0))
    loss = loss_rows.sum() / n_valid if n_valid else loss_rows.sum() * float("nan")
    n_correct = correct.sum(dtype=torch.int64)
    if not compute_grad:  # three distinct empties: custom-op outputs may not alias
        return loss, n_correct, empty, x.new_empty(0), x.new_empty(0)
    grad_b = empty if grad_b is None else grad_b.to(weight.dtype)
    return loss, n_correct, grad_x, grad_w.to(weight.dtype), grad_b


@_lce_op.register_fake
def _(x, weight, bias, target, ignore_index, compute_grad, chunk_rows):
    loss = x.new_empty((), dtype=acc_dtype(x.dtype))
    n_correct = x.new_empty((), dtype=torch.int64)
    empty = x.new_empty(0)
    if not compute_grad:
        return loss, n_correct, empty, x.new_empty(0), x.new_empty(0)
    grad_b = empty if bias is None else torch.empty_like(bias)
    return loss, n_correct, torch.empty_like(x), torch.empty_like(weight), grad_b


def _setup_context(ctx, inputs, output):
    if not inputs[5]:
        ctx.save_for_backward(None, None, None)
        ctx.has_bias = False
        return
    ctx.has_bias = inputs[2] is not None
    ctx.save_for_backward(*output[2:])


def _backward(ctx, grad_loss, _g_correct, _g_gx, _g_gw, _g_gb):
    grad_x, grad_w, grad_b = ctx.saved_tensors
    if grad_x is None:
        raise RuntimeError("linear_cross_entropy: backward through a call made without grad")
    g = grad_loss.to(acc_dtype(grad_loss.dtype))
    if type(grad_loss) is torch.Tensor:
        # eager: scale the gradients computed in the forward in place, so no second [V, D]
        # buffer exists; a second backward through a retained graph then fails autograd's
        # saved-tensor version check instead of silently scaling twice
        out_b = grad_b.mul_(g) if ctx.has_bias else None
        return grad_x.mul_(g), grad_w.mul_(g), out_b, None, None, None, None
    # traced (torch.compile / AOT autograd): functional, out of place
    out_b = (grad_b * g).to(grad_b.dtype) if ctx.has_bias else None
    out_x, out_w = (grad_x * g).to(grad_x.dtype), (grad_w * g).to(grad_w.dtype)
    return out_x, out_w, out_b, None, None, None, None


_lce_op.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    ignore_index: int = -100,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of ``x @ weight.T + bias`` against ``target`` (fp32 scalar, over the
    non-ignored rows) and the number of rows whose argmax is the target (int64 scalar), without
    ever holding the full ``[N, V]`` logits or their gradient."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    rows = chunk_rows or chunk_rows_for(weight.shape[0], x.device.type, weight.shape[1])
    loss, n_correct, *_ = _lce_op(
        x.contiguous(), weight, bias, target, int(ignore_index), bool(needs_grad), int(rows)
    )
    return loss, n_correct


def linear_cross_entropy_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unfused formula (full logits in memory): the exact reference for tests."""
    logits = F.linear(x, weight, bias)
    loss = F.cross_entropy(logits.to(acc_dtype(logits.dtype)), target, ignore_index=ignore_index)
    n_correct = ((logits.argmax(dim=-1) == target) & (target != ignore_index)).sum()
    return loss, n_correct
