"""The training loop: one-cycle fitting of a language model or a classifier.

Read ``fit_one_cycle`` → ``_fit`` → ``_train_epoch`` → ``_step`` top to bottom: that is the
whole loop. What fastai spreads over callbacks is written inline here: the hidden-state reset
(ModelResetter), AR/TAR (RNNRegularizer), the one-cycle schedule (ParamScheduler), mixed
precision, gradient clipping, metrics and logging. Two explicit hook lists, ``after_step``
and ``after_epoch``, take ``fn(learner)`` for anything else.

Resuming works by replaying: a script (or the CLI) makes the same calls again — ``freeze``,
``fit_one_cycle``, ``unfreeze``, ... — after ``resume(path)``. Fits that had finished are
skipped, the interrupted one restores model, optimizer, schedule position, random generators,
loader position and hidden state from the checkpoint and continues exactly where it stopped.

The model contract (see fastulm.model): a language model has ``loss(x, y)`` returning
``loss, n_correct, n_tokens, raw, dropped``; a classifier's ``forward(x)`` returns
``logits, raw, dropped``; both have ``layer_groups()`` and ``reset()``.

A classifier's ``task`` is ``single_label`` (softmax and cross-entropy; metrics accuracy and
macro-F1, and the validation confusion matrix) or ``multi_label`` (one sigmoid per class,
binary cross-entropy on multi-hot targets; metrics accuracy over thresholded labels, micro-
and macro-F1), as fastai's CrossEntropyLossFlat / BCEWithLogitsLossFlat and accuracy_multi.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fastulm.files import atomic_write
from fastulm.kernels.dispatch import acc_dtype
from fastulm.train import checkpoint as ckpt
from fastulm.train import distributed as ddp
from fastulm.train.carried import carried_state, restore_carried_state
from fastulm.train.optimizer import (
    LR,
    complete_groups,
    freeze_to,
    lr_range,
    make_optimizer,
    set_hypers,
    set_weight_decay,
)
from fastulm.train.regularizer import ar_tar
from fastulm.train.schedule import OneCycle, normalize_moms


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, out of memory): the message says what to do."""


class TimeLimitReached(Exception):
    """The run stopped at its time limit after writing a checkpoint; resume to continue."""


class StopRequested(Exception):
    """Training stopped at a step boundary on request (Ctrl-C, SIGTERM); the message says
    whether a checkpoint was written."""


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """F1 = 2 TP / (2 TP + FP + FN); 0 where a class was neither predicted nor present
    (sklearn's zero_division=0)."""
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(denom))


class Precision:
    """Mixed precision: bf16 autocast where the GPU has it, else fp16 with a gradient scaler.

    ``mode`` is ``auto`` (bf16/fp16 on CUDA, off on CPU), ``bf16``, ``fp16`` or ``fp32``.
    On a CPU ``bf16`` is worth asking for where it is native (avx512_bf16, AMX): oneDNN's bf16
    LSTM and matmuls are 1.7-4x faster there than fp32. Whether the LSTM really runs in bf16
    is tried once on a tiny input: where it cannot (a GPU whose cuDNN has no bf16 LSTM, a CPU
    without bf16), training falls back -- to fp16 with a scaler on a GPU, to fp32 on a CPU --
    and says so, instead of failing inside the first step.
    """

    def __init__(self, mode: str, device: torch.device, lstm_sizes: tuple[int, int] = (8, 8)):
        if mode not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"mixed precision must be auto, bf16, fp16 or fp32, not {mode!r}")
        if mode == "auto":
            if device.type == "cuda":
                mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                mode = "fp32"
        if mode == "bf16" and not bf16_lstm_works(device, lstm_sizes):
            mode = "fp16" if device.type == "cuda" else "fp32"
            print(
                f"note: the LSTM cannot run in bf16 on this {device.type} device; "
                f"training in {mode}" + (" with a gradient scaler" if mode == "fp16" else ""),
                file=sys.stderr,
            )
        self.mode = mode
        self.device_type = device.type
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def bf16_lstm_works(device: torch.device, sizes: tuple[int, int] = (8, 8)) -> bool:
    """Does an LSTM of ``sizes`` (input, hidden) run forward and backward in bf16 on
    ``device``, with finite results? (cuDNN picks kernels by size: probe the model's.)"""
    return _bf16_lstm_works(str(device), tuple(sizes))


