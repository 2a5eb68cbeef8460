"""Writing files: the one place that decides how fastulm puts bytes on disk.

- A regular file (or a new path) is written to a temporary name in the same folder, flushed
  to disk and renamed over the target, so readers never see half a file. A link to a regular
  file replaces the file it points to and keeps the link.
- A device, FIFO or socket (``/dev/stdout``, ``/dev/null``, a named pipe) is written through,
  never replaced: renaming over it would destroy it. ``-`` is standard output.
- New files get the user's umask (``mkstemp``'s 0600 would outlive the rename); a replaced
  file keeps its mode.
- A folder is replaced only when fastulm wrote it (``check_replaceable``), or it is empty.
  A new folder is filled under a temporary name beside it and renamed into place
  (``atomic_folder``), so a failed or killed run leaves the earlier folder as it was.

Every failure is a ``WriteError`` naming the path, never a traceback from deep inside.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

try:
    import fcntl
except ImportError:  # no flock (Windows): a killed run's temporary folder is not swept
    fcntl = None


class WriteError(OSError):
    """A file or folder that cannot (or must not) be written; the message names it."""

    def __init__(self, message: str):
        super().__init__(message)

    def __str__(self) -> str:
        return self.args[0]


def file_mode() -> int:
    """The mode a new file gets from the user's umask (0o666 & ~umask)."""
    return 0o666 & ~_umask()


def is_stdio(path: str | os.PathLike) -> bool:
    return str(path) == "-"


def _reason(err: BaseException) -> str:
    # pyarrow's strerror is "Error writing bytes to file. Detail: [errno 27] File too large"
    errno = getattr(err, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def cannot_write(path: str | os.PathLike, err: BaseException) -> WriteError:
    """The one-line error for an ``OSError`` met while writing ``path``."""
    return WriteError(f"{path}: cannot write ({_reason(err)})")


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
        raise cannot_write(path, err) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise WriteError(f"{path}: is a folder, not a file")
    if st is not None and not stat.S_ISREG(st.st_mode):
        try:
            write(str(path))
        except OSError as err:
            raise cannot_write(path, err) from None
        return
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    mode = stat.S_IMODE(st.st_mode) if st is not None else file_mode()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as err:
        raise cannot_write(path, err) from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as err:
        _unlink_quietly(tmp)
        raise cannot_write(path, err) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` to ``path`` by the rules above; ``-`` writes to standard output."""
    if is_stdio(path):
        out = sys.stdout
        encoding = getattr(out, "encoding", None) or "utf-8"
        write_stdout(text.encode(encoding, getattr(out, "errors", None) or "strict"))
        return
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    if is_stdio(path):
        write_stdout(data)
        return
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_stdout(data: bytes) -> None:
    """All of ``data`` to standard output, or a ``WriteError`` ("standard output: cannot
    write (File too large)").

    The bytes go out in a loop: under PYTHONUNBUFFERED the text layer drops the rest of a
    short write (a full disk) without an error. After a failure, what is still buffered is
    sent to /dev/null, so that the exit does not fail on it again with "Exception ignored"."""
    try:
        sys.stdout.flush()
        out = getattr(sys.stdout, "buffer", None)
        if out is None:  # a replaced sys.stdout (a test's capture): text only
            sys.stdout.write(
                data.decode(getattr(sys.stdout, "encoding", None) or "utf-8", "replace")
            )
            sys.stdout.flush()
            return
        view = memoryview(data)
        while view:
            view = view[out.write(view) or 0 :]
        out.flush()
    except OSError as err:
        _drop_stdout()
        raise WriteError(f"standard output: cannot write ({_reason(err)})") from None


def _drop_stdout() -> None:
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


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


def atomic_folder(
    path: str | os.PathLike,
    write: Callable[[Path], object],
    check: Callable[[], object] | None = None,
) -> None:
    """Have ``write(tmp)`` fill a new folder, then put it at ``path`` by renaming it.

    ``tmp`` is ``.NAME.tmp-XXXX`` beside ``path``, locked while this runs. On any failure
    it is removed and ``path`` is as it was; an error names ``path``, not ``tmp``. When the
    folder is complete, ``check()`` runs (``path`` may have changed meanwhile), the earlier
    folder at ``path`` is moved aside, the new one renamed in (the old one put back if that
    fails) and the old one removed. A killed run's temporary folder, which nothing holds
    locked, is removed by the next call for the same ``path``."""
    path = Path(path)
    if path.name in ("", ".."):  # the temporary goes beside the folder, by its name
        path = Path(os.path.realpath(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, lock = _new_folder(path)
    except OSError as err:
        raise cannot_write(path, err) from None
    try:
        try:
            write(tmp)
        except OSError as err:
            message = (
                str(err) if isinstance(err, WriteError) else f"{tmp}: cannot write ({_reason(err)})"
            )
            raise WriteError(message.replace(str(tmp), str(path))) from None
        if check is not None:
            check()
        _swap_in(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the swap succeeded
        _unlock(lock)


def _new_folder(path: Path) -> tuple[Path, int | None]:
    """A locked temporary folder beside ``path``, after removing the unlocked ones killed
    runs left there. The folder above is locked meanwhile, so that no other run's sweep
    sees the new folder between its creation and its lock."""
    above = _lock(path.parent, wait=True)
    try:
        prefix = f".{path.name}.tmp-"
        for entry in path.parent.iterdir():
            if entry.name.startswith(prefix) and entry.is_dir() and not entry.is_symlink():
                held = _lock(entry)
                if held is not None:
                    shutil.rmtree(entry, ignore_errors=True)
                    _unlock(held)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
        lock = _lock(tmp)
    finally:
        _unlock(above)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would outlive the rename
    return tmp, lock


def _swap_in(tmp: Path, path: Path) -> None:
    old = None
    try:
        if path.exists() or path.is_symlink():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except OSError:
            if old is not None:
                os.rename(old, path)
            raise
    except OSError as err:
        raise WriteError(f"{path}: cannot put the new folder in place ({_reason(err)})") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _lock(folder: Path, wait: bool = False) -> int | None:
    """A descriptor holding an exclusive ``flock`` on ``folder``; None when another process
    holds one, or the folder cannot be locked."""
    if fcntl is None:
        return None
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the lock
