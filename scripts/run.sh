#!/usr/bin/env bash
# The main job: install fastulm, then tokenize the 100k IMDB reviews into an Arrow corpus.
#   bash scripts/run.sh [SRC] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
source .venv/bin/activate
DATA="${FASTULM_DATA:-../shared/data}"
python -m fastulm.tokenize "${1:-$DATA/aclImdb_v1.tar.gz}" "${2:-data/imdb_tok}" --force