@functools.cache
def _bf16_lstm_works(device: str, sizes: tuple[int, int]) -> bool:
    # fixed inputs and weights: the probe must not draw from the random generators that
    # training's dropout masks come from
    n_in, n_hid = sizes
    x = torch.linspace(-1, 1, 2 * 3 * n_in, device=device).view(2, 3, n_in).requires_grad_()
    h = torch.zeros(1, 2, n_hid, device=device)
    shapes = ((4 * n_hid, n_in), (4 * n_hid, n_hid), (4 * n_hid,), (4 * n_hid,))
    w = [torch.full(s, 0.01, device=device) for s in shapes]
    try:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            out = torch.lstm(x, (h, h), w, True, 1, 0.0, True, False, True)[0]
        out.float().sum().backward()
    except RuntimeError:
        return False
    finite = bool(out.isfinite().all()) and bool(x.grad.isfinite().all())
    return out.dtype == torch.bfloat16 and finite


def _as_dict(out: Any) -> dict[str, Any]:
    """Model outputs are dataclasses or named tuples; read their fields by name."""
    if isinstance(out, dict):
        return out
    if hasattr(out, "_asdict"):
        return out._asdict()
    return vars(out)


class Learner:
    """A model, its train/valid loaders and everything needed to fit it.

    ``kind`` is ``"lm"`` (next-token loss, metrics accuracy and perplexity) or ``"clas"``
    (cross-entropy on labels, metric accuracy). ``path`` is the run directory: weights go to
    ``path/models``, logs and plots to ``path``.
    """

    def __init__(
        self,
        model: nn.Module,
        train_dl,
        valid_dl,
        kind: str = "lm",
        path: str | Path = ".",
        vocab: Sequence[str] | None = None,
        label_names: Sequence[str] | None = None,
        lr: float = 1e-3,
        wd: float = 0.01,
        moms: Sequence[float] = (0.95, 0.85, 0.95),
        alpha: float = 2.0,
        beta: float = 1.0,
        clip: float | None = None,
        mixed_precision: str = "auto",
        device: torch.device | str | None = None,
        layer_groups: list[list[nn.Parameter]] | None = None,
        show_progress: bool = True,
        show_table: bool = True,
        sqr_mom: float = 0.99,
        eps: float = 1e-5,
        task: str = "single_label",
        threshold: float = 0.5,
    ):
        if kind not in ("lm", "clas"):
            raise ValueError(f"kind must be 'lm' or 'clas', not {kind!r}")
        if task not in ("single_label", "multi_label"):
            raise ValueError(f"task must be 'single_label' or 'multi_label', not {task!r}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        self.task, self.threshold = task, threshold
        self.dist = ddp.current()
        self.device = torch.device(device) if device is not None else ddp.default_device(self.dist)
        self.model = model.to(self.device)
        if self.dist.active:  # every rank starts from rank 0's weights
            ddp.broadcast_state(self.model)
        self.train_dl, self.valid_dl = train_dl, valid_dl
        self.kind, self.path = kind, Path(path)
        self.vocab = list(vocab) if vocab is not None else None
        self.label_names = list(label_names) if label_names is not None else None
        self.lr, self.wd, self.moms = lr, wd, normalize_moms(moms)
        self.alpha, self.beta, self.clip = alpha, beta, clip
        config = getattr(self.model, "config", None)
        sizes = (config.emb_sz, config.n_hid) if config is not None else (8, 8)
        self.precision = Precision(mixed_precision, self.device, sizes)
        self.show_progress = show_progress and self.dist.is_main  # the bars
        self.show_table = show_table and self.dist.is_main  # the per-epoch table
        groups = layer_groups if layer_groups is not None else self._model_groups()
        self.layer_groups = complete_groups(self.model, groups)
        self.opt = make_optimizer(self.model, self.layer_groups, wd=wd, sqr_mom=sqr_mom, eps=eps)
        self.after_step: list[Callable[[Learner], None]] = []
        self.after_epoch: list[Callable[[Learner], None]] = []
        self.history: dict[str, list] = {"epochs": [], "steps": [], "valid": []}
        self.fit_count = 0
        self.checkpoint_path: Path | None = None
        self.checkpoint_every_s: float | None = None
        self.time_limit_s: float | None = None
        # asked at step boundaries: True stops training with a checkpoint (the CLI's Ctrl-C)
        self.stop_requested: Callable[[], bool] | None = None
        self._resume: dict[str, Any] | None = None
        self._started = time.monotonic()
        # where the current fit stands (read by hooks and checkpoints)
        self.fit_id = self.epoch = self.step_in_epoch = self.n_epoch = 0
        self._smooth = [0.0, 0]  # fastai's debiased moving average of the train loss
        self._skipped = 0
        self.confusion: torch.Tensor | None = None  # last validation's [true, predicted] counts
        self.valid_f1: dict[str, float] = {}  # last validation's F1 scores (classifiers)

    # ------------------------------------------------------------------ layer groups
    def _model_groups(self) -> list[list[nn.Parameter]]:
        if hasattr(self.model, "layer_groups"):
            return [list(g) for g in self.model.layer_groups()]
        return [list(self.model.parameters())]

    def freeze_to(self, n: int) -> None:
        """Train layer groups ``[n:]`` only; like fastai this also clears the optimizer state."""
        freeze_to(self.model, self.layer_groups, n)
        self.opt.state.clear()

    def freeze(self) -> None:
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        self.freeze_to(0)

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for g in self.layer_groups for p in g]

    # ------------------------------------------------------------------ fitting
    def fit_one_cycle(
        self,
        n_epoch: int,
        lr_max: LR | None = None,
        div: float = 25.0,
        div_final: float = 1e5,
        pct_start: float = 0.25,
        moms: Sequence[float] | None = None,
        wd: float | None = None,
    ) -> list[dict]:
        """Fit ``n_epoch`` epochs with fastai's one-cycle policy; returns this fit's table rows."""
        fit_id = self.fit_count
        self.fit_count += 1
        resume = self._resume
        if resume is not None and fit_id < resume["fit"]:
            return []  # finished before the interruption; its rows are in the restored history
        if wd is not None:
            set_weight_decay(self.opt, wd)
        lrs = lr_range(self.lr if lr_max is None else lr_max, len(self.layer_groups))
        n_iter = len(self.train_dl)
        if n_iter == 0:
            raise TrainingError("the training loader is empty: not enough tokens for one batch")
        sched = OneCycle(
            lrs, n_epoch * n_iter, pct_start, div, div_final, normalize_moms(moms or self.moms)
        )
        start_epoch = start_step = 0
        if resume is not None and fit_id == resume["fit"]:
            self._restore(resume)
            start_epoch, start_step = resume["epoch"], resume["step"]
            self._resume = None
        rows_before = len(self.history["epochs"])
        try:
            self._fit(n_epoch, sched, fit_id, start_epoch, start_step)
        except torch.cuda.OutOfMemoryError:
            raise TrainingError(self._oom_message()) from None
        finally:
            self._reset_model()
        return self.history["epochs"][rows_before:]

    def _fit(self, n_epoch: int, sched: OneCycle, fit_id: int, start_epoch: int, start_step: int):
        self.n_epoch = n_epoch
        self.fit_id = fit_id
        self._last_ckpt = time.monotonic()
        if self.show_table and start_epoch < n_epoch:
            print(self._table_header())
        if start_epoch == 0 and start_step == 0:
            self._smooth = [0.0, 0]  # one average per fit, as fastai's Recorder
        for epoch in range(start_epoch, n_epoch):
            self.epoch = epoch
            t0 = time.monotonic()
            resuming = epoch == start_epoch and start_step > 0
            if not resuming:
                self.train_dl.set_epoch(self._epoch_seed(fit_id, epoch))
                self._skipped = 0
                self._reset_model()
            self._train_epoch(sched, epoch, start_step if resuming else 0)
            valid_loss, accuracy = self.validate()
            row = {"fit": fit_id, "epoch": epoch, "train_loss": self.smooth_loss}
            row["valid_loss"], row["accuracy"] = valid_loss, accuracy
            if self.kind == "lm":
                row["perplexity"] = math.exp(min(valid_loss, 50.0))
            row.update(self.valid_f1)
            row["time"] = time.monotonic() - t0
            if self._skipped:
                row["skipped_steps"] = self._skipped
            self.history["epochs"].append(row)
            self.history["valid"].append([len(self.history["steps"]), valid_loss])
            if self.show_table:
                print(self._table_row(row))
            self.epoch, self.step_in_epoch = epoch + 1, 0
            self._write_logs()
            for hook in self.after_epoch:
                hook(self)
            if self.checkpoint_path is not None:
                self.save_checkpoint()
            if self._stop_agreed():
                raise StopRequested(self._stop_message(saved=self.checkpoint_path is not None))

    def _epoch_seed(self, fit_id: int, epoch: int) -> int:
        # every (fit, epoch) pair shuffles differently, and identically after a resume
        return fit_id * 10_000 + epoch

    def _train_epoch(self, sched: OneCycle, epoch: int, start_step: int) -> None:
        n_iter = len(self.train_dl)
        self.model.train()
        bar = tqdm(
            total=n_iter,
            initial=start_step,
            desc=f"epoch {epoch + 1}/{self.n_epoch}",
            disable=not self.show_progress,
            leave=False,
            dynamic_ncols=True,
        )
        sync_every = 1 if self.device.type == "cpu" else 8
        pending: list[torch.Tensor] = []
        step = start_step
        for x, y in self.train_dl:
            global_step = epoch * n_iter + step
            lrs, mom = sched.lrs(global_step), sched.mom(global_step)
            pending.append(self._step(x, y, lrs, mom))
            step += 1
            self.step_in_epoch = step
            flushed = len(pending) >= sync_every or step == n_iter
            if flushed:
                self._record_losses(pending, lrs)
                pending = []
                bar.set_postfix(loss=f"{self.smooth_loss:.4f}", refresh=False)
            bar.update(1)
            for hook in self.after_step:
                hook(self)
            # checkpoints only where every loss so far is recorded, so a resume continues
            # the same smoothed loss and history
            if flushed and step < n_iter:
                if self._stop_agreed():
                    bar.close()
                    self._stop_now()
                self._maybe_checkpoint()
        bar.close()

    def _stop_agreed(self) -> bool:
        """Has a stop been asked for (on any rank: all ranks must stop at the same step)?"""
        local = bool(self.stop_requested is not None and self.stop_requested())
        if not self.dist.active:
            return local
        flag = torch.tensor([float(local)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _stop_now(self) -> None:
        saved = self.checkpoint_path is not None
        if saved:
            self.save_checkpoint()
        raise StopRequested(self._stop_message(saved))

    def _stop_message(self, saved: bool) -> str:
        where = f"stopped at epoch {self.epoch + 1}, step {self.step_in_epoch}"
        if saved:
            return f"{where}; checkpoint written to {self.checkpoint_path}"
        return f"{where}; no checkpoint path set, nothing saved"

    def _step(self, x: torch.Tensor, y: torch.Tensor, lrs: list[float], mom: float):
        """One optimizer step; returns the batch's (detached) loss without AR/TAR."""
        set_hypers(self.opt, lrs, mom)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with self.precision.autocast():
            out = self._forward(x, y)
            total = out["loss"]
            if self.alpha or self.beta:
                total = total + ar_tar(out["raw"], out["dropped"], self.alpha, self.beta)
        scaler = self.precision.scaler
        (scaler.scale(total) if scaler else total).backward()
        if self.dist.active:
            ddp.all_reduce_mean_grads(self.params, self.dist.world_size)
        if self.clip:
            if scaler:
                scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_([p for p in self.params if p.grad is not None], self.clip)
        if scaler:
            scale = scaler.get_scale()
            scaler.step(self.opt)
            scaler.update()
            if scaler.get_scale() < scale:
                self._skipped += 1
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return out["loss"].detach()

    def _forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """loss (mean, fp32), n_correct, n (items scored), raw and dropped encoder outputs."""
        if self.kind == "lm":
            out = _as_dict(self.model.loss(x, y))
            out["n"] = out.get("n_tokens", y.numel())
            return out
        out = _as_dict(self.model(x))
        logits = out["logits"]
        logits = logits.to(acc_dtype(logits.dtype))
        if self.task == "multi_label":
            target = y.to(logits.dtype)
            out["loss"] = F.binary_cross_entropy_with_logits(logits, target)
            out["pred"] = torch.sigmoid(logits) > self.threshold
            out["n_correct"] = (out["pred"] == target.bool()).sum()
        else:
            out["loss"] = F.cross_entropy(logits, y)
            out["pred"] = logits.argmax(-1)
            out["n_correct"] = (out["pred"] == y).sum()
        out["n"] = y.numel()
        return out

    def _record_losses(self, pending: list[torch.Tensor], lrs: list[float]) -> None:
        values = torch.stack(pending).float().cpu().tolist()
        for v in values:
            if not math.isfinite(v):
                if self.precision.scaler is not None:
                    continue  # the scaler skipped that step; counted in skipped_steps
                raise TrainingError(
                    f"loss became {v} at epoch {self.epoch + 1}, step {self.step_in_epoch}: "
                    f"training stopped (learning rate {max(lrs):.2e}). Lower the learning rate, "
                    "turn on gradient clipping (--clip), or resume from the last checkpoint."
                )
            avg, count = self._smooth
            self._smooth = [avg * 0.98 + v * 0.02, count + 1]
            self.history["steps"].append(v)
        if self.precision.scaler is not None and self._skipped >= 50:
            raise TrainingError(
                f"fp16 gradients overflowed in {self._skipped} steps of epoch {self.epoch + 1}: "
                "lower the learning rate or use --mixed-precision bf16/fp32."
            )

    @property
    def smooth_loss(self) -> float:
        avg, count = self._smooth
        return avg / (1 - 0.98**count) if count else float("nan")

    @torch.no_grad()
    def validate(self, dl=None) -> tuple[float, float]:
        """(mean loss, accuracy) over the validation loader, summed over all ranks."""
        dl = self.valid_dl if dl is None else dl
        self.model.eval()
        self._reset_model()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        counts = self._new_counts()
        for x, y in dl:
            x, y = x.to(self.device), y.to(self.device)
            with self.precision.autocast():
                out = self._forward(x, y)
            if counts is not None:
                counts += self._counts(out["pred"], y, counts.shape[-1])
            n = out["n"]
            sums += torch.stack(
                [
                    out["loss"].double() * n,
                    torch.as_tensor(out["n_correct"], device=self.device).double(),
                    torch.as_tensor(n, device=self.device).double(),
                ]
            )
        ddp.all_reduce_sum(sums)
        if counts is not None:
            ddp.all_reduce_sum(counts)
            self._set_f1(counts.cpu())
        self._reset_model()
        self.model.train()
        loss_sum, correct, n = sums.tolist()
        if n == 0:
            return float("nan"), float("nan")
        return loss_sum / n, correct / n

    # ------------------------------------------------------------------ classifier metrics
    @property
    def n_classes(self) -> int:
        head = getattr(self.model, "head", None)
        last = [m for m in head.modules() if isinstance(m, nn.Linear)][-1] if head else None
        return last.out_features if last is not None else 0

    def _new_counts(self) -> torch.Tensor | None:
        """Validation counts: the confusion matrix (single-label) or per-class
        true/false positives and false negatives (multi-label)."""
        if self.kind != "clas":
            return None
        c = self.n_classes
        shape = (c, c) if self.task == "single_label" else (3, c)
        return torch.zeros(shape, dtype=torch.float64, device=self.device)

    def _counts(self, pred: torch.Tensor, y: torch.Tensor, c: int) -> torch.Tensor:
        if self.task == "single_label":
            flat = torch.bincount(y * c + pred, minlength=c * c)
            return flat.view(c, c).double()
        truth = y.bool()
        return torch.stack(
            [(pred & truth).sum(0), (pred & ~truth).sum(0), (~pred & truth).sum(0)]
        ).double()

    def _set_f1(self, counts: torch.Tensor) -> None:
        if self.task == "single_label":
            self.confusion = counts
            tp = counts.diagonal()
            fp, fn = counts.sum(0) - tp, counts.sum(1) - tp
        else:
            tp, fp, fn = counts
        self.valid_f1 = {"macro_f1": float(_f1(tp, fp, fn).mean())}
        if self.task == "multi_label":
            self.valid_f1["micro_f1"] = float(_f1(tp.sum(), fp.sum(), fn.sum()))

    def _reset_model(self) -> None:
        if hasattr(self.model, "reset"):
            self.model.reset()

    def _oom_message(self) -> str:
        bs = getattr(self.train_dl, "bs", "?")
        bptt = getattr(self.train_dl, "bptt", "?")
        config = getattr(self.model, "config", None)
        ckpt_on = getattr(config, "checkpoint", False)
        return (
            f"CUDA out of memory (bs={bs}, bptt={bptt}, mixed precision {self.precision.mode}, "
            f"gradient checkpointing {'on' if ckpt_on else 'off'}): lower --bs or --bptt"
            + ("" if ckpt_on else ", or turn on --grad-checkpoint")
            + ("" if self.precision.mode != "fp32" else ", or use --mixed-precision auto")
        )

    # ------------------------------------------------------------------ logging
    def _metric_names(self) -> list[str]:
        names = ["train_loss", "valid_loss", "accuracy"]
        if self.kind == "lm":
            return [*names, "perplexity"]
        return (
            [*names, "macro_f1"]
            if self.task == "single_label"
            else [*names, "micro_f1", "macro_f1"]
        )

    def _table_header(self) -> str:
        return "  ".join(f"{n:>10}" for n in ["epoch", *self._metric_names(), "time"])

    def _table_row(self, row: dict) -> str:
        cells = [f"{row['epoch']:>10d}"] + [f"{row[n]:>10.6f}" for n in self._metric_names()]
        minutes, seconds = divmod(int(row["time"]), 60)
        return "  ".join([*cells, f"{minutes:>7d}:{seconds:02d}"])

    def _write_logs(self) -> None:
        if not self.dist.is_main:
            return
        from fastulm.train.plots import plot_losses  # matplotlib only when logs are written

        rows = self.history["epochs"]
        lines = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write(self.path / "log.jsonl", lambda tmp: Path(tmp).write_text(lines))
        keys = list(dict.fromkeys(k for r in rows for k in r))
        csv = ",".join(keys) + "\n"
        csv += "".join(",".join(str(r.get(k, "")) for k in keys) + "\n" for r in rows)
        atomic_write(self.path / "log.csv", lambda tmp: Path(tmp).write_text(csv))
        plot_losses(self.history, self.path / "losses.png")
        if self.confusion is not None:
            from fastulm.train.plots import plot_confusion

            names = self.label_names or [str(i) for i in range(len(self.confusion))]
            plot_confusion(self.confusion.numpy(), names, self.path / "confusion.png")

    # ------------------------------------------------------------------ checkpoints
    def _maybe_checkpoint(self) -> None:
        now = time.monotonic()
        if self.time_limit_s is not None and now - self._started > self.time_limit_s:
            if self.checkpoint_path is not None:
                self.save_checkpoint()
            raise TimeLimitReached(
                f"time limit reached at epoch {self.epoch + 1}, step {self.step_in_epoch}; "
                f"checkpoint written to {self.checkpoint_path}"
            )
        if (
            self.checkpoint_path is not None
            and self.checkpoint_every_s is not None
            and now - self._last_ckpt > self.checkpoint_every_s
        ):
            self.save_checkpoint()

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "format": "fastulm-checkpoint-1",
            "fit": self.fit_id,
            "epoch": self.epoch,
            "step": self.step_in_epoch,
            "model": self.model.state_dict(),
            "carried": carried_state(self.model),
            "opt": self.opt.state_dict(),
            "scaler": self.precision.scaler.state_dict() if self.precision.scaler else {},
            "loader": self.train_dl.state_dict() if self.step_in_epoch else {},
            "rng": self._gather_rng(),
            "smooth": list(self._smooth),
            "skipped": self._skipped,
            "history": self.history,
            "trainable": [p.requires_grad for p in self.params],
        }

    def save_checkpoint(self, path: str | Path | None = None) -> None:
        state = self.checkpoint_state()  # every rank takes part (RNG gather)
        path = Path(path) if path is not None else self.checkpoint_path
        if self.dist.is_main and path is not None:
            ckpt.save_state(state, path)
        self._last_ckpt = time.monotonic()

    def _gather_rng(self) -> list[dict]:
        state = ckpt.rng_state()
        if not self.dist.active:
            return [state]
        gathered: list[Any] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(gathered, state)
        return gathered

    def resume(self, path: str | Path) -> None:
        """Continue an interrupted run: replay the same calls and the checkpoint takes over."""
        state = ckpt.load_state(path, map_location=self.device)
        if state.get("format") != "fastulm-checkpoint-1":
            raise ckpt.CheckpointError(f"{path}: not a fastulm checkpoint")
        self._resume = state
        self.history = state["history"]

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            for p, trainable in zip(self.params, state["trainable"], strict=True):
                p.requires_grad_(trainable)
            self.opt.load_state_dict(state["opt"])
        except (RuntimeError, ValueError) as err:
            raise ckpt.CheckpointError(
                f"the checkpoint does not fit this model ({ckpt.error_summary(err)}); resume with the run's own "
                "options, or start again without --resume"
            ) from None
        if self.precision.scaler and state["scaler"]:
            self.precision.scaler.load_state_dict(state["scaler"])
        if state["step"]:
            self.train_dl.load_state_dict(state["loader"])
            restore_carried_state(self.model, state["carried"])
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
        self._smooth = list(state["smooth"])
        self._skipped = state["skipped"]
        self.epoch, self.step_in_epoch = state["epoch"], state["step"]

    # ------------------------------------------------------------------ weights
    def _model_file(self, name: str | Path, suffix: str) -> Path:
        path = Path(name)
        if not path.is_absolute() and path.parent == Path("."):
            path = self.path / "models" / path
        return path.with_name(path.name + suffix) if not path.name.endswith(suffix) else path

    def save(self, name: str | Path, with_opt: bool = True) -> Path:
        """Weights to ``models/<name>.safetensors`` (and the optimizer state beside them)."""
        path = self._model_file(name, ".safetensors")
        if self.dist.is_main:
            ckpt.save_weights(self.model, path)
            if with_opt:
                opt_path = path.with_name(path.name.removesuffix(".safetensors") + ".opt.pt")
                ckpt.save_state({"opt": self.opt.state_dict()}, opt_path)
        return path

    def load(self, name: str | Path, with_opt: bool = True) -> Learner:
        path = self._model_file(name, ".safetensors")
        ckpt.load_weights(self.model, path)
        opt_path = path.with_name(path.name.removesuffix(".safetensors") + ".opt.pt")
        if with_opt and opt_path.is_file():
            try:
                self.opt.load_state_dict(ckpt.load_state(opt_path, self.device)["opt"])
            except (ValueError, KeyError) as err:
                raise ckpt.CheckpointError(
                    f"{opt_path}: optimizer state does not fit ({err})"
                ) from None
        return self

    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, **kw):
        """Exponential learning-rate sweep (model restored afterwards); see lr_find.py."""
        from fastulm.train.lr_find import lr_find

        return lr_find(self, start_lr=start_lr, end_lr=end_lr, num_it=num_it, **kw)

    def show_batch(self, n: int = 4):
        if self.kind == "lm":
            return self.train_dl.show_batch(self.vocab, n=n)
        return self.train_dl.show_batch(self.vocab, self.label_names, n=n)
