"""The memory planner: the fastest batch size, checkpointing and precision within a budget.

``--max-memory 8GiB`` should spare the user the guessing, and must never end in an
out-of-memory error hours into a run. So the planner measures rather than estimates: a
*probe* runs a real training step (forward, AR/TAR, backward, optimizer step: one
``Learner._step``, with the optimizer state already there, as it is from the run's second
step on) and a validation forward on the run's worst batch, on the real device,
with every layer trainable (gradual unfreezing ends unfrozen: gradients and Adam state for
every parameter). Its peak is ``torch.cuda.max_memory_allocated`` on CUDA, and on a CPU the
peak bytes of live tensor storages (``memory_peak.StoragePeak``, parameters, gradients and
optimizer state included). A probe leaves the learner as it found it: weights, optimizer
state, gradients, hidden state and every random generator are restored.

The worst batch: for a classifier, ``bs`` copies of the longest training document in the
loader's padded layout (the model trains on its last ``max_len`` tokens and runs the rest
without grad); for a language model, ``bs`` rows of the longest window the loader can
produce (``bptt``, or ``bptt + 20`` with ``random_bptt``).

A configuration fits when ``measured peak x headroom <= budget`` (on CUDA, less the memory
the device already uses outside PyTorch's allocator: the CUDA context, other processes).
The headroom (1.15) is for what one probe cannot see: the caching allocator's fragmentation
as batch shapes change through an epoch (the classifier's widths vary batch to batch, the
LM's windows with random_bptt), cached blocks that cannot be reused for a larger request,
and on a CPU the scratch memory inside single kernels.

"Fastest" is a plain model of throughput: samples per second grow in proportion to the
batch size (an LSTM step on a GPU is latency-bound: its time barely grows with bs), a step
with gradient checkpointing costs ``1 + CKPT_COST`` (one more encoder forward, about a third
of a step), and bf16/fp16 runs about twice as fast as fp32 on a GPU (1.5x on a CPU with
native bf16). So a larger batch with checkpointing wins only if it is more than 4/3 as
large as the largest without. The batch size never exceeds the one asked for (the recipe's
learning rates were set for it); precision changes only when ``auto`` was asked for.

The search, per precision (fastest first) and without then with checkpointing: the asked
bs (one probe when the budget is ample), else doubling up from the smallest batch (2 for a
classifier, whose BatchNorm head cannot train on one document) and bisection, guided by the
straight line through the fitting peaks (peak memory is close to affine in bs). On a CPU a
probe that goes over the limit stops at that op, so failures cost little.
"""

from __future__ import annotations

import contextlib
import gc
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastulm.train import checkpoint as ckpt
from fastulm.train.carried import carried_state, restore_carried_state
from fastulm.train.learner import Learner, Precision
from fastulm.train.memory_peak import OverLimit, StoragePeak, storage_bytes
from fastulm.train.optimizer import lr_range

HEADROOM = 1.15
CKPT_COST = 1 / 3  # checkpointing reruns the encoder's forward: about a third of a step
GPU_HALF_SPEED = 2.0  # bf16/fp16 vs fp32 on a GPU (tensor cores, half the bytes moved)
CPU_BF16_SPEED = 1.5  # oneDNN bf16 vs fp32 on a CPU with avx512_bf16/AMX (README benchmarks)

_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kb": 10**3,
    "kib": 2**10,
    "m": 2**20,
    "mb": 10**6,
    "mib": 2**20,
    "g": 2**30,
    "gb": 10**9,
    "gib": 2**30,
    "t": 2**40,
    "tb": 10**12,
    "tib": 2**40,
}


class MemoryBudgetError(ValueError):
    """The budget is too small for even bs 1: the one-line message names one that works."""


# ---------------------------------------------------------------------------------- sizes
def parse_size(text: str | int) -> int:
    """Bytes from ``"8GiB"``, ``"8GB"`` (10^9), ``"512MiB"``, ``"8g"`` (GiB), ``"1.5 GiB"``
    or a plain number of bytes. A bare letter means the binary unit, as ``free -g`` does."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        if m is None or m.group(2).lower() not in _UNITS:
            raise ValueError(
                f"memory size {text!r} is not a size: write e.g. 8GiB, 8GB, 512MiB or 8g"
            )
        value, unit = float(m.group(1)), m.group(2).lower()
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"memory size {text!r} must be positive")
    return size


def format_size(n: float) -> str:
    """``n`` bytes in GiB/MiB/KiB with about three significant digits (for reading)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            x = n / scale
            return f"{x:.{2 if x < 10 else 1 if x < 100 else 0}f} {unit}"
    return f"{int(n)} B"


