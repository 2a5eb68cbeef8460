"""Generation with a carried hidden state, sampling rules, and batched classification."""

import numpy as np
import pytest
import torch
from torch import nn

from fastulm import generate as generate_cli
from fastulm.data.vocab import Vocab
from fastulm.generation import (
    LMStepper,
    NonFiniteError,
    classify,
    encode_texts,
    generate,
    generate_text,
)
from fastulm.model import get_classifier, get_language_model
from fastulm.train.run_dir import write_run
from fastulm_testkit import one_torch_thread  # noqa: F401 (autouse here)

V = 40
SMALL = dict(emb_sz=16, n_hid=24, n_layers=2)


@pytest.fixture
def lm():
    torch.manual_seed(0)
    model = get_language_model(V, **SMALL)
    # Sharper than an untrained model's near-uniform output, so samples differ by seed.
    with torch.no_grad():
        model.head.decoder.bias.copy_(torch.randn(V) * 2)
    return model


class ConstantLM(nn.Module):
    """Next-token logits that ignore the input: sampling can be checked against a formula."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32))
        self.resets = 0

    def reset(self):
        self.resets += 1

    def forward(self, x):
        return (self.logits.expand(*x.shape, -1),)


def full_rerun(lm, ids):
    """Independent expectation: the whole sequence from a reset state, last position."""
    lm.reset()
    with torch.no_grad():
        return lm(torch.tensor([ids])).logits[0, -1]


def test_stepper_equals_rerunning_the_whole_sequence(lm):
    lm.eval()
    rng = np.random.default_rng(0)
    prompt = [2, *rng.integers(3, V, 6).tolist()]
    cont = rng.integers(3, V, 15).tolist()
    with torch.no_grad():
        stepper = LMStepper(lm, prompt)
        seq = list(prompt)
        for tok in [None, *cont]:
            if tok is not None:
                stepper.feed(tok)
                seq.append(tok)
            got = stepper.logits.clone()
            torch.testing.assert_close(got, full_rerun(lm, seq), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 1e-4])
def test_near_zero_temperature_is_greedy_rerun(lm, temperature):
    prompt = [2, 5, 9, 11]
    lm.eval()
    expected = list(prompt)
    for _ in range(12):  # the reference's way: rerun everything, take the argmax
        logits = full_rerun(lm, expected)
        logits[0] = -float("inf")
        expected.append(int(logits.argmax()))
    assert generate(lm, prompt, 12, temperature=temperature, seed=1) == expected


def test_seed_repeats_and_differs(lm):
    a = generate(lm, [2, 7], 30, seed=5)
    assert a == generate(lm, [2, 7], 30, seed=5)
    assert a != generate(lm, [2, 7], 30, seed=6)
    assert a[:2] == [2, 7] and len(a) == 32


def test_model_state_restored(lm):
    lm.train()
    generate(lm, [2, 3], 5, seed=0)
    assert lm.training
    assert lm.body.hidden is None  # reset afterwards: no leftover state of batch size 1


def test_no_unk(lm):
    with torch.no_grad():
        lm.head.decoder.bias[0] = 50.0  # xxunk dominates
    assert set(generate(lm, [2], 20, no_unk=False, seed=0)[1:]) == {0}
    assert 0 not in generate(lm, [2], 20, no_unk=True, seed=0)[1:]


def test_temperature_follows_reference_formula():
    probs = torch.tensor([0.05, 0.1, 0.15, 0.2, 0.5])
    model = ConstantLM(probs.log())
    n = 6000
    for t in (0.5, 2.0):
        out = np.array(generate(model, [1], n, temperature=t, no_unk=False, seed=3)[1:])
        freq = np.bincount(out, minlength=5) / n
        expected = probs ** (1 / t)  # fastai: res.pow_(1/T) then multinomial
        expected = (expected / expected.sum()).numpy()
        assert np.abs(freq - expected).max() < 0.025, (t, freq, expected)
    assert model.resets >= 2  # primed from a reset state and reset afterwards


def test_min_p_and_no_unk_together():
    probs = torch.tensor([0.3, 0.02, 0.28, 0.4])
    model = ConstantLM(probs.log())
    out = generate(model, [1], 300, min_p=0.05, seed=0)[1:]
    assert set(out) == {2, 3}
    with pytest.warns(UserWarning, match="min_p"):
        generate(model, [1], 2, min_p=0.9, seed=0)


def test_stops_after_n_sentences():
    model = ConstantLM(torch.tensor([0.0, 0.0, 0.0, 1.0, 1.5]))  # 4 = "." is likely
    out = generate(model, [1], 500, n_sentences=3, sentence_end_ids=[4], seed=0)
    gen = out[1:]
    assert gen.count(4) == 3 and gen[-1] == 4
    assert generate(model, [1], 500, stop_after_sentences=3, sentence_end_ids=[4], seed=0) == out
    with pytest.raises(ValueError, match="sentence_end_ids"):
        generate(model, [1], 5, n_sentences=1)


def test_generate_text_reads_like_a_person(lm):
    itos = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj"]
    itos += ["i", "liked", "this", "movie", "because", ".", "it", "'s", "good", "xxfake"]
    model = get_language_model(len(itos), **SMALL)
    text = generate_text(model, itos, "I liked this movie because", 8, temperature=0.8, seed=0)
    assert text.startswith("I liked this movie because")
    assert "xxbos" not in text and "xxmaj" not in text


# ---- classify ------------------------------------------------------------------------------


@pytest.fixture
def clf():
    torch.manual_seed(1)
    return get_classifier(V, 3, bptt=5, **SMALL)


def make_docs(n, max_len, seed=0):
    rng = np.random.default_rng(seed)
    return [
        np.array([2, *rng.integers(3, V, rng.integers(0, max_len))], dtype=np.int32)
        for _ in range(n)
    ]


def one_by_one(clf, docs):
    """Independent expectation: each document alone, no padding at all."""
    clf.eval()
    out = []
    with torch.no_grad():
        for d in docs:
            clf.reset()
            logits = clf(torch.from_numpy(d.astype(np.int64))[None]).logits
            out.append(torch.softmax(logits.float(), -1)[0])
    return torch.stack(out)


def test_classify_batched_equals_one_by_one_in_input_order(clf):
    docs = make_docs(11, 23)
    clf.train()
    probs = classify(clf, docs, bs=4)
    assert clf.training  # mode restored
    assert probs.shape == (11, 3) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(1), torch.ones(11))
    torch.testing.assert_close(probs, one_by_one(clf, docs), atol=1e-5, rtol=1e-4)


def test_classify_backwards_reverses_documents(clf):
    docs = make_docs(6, 17, seed=2)
    torch.testing.assert_close(
        classify(clf, docs, bs=3, backwards=True), one_by_one(clf, [d[::-1].copy() for d in docs])
    )


def test_classify_edge_cases(clf):
    assert classify(clf, [], bs=4).shape == (0, 0)
    with pytest.raises(ValueError, match="no tokens"):
        classify(clf, [np.array([], dtype=np.int32)], bs=4)


@pytest.mark.reference
def test_each_step_equals_the_reference_rerunning_the_prompt(fastai_text, lm):
    """fastai's predict resets and reruns the whole sequence each step; same distributions."""
    ref = fastai_text.get_language_model(
        fastai_text.AWD_LSTM, V, config=dict(fastai_text.awd_lstm_lm_config, **SMALL)
    )
    ref.load_state_dict(lm.state_dict())
    ref.eval()
    lm.eval()
    seq = [2, 9, 4, 17]
    with torch.no_grad():
        stepper = LMStepper(lm, seq)
        for step in range(10):
            ref.reset()
            expected = torch.softmax(ref(torch.tensor([seq]))[0][0, -1], -1)
            torch.testing.assert_close(
                torch.softmax(stepper.logits, -1), expected, atol=1e-6, rtol=1e-5
            )
            tok = int(expected.argmax()) if step % 2 else (step * 7) % V
            seq.append(tok)
            stepper.feed(tok)


