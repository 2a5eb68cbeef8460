"""fastulm.files: regular files replaced atomically, special files written through, folders
replaced only when fastulm wrote them."""

import os
import stat
import threading
from pathlib import Path

import pytest

from fastulm.files import WriteError, atomic_write, check_replaceable, check_writable, write_text


def _write(text):
    return lambda tmp: Path(tmp).write_text(text)


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_regular_file_is_replaced_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    atomic_write(target, _write("new"))
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def fail(tmp):
        Path(tmp).write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteError, match=r"a\.txt: cannot write \(No space left on device\)"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_fifo_is_written_through_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    write_text(fifo, "label\npos\n")
    reader.join(10)
    assert got == ["label\npos\n"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_link_to_a_device_stays_a_link(tmp_path):
    link = tmp_path / "out"
    link.symlink_to("/dev/null")  # what /dev/stdout is: a link to something not regular
    write_text(link, "x")
    assert link.is_symlink() and os.readlink(link) == "/dev/null"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_link_to_a_regular_file_keeps_the_link(tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def test_dash_is_standard_output(capsys):
    write_text("-", "a,b\n")
    assert capsys.readouterr().out == "a,b\n"


def test_new_files_follow_the_umask_and_replaced_ones_keep_their_mode(tmp_path, umask022):
    new = tmp_path / "new.txt"
    write_text(new, "x")
    assert stat.S_IMODE(new.stat().st_mode) == 0o644  # 0o666 & ~0o022, not mkstemp's 0o600
    kept = tmp_path / "kept.txt"
    kept.write_text("x")
    kept.chmod(0o640)
    write_text(kept, "y")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640


def test_a_folder_or_a_place_under_a_file_is_one_error(tmp_path):
    with pytest.raises(WriteError, match="is a folder"):
        write_text(tmp_path, "x")
    (tmp_path / "f").write_text("")
    with pytest.raises(WriteError, match="f is not a folder"):
        check_writable(tmp_path / "f" / "out.csv")
    with pytest.raises(WriteError, match="cannot write"):
        write_text(tmp_path / "f" / "out.csv", "x")


def _not_mine(path):
    return None if (path / "mine").exists() else "no mine"


def test_check_replaceable(tmp_path):
    check = dict(foreign=_not_mine, what="thing")
    check_replaceable(tmp_path / "new", force=False, **check)  # absent: fine
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", force=False, **check)
    mine = tmp_path / "mine_dir"
    mine.mkdir()
    (mine / "mine").write_text("")
    with pytest.raises(WriteError, match="use --force"):
        check_replaceable(mine, force=False, **check)
    check_replaceable(mine, force=True, **check)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(
        WriteError, match=r"not a thing fastulm wrote \(no mine\).*even with --force"
    ):
        check_replaceable(notes, force=True, **check)
    with pytest.raises(WriteError, match="would replace the source"):
        check_replaceable(notes, force=True, foreign=lambda p: None, what="x", sources=[notes])
    with pytest.raises(WriteError, match="would replace the source"):
        check_replaceable(
            notes, force=True, foreign=lambda p: None, what="x", sources=[notes / "todo.txt"]
        )
    with pytest.raises(WriteError, match="not a folder"):
        check_replaceable(notes / "todo.txt", force=True, foreign=lambda p: None, what="x")
