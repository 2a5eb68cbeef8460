#!/usr/bin/env bash
# Download into ./wheelhouse the wheels the lent GPU machine's image lacks (it has no network:
# see /work/.library/device/README.md), for its Python (3.12, manylinux x86-64). The device
# call then carries them:  run(command="bash benchmarks/gpu/run.sh", carry=["wheelhouse"])
# and run.sh installs them with --no-index --no-deps into /tmp/fastulm_site.
#
#   bash scripts/fetch_gpu_wheels.sh                 # reference: fastai 2.8.12 + light deps
#   bash scripts/fetch_gpu_wheels.sh reference spacy polars
#
# Groups (versions = this repo's dev venv): reference (~3 MB; what the GPU suite needs: the
# reference models import without spaCy), spacy (~35 MB: tokenizer parity runs), polars
# (~40 MB). A device call carries at most 64 MiB in all: do not take spacy and polars together.
# fastprogress stays at 1.0.5: from 1.1 on it imports fasthtml (starlette, uvicorn, ...), which
# the GPU image lacks, and fastai then fails to import there (seen in a Python 3.12 + torch
# 2.11 rehearsal of benchmarks/gpu/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
DEST=wheelhouse

declare -A WHEEL_GROUPS=(
  [reference]="fastai==2.8.12 fastcore==2.2.41 fasttransform==0.0.5 fastprogress==1.0.5 fastdownload==0.0.8 plum-dispatch==2.9.0 beartype==0.23.1 isal==1.9.1"
  [spacy]="spacy==3.8.18 thinc==8.3.14 blis==1.3.4 cymem==2.0.16 preshed==3.0.15 murmurhash==1.0.16 srsly==2.5.6 wasabi==1.1.3 catalogue==2.0.10 confection==1.3.4 weasel==1.0.1 spacy-legacy==3.0.12 spacy-loggers==1.0.5 cloudpathlib==0.26.0 smart-open==9.0.2 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5"
  [polars]="polars==2.1.0 polars-runtime-32==2.1.0"
)

groups=("$@")
[ ${#groups[@]} -eq 0 ] && groups=(reference)
mkdir -p "$DEST"
git_dir=$(git rev-parse --git-common-dir)
mkdir -p "$git_dir/info"
grep -qx '/wheelhouse/' "$git_dir/info/exclude" 2>/dev/null || echo '/wheelhouse/' >> "$git_dir/info/exclude"

platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
for group in "${groups[@]}"; do
  specs=${WHEEL_GROUPS[$group]:-}
  if [ -z "$specs" ]; then
    echo "fetch_gpu_wheels.sh: unknown group '$group' (reference, spacy, polars)" >&2
    exit 2
  fi
  for spec in $specs; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
      --implementation cp "${platforms[@]}" -d "$DEST" "$spec"
  done
done
du -sh "$DEST"
ls "$DEST"
