#!/usr/bin/env bash
# Install the test extras (pytest, pytest-benchmark, ruff, fastai 2.8.12) and run the checks:
# ruff lint + format, then the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
[ -n "${VIRTUAL_ENV:-}" ] || source .venv/bin/activate
ruff check .
ruff format --check .
python -m pytest "$@"
