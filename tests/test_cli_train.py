"""The train / predict / generate commands: help, bad input, time limit and exact resume."""

import pickle
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fastulm import generate, open_corpus, predict
from fastulm.model import get_language_model
from fastulm.train.__main__ import EXIT_TIME_LIMIT
from fastulm.train.__main__ import main as train_main
from fastulm.train.presets import get_preset
from fastulm_testkit import TINY_TRAIN, one_torch_thread, write_small_corpus  # noqa: F401


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "args",
    [
        ["fastulm.train", "--help"],
        ["fastulm.train", "lm", "--help"],
        ["fastulm.train", "clas", "--help"],
        ["fastulm.predict", "--help"],
        ["fastulm.generate", "--help"],
    ],
)
def test_help(args):
    res = _run(*args)
    assert res.returncode == 0 and "usage:" in res.stdout


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A 120-review corpus tokenized by the real tokenizer (positive / negative words)."""
    return write_small_corpus(tmp_path_factory.mktemp("cli"))


TINY = TINY_TRAIN


def test_time_limit_then_resume_equals_one_run(small_corpus, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train_main(["lm", str(small_corpus), str(whole), *TINY]) == 0
    assert train_main(["lm", str(small_corpus), str(split), *TINY, "--time-limit", "0"]) == (
        EXIT_TIME_LIMIT
    )
    assert (split / "checkpoints" / "last.pt").is_file()
    assert not (split / "model.safetensors").exists()
    assert train_main(["lm", str(small_corpus), str(split), *TINY, "--resume"]) == 0
    a, b = load_file(whole / "model.safetensors"), load_file(split / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (whole / "encoder.safetensors").is_file() and (whole / "encoder.json").is_file()
    # generation is repeatable with a seed and starts with the prompt
    out1 = generate.main([str(whole), "The cast was", "--n-words", "5", "--seed", "1"])
    assert out1 == 0


def test_generate_output(small_corpus, tmp_path, capsys):
    lm = tmp_path / "lm"
    assert train_main(["lm", str(small_corpus), str(lm), *TINY, "--epochs", "1"]) == 0
    capsys.readouterr()
    argv = [str(lm), "The cast was", "--n-words", "6", "--seed", "3", "--n-samples", "2"]
    assert generate.main(argv) == 0
    first = capsys.readouterr().out.splitlines()
    assert generate.main(argv) == 0
    assert capsys.readouterr().out.splitlines() == first
    assert len(first) == 2 and all(line.startswith("The cast was") for line in first)


def _one_error_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_a_relative_encoder_name_is_a_path_here(small_corpus, tmp_path, capsys, monkeypatch):
    """It used to be looked up in the new run's models/ (fastai's learn.load_encoder), and
    the error named RUN/models/NAME.safetensors."""
    monkeypatch.chdir(tmp_path)
    argv = ["clas", str(small_corpus), "c", *TINY, "--encoder", "lmrun"]
    assert train_main(argv) == 1
    line = _one_error_line(capsys)
    assert line.startswith(f"error: --encoder lmrun: {tmp_path / 'lmrun.safetensors'} not found")
    assert not (tmp_path / "c").exists()


def test_bad_inputs(small_corpus, tmp_path, capsys):
    res = _run("fastulm.train", "lm", str(tmp_path / "nope"), str(tmp_path / "run"), *TINY)
    assert res.returncode == 1  # the real exit status of the command
    assert res.stderr.count("\n") == 1 and "nope" in res.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert predict.main([str(tmp_path), "some text"]) == 1
    assert "config.json" in _one_error_line(capsys)
    argv = ["clas", str(small_corpus), str(tmp_path / "c"), *TINY, "--encoder", str(tmp_path / "x")]
    assert train_main(argv) == 1
    assert "x.safetensors" in _one_error_line(capsys)
    assert not (tmp_path / "c").exists()  # refused before the run folder is made
    assert train_main(["lm", str(small_corpus), str(tmp_path / "r"), "--preset", "huge"]) == 1
    assert "unknown preset" in _one_error_line(capsys)


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--bs", "0"], "--bs must be positive, got 0"),  # 0 used to mean the preset's 32
        (["--lr=-1e-3"], "--lr must be positive"),  # used to train away from the data
        (["--threads", "0"], "--threads must be positive"),
        (["--drop-mult=-0.5"], "--drop-mult must be >= 0"),
        (["--drop-mult", "5"], "dropouts must stay below 1"),  # input_p 0.25 * 5
        (["--epochs=-1"], "--epochs must be >= 0"),
        (["--lr", "inf"], "--lr must be a finite number, got inf"),
        (["--wd", "nan"], "--wd must be a finite number, got nan"),
        (["--seed=-1"], "--seed must be in [0, 2**32), got -1"),
        (
            ["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "cuda:99"],
            "device 'cuda",
        ),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_bad_numbers_stop_before_any_work(small_corpus, tmp_path, capsys, flags, says):
    run = tmp_path / "run"
    assert train_main(["lm", str(small_corpus), str(run), *TINY, *flags]) == 1
    assert says in _one_error_line(capsys)
    assert not run.exists()


def test_encoder_size_mismatch(small_corpus, tmp_path, capsys):
    lm = tmp_path / "lm"
    assert train_main(["lm", str(small_corpus), str(lm), *TINY, "--epochs", "0"]) == 0
    capsys.readouterr()
    argv = ["clas", str(small_corpus), str(tmp_path / "c"), *TINY, "--encoder", str(lm)]
    assert train_main([*argv, "--emb-sz", "48"]) == 1
    assert "emb_sz" in _one_error_line(capsys)


def test_classifier_and_predict_file(small_corpus, tmp_path, capsys):
    lm, clas = tmp_path / "lm", tmp_path / "clas"
    assert train_main(["lm", str(small_corpus), str(lm), *TINY, "--epochs", "1"]) == 0
    assert (
        train_main(
            [
                "clas",
                str(small_corpus),
                str(clas),
                *TINY,
                "--encoder",
                str(lm),
                "--final-epochs",
                "1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert predict.main([str(clas), "This film was great and fun."]) == 0
    line = capsys.readouterr().out
    assert line.split()[0] in {"pos", "neg"} and "p" in line
    texts = tmp_path / "in.txt"
    texts.write_text("This film was great.\nIt was awful and dull.\n")
    assert predict.main([str(clas), "--file", str(texts), "--out", str(tmp_path / "o.csv")]) == 0
    rows = (tmp_path / "o.csv").read_text().splitlines()
    assert rows[0] == "id,label,p_neg,p_pos" and len(rows) == 3  # an id column to join back
    capsys.readouterr()
    assert generate.main([str(clas), "hello"]) == 1
    assert "not a language model" in _one_error_line(capsys)
    bad_csv = tmp_path / "in.csv"
    bad_csv.write_text("review\nfoo\n")
    assert predict.main([str(clas), "--file", str(bad_csv)]) == 1
    assert "no column 'text'" in _one_error_line(capsys)


def _tiny_lm(n_vocab: int, seed: int):
    torch.manual_seed(seed)
    return get_language_model(n_vocab, **get_preset("tiny").model_kw())


def _write_pretrained(model, vocab, folder) -> list[str]:
    """A fastai WikiText-103-style pair (state_dict + pickled itos); the --pretrained args."""
    wpath, vpath = folder / "lstm_fwd.pth", folder / "itos.pkl"
    torch.save(model.state_dict(), wpath)
    vpath.write_bytes(pickle.dumps(list(vocab)))
    return ["--pretrained", str(wpath), str(vpath)]


def test_first_lm_fit_freezes_only_pretrained_weights(small_corpus, tmp_path):
    """As fastai: language_model_learner freezes the body only when it loaded pretrained
    weights, so from scratch the walkthrough's first fit trains the LSTMs too."""

    def rnn_weights(run):
        return {k: v for k, v in load_file(run / "model.safetensors").items() if "rnns" in k}

    first_fit = ["--frozen-epochs", "1", "--epochs", "0"]
    untrained = ["--frozen-epochs", "0", "--epochs", "0"]
    runs = {}
    for name, extra in (("scratch", first_fit), ("init", untrained)):
        run = tmp_path / name
        assert train_main(["lm", str(small_corpus), str(run), *TINY, *extra]) == 0
        runs[name] = rnn_weights(run)
    changed = [k for k in runs["init"] if not torch.equal(runs["init"][k], runs["scratch"][k])]
    assert sorted(changed) == sorted(runs["init"])  # every LSTM weight trained

    itos = open_corpus(small_corpus).vocab.itos
    old = _tiny_lm(len(itos), seed=1)
    pre = _write_pretrained(old, itos, tmp_path)
    run = tmp_path / "pretrained"
    assert train_main(["lm", str(small_corpus), str(run), *TINY, *pre, *first_fit]) == 0
    for k, v in rnn_weights(run).items():  # frozen for the first fit
        assert torch.equal(v, old.state_dict()[k]), k


