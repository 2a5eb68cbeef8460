"""The tokenizer worker processes: each owns a ``Tokenizer`` and returns, per batch, local
ids plus the table entries it added since its last batch (see pipeline.py); the parent is
one of the workers.

Kept apart from pipeline.py so that a worker imports the tokenizer and nothing of the
corpus writer (pyarrow, the numba counting kernels).
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np

from fastulm.data.sources import decode_text

_TOKENIZER = None
_SENT = 0


def default_tokenizer():
    from fastulm.text.tokenizer import Tokenizer

    return Tokenizer()


def _exit_with_parent(pdeathsig: bool) -> None:
    """A child leaves when its parent dies (kill -9, out of memory): it holds both ends of
    the pool's task pipe, so it would otherwise wait for a task for ever. Linux kills it at
    once (PR_SET_PDEATHSIG; it fires when the *thread* that started the child exits, so only
    for a pool made on the main thread); everywhere a thread also checks once a second
    whether the parent is gone, which covers a parent that died before the prctl, a pool
    made on another thread and systems without prctl."""
    parent = mp.parent_process()
    ppid = parent.pid if parent is not None else os.getppid()
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == ppid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="fastulm-parent-watch", daemon=True).start()


def _worker_init(factory: Callable, child: bool = False, pdeathsig: bool = False) -> None:
    global _TOKENIZER, _SENT
    if child:  # the parent handles Ctrl-C and SIGTERM and stops the pool itself
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _exit_with_parent(pdeathsig)
        # A child has nothing to flush once multiprocessing has closed its queues (which
        # happens before atexit runs); freeing its tables object by object at exit took
        # 0.2-0.4 s with the pool's memory still held. Leave as soon as the interpreter
        # starts to finish.
        atexit.register(os._exit, 0)
    _TOKENIZER, _SENT = factory(), 0


def _worker_run(task: tuple[int, list, bool, bool]):
    """Tokenize one batch; return local ids, doc lengths, new table entries, bad docs."""
    global _SENT
    index, items, from_file, is_path = task
    tok = _TOKENIZER
    texts, bad = [], []
    for j, data in enumerate(items):
        text, not_utf8 = decode_text(data, from_file, is_path)
        if not_utf8:
            bad.append(j)
        texts.append(text)
    if hasattr(tok, "encode_batch"):
        ids, offsets = tok.encode_batch(texts)
        lengths = np.diff(offsets).astype(np.int64)
    else:
        arrays = [tok.encode(t) for t in texts]
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        ids = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
    ids = np.ascontiguousarray(ids, dtype=np.int32)
    start, table = _SENT, tok.tokens
    new = table[start:]
    _SENT = len(table)
    return index, os.getpid(), start, new, ids, lengths, bad


def run_here(tasks: Iterator[tuple], factory: Callable | None = None) -> Iterator[tuple]:
    """Results of every task, tokenized in this process alone (one worker)."""
    _worker_init(factory or default_tokenizer)
    return map(_worker_run, tasks)


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _widen_pipes(pool) -> None:
    """1 MB pipes between the parent and the pool (Linux; 64 KB by default): a child then
    hands over a batch's ids (about 500 KB) at once instead of waiting, chunk by chunk, for
    the parent's result thread to get the GIL back from the parent's own tokenizing. Only
    a speed-up: skipped where the pool's pipes or the fcntl are not there."""
    try:
        import fcntl

        for conn in (pool._result_queue._reader, pool._call_queue._writer):
            fcntl.fcntl(conn.fileno(), 1031, 1 << 20)  # F_SETPIPE_SZ
    except (ImportError, AttributeError, OSError):
        pass


