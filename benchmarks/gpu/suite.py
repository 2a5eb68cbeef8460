"""The GPU suite: one command, under 10 minutes on one H100, nothing fetched from the network.

    bash benchmarks/gpu/run.sh            # on the GPU machine (installs ./wheelhouse if present)
    python benchmarks/gpu/suite.py --cpu  # tiny end-to-end check of the whole script on a CPU

Sections (each skipped with a note when the time budget is spent):
  1. environment: device, versions, cuDNN, date;
  2. the CUDA tests (the gpu-marked cases of tests/kernels, tests/model, tests/train);
  3. bf16 cuDNN LSTM: forward + backward of an AWD-LSTM-sized nn.LSTM in bf16 and under autocast;
  4. kernel microbenchmarks (triton.testing.do_bench, median ms; peak MiB) vs the torch refs;
  5. steps at bs 48: LM (bptt 70, vocab 60k) and unfrozen classifier (IMDB-length documents),
     fastulm (each piece on/off) vs the reference, step time and peak memory;
  6. with the process capped at 8 GiB: the largest batch size at which each step fits.
Writes ``gpu_results.json`` and ``gpu_results.md`` into --out (default $OUT, else
benchmarks/results).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from bench_steps import (  # noqa: E402
    MiB,
    fastai_clas_step,
    fastai_lm_step,
    fastulm_clas_step,
    fastulm_lm_step,
    peak_mib,
)

GiB = 2**30


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in text


def have_fastai() -> str | None:
    try:
        import fastai
        import fastai.text.models.core
    except Exception:
        return None
    return fastai.__version__


# ---------------------------------------------------------------------------------------------
def section_env(cfg) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": cfg.device.type,
        "fastai": have_fastai(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    if cfg.device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(
            device_name=props.name,
            total_mib=round(props.total_memory / MiB),
            sm_count=props.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        env["device_name"] = platform.processor() or "cpu"
    return env


def section_tests(cfg) -> dict:
    # every CUDA test (kernels, model, trainer); the dirs that need polars/spaCy stay out
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if cfg.cpu:
        cmd += ["tests/kernels", "-k", "philox and shape0"]  # a quick check of this step
    else:
        cmd += ["-m", "gpu", "tests/kernels", "tests/model", "tests/train"]
    # the installed fastulm, not the checkout's fastulm/ folder (no kernels/ in it): `-p`
    # imports it before pytest puts the repository root first on sys.path, and
    # PYTHONSAFEPATH keeps `-m` from doing so (see scripts/device_env.sh)
    cmd += ["-p", "fastulm"]
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=cfg.test_timeout
    )
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    print("\n".join(tail), flush=True)
    return {
        "rc": proc.returncode,
        "summary": tail[-1] if tail else "",
        "seconds": time.monotonic() - t0,
    }


def section_bf16_lstm(cfg) -> dict:
    out = {}
    dev = cfg.device
    x = torch.randn(8, 70, 400, device=dev)
    for name in ("bf16_weights", "autocast_bf16"):
        try:
            lstm = torch.nn.LSTM(400, 1152, batch_first=True).to(dev)
            if name == "bf16_weights":
                lstm = lstm.to(torch.bfloat16)
                y, _ = lstm(x.to(torch.bfloat16).requires_grad_())
            else:
                with torch.autocast(dev.type, dtype=torch.bfloat16):
                    y, _ = lstm(x.requires_grad_())
            y.float().pow(2).mean().backward()
            ref, _ = torch.nn.LSTM(400, 1152, batch_first=True).to(dev).float()(x.float())
            out[name] = {"ok": True, "out_dtype": str(y.dtype), "finite": bool(y.isfinite().all())}
            del ref
        except Exception as err:
            out[name] = {"ok": False, "error": f"{type(err).__name__}: {str(err)[:200]}"}
    if dev.type == "cuda":
        out["cudnn_version"] = torch.backends.cudnn.version()
    return out


def _time_ms(fn, cfg) -> float:
    if cfg.device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[1]


def _pool_case(cfg, dtype):
    from fastulm.kernels import masked_concat_pool
    from fastulm.kernels.concat_pool import masked_concat_pool_reference

    bs, T, H = cfg.pool_shape
    dev = cfg.device
    x = torch.randn(bs, T, H, device=dev, dtype=dtype, requires_grad=True)
    mask = torch.zeros(bs, T, dtype=torch.bool, device=dev)
    for b in range(bs):  # pad_chunk layout: whole bptt chunks first, remainder last
        n = T - (b * 37) % (T // 2)
        front = (T - n) // 72 * 72
        mask[b, :front] = True
        mask[b, front + n :] = True
    g = torch.randn(bs, 3 * H, device=dev, dtype=dtype)
    return {
        impl: (lambda pool=pool: torch.autograd.grad(pool(x, mask, 72), x, g))
        for impl, pool in (
            ("fastulm", masked_concat_pool),
            ("reference", masked_concat_pool_reference),
        )
    }


def _drop_case(cfg):
    from fastulm.kernels import weight_drop

    w = torch.randn(*cfg.drop_shape, device=cfg.device, requires_grad=True)
    g = torch.randn_like(w)
    return {
        "fastulm": lambda: torch.autograd.grad(weight_drop(w, 0.5, 1234), w, g),
        "F.dropout": lambda: torch.autograd.grad(F.dropout(w, 0.5), w, g),
    }


def _lce_case(cfg, dtype):
    from fastulm.kernels import linear_cross_entropy
    from fastulm.kernels.linear_ce import linear_cross_entropy_reference

    N, D, V = cfg.lce_shape
    dev = cfg.device
    x = torch.randn(N, D, device=dev, dtype=dtype, requires_grad=True)
    w = (torch.randn(V, D, device=dev) * 0.05).to(dtype).requires_grad_()
    b = torch.zeros(V, device=dev, dtype=dtype, requires_grad=True)
    t = torch.randint(0, V, (N,), device=dev)
    return {
        impl: (lambda lce=lce: torch.autograd.grad(lce(x, w, b, t)[0], [x, w, b]))
        for impl, lce in (
            ("fastulm", linear_cross_entropy),
            ("reference", linear_cross_entropy_reference),
        )
    }


def section_kernels(cfg) -> list[dict]:
    cases = [
        (
            "masked_concat_pool fwd+bwd",
            torch.float32,
            cfg.pool_shape,
            lambda: _pool_case(cfg, torch.float32),
        ),
        (
            "masked_concat_pool fwd+bwd",
            torch.bfloat16,
            cfg.pool_shape,
            lambda: _pool_case(cfg, torch.bfloat16),
        ),
        ("weight_drop fwd+bwd", torch.float32, cfg.drop_shape, lambda: _drop_case(cfg)),
        (
            "linear_cross_entropy fwd+bwd",
            torch.float32,
            cfg.lce_shape,
            lambda: _lce_case(cfg, torch.float32),
        ),
        (
            "linear_cross_entropy fwd+bwd",
            torch.bfloat16,
            cfg.lce_shape,
            lambda: _lce_case(cfg, torch.bfloat16),
        ),
    ]
    rows = []
    for op, dtype, shape, make in cases:
        free()
        fns = make()
        for impl, fn in fns.items():
            row = dict(op=op, impl=impl, dtype=str(dtype).replace("torch.", ""), shape=list(shape))
            try:
                row["ms"] = round(_time_ms(fn, cfg), 3)
                row["peak_mib"] = round(peak_mib(fn, cfg.device), 1)
            except Exception as err:
                row["error"] = f"{type(err).__name__}: {str(err)[:160]}"
            rows.append(row)
            log(f"kernel {row}")
        del fns
    return rows


def _lm(fastulm: bool, **kw):
    def build(c, bs):
        if fastulm:
            return fastulm_lm_step(c.vocab, bs, c.bptt, c.device, sizes=c.sizes, **kw)
        return fastai_lm_step(c.vocab, bs, c.bptt, c.device, sizes=c.sizes, **kw)

    return "lm", build


def _clas(fastulm: bool, **kw):
    def build(c, bs):
        if fastulm:
            return fastulm_clas_step(c.vocab, bs, c.clas_seq, c.device, sizes=c.sizes, **kw)
        return fastai_clas_step(c.vocab, bs, c.clas_seq, c.device, sizes=c.sizes, **kw)

    return "clas", build


BF16 = torch.bfloat16
STEP_VARIANTS = {
    "lm/reference": _lm(False),
    "lm/fastulm": _lm(True),
    "lm/fastulm-unfused-ce": _lm(True, fused_ce=False),
    "lm/fastulm-ckpt": _lm(True, checkpoint=True),
    "lm/fastulm-bf16": _lm(True, amp=BF16),
    "lm/reference-bf16": _lm(False, amp=BF16),
    "clas/reference": _clas(False),
    "clas/fastulm": _clas(True),
    "clas/fastulm-ref-pool": _clas(True, fused_pool=False),
    "clas/fastulm-ckpt": _clas(True, checkpoint=True),
    "clas/fastulm-bf16": _clas(True, amp=BF16),
    "clas/fastulm-ckpt-bf16": _clas(True, checkpoint=True, amp=BF16),
    "clas/reference-bf16": _clas(False, amp=BF16),
}


def _variants(cfg):
    for name, (kind, build) in STEP_VARIANTS.items():
        if "reference" in name and not cfg.fastai:
            continue
        yield name, kind, build


def _run_step(cfg, build, bs, repeats):
    step = build(cfg, bs)
    step()  # warm-up
    if cfg.device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        if cfg.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = peak_mib(step, cfg.device)
    return (sorted(times)[len(times) // 2] if times else float("nan")), peak


def section_steps(cfg, budget) -> list[dict]:
    rows = []
    for name, _kind, build in _variants(cfg):
        if budget.left() < cfg.reserve:
            rows.append(dict(variant=name, skipped="time budget"))
            continue
        free()
        try:
            sec, peak = _run_step(cfg, build, cfg.bs, cfg.repeats)
            rows.append(
                dict(variant=name, bs=cfg.bs, step_s=round(sec, 4), peak_mib=round(peak, 1))
            )
        except Exception as err:
            if not is_oom(err):
                traceback.print_exc()
            rows.append(
                dict(variant=name, bs=cfg.bs, error=f"{type(err).__name__}: {str(err)[:160]}")
            )
        log(f"step {rows[-1]}")
        free()
    return rows


SEARCH_ORDER = [  # most important first: the budget may cut the tail
    "lm/reference",
    "lm/fastulm",
    "clas/reference",
    "clas/fastulm",
    "clas/fastulm-ckpt",
    "clas/fastulm-ckpt-bf16",
    "lm/fastulm-bf16",
    "lm/fastulm-ckpt",
    "clas/fastulm-bf16",
    "clas/reference-bf16",
    "lm/reference-bf16",
]


def section_max_batch(cfg, budget) -> list[dict]:
    rows = []
    available = {name: (kind, build) for name, kind, build in _variants(cfg)}
    for name in SEARCH_ORDER:
        if name not in available:
            continue
        kind, build = available[name]
        candidates = cfg.lm_batches if kind == "lm" else cfg.clas_batches
        fits, fails, errors = None, None, None
        for bs in candidates:
            if budget.left() < cfg.reserve / 2:
                errors = "time budget"
                break
            free()
            try:
                _run_step(cfg, build, bs, repeats=0)
                fits = bs
            except Exception as err:
                if not is_oom(err):
                    errors = f"{type(err).__name__}: {str(err)[:160]}"
                fails = bs
                break
            finally:
                free()
        rows.append(
            dict(variant=name, largest_fitting_bs=fits, first_failing_bs=fails, note=errors)
        )
        log(f"max batch {rows[-1]}")
    return rows


# ---------------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    env = res["env"]
    lines = [
        f"### GPU suite: {env.get('device_name')} ({env['date']})",
        "",
        f"torch {env['torch']}, triton {env.get('triton')}, CUDA {env.get('cuda')}, "
        f"cuDNN {env.get('cudnn')}, fastai {env.get('fastai')}; mode `{res['mode']}`; "
        f"memory cap {res.get('memory_cap_gib')} GiB for the batch-size search; "
        f"suite wall time {res.get('wall_s', 0):.0f} s.",
        "",
    ]
    if "tests" in res:
        lines += [
            f"Kernel tests on the device: `{res['tests'].get('summary')}` "
            f"(rc {res['tests'].get('rc')}).",
            "",
        ]
    if "bf16_lstm" in res:
        lines += [f"bf16 LSTM: `{json.dumps(res['bf16_lstm'])}`", ""]
    if res.get("kernels"):
        lines += [
            "| op | impl | dtype | shape | median ms | peak MiB |",
            "|---|---|---|---|---|---|",
        ]
        for r in res["kernels"]:
            lines.append(
                f"| {r['op']} | {r['impl']} | {r['dtype']} | {r['shape']} | "
                f"{r.get('ms', r.get('error'))} | {r.get('peak_mib', '')} |"
            )
        lines.append("")
    if res.get("steps"):
        c = res["config"]
        lines += [
            f"Steps at bs {c['bs']} (LM bptt {c['bptt']}, vocab {c['vocab']}; classifier "
            f"documents of {c['clas_seq']} tokens), forward + backward:",
            "",
            "| variant | step s | peak MiB |",
            "|---|---|---|",
        ]
        for r in res["steps"]:
            lines.append(
                f"| {r['variant']} | {r.get('step_s', r.get('error', r.get('skipped')))} | "
                f"{r.get('peak_mib', '')} |"
            )
        lines.append("")
    if res.get("max_batch"):
        lines += [
            "| variant | largest bs that fits | first bs that fails | note |",
            "|---|---|---|---|",
        ]
        for r in res["max_batch"]:
            lines.append(
                f"| {r['variant']} | {r['largest_fitting_bs']} | {r['first_failing_bs']} | "
                f"{r['note'] or ''} |"
            )
        lines.append("")
    return "\n".join(lines)


def write(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("gpu_results.json", json.dumps(res, indent=1, default=str)),
        ("gpu_results.md", markdown(res)),
    ):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cpu", action="store_true", help="tiny end-to-end run on the CPU")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for the whole suite")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--cap-gib", type=float, default=8.0)
    args = ap.parse_args(argv)
    out = args.out or Path(os.environ.get("OUT") or REPO / "benchmarks" / "results")
    t_start = time.monotonic()
    budget = Budget(args.budget)

    if not args.cpu and not torch.cuda.is_available():
        print("suite.py: no CUDA device (use --cpu for the tiny CPU check)", file=sys.stderr)
        return 2
    cfg = argparse.Namespace(cpu=args.cpu, device=torch.device("cpu" if args.cpu else "cuda"))
    cfg.fastai = have_fastai() is not None
    if args.cpu:
        cfg.vocab, cfg.bptt, cfg.bs, cfg.clas_seq, cfg.repeats = 500, 20, 4, 144, 1
        cfg.sizes = {"emb_sz": 24, "n_hid": 40}
        cfg.pool_shape, cfg.drop_shape, cfg.lce_shape = (4, 144, 40), (96, 48), (64, 40, 500)
        cfg.lm_batches, cfg.clas_batches = [2, 4], [2, 4]
        cfg.reserve, cfg.test_timeout = 5.0, 300
    else:
        cfg.vocab, cfg.bptt, cfg.bs, cfg.clas_seq, cfg.repeats = 60000, 70, 48, 1440, 3
        cfg.sizes = None
        cfg.pool_shape, cfg.drop_shape, cfg.lce_shape = (
            (48, 1440, 400),
            (4608, 1152),
            (3360, 400, 60000),
        )
        cfg.lm_batches = [32, 48, 64, 96, 128, 192, 256, 384]
        cfg.clas_batches = [16, 24, 32, 48, 64, 96, 128, 192]
        cfg.reserve, cfg.test_timeout = 60.0, 240

    res = {
        "mode": "cpu-dry-run" if args.cpu else "cuda",
        "config": {k: v for k, v in vars(cfg).items() if k in ("vocab", "bptt", "bs", "clas_seq")},
    }
    sections = [("env", lambda: section_env(cfg))]
    if not args.skip_tests:
        sections.append(("tests", lambda: section_tests(cfg)))
    sections += [
        ("bf16_lstm", lambda: section_bf16_lstm(cfg)),
        ("kernels", lambda: section_kernels(cfg)),
        ("steps", lambda: section_steps(cfg, budget)),
    ]
    for name, fn in sections:
        log(f"== {name} ({budget.left():.0f} s left)")
        try:
            res[name] = fn()
        except Exception as err:
            traceback.print_exc()
            res[name] = {"error": f"{type(err).__name__}: {err}"}
        write(res, out)

    # the batch-size search runs last, under the memory cap
    log(f"== max_batch ({budget.left():.0f} s left)")
    if cfg.device.type == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GiB / total))
        res["memory_cap_gib"] = args.cap_gib
    else:
        res["memory_cap_gib"] = None
    try:
        res["max_batch"] = section_max_batch(cfg, budget)
    except Exception as err:
        traceback.print_exc()
        res["max_batch"] = [
            {
                "variant": "all",
                "largest_fitting_bs": None,
                "first_failing_bs": None,
                "note": str(err),
            }
        ]
    res["wall_s"] = time.monotonic() - t_start
    write(res, out)
    print(markdown(res), flush=True)
    log(f"wrote {out / 'gpu_results.json'} and {out / 'gpu_results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
