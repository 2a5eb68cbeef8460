"""One torch thread for the trainer tests: tiny LSTMs gain nothing from more, and on a shared
2-core machine OpenMP threads waiting on each other make them 10x slower."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