def round_up_size(n: float) -> str:
    """``n`` bytes rounded *up* to two significant digits in GiB/MiB/KiB, parseable by
    ``parse_size`` and never below ``n`` (the smallest budget to suggest)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1)):
        if n >= scale or unit == "B":
            x = n / scale
            step = 10 ** (math.floor(math.log10(x)) - 1) if x >= 1 else 1
            value = math.ceil(round(x / step, 9)) * step
            text = f"{value:.10g}{unit}"
            while parse_size(text) < n:  # float rounding in the unit conversion
                value += step
                text = f"{value:.10g}{unit}"
            return text
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------- the plan
@dataclass
class Probe:
    """One measurement: ``peak`` bytes, or None when it went over the limit (or OOM)."""

    bs: int
    grad_checkpoint: bool
    mixed_precision: str
    peak: int | None


@dataclass
class Plan:
    """What to train with, what it measured, and why."""

    bs: int
    grad_checkpoint: bool
    mixed_precision: str
    measured_peak: int  # bytes, the chosen configuration's probe
    budget: int  # bytes, as asked
    headroom: float = HEADROOM
    device: str = "cpu"
    reasons: list[str] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)

    def learner_kwargs(self) -> dict[str, Any]:
        """The settings to build the learner with (language_model_learner /
        text_classifier_learner keywords)."""
        return {
            "bs": self.bs,
            "grad_checkpoint": self.grad_checkpoint,
            "mixed_precision": self.mixed_precision,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.learner_kwargs(),
            "measured_peak": self.measured_peak,
            "budget": self.budget,
            "headroom": self.headroom,
            "device": self.device,
            "reasons": list(self.reasons),
        }

    def describe(self) -> str:
        need = self.measured_peak * self.headroom
        head = (
            f"memory plan: bs {self.bs}, gradient checkpointing "
            f"{'on' if self.grad_checkpoint else 'off'}, {self.mixed_precision}; measured peak "
            f"{format_size(self.measured_peak)} x {self.headroom:g} headroom = "
            f"{format_size(need)} of the {format_size(self.budget)} budget ({self.device})"
        )
        return "\n".join([head, *(f"  - {r}" for r in self.reasons)])


# ---------------------------------------------------------------------------------- batches
def worst_batch(dl: Any, bs: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The loader's most memory-hungry batch of ``bs`` rows, and what it is (for reasons).

    Classifier loaders: ``bs`` copies of the longest document (as the loader cuts it),
    padded as the loader pads: every row runs every chunk, none joins late. LM loaders:
    ``bs`` rows of the longest window the loader can yield. Token values do not change
    memory, so the LM's are zeros.
    """
    if hasattr(dl, "_doc"):  # ClasLoader
        from fastulm.data.clas_loader import pad_batch

        i = int(np.argmax(dl._lengths))
        doc = dl._doc(i)
        x = torch.from_numpy(pad_batch([doc] * bs, dl.pad_id, dl.bptt))
        if dl._multi_hot is not None:
            y = torch.from_numpy(np.repeat(dl._multi_hot[i : i + 1], bs, axis=0))
        else:
            y = torch.full((bs,), int(dl._labels[i]), dtype=torch.int64)
        return x, y, f"{len(doc)} tokens a row (the longest document)"
    if hasattr(dl, "bl"):  # LMLoader
        from fastulm.data.lm_loader import RAND_MAX_EXTRA

        longest = dl.bptt + RAND_MAX_EXTRA if dl.random_bptt else dl.bptt
        sl = max(1, min(longest, dl.bl))
        why = " (bptt + 20: random_bptt's longest window)" if dl.random_bptt else " (bptt)"
        x = torch.zeros(bs, sl, dtype=torch.int64)
        return x, x.clone(), f"{sl} tokens a row{why}"
    raise TypeError(f"cannot build a worst-case batch for a {type(dl).__name__}")


# ---------------------------------------------------------------------------------- probing
def _cpu_copy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def _hidden_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if "hidden" in m.__dict__]


@contextlib.contextmanager
def _untouched(learn: Learner) -> Iterator[None]:
    """Put back weights, optimizer state, gradients, hidden state, RNG and counters."""
    model_state = _cpu_copy(learn.model.state_dict())
    opt_state = _cpu_copy(learn.opt.state_dict())
    rng = ckpt.rng_state()
    carried = carried_state(learn.model)
    grads = [p.grad for p in learn.model.parameters()]
    trainable = [p.requires_grad for p in learn.model.parameters()]
    was_training, skipped = learn.model.training, learn._skipped
    for p in learn.model.parameters():
        p.grad = None
    try:
        yield
    finally:
        learn.opt.zero_grad(set_to_none=True)
        learn.model.load_state_dict(model_state)
        learn.opt.load_state_dict(opt_state)
        for p, g, t in zip(learn.model.parameters(), grads, trainable):
            p.grad = g
            p.requires_grad_(t)
        for m in _hidden_modules(learn.model):
            m.hidden = None
        restore_carried_state(learn.model, carried)
        ckpt.set_rng_state(rng)
        learn.model.train(was_training)
        learn._skipped = skipped


def _checkpoint_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    from fastulm.model.awd_lstm import AWDLSTM

    return [m for m in model.modules() if isinstance(m, AWDLSTM)]


@contextlib.contextmanager
def _configured(learn: Learner, grad_checkpoint: bool, mixed_precision: str) -> Iterator[None]:
    """The learner set to a candidate: every parameter trainable, checkpointing, precision."""
    mods = _checkpoint_modules(learn.model)
    saved_ckpt = [m.checkpoint for m in mods]
    saved_precision = learn.precision
    try:
        for m in mods:
            m.checkpoint = grad_checkpoint
        learn.precision = Precision(mixed_precision, learn.device)
        if learn.precision.scaler is not None:
            # fp16 starts its loss scale at 65536, and a step whose gradients overflow is
            # skipped: then the optimizer state would not exist when the probe measures it
            learn.precision.scaler = torch.amp.GradScaler(learn.device.type, init_scale=1.0)
        for p in learn.params:
            p.requires_grad_(True)
        yield
    finally:
        for m, c in zip(mods, saved_ckpt):
            m.checkpoint = c
        learn.precision = saved_precision


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return "can't allocate memory" in text or "not enough memory" in text


def _create_optimizer_state(learn: Learner) -> None:
    """Make the optimizer's state (Adam's two moments: twice the trainable weights) exist,
    as it does from the second step of a run on. A real first step would create it only
    after the activations' peak has passed, and measure too little; a step on zero
    gradients at learning rate 0 creates it and moves nothing (the probe restores all)."""
    opt = learn.opt
    for p in learn.params:
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    lrs = [g["lr"] for g in opt.param_groups]
    for g in opt.param_groups:
        g["lr"] = 0.0
    opt.step()
    for g, lr in zip(opt.param_groups, lrs):
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)


def _one_step(learn: Learner, train_batch, valid_batch) -> None:
    """``Learner._step`` on the training batch, then a validation forward."""
    lrs = lr_range(learn.lr, len(learn.layer_groups))
    learn._reset_model()
    learn.model.train()
    learn._step(train_batch[0], train_batch[1], lrs, learn.moms[0])
    learn._reset_model()
    learn.model.eval()
    x, y = (t.to(learn.device) for t in valid_batch)
    with torch.no_grad(), learn.precision.autocast():
        learn._forward(x, y)


