"""``python -m fastulm.train lm|clas CORPUS RUN_DIR ...``: the walkthrough's two stages.

    python -m fastulm.train lm CORPUS RUN_DIR [--pretrained WGTS VOCAB] [--preset paper|cpu|tiny]
    python -m fastulm.train clas CORPUS RUN_DIR --encoder LM_RUN_DIR_OR_PATH [--preset ...]

The LM stage trains one epoch with the body frozen, then the unfrozen epochs, and ends with
``RUN_DIR/encoder.safetensors``; the classifier stage loads that encoder and follows the
walkthrough's gradual unfreezing. Both write the run directory described in run_dir.py and
can be run under ``torchrun`` unchanged. An existing RUN_DIR is refused unless ``--resume``
continues it (from ``RUN_DIR/checkpoints/last.pt``, with the options in its
``train_args.json``) or ``--force`` replaces it. ``--time-limit`` stops cleanly (exit code
75) with a checkpoint, so a long run can be spread over several calls; Ctrl-C and SIGTERM
stop at the next step with a checkpoint too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

from fastulm.cli import HelpFormatter, parser

EXIT_TIME_LIMIT = 75  # EX_TEMPFAIL: stopped at --time-limit, resume to continue
CPU_WARN_S = 3600  # say how long a CPU run will take when it is longer than this


def _parser() -> argparse.ArgumentParser:
    p = parser(
        "python -m fastulm.train",
        "Fine-tune an AWD-LSTM language model (lm) or train a classifier (clas).",
    )
    sub = p.add_subparsers(dest="stage", required=True)
    for stage in ("lm", "clas"):
        s = sub.add_parser(
            stage,
            help="language-model stage" if stage == "lm" else "classifier stage",
            formatter_class=HelpFormatter,
            allow_abbrev=False,
        )
        s.add_argument("corpus", help="corpus folder written by python -m fastulm.tokenize")
        s.add_argument("run_dir", help="output folder (weights, logs, plots, checkpoints)")
        s.add_argument("--preset", default="paper", help="paper, cpu or tiny (default: paper)")
        s.add_argument("--bs", type=int, help="global batch size (preset's by default)")
        s.add_argument("--bptt", type=int, help="tokens per window / chunk")
        s.add_argument("--drop-mult", type=float, help="scales every dropout")
        s.add_argument("--emb-sz", type=int)
        s.add_argument("--n-hid", type=int)
        s.add_argument("--n-layers", type=int)
        s.add_argument(
            "--arch",
            choices=("lstm", "qrnn"),
            help="recurrent layers: lstm (AWD-LSTM, the default) or qrnn (fastai 1's QRNN "
            "layers: faster on a GPU, no pretrained weights)"
            + ("" if stage == "lm" else "; default: the --encoder's"),
        )
        s.add_argument("--lr", type=float, help="first stage's learning rate")
        s.add_argument("--wd", type=float, help="decoupled weight decay (default: 0.01)")
        s.add_argument("--clip", type=float, help="clip the gradient norm to this value")
        s.add_argument(
            "--mixed-precision",
            default="auto",
            choices=["auto", "bf16", "fp16", "fp32"],
            help="auto: bf16 (or fp16 + scaler) on a GPU, fp32 on a CPU; bf16 on a CPU with "
            "avx512_bf16/AMX trains ~1.5x faster",
        )
        s.add_argument("--grad-checkpoint", action="store_true", help="recompute activations")
        s.add_argument(
            "--max-memory",
            metavar="SIZE",
            help="memory budget (8GiB, 8GB, 512MiB): measure probe steps on the longest batch "
            "and train with the fastest batch size (at most --bs), --grad-checkpoint and "
            "--mixed-precision (when auto) that fit",
        )
        s.add_argument("--backwards", action="store_true", help="read every document reversed")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if present)")
        s.add_argument(
            "--resume",
            action="store_true",
            help="continue RUN_DIR from its last checkpoint, with the options it was started with",
        )
        s.add_argument(
            "--force",
            action="store_true",
            help="replace an earlier run in RUN_DIR (its files only)",
        )
        s.add_argument("--time-limit", type=float, help="minutes; stop with a checkpoint")
        s.add_argument(
            "--checkpoint-minutes", type=float, default=10.0, help="minutes between checkpoints"
        )
        s.add_argument("--lr-find", action="store_true", help="run lr_find first (plot + hint)")
        s.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
        s.add_argument(
            "--quiet", action="store_true", help="no progress bars (the epoch table stays)"
        )
        if stage == "lm":
            s.add_argument("--pretrained", nargs=2, metavar=("WEIGHTS", "VOCAB"))
            s.add_argument("--epochs", type=int, help="unfrozen epochs")
            s.add_argument(
                "--frozen-epochs",
                type=int,
                help="epochs of the first fit (body frozen when --pretrained weights are loaded)",
            )
            s.add_argument("--valid-pct", type=float, default=0.1, help="held-out documents")
            s.add_argument("--valid-split", help="validate on this split instead")
            s.add_argument("--splits", help="comma-separated splits to train on (default: all)")
            s.add_argument("--random-bptt", action="store_true", help="AWD-LSTM window jitter")
        else:
            s.add_argument(
                "--encoder",
                help="LM run dir or encoder path (without it the classifier starts from scratch)",
            )
            s.add_argument(
                "--threshold",
                type=float,
                default=0.5,
                help="multi-label corpora: a class is predicted above this probability",
            )
            s.add_argument("--max-len", type=int, help="tokens kept per document (tail)")
            s.add_argument("--final-epochs", type=int, help="epochs of the unfrozen stage")
            s.add_argument("--train-split", default="train")
            s.add_argument("--valid-split", help="default: valid if present, else test")
    return p


# Checked before any work: 0 would silently mean "the preset's value" (``args.bs or ...``) and
# a negative rate trains away from the data instead of failing.
_POSITIVE = (
    "threshold",
    *("bs", "bptt", "emb_sz", "n_hid", "n_layers", "max_len"),
    *("lr", "clip", "threads", "checkpoint_minutes"),
)
_NOT_NEGATIVE = ("drop_mult", "wd", "epochs", "frozen_epochs", "final_epochs", "time_limit")


def _check_numbers(args) -> None:
    rules = ((_POSITIVE, lambda v: v > 0, "positive"), (_NOT_NEGATIVE, lambda v: v >= 0, ">= 0"))
    for names, ok, must in rules:
        for name in names:
            value = getattr(args, name, None)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
            if value is not None and not ok(value):
                raise ValueError(f"--{name.replace('_', '-')} must be {must}, got {value}")
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed < 2**32:
        raise ValueError(f"--seed must be in [0, 2**32), got {seed}")
    if getattr(args, "device", None) is not None:
        from fastulm.devices import resolve_device

        resolve_device(args.device)  # "cuda" on a CPU machine: one line before any work
    if getattr(args, "max_memory", None) is not None:
        from fastulm.train.memory_plan import parse_size

        parse_size(args.max_memory)  # "8XB" is a one-line error before any work


def _stages(args, recipe):
    from fastulm.train.presets import Stage, gradual_unfreezing

    stages = list(recipe.stages)
    if args.stage == "lm":
        frozen = next((s for s in stages if s.freeze_to != 0), None)
        unfrozen = next(s for s in stages if s.freeze_to == 0)
        n_frozen = (
            args.frozen_epochs
            if args.frozen_epochs is not None
            else (frozen.epochs if frozen else 0)
        )
        lr = args.lr if args.lr is not None else (frozen.lr if frozen else 1e-2)
        # fastai freezes the body only when it loaded pretrained weights: from scratch, the
        # first fit trains everything (a random LSTM frozen for an epoch learns nothing)
        freeze = -1 if args.pretrained else 0
        out = [Stage(freeze, n_frozen, lr)] if n_frozen else []
        epochs = args.epochs if args.epochs is not None else unfrozen.epochs
        lr_unfrozen = unfrozen.lr if args.lr is None else args.lr / 10
        return [*out, Stage(0, epochs, lr_unfrozen)] if epochs else out
    final = args.final_epochs if args.final_epochs is not None else stages[-1].epochs
    if args.lr is None and args.final_epochs is None:
        return stages
    lr = args.lr if args.lr is not None else stages[0].lr
    return gradual_unfreezing(lr, final)


def run(args, stop=None) -> int:
    import torch

    from fastulm.train import distributed as ddp
    from fastulm.train.presets import get_preset
    from fastulm.train.run_dir import PreparedRun, prepare_run_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = ddp.init_from_env()
    preset = get_preset(args.preset)
    recipe = preset.lm if args.stage == "lm" else preset.clas
    # 0 epochs everywhere is allowed: it exports the model as built (e.g. pretrained weights
    # mapped onto this corpus's vocab)
    stages = [s for s in _stages(args, recipe) if s.epochs > 0]
    run_dir = Path(args.run_dir)
    prepared = PreparedRun(run_dir)
    if ctx.is_main:  # before any work: a refused or unwritable RUN_DIR costs nothing
        inputs = [args.corpus, *(getattr(args, "pretrained", None) or [])]
        if getattr(args, "encoder", None):
            _check_encoder(args.encoder)
            encoder = _encoder_path(args.encoder)
            inputs += [encoder.with_name(encoder.name + ext) for ext in (".safetensors", ".json")]
        prepared = prepare_run_dir(run_dir, force=args.force, resume=args.resume, sources=inputs)
        if prepared.note:
            print(prepared.note, file=sys.stderr)
    # the earlier run (--force) goes only when this one has progress, else comes back; a run
    # that failed before writing anything leaves no folder
    try:
        code = _train(args, stop, ctx, preset, recipe, stages, run_dir)
    except BaseException:
        prepared.settle(failed=True)
        raise
    prepared.settle(failed=False)
    return code


def _train(args, stop, ctx, preset, recipe, stages, run_dir: Path) -> int:
    import torch

    from fastulm.train.text_learners import language_model_learner, text_classifier_learner

    size = {k: getattr(args, k) or v for k, v in preset.model_kw().items()}
    size["arch"] = args.arch or _encoder_arch(args)
    common = dict(
        bs=args.bs or recipe.bs,
        bptt=args.bptt or recipe.bptt,
        drop_mult=args.drop_mult if args.drop_mult is not None else recipe.drop_mult,
        path=run_dir,
        seed=args.seed,
        backwards=args.backwards,
        grad_checkpoint=args.grad_checkpoint,
        wd=args.wd if args.wd is not None else preset.wd,
        moms=preset.moms,
        clip=args.clip,
        mixed_precision=args.mixed_precision,
        device=args.device,
        show_progress=not args.quiet,
        **size,
    )
    if args.stage == "lm":
        factory = language_model_learner
        extra = dict(
            valid_pct=args.valid_pct,
            valid_split=args.valid_split,
            splits=args.splits.split(",") if args.splits else None,
            pretrained=tuple(args.pretrained) if args.pretrained else None,
            random_bptt=args.random_bptt,
        )
    else:
        factory = text_classifier_learner
        extra = dict(
            max_len=args.max_len or recipe.max_len,
            train_split=args.train_split,
            valid_split=args.valid_split,
            threshold=args.threshold,
        )
    if args.max_memory is not None:
        common.update(_memory_plan(args, ctx, run_dir, {**common, **extra}))
    learn = factory(args.corpus, **extra, **common)
    if args.stage == "clas":
        _load_encoder(learn, args, ctx.is_main)
    learn.checkpoint_path = run_dir / "checkpoints" / "last.pt"
    learn.checkpoint_every_s = args.checkpoint_minutes * 60
    learn.time_limit_s = args.time_limit * 60 if args.time_limit is not None else None
    if stop is not None:
        learn.stop_requested = lambda: stop.requested
    if args.resume:
        if learn.checkpoint_path.is_file():
            learn.resume(learn.checkpoint_path)
        elif ctx.is_main:
            print(f"no checkpoint at {learn.checkpoint_path}: starting from the beginning")
    if ctx.is_main and not (args.resume and (run_dir / "train_args.json").is_file()):
        _write_settings(run_dir, args, stages, common)
    if ctx.is_main:
        _warn_if_slow(learn, stages, args)
    if ctx.is_main and not args.quiet:
        learn.show_batch(n=3)
    if stop is not None:
        stop.check()  # a Ctrl-C while the run was being set up: stop before any training
    t0 = time.monotonic()  # lr_find's sweep is part of the run's time
    if args.lr_find and not args.resume:
        learn.lr_find()
    for stage in stages:
        learn.freeze_to(stage.freeze_to)
        learn.fit_one_cycle(stage.epochs, stage.lr_arg())
    if args.stage == "lm":
        learn.save_encoder(run_dir.absolute() / "encoder")  # "." / "encoder" is a bare name
    learn.export(run_dir)
    if ctx.is_main:
        last = learn.history["epochs"][-1] if learn.history["epochs"] else {}
        acc = last.get("accuracy", float("nan"))
        print(f"done in {time.monotonic() - t0:.0f} s: valid accuracy {acc:.4f}; wrote {run_dir}")
    if ctx.active:  # every rank done before any tears down gloo (else it can SIGABRT at exit)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


def _memory_plan(args, ctx, run_dir: Path, kwargs: dict) -> dict:
    """--max-memory: the batch size, checkpointing and precision to build the learner with.

    Measured by probe steps before any training (memory_plan.py); a resumed run keeps the
    settings it started with (its checkpoint's loader position depends on the batch size).
    """
    keys = ("bs", "grad_checkpoint", "mixed_precision")
    saved = run_dir / "train_args.json"
    if args.resume and saved.is_file():
        settings = json.loads(saved.read_text(encoding="utf-8")).get("settings", {})
        if all(k in settings for k in keys):
            return {k: settings[k] for k in keys}
    from fastulm.train.memory_plan import plan_memory

    plan = plan_memory(args.corpus, args.stage, args.max_memory, **kwargs)
    if ctx.is_main:
        print(plan.describe())
    return plan.learner_kwargs()


def _warn_if_slow(learn, stages, args) -> None:
    """On a CPU, say before the first epoch how long the recipe will take if it is long."""
    if learn.device.type != "cpu" or not stages:
        return
    from fastulm.train import estimate

    dl = learn.train_dl
    tokens = len(dl) * dl.bs * dl.bptt if learn.kind == "lm" else len(dl.split.ids)
    epochs = sum(s.epochs for s in stages)
    seconds = estimate.training_seconds(
        learn.model, learn.kind, tokens * epochs, estimate.matmul_flops()
    )
    if seconds > CPU_WARN_S:
        print(
            f"warning: the {args.preset!r} preset on this CPU: {estimate.describe(seconds)} "
            f"of training ({epochs} epochs of {tokens:,} tokens). A GPU, or --preset cpu "
            "for minutes on a CPU; Ctrl-C stops with a checkpoint.",
            file=sys.stderr,
        )


def _load_encoder(learn, args, say: bool) -> None:
    """The LM's encoder into the classifier; another vocab is mapped onto the corpus's."""
    if args.encoder is None:
        if say and not args.resume:
            print(
                "note: no --encoder: the classifier trains from scratch, without a fine-tuned "
                "language model, and will be weaker (ULMFiT's gain comes from the LM)",
                file=sys.stderr,
            )
        return
    from fastulm.model.encoder_io import encoder_vocab

    path = _encoder_path(args.encoder)
    remap = False
    if path.suffix != ".pth" and path.with_name(path.name + ".json").is_file():
        saved = encoder_vocab(path)
        if saved != list(learn.vocab):
            remap = True
            known = set(saved)
            new = sum(t not in known for t in learn.vocab)
            if say:
                print(
                    f"note: the corpus's vocab differs from the encoder's: {new} of its "
                    f"{len(learn.vocab)} tokens are new to the LM and start from the mean "
                    f"embedding. To share the LM's vocab, tokenize with --vocab "
                    f"{path.with_name(path.name + '.json')}",
                    file=sys.stderr,
                )
    learn.load_encoder(path, remap_vocab=remap)


def _encoder_arch(args) -> str:
    """A classifier takes the layers of its --encoder unless --arch says otherwise."""
    if args.stage != "clas" or not getattr(args, "encoder", None):
        return "lstm"
    from fastulm.model.encoder_io import encoder_config

    path = _encoder_path(args.encoder)
    if path.suffix == ".pth" or not path.with_name(path.name + ".json").is_file():
        return "lstm"  # a fastai encoder: LSTM layers; a missing file is reported on load
    return encoder_config(path).arch


def _encoder_path(arg: str) -> Path:
    """``--encoder``: an LM run folder, or an encoder's path with or without its extension.
    Made absolute: a bare name is a path here, not one of the new run's ``models/``."""
    path = Path(arg).absolute()
    if path.is_dir():
        path = path / "encoder"
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path


def _check_encoder(arg: str) -> None:
    """Refuse a missing ``--encoder`` before any work, saying what was looked for."""
    path = _encoder_path(arg)
    if path.suffix == ".pth":
        wanted = [path]
    else:
        wanted = [path.with_name(path.name + ext) for ext in (".safetensors", ".json")]
    missing = [p for p in wanted if not p.is_file()]
    if missing:
        raise ValueError(
            f"--encoder {arg}: {missing[0]} not found (give an LM run folder, its "
            "encoder.safetensors, or a fastai encoder .pth)"
        )


# What --resume may change: how the run is carried out, not what it trains.
_RUN_CONTROL = frozenset(
    {"resume", "force", "time_limit", "checkpoint_minutes", "quiet", "threads", "device"}
    | {"corpus", "run_dir", "lr_find", "stage"}
)


def _write_settings(run_dir: Path, args, stages, common) -> None:
    from fastulm.files import write_text

    info = {
        "args": {k: v for k, v in vars(args).items() if k not in ("resume", "force")},
        "stage": args.stage,
        "stages": [dataclasses.asdict(s) for s in stages],
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in common.items()},
    }
    write_text(run_dir / "train_args.json", json.dumps(info, indent=1, default=str) + "\n")