def test_lm_from_pretrained_weights(small_corpus, tmp_path, capsys):
    """--pretrained maps a WT103-style pair onto the corpus vocab before the first step."""
    itos = open_corpus(small_corpus).vocab.itos
    shared = [t for t in reversed(itos[4:]) if t != "xxfake"]  # xxfake pads the vocab: repeats
    old_vocab = [*shared, "only_in_old_a", "only_in_old_b"]
    old = _tiny_lm(len(old_vocab), seed=0)
    with torch.no_grad():
        old.head.decoder.bias.normal_()
    sd = {k: v.clone() for k, v in old.state_dict().items()}  # fastai's key names
    run = tmp_path / "lm"
    argv = ["lm", str(small_corpus), str(run), *TINY, *_write_pretrained(old, old_vocab, tmp_path)]
    assert train_main([*argv, "--frozen-epochs", "0", "--epochs", "0"]) == 0
    got = load_file(run / "model.safetensors")
    emb, bias = got["0.encoder.weight"], got["1.decoder.bias"]
    old_emb, old_bias = sd["0.encoder.weight"], sd["1.decoder.bias"]
    for i, tok in enumerate(itos):
        if tok in old_vocab:
            j = old_vocab.index(tok)
            assert torch.equal(emb[i], old_emb[j]) and torch.equal(bias[i], old_bias[j]), tok
        else:  # tokens the pretrained vocab lacks start from the mean row
            torch.testing.assert_close(emb[i], old_emb.mean(0))
            torch.testing.assert_close(bias[i], old_bias.mean())
    for k in sd:
        if "rnns" in k:
            assert torch.equal(got[k], sd[k]), k
    # a vocab file that is not a pickled list of strings: one clear line, nothing written
    (tmp_path / "itos.pkl").write_bytes(pickle.dumps({"not": "a list"}))
    capsys.readouterr()
    assert train_main([*argv[:2], str(tmp_path / "bad"), *argv[3:], "--epochs", "0"]) == 1
    assert "list of strings" in _one_error_line(capsys)
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def _grads_and_steps():
    """Global optimizer hooks for ``test_grad_checkpoint_...``: the first run records every
    step's gradients and updated weights, a second run is compared with it step by step and
    then set to the first run's weights, so each of its steps starts where the first run's did.
    """
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    def trained(opt):  # frozen parameters have no gradient and do not move
        return [p for group in opt.param_groups for p in group["params"] if p.grad is not None]

    runs: list[list[dict]] = []

    def pre(opt, args, kwargs):
        grads = [p.grad.detach().clone() for p in trained(opt)]
        runs[-1].append({"grads": grads})

    @torch.no_grad()
    def post(opt, args, kwargs):
        mine = runs[-1][-1]
        if len(runs) == 1:
            mine["after"] = [p.detach().clone() for p in trained(opt)]
        elif len(runs[-1]) <= len(runs[0]):
            after = runs[0][len(runs[-1]) - 1]["after"]
            ps = trained(opt)
            if [p.shape for p in ps] == [q.shape for q in after]:
                for p, q in zip(ps, after):
                    p.copy_(q)

    handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
    return runs, handles


