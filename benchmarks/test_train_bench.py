"""The IMDB-sample recipe with the ``cpu`` preset: fastulm vs fastai 2.8.12, same run.

Both sides get the same data (the sample's 800 training / 200 validation reviews, the same
vocab), the same AWD-LSTM sizes (emb 64, hidden 256, 3 layers), dropouts, batch shapes and
stage-by-stage schedule: LM one frozen epoch at 1e-2 then four unfrozen at 3e-3 (validated
on the 200 held-out reviews), then the classifier's gradual unfreezing from 2e-2. Timed: the
fitting of both stages (data preparation and tokenization excluded on both sides). Reported:
wall time of each stage, final validation accuracy of the LM and the classifier, and the
classifier's accuracy on 2,084 of the archive's test reviews (untimed), for
fastulm in fp32 (like for like) and with bf16 autocast (``mixed_precision="bf16"``; fastai's
``MixedPrecision`` autocasts on CUDA only, so fastai has no CPU counterpart).

    python -m pytest benchmarks/test_train_bench.py -s -p no:cacheprovider

``FASTULM_BENCH_THREADS`` (default 1) sets torch's CPU threads for both sides; on a shared
2-core machine OpenMP threads waiting on each other dominate tiny LSTMs otherwise.
``FASTULM_BENCH_SEED`` (default 0) seeds both sides; ``FASTULM_BENCH_PRECISIONS`` (default
``fp32,bf16``) lists the fastulm runs (the first is pytest-benchmark's timed one).
"""

import os
import time

import pytest
import torch

from fastulm.tokenize import main as tokenize_main
from fastulm.train.presets import get_preset

THREADS = int(os.environ.get("FASTULM_BENCH_THREADS", "1"))
HELDOUT_EVERY = int(os.environ.get("FASTULM_BENCH_HELDOUT_EVERY", "12"))
SEED = int(os.environ.get("FASTULM_BENCH_SEED", "0"))  # both sides; accuracy moves with it
PRECISIONS = os.environ.get("FASTULM_BENCH_PRECISIONS", "fp32,bf16").split(",")
P = get_preset("cpu")


@pytest.fixture(scope="module")
def heldout(imdb_archive):
    """Every 12th review of the archive's test split (2,084 reviews neither side trains on).

    The sample's 200 validation reviews move a classifier's accuracy by +-3.5 points by
    chance alone (one review is half a point); this set narrows that to about +-1.
    """
    from fastulm.data.sources import open_source

    src = open_source(imdb_archive)
    names = {"neg": "negative", "pos": "positive"}  # the sample's label names
    test = [r for r in src.records() if r.split == "test"][::HELDOUT_EVERY]
    return [r.text for r in test], [names[src.label_names[r.label]] for r in test]


def _accuracy(predicted, truth):
    return sum(p == t for p, t in zip(predicted, truth)) / len(truth)


