"""The training loop on tiny models: schedule applied, loss falls, exact resume, errors."""

import json

import pytest
import torch
from trainkit import LabelLoader, StreamLoader, tiny_classifier, tiny_lm, toy_tokens

from fastulm.train.checkpoint import CheckpointError
from fastulm.train.learner import Learner, TimeLimitReached, TrainingError
from fastulm.train.schedule import OneCycle
from fastulm_testkit import cpu_bf16_lstm_ok


def lm_learner(tmp_path, seed=0, drop=True, **kw):
    ids = toy_tokens()
    train = StreamLoader(ids[:3200], bs=16, bptt=20, seed=1)
    valid = StreamLoader(ids[3200:], bs=4, bptt=10, shuffle=False)
    return Learner(
        tiny_lm(drop=drop, seed=seed),
        train,
        valid,
        kind="lm",
        path=tmp_path,
        show_progress=False,
        **kw,
    )


def test_fit_follows_one_cycle_and_loss_falls(tmp_path):
    learn = lm_learner(tmp_path)
    seen = []
    learn.after_step.append(
        lambda lr: seen.append(
            (
                {g["layer_group"]: g["lr"] for g in lr.opt.param_groups},
                lr.opt.param_groups[0]["betas"][0],
            )
        )
    )
    rows = learn.fit_one_cycle(2, slice(1e-3, 1e-2), moms=(0.8, 0.7))
    n = 2 * len(learn.train_dl)
    sched = OneCycle([1e-3 * 10 ** (i / 3) for i in range(4)], n, moms=(0.8, 0.7, 0.8))
    assert len(seen) == n
    for step, (lrs, mom) in enumerate(seen):
        assert [lrs[i] for i in range(4)] == pytest.approx(sched.lrs(step))
        assert mom == pytest.approx(sched.mom(step))
    assert len(rows) == 2
    learn.fit_one_cycle(5, 1e-1)
    rows = learn.history["epochs"]
    assert rows[-1]["valid_loss"] < rows[0]["valid_loss"] - 0.3
    assert rows[-1]["perplexity"] == pytest.approx(
        torch.tensor(rows[-1]["valid_loss"]).exp().item()
    )
    assert 0 <= rows[-1]["accuracy"] <= 1
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == rows
    assert (tmp_path / "log.csv").read_text().startswith("fit,epoch,train_loss")
    assert (tmp_path / "losses.png").stat().st_size > 1000


def _recipe(learn):
    learn.freeze()
    learn.fit_one_cycle(1, 1e-2, moms=(0.8, 0.7))
    learn.unfreeze()
    learn.fit_one_cycle(2, slice(1e-3, 3e-3))


class Interrupt(Exception):
    pass


