"""Model step benchmarks: fastulm vs the reference (fastai 2.8.12), same weights and inputs,
same run. One step = forward + loss (with AR/TAR as fastai's RNNRegularizer) + backward.
``+bf16`` variants run under CPU bf16 autocast, ``+ckpt`` ones with gradient checkpointing.

Walkthrough sizes: LM bs 48 x bptt 70 x 60k vocab; classifier bs 48 on the longest IMDB
reviews of the sample (the first batch SortedDL builds), everything unfrozen. On a small
CPU set ``FASTULM_BENCH_SCALE`` (default 1.0): it multiplies both batch sizes and the
classifier's document lengths and ``max_len`` (model sizes and vocab stay full); the sizes
used are printed and stored in each benchmark's ``extra_info``.

Peak memory is the process's peak RSS during one step minus its RSS before it: the
high-water mark is reset through ``/proc/self/clear_refs`` (Linux) after ``gc.collect()``
and ``malloc_trim(0)``, so freed-but-cached heap does not count. It includes everything
the step allocates (activations, logits, gradients on the first step's grad buffers).

    FASTULM_BENCH_SCALE=0.25 python -m pytest benchmarks/test_model_bench.py -s \
        --benchmark-columns=mean,stddev,rounds
"""

import contextlib
import ctypes
import gc
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastulm.model import get_classifier, get_language_model

SCALE = float(os.environ.get("FASTULM_BENCH_SCALE", "1.0"))
ROUNDS = int(os.environ.get("FASTULM_BENCH_ROUNDS", "3"))
VOCAB, BPTT_LM, BPTT_CLAS = 60000, 70, 72
BS = max(1, round(48 * SCALE))
MAX_LEN = max(BPTT_CLAS, round(72 * 20 * SCALE / BPTT_CLAS) * BPTT_CLAS)
ALPHA, BETA = 2.0, 1.0


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


def peak_rss_mb(fn) -> float:
    """Peak RSS growth (MB) while ``fn`` runs."""
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _rss_kb("VmRSS:")
    fn()
    return (_rss_kb("VmHWM:") - before) / 1024


def ar_tar(raw, dropped):
    """fastai's RNNRegularizer terms (fp32, as fastai casts)."""
    ar = ALPHA * dropped.float().pow(2).mean()
    tar = BETA * (raw[:, 1:] - raw[:, :-1]).float().pow(2).mean() if raw.size(1) > 1 else 0.0
    return ar + tar


@pytest.fixture(scope="module")
def lm_models(fastai_text):
    ft = fastai_text
    torch.manual_seed(0)
    ref = ft.get_language_model(ft.AWD_LSTM, VOCAB).train()
    ours = get_language_model(VOCAB).train()
    ours.load_state_dict(ref.state_dict())
    ckpt = get_language_model(VOCAB, checkpoint=True).train()
    ckpt.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, VOCAB, (BS, BPTT_LM), generator=g)
    y = torch.randint(0, VOCAB, (BS, BPTT_LM), generator=g)
    models = {"fastai": ref, "fastulm": ours, "fastulm+ckpt": ckpt}
    return {**models, "fastulm+bf16": ours, "fastulm+ckpt+bf16": ckpt}, x, y


def _doc_lengths(n):
    from fastulm_testkit import need_data

    path = need_data("imdb_sample/fastai_tokens.jsonl")
    lengths = sorted((len(json.loads(line)["tokens"]) for line in path.open()), reverse=True)
    return [max(2, round(n_tok * SCALE)) for n_tok in lengths[:n]]


