"""The prediction loop: texts in, labels and class probabilities out.

Used by the classifier learner's ``predict`` and by ``python -m fastulm.predict``, so it
lives outside the trainer.
"""

from __future__ import annotations

from collections.abc import Sequence


def predict_labels(model, vocab, label_names, texts: Sequence[str], bs=64, backwards=False):
    """Tokenize like the corpus, classify, and name each text's most likely label."""
    from fastulm.generation import classify, encode_texts

    probs = classify(model, encode_texts(vocab, texts), bs=bs, backwards=backwards)
    names = label_names or [str(i) for i in range(probs.shape[1])]
    return [names[i] for i in probs.argmax(1).tolist()], probs
