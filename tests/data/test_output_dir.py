"""OutputDir: what --force may replace, and the leftovers of killed runs."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastulm.data.corpus import OutputDir, open_corpus, split_batch, write_corpus
from fastulm.data.vocab import Vocab
from fastulm.files import WriteError

ITOS = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj", "hi"]


def _write(path, docs=((2, 9), (2,)), **kw):
    values = np.concatenate([np.array(d, np.int32) for d in docs])
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    batch = split_batch(values, offsets, np.zeros(len(docs), np.int64), map(str, range(len(docs))))
    return write_corpus(path, Vocab(ITOS), {"train": batch}, {"label_names": ["a"]}, **kw)


def test_force_never_replaces_a_folder_fastulm_did_not_write(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(
            WriteError, match=r"notes: is not a corpus fastulm wrote \(no meta.json\)"
        ):
            _write(notes, force=force)
    assert [p.name for p in notes.iterdir()] == ["todo.txt"]
    assert (notes / "todo.txt").read_text() == "keep me"
    # a corpus with something of the user's added is no longer only fastulm's
    out = _write(tmp_path / "c")
    (out / "mine.txt").write_text("mine")
    with pytest.raises(WriteError, match=r"is not a corpus fastulm wrote \(it holds .mine.txt.\)"):
        _write(out, force=True)
    assert (out / "mine.txt").read_text() == "mine"
    # nor is a folder whose meta.json is not a corpus's
    other = tmp_path / "other"
    other.mkdir()
    (other / "meta.json").write_text(json.dumps({"format": "someone-else"}))
    with pytest.raises(WriteError, match="is not a corpus fastulm wrote"):
        _write(other, force=True)
    assert (other / "meta.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "notes", "other"]


def test_earlier_corpus_replaced_only_with_force(tmp_path):
    out = _write(tmp_path / "c")
    with pytest.raises(WriteError, match="c: a corpus is already there \\(use --force"):
        _write(out, docs=[(2, 9, 9, 9)])
    assert open_corpus(out)["train"].ids.tolist() == [2, 9, 2]
    _write(out, docs=[(2, 9, 9, 9)], force=True)
    assert open_corpus(out)["train"].ids.tolist() == [2, 9, 9, 9]
    empty = tmp_path / "empty"
    empty.mkdir()
    _write(empty)
    assert open_corpus(empty)["train"].ids.tolist() == [2, 9, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "empty"]  # no temporaries


def test_out_is_never_a_source_or_a_folder_holding_one(tmp_path):
    src = tmp_path / "d" / "a.csv"
    src.parent.mkdir()
    src.write_text("label,text,is_valid\n")
    for out in (src.parent, src, tmp_path):
        with pytest.raises(WriteError, match="would replace the source"):
            OutputDir(out, force=True, sources=[src])
    # an earlier corpus that is itself a source (a part being merged, say) is kept too
    corpus = _write(tmp_path / "c")
    with pytest.raises(WriteError, match="would replace the source"):
        OutputDir(corpus, force=True, sources=[corpus / "train.arrow"])
    assert src.exists() and open_corpus(corpus)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "d"]


def test_url_source_is_not_a_path(tmp_path, monkeypatch):
    """``https://host/x.csv`` read as a path is ``./https:/host/x.csv``: under the current
    folder, which must not make the current folder's subfolders look like its holders."""
    monkeypatch.chdir(tmp_path)
    with OutputDir("https:", sources=["https://example.com/x.csv"]) as out:
        out.commit()
    assert (tmp_path / "https:").is_dir()