def test_prompts_are_numericalized_as_the_corpus():
    """A plain itos list (a run's vocab.json) encodes as Vocab does: unknown words and the
    literal word ``xxfake`` (the vocab's padding, not a token) are 0, as fastai's
    ``Numericalize`` after building its vocab. It used to map ``xxfake`` to the last pad."""
    specials = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj"]
    itos = [*specials, "the", "movie", "good", *["xxfake"] * 4]
    want = [2, 8, 9, 10, 0, 0, 11]  # xxbos xxmaj the movie xxfake zebra good
    for vocab in (itos, Vocab(itos)):
        (ids,) = encode_texts(vocab, ["The movie xxfake zebra good"])
        assert ids.tolist() == want


# ---- bad settings and broken models ----------------------------------------------------------


@pytest.mark.parametrize(
    "kw, says",
    [
        (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
        (dict(temperature=float("inf")), "temperature must be a finite number >= 0"),
        (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
        (dict(min_p=-1.0), r"min_p is a probability threshold in \[0, 1\)"),
        (dict(min_p=1.0), "min_p is a probability threshold"),
        (dict(min_p=float("nan")), "min_p is a probability threshold"),
    ],
)
def test_bad_sampling_settings_stop_before_the_model_runs(kw, says):
    model = ConstantLM(torch.zeros(4))
    with pytest.raises(ValueError, match=says):
        generate(model, [1], 5, seed=0, **kw)
    assert model.resets == 0


def test_min_p_zero_keeps_every_token():
    """fastai keeps tokens with p >= min_p: 0 keeps them all (it was a math domain error)."""
    model = ConstantLM(torch.tensor([0.1, 0.2, 0.3, 0.4]).log())
    assert generate(model, [1], 50, min_p=0.0, seed=2) == generate(model, [1], 50, seed=2)


@pytest.mark.parametrize("temperature", [0.0, 0.75])
def test_nan_weights_are_an_error_not_a_sample(lm, temperature):
    """At temperature 0 the argmax of NaNs used to return a token silently."""
    with torch.no_grad():
        lm.body.encoder.weight[5].fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="weights are not finite"):
        generate(lm, [2, 5], 5, temperature=temperature, seed=0)
    assert lm.body.hidden is None  # still reset afterwards


class OverflowingLM(ConstantLM):
    """Finite weights, infinite scores."""

    def forward(self, x):
        return (self.logits.expand(*x.shape, -1) * float("inf"),)


def test_non_finite_output_with_finite_weights():
    with pytest.raises(NonFiniteError, match="output is not finite"):
        generate(OverflowingLM(torch.tensor([1.0, 2.0, 3.0])), [1], 3, seed=0)


def test_classify_nan_weights_is_an_error(clf):
    with torch.no_grad():
        clf.body.encoder.weight[7].fill_(float("nan"))
    docs = [d[d != 7] for d in make_docs(5, 9)]  # these never read the NaN row
    assert torch.isfinite(classify(clf, docs, bs=2)).all()
    with pytest.raises(NonFiniteError, match="weights are not finite"):  # one document does
        classify(clf, [*docs, np.array([2, 7, 9], dtype=np.int32)], bs=2)


# ---- the generate command ----------------------------------------------------------------------

RUN_VOCAB = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj"]
RUN_VOCAB += ["the", "cast", "was", "great", "film", ".", "!", "and", *[f"w{i}" for i in range(23)]]


@pytest.fixture
def lm_run(tmp_path, lm):
    assert len(RUN_VOCAB) == V
    write_run(tmp_path / "lm", lm, RUN_VOCAB, None, {"kind": "lm"})
    return tmp_path / "lm"


def _one_error_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--temperature", "nan"], "--temperature must be a finite number >= 0, got nan"),
        (["--temperature", "inf"], "--temperature must be a finite number >= 0, got inf"),
        (["--temperature=-1"], "--temperature must be a finite number >= 0"),
        (["--min-p=-1"], "--min-p is a probability threshold in [0, 1), got -1.0"),
        (["--min-p", "1"], "--min-p is a probability threshold in [0, 1)"),
        (["--n-samples", "0"], "--n-samples must be >= 1, got 0"),
        (["--n-words", "0"], "--n-words must be >= 1, got 0"),
        (["--n-sentences", "0"], "--n-sentences must be >= 1, got 0"),
        (["--seed=-1"], "--seed must be in [0, 2**32), got -1"),
    ],
)
def test_cli_bad_numbers_are_usage_errors(tmp_path, capsys, flags, says):
    """Checked before the run is even loaded: the run dir here does not exist."""
    assert generate_cli.main([str(tmp_path / "no_run"), "The cast was", *flags]) == 2
    assert _one_error_line(capsys).startswith(f"error: {says}")