def probe(
    learn: Learner,
    bs: int,
    grad_checkpoint: bool,
    mixed_precision: str,
    limit: int | None = None,
) -> int | None:
    """Peak bytes of a training step and a validation forward on the worst batch of
    ``bs`` rows, every layer trainable, the optimizer state present; None when it went over ``limit`` bytes (the CPU
    meter stops the step there) or ran out of memory on the device. The learner is left
    exactly as it was."""
    train_batch = worst_batch(learn.train_dl, bs)[:2]
    valid_batch = worst_batch(learn.valid_dl, bs)[:2] if learn.valid_dl is not None else None
    cuda = learn.device.type == "cuda"
    with _untouched(learn), _configured(learn, grad_checkpoint, mixed_precision):
        valid_batch = valid_batch or train_batch
        _create_optimizer_state(learn)
        try:
            if cuda:
                gc.collect()
                torch.cuda.synchronize(learn.device)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(learn.device)
                _one_step(learn, train_batch, valid_batch)
                torch.cuda.synchronize(learn.device)
                peak = torch.cuda.max_memory_allocated(learn.device)
            else:
                resident = [*learn.model.state_dict().values()]
                resident += [p.grad for p in learn.model.parameters()]
                resident += [v for s in learn.opt.state.values() for v in s.values()]
                resident += [*train_batch, *valid_batch]
                with StoragePeak(storage_bytes(resident), limit) as meter:
                    _one_step(learn, train_batch, valid_batch)
                peak = meter.peak
        except OverLimit:
            peak = None
        except RuntimeError as err:
            if not _is_oom(err):
                raise
            peak = None
        finally:
            if cuda:  # (on a CPU refcounting frees a step's tensors; gc.collect costs 0.5 s)
                gc.collect()
                torch.cuda.empty_cache()
    if peak is not None and limit is not None and peak > limit:
        return None
    return peak


# ---------------------------------------------------------------------------------- search
def _native_cpu_bf16() -> bool:
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def precision_order(asked: str, device: torch.device) -> list[tuple[str, float]]:
    """(mode, relative speed) candidates, fastest first; only ``auto`` leaves a choice.

    Each mode is resolved as the Learner resolves it (bf16 falls back where the LSTM cannot
    run in bf16), so a plan names the precision that will really run.
    """
    if asked != "auto":
        wanted = [(asked, 1.0)]
    elif device.type == "cuda":
        wanted = [("auto", GPU_HALF_SPEED), ("fp32", 1.0)]
    elif _native_cpu_bf16():
        wanted = [("bf16", CPU_BF16_SPEED), ("fp32", 1.0)]
    else:
        wanted = [("fp32", 1.0)]
    out: list[tuple[str, float]] = []
    for mode, speed in wanted:
        mode = Precision(mode, device).mode
        if mode not in [m for m, _ in out]:
            out.append((mode, speed if mode != "fp32" else 1.0))
    return out


def _largest_fit(fits, max_bs: int, lo: int = 0, min_bs: int = 1, guess=None) -> int:
    """The largest bs in [min_bs, max_bs] with ``fits(bs)`` (0 if none); ``lo`` is known to
    fit (0: nothing known).

    ``max_bs`` first (the common case with room to spare: one probe), then doubling up from
    ``lo`` (or ``min_bs``) until a batch does not fit, then bisection between the largest
    fit and the smallest failure. Peak memory is close to affine in bs, so once two batch
    sizes fit, ``guess()`` (the bs where their line meets the limit) replaces the next few
    steps: usually the answer and its neighbour are the only probes left.
    """
    if fits(max_bs):
        return max_bs
    hi, known = max_bs, max(lo, min_bs - 1)  # known: the largest fit so far (or none)
    doubling, guesses = True, 3
    while hi - known > 1:
        g = guess() if guess is not None and guesses else None
        if g is not None:
            guesses -= 1
            b = g
        elif doubling:
            b = max(known * 2, min_bs)
        else:
            b = (known + hi) // 2
        b = min(max(b, known + 1), hi - 1)
        if fits(b):
            known = b
        else:
            hi, doubling = b, False
    return known if known >= min_bs else 0


