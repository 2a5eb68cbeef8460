"""The kernels/ folder ships as fastulm.kernels (never as a top-level `kernels`)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fastulm_testkit import REPO


def test_editable_install_imports_fastulm_kernels():
    import fastulm.kernels

    assert Path(fastulm.kernels.__file__).resolve().parent == REPO / "kernels"


@pytest.mark.slow
def test_wheel_maps_kernels_folder_to_fastulm_kernels(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("fastulm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fastulm/kernels/__init__.py" in names
    assert "fastulm/kernels/concat_pool.py" in names
    assert not [n for n in names if n.startswith("kernels/")]
    # The wheel imports from a clean directory without the source tree on the path.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = "import fastulm.kernels as k, sys; print(k.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(site) in out


@pytest.mark.slow
def test_device_env_runs_the_installed_copy_from_the_checkout(tmp_path):
    """scripts/device_env.sh (the GPU machine's setup: no venv, no editable install) makes
    `python -m fastulm.train` in the repository root import the installed fastulm, kernels
    included, not the checkout's fastulm/ folder, which has no kernels/ in it."""
    site = tmp_path / "site"
    code = "import fastulm, fastulm.kernels, fastulm.model; print(fastulm.__file__)"
    script = (
        f"source scripts/device_env.sh || exit 1; "
        f'"$PY" -c "{code}" && "$PY" -m fastulm.train lm --help >/dev/null'
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "FASTULM_SITE": str(site),
        "PYTHON": sys.executable,
    }
    proc = subprocess.run(
        ["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # without PYTHONSAFEPATH, `python -c` would put the checkout's fastulm/ first
    assert proc.stdout.strip().startswith(str(site)), proc.stdout
