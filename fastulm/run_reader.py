"""Reading a run directory back: the trained model, its vocab and its config.

The layout is described (and written) in fastulm/train/run_dir.py; this reader lives outside
the trainer so that predict, generate and export never import it. The files are checked
against each other before use (label_names against n_classes, vocab.json and n_classes
against the shapes in model.safetensors): a mismatch is one error naming the file at fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from fastulm.inference import vocab_problem
from fastulm.weights import CheckpointError, load_weights

FORMAT = "fastulm-run-1"


@dataclass
class Run:
    kind: str
    model: nn.Module
    vocab: list[str]
    label_names: list[str]
    config: dict[str, Any]


def load_run(run_dir: str | Path, device: str = "cpu") -> Run:
    """The trained model of a run directory, ready for predict/generate (eval mode)."""
    from fastulm.model import AWDLSTMConfig, get_classifier, get_language_model

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no config.json; train first)")
    config = _read_json(cfg_path)
    vocab = _read_json(run_dir / "vocab.json")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: not a fastulm run config")
    kind, n_classes = config.get("kind"), config.get("n_classes")
    if kind not in ("lm", "clas") or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{cfg_path}: damaged (kind or model missing)")
    if kind == "clas" and not (isinstance(n_classes, int) and n_classes >= 2):
        raise CheckpointError(f"{cfg_path}: damaged (n_classes {n_classes!r})")
    names = config.get("label_names") or []
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{cfg_path}: damaged (label_names is not a list of names)")
    if kind == "clas" and names and len(names) != n_classes:
        raise CheckpointError(
            f"{cfg_path}: damaged ({len(names)} label_names for {n_classes} classes)"
        )
    problem = vocab_problem(vocab)
    if problem:
        raise CheckpointError(f"{run_dir / 'vocab.json'}: damaged ({problem})")
    try:
        model_cfg = AWDLSTMConfig.from_dict(config["model"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{cfg_path}: damaged model config ({err})") from None
    if kind == "clas":
        model = get_classifier(len(vocab), n_classes, model_cfg)
    else:
        model = get_language_model(len(vocab), model_cfg)
    _check_sizes(model, run_dir, kind)
    load_weights(model, run_dir / "model.safetensors")
    model.to(device).eval()
    return Run(kind, model, vocab, names, config)


def _read_json(path: Path) -> Any:
    """A run's JSON file; a missing, cut-off or non-UTF-8 one is an error naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise CheckpointError(f"{path}: unreadable ({reason})") from None


def _check_sizes(model: nn.Module, run_dir: Path, kind: str) -> None:
    """The model was built from vocab.json and config.json: when its embedding or head
    differs from model.safetensors, name the file at fault, not a tensor's shape."""
    from safetensors import safe_open

    try:
        with safe_open(str(run_dir / "model.safetensors"), "pt") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception:  # missing or unreadable: load_weights says so
        return
    names = {m: n for n, m in model.named_modules()}
    rows = shapes.get(names[model.body.encoder] + ".weight", [None])[0]
    n_vocab = model.body.encoder.num_embeddings
    if rows is not None and rows != n_vocab:
        raise CheckpointError(
            f"{run_dir / 'vocab.json'}: damaged ({n_vocab} tokens for the {rows} "
            "embedding rows of model.safetensors)"
        )
    if kind == "clas":
        last = [m for m in model.head.modules() if isinstance(m, nn.Linear)][-1]
        outs = shapes.get(names[last] + ".weight", [None])[0]
        if outs is not None and outs != last.out_features:
            raise CheckpointError(
                f"{run_dir / 'config.json'}: damaged (n_classes {last.out_features}, but the "
                f"head of model.safetensors has {outs} outputs)"
            )
