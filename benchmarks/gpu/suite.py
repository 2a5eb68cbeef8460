"""The GPU suite: one prepared call on a lent GPU, every stage guarded by its own time budget.

    bash benchmarks/gpu/run.sh                       # on the GPU machine (see benchmarks/gpu/README.md)
    python benchmarks/gpu/suite.py --cpu --out DIR   # the CPU rehearsal: tiny sizes, same code paths

Stages, in this order (each one's deadline leaves the later stages their allotted seconds; time a
stage does not use goes to the next; a stage that reaches its deadline stops between
measurements and says so in the JSON):

  1. env        torch, CUDA, cuDNN, triton, fastai versions; the device;
  2. bf16_lstm  an AWD-LSTM-sized LSTM (3 layers, 400/1152) forward + backward in bf16 on
                cuDNN against fp32, and the trainer's own probe: it decides the training
                precision of every later fastulm step (bf16, else fp16 with a GradScaler, with
                a printed message);
  3. tests      the gpu-marked tests: tests/kernels, then tests/model, then tests/train, each
                pytest's output streamed line by line into tests.log as it runs;
  4. steps      one full training step (forward + backward + AdamW) of the LM (bs 48 x bptt 70,
                vocab 60k) and of the unfrozen classifier (bs 48, 1440-token documents):
                fastai with to_fp16() (fp16 autocast + GradScaler) and fp32, fastulm at the
                decided precision with each piece on/off;
  5. lm_sweep   fastulm's LM training step at paper sizes, vocab 60k, bptt 80, bs 64/128/256/512:
                LSTM layers, then QRNN layers (--arch qrnn), at the default linear + CE chunk
                (64 MB), then LSTM at a 1 GiB chunk: tokens/s and peak memory (sizes the
                full-IMDB recipe, scripts/imdb_pipeline.py, and says whether QRNN pays);
  6. max_batch  with the process capped at 8 GiB: the largest batch size at which a full
                training step fits, fastai (to_fp16) vs fastulm;
  7. kernels    triton.testing.do_bench (median ms) and peak MiB of the four ops vs their torch
                references.

Files in --out (default $OUT): suite-YYYY-MM-DD.json (rewritten after every measurement, with
the top-level "claims" object), suite.md (the tables), tests.log (pytest, streamed). run.sh
adds suite.log (everything printed) and env.txt: five files, within the 8 a device call
returns.
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import gc
import json
import os
import platform
import re
import subprocess
import sys
import threading
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
MAX_OUT_FILES = 8  # what a device call brings back from $OUT

# seconds each stage is allotted on the GPU (the budget, 480 s by default, is their sum plus
# slack); --cpu scales them to its budget
ALLOT = {
    "env": 10,
    "bf16_lstm": 20,
    "tests": 150,
    "steps": 90,
    "lm_sweep": 60,
    "max_batch": 90,
    "kernels": 40,
}
STAGES = list(ALLOT)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_oom(err: BaseException) -> bool:
    """Out of memory, also as cuDNN/cuBLAS report it (CUDNN_STATUS_ALLOC_FAILED)."""
    text = str(err).lower()
    return isinstance(err, torch.cuda.OutOfMemoryError) or any(
        s in text for s in ("out of memory", "alloc_failed", "allocation failed")
    )


def err_text(err: BaseException, n: int = 200) -> str:
    return f"{type(err).__name__}: {str(err)[:n]}"


def have_fastai() -> str | None:
    try:
        import fastai
        import fastai.text.models.core
    except Exception:
        return None
    return fastai.__version__


class Clock:
    """The suite's deadlines: stage i may run until the end of the budget minus the seconds
    allotted to the stages after it."""

    def __init__(self, budget: float, allot: dict[str, float]):
        self.t0 = time.monotonic()
        self.end = self.t0 + budget
        self.allot = allot
        self.deadline = self.end

    def start(self, stage: str) -> float:
        later = STAGES[STAGES.index(stage) + 1 :]
        self.deadline = self.end - sum(self.allot[s] for s in later)
        return self.left()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


class Results:
    """The JSON document, rewritten (atomically) after every measurement."""

    def __init__(self, out: Path, date: str):
        self.out = out
        self.path = out / f"suite-{date}.json"
        self.data: dict = {"claims": None}
        out.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        self.data["claims"] = claims(self.data)
        for path, text in (
            (self.path, json.dumps(self.data, indent=1, default=str) + "\n"),
            (self.out / "suite.md", markdown(self.data)),
        ):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# 1. environment
def stage_env(cfg, clock, res) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
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
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    else:
        env["device_name"] = platform.processor() or "cpu"
    log(f"env {env}")
    return env


# ---------------------------------------------------------------------------------------------
# 2. bf16 cuDNN LSTM: decides the precision of the fastulm steps
def _lstm_stack(sizes, dev, dtype=torch.float32):
    torch.manual_seed(0)
    return [torch.nn.LSTM(i, o, batch_first=True).to(dev, dtype) for i, o in sizes]


def _run_stack(layers, x):
    for layer in layers:
        x, _ = layer(x)
    return x


def stage_bf16_lstm(cfg, clock, res) -> dict:
    dev = cfg.device
    emb, hid = cfg.lstm_sizes
    sizes = [(emb, hid), (hid, hid), (hid, emb)]
    bs, T = cfg.lstm_batch
    out: dict = {"shape": [bs, T], "sizes": sizes}
    torch.manual_seed(1)
    x = torch.randn(bs, T, emb, device=dev)
    ref_layers = _lstm_stack(sizes, dev)
    with torch.no_grad():
        ref = _run_stack(ref_layers, x).float()
    for name in ("autocast_bf16", "bf16_weights"):
        try:
            layers = _lstm_stack(sizes, dev)
            xi = x.clone().requires_grad_()
            if name == "bf16_weights":
                layers = [m.to(torch.bfloat16) for m in layers]
                y = _run_stack(layers, xi.to(torch.bfloat16))
            else:
                with torch.autocast(dev.type, dtype=torch.bfloat16):
                    y = _run_stack(layers, xi)
            y.float().pow(2).mean().backward()
            grads_finite = all(
                p.grad is not None and bool(p.grad.isfinite().all())
                for m in layers
                for p in m.parameters()
            )
            rel = float((y.detach().float() - ref).norm() / ref.norm())
            ok = y.dtype == torch.bfloat16 and bool(y.isfinite().all()) and grads_finite
            out[name] = {
                "ok": bool(ok and rel < 5e-2),
                "out_dtype": str(y.dtype),
                "rel_err_vs_fp32": round(rel, 5),
                "grads_finite": grads_finite,
            }
        except Exception as err:
            out[name] = {"ok": False, "error": err_text(err)}
        log(f"bf16 LSTM {name}: {out[name]}")
    try:
        from fastulm.train.learner import bf16_lstm_works

        out["trainer_probe"] = bool(bf16_lstm_works(dev))
    except Exception as err:
        out["trainer_probe"] = None
        out["trainer_probe_error"] = err_text(err)
    forced = cfg.force_precision
    works = out["autocast_bf16"].get("ok") and out.get("trainer_probe") is not False
    if forced:
        decided = forced
        msg = f"precision forced to {forced} (--precision)"
    elif works:
        decided = "bf16"
        msg = "bf16 cuDNN LSTM works: fastulm steps train in bf16 autocast"
    else:
        decided = "fp16" if dev.type == "cuda" else "fp32"
        why = out["autocast_bf16"].get("error") or out["autocast_bf16"]
        msg = (
            f"bf16 LSTM FAILED ({why}); trainer probe {out.get('trainer_probe')}: fastulm steps "
            f"fall back to {decided}" + (" with a GradScaler" if decided == "fp16" else "")
        )
    out["precision"], out["message"] = decided, msg
    cfg.amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[decided]
    log(msg)
    return out


# ---------------------------------------------------------------------------------------------
# 3. the CUDA tests, streamed into tests.log
# pytest -v: "tests/x.py::test_y[case] PASSED  [ 5%]" (the -ra summary's "FAILED tests/..."
# lines start with the outcome, so they do not match); a test's last outcome counts (an
# ERROR at teardown after PASSED is an error)
_OUTCOME = re.compile(r"^(\S+::.*?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def _stream(proc, sink, outcomes: dict[str, str]) -> None:
    for line in proc.stdout:
        sink.write(line)
        sink.flush()
        sys.stdout.write(line)
        m = _OUTCOME.match(line)
        if m:
            outcomes[m.group(1)] = m.group(2)


def stage_tests(cfg, clock, res) -> dict:
    env = {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONUNBUFFERED": "1"}
    # the installed fastulm, not the checkout's fastulm/ folder (no kernels/ in it): `-p`
    # imports it before pytest puts the repository root first on sys.path
    base = [sys.executable, "-m", "pytest", "-v", "--tb=short", "-p", "no:cacheprovider"]
    base += ["-p", "fastulm"]
    try:
        import pytest_timeout  # noqa: F401

        base += ["--timeout", str(int(cfg.test_case_timeout))]
    except ImportError:
        pass
    out: dict = {"runs": []}
    log_path = res.out / "tests.log"
    # kernels first: the Triton kernels are what has never run on a GPU
    shares = {"tests/kernels": 0.5, "tests/model": 0.6, "tests/train": 1.0}
    with open(log_path, "a") as sink:
        for folder, share in shares.items():
            left = clock.left()
            if left < 5:
                out["runs"].append({"folder": folder, "skipped": "time budget"})
                continue
            limit = max(5.0, left * share)
            cmd = [*base, folder, *cfg.test_select]
            sink.write(f"\n===== {' '.join(cmd)} (limit {limit:.0f} s)\n")
            sink.flush()
            log(f"tests {folder}: limit {limit:.0f} s")
            outcomes: dict[str, str] = {}
            t0 = time.monotonic()
            proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            reader = threading.Thread(target=_stream, args=(proc, sink, outcomes), daemon=True)
            reader.start()
            timed_out = False
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, 9)
                rc = proc.wait()
                sink.write(f"\n===== killed after {limit:.0f} s (stage time budget)\n")
            reader.join(timeout=10)
            print(flush=True)
            counts: dict[str, int] = {}
            for outcome in outcomes.values():
                counts[outcome] = counts.get(outcome, 0) + 1
            run = {
                "folder": folder,
                "rc": rc,
                "timed_out": timed_out,
                "seconds": round(time.monotonic() - t0, 1),
                "counts": counts,
                "failed_tests": sorted(k for k, v in outcomes.items() if v in ("FAILED", "ERROR")),
            }
            out["runs"].append(run)
            log(f"tests {folder}: {run}")
            res.data["tests"] = _test_totals(out)
            res.save()
    return _test_totals(out)


def _test_totals(out: dict) -> dict:
    tot: dict[str, int] = {}
    for run in out["runs"]:
        for k, v in run.get("counts", {}).items():
            tot[k] = tot.get(k, 0) + v
    out["passed"] = tot.get("PASSED", 0) + tot.get("XPASS", 0)
    out["failed"] = tot.get("FAILED", 0) + tot.get("ERROR", 0)
    out["skipped"] = tot.get("SKIPPED", 0) + tot.get("XFAIL", 0)
    out["complete"] = all(not r.get("timed_out") and "skipped" not in r for r in out["runs"])
    return out


# ---------------------------------------------------------------------------------------------
# 4. steps
def _step_builder(kind: str, side: str, **kw):
    def build(c, bs, bptt=None):
        extra = {"sizes": c.sizes, "optim": True, **kw}
        if kw.get("amp") == "auto":
            extra["amp"] = c.amp
        if c.cpu and extra.get("amp") == torch.float16:
            extra["amp"] = None  # oneDNN has no fp16 LSTM: the rehearsal's fastai rows in fp32
        if kind == "lm":
            fn = fastulm_lm_step if side == "fastulm" else fastai_lm_step
            return fn(c.vocab, bs, bptt or c.bptt, c.device, **extra)
        fn = fastulm_clas_step if side == "fastulm" else fastai_clas_step
        return fn(c.vocab, bs, c.clas_seq, c.device, **extra)

    return kind, side, build


FP16, BF16 = torch.float16, torch.bfloat16
# most important first: the claims' rows lead, the budget may cut the tail
STEP_VARIANTS = {
    "lm/fastai-fp16": _step_builder("lm", "fastai", amp=FP16),
    "lm/fastulm": _step_builder("lm", "fastulm", amp="auto"),
    "clas/fastai-fp16": _step_builder("clas", "fastai", amp=FP16),
    "clas/fastulm": _step_builder("clas", "fastulm", amp="auto"),
    "clas/fastulm-ckpt": _step_builder("clas", "fastulm", amp="auto", checkpoint=True),
    "lm/fastulm-ckpt": _step_builder("lm", "fastulm", amp="auto", checkpoint=True),
    "lm/fastai-fp32": _step_builder("lm", "fastai"),
    "clas/fastai-fp32": _step_builder("clas", "fastai"),
    "lm/fastulm-fp32": _step_builder("lm", "fastulm"),
    "clas/fastulm-fp32": _step_builder("clas", "fastulm"),
    "lm/fastulm-unfused-ce": _step_builder("lm", "fastulm", amp="auto", fused_ce=False),
    "clas/fastulm-ref-pool": _step_builder("clas", "fastulm", amp="auto", fused_pool=False),
}


def _variants(cfg, names):
    for name in names:
        kind, side, build = STEP_VARIANTS[name]
        if side == "fastai" and not cfg.fastai:
            continue
        yield name, kind, side, build


def _sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _measure(cfg, step, repeats: int) -> dict:
    step()  # warm-up: cuDNN plans, Triton compiles
    _sync(cfg.device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        _sync(cfg.device)
        times.append(time.perf_counter() - t0)
    row = {"step_s": round(sorted(times)[len(times) // 2], 5) if times else None}
    row["peak_mib"] = round(peak_mib(step, cfg.device), 1)
    if cfg.device.type == "cuda":
        row["max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MiB, 1)
    return row


def stage_steps(cfg, clock, res) -> list[dict]:
    rows: list[dict] = []
    res.data["steps"] = rows
    for name, kind, _side, build in _variants(cfg, STEP_VARIANTS):
        row = {"variant": name, "bs": cfg.bs}
        if kind == "lm":
            row["bptt"] = cfg.bptt
        if clock.left() < cfg.min_step_s:
            row["skipped"] = "time budget"
        else:
            free()
            try:
                row.update(_measure(cfg, build(cfg, cfg.bs), cfg.repeats))
            except Exception as err:
                if not is_oom(err):
                    traceback.print_exc()
                row["error"] = err_text(err)
            free()
        rows.append(row)
        log(f"step {row}")
        res.save()
    return rows


# ---------------------------------------------------------------------------------------------
# 5. LM throughput sweep
def stage_lm_sweep(cfg, clock, res) -> list[dict]:
    """LSTM rows at the default CE chunk first (they size the IMDB recipe), then the same
    batches with QRNN layers (whether the recipe should switch), then a 1 GiB CE chunk."""
    rows: list[dict] = []
    res.data["lm_sweep"] = rows
    _, _, build = STEP_VARIANTS["lm/fastulm"]
    saved = os.environ.get("FASTULM_CE_CHUNK_MB")
    plan = [("lstm", None, bs) for bs in cfg.sweep_bs]
    plan += [("qrnn", None, bs) for bs in cfg.sweep_bs]
    plan += [("lstm", 1024, bs) for bs in cfg.sweep_bs]
    try:
        for arch, chunk_mb, bs in plan:
            row = {"arch": arch, "bs": bs, "bptt": cfg.sweep_bptt}
            row["ce_chunk_mb"] = chunk_mb or "default"
            row["precision"] = str(cfg.amp).replace("torch.", "") if cfg.amp else "fp32"
            if clock.left() < cfg.min_step_s:
                row["skipped"] = "time budget"
            else:
                if chunk_mb is None:
                    os.environ.pop("FASTULM_CE_CHUNK_MB", None)
                else:
                    os.environ["FASTULM_CE_CHUNK_MB"] = str(chunk_mb)
                free()
                try:
                    c = argparse.Namespace(
                        **{**vars(cfg), "sizes": {**(cfg.sizes or {}), "arch": arch}}
                    )
                    m = _measure(cfg, build(c, bs, cfg.sweep_bptt), cfg.repeats)
                    row.update(m)
                    row["tokens_per_s"] = round(bs * cfg.sweep_bptt / m["step_s"])
                except Exception as err:
                    if not is_oom(err):
                        traceback.print_exc()
                    row["error"] = err_text(err)
                free()
            rows.append(row)
            log(f"lm sweep {row}")
            res.save()
    finally:
        if saved is None:
            os.environ.pop("FASTULM_CE_CHUNK_MB", None)
        else:
            os.environ["FASTULM_CE_CHUNK_MB"] = saved
    return rows


# ---------------------------------------------------------------------------------------------
# 6. largest batch under the 8 GiB cap
SEARCH_ORDER = [
    "lm/fastai-fp16",
    "lm/fastulm-ckpt",
    "clas/fastai-fp16",
    "clas/fastulm-ckpt",
    "lm/fastulm",
    "clas/fastulm",
]


def stage_max_batch(cfg, clock, res) -> list[dict]:
    rows: list[dict] = []
    res.data["max_batch"] = rows
    if cfg.device.type == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        free()
        torch.cuda.set_per_process_memory_fraction(min(1.0, cfg.cap_gib * GiB / total))
        res.data["memory_cap_gib"] = cfg.cap_gib
    else:
        res.data["memory_cap_gib"] = None  # no allocator cap on a CPU: the search runs as is
    try:
        for name, kind, _side, build in _variants(cfg, SEARCH_ORDER):
            cands = cfg.lm_batches if kind == "lm" else cfg.clas_batches
            row = {"variant": name, "largest_fitting_bs": None, "first_failing_bs": None}
            row["tried"] = {}
            lo, hi = -1, len(cands)  # cands[lo] fits, cands[hi] fails (bisection)
            while hi - lo > 1:
                if clock.left() < cfg.min_step_s:
                    row["note"] = "time budget"
                    break
                mid = (lo + hi) // 2
                fits = _fits(cfg, build, cands[mid], row)
                row["tried"][cands[mid]] = fits
                if fits is None:  # an error that is not an out-of-memory: stop this variant
                    break
                lo, hi = (mid, hi) if fits else (lo, mid)
            row["largest_fitting_bs"] = cands[lo] if lo >= 0 else None
            row["first_failing_bs"] = cands[hi] if hi < len(cands) else None
            rows.append(row)
            log(f"max batch {row}")
            res.save()
    finally:
        if cfg.device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0)
    return rows


def _fits(cfg, build, bs: int, row: dict) -> bool | None:
    """Do two training steps (the second holds Adam's state) fit at ``bs``? None: an error
    other than out-of-memory (noted in ``row``)."""
    free()
    step = None
    try:
        step = build(cfg, bs)
        step()
        step()
        _sync(cfg.device)
        return True
    except Exception as err:
        if is_oom(err):
            return False
        row["note"] = err_text(err)
        return None
    finally:
        step = None
        free()


# ---------------------------------------------------------------------------------------------
# 7. kernel microbenchmarks
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


def _drop_case(cfg, dtype):
    from fastulm.kernels import weight_drop

    w = torch.randn(*cfg.drop_shape, device=cfg.device, dtype=dtype, requires_grad=True)
    g = torch.randn_like(w)
    return {
        "fastulm": lambda: torch.autograd.grad(weight_drop(w, 0.5, 1234), w, g),
        "F.dropout": lambda: torch.autograd.grad(F.dropout(w, 0.5), w, g),
    }


def _forget_mult_case(cfg, dtype):
    """The QRNN recurrence at an LM batch's size: the fused kernel against the same maths
    in plain autograd ops, step by step (what a QRNN without the kernel runs)."""
    from fastulm.kernels import forget_mult
    from fastulm.kernels.forget_mult import forget_mult_reference

    bs, T, H = cfg.qrnn_shape
    dev = cfg.device
    gates = torch.randn(bs, T, 3 * H, device=dev, dtype=dtype, requires_grad=True)
    c0 = torch.zeros(bs, H, device=dev)
    g = torch.randn(bs, T, H, device=dev, dtype=dtype)
    return {
        impl: (lambda fm=fm: torch.autograd.grad(fm(gates, c0)[0], gates, g))
        for impl, fm in (("fastulm", forget_mult), ("reference", forget_mult_reference))
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


def stage_kernels(cfg, clock, res) -> list[dict]:
    cases = [
        ("linear_cross_entropy fwd+bwd", BF16, cfg.lce_shape, _lce_case),
        ("linear_cross_entropy fwd+bwd", torch.float32, cfg.lce_shape, _lce_case),
        ("masked_concat_pool fwd+bwd", BF16, cfg.pool_shape, _pool_case),
        ("masked_concat_pool fwd+bwd", torch.float32, cfg.pool_shape, _pool_case),
        ("weight_drop fwd+bwd", torch.float32, cfg.drop_shape, _drop_case),
        ("forget_mult fwd+bwd", BF16, cfg.qrnn_shape, _forget_mult_case),
    ]
    rows: list[dict] = []
    res.data["kernels"] = rows
    for op, dtype, shape, make in cases:
        base = dict(op=op, dtype=str(dtype).replace("torch.", ""), shape=list(shape))
        if clock.left() < cfg.min_kernel_s:
            rows.append({**base, "skipped": "time budget"})
            res.save()
            continue
        free()
        try:
            fns = make(cfg, dtype)
        except Exception as err:
            rows.append({**base, "error": err_text(err)})
            res.save()
            continue
        for impl, fn in fns.items():
            row = {**base, "impl": impl}
            try:
                row["ms"] = round(_time_ms(fn, cfg), 4)
                row["peak_mib"] = round(peak_mib(fn, cfg.device), 1)
            except Exception as err:
                row["error"] = err_text(err, 160)
            rows.append(row)
            log(f"kernel {row}")
            res.save()
        del fns
    return rows


# ---------------------------------------------------------------------------------------------
# the claims: exactly the keys the issue asks for; null where not reached
def _best(rows: list[dict], prefix: str, key: str, pick) -> dict | None:
    ok = [r for r in rows if r.get("variant", "").startswith(prefix) and r.get(key) is not None]
    return pick(ok, key=lambda r: r[key]) if ok else None


def claims(data: dict) -> dict:
    env = data.get("env") or {}
    tests = data.get("tests") or {}
    steps = data.get("steps") or []
    search = data.get("max_batch") or []
    out: dict = {
        "device": env.get("device_name"),
        "cuda_tests": {"passed": tests.get("passed"), "failed": tests.get("failed")}
        if "runs" in tests
        else {"passed": None, "failed": None},
    }
    for kind in ("lm", "clas"):
        fa = next(
            (r for r in steps if r.get("variant") == f"{kind}/fastai-fp16" and "step_s" in r),
            None,
        )
        fu = _best(steps, f"{kind}/fastulm", "step_s", min)
        bs = (fa or fu or {}).get("bs")
        out[f"{kind}_step"] = {
            "bs": bs,
            "fastai_s": fa and fa["step_s"],
            "fastulm_s": fu and fu["step_s"],
            "fastai_peak_mib": fa and fa["peak_mib"],
            "fastulm_peak_mib": fu and fu["peak_mib"],
        }
    out["max_bs_8gib"] = {}
    for kind in ("clas", "lm"):
        fa = next((r for r in search if r["variant"] == f"{kind}/fastai-fp16"), None)
        fu = _best(search, f"{kind}/fastulm", "largest_fitting_bs", max)
        out["max_bs_8gib"][kind] = {
            "fastai": fa and fa["largest_fitting_bs"],
            "fastulm": fu and fu["largest_fitting_bs"],
        }
    return out


def claims_sources(data: dict) -> dict:
    """Which measured row each claim figure came from (kept beside, not inside, "claims")."""
    steps, search = data.get("steps") or [], data.get("max_batch") or []
    src = {}
    for kind in ("lm", "clas"):
        fu = _best(steps, f"{kind}/fastulm", "step_s", min)
        src[f"{kind}_step"] = {"fastai": f"{kind}/fastai-fp16", "fastulm": fu and fu["variant"]}
        fu = _best(search, f"{kind}/fastulm", "largest_fitting_bs", max)
        src[f"max_bs_8gib.{kind}"] = {
            "fastai": f"{kind}/fastai-fp16",
            "fastulm": fu and fu["variant"],
        }
    return src


# ---------------------------------------------------------------------------------------------
def _table(rows, cols) -> list[str]:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return [*lines, ""]


def markdown(data: dict) -> str:
    env = data.get("env") or {}
    lines = [
        f"### GPU suite: {env.get('device_name')} ({env.get('date')})",
        "",
        f"torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
        f"triton {env.get('triton')}, fastai {env.get('fastai')}; mode `{data.get('mode')}`; "
        f"suite wall time {data.get('wall_s', 0):.0f} s.",
        "",
        "Claims: `" + json.dumps(data.get("claims")) + "`",
        "",
    ]
    lstm = data.get("bf16_lstm") or {}
    if lstm:
        lines += [f"bf16 LSTM: {lstm.get('message')}", ""]
    tests = data.get("tests") or {}
    if "runs" in tests:
        lines += [
            f"CUDA tests: {tests['passed']} passed, {tests['failed']} failed, "
            f"{tests['skipped']} skipped (complete: {tests['complete']}).",
            "",
        ]
    for key, cols in (
        ("steps", ["variant", "bs", "step_s", "peak_mib", "max_allocated_mib", "error", "skipped"]),
        (
            "lm_sweep",
            ["bs", "bptt", "ce_chunk_mb", "precision", "tokens_per_s", "step_s", "peak_mib"],
        ),
        ("max_batch", ["variant", "largest_fitting_bs", "first_failing_bs", "note"]),
        ("kernels", ["op", "impl", "dtype", "shape", "ms", "peak_mib", "error", "skipped"]),
    ):
        if data.get(key):
            lines += [f"**{key}**", "", *_table(data[key], cols)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
def _config(args) -> argparse.Namespace:
    cfg = argparse.Namespace(
        cpu=args.cpu,
        device=torch.device("cpu" if args.cpu else "cuda"),
        cap_gib=args.cap_gib,
        force_precision=args.precision,
        amp=None,
        fastai=have_fastai() is not None,
        test_case_timeout=120,
    )
    if args.cpu:  # tiny sizes: every code path, seconds on a CPU
        cfg.vocab, cfg.bptt, cfg.bs, cfg.clas_seq, cfg.repeats = 500, 20, 4, 144, 1
        cfg.sizes = {"emb_sz": 24, "n_hid": 40}
        cfg.lstm_sizes, cfg.lstm_batch = (24, 40), (2, 12)
        cfg.sweep_bs, cfg.sweep_bptt = [4, 8], 20
        cfg.pool_shape, cfg.drop_shape, cfg.lce_shape = (4, 144, 40), (96, 48), (64, 40, 500)
        cfg.qrnn_shape = (4, 20, 40)
        cfg.lm_batches, cfg.clas_batches = [2, 4], [2, 4]
        cfg.min_step_s, cfg.min_kernel_s = 0.5, 0.5
        cfg.test_select = ["-k", args.test_k or "philox and shape0"]
    else:
        cfg.vocab, cfg.bptt, cfg.bs, cfg.clas_seq, cfg.repeats = 60000, 70, 48, 1440, 3
        cfg.sizes = None
        cfg.lstm_sizes, cfg.lstm_batch = (400, 1152), (64, 80)
        cfg.sweep_bs, cfg.sweep_bptt = [64, 128, 256, 512], 80
        cfg.qrnn_shape = (256, 80, 1152)
        cfg.pool_shape, cfg.drop_shape, cfg.lce_shape = (
            (48, 1440, 400),
            (4608, 1152),
            (
                10240,
                400,
                60000,
            ),
        )
        cfg.lm_batches = [32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
        cfg.clas_batches = [8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384]
        cfg.min_step_s, cfg.min_kernel_s = 6.0, 4.0
        cfg.test_select = ["-m", "gpu"] + (["-k", args.test_k] if args.test_k else [])
    return cfg


RUNNERS = {
    "env": stage_env,
    "bf16_lstm": stage_bf16_lstm,
    "tests": stage_tests,
    "steps": stage_steps,
    "lm_sweep": stage_lm_sweep,
    "max_batch": stage_max_batch,
    "kernels": stage_kernels,
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cpu", action="store_true", help="the CPU rehearsal: tiny sizes")
    ap.add_argument("--out", type=Path, default=None, help="default: $OUT")
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for all stages (default: 480 on a GPU, 120 with --cpu); the process "
        "exits at budget + 20 s (--cpu: + 120 s) whatever it is doing",
    )
    ap.add_argument("--skip", default="", help="comma-separated stages to leave out")
    ap.add_argument("--precision", choices=["bf16", "fp16", "fp32"], help="override the check")
    ap.add_argument("--test-k", help="pytest -k expression for the tests stage")
    ap.add_argument("--cap-gib", type=float, default=8.0)
    args = ap.parse_args(argv)
    out_env = os.environ.get("OUT")
    out = args.out or (Path(out_env) if out_env else None)
    if out is None:
        print("suite.py: no --out and no $OUT", file=sys.stderr)
        return 2
    if not args.cpu and not torch.cuda.is_available():
        print("suite.py: no CUDA device (use --cpu for the CPU rehearsal)", file=sys.stderr)
        return 2
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - set(STAGES)
    if unknown:
        print(f"suite.py: unknown stage(s) {sorted(unknown)} (stages: {STAGES})", file=sys.stderr)
        return 2
    budget = args.budget if args.budget is not None else (120.0 if args.cpu else 480.0)
    scale = min(1.0, budget / sum(ALLOT.values()))
    allot = {s: (0.0 if s in skip else ALLOT[s] * scale) for s in STAGES}
    # a hard stop: whatever hangs, the process ends (with every thread's traceback) well
    # inside the device call; the JSON on disk holds everything measured before
    faulthandler.dump_traceback_later(budget + (120 if args.cpu else 20), exit=True)

    cfg = _config(args)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    res = Results(out, date)
    res.data.update(
        mode="cpu-dry-run" if args.cpu else "cuda",
        budget_s=budget,
        allotted_s=allot,
        config={
            "vocab": cfg.vocab,
            "bptt": cfg.bptt,
            "bs": cfg.bs,
            "clas_seq": cfg.clas_seq,
            "sizes": cfg.sizes or "paper (emb 400, hidden 1152, 3 layers)",
            "step": "forward + backward + AdamW step (torch, fused on CUDA), both sides",
            "fastai_precision": "fp32 (CPU rehearsal)"
            if args.cpu
            else "fp16 autocast + GradScaler (to_fp16)",
        },
        stages={},
    )
    clock = Clock(budget, allot)
    res.save()
    for stage in STAGES:
        if stage in skip:
            res.data["stages"][stage] = {"skipped": "--skip"}
            continue
        left = clock.start(stage)
        log(f"== {stage}: {left:.0f} s until its deadline ({clock.elapsed():.0f} s elapsed)")
        t0 = time.monotonic()
        status = "ok"
        try:
            res.data[stage] = RUNNERS[stage](cfg, clock, res)
        except Exception as err:
            traceback.print_exc()
            status = err_text(err)
            res.data.setdefault(stage, {"error": status})
        res.data["stages"][stage] = {"seconds": round(time.monotonic() - t0, 1), "status": status}
        if stage == "bf16_lstm":
            res.data["precision"] = res.data[stage].get("precision")
        res.data["wall_s"] = round(clock.elapsed(), 1)
        res.save()
    res.data["claims_sources"] = claims_sources(res.data)
    res.data["wall_s"] = round(clock.elapsed(), 1)
    res.save()
    faulthandler.cancel_dump_traceback_later()
    print(markdown(res.data), flush=True)
    print("claims " + json.dumps(res.data["claims"]), flush=True)
    n = sum(1 for p in out.rglob("*") if p.is_file())
    log(f"wrote {res.path} and {out / 'suite.md'}; {n} files in {out}")
    if n > MAX_OUT_FILES:
        print(f"suite.py: {n} files in {out}: only {MAX_OUT_FILES} come back", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
