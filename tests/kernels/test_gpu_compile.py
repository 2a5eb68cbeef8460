"""Every Triton kernel compiles to a CUDA binary, on machines without a GPU.

The interpreter tests check the kernels' maths; they run any Python, so a kernel can pass them
and still fail in Triton's compiler (``float(scale)`` inside a kernel does). This test sends the
launches the ops make on a GPU (GPU block sizes, fp32/fp16/bf16) through the compiler down to
a cubin for a T4 (sm_75), an A100 (sm_80), an RTX 30 series card (sm_86) and an H100 (sm_90).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("compile_for_gpu.py")
ARCHS = [75, 80, 86, 90]
# per arch: 3 dtypes x (pool fwd, pool bwd, CE with and without grad, drop, forget-mult fwd,
# forget-mult bwd with and without the state's gradient)
N_LAUNCHES = 24


def test_every_kernel_compiles_for_cuda(tmp_path):
    triton = pytest.importorskip("triton")
    try:
        from triton.runtime.jit import native_specialize_impl  # noqa: F401
    except ImportError:
        pytest.skip(f"triton {triton.__version__}: compile check written for 3.6/3.7's API")
    env = {**os.environ, "TRITON_INTERPRET": "0", "CUDA_VISIBLE_DEVICES": ""}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile now, not from an earlier run's cache
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, ARCHS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    failed = [f"{r['kernel']} {r['dtype']} sm_{r['sm']}: {r['error']}" for r in rows if not r["ok"]]
    assert not failed, "\n".join(failed)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(rows) == N_LAUNCHES * len(ARCHS)
    assert all(r["cubin_bytes"] > 0 for r in rows)
