"""Tokenizer speed: fastulm vs the reference (fastai 2.8.12 rules + spaCy), same texts, same run.

Both run in this one process, one core, on the same texts; outputs are checked equal first.
"cold" builds a fresh tokenizer every round (fastulm's run table and spaCy's cache start
empty, as in a new worker process); "warm" reuses one (steady state of a long run).

    python -m pytest benchmarks/test_text_bench.py -s --benchmark-columns=min,mean,rounds
    FASTULM_BENCH_DOCS=20000 python -m pytest benchmarks/test_text_bench.py -s  # archive subset

The sample set is the 1,000 reviews of imdb_sample; the archive set (full_data) is
FASTULM_BENCH_DOCS reviews (default 10,000) drawn with a fixed seed from the 100k archive.
A summary (docs/s and the fastulm/fastai ratio) is printed at the end.
"""

import os
import random
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from fastulm.text import Tokenizer

N_ARCHIVE = int(os.environ.get("FASTULM_BENCH_DOCS", "10000"))
RESULTS: dict[tuple[str, str, str], float] = {}


@pytest.fixture(scope="module")
def sample_texts(imdb_sample):
    return pd.read_csv(imdb_sample / "texts.csv")["text"].tolist()


@pytest.fixture(scope="module")
def archive_texts(imdb_archive):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from compare_tokens import is_review

    with tarfile.open(imdb_archive, "r:gz") as tar:
        members = [m for m in tar if m.isfile() and is_review(m.name)]
        keep = {m.name for m in random.Random(0).sample(members, min(N_ARCHIVE, len(members)))}
        return [
            tar.extractfile(m).read().decode("utf-8", "replace") for m in members if m.name in keep
        ]


def fastai_tokenizer(fastai_text):
    tok = fastai_text.TokenizeWithRules(fastai_text.SpacyTokenizer())
    return lambda texts: [list(t) for t in tok(texts)]


def fastulm_tokenizer():
    tok = Tokenizer()

    def run(texts):
        out = []
        for s in range(0, len(texts), 1000):
            out.extend(tok.tokenize_batch(texts[s : s + 1000]))
        return out

    return run


def _bench(benchmark, name, make, texts, warm):
    shared = make() if warm else None
    if warm:
        shared(texts)  # fill the caches once

    def setup():
        return ((shared if warm else make(), texts), {})

    out = benchmark.pedantic(lambda tok, t: tok(t), setup=setup, rounds=3, iterations=1)
    docs_s = len(texts) / benchmark.stats.stats.min
    benchmark.extra_info["docs_per_s"] = round(docs_s, 1)
    benchmark.extra_info["tokens_per_s"] = round(sum(map(len, out)) / benchmark.stats.stats.min)
    return out, docs_s


def _run_pair(benchmark, impl, texts, fastai_text, label, warm):
    mode = "warm" if warm else "cold"
    if impl == "fastai":
        _, rate = _bench(benchmark, impl, lambda: fastai_tokenizer(fastai_text), texts, warm)
    else:
        ref = fastai_tokenizer(fastai_text)(texts[:300])
        assert fastulm_tokenizer()(texts[:300]) == ref
        _, rate = _bench(benchmark, impl, fastulm_tokenizer, texts, warm)
    RESULTS[(label, mode, impl)] = rate


@pytest.mark.reference
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
@pytest.mark.parametrize("impl", ["fastai", "fastulm"])
def test_sample(benchmark, impl, warm, sample_texts, fastai_text):
    benchmark.group = f"tokenize sample 1000 ({'warm' if warm else 'cold'})"
    _run_pair(benchmark, impl, sample_texts, fastai_text, "sample", warm)


@pytest.mark.reference
@pytest.mark.full_data
@pytest.mark.slow
@pytest.mark.parametrize("impl", ["fastai", "fastulm"])
def test_archive(benchmark, impl, archive_texts, fastai_text):
    benchmark.group = f"tokenize archive {len(archive_texts)} (cold)"
    _run_pair(benchmark, impl, archive_texts, fastai_text, f"archive {len(archive_texts)}", False)


def teardown_module(module):
    keys = sorted({(label, mode) for label, mode, _ in RESULTS})
    for label, mode in keys:
        a, b = RESULTS.get((label, mode, "fastai")), RESULTS.get((label, mode, "fastulm"))
        if a and b:
            print(
                f"\n{label} {mode}: fastai {a:,.0f} docs/s, fastulm {b:,.0f} docs/s, "
                f"ratio {b / a:.1f}x (one core)"
            )
