"""CUDA-only checks (run when a GPU is lent): cuDNN gets one weight buffer, CPU parity."""

import warnings

import pytest
import torch

from fastulm.model import get_classifier, get_language_model

V = 50
SMALL = dict(emb_sz=16, n_hid=24)
pytestmark = pytest.mark.gpu


def test_cudnn_weights_need_no_compaction_warning():
    """The dropped weight reaches cuDNN inside one buffer: no 'not part of single contiguous
    chunk of memory' warning, in train and eval mode, with no warning filter in the model."""
    torch.manual_seed(0)
    lm = get_language_model(V, **SMALL).cuda()
    x = torch.randint(0, V, (4, 9), device="cuda")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*single contiguous chunk of memory.*")
        lm.train()
        lm.loss(x, x.roll(-1, 1)).loss.backward()
        lm.eval()
        with torch.no_grad():
            lm(x)


def test_cuda_outputs_equal_cpu():
    torch.manual_seed(0)
    lm = get_language_model(V, **SMALL).eval()
    clf = get_classifier(V, 3, bptt=4, **SMALL).eval()
    x = torch.randint(2, V, (3, 13))
    x[1, :4] = 1
    with torch.no_grad():
        ref_lm, ref_clf = lm(x).logits, clf(x).logits
        lm.cuda().reset()
        got_lm = lm(x.cuda()).logits.cpu()
        got_clf = clf.cuda()(x.cuda()).logits.cpu()
    torch.testing.assert_close(got_lm, ref_lm, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_clf, ref_clf, atol=1e-4, rtol=1e-4)