def test_current_folder_as_out(tmp_path, monkeypatch):
    """OUT given as ``.`` (an empty current folder) is written in place of that folder."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    out = _write(".")
    assert out == here
    assert open_corpus(here)["train"].ids.tolist() == [2, 9, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]


def test_stale_temporaries_are_swept_and_nothing_else(tmp_path):
    stale = [tmp_path / ".out.tmp-xyz", tmp_path / ".out.tmp-abc"]
    for folder in stale:
        folder.mkdir()
        (folder / "train.arrow").write_bytes(b"half a file")
    keep = [tmp_path / ".other.tmp-1", tmp_path / "out.tmp-2", tmp_path / ".out.tmpfoo"]
    for folder in keep:
        folder.mkdir()
    (tmp_path / ".out.tmp-file").write_text("a file, not a folder")
    (tmp_path / ".out.old-link").symlink_to(keep[0])
    _write(tmp_path / "out")
    assert not any(p.exists() for p in stale)
    assert all(p.is_dir() for p in keep)
    assert (tmp_path / ".out.tmp-file").read_text() == "a file, not a folder"
    assert (tmp_path / ".out.old-link").is_symlink()


def _killed_between_the_renames(out):
    """What a run killed after moving ``out`` aside, before renaming its new one in, left."""
    old = out.with_name(f".{out.name}.old-99999")
    os.replace(out, old)
    new = out.with_name(f".{out.name}.tmp-new")
    new.mkdir()
    (new / "meta.json").write_text("{}")
    return old


def test_an_earlier_corpus_moved_aside_by_a_killed_run_is_put_back(tmp_path):
    out = _write(tmp_path / "c")
    _killed_between_the_renames(out)
    with pytest.raises(WriteError, match=r"a corpus is already there \(use --force"):
        _write(out, docs=[(2, 9, 9, 9)])
    assert open_corpus(out)["train"].ids.tolist() == [2, 9, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    _write(out, docs=[(2, 9, 9, 9)], force=True)
    assert open_corpus(out)["train"].ids.tolist() == [2, 9, 9, 9]


def test_an_earlier_corpus_left_aside_after_the_new_one_is_in_is_removed(tmp_path):
    """Killed while removing the earlier folder: the new one stands, the old one goes."""
    out = _write(tmp_path / "c")
    old = tmp_path / ".c.old-99999"
    old.mkdir()
    (old / "train.arrow").write_bytes(b"the corpus before")
    _write(out, docs=[(2, 9, 9, 9)], force=True)
    assert open_corpus(out)["train"].ids.tolist() == [2, 9, 9, 9]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_a_live_runs_temporary_is_kept(tmp_path):
    live = tmp_path / ".out.tmp-live"
    live.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY);"
            " fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
            str(live),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        _write(tmp_path / "out")
        assert live.is_dir()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    _write(tmp_path / "out", force=True)  # its holder is gone: now it is stale
    assert not live.exists()


def test_output_dir_holds_its_temporary_locked(tmp_path):
    """A second run writing the same OUT meanwhile does not take the first one's folder."""
    with OutputDir(tmp_path / "out") as first:
        (first.tmp / "vocab.json").write_text("[]")
        with OutputDir(tmp_path / "out") as second:
            assert first.tmp.is_dir() and second.tmp.is_dir()
    assert list(tmp_path.iterdir()) == []


def test_failed_rename_puts_the_earlier_corpus_back(tmp_path, monkeypatch):
    out = _write(tmp_path / "c")
    rename = os.replace

    def failing(src, dst):
        if Path(src).name.startswith(".c.tmp-"):
            raise OSError(28, "No space left on device")
        rename(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="No space left"):
        _write(out, docs=[(2, 9, 9, 9)], force=True)
    monkeypatch.undo()
    assert open_corpus(out)["train"].ids.tolist() == [2, 9, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_force_keeps_a_users_arrow_file_beside_a_corpus(tmp_path):
    """Only the splits meta.json names are the corpus's; another .arrow is the user's."""
    out = _write(tmp_path / "c")
    (out / "embeddings.arrow").write_bytes(b"the user's own table")
    with pytest.raises(WriteError, match=r"it holds .embeddings.arrow."):
        _write(out, docs=[(2, 9, 9, 9)], force=True)
    assert (out / "embeddings.arrow").read_bytes() == b"the user's own table"
    assert open_corpus(out)["train"].ids.tolist() == [2, 9, 2]


@pytest.mark.parametrize("appeared", ["users_files", "another_corpus"])
def test_out_is_checked_again_when_the_job_ends(tmp_path, appeared):
    """What appeared at OUT while the job ran is refused as it would have been at the start,
    and left as it is."""
    out = tmp_path / "out"
    with OutputDir(out) as target:
        (target.tmp / "vocab.json").write_text("[]")
        if appeared == "users_files":
            out.mkdir()
            (out / "notes.txt").write_text("written meanwhile")
            says = r"is not a corpus fastulm wrote \(no meta.json\)"
        else:
            _write(out)
            says = r"a corpus is already there \(use --force"
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        with pytest.raises(WriteError, match=says):
            target.commit()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the temporary is gone


def test_a_read_only_empty_out_is_not_swapped_for_a_writable_one(tmp_path):
    empty = tmp_path / "ro"
    empty.mkdir()
    empty.chmod(0o555)
    try:
        with pytest.raises(WriteError, match="ro: is read-only; will not replace it"):
            _write(empty)
        assert stat.S_IMODE(empty.stat().st_mode) == 0o555
        assert list(empty.iterdir()) == []
    finally:
        empty.chmod(0o755)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"]
