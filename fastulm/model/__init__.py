"""The AWD-LSTM model family: encoder, language model, classifier, weight I/O."""

from fastulm.model.awd_lstm import AWDLSTM, WeightDropLSTM
from fastulm.model.batchnorm import GlobalBatchNorm1d
from fastulm.model.classifier import ClassifierOutput, TextClassifier, get_classifier
from fastulm.model.config import AWDLSTMConfig
from fastulm.model.encoder_io import EncoderMismatchError, load_encoder, save_encoder
from fastulm.model.lm import LanguageModel, LMLoss, LMOutput, get_language_model
from fastulm.model.pretrained import PretrainedFormatError, load_itos, load_pretrained

__all__ = [
    "AWDLSTM",
    "AWDLSTMConfig",
    "ClassifierOutput",
    "EncoderMismatchError",
    "GlobalBatchNorm1d",
    "LMLoss",
    "LMOutput",
    "LanguageModel",
    "PretrainedFormatError",
    "TextClassifier",
    "WeightDropLSTM",
    "get_classifier",
    "get_language_model",
    "load_encoder",
    "load_itos",
    "load_pretrained",
    "save_encoder",
]
