"""~1,500 reviews drawn from the full archive (train/test/unsup), tokenized by fastai too."""

import random
import sys
import tarfile
from pathlib import Path

import pytest

from fastulm.text import tokenize_texts

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from compare_tokens import is_review

N_DOCS = 1500


@pytest.mark.full_data
@pytest.mark.reference
@pytest.mark.slow
def test_archive_reviews_match_fastai(imdb_archive, fastai_text):
    with tarfile.open(imdb_archive, "r:gz") as tar:
        members = [m for m in tar if m.isfile() and is_review(m.name)]
        picked = {m.name for m in random.Random(2024).sample(members, N_DOCS)}
        docs = [
            (m.name, tar.extractfile(m).read().decode("utf-8", "replace"))
            for m in members
            if m.name in picked
        ]
    splits = {name.split("/")[2] if "unsup" in name else name.split("/")[1] for name, _ in docs}
    assert {"train", "test", "unsup"} <= splits
    texts = [t for _, t in docs]
    ref = fastai_text.TokenizeWithRules(fastai_text.SpacyTokenizer())
    expected = [list(t) for t in ref(texts)]
    got = tokenize_texts(texts)
    bad = [docs[i][0] for i in range(len(docs)) if got[i] != expected[i]]
    assert not bad, f"{len(bad)}/{len(docs)} differ: {bad[:5]}"
