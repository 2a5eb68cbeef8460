"""fastulm.text.jit: numba's on-disk cache never serves a kernel compiled from old sources.

The checks run in a copy of the package (a development tree in a temporary folder), edit
one module there, and look at what a fresh process computes and whether it loaded the
kernel from the cache (numba's own hit/miss counters).
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastulm.text import jit

PACKAGE = Path(jit.__file__).resolve().parents[1]

CONSTS = "VALUE = 1\n"
KERNELS = """
import numba

from fastulm.text.jit import kernel
from fastulm.text.probe_consts import VALUE


@kernel
def stamped():
    return VALUE


@numba.njit(cache=True)
def plain():
    return VALUE
"""
RUN = """
import fastulm
from fastulm.text import probe_kernels as k

assert fastulm.__file__.startswith({root!r}), fastulm.__file__
print(k.stamped(), k.plain(), len(k.stamped.stats.cache_hits), len(k.plain.stats.cache_hits))
"""


@pytest.fixture
def tree(tmp_path):
    """A copy of the package, without compiled caches, plus a kernel module reading a
    constant from another module."""
    shutil.copytree(PACKAGE, tmp_path / "fastulm", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "fastulm" / "text" / "probe_consts.py").write_text(CONSTS)
    (tmp_path / "fastulm" / "text" / "probe_kernels.py").write_text(KERNELS)
    return tmp_path


def _run(root: Path, code: str) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", code.format(root=str(root))],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return [int(x) for x in out.stdout.split()]


def test_editing_an_imported_module_recompiles_the_kernel(tree):
    # first run compiles and writes the cache; the second loads it
    assert _run(tree, RUN) == [1, 1, 0, 0]
    assert _run(tree, RUN) == [1, 1, 1, 1]
    # an edit to the module the constant comes from (not to the kernel's own file)
    (tree / "fastulm" / "text" / "probe_consts.py").write_text("VALUE = 2\n")
    stamped, plain, stamped_hit, plain_hit = _run(tree, RUN)
    assert (stamped, stamped_hit) == (2, 0)  # recompiled from the new source
    assert (plain, plain_hit) == (1, 1)  # what plain numba caching does: stale code


@pytest.mark.slow
def test_editing_table_py_recompiles_the_run_scan(tree):
    """The real kernels: run_kernels.scan compiles table.py's probe and constants in."""
    code = """
import numpy as np
import fastulm
from fastulm.text import run_kernels as k
from fastulm.text.table import StringTable

assert fastulm.__file__.startswith({root!r}), fastulm.__file__
t = StringTable(["a"])
t.reserve(8, 64)
arr = np.frombuffer("a bb a".encode("utf-32-le"), np.uint32)
kind, ent = k.scan(arr, k.WS, 8, *t.arrays, t.n)[:2]
print(*ent[kind != 2].tolist(), len(k.scan.stats.cache_hits))
"""
    assert _run(tree, code) == [1, 2, 1, 0]
    assert _run(tree, code) == [1, 2, 1, 1]
    table = tree / "fastulm" / "text" / "table.py"
    table.write_text(table.read_text() + "\n# an edit\n")
    assert _run(tree, code) == [1, 2, 1, 0]


def test_sources_follow_the_imports():
    names = {Path(p).name for p in jit.sources("fastulm.text.run_kernels")}
    assert {"run_kernels.py", "table.py", "ascii_split.py", "spacy_tables.py"} <= names
    assert "tokenizer.py" not in names and "plain_runs.py" not in names
    assert {Path(p).name for p in jit.sources("fastulm.text.table")} == {
        "table.py",
        "jit.py",
        "__init__.py",
    }


def test_every_kernel_is_stamped():
    """No fastulm module (fastulm.kernels included) caches a kernel with plain numba."""
    import fastulm.kernels

    folders = [PACKAGE, Path(fastulm.kernels.__file__).parent]
    paths = [p for folder in folders for p in folder.rglob("*.py")]
    assert len(paths) > 40
    for path in paths:
        assert not re.search(r"\bnjit\(", path.read_text()) or path.name == "jit.py", path


def test_a_kernel_in_fastulm_kernels_is_stamped_with_its_own_file():
    """fastulm.kernels lives in the top-level kernels/ folder of a source tree: its stamp
    is still its own file (not an empty list, which would never change)."""
    import fastulm.kernels.weight_drop  # noqa: F401 (the module, for sys.modules)

    found = {Path(p).resolve() for p in jit.sources("fastulm.kernels.weight_drop")}
    assert {p.name for p in found} >= {"weight_drop.py", "dispatch.py", "jit.py"}
    assert Path(sys.modules["fastulm.kernels.weight_drop"].__file__).resolve() in found


def test_a_cache_that_cannot_be_written_costs_a_compile_not_the_run(tree):
    """A full disk (here a file size limit) while numba saves a kernel: the kernel still
    runs and returns its value; nothing is cached, so the next run compiles again."""
    code = """
import resource, signal, sys
sys.dont_write_bytecode = True  # importlib would leave truncated .pyc files behind
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
import fastulm
from fastulm.text import probe_kernels as k

assert fastulm.__file__.startswith({root!r}), fastulm.__file__
print(k.stamped(), len(k.stamped.stats.cache_hits))
"""
    assert _run(tree, code) == [1, 0]
    assert _run(tree, RUN)[::2] == [1, 0]  # nothing was cached: compiled again


def test_a_kernel_that_allocates_nothing_counts_no_references():
    """allocates=False compiles a per-item helper without numba's runtime: a call then
    does no atomic reference counting of its array arguments, and computes the same.
    ascii_split._match_at is such a helper; compiled the default way, numba counts
    references to three of its arrays on entry and at each exit (numba 0.68; with the
    other helpers, a third of split_runs' time)."""
    from numba.core.caching import NullCache

    from fastulm.text import ascii_split

    counted = jit.kernel(ascii_split._match_at.py_func)
    lean = jit.kernel(ascii_split._match_at.py_func, allocates=False)
    for d in (counted, lean):
        d._cache = NullCache()  # compile afresh: numba shows no code it loaded from a cache
    cls, (alts, _start, _flat, _n, body) = ascii_split.COMPILED[0], ascii_split.COMPILED[2]
    text = np.frombuffer("don't!!".encode("utf-32-le"), np.uint32)
    got = [lean(text, 0, len(text), i, alts, row, body, cls) for i in range(7) for row in
           range(len(alts))]  # fmt: skip
    assert got == [counted(text, 0, len(text), i, alts, row, body, cls) for i in range(7)
                   for row in range(len(alts))]  # fmt: skip
    assert max(got) > 0  # some suffix alternative matches somewhere
    (ir_lean,) = lean.inspect_llvm().values()
    assert "@NRT_incref" not in ir_lean and "@NRT_decref" not in ir_lean
