"""Mixed precision: bf16 autocast on the CPU (oneDNN LSTM), bf16/fp16 on CUDA."""

import pytest
import torch

from fastulm.model import get_classifier, get_language_model
from fastulm_testkit import cpu_bf16_lstm_ok

V = 50
SMALL = dict(emb_sz=16, n_hid=24)


needs_cpu_bf16 = pytest.mark.skipif(not cpu_bf16_lstm_ok(), reason="no bf16 LSTM on this CPU")


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(
        a.flatten().float(), b.flatten().float(), dim=0
    ).item()


@needs_cpu_bf16
def test_lm_bf16_autocast_cpu_matches_fp32():
    torch.manual_seed(0)
    lm = get_language_model(V, drop_mult=0.0, **SMALL).train()
    x, y = torch.randint(0, V, (4, 10)), torch.randint(0, V, (4, 10))
    lm.reset()
    ref = lm.loss(x, y)
    ref.loss.backward()
    g_ref = {n: p.grad.clone() for n, p in lm.named_parameters()}
    lm.zero_grad()
    lm.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = lm.loss(x, y)
    assert res.raw.dtype == torch.bfloat16  # the LSTM really ran in bf16
    assert res.loss.dtype == torch.float32
    assert res.loss.item() == pytest.approx(ref.loss.item(), rel=2e-2)
    res.loss.backward()
    for n, p in lm.named_parameters():
        assert p.grad.dtype == torch.float32
        assert _cos(p.grad, g_ref[n]) > 0.98, n
    # the carried state is kept in the parameters' dtype, so fp32 can follow bf16
    assert all(t.dtype == torch.float32 for hc in lm.body.hidden for t in hc)
    lm(x)


@needs_cpu_bf16
def test_classifier_bf16_autocast_cpu_matches_fp32():
    torch.manual_seed(0)
    clf = get_classifier(V, 3, bptt=4, **SMALL).eval()
    x = torch.randint(2, V, (3, 14))
    x[1, :4] = 1
    with torch.no_grad():
        ref = clf(x).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = clf(x)
    assert out.raw.dtype == torch.bfloat16
    assert out.logits.dtype == torch.float32
    torch.testing.assert_close(out.logits, ref, atol=5e-2, rtol=5e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_train_step(dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    torch.manual_seed(0)
    lm = get_language_model(V, **SMALL).cuda().train()
    clf = get_classifier(V, 3, bptt=4, checkpoint=True, **SMALL).cuda().train()
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    x = torch.randint(2, V, (4, 14), device="cuda")
    y = torch.tensor([0, 1, 2, 0], device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        loss = lm.loss(x, x.roll(-1, 1)).loss + torch.nn.functional.cross_entropy(clf(x).logits, y)
    scaler.scale(loss).backward()
    assert torch.isfinite(loss)
    for p in [*lm.parameters(), *clf.parameters()]:
        assert p.grad is None or torch.isfinite(p.grad).all()