@pytest.fixture(scope="module")
def sample_corpus(imdb_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "corpus"
    argv = [str(imdb_sample / "texts.csv"), str(out), "--workers", "1", "--quiet"]
    assert tokenize_main(argv) == 0
    return out


def _fastulm(corpus_path, run_dir, heldout, precision="fp32"):
    import fastulm

    corpus = fastulm.open_corpus(corpus_path)
    kw = dict(P.model_kw(), path=run_dir, show_progress=False, moms=P.moms, wd=P.wd, seed=SEED)
    kw["mixed_precision"] = precision
    lm = fastulm.language_model_learner(
        corpus, drop_mult=P.lm.drop_mult, bs=P.lm.bs, bptt=P.lm.bptt, valid_split="valid", **kw
    )
    t0 = time.perf_counter()
    for st in P.lm.stages:
        lm.freeze_to(st.freeze_to)
        lm.fit_one_cycle(st.epochs, st.lr_arg())
    lm.save_encoder("enc")
    t_lm = time.perf_counter() - t0
    clas = fastulm.text_classifier_learner(
        corpus,
        drop_mult=P.clas.drop_mult,
        bs=P.clas.bs,
        bptt=P.clas.bptt,
        max_len=P.clas.max_len,
        **kw,
    )
    clas.load_encoder("enc")
    t0 = time.perf_counter()
    for st in P.clas.stages:
        clas.freeze_to(st.freeze_to)
        clas.fit_one_cycle(st.epochs, st.lr_arg())
    t_clas = time.perf_counter() - t0
    texts, labels = heldout
    return dict(
        lm_time=t_lm,
        clas_time=t_clas,
        lm_acc=lm.history["epochs"][-1]["accuracy"],
        clas_acc=clas.history["epochs"][-1]["accuracy"],
        heldout_acc=_accuracy(clas.predict_texts(texts)[0], labels),
    )


def _fastai(ft, imdb_sample, itos, run_dir, heldout):
    import pandas as pd

    ft.set_seed(SEED)
    df = pd.read_csv(imdb_sample / "texts.csv")
    sizes = P.model_kw()
    dls_lm = ft.TextDataLoaders.from_df(
        df,
        path=run_dir,
        text_col="text",
        label_col="label",
        valid_col="is_valid",
        is_lm=True,
        bs=P.lm.bs,
        seq_len=P.lm.bptt,
        text_vocab=itos,
    )
    lm = ft.language_model_learner(
        dls_lm,
        ft.AWD_LSTM,
        config={**ft.awd_lstm_lm_config, **sizes},
        drop_mult=P.lm.drop_mult,
        pretrained=False,
        metrics=[ft.accuracy],
        wd=P.wd,
    )
    t0 = time.perf_counter()
    with lm.no_bar():
        for st in P.lm.stages:
            lm.freeze_to(st.freeze_to)
            lm.fit_one_cycle(st.epochs, st.lr_arg(), moms=P.moms)
    lm.save_encoder("enc")
    t_lm = time.perf_counter() - t0
    lm_acc = float(lm.recorder.values[-1][2])
    dls = ft.TextDataLoaders.from_df(
        df,
        path=run_dir,
        text_col="text",
        label_col="label",
        valid_col="is_valid",
        text_vocab=dls_lm.vocab,
        bs=P.clas.bs,
        seq_len=P.clas.bptt,
    )
    clas = ft.text_classifier_learner(
        dls,
        ft.AWD_LSTM,
        config={**ft.awd_lstm_clas_config, **sizes},
        drop_mult=P.clas.drop_mult,
        pretrained=False,
        metrics=[ft.accuracy],
        wd=P.wd,
        seq_len=P.clas.bptt,
        max_len=P.clas.max_len,
    )
    clas.load_encoder("enc")
    t0 = time.perf_counter()
    with clas.no_bar():
        for st in P.clas.stages:
            clas.freeze_to(st.freeze_to)
            clas.fit_one_cycle(st.epochs, st.lr_arg(), moms=P.moms)
    t_clas = time.perf_counter() - t0
    clas_acc = float(clas.recorder.values[-1][2])  # read first: get_preds resets the recorder
    texts, labels = heldout
    with clas.no_bar():
        probs, _ = clas.get_preds(dl=clas.dls.test_dl(texts))
    names = clas.dls.vocab[1]
    return dict(
        lm_time=t_lm,
        clas_time=t_clas,
        lm_acc=lm_acc,
        clas_acc=clas_acc,
        heldout_acc=_accuracy([names[i] for i in probs.argmax(1).tolist()], labels),
    )


@pytest.mark.reference
@pytest.mark.slow
def test_sample_recipe_cpu_preset(
    benchmark, fastai_text, imdb_sample, sample_corpus, heldout, tmp_path
):
    from fastulm.data.corpus import open_corpus

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        itos = open_corpus(sample_corpus).vocab.itos
        ref = _fastai(fastai_text, imdb_sample, itos, tmp_path / "fastai", heldout)
        sides = [("fastai 2.8.12 (fp32)", "fastai", ref)]
        # fastai's MixedPrecision autocasts on CUDA only: on a CPU it has no bf16 to compare
        for i, precision in enumerate(PRECISIONS):
            args = (sample_corpus, tmp_path / precision, heldout, precision)
            if i == 0:  # the first fastulm run is pytest-benchmark's timed one
                r = benchmark.pedantic(_fastulm, args=args, rounds=1, iterations=1)
            else:
                r = _fastulm(*args)
            sides.append((f"fastulm {precision}", f"fastulm_{precision}", r))
    finally:
        torch.set_num_threads(before)
    for _, prefix, r in sides:
        benchmark.extra_info.update({f"{prefix}_{k}": v for k, v in r.items()})
    rows = [
        "| side | LM fit (s) | classifier fit (s) | total (s) | speed-up | LM valid acc | "
        f"classifier valid acc | classifier acc, {len(heldout[1])} test reviews |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ref_total = ref["lm_time"] + ref["clas_time"]
    for name, _, r in sides:
        total = r["lm_time"] + r["clas_time"]
        rows.append(
            f"| {name} | {r['lm_time']:.1f} | {r['clas_time']:.1f} | {total:.1f} | "
            f"{ref_total / total:.2f}x | {r['lm_acc']:.4f} | {r['clas_acc']:.4f} | "
            f"{r['heldout_acc']:.4f} |"
        )
    print("\n" + "\n".join(rows) + f"\n\nthreads {THREADS}, seed {SEED}")
    # sanity only (the figures are the result): every side learned something
    assert min(r["clas_acc"] for _, _, r in sides) > 0.55
