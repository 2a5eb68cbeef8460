"""numba's `njit` with an on-disk cache that cannot serve stale code.

numba stamps a cached kernel with the content of its own file only. A kernel that calls a
jitted function of another module (table.probe, ascii_split.spells) or reads one of its
constants (table.FNV_PRIME) has that code and those values compiled in, so after an edit
to the other module numba would go on loading the old machine code. Here a kernel's stamp
is the content of its module and of every fastulm module that module imports, directly or
not (read from the import statements), so an edit to any of them recompiles it; numba
still adds its own version and the kernel's bytecode to the key.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sys
from functools import cache
from pathlib import Path

import numba
from numba.core.caching import CompileResultCacheImpl, FunctionCache

# `from X import a, b` (parenthesized lists too) and `import X`, at any indentation
_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#]*)|import[ \t]+([^\n#]+))",
    re.MULTILINE,
)


_ROOT = Path(__file__).resolve().parents[1]  # the fastulm package


def _file(name: str) -> Path | None:
    """The source file of fastulm module or package `name`: where it was imported from, or
    else found on disk (not imported). The first matters for fastulm.kernels, which lives in
    the top-level kernels/ folder of a source tree."""
    parts = name.split(".")
    if parts[0] != "fastulm":
        return None
    loaded = getattr(sys.modules.get(name), "__file__", None)
    if loaded and loaded.endswith(".py"):
        return Path(loaded)
    base = _ROOT.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(name: str, source: str) -> set[str]:
    """fastulm modules that `source` (module `name`) imports: `import M`, `from M import x`,
    and `from P import m` where m is a module. A package named only as P is left out: its
    __init__ is counted for the modules under it (see sources), not what it imports."""
    path = _file(name)
    package = name if path is not None and path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for m in _IMPORT.finditer(source):
        base, names, plain = m.groups()
        if plain is not None:
            found.update(part.split()[0] for part in plain.split(",") if part.split())
            continue
        if base.startswith("."):
            dots = len(base) - len(base.lstrip("."))
            parent = package.rsplit(".", dots - 1)[0] if dots > 1 else package
            base = f"{parent}.{base.lstrip('.')}".rstrip(".")
        found.add(base)
        for item in names.strip("()").replace("\n", " ").split(","):
            if item.split():
                found.add(f"{base}.{item.split()[0]}")
    out = set()
    for f in found:
        path = _file(f)
        if path is not None and path.name != "__init__.py":
            out.add(f)
    return out


@cache
def sources(name: str) -> tuple[str, ...]:
    """Files of module `name` and of every fastulm module it imports, directly or not."""
    seen: dict[str, Path] = {}
    todo = [name]
    while todo:
        mod = todo.pop()
        path = _file(mod)
        if mod in seen or path is None:
            continue
        seen[mod] = path
        todo.extend(_imports(mod, path.read_text(encoding="utf-8")))
    # a package's __init__ runs before its modules: include the ones on the way
    for mod in list(seen):
        parts = mod.split(".")
        for k in range(1, len(parts)):
            path = _file(".".join(parts[:k]))
            if path:
                seen.setdefault(".".join(parts[:k]), path)
    return tuple(sorted({str(p) for p in seen.values()}))


@cache
def stamp(name: str) -> str:
    """Hash of the content of `sources(name)`."""
    h = hashlib.sha256()
    for path in sources(name):
        h.update(path.encode() + b"\0" + Path(path).read_bytes() + b"\0")
    return h.hexdigest()


class _Stamped:
    """numba's chosen cache locator, with the source stamp replaced."""

    def __init__(self, inner, stamp: str) -> None:
        self._inner = inner
        self._stamp = stamp

    def __getattr__(self, attr):
        return getattr(self._inner, attr)

    def get_source_stamp(self) -> str:
        return self._stamp


class _Impl(CompileResultCacheImpl):
    def __init__(self, py_func) -> None:
        super().__init__(py_func)
        self._locator = _Stamped(self._locator, stamp(py_func.__module__))


class _Cache(FunctionCache):
    _impl_class = _Impl

    def save_overload(self, sig, data) -> None:
        """A cache that cannot be written (a full disk, a file size limit) costs the next
        run a compile, not this run its work: numba would raise the OSError, with no file
        named, from inside whatever called the kernel first."""
        with contextlib.suppress(OSError):
            super().save_overload(sig, data)


def kernel(fn=None, *, allocates: bool = True, **options):
    """`numba.njit(cache=True, **options)`, stamped with the sources of fn's module and of
    every fastulm module it imports. Use as `@kernel` or `@kernel(nogil=True)`.

    `allocates=False` is for a small kernel that other kernels call per item and that makes
    no array (no np.empty, no slice copy): it is compiled without numba's runtime. With
    it, every call counts a reference to each array argument on entry and again at each
    exit, with atomic instructions that numba's pruning leaves in place in any function
    with a loop; they took a third of split_runs' time."""
    if fn is None:
        return lambda f: kernel(f, allocates=allocates, **options)
    if not allocates:
        options["_nrt"] = False
    dispatcher = numba.njit(**options)(fn)
    dispatcher._cache = _Cache(fn)  # what Dispatcher.enable_caching does, with our cache
    return dispatcher
