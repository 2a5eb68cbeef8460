"""Named recipes: model sizes, batch shapes and the stage-by-stage schedule of each stage.

``paper`` is the walkthrough (AWD-LSTM 400/1152/3; LM: one epoch at 1e-2 -- body frozen when
pretrained weights were loaded -- then ten unfrozen at 1e-3; classifier: gradual unfreezing
with ``slice(lr/2.6**4, lr)``). ``cpu`` is a small AWD-LSTM with the same schedule shape that
trains on a 2-core machine in minutes.
``tiny`` is for tests: seconds, yet enough to beat chance on the IMDB sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

LR = float | tuple[float, float]  # a value, or (lo, hi) for slice(lo, hi)


@dataclass(frozen=True)
class Stage:
    """Freeze to ``freeze_to`` (0 = everything trains), then ``fit_one_cycle(epochs, lr)``."""

    freeze_to: int
    epochs: int
    lr: LR

    def lr_arg(self) -> float | slice:
        return slice(*self.lr) if isinstance(self.lr, tuple) else self.lr


def gradual_unfreezing(lr: float, final_epochs: int = 2) -> list[Stage]:
    """The walkthrough's classifier stages for a base rate (2e-2 there)."""
    return [
        Stage(-1, 1, lr),
        Stage(-2, 1, (lr / 2 / 2.6**4, lr / 2)),
        Stage(-3, 1, (lr / 4 / 2.6**4, lr / 4)),
        Stage(0, final_epochs, (lr / 20 / 2.6**4, lr / 20)),
    ]


@dataclass(frozen=True)
class StageRecipe:
    bs: int
    bptt: int
    drop_mult: float
    stages: list[Stage]
    max_len: int | None = 72 * 20


@dataclass(frozen=True)
class Preset:
    name: str
    emb_sz: int
    n_hid: int
    n_layers: int
    lm: StageRecipe
    clas: StageRecipe
    moms: tuple[float, float, float] = (0.8, 0.7, 0.8)
    wd: float = 0.01
    extra: dict = field(default_factory=dict)

    def model_kw(self) -> dict[str, int]:
        return {"emb_sz": self.emb_sz, "n_hid": self.n_hid, "n_layers": self.n_layers}


PRESETS = {
    "paper": Preset(
        name="paper",
        emb_sz=400,
        n_hid=1152,
        n_layers=3,
        lm=StageRecipe(
            bs=48, bptt=72, drop_mult=0.3, stages=[Stage(-1, 1, 1e-2), Stage(0, 10, 1e-3)]
        ),
        clas=StageRecipe(bs=64, bptt=72, drop_mult=0.5, stages=gradual_unfreezing(2e-2)),
    ),
    "cpu": Preset(
        name="cpu",
        emb_sz=64,
        n_hid=256,
        n_layers=3,
        lm=StageRecipe(
            bs=32, bptt=48, drop_mult=0.3, stages=[Stage(-1, 1, 1e-2), Stage(0, 4, 3e-3)]
        ),
        clas=StageRecipe(
            bs=32, bptt=48, drop_mult=0.5, stages=gradual_unfreezing(2e-2), max_len=48 * 10
        ),
    ),
    "tiny": Preset(
        name="tiny",
        emb_sz=64,
        n_hid=128,
        n_layers=2,
        lm=StageRecipe(
            bs=32, bptt=32, drop_mult=0.1, stages=[Stage(-1, 1, 1e-2), Stage(0, 3, 5e-3)]
        ),
        clas=StageRecipe(
            bs=16, bptt=32, drop_mult=0.3, stages=gradual_unfreezing(5e-2, 4), max_len=32 * 16
        ),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})") from None


__all__ = [
    "PRESETS",
    "Preset",
    "Stage",
    "StageRecipe",
    "get_preset",
    "gradual_unfreezing",
    "replace",
]
