"""Compile every Triton kernel launch to a CUDA binary on a machine without a GPU.

The interpreter runs the kernels' maths on the CPU but accepts code that the real compiler
rejects (layouts, dtype conversions, register pressure, shared memory): this script makes the
launches the ops make on a GPU (the GPU block sizes and warps, every dtype) and sends each
through Triton's whole pipeline, ``ttir -> ttgir -> llir -> ptx -> cubin`` with the bundled
``ptxas``, for the given compute capabilities. Run with ``TRITON_INTERPRET=0`` (the kernels must
be JIT functions) and no GPU needed. Prints one JSON line per launch; exits 1 if any failed.

    TRITON_INTERPRET=0 python tests/kernels/compile_for_gpu.py 90 80 75
"""

from __future__ import annotations

import importlib
import json
import sys

import torch
import triton
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import native_specialize_impl

pool = importlib.import_module("fastulm.kernels.concat_pool")
lce = importlib.import_module("fastulm.kernels.linear_ce")
wdrop = importlib.import_module("fastulm.kernels.weight_drop")
fmult = importlib.import_module("fastulm.kernels.forget_mult")


class Recorder:
    """Stands in for a JIT kernel: ``kernel[grid](*args, **kw)`` records the launch."""

    def __init__(self, kernel, launches: list):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        return lambda *args, **kw: self.launches.append((self.kernel, grid, args, kw))


def gpu_launches() -> list:
    """The launches each op's Triton path makes, per dtype, with CPU stand-in tensors."""
    launches: list = []
    for module, name in [
        (pool, "_pool_fwd_kernel"),
        (pool, "_pool_bwd_kernel"),
        (lce, "_ce_chunk_kernel"),
        (wdrop, "_weight_drop_kernel"),
        (fmult, "_fwd_kernel"),
        (fmult, "_bwd_kernel"),
    ]:
        setattr(module, name, Recorder(getattr(module, name), launches))
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        bs, T, H = 3, 37, 400
        x = torch.randn(bs, T, H).to(dt)
        meta = torch.tensor([[0, 37, 36], [5, 37, 36], [0, 20, 19]], dtype=torch.int32)
        arg = torch.zeros(bs, H, dtype=torch.int32)
        pool._fwd_triton(x, meta, x.new_empty(bs, 3 * H), arg)
        pool._bwd_triton(x.new_empty(bs, 3 * H), arg, meta, torch.empty_like(x))
        rows, V = 8, 60_003
        z = torch.randn(rows, V).to(dt)
        target = torch.arange(rows, dtype=torch.int64)
        loss = torch.empty(rows, dtype=torch.float32)
        correct = torch.empty(rows, dtype=torch.int32)
        for write_grad in (False, True):
            lce._ce_chunk_triton(z, target, loss, correct, -100, 1 / rows, write_grad)
        wdrop._apply_triton(torch.randn(1152, 400).to(dt), 0.5, 2**31 - 2)
        bs, T, H = 4, 80, 1152  # a QRNN layer's gates [bs, T, 3H]; the state in fp32
        gates, c0 = torch.randn(bs, T, 3 * H).to(dt), torch.zeros(bs, H)
        h, c = gates.new_empty(bs, T, H), torch.empty(bs, T, H)
        fmult._fwd_triton(gates, c0, h, c)
        for dc in (None, torch.empty_like(c)):  # the state's gradient used, or not
            fmult._bwd_triton(gates, c0, c, h, dc, torch.empty_like(gates), torch.empty_like(c0))
    return launches


def compile_launch(kernel, args: tuple, kw: dict, target: GPUTarget):
    """Type the arguments as Triton's launcher does, then compile for ``target``."""
    backend = make_backend(target)
    names = kernel.arg_names
    signature, constexprs, attrs = {}, {}, {}
    values = dict(zip(names, args)) | {k: v for k, v in kw.items() if k in names}
    for i, name in enumerate(names):
        value = values[name]
        if kernel.params[i].is_constexpr:
            signature[name], constexprs[(i,)] = "constexpr", value
            continue
        ty, key = native_specialize_impl(BaseBackend, value, False, True, True)
        signature[name] = ty
        if ty == "constexpr":  # ints equal to 1 are specialized, as at launch
            constexprs[(i,)] = key
        elif isinstance(key, str):
            attrs[(i,)] = backend.parse_attr(key)
    options = {k: v for k, v in kw.items() if k not in names}
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=target, options=options)


def main(archs: list[int]) -> int:
    failed = 0
    for kernel, _grid, args, kw in gpu_launches():
        dtype = str(args[0].dtype).removeprefix("torch.")
        consts = {k: v for k, v in kw.items() if k not in ("num_warps",)}
        for cc in archs:
            row = {"kernel": kernel.__name__, "dtype": dtype, "sm": cc, **consts}
            try:
                compiled = compile_launch(kernel, args, kw, GPUTarget("cuda", cc, 32))
                row |= {"ok": True, "cubin_bytes": len(compiled.asm["cubin"])}
                row["shared"] = compiled.metadata.shared
            except Exception as exc:  # every failure is reported, then the exit code says so
                failed += 1
                row |= {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[-800:]}"}
            print(json.dumps(row), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main([int(a) for a in sys.argv[1:]] or [90]))
