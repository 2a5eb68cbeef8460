"""Training: the Learner loop and the walkthrough's two text learners.

Imported lazily, so ``python -m fastulm.train --help`` answers without loading torch.
"""

from importlib import import_module
from typing import Any

_API = {
    "Learner": "fastulm.train.learner",
    "TimeLimitReached": "fastulm.train.learner",
    "TrainingError": "fastulm.train.learner",
    "ClassifierLearner": "fastulm.train.text_learners",
    "LMLearner": "fastulm.train.text_learners",
    "language_model_learner": "fastulm.train.text_learners",
    "text_classifier_learner": "fastulm.train.text_learners",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'fastulm.train' has no attribute {name!r}")