def test_grad_checkpoint_gives_the_same_gradients_at_every_step(
    small_corpus, tmp_path, monkeypatch
):
    """``--grad-checkpoint`` only trades compute for memory: at every optimizer step of both
    stages its gradients are those of a run without it, from the same weights, to fp32
    rounding -- every dropout mask replays in the recompute.

    The checkpointed run is held in lockstep (after each step it takes the plain run's
    weights) rather than compared at the end. Its first pass runs the LSTM without autograd,
    which oneDNN serves with its inference kernel (cuDNN too): last-bit different from the
    training kernel, 3e-8 relative in the outputs here, ~1e-5 in some gradients once the
    classifier's BatchNorm over 8 rows has amplified it. Free-running, the classifier's ~50
    Adam steps amplify such rounding ~1000x (starting it from encoder weights 1.4e-7 apart,
    without any checkpointing, ends 3e-4 apart), so final weights are not a guaranteed
    property; one step's gradients are. A recompute that does not replay the RNG (masks drawn
    afresh) changes them by order one and fails here.
    """
    from fastulm.model.recompute import _Recompute

    recomputes = [0]
    backward = _Recompute.backward

    def counting_backward(ctx, *grads):
        recomputes[0] += 1
        return backward(ctx, *grads)

    monkeypatch.setattr(_Recompute, "backward", staticmethod(counting_backward))
    runs, handles = _grads_and_steps()
    n_steps, n_recomputes = [], []
    try:
        for flag in ([], ["--grad-checkpoint"]):
            runs.append([])
            root = tmp_path / ("ckpt" if flag else "plain")
            lm, clas = root / "lm", root / "clas"
            clas_args = ["--encoder", str(lm), "--final-epochs", "1"]
            argv = [
                ["lm", str(small_corpus), str(lm), *TINY, "--epochs", "1", *flag],
                ["clas", str(small_corpus), str(clas), *TINY, *clas_args, *flag],
            ]
            for args in argv:
                recomputes[0] = 0
                assert train_main(args) == 0
                n_steps.append(len(runs[-1]))
                n_recomputes.append(recomputes[0])
    finally:
        for h in handles:
            h.remove()
    plain, ckpt = runs
    # both stages ran, the same steps, and only the flagged run recomputed (in both stages)
    assert n_steps[:2] == n_steps[2:] and 0 < n_steps[0] < n_steps[1]
    assert n_recomputes[:2] == [0, 0] and min(n_recomputes[2:]) > 0
    for i, (a, b) in enumerate(zip(plain, ckpt)):
        stage = "lm" if i < n_steps[0] else "clas"
        assert len(a["grads"]) == len(b["grads"]), f"step {i} ({stage})"
        for j, (ga, gb) in enumerate(zip(a["grads"], b["grads"])):
            ga, gb = ga.double(), gb.double()
            assert (ga - gb).norm() <= 1e-4 * ga.norm() + 1e-9, (
                f"step {i} ({stage}), trained parameter {j} {tuple(ga.shape)}"
            )


