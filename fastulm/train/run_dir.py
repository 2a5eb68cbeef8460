"""The run directory: everything one training run leaves behind, and how to read it back.

```
RUN_DIR/
  config.json            kind (lm | clas), model config, label names, task (single_label |
                         multi_label, label_delim, threshold), training settings
  vocab.json             the corpus vocab (JSON list; index = token id)
  model.safetensors      final weights of the whole model (LM or classifier)
  encoder.safetensors    LM runs: the fine-tuned encoder for the classifier stage,
  encoder.json             with its vocab and config (fastulm.model.encoder_io)
  models/                learn.save(name): <name>.safetensors (+ <name>.opt.pt optimizer)
  checkpoints/last.pt    the resume point (model, optimizer, schedule position, RNG, loader)
  log.jsonl, log.csv     one row per epoch (epoch, train_loss, valid_loss, accuracy, ...)
  losses.png             train loss per step and validation loss per epoch
  lr_find.png            when lr_find ran
  predictions.csv        older runs: predict --file output (it now goes beside the input);
                         --force leaves it in place
```

Every file is written to a temporary name and renamed, so a killed run never leaves half a
file (``--resume`` removes the temporary files it left); predict and generate need only
config.json, vocab.json and model.safetensors, and read them with
``fastulm.run_reader.load_run`` (outside the trainer).

``prepare_run_dir`` guards the folder before any work: training into an earlier run needs
``--resume`` or ``--force``, and ``--force`` replaces only a folder that holds nothing but a
run's own files (anything else in it is the user's, and is never deleted). The earlier run
is not deleted up front: its files are moved aside, to ``.RUN_DIR.old-PID`` beside it, and
removed only once the new run has something to show (a checkpoint or its model); a run that
fails or is killed before that gets the earlier one back (on its next start, if killed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from fastulm.files import (
    WriteError,
    atomic_write,
    check_replaceable,
    lock_folder,
    named_path,
    unlock_folder,
)
from fastulm.run_reader import FORMAT
from fastulm.weights import save_weights

# Everything a run writes into its folder (see the layout above).
RUN_FILES = frozenset(
    {
        *("config.json", "vocab.json", "model.safetensors", "train_args.json"),
        *("encoder.safetensors", "encoder.json", "models", "checkpoints"),
        *("log.jsonl", "log.csv", "losses.png", "lr_find.png", "confusion.png"),
        "predictions.csv",
    }
)
MARKERS = ("config.json", "train_args.json")


def _is_leftover(name: str) -> bool:
    """A temporary file of an interrupted atomic write (``.<name>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


# What a run writes inside its sub-folders: the resume point, and learn.save's files.
SUB_FILES = {
    "checkpoints": lambda name: name == "last.pt",
    "models": lambda name: name.endswith((".safetensors", ".opt.pt")),
}


def not_a_run(path: str | Path) -> str | None:
    """What makes ``path`` something other than a run folder (None: it is one, holding a
    run's files and nothing else, in its sub-folders too)."""
    path = Path(path)
    other = _not_run_files(path)
    if other is not None:
        return other
    if not any((path / m).exists() for m in MARKERS):
        return "no config.json or train_args.json"
    return None


def _not_run_files(path: Path) -> str | None:
    """The first thing in ``path`` that a run does not write (None: only a run's files)."""
    names = sorted(p.name for p in path.iterdir())
    other = [n for n in names if n not in RUN_FILES and not _is_leftover(n)]
    if other:
        return f"it holds {other[0]!r}"
    for name in names:
        entry = path / name
        if name not in SUB_FILES and (entry.is_dir() and not entry.is_symlink()):
            return f"its {name} is a folder"
    for sub, ours in SUB_FILES.items():
        folder = path / sub
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            return f"its {sub} is not a folder"
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            plain = entry.is_file() and not entry.is_symlink()
            if not (plain and (ours(entry.name) or _is_leftover(entry.name))):
                return f"it holds {sub}/{entry.name!r}"
    return None


def _clear_run(run_dir: Path) -> None:
    """Remove a run's files (``not_a_run`` has found nothing else there). An old run's
    ``predictions.csv`` stays: it is the user's output, not the run's."""
    for entry in run_dir.iterdir():
        if entry.name == "predictions.csv":
            continue
        if entry.name in SUB_FILES and entry.is_dir():
            for inner in entry.iterdir():
                inner.unlink()
            entry.rmdir()
        else:
            entry.unlink()


def _has_progress(run_dir: Path) -> bool:
    """Whether a run has something worth more than the run it replaced: a resume point or
    its final model."""
    return (run_dir / "checkpoints" / "last.pt").is_file() or (
        run_dir / "model.safetensors"
    ).is_file()


def _move_entries(src: Path, dst: Path) -> None:
    """Move what ``src`` holds into ``dst``, entry by entry (each a rename); what ``dst``
    already has is left where it is."""
    for entry in sorted(src.iterdir()):
        if not (dst / entry.name).exists():
            os.replace(entry, dst / entry.name)


@dataclass
class PreparedRun:
    """What ``prepare_run_dir`` did; ``settle()`` when the run ends, however it ends."""

    run_dir: Path
    made: list[Path] = field(default_factory=list)
    earlier: Path | None = None  # the earlier run's files, moved aside by --force
    note: str | None = None  # for the user: why the earlier run could not be kept aside
    _lock: int | None = None

    def settle(self, failed: bool) -> None:
        """Drop the earlier run when the new one has progress, else put it back; when the
        run failed, remove the folders it made where it wrote nothing into them."""
        try:
            if self.earlier is not None:
                _settle_earlier(self.run_dir, self.earlier)
        finally:
            unlock_folder(self._lock)
            self._lock = None
        if failed:
            remove_if_empty(self.made)


def _settle_earlier(run_dir: Path, earlier: Path) -> None:
    if _has_progress(run_dir):
        shutil.rmtree(earlier, ignore_errors=True)
        return
    if run_dir.is_dir():
        if _not_run_files(run_dir) is not None:
            return  # something not the run's appeared meanwhile: leave both as they are
        _clear_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _move_entries(earlier, run_dir)
    with contextlib.suppress(OSError):
        earlier.rmdir()


def _set_aside(run_dir: Path) -> tuple[Path, int | None]:
    """Move an earlier run's files (all of them run files: checked) into a locked folder
    beside ``run_dir``; the folder itself stays (it may be the working directory)."""
    earlier = run_dir.parent / f".{run_dir.name}.old-{os.getpid()}"
    earlier.mkdir()
    lock = lock_folder(earlier)
    # what shows progress goes first: killed midway, the rest reads as a run that got nowhere
    first = ("model.safetensors", "checkpoints")
    try:
        for entry in sorted(run_dir.iterdir(), key=lambda e: (e.name not in first, e.name)):
            if entry.name != "predictions.csv":  # the user's output stays where it is
                os.replace(entry, earlier / entry.name)
    except OSError:  # another file system (RUN_DIR a mount point): everything back
        _move_entries(earlier, run_dir)
        earlier.rmdir()
        unlock_folder(lock)
        raise
    return earlier, lock


def _recover_earlier(run_dir: Path) -> None:
    """What a killed ``--force`` run left beside ``run_dir``: an earlier run set aside that
    no live run holds locked. It is put back when the killed run got nowhere, else removed."""
    prefix = f".{run_dir.name}.old-"
    try:
        aside = sorted(p for p in run_dir.parent.iterdir() if p.name.startswith(prefix))
    except OSError:
        return
    for earlier in aside:
        if not earlier.is_dir() or earlier.is_symlink() or _not_run_files(earlier) is not None:
            continue  # not a run fastulm set aside: the user's
        held = lock_folder(earlier)
        if held is None:
            continue  # a live run's
        try:
            _settle_earlier(run_dir, earlier)
        finally:
            unlock_folder(held)


def prepare_run_dir(
    run_dir: str | Path, *, force: bool = False, resume: bool = False, sources=()
) -> PreparedRun:
    """Make ``run_dir`` ready for a training run, or raise ``WriteError`` saying why not.

    Refuses an earlier run unless ``resume`` (continue it) or ``force`` (replace it: its
    files are set aside until the new run has progress), anything that is not a run folder,
    a folder that is or holds one of the run's inputs (``sources``: the corpus, the encoder,
    pretrained weights), and a place that cannot be written: a probe file is created and
    removed, so a read-only or missing disk fails now, not after an epoch."""
    run_dir = named_path(run_dir)  # its earlier run is set aside beside it, by name
    if run_dir.parent.is_dir():
        _recover_earlier(run_dir)
    prepared = PreparedRun(run_dir)
    if run_dir.exists() and not resume:
        check_replaceable(
            run_dir, force=force, foreign=not_a_run, what="run directory", sources=sources
        )
        if force and run_dir.is_dir() and any(run_dir.iterdir()):
            try:
                prepared.earlier, prepared._lock = _set_aside(run_dir)
            except OSError as err:  # a read-only parent, RUN_DIR a mount point: clear it
                prepared.note = (
                    f"note: cannot set the earlier run aside beside {run_dir} "
                    f"({err.strerror or err}); it is cleared"
                )
                _clear_run(run_dir)
    elif run_dir.exists() and not run_dir.is_dir():
        raise WriteError(f"{run_dir}: exists and is not a folder")
    elif resume and run_dir.is_dir() and any(run_dir.iterdir()):
        if not_a_run(run_dir):
            raise WriteError(f"{run_dir}: is not a fastulm run directory; nothing to resume")
        _remove_leftovers(run_dir)
    made = [p for p in (*reversed(run_dir.parents), run_dir) if not p.exists()]
    if not (run_dir / "checkpoints").exists():
        made.append(run_dir / "checkpoints")
    prepared.made = made
    try:
        for folder in (run_dir, run_dir / "checkpoints"):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe.", suffix=".tmp")
                os.close(fd)
                os.unlink(probe)
            except OSError as err:
                raise WriteError(
                    f"{folder}: cannot write the run here ({err.strerror or err})"
                ) from None
    except BaseException:
        prepared.settle(failed=True)
        raise
    return prepared


def _remove_leftovers(run_dir: Path) -> None:
    """The temporary files of writes a killed run never finished (a checkpoint's is as
    large as the checkpoint): nothing reads them, and no one else removes them."""
    for folder in (run_dir, *(run_dir / sub for sub in SUB_FILES)):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if _is_leftover(entry.name) and entry.is_file() and not entry.is_symlink():
                with contextlib.suppress(OSError):
                    entry.unlink()


def remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders a failed run made, deepest first, where they are still empty
    (``rmdir`` refuses a folder with anything in it)."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def write_run(
    run_dir: str | Path,
    model: nn.Module,
    vocab: list[str],
    label_names: list[str] | None,
    settings: dict[str, Any],
) -> None:
    run_dir = Path(run_dir)
    model = getattr(model, "module", model)
    config = {
        "format": FORMAT,
        "kind": settings.get("kind", "lm"),
        "model": model.config.to_dict(),
        "n_classes": None,
        "label_names": list(label_names or []),
        # how predictions are read off the head: one softmax (single_label) or one sigmoid
        # per class over a threshold (multi_label, labels joined by label_delim)
        "task": settings.get("task", "single_label"),
        "label_delim": settings.get("label_delim"),
        "threshold": settings.get("threshold", 0.5),
        "settings": settings,
    }
    if config["kind"] == "clas":
        config["n_classes"] = _n_classes(model)
    text = json.dumps(vocab, ensure_ascii=False) + "\n"
    atomic_write(run_dir / "vocab.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    save_weights(model, run_dir / "model.safetensors")
    body = json.dumps(config, indent=1) + "\n"
    atomic_write(run_dir / "config.json", lambda tmp: Path(tmp).write_text(body))


def _n_classes(model: nn.Module) -> int:
    last = [m for m in model.head.modules() if isinstance(m, nn.Linear)][-1]
    return last.out_features
