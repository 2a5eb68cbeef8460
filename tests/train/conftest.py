"""One torch thread for the trainer tests: tiny LSTMs gain nothing from more, and on a shared
2-core machine OpenMP threads waiting on each other make them 10x slower."""

from fastulm_testkit import one_torch_thread  # noqa: F401 (autouse for tests/train)
