#!/usr/bin/env bash
# Install fastulm into ./.venv (created if absent).
#   bash scripts/install.sh          the library and its CLIs
#   bash scripts/install.sh --test   plus pytest, pytest-benchmark, ruff and the reference
#                                    implementation (fastai 2.8.12, without torchvision)
set -euo pipefail
cd "$(dirname "$0")/.."

[ -d .venv ] || python3 -m venv .venv
# shellcheck disable=SC1091
source .venv/bin/activate
pip() { python -m pip --disable-pip-version-check "$@"; }

# torch first, pinned to the CPU build on this machine's disk: an unpinned torch would make
# pip download a multi-GB CUDA build. Where torch is already installed (a GPU image), keep it.
if ! python -c "import torch" 2>/dev/null; then
    pip install -q "torch==2.13.0" "triton==3.7.1"
fi
pip install -q -e .

if [ "${1:-}" = "--test" ]; then
    pip install -q -e ".[test,reference]"
    # fastai itself without its dependency list: that list asks for torchvision, which
    # would pull a CUDA build of torch. fastai.text imports without it.
    pip install -q --no-deps "fastai==2.8.12"
fi
