#!/usr/bin/env bash
# Here, once, before scripts/gpu_pipeline.sh runs on a lent GPU machine: the device call
# sends only the checkout, so the archive must travel as a carried path. This makes
# ./devdata a link to the data folder (nothing is copied; git ignores it), so that
#   run(command="bash scripts/gpu_pipeline.sh", carry=["devdata/aclImdb_v1.tar.gz", "wheelhouse"], timeout_s=600)
# takes the 54 MiB archive along (the whole call may carry 64 MiB; the wheelhouse adds 2.5 MiB,
# isal among it: a faster gzip for reading the archive).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${FASTULM_DATA:-../shared/data}
[ -f "$DATA/aclImdb_v1.tar.gz" ] || { echo "link_device_data.sh: no $DATA/aclImdb_v1.tar.gz" >&2; exit 1; }
git_dir=$(git rev-parse --git-common-dir)
mkdir -p "$git_dir/info"
grep -qx '/devdata' "$git_dir/info/exclude" 2>/dev/null || echo '/devdata' >> "$git_dir/info/exclude"
ln -sfn "$(cd "$DATA" && pwd)" devdata
ls -lL devdata/aclImdb_v1.tar.gz