def test_qrnn_lm_then_a_classifier_with_its_layers(small_corpus, tmp_path, capsys):
    """--arch qrnn on the LM; the classifier takes the encoder's layers without being told,
    and refuses a contradicting --arch with one line."""
    import json

    lm, clas = tmp_path / "lm", tmp_path / "clas"
    assert (
        train_main(["lm", str(small_corpus), str(lm), *TINY, "--epochs", "1", "--arch", "qrnn"])
        == 0
    )
    assert json.loads((lm / "encoder.json").read_text())["config"]["arch"] == "qrnn"
    argv = [
        "clas",
        str(small_corpus),
        str(clas),
        *TINY,
        "--encoder",
        str(lm),
        "--final-epochs",
        "1",
    ]
    assert train_main(argv) == 0
    state = load_file(clas / "model.safetensors")
    assert "0.module.rnns.0.weight_raw" in state and not any("weight_hh" in k for k in state)
    capsys.readouterr()
    assert predict.main([str(clas), "This film was great and fun."]) == 0
    assert capsys.readouterr().out.split()[0] in {"pos", "neg"}
    assert (
        train_main(
            [
                "clas",
                str(small_corpus),
                str(tmp_path / "c2"),
                *TINY,
                "--encoder",
                str(lm),
                "--arch",
                "lstm",
            ]
        )
        == 1
    )
    assert "QRNN layers but the model has LSTM" in _one_error_line(capsys)


def test_clas_without_a_validation_split_says_how_to_make_one(tmp_path, capsys):
    from fastulm.tokenize import main as tokenize_main

    src = tmp_path / "t.csv"
    src.write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(8)))
    assert tokenize_main([str(src), str(tmp_path / "c"), "--quiet", "--min-freq", "1"]) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    assert train_main(["clas", str(tmp_path / "c"), str(run), *TINY]) == 1
    err = _one_error_line(capsys)
    assert "no validation split (it has train)" in err and "--valid-pct" in err
    assert not run.exists()
