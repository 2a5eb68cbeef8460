"""The AWD-LSTM configuration, with the reference's language-model and classifier defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# fastai 2.8.12 awd_lstm_lm_config / awd_lstm_clas_config (dropouts before drop_mult).
_LM_DROPS = dict(output_p=0.1, hidden_p=0.15, input_p=0.25, embed_p=0.02, weight_p=0.2)
_CLAS_DROPS = dict(output_p=0.4, hidden_p=0.3, input_p=0.4, embed_p=0.05, weight_p=0.5)
DROPOUT_FIELDS = ("hidden_p", "input_p", "embed_p", "weight_p", "output_p")
ARCHS = ("lstm", "qrnn")


@dataclass
class AWDLSTMConfig:
    """Sizes, dropouts and chunking of an AWD-LSTM model.

    The ``*_p`` fields are the dropouts after ``drop_mult`` scaling. ``head_ps`` (the
    classifier head's inner dropouts) are not scaled, as in the reference.
    """

    emb_sz: int = 400
    n_hid: int = 1152
    n_layers: int = 3
    pad_token: int = 1
    hidden_p: float = _LM_DROPS["hidden_p"]
    input_p: float = _LM_DROPS["input_p"]
    embed_p: float = _LM_DROPS["embed_p"]
    weight_p: float = _LM_DROPS["weight_p"]
    output_p: float = _LM_DROPS["output_p"]
    bptt: int = 72
    max_len: int | None = 72 * 20
    checkpoint: bool = False
    lin_ftrs: tuple[int, ...] = field(default=(50,))
    head_ps: tuple[float, ...] = field(default=(0.1,))
    arch: str = "lstm"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        # A probability of 1 divides by zero in the dropout scale (1 - p): NaNs, not an error.
        for name in DROPOUT_FIELDS:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name):g}")
        if not all(0.0 <= p < 1.0 for p in self.head_ps):
            raise ValueError(f"head_ps must each be in [0, 1), got {list(self.head_ps)}")
        for name in ("emb_sz", "n_hid", "n_layers", "bptt"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"max_len must be positive or None, got {self.max_len}")

    @classmethod
    def lm(cls, drop_mult: float = 1.0, **overrides: Any) -> AWDLSTMConfig:
        """fastai's language-model defaults; overrides are applied before scaling, as fastai does."""
        return cls(**{**_LM_DROPS, **overrides}).scaled(drop_mult)

    @classmethod
    def classifier(cls, drop_mult: float = 1.0, **overrides: Any) -> AWDLSTMConfig:
        """fastai's classifier defaults; overrides are applied before scaling, as fastai does."""
        return cls(**{**_CLAS_DROPS, **overrides}).scaled(drop_mult)

    def scaled(self, drop_mult: float) -> AWDLSTMConfig:
        """A copy with every encoder/output dropout multiplied by ``drop_mult``."""
        if drop_mult < 0:
            raise ValueError(f"drop_mult must not be negative, got {drop_mult:g}")
        if drop_mult == 1.0:
            return dataclasses.replace(self)
        scaled = {k: getattr(self, k) * drop_mult for k in DROPOUT_FIELDS}
        too_big = [f"{k} {v:g}" for k, v in scaled.items() if v >= 1.0]
        if too_big:
            raise ValueError(
                f"drop_mult {drop_mult:g} makes {', '.join(too_big)}: dropouts must stay below 1"
            )
        return dataclasses.replace(self, **scaled)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lin_ftrs"], d["head_ps"] = list(self.lin_ftrs), list(self.head_ps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AWDLSTMConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for k in ("lin_ftrs", "head_ps"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def resolve_config(
    config: AWDLSTMConfig | None, default: str, overrides: dict[str, Any]
) -> AWDLSTMConfig:
    """Build the config a model factory uses: defaults or ``config``, then overrides/drop_mult."""
    overrides = dict(overrides)
    drop_mult = overrides.pop("drop_mult", 1.0)
    if config is None:
        factory = AWDLSTMConfig.lm if default == "lm" else AWDLSTMConfig.classifier
        return factory(drop_mult, **overrides)
    return dataclasses.replace(config, **overrides).scaled(drop_mult)