def _line_guess(peaks: dict, ck: bool, prec: str, limit: int) -> int | None:
    """The largest bs whose peak stays under ``limit`` on the line through the two largest
    fitting probes of this configuration (None with fewer than two)."""
    fits = sorted((bs, p) for (bs, c, m), p in peaks.items() if c == ck and m == prec and p)
    if len(fits) < 2:
        return None
    (b1, p1), (b2, p2) = fits[-2:]
    slope = (p2 - p1) / (b2 - b1)
    return None if slope <= 0 else b2 + int((limit - p2) // slope)


def plan_for_learner(
    learn: Learner,
    budget: str | int,
    max_bs: int | None = None,
    mixed_precision: str | None = None,
    grad_checkpoint: bool | None = None,
    headroom: float = HEADROOM,
) -> Plan:
    """The fastest (bs, checkpointing, precision) for ``learn`` within ``budget``, measured.

    ``max_bs`` defaults to the learner's batch size; ``mixed_precision`` to the learner's
    own (``"auto"`` lets the planner choose); ``grad_checkpoint=True`` keeps checkpointing
    on, otherwise the planner decides. The learner is not changed: build (or rebuild) it
    with ``plan.learner_kwargs()``. Raises MemoryBudgetError when even bs 1 does not fit.
    """
    if learn.dist.active:
        raise ValueError(
            "--max-memory plans in one process: run it without torchrun, then pass its bs "
            "(times the number of processes), --grad-checkpoint and --mixed-precision"
        )
    total = parse_size(budget)
    device = learn.device
    max_bs = max_bs or learn.train_dl.bs
    # a classifier's BatchNorm head cannot train on one document
    min_bs = 2 if learn.kind == "clas" else 1
    if max_bs < min_bs:
        raise ValueError(f"the batch size must be at least {min_bs}, got {max_bs}")
    outside = 0
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        free, whole = torch.cuda.mem_get_info(device)
        outside = max(0, whole - free - torch.cuda.memory_reserved(device))
    limit = int((total - outside) / headroom)
    precisions = precision_order(mixed_precision or learn.precision.mode, device)
    probes: list[Probe] = []
    peaks: dict[tuple[int, bool, str], int | None] = {}

    def measure(bs: int, ck: bool, prec: str, lim: int | None) -> int | None:
        key = (bs, ck, prec)
        if key not in peaks or (peaks[key] is None and lim is None):
            peaks[key] = probe(learn, bs, ck, prec, lim)
            probes.append(Probe(bs, ck, prec, peaks[key]))
        return peaks[key]

    def fits(bs: int, ck: bool, prec: str) -> bool:
        return measure(bs, ck, prec, limit) is not None

    reasons = [
        f"budget {format_size(total)} on {device}"
        + (f", less {format_size(outside)} in use outside PyTorch's allocator" if outside else "")
        + f": a configuration fits when its measured peak x {headroom:g} <= "
        f"{format_size(max(limit, 0))} (headroom for allocator fragmentation as batch "
        "shapes change, and memory a probe cannot see)",
        f"worst batch: {worst_batch(learn.train_dl, 1)[2]}, every layer trainable "
        f"(gradients and optimizer state for all {sum(p.numel() for p in learn.params):,} "
        "parameters)",
    ]
    candidates: list[tuple[float, int, bool, str]] = []  # (score, bs, ckpt, precision)
    unusable: list[str] = []
    for prec, speed in precisions:
        if candidates and max(c[0] for c in candidates) >= max_bs * speed:
            break  # this precision and the slower ones cannot beat what fits already
        try:
            plain = 0
            if not grad_checkpoint:
                plain = _largest_fit(
                    lambda b, p=prec: fits(b, False, p),
                    max_bs,
                    0,
                    min_bs,
                    lambda p=prec: _line_guess(peaks, False, p, limit),
                )
                if plain:
                    candidates.append((plain * speed, plain, False, prec))
            # checkpointing pays only for a batch over (1 + CKPT_COST) times as large
            if plain * (1 + CKPT_COST) < max_bs:
                with_ckpt = _largest_fit(
                    lambda b, p=prec: fits(b, True, p),
                    max_bs,
                    plain,
                    min_bs,
                    lambda p=prec: _line_guess(peaks, True, p, limit),
                )
                if with_ckpt > plain:
                    candidates.append((with_ckpt * speed / (1 + CKPT_COST), with_ckpt, True, prec))
        except RuntimeError as err:  # e.g. no bf16 LSTM on this CPU or cuDNN
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            unusable.append(f"{prec} does not run here ({first[:120]})")
    reasons += unusable
    if not candidates:
        ckpts = [True] if grad_checkpoint else [False, True]
        raise _too_small(
            learn, total, outside, headroom, precisions, measure, unusable, min_bs, ckpts
        )
    _, bs, ck, prec = max(candidates, key=lambda c: (c[0], c[1], not c[2]))
    for _, cbs, cck, cprec in sorted(candidates, key=lambda c: -c[0]):
        reasons.append(
            f"{cprec}, checkpointing {'on' if cck else 'off'}: largest bs that fits {cbs}"
            + (f" (of {max_bs} asked)" if cbs < max_bs else "")
            + f", peak {format_size(peaks[(cbs, cck, cprec)])}"
        )
    reasons.append(
        "chosen as the fastest: throughput taken as bs x precision speed / (1 + 1/3 with "
        "checkpointing, which reruns the encoder forward)"
        + (f"; bs {bs} is the batch size asked for" if bs == max_bs else "")
    )
    reasons.append(f"{len(probes)} probe steps")
    return Plan(
        bs=bs,
        grad_checkpoint=ck,
        mixed_precision=prec,
        measured_peak=peaks[(bs, ck, prec)],
        budget=total,
        headroom=headroom,
        device=str(device),
        reasons=reasons,
        probes=probes,
    )


def _too_small(learn, total, outside, headroom, precisions, measure, unusable, min_bs, ckpts):
    """The one-line error: the smallest budget that works is the leanest configuration's
    full peak at the smallest batch x headroom (checkpointing is not always the leanest:
    for a tiny model its saved inputs and recomputation outweigh what it frees)."""
    best: tuple[int, bool, str] | None = None
    for prec, _ in precisions:
        for ck in ckpts:
            try:
                peak = measure(min_bs, ck, prec, None)  # the full peak: no limit to stop it
            except RuntimeError:
                continue
            if peak is not None and (best is None or peak < best[0]):
                best = (peak, ck, prec)
    if best is None:
        return MemoryBudgetError(
            f"no precision could train here: {'; '.join(unusable) or 'every probe failed'}"
        )
    peak, ck, prec = best
    need = round_up_size(peak * headroom + outside)
    return MemoryBudgetError(
        f"--max-memory {format_size(total)} is too small: even bs {min_bs} "
        f"({'with' if ck else 'without'} gradient checkpointing, {prec}) peaks at "
        f"{format_size(peak)} ({worst_batch(learn.train_dl, 1)[2]}); the smallest budget "
        f"that works is {need} (peak x {headroom:g} headroom"
        + (f" + {format_size(outside)} outside PyTorch's allocator" if outside else "")
        + ")"
    )


def plan_memory(
    corpus: Any,
    kind: str,
    budget: str | int,
    headroom: float = HEADROOM,
    **learner_kwargs: Any,
) -> Plan:
    """Plan for the learner ``language_model_learner`` (``kind="lm"``) or
    ``text_classifier_learner`` (``kind="clas"``) would build from ``corpus`` and
    ``learner_kwargs``: their ``bs`` is the largest batch size allowed, their
    ``mixed_precision`` (default ``auto``) is fixed unless ``auto``, ``grad_checkpoint=True``
    keeps checkpointing on. Build the learner afterwards with
    ``{**learner_kwargs, **plan.learner_kwargs()}``; the probe learner is freed first.
    """
    from fastulm.train.text_learners import language_model_learner, text_classifier_learner

    if kind not in ("lm", "clas"):
        raise ValueError(f"kind must be 'lm' or 'clas', not {kind!r}")
    factory = language_model_learner if kind == "lm" else text_classifier_learner
    kw = dict(learner_kwargs)
    asked = kw.get("mixed_precision", "auto")
    kw.update(show_progress=False, show_table=False)
    kw.setdefault("path", Path("."))
    learn = factory(corpus, **kw)
    try:
        return plan_for_learner(
            learn,
            budget,
            max_bs=learn.train_dl.bs,
            mixed_precision=asked,
            grad_checkpoint=bool(kw.get("grad_checkpoint")) or None,
            headroom=headroom,
        )
    finally:
        device = learn.device
        del learn
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


__all__ = [
    "HEADROOM",
    "MemoryBudgetError",
    "Plan",
    "Probe",
    "format_size",
    "parse_size",
    "plan_for_learner",
    "plan_memory",
    "probe",
    "round_up_size",
    "worst_batch",
]
