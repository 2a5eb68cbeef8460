"""Shared test configuration: data location, optional reference, Triton on the CPU."""

import os
from pathlib import Path

import pytest
import torch

from fastulm_testkit import need_data, need_fastai

# TRITON_INTERPRET is read when a kernel is decorated, so it must be set before any
# kernel module is imported: without a GPU the Triton kernels run in the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
