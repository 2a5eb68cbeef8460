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


class StagedFolder:
    """A folder filled under a temporary name beside ``path`` and renamed to it on ``commit``.

    The temporary folder, ``.NAME.tmp-XXXX``, is ``flock``-ed while this object lives, so a
    later run tells a killed run's leftovers (unlocked) from a live run's, and removes them.
    ``check()``, when given, says whether ``path`` may be replaced; it runs on commit too,
    since what appeared at ``path`` during a long job is refused as it would have been at
    the start. Leaving the ``with`` block without a commit removes the temporary folder, and
    a ``WriteError`` naming it is told in terms of ``path``."""

    def __init__(self, path: str | os.PathLike, check: Callable[[], object] | None = None):
        self._check = check
        if check is not None:
            check()
        self.path = named_path(path)  # the temporary goes beside it, by name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The folder above is locked too, so no other run's sweep sees our temporary between
        # its creation and its lock.
        above = lock_folder(self.path.parent, wait=True)
        try:
            if above is not None and _sweep(self.path) and check is not None:
                check()  # an earlier folder was put back at path
            self.tmp = Path(
                tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent)
            )
            self._lock = lock_folder(self.tmp)
        finally:
            unlock_folder(above)
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would outlive the rename

    def commit(self) -> Path:
        """Rename the finished folder to ``path``. An earlier one is moved aside (locked, so no
        sweep takes it meanwhile), put back if the rename fails, and removed after."""
        old = old_lock = None
        if self._check is not None:
            self._check()
        try:
            if self.path.exists() or self.path.is_symlink():
                old = self.path.parent / f".{self.path.name}.old-{os.getpid()}"
                old_lock = lock_folder(self.path)
                os.replace(self.path, old)
            try:
                os.replace(self.tmp, self.path)
            except OSError:
                if old is not None:
                    os.replace(old, self.path)
                raise
            if old is not None:
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)
        except WriteError:
            raise
        except OSError as err:
            raise WriteError(
                f"{self.path}: cannot put the new folder in place ({_reason(err)})"
            ) from None
        finally:
            unlock_folder(old_lock)
        self._release()
        return self.path

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        unlock_folder(self._lock)
        self._lock = None

    def __enter__(self) -> StagedFolder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp.exists():
            self.discard()
        self._release()
        if isinstance(exc, WriteError) and str(self.tmp) in str(exc):
            # name the folder the user asked for, not our temporary one
            raise WriteError(str(exc).replace(str(self.tmp), str(self.path))) from None


def atomic_folder(
    path: str | os.PathLike,
    write: Callable[[Path], object],
    check: Callable[[], object] | None = None,
) -> None:
    """Have ``write(tmp)`` fill a new folder, then put it at ``path`` (``StagedFolder``).

    On any failure ``path`` is as it was, and an error names ``path``, not ``tmp``."""
    try:
        target = StagedFolder(path, check)
    except WriteError:
        raise
    except OSError as err:
        raise cannot_write(path, err) from None
    with target:
        try:
            write(target.tmp)
        except WriteError:
            raise
        except OSError as err:
            raise cannot_write(target.tmp, err) from None
        target.commit()


def _sweep(path: Path) -> bool:
    """Clear what killed runs (kill -9, a crash) left beside ``path``: the ``.NAME.tmp-*``
    and ``.NAME.old-*`` folders that no live run holds locked. An ``.old-`` folder is the
    earlier ``path`` a run moved aside; killed before it renamed its new folder in, it left
    no ``path``, and that folder is put back (True) rather than removed."""
    prefixes = (f".{path.name}.tmp-", f".{path.name}.old-")
    try:
        with os.scandir(path.parent) as it:
            stale = sorted(e.path for e in it if e.name.startswith(prefixes))
    except OSError:
        return False
    restored = False
    for folder in stale:
        if os.path.isdir(folder) and not os.path.islink(folder):
            fd = lock_folder(Path(folder))
            if fd is not None:
                try:
                    is_old = Path(folder).name.startswith(prefixes[1])
                    if is_old and not (path.exists() or path.is_symlink()):
                        os.replace(folder, path)
                        restored = True
                    else:
                        shutil.rmtree(folder, ignore_errors=True)
                finally:
                    unlock_folder(fd)
    return restored


def named_path(path: str | os.PathLike) -> Path:
    """``path``, resolved when it has no name of its own ("." or ".."), so that what goes
    beside it (``.NAME.tmp-*``, ``.NAME.old-*``) can be named after it."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.name in ("", "..") else path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def lock_folder(folder: Path, wait: bool = False) -> int | None:
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


def unlock_folder(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the lock
