# Source this on a lent GPU machine (no network), from the repository root:
#   source scripts/device_env.sh || exit 1
# It installs the carried wheels (./wheelhouse, see scripts/fetch_gpu_wheels.sh) and fastulm
# itself into /tmp/fastulm_site, puts that first on PYTHONPATH and sets PY (the python to use).
#
# fastulm is *installed*, not run from the checkout: pyproject maps the top-level kernels/
# folder to fastulm.kernels, so the source folder fastulm/ alone has no kernels. For the same
# reason PYTHONSAFEPATH=1 keeps the current folder off sys.path (`python -m ...` would put the
# checkout's fastulm/ ahead of the installed one), and pytest runs need `-p fastulm` (imported
# before pytest puts the repository root first on sys.path).
SITE=${FASTULM_SITE:-/tmp/fastulm_site}
PY=${PYTHON:-python3}
mkdir -p "$SITE"
export PYTHONUNBUFFERED=1

if ls wheelhouse/*.whl >/dev/null 2>&1; then
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" wheelhouse/*.whl; then
    # one unusable wheel stops pip's whole install: then each wheel on its own
    echo "device_env.sh: carried wheels did not install together; one by one:" >&2
    for whl in wheelhouse/*.whl; do
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$whl" 2>/dev/null || echo "device_env.sh: not installed: $whl" >&2
    done
  fi
else
  echo "device_env.sh: no ./wheelhouse (scripts/fetch_gpu_wheels.sh): no fastai here" >&2
fi
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
  --upgrade --target "$SITE" . || { echo "device_env.sh: cannot install fastulm" >&2; return 1; }
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONSAFEPATH=1
"$PY" -c "import fastulm.kernels" || { echo "device_env.sh: fastulm.kernels does not import" >&2; return 1; }
