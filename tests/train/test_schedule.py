"""The one-cycle schedule and discriminative learning rates against hand-computed values."""

import math

import pytest

from fastulm.train.optimizer import even_mults, lr_range
from fastulm.train.schedule import ExpSweep, OneCycle, normalize_moms


def test_one_cycle_lr_by_hand():
    # 8 steps, pct_start 0.25: warm-up over steps 0..2, annealing after.
    s = OneCycle([1e-2], total=8, pct_start=0.25, div=25, div_final=1e5)
    assert s.lrs(0)[0] == pytest.approx(1e-2 / 25)  # first batch at lr_max/div
    assert s.lrs(1)[0] == pytest.approx((1e-2 / 25 + 1e-2) / 2)  # cos halfway = mean
    assert s.lrs(2)[0] == pytest.approx(1e-2)  # peak at pct_start
    # pos 0.625 is halfway through the annealing phase
    assert s.lrs(5)[0] == pytest.approx((1e-2 + 1e-2 / 1e5) / 2)
    # pos 0.875: 5/6 of the way down: end + (1 + cos(5pi/6)) ... written out by hand
    frac = (1 - math.cos(math.pi * 5 / 6)) / 2  # share of the way from peak to end
    assert s.lrs(7)[0] == pytest.approx(1e-2 + frac * (1e-7 - 1e-2))
    assert s.lrs(8)[0] == pytest.approx(1e-7)


def test_one_cycle_moms_and_groups():
    s = OneCycle([1e-3, 1e-2], total=8, moms=normalize_moms((0.8, 0.7)))
    assert s.mom(0) == pytest.approx(0.8)
    assert s.mom(1) == pytest.approx(0.75)
    assert s.mom(2) == pytest.approx(0.7)
    assert s.mom(5) == pytest.approx(0.75)
    assert s.lrs(2) == pytest.approx([1e-3, 1e-2])
    assert s.lrs(0) == pytest.approx([1e-3 / 25, 1e-2 / 25])


def test_normalize_moms():
    assert normalize_moms((0.8, 0.7)) == (0.8, 0.7, 0.8)
    assert normalize_moms([0.95, 0.85, 0.95]) == (0.95, 0.85, 0.95)
    with pytest.raises(ValueError):
        normalize_moms((0.9,))


def test_exp_sweep():
    s = ExpSweep(1e-7, 10, 100)
    assert s.lr(0) == pytest.approx(1e-7)
    assert s.lr(50) == pytest.approx(math.sqrt(1e-7 * 10))
    assert s.lr(100) == pytest.approx(10)


def test_discriminative_lrs_by_hand():
    lr = 1e-2
    got = lr_range(slice(lr / 2.6**4, lr), 5)
    assert got == pytest.approx([lr / 2.6**4, lr / 2.6**3, lr / 2.6**2, lr / 2.6, lr])
    assert lr_range(slice(1e-3), 4) == pytest.approx([1e-4, 1e-4, 1e-4, 1e-3])
    assert lr_range(3e-3, 3) == [3e-3] * 3
    assert lr_range([1, 2], 2) == [1.0, 2.0]
    assert even_mults(1e-4, 1e-2, 3) == pytest.approx([1e-4, 1e-3, 1e-2])
    with pytest.raises(ValueError):
        lr_range([1, 2, 3], 2)


@pytest.mark.reference
def test_matches_fastai_schedule(fastai_text):
    from fastai.callback.schedule import combined_cos

    lr_max = 2e-2
    ref_lr = combined_cos(0.25, lr_max / 25, lr_max, lr_max / 1e5)
    ref_mom = combined_cos(0.25, 0.8, 0.7, 0.8)
    s = OneCycle([lr_max], total=37, moms=(0.8, 0.7, 0.8))
    for step in range(37):
        assert s.lrs(step)[0] == pytest.approx(
            float(ref_lr(step / 37)), rel=1e-5
        )  # fastai computes in float32
        assert s.mom(step) == pytest.approx(
            float(ref_mom(step / 37)), rel=1e-5
        )  # fastai computes in float32
