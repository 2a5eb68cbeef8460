"""Helpers shared by tests/ and benchmarks/: where the data is, whether fastai is there.

Kept out of conftest.py so that test modules can import it by a name that no nested
conftest.py shadows.
"""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent


def data_dir() -> Path:
    return Path(os.environ.get("FASTULM_DATA", REPO.parent / "shared" / "data"))


def need_data(relpath: str) -> Path:
    """The path of a shared data file; skip (or fail in CI) when it is absent."""
    path = data_dir() / relpath
    if not path.exists():
        msg = f"{path} not found (set FASTULM_DATA)"
        if os.environ.get("FASTULM_REQUIRE_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def need_fastai():
    """Import the reference implementation; skip (or fail in CI) when it is absent."""
    try:
        import fastai.text.all as fastai_text
    except ImportError as err:
        msg = f"reference implementation not installed: {err}"
        if os.environ.get("FASTULM_REQUIRE_REFERENCE") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return fastai_text


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Autouse where imported: tiny models, whose OpenMP threads would only wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fastai_weight_drop_off(model) -> None:
    """Switch off every fastai WeightDropout in ``model`` without hitting its p=0 bug.

    Under recent torch ``F.dropout(p=0)`` returns the Parameter itself, which WeightDropout
    then stores on the LSTM and its ``reset`` fails on; p = 1e-12 keeps every weight and
    scales by exactly 1.0 in fp32.
    """
    import fastai.text.all as fastai_text

    for m in model.modules():
        if isinstance(m, fastai_text.WeightDropout):
            m.weight_p = 1e-12


# A tiny, fast training command line: the tiny preset, small batches, one thread, no bars.
TINY_TRAIN = ["--preset", "tiny", "--bs", "8", "--bptt", "8", "--quiet", "--device", "cpu"]
TINY_TRAIN += ["--threads", "1"]


def write_small_corpus(root: Path) -> Path:
    """A 120-review corpus tokenized by the real tokenizer (positive / negative words)."""
    from fastulm.tokenize import main as tokenize_main

    good = ["great", "wonderful", "loved", "superb", "fun"]
    bad = ["awful", "boring", "hated", "dull", "bad"]
    rows = ["label,text,is_valid"]
    for i in range(120):
        words = good if i % 2 else bad
        text = f"This film was {words[i % 5]} and {words[(i + 2) % 5]}. The cast was {words[(i + 3) % 5]}!"
        rows.append(f'{"pos" if i % 2 else "neg"},"{text}",{i % 6 == 0}')
    (root / "t.csv").write_text("\n".join(rows) + "\n")
    out = root / "corpus"
    assert tokenize_main([str(root / "t.csv"), str(out), "--workers", "1", "--quiet"]) == 0
    return out


def cpu_bf16_lstm_ok() -> bool:
    """oneDNN runs the LSTM in bf16 only on CPUs with bf16 support (not on AVX2-only ones)."""
    import torch

    try:
        x, h = torch.randn(1, 2, 4), torch.zeros(1, 1, 3)
        w = [torch.randn(12, 4), torch.randn(12, 3), torch.randn(12), torch.randn(12)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = torch.lstm(x, (h, h), w, True, 1, 0.0, True, False, True)[0]
        return out.dtype == torch.bfloat16
    except RuntimeError:
        return False


def pad_chunk(docs, bptt: int, pad: int = 1):
    """fastai's pad_chunk layout written out independently: whole pad chunks first, the
    rest of the padding last (``docs``: 1-D token tensors)."""
    import torch

    m = max(len(d) for d in docs)
    rows = []
    for d in docs:
        n = m - len(d)
        rows.append(
            torch.cat([torch.full(((n // bptt) * bptt,), pad), d, torch.full((n % bptt,), pad)])
        )
    return torch.stack(rows)


def param_grads(model) -> dict:
    """A copy of every parameter gradient that exists, by name."""
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
