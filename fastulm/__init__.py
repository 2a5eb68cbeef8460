"""fastulm: fast, memory-lean ULMFiT.

The public API is imported lazily so that ``import fastulm`` (and the tokenizer CLI) does
not pay for torch unless a model is used.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "tokenize_texts": "fastulm.text",
    "open_corpus": "fastulm.data.corpus",
    "tokenize_df": "fastulm.data.frame",
    "AWDLSTMConfig": "fastulm.model",
    "get_language_model": "fastulm.model",
    "get_classifier": "fastulm.model",
    "load_pretrained": "fastulm.model",
    "language_model_learner": "fastulm.train",
    "text_classifier_learner": "fastulm.train",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'fastulm' has no attribute {name!r}")