class WorkerPool:
    """``n_children`` tokenizer processes, plus the parent as one more worker.

    Start it as early as possible (the CLI does so before it imports the corpus writer):
    a child's start-up (Python, numba's cached kernels: about a second of CPU) then
    overlaps the parent's own. The children are spawned, not forked: by then the parent
    may run threads (numpy's BLAS, pyarrow's allocator), and a child forked from a process
    with threads can deadlock (Python 3.12 warns). A ProcessPoolExecutor notices a child
    that dies (killed, out of memory) and fails its batches, where a multiprocessing.Pool
    would wait for them for ever.
    """

    def __init__(self, n_children: int, factory: Callable | None = None):
        from concurrent.futures import ProcessPoolExecutor

        self.factory = factory or default_tokenizer
        self.n_children = n_children
        try:
            self._pool = ProcessPoolExecutor(
                n_children,
                mp.get_context("spawn"),
                initializer=_worker_init,
                initargs=(
                    self.factory,
                    True,
                    threading.current_thread() is threading.main_thread(),
                ),
            )
            for _ in range(n_children):  # one process is started per task while none is idle
                self._pool.submit(int)
        except OSError as err:  # its locks live in /dev/shm, which may be full
            if hasattr(self, "_pool"):
                self._pool.shutdown(wait=False, cancel_futures=True)
            n = f"{n_children} tokenizer process" + ("es" if n_children > 1 else "")
            why = err.strerror if err.errno else None  # glibc may leave errno 0 ("Error")
            raise OSError(
                f"cannot start {n} ({why or 'no room for its locks'}); try --workers 1"
            ) from None
        _widen_pipes(self._pool)
        self._procs = list(self._pool._processes.values())

    def results(self, tasks: Iterator[tuple]) -> Iterator[tuple]:
        """Results of every task, in no set order. The parent keeps each child four batches
        ahead and tokenizes the next batch itself while they work, so one core is not spent
        on passing half the data through pipes; when the tasks run out it takes back the
        batches no child has started, so it does not sit idle while a child works through
        a queue. A child that dies, or runs out of memory, is one ChildProcessError."""
        from concurrent.futures.process import BrokenProcessPool

        pending: deque = deque()
        tasks = iter(tasks)
        try:
            # the children's first batches before the parent's own tokenizer: a child
            # that is ready first (its start overlaps the parent's) starts at once
            for task in itertools.islice(tasks, 4 * self.n_children):
                pending.append((self._pool.submit(_worker_run, task), task))
            _worker_init(self.factory)
            for task in tasks:
                while pending and pending[0][0].done():
                    yield pending.popleft()[0].result()
                if len(pending) < 4 * self.n_children:
                    pending.append((self._pool.submit(_worker_run, task), task))
                else:
                    yield _worker_run(task)
            taken_back = [task for fut, task in reversed(pending) if fut.cancel()]
            for task in taken_back:
                yield _worker_run(task)
            for fut, _ in pending:
                if not fut.cancelled():
                    yield fut.result()
        except BrokenProcessPool:
            raise self._died() from None
        except MemoryError:
            raise ChildProcessError(
                "a tokenizer worker ran out of memory; nothing written"
            ) from None

    def close(self) -> None:
        """Every result is in: the children exit (at once, see _worker_init), and the pool's
        queues are freed, whose semaphores would otherwise be reported leaked if the process
        then left with os._exit."""
        self._pool.shutdown(wait=True)

    def stop(self) -> None:
        """Stop the children at once (an error or Ctrl-C in the parent)."""
        for p in self._procs:
            if p.is_alive():
                p.kill()
        for p in self._procs:
            p.join(5)
        # the children are gone, so this returns at once; it frees the pool's queues, whose
        # semaphores would be reported leaked if the process then left with os._exit
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.stop()

    def _died(self) -> ChildProcessError:
        """One line on the child that died (an OSError, so the CLI prints it as such)."""
        for p in self._procs:
            p.join(1)  # its exit code, once reaped
        # The pool's own thread may reap the child at the same moment: the loser of that
        # waitpid race sees no status until the winner has stored it, so look again a while.
        deadline = time.monotonic() + 5.0
        dead = [p for p in self._procs if p.exitcode not in (None, 0)]
        while not dead and time.monotonic() < deadline:
            time.sleep(0.05)
            dead = [p for p in self._procs if p.exitcode not in (None, 0)]
        how = "died"
        if dead:
            code = dead[0].exitcode
            how = f"(pid {dead[0].pid}) " + (
                f"was killed by {signal.Signals(-code).name}"
                + (" (out of memory?)" if code == -signal.SIGKILL else "")
                if code < 0
                else f"exited with status {code}"
            )
        return ChildProcessError(f"a tokenizer worker process {how}; nothing written")