@pytest.mark.parametrize(
    ("stop_at", "every_step"),
    [
        (5, True),  # mid-epoch of fit 0
        (20, True),  # last step of an epoch of fit 1 (checkpoint from the step before)
        (28, True),  # mid-epoch of fit 1's last epoch
        (15, False),  # epoch-end checkpoints only: resume at the end of fit 0
        (25, False),  # ... and at the boundary between fit 1's epochs
    ],
)
def test_resume_is_bit_exact(tmp_path, stop_at, every_step):
    torch.manual_seed(123)
    ref = lm_learner(tmp_path / "ref")
    _recipe(ref)
    assert len(ref.train_dl) == 10  # 3 epochs = 30 steps; stop_at 20 = end of an epoch

    torch.manual_seed(123)
    first = lm_learner(tmp_path / "run")
    first.checkpoint_path = tmp_path / "run" / "checkpoints" / "last.pt"
    if every_step:
        first.checkpoint_every_s = 0.0  # a checkpoint after every step

    def stop(learn, count=[0]):  # noqa: B006
        count[0] += 1
        if count[0] == stop_at:
            raise Interrupt

    first.after_step.append(stop)
    with pytest.raises(Interrupt):
        _recipe(first)

    torch.manual_seed(999)  # a different start: everything must come from the checkpoint
    second = lm_learner(tmp_path / "run", seed=7)
    second.resume(first.checkpoint_path)
    _recipe(second)
    for (name, a), b in zip(ref.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert second.history["epochs"] == [  # same table (time aside)
        {**r, "time": s["time"]} for r, s in zip(ref.history["epochs"], second.history["epochs"])
    ]


def test_time_limit_checkpoints_and_stops(tmp_path):
    learn = lm_learner(tmp_path)
    learn.checkpoint_path = tmp_path / "ck.pt"
    learn.time_limit_s = 0.0
    with pytest.raises(TimeLimitReached, match="checkpoint written"):
        learn.fit_one_cycle(1, 1e-2)
    assert (tmp_path / "ck.pt").is_file()


def test_corrupt_checkpoint_is_clear(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    learn = lm_learner(tmp_path)
    with pytest.raises(CheckpointError, match=r"bad\.pt"):
        learn.resume(bad)


def test_nan_loss_stops_with_message(tmp_path):
    learn = lm_learner(tmp_path)

    def poison(lr):
        if lr.step_in_epoch == 2:
            with torch.no_grad():
                lr.model.head.decoder.bias.fill_(float("nan"))

    learn.after_step.append(poison)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step 3"):
        learn.fit_one_cycle(1, 1e-2)


def test_oom_names_settings(tmp_path):
    learn = lm_learner(tmp_path)

    def boom(x, y):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    learn.model.loss = boom
    with pytest.raises(TrainingError, match="lower --bs or --bptt"):
        learn.fit_one_cycle(1, 1e-2)


def test_lr_find_restores_model_and_suggests(tmp_path, capsys):
    learn = lm_learner(tmp_path)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    res = learn.lr_find(end_lr=1.0, num_it=30)
    assert len(res.lrs) == 30
    assert res.lrs == sorted(res.lrs)
    assert 1e-7 <= res.valley <= 1 and 1e-7 <= res.steep <= 1
    assert (tmp_path / "lr_find.png").stat().st_size > 1000
    assert "suggested learning rates" in capsys.readouterr().out
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_lr_find_stops_on_divergence(tmp_path):
    learn = lm_learner(tmp_path)
    res = learn.lr_find(start_lr=3.0, end_lr=1e7, num_it=100, plot=False)
    assert len(res.lrs) < 50  # stopped before the end of the sweep


def test_save_load_roundtrip(tmp_path):
    learn = lm_learner(tmp_path)
    learn.fit_one_cycle(1, 1e-2)
    path = learn.save("stage1")
    assert path == tmp_path / "models" / "stage1.safetensors"
    other = lm_learner(tmp_path, seed=5)
    other.load("stage1")
    for (k, a), b in zip(learn.model.state_dict().items(), other.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert other.model.head.decoder.weight is other.model.body.encoder.weight
    assert other.opt.state_dict()["state"].keys() == learn.opt.state_dict()["state"].keys()
    with pytest.raises(CheckpointError, match=r"nope\.safetensors"):
        other.load("nope")


def test_classifier_fit(tmp_path):
    torch.manual_seed(0)
    n, t = 64, 16
    x = torch.randint(2, 24, (n, t))
    y = (x[:, :4] < 12).sum(1).ge(2).long()  # label readable from the first tokens
    learn = Learner(
        tiny_classifier(bptt=8),
        LabelLoader(x, y, bs=16),
        LabelLoader(x, y, 16, shuffle=False),
        kind="clas",
        path=tmp_path,
        show_progress=False,
    )
    learn.freeze_to(-2)
    rows = learn.fit_one_cycle(2, slice(1e-3, 1e-2))
    assert "perplexity" not in rows[-1] and 0 <= rows[-1]["accuracy"] <= 1
    # frozen embedding did not move
    assert learn.model.body.encoder.weight.grad is None


def test_precision_modes():
    from fastulm.train.learner import Precision

    cpu = torch.device("cpu")
    assert Precision("auto", cpu).mode == "fp32" and Precision("auto", cpu).scaler is None
    # bf16 where oneDNN runs the LSTM in bf16 (checked independently by cpu_bf16_lstm_ok)
    want = torch.bfloat16 if cpu_bf16_lstm_ok() else None
    assert Precision("bf16", cpu).dtype == want
    assert Precision("fp16", cpu).scaler is not None
    with pytest.raises(ValueError, match="mixed precision"):
        Precision("int8", cpu)


def test_bf16_without_a_bf16_lstm_falls_back_with_a_note(capsys):
    """Asked for bf16 where the LSTM cannot run in it, training used to fail inside its first
    step (oneDNN: "could not create a primitive descriptor"); now it says so and goes on."""
    from fastulm.train.learner import Precision, bf16_lstm_works

    cpu = torch.device("cpu")
    assert bf16_lstm_works(cpu) == cpu_bf16_lstm_ok()
    before = torch.get_rng_state()
    bf16_lstm_works(cpu)
    assert torch.equal(before, torch.get_rng_state())  # the probe draws no random numbers
    capsys.readouterr()
    mode = Precision("bf16", cpu).mode
    if cpu_bf16_lstm_ok():
        assert mode == "bf16"
    else:
        assert mode == "fp32" and "cannot run in bf16" in capsys.readouterr().err


@pytest.mark.skipif(not cpu_bf16_lstm_ok(), reason="no bf16 LSTM on this CPU")
def test_bf16_autocast_trains(tmp_path):
    learn = lm_learner(tmp_path, mixed_precision="bf16")
    rows = learn.fit_one_cycle(1, 1e-2)
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())
    assert rows[0]["valid_loss"] < 3.3


def test_fp16_scaler_skips_an_overflowing_step(tmp_path):
    learn = lm_learner(tmp_path, mixed_precision="fp16", drop=False)
    # oneDNN has no fp16 LSTM on the CPU: keep the scaler, run the maths in fp32
    learn.precision.dtype = None
    real_loss = learn.model.loss
    calls = []

    def loss_with_one_overflow(x, y):
        out = real_loss(x, y)
        calls.append(1)
        if len(calls) == 3 and learn.model.training:
            out.loss = out.loss * float("inf")
        return out

    learn.model.loss = loss_with_one_overflow
    rows = learn.fit_one_cycle(1, 1e-2)
    assert rows[0]["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_mixed_precision_on_cuda(tmp_path, mode):
    learn = lm_learner(tmp_path, mixed_precision=mode, device="cuda")
    rows = learn.fit_one_cycle(2, 1e-2)
    assert rows[-1]["valid_loss"] < rows[0]["valid_loss"] + 0.05
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())


def test_gradient_clipping(tmp_path):
    learn = lm_learner(tmp_path, clip=0.05)
    norms = []
    real_step = learn.opt.step

    def step_recording_norm(*a, **kw):
        grads = [p.grad for p in learn.params if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return real_step(*a, **kw)

    learn.opt.step = step_recording_norm
    learn.fit_one_cycle(1, 1e-2)
    assert len(norms) == len(learn.train_dl)
    assert max(norms) <= 0.05 * (1 + 1e-4)
    assert min(norms) > 0.05 * 0.5  # this tiny LM's raw gradients are far above 0.05