def _resumed_args(args) -> argparse.Namespace:
    """``args`` with the training options the run was started with (its train_args.json):
    a resume that forgot ``--preset cpu`` would otherwise build another model. An option
    given now that differs from the run's is refused rather than silently dropped."""
    path = Path(args.run_dir) / "train_args.json"
    if not path.is_file():
        return args
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        saved = info["args"] if isinstance(info, dict) else None
    except (OSError, UnicodeDecodeError, ValueError, KeyError):
        saved = None
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: unreadable, so the run's options are unknown; cannot resume")
    if saved.get("stage") not in (None, args.stage):
        raise ValueError(f"{args.run_dir}: a {saved['stage']} run; resume it with that stage")
    defaults = vars(_parser().parse_args([args.stage, "CORPUS", "RUN"]))
    merged = vars(args).copy()
    for key, value in saved.items():
        if key in _RUN_CONTROL or key not in merged:
            continue
        given = merged[key]
        if given != defaults.get(key) and given != value:
            flag = "--" + key.replace("_", "-")
            raise ValueError(
                f"{flag} {given} differs from the run's {value} ({path}); --resume continues "
                f"with the run's own options: drop {flag}, or start a new run"
            )
        merged[key] = value
    return argparse.Namespace(**merged)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from fastulm.stop import StopRequest

    stop = StopRequest().install()
    try:
        return _main(args, stop)
    finally:
        stop.restore()


