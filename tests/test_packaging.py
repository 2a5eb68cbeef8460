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
