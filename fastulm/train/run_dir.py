"""The run directory: everything one training run leaves behind, and how to read it back.

```
RUN_DIR/
  config.json            kind (lm | clas), model config, label names, training settings
  vocab.json             the corpus vocab (JSON list; index = token id)
  model.safetensors      final weights of the whole model (LM or classifier)
  encoder.safetensors    LM runs: the fine-tuned encoder for the classifier stage,
  encoder.json             with its vocab and config (fastulm.model.encoder_io)
  models/                learn.save(name): <name>.safetensors (+ <name>.opt.pt optimizer)
  checkpoints/last.pt    the resume point (model, optimizer, schedule position, RNG, loader)
  log.jsonl, log.csv     one row per epoch (epoch, train_loss, valid_loss, accuracy, ...)
  losses.png             train loss per step and validation loss per epoch
  lr_find.png            when lr_find ran
  predictions.csv        predict --file output (or where --out says)
```

Every file is written to a temporary name and renamed, so a killed run never leaves half a
file; predict and generate need only config.json, vocab.json and model.safetensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from fastulm.files import atomic_write
from fastulm.train.checkpoint import CheckpointError, load_weights, save_weights

FORMAT = "fastulm-run-1"


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
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: not a fastulm run config")
    model_cfg = AWDLSTMConfig.from_dict(config["model"])
    if config["kind"] == "clas":
        model = get_classifier(len(vocab), config["n_classes"], model_cfg)
    else:
        model = get_language_model(len(vocab), model_cfg)
    load_weights(model, run_dir / "model.safetensors")
    model.to(device).eval()
    return Run(config["kind"], model, vocab, config.get("label_names", []), config)