@pytest.fixture(scope="module")
def clas_models(fastai_text):
    ft = fastai_text
    torch.manual_seed(0)
    ref = ft.get_text_classifier(ft.AWD_LSTM, VOCAB, 2, drop_mult=0.5, max_len=MAX_LEN).train()
    ours = get_classifier(VOCAB, 2, drop_mult=0.5, max_len=MAX_LEN).train()
    ours.load_state_dict(ref.state_dict())
    ckpt = get_classifier(VOCAB, 2, drop_mult=0.5, max_len=MAX_LEN, checkpoint=True).train()
    ckpt.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(2, VOCAB, (n,), generator=g) for n in _doc_lengths(BS)]
    m = max(len(d) for d in docs)
    x = torch.stack([ft.pad_chunk(d, pad_idx=1, seq_len=BPTT_CLAS, pad_len=m) for d in docs])
    y = torch.randint(0, 2, (BS,), generator=g)
    models = {"fastai": ref, "fastulm": ours, "fastulm+ckpt": ckpt}
    return {**models, "fastulm+bf16": ours, "fastulm+ckpt+bf16": ckpt}, x, y


def _precision(name):
    """``+bf16`` variants run the same model under bf16 autocast (fastai has no CPU autocast)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=name.endswith("+bf16"))


def _lm_step(name, model, x, y):
    model.zero_grad(set_to_none=True)
    with _precision(name):
        loss = _lm_loss(name, model, x, y)
    loss.backward()
    return loss.item()


def _lm_loss(name, model, x, y):
    if name == "fastai":
        logits, raw, dropped = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1)) + ar_tar(raw, dropped)
    else:
        res = model.loss(x, y)
        loss = res.loss + ar_tar(res.raw, res.dropped)
    return loss


def _clas_step(name, model, x, y):
    model.zero_grad(set_to_none=True)
    with _precision(name):
        if name == "fastai":
            logits, raw, dropped = model(x)
        else:
            out = model(x)
            logits, raw, dropped = out.logits, out.raw, out.dropped
        loss = F.cross_entropy(logits.float(), y) + ar_tar(raw, dropped)
    loss.backward()
    return loss.item()


def _run(benchmark, group, step, name, model, x, y):
    benchmark.group = group
    step(name, model, x, y)  # warm-up: allocates the gradient buffers
    peak = peak_rss_mb(lambda: step(name, model, x, y))
    benchmark.extra_info.update(
        peak_rss_mb=round(peak, 1), bs=x.size(0), seq=x.size(1), scale=SCALE, max_len=MAX_LEN
    )
    print(f"\n{group} {name}: bs={x.size(0)} seq={x.size(1)} peak RSS +{peak:.0f} MB")
    benchmark.pedantic(step, args=(name, model, x, y), rounds=ROUNDS, iterations=1)


NAMES = ["fastai", "fastulm", "fastulm+ckpt", "fastulm+bf16", "fastulm+ckpt+bf16"]


@pytest.mark.reference
@pytest.mark.parametrize("name", NAMES)
def test_lm_step(benchmark, lm_models, name):
    models, x, y = lm_models
    models[name].reset()
    _run(benchmark, "lm-step", _lm_step, name, models[name], x, y)


@pytest.mark.reference
@pytest.mark.parametrize("name", NAMES)
def test_classifier_step(benchmark, clas_models, name):
    models, x, y = clas_models
    _run(benchmark, "classifier-step", _clas_step, name, models[name], x, y)


def saved_for_backward_mb(fn) -> float:
    """MB of distinct storages autograd saves for backward while ``fn`` runs (deterministic,
    unlike RSS; checkpointed regions save only their inputs)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


@pytest.mark.reference
@pytest.mark.parametrize("name", ["fastai", "fastulm", "fastulm+ckpt"])
def test_classifier_saved_for_backward(benchmark, clas_models, name):
    """Classifier forward (+loss) only; extra_info holds the MB saved for backward."""
    models, x, y = clas_models
    model = models[name]

    def forward():
        out = model(x)
        logits, raw = (out[0], out[1]) if isinstance(out, tuple) else (out.logits, out.raw)
        return F.cross_entropy(logits, y) + ar_tar(raw, raw)

    mb = saved_for_backward_mb(forward)
    benchmark.group = "classifier-forward"
    benchmark.extra_info.update(saved_mb=round(mb, 1), bs=x.size(0), seq=x.size(1), scale=SCALE)
    print(f"\nclassifier saved-for-backward {name}: bs={x.size(0)} seq={x.size(1)} {mb:.0f} MB")
    benchmark.pedantic(forward, rounds=1, iterations=1)
