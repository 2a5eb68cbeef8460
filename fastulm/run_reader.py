"""Reading a run directory back: the trained model, its vocab and its config.

The layout is described (and written) in fastulm/train/run_dir.py; this reader lives outside
the trainer so that predict, generate and export never import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

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
    try:
        config = json.loads(cfg_path.read_text())
        vocab = json.loads((run_dir / "vocab.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{run_dir}: unreadable run files ({err})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: not a fastulm run config")
    kind, n_classes = config.get("kind"), config.get("n_classes")
    if kind not in ("lm", "clas") or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{cfg_path}: damaged (kind or model missing)")
    if kind == "clas" and not (isinstance(n_classes, int) and n_classes >= 2):
        raise CheckpointError(f"{cfg_path}: damaged (n_classes {n_classes!r})")
    if not (isinstance(vocab, list) and vocab and all(isinstance(t, str) for t in vocab)):
        raise CheckpointError(f"{run_dir / 'vocab.json'}: damaged (not a list of tokens)")
    try:
        model_cfg = AWDLSTMConfig.from_dict(config["model"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{cfg_path}: damaged model config ({err})") from None
    if kind == "clas":
        model = get_classifier(len(vocab), n_classes, model_cfg)
    else:
        model = get_language_model(len(vocab), model_cfg)
    load_weights(model, run_dir / "model.safetensors")
    model.to(device).eval()
    return Run(kind, model, vocab, config.get("label_names") or [], config)