def _main(args, stop) -> int:
    from fastulm.data import DataError
    from fastulm.model.encoder_io import EncoderMismatchError
    from fastulm.model.pretrained import PretrainedFormatError
    from fastulm.train.checkpoint import CheckpointError
    from fastulm.train.learner import StopRequested, TimeLimitReached, TrainingError

    try:
        if args.force and args.resume:
            raise ValueError("--force and --resume exclude each other")
        if args.resume:
            args = _resumed_args(args)
        _check_numbers(args)
        return run(args, stop)
    except TimeLimitReached as err:
        print(f"stopped: {err}; rerun with --resume to continue", file=sys.stderr)
        return EXIT_TIME_LIMIT
    except StopRequested as err:
        advice = "; rerun with --resume to continue" if "checkpoint written" in str(err) else ""
        print(f"interrupted: {err}{advice}", file=sys.stderr)
        return stop.exit_code
    except (
        DataError,
        CheckpointError,
        EncoderMismatchError,
        PretrainedFormatError,
        TrainingError,
        KeyError,
        ValueError,
    ) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {msg}", file=sys.stderr)
        return 1
    except OSError as err:  # a full disk, a lost permission: name the file, keep what is saved
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(
            f"error: {where}{err.strerror or err}; files written before are kept", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        last = Path(args.run_dir) / "checkpoints" / "last.pt"
        if last.is_file():
            print(f"interrupted; rerun with --resume to continue from {last}", file=sys.stderr)
        else:
            print("interrupted before the first checkpoint; nothing to resume", file=sys.stderr)
        return stop.exit_code


if __name__ == "__main__":
    sys.exit(main())