def test_cli_min_p_zero_runs(lm_run, capsys):
    argv = [str(lm_run), "The cast was", "--n-words", "5", "--seed", "0"]
    assert generate_cli.main([*argv, "--min-p", "0"]) == 0
    with_zero = capsys.readouterr().out
    assert generate_cli.main(argv) == 0
    assert capsys.readouterr().out == with_zero


def test_cli_nan_weights_name_the_run(tmp_path, lm, capsys):
    with torch.no_grad():
        lm.head.decoder.bias.fill_(float("nan"))
    write_run(tmp_path / "nan", lm, RUN_VOCAB, None, {"kind": "lm"})
    assert generate_cli.main([str(tmp_path / "nan"), "The cast was", "--temperature", "0"]) == 1
    assert _one_error_line(capsys) == (
        f"error: {tmp_path / 'nan'}: the model's weights are not finite (NaN/inf); "
        "retrain or use another checkpoint\n"
    )


def test_cli_abbreviated_option_is_a_usage_error(lm_run, capsys):
    with pytest.raises(SystemExit) as info:
        generate_cli.main([str(lm_run), "The cast was", "--temp", "0.5"])  # not --temperature
    assert info.value.code == 2
    assert "unrecognized arguments: --temp" in capsys.readouterr().err


@pytest.mark.parametrize(
    "device, says", [("tpu", "unknown device 'tpu'"), ("cuda:99", "device 'cuda:99'")]
)
def test_cli_a_bad_device_is_one_error(lm_run, capsys, device, says):
    assert generate_cli.main([str(lm_run), "The cast was", "--device", device]) == 1
    assert says in _one_error_line(capsys)
