"""The tokenizer's worker processes (fastulm.data.pipeline): a worker that dies is one clear
error, never a hang, and leaves no output; the parent never forks while it runs threads."""

import multiprocessing
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


class _Dying:
    """A tokenizer that kills (or starves) its process on its first batch in a child."""

    def __init__(self, how: str) -> None:
        from fastulm.text import Tokenizer

        self._tok = Tokenizer()
        self.tokens = self._tok.tokens
        self._how = how

    def encode_batch(self, texts):
        if multiprocessing.parent_process() is not None:  # a worker, not the parent
            if self._how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise MemoryError
        return self._tok.encode_batch(texts)


def killed_tokenizer():
    return _Dying("kill")


def starved_tokenizer():
    return _Dying("memory")


def _reviews(root: Path, n: int = 12000) -> Path:
    """An aclImdb-style folder: enough reviews for about 24 batches, so that a child gets
    some (the parent takes back what no child has started when the batches run out)."""
    for k in range(n):
        label, stars = ("pos", 9) if k % 2 else ("neg", 2)
        folder = root / "train" / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{k}_{stars}.txt").write_text(f"Review {k}: it was GREAT, wasn't it? " * 20)
    return root


RUN = """
import sys
sys.path.insert(0, {here!r})
from fastulm.data.pipeline import tokenize_source
import test_worker_pool as t

try:
    tokenize_source({src!r}, {out!r}, workers=2, progress=False, tokenizer_factory=t.{factory})
except ChildProcessError as err:
    print(err)
"""


@pytest.mark.parametrize(
    "factory, message",
    [
        (
            "killed_tokenizer",
            r"worker process \(pid \d+\) was killed by SIGKILL \(out of memory\?\)",
        ),
        ("starved_tokenizer", r"worker ran out of memory"),
    ],
)
def test_a_dying_worker_is_one_error_and_no_output(tmp_path, factory, message):
    src, out = _reviews(tmp_path / "src"), tmp_path / "out"
    code = RUN.format(here=str(HERE), src=str(src), out=str(out), factory=factory)
    # a hang would show as a timeout here
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("nothing written"), done.stdout
    assert re.search(message, lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no OUT, no temporary


def test_the_parent_never_forks(tmp_path):
    """Workers are started fresh (spawn), never forked from the parent, which by then runs
    threads (numpy's BLAS, pyarrow's allocator): Python 3.12 warns about such forks."""
    from fastulm.data.pipeline import collect
    from fastulm.data.sources import open_source

    forks = []
    watching = [True]
    os.register_at_fork(before=lambda: watching[0] and forks.append(os.getpid()))
    try:
        collector = collect(open_source(_reviews(tmp_path / "src")), workers=2, progress=False)
    finally:
        watching[0] = False
    assert forks == []
    assert set(collector._maps) - {os.getpid()}  # a worker process tokenized
    assert collector.n_docs == 12000


@pytest.mark.parametrize("n_tasks", [1, 3, 9])
def test_every_batch_comes_back_once(tmp_path, n_tasks):
    """Fewer batches than the queue holds: the parent takes back the ones no child started
    (cancelled futures), and each batch still comes back exactly once, with its own ids."""
    from fastulm.data.workers import WorkerPool
    from fastulm.text import Tokenizer

    texts = [[f"Batch {k} says hello number {k}."] for k in range(n_tasks)]
    tasks = [(k, t, False, False) for k, t in enumerate(texts)]
    with WorkerPool(1) as pool:
        results = list(pool.results(iter(tasks)))
    assert sorted(r[0] for r in results) == list(range(n_tasks))
    # the ids decode to each batch's own tokens (tables are per process: rebuild them)
    tables: dict[int, list] = {}
    for _, pid, start, new, *_ in sorted(results, key=lambda r: r[2]):
        table = tables.setdefault(pid, [])
        assert len(table) == start
        table.extend(new)
    want = Tokenizer()
    for index, pid, _, _, ids, lengths, bad in results:
        assert bad == [] and lengths.tolist() == [len(ids)]
        assert [tables[pid][i] for i in ids.tolist()] == want.tokenize(texts[index][0])


def test_the_cli_stops_its_early_workers_on_an_error(tmp_path, capsys):
    """The CLI starts its worker processes before it opens SRC; a run refused afterwards
    leaves none behind."""
    from fastulm.tokenize import main

    before = set(multiprocessing.active_children())  # earlier tests' pools may still exit
    code = main([str(tmp_path / "missing"), str(tmp_path / "out"), "--workers", "3", "--quiet"])
    assert code == 1
    assert "missing" in capsys.readouterr().err
    left = set(multiprocessing.active_children()) - before
    for child in left:  # killed, so gone at once; one that waited for work would hang here
        child.join(10)
    assert [c.exitcode for c in left if c.exitcode is None] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []
