"""Training steps and memory meters shared by the CPU benchmarks and the GPU suite.

A "step" is one forward + backward of the LM or the fully unfrozen classifier, for fastulm (with
each memory-saving piece switchable) or for the reference (fastai 2.8.12), on the same random
inputs. ``optim=True`` adds the optimizer step (torch AdamW on both sides, fused on CUDA: Adam's
state is the same size on both sides), making it a full training step; ``amp=torch.float16``
scales the loss with a GradScaler, as fastai's ``to_fp16()`` does. Gradients are dropped at the
end of every step, so a step's peak is measured above the parameters (and Adam's state) alone.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before the
step (parameters, inputs). On the CPU there is no allocator statistic, so :class:`PeakMemory`
(a TorchDispatchMode) counts the bytes of every live tensor storage that an op creates during
the step, freed when the storage dies; fastulm's custom ops run *inside* the meter so their
temporaries count too. Scratch memory inside a single aten kernel (oneDNN/cuDNN workspaces) is
invisible to it, on both sides alike.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastulm.train.memory_peak import StoragePeak

MiB = 2**20
# the meter the memory planner uses (fastulm/train/memory_peak.py), with no base and no limit
PeakMemory = StoragePeak


@dataclass
class Measure:
    seconds: float  # median wall time of one step
    peak_mib: float  # peak memory of one step above what existed before it


def measure(step: Callable[[], None], device: torch.device, repeats: int = 3) -> Measure:
    """Median step time over ``repeats`` (after one warm-up) and the step's peak memory."""
    step()  # warm-up: lazy init, oneDNN/cuDNN plans, Triton compiles
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return Measure(times[len(times) // 2], peak_mib(step, device))


def peak_mib(step: Callable[[], None], device: torch.device) -> float:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / MiB
    with PeakMemory() as meter:
        step()
    return meter.peak / MiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def lm_batch(vocab: int, bs: int, bptt: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (bs, bptt + 1), generator=g)
    return ids[:, :-1].contiguous().to(device), ids[:, 1:].contiguous().to(device)


def clas_batch(vocab: int, bs: int, seq_len: int, bptt: int, device, seed: int = 0):
    """Documents of about ``seq_len`` tokens in fastai's pad_chunk layout (pad id 1): lengths
    drawn in [seq_len - 2*bptt, seq_len], leading pads in whole bptt chunks, the rest trailing."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.ones(bs, seq_len, dtype=torch.long)
    low = max(1, seq_len - 2 * bptt)
    lengths = torch.randint(low, seq_len + 1, (bs,), generator=g)
    lengths[0] = seq_len
    for b, n in enumerate(lengths.tolist()):
        front = (seq_len - n) // bptt * bptt
        ids[b, front : front + n] = torch.randint(2, vocab, (n,), generator=g)
        ids[b, front] = 2  # xxbos
    labels = torch.randint(0, 2, (bs,), generator=g)
    return ids.to(device), labels.to(device)


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------
def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


class _Update:
    """backward (+ an AdamW step) of a step's loss; fp16 goes through a GradScaler."""

    def __init__(self, model: torch.nn.Module, device: torch.device, amp, optim: bool):
        fused = device.type == "cuda" or None
        self.model = model
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused) if optim else None
        self.scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None

    def __call__(self, loss: torch.Tensor) -> None:
        scaler, opt = self.scaler, self.opt
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if opt is not None:
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
        self.model.zero_grad(set_to_none=True)


def fastulm_lm_step(
    vocab: int,
    bs: int,
    bptt: int,
    device,
    *,
    fused_ce: bool = True,
    checkpoint: bool = False,
    amp: torch.dtype | None = None,
    sizes: dict | None = None,
    optim: bool = False,
) -> Callable[[], None]:
    from fastulm.model import AWDLSTMConfig, get_language_model

    device = torch.device(device)
    torch.manual_seed(0)
    cfg = AWDLSTMConfig.lm(drop_mult=0.3, bptt=bptt, checkpoint=checkpoint, **(sizes or {}))
    model = get_language_model(vocab, cfg).to(device).train()
    x, y = lm_batch(vocab, bs, bptt, device)
    update = _Update(model, device, amp, optim)

    def step():
        model.zero_grad(set_to_none=True)
        model.reset()
        with _autocast(device, amp):
            if fused_ce:
                loss = model.loss(x, y).loss
            else:
                logits = model(x).logits
                loss = F.cross_entropy(logits.reshape(-1, vocab).float(), y.reshape(-1))
        update(loss)

    return step


def fastai_lm_step(
    vocab: int,
    bs: int,
    bptt: int,
    device,
    *,
    amp: torch.dtype | None = None,
    sizes: dict | None = None,
    optim: bool = False,
) -> Callable[[], None]:
    from fastai.text.models.awdlstm import AWD_LSTM, awd_lstm_lm_config
    from fastai.text.models.core import get_language_model

    device = torch.device(device)
    torch.manual_seed(0)
    config = {**awd_lstm_lm_config, **(sizes or {})}
    model = get_language_model(AWD_LSTM, vocab, config, drop_mult=0.3)
    model = model.to(device).train()
    x, y = lm_batch(vocab, bs, bptt, device)
    update = _Update(model, device, amp, optim)

    def step():
        model.zero_grad(set_to_none=True)
        model.reset()
        with _autocast(device, amp):
            logits = model(x)[0]
            loss = F.cross_entropy(logits.reshape(-1, vocab).float(), y.reshape(-1))
        update(loss)

    return step


def fastulm_clas_step(
    vocab: int,
    bs: int,
    seq_len: int,
    device,
    *,
    bptt: int = 72,
    checkpoint: bool = False,
    fused_pool: bool = True,
    amp: torch.dtype | None = None,
    sizes: dict | None = None,
    optim: bool = False,
) -> Callable[[], None]:
    from fastulm.kernels.concat_pool import masked_concat_pool_reference

    from fastulm.model import AWDLSTMConfig, get_classifier

    device = torch.device(device)
    torch.manual_seed(0)
    cfg = AWDLSTMConfig.classifier(drop_mult=0.5, bptt=bptt, checkpoint=checkpoint, **(sizes or {}))
    model = get_classifier(vocab, 2, cfg).to(device).train()
    x, y = clas_batch(vocab, bs, seq_len, bptt, device)
    update = _Update(model, device, amp, optim)
    encoder, head = model._modules["0"], model.head

    def step():
        model.zero_grad(set_to_none=True)
        model.reset()
        with _autocast(device, amp):
            if fused_pool:
                logits = model(x).logits
            else:  # the same model with fastai's pooling formula (masked copies)
                out, mask, _ = encoder(x)
                logits = head.layers(masked_concat_pool_reference(out, mask, bptt)).float()
            loss = F.cross_entropy(logits, y)
        update(loss)

    return step


def fastai_clas_step(
    vocab: int,
    bs: int,
    seq_len: int,
    device,
    *,
    bptt: int = 72,
    amp: torch.dtype | None = None,
    sizes: dict | None = None,
    optim: bool = False,
) -> Callable[[], None]:
    from fastai.text.models.awdlstm import AWD_LSTM, awd_lstm_clas_config
    from fastai.text.models.core import get_text_classifier

    device = torch.device(device)
    torch.manual_seed(0)
    config = {**awd_lstm_clas_config, **(sizes or {})}
    model = get_text_classifier(AWD_LSTM, vocab, 2, seq_len=bptt, config=config, drop_mult=0.5)
    model = model.to(device).train()
    x, y = clas_batch(vocab, bs, seq_len, bptt, device)
    update = _Update(model, device, amp, optim)

    def step():
        model.zero_grad(set_to_none=True)
        model.reset()
        with _autocast(device, amp):
            logits = model(x)[0]
            loss = F.cross_entropy(logits.float(), y)
        update(loss)

    return step
