"""Writing files: the one place that decides how fastulm puts bytes on disk.

- A regular file (or a new path) is written to a temporary name in the same folder, flushed
  to disk and renamed over the target, so readers never see half a file. A link to a regular
  file replaces the file it points to and keeps the link.
- A device, FIFO or socket (``/dev/stdout``, ``/dev/null``, a named pipe) is written through,
  never replaced: renaming over it would destroy it. ``-`` is standard output.
- New files get the user's umask (``mkstemp``'s 0600 would outlive the rename); a replaced
  file keeps its mode.
- A folder is replaced only when fastulm wrote it (``check_replaceable``), or it is empty.

Every failure is a ``WriteError`` naming the path, never a traceback from deep inside.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


class WriteError(OSError):
    """A file or folder that cannot (or must not) be written; the message names it."""

    def __init__(self, message: str):
        super().__init__(message)

    def __str__(self) -> str:
        return self.args[0]


def file_mode() -> int:
    """The mode a new file gets from the user's umask (0o666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def is_stdio(path: str | os.PathLike) -> bool:
    return str(path) == "-"


def _reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def check_writable(path: str | os.PathLike) -> None:
    """Raise ``WriteError`` now if ``path`` could not be written later (its folder is missing
    and cannot be made, is not writable, or ``path`` is a folder)."""
    if is_stdio(path):
        return
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{path}: is a folder, not a file")
    if path.exists() and not path.is_file():
        return  # a device or FIFO: written through
    parent = path.parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise WriteError(f"{path}: cannot write here ({probe} is not a folder)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise WriteError(f"{path}: cannot write here (no permission to write in {probe})")
    if path.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise WriteError(f"{path}: cannot replace it (no permission to write in {parent})")


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Have ``write(p)`` write the file at ``p``, then put it at ``path`` atomically.

    ``write`` gets a temporary path beside ``path`` (or ``path`` itself when ``path`` is a
    device or FIFO, which is written through). On any failure nothing is left behind and
    the earlier file, if any, is unchanged."""
    path = Path(path)
    try:
        st = os.stat(path)  # follows links
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise WriteError(f"{path}: cannot write ({_reason(err)})") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise WriteError(f"{path}: is a folder, not a file")
    if st is not None and not stat.S_ISREG(st.st_mode):
        try:
            write(str(path))
        except OSError as err:
            raise WriteError(f"{path}: cannot write ({_reason(err)})") from None
        return
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    mode = stat.S_IMODE(st.st_mode) if st is not None else file_mode()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as err:
        raise WriteError(f"{path}: cannot write ({_reason(err)})") from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as err:
        _unlink_quietly(tmp)
        raise WriteError(f"{path}: cannot write ({_reason(err)})") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` to ``path`` by the rules above; ``-`` writes to standard output."""
    if is_stdio(path):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    if is_stdio(path):
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def check_replaceable(
    path: str | os.PathLike,
    *,
    force: bool,
    foreign: Callable[[Path], str | None],
    what: str,
    sources: Iterable[str | os.PathLike] = (),
) -> None:
    """May a folder be written at ``path``? Raise ``WriteError`` with the reason if not.

    Allowed: a path that does not exist, an empty folder, or, with ``force``, a folder that
    fastulm wrote (a corpus, a run directory): ``foreign(path)`` names what in it fastulm
    did not write, or is None. Never a file, a link, or a folder that is or holds one of
    ``sources``."""
    path = Path(path)
    here = Path(os.path.realpath(path))
    for src in sources:
        if is_stdio(src):
            continue
        real = Path(os.path.realpath(src))
        if real == here or here in real.parents:
            raise WriteError(f"{path}: would replace the source {src}; choose another output")
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink():
        raise WriteError(f"{path}: is a link; give the folder it points to, or another path")
    if not path.is_dir():
        raise WriteError(f"{path}: exists and is not a folder; will not replace it")
    if not os.access(path, os.W_OK | os.X_OK) or not path.stat().st_mode & 0o222:
        # a folder the user made read-only is not fastulm's to swap for a writable one
        # (checked by its mode too: root may write anywhere, yet was told not to here)
        raise WriteError(f"{path}: is read-only; will not replace it")
    if not any(path.iterdir()):
        return
    other = foreign(path)
    if other is not None:
        raise WriteError(
            f"{path}: is not a {what} fastulm wrote ({other}); "
            "will not replace it, even with --force"
        )
    if not force:
        raise WriteError(f"{path}: a {what} is already there (use --force to replace it)")
