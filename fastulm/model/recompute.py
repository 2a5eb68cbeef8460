"""Activation checkpointing whose first pass runs without autograd.

``torch.utils.checkpoint`` (non-reentrant) runs the first pass with autograd on and only
drops what it saves, so the LSTM still runs its training kernels there: oneDNN's and cuDNN's
training forwards write a workspace (the gates of every step) that is then thrown away. Here
the first pass runs under ``no_grad`` and gets the inference kernels (oneDNN's is about 30%
faster than its training forward for a 1152-wide layer at bs 12), and the backward reruns
``fn`` with autograd, the RNG state and the autocast state of the first pass, so every
dropout mask replays.

The function's parameters are passed in as inputs, so their gradients come back through
autograd like any other: ``loss.backward()``, ``torch.autograd.grad`` and DDP's hooks all see
them. The two passes use different kernels (on a CPU torch picks oneDNN's inference or
training LSTM by grad mode alone), so the recomputed activations may differ from the first
pass's in the last bit (3e-8 to 4e-7 relative in fp32 here, by layer size); the gradients
are those of the recomputed pass. Each step's gradients therefore equal those without
checkpointing to fp32 rounding (the LM's bit for bit where one kernel serves both passes), but
a whole training run is not bitwise the same: the classifier's small-batch Adam steps amplify
such rounding about a thousandfold over an epoch or two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn: Callable, n_in: int, *tensors: torch.Tensor):
        inputs = tensors[:n_in]
        device = inputs[0].device
        ctx.fn, ctx.n_in, ctx.device = fn, n_in, device
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        ctx.autocast = (
            torch.is_autocast_enabled(device.type),
            torch.get_autocast_dtype(device.type),
        )
        ctx.save_for_backward(*tensors)
        ctx.set_materialize_grads(False)
        with torch.no_grad():  # autograd is off in Function.forward already; say so
            return tuple(fn(*inputs))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):
        saved = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in saved[: ctx.n_in]]
        params = saved[ctx.n_in :]
        device = ctx.device
        enabled, dtype = ctx.autocast
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.enable_grad():
            torch.set_rng_state(ctx.cpu_rng)
            if cuda:
                torch.cuda.set_rng_state(ctx.cuda_rng, device)
            with torch.autocast(device.type, dtype=dtype, enabled=enabled):
                outs = ctx.fn(*inputs)
        used = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        every = (*inputs, *params)
        wrt = [t for t in every if t.requires_grad]
        got = [None] * len(wrt)
        if used and wrt:
            outs, grads = zip(*used)
            got = torch.autograd.grad(outs, wrt, grads, allow_unused=True)
        got = iter(got)
        return None, None, *(next(got) if t.requires_grad else None for t in every)


def recompute(
    fn: Callable[..., tuple[torch.Tensor, ...]],
    *inputs: torch.Tensor,
    params: Iterable[torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    """``fn(*inputs)``, keeping only ``inputs`` for backward, which reruns ``fn``.

    ``fn`` returns a tuple of tensors and may use only ``inputs`` and ``params`` (the
    parameters it trains; frozen ones may be left out) as tensors that need gradients.
    """
    params = [p for p in params if p.requires_grad]
    return _Recompute.apply(fn, len(inputs), *inputs, *params)
