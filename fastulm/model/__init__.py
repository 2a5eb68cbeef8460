"""The AWD-LSTM model family: encoder, language model, classifier, weight I/O."""

from fastulm.model.awd_lstm import AWDLSTM, WeightDropLSTM
from fastulm.model.classifier import ClassifierOutput, TextClassifier, get_classifier
from fastulm.model.config import AWDLSTMConfig
from fastulm.model.lm import LanguageModel, LMLoss, LMOutput, get_language_model

__all__ = [
    "AWDLSTM",
    "AWDLSTMConfig",
    "ClassifierOutput",
    "LMLoss",
    "LMOutput",
    "LanguageModel",
    "TextClassifier",
    "WeightDropLSTM",
    "get_classifier",
    "get_language_model",
]
