"""Shared test configuration: data location, optional reference, Triton on the CPU."""

import os
from pathlib import Path

import pytest
import torch

# TRITON_INTERPRET is read when a kernel is decorated, so it must be set before any
# kernel module is imported: without a GPU the Triton kernels run in the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

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


@pytest.fixture(scope="session")
def imdb_sample() -> Path:
    return need_data("imdb_sample")


@pytest.fixture(scope="session")
def imdb_archive() -> Path:
    return need_data("aclImdb_v1.tar.gz")


@pytest.fixture(scope="session")
def fastai_text():
    return need_fastai()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
