"""linear_cross_entropy against the unfused F.linear + F.cross_entropy, chunk by chunk."""

import pytest
import torch
from fastulm.kernels import linear_cross_entropy
from fastulm.kernels.linear_ce import chunk_rows_for, linear_cross_entropy_reference
from kernel_helpers import REL_TOL, backend_fixture, device_fixture, rel_err  # noqa: F401

# (N, D, V, chunk_rows, ignored rows)
CASES = {
    "odd_sizes": (37, 19, 53, 8, [3, 10]),
    "one_chunk": (12, 16, 40, 64, []),
    "row_chunks": (9, 7, 33, 1, [0]),
    "single_row": (1, 5, 11, 4, []),
    "mostly_ignored": (10, 6, 17, 3, [0, 1, 2, 3, 4, 5, 6, 8]),
    "wide_vocab": (6, 8, 9000, 4, [2]),  # more than one vocab block per row in the kernel
}


def make_case(name, dtype, device, bias):
    N, D, V, chunk, ignored = CASES[name]
    torch.manual_seed(0)
    x = (torch.randn(N, D) * 0.5).to(device=device, dtype=dtype).requires_grad_()
    w = (torch.randn(V, D) * 0.5).to(device=device, dtype=dtype).requires_grad_()
    b = (torch.randn(V) * 0.1).to(device=device, dtype=dtype).requires_grad_() if bias else None
    target = torch.randint(0, V, (N,))
    target[ignored] = -100
    # plant a few sure hits so n_correct is not trivially zero
    with torch.no_grad():
        for i in range(0, N, 3):
            if target[i] >= 0:
                w[target[i]] += 4 * x[i] / x[i].norm()
    return x, w, b, target.to(device), chunk


def params(x, w, b):
    return [x, w] + ([b] if b is not None else [])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case, dtype, bias, backend, device):
    x, w, b, target, chunk = make_case(case, dtype, device, bias)
    loss, n_correct = linear_cross_entropy(x, w, b, target, chunk_rows=chunk)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert n_correct.dtype == torch.int64 and n_correct.shape == ()
    grads = torch.autograd.grad(loss * 1.7, params(x, w, b))
    # reference: the unfused formula in fp32 on the same (rounded) inputs
    ref_in = [t.detach().float().requires_grad_() if t is not None else None for t in (x, w, b)]
    ref_loss, ref_correct = linear_cross_entropy_reference(*ref_in, target)
    ref_grads = torch.autograd.grad(ref_loss * 1.7, params(*ref_in))
    tol = REL_TOL[dtype]
    assert abs(loss.item() - ref_loss.item()) <= tol * abs(ref_loss.item()) + 1e-6
    for g, gr in zip(grads, ref_grads):
        assert g.dtype == dtype
        assert rel_err(g, gr) <= 2 * tol
    if dtype == torch.float32:
        assert n_correct.item() == ref_correct.item()
    else:  # argmax on low-precision logits: compare with the unfused formula in that dtype
        _, low_correct = linear_cross_entropy_reference(x.detach(), w.detach(), b, target)
        assert abs(n_correct.item() - low_correct.item()) <= 1
    assert n_correct.item() > 0


def test_all_ignored_gives_nan_like_torch(backend):
    x, w, b, target, chunk = make_case("odd_sizes", torch.float32, "cpu", True)
    target = torch.full_like(target, -100)
    loss, n_correct = linear_cross_entropy(x, w, b, target, chunk_rows=chunk)
    ref_loss, _ = linear_cross_entropy_reference(x, w, b, target)
    assert torch.isnan(loss) and torch.isnan(ref_loss) and n_correct.item() == 0
    grads = torch.autograd.grad(loss.nan_to_num(0.0), params(x, w, b))
    assert all((g == 0).all() for g in grads)


def test_empty_batch_gives_nan_like_torch(backend):
    x = torch.randn(0, 6, requires_grad=True)
    w = torch.randn(11, 6, requires_grad=True)
    target = torch.zeros(0, dtype=torch.long)
    loss, n_correct = linear_cross_entropy(x, w, None, target)
    ref, _ = linear_cross_entropy_reference(x, w, None, target)
    assert torch.isnan(loss) and torch.isnan(ref) and n_correct.item() == 0


def test_custom_ignore_index(backend):
    x, w, b, target, chunk = make_case("odd_sizes", torch.float32, "cpu", False)
    target[target == -100] = 7
    target[5] = 7
    loss, _ = linear_cross_entropy(x, w, b, target, ignore_index=7, chunk_rows=chunk)
    ref, _ = linear_cross_entropy_reference(x, w, b, target, ignore_index=7)
    torch.testing.assert_close(loss, ref)


def test_bad_target_raises(backend):
    x, w, b, target, chunk = make_case("odd_sizes", torch.float32, "cpu", True)
    target[4] = w.shape[0]
    with pytest.raises(ValueError, match=r"target 53 outside \[0, 53\)"):
        linear_cross_entropy(x, w, b, target, chunk_rows=chunk)
    with pytest.raises(ValueError, match="do not fit"):
        linear_cross_entropy(x, w[:, :-1], b, target.clamp(0, 10), chunk_rows=chunk)


def test_no_grad_computes_no_gradients(backend):
    x, w, b, target, chunk = make_case("odd_sizes", torch.float32, "cpu", True)
    with torch.no_grad():
        loss, n_correct = linear_cross_entropy(x, w, b, target, chunk_rows=chunk)
    ref_loss, ref_correct = linear_cross_entropy_reference(x, w, b, target)
    torch.testing.assert_close(loss, ref_loss)
    assert n_correct.item() == ref_correct.item()
    outs = torch.ops.fastulm.linear_cross_entropy(x, w, b, target, -100, False, chunk)
    assert all(t.numel() == 0 for t in outs[2:])


def test_ties_and_extreme_logits(backend):
    """First maximum wins on ties; targets far below the maximum keep an exact loss."""
    V, D = 12, 4
    w = torch.zeros(V, D)
    w[2, 0] = w[5, 0] = 1.0  # columns 2 and 5 tie for the maximum when x[:, 0] > 0
    w[7, 1] = 1.0
    x = torch.tensor(
        [
            [3.0, 0.0, 0.0, 0.0],  # tie 2/5, target 2: right (first maximum)
            [3.0, 0.0, 0.0, 0.0],  # tie 2/5, target 5: wrong
            [0.0, 400.0, 0.0, 0.0],  # target 0 is 400 nats below column 7: p_t underflows
            [0.0, -400.0, 0.0, 0.0],  # column 7 far below the rest, target 7
        ],
        requires_grad=True,
    )
    target = torch.tensor([2, 5, 0, 7])
    rows, ref_rows = [], []
    for i in range(4):
        loss, n_correct = linear_cross_entropy(x[i : i + 1], w, None, target[i : i + 1])
        rows.append((loss.item(), n_correct.item()))
        ref_loss = torch.nn.functional.cross_entropy(x[i : i + 1] @ w.t(), target[i : i + 1])
        ref_rows.append(ref_loss.item())
    assert [c for _, c in rows] == [1, 0, 0, 0]
    assert rows[2][0] == pytest.approx(400.0, rel=1e-6)
    assert [r for r, _ in rows] == pytest.approx(ref_rows, rel=1e-6)
    loss, _ = linear_cross_entropy(x, w, None, target, chunk_rows=3)
    grad = torch.autograd.grad(loss, x)[0]
    ref = torch.autograd.grad(torch.nn.functional.cross_entropy(x @ w.t(), target), x)[0]
    torch.testing.assert_close(grad, ref)


def test_chunk_size_budget(monkeypatch):
    monkeypatch.setenv("FASTULM_CE_CHUNK_MB", "128")
    assert chunk_rows_for(60000) == 128 * 2**20 // (4 * 60000)
    monkeypatch.setenv("FASTULM_CE_CHUNK_MB", "0.001")
    assert chunk_rows_for(60000) == 1
    monkeypatch.delenv("FASTULM_CE_CHUNK_MB")
    assert chunk_rows_for(60000) == 64 * 2**20 // (4 * 60000)
    assert chunk_rows_for(60000, "cpu") == 4 * 2**20 // (4 * 60000)
    assert chunk_rows_for(9624, "cpu", 64) == 128  # 2 * 64 rows beat the 108 of the budget
    assert chunk_rows_for(60000, "cpu", 400) == 64 * 2**20 // (4 * 60000)  # 2 * dim, <= 64 MB
    assert chunk_rows_for(30000, "cpu", 100) == 200
    assert chunk_rows_for(60000, "cuda", 400) == 64 * 2**20 // (4 * 60000)


def test_opcheck(backend, device):
    x, w, b, target, chunk = make_case("odd_sizes", torch.float32, device, True)
    op = torch.ops.fastulm.linear_cross_entropy.default
    torch.library.opcheck(op, (x, w, b, target, -100, True, chunk))
    torch.library.opcheck(op, (x, w, None, target, -100, True, chunk))
    with torch.no_grad():
        torch.library.opcheck(op, (x.detach(), w.detach(), None, target, -100, False, chunk))


def test_torch_compile(backend, device):
    x, w, b, target, chunk = make_case("odd_sizes", torch.float32, device, True)

    def f(x, w, b):
        loss, n_correct = linear_cross_entropy(torch.tanh(x), w, b, target, chunk_rows=chunk)
        return loss, n_correct

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss, n_correct = compiled(x, w, b)
    grads = torch.autograd.grad(loss, [x, w, b])
    ref, ref_correct = f(x, w, b)
    ref_grads = torch.autograd.grad(ref, [x, w, b])
    torch.testing.assert_close(loss, ref)
    assert n_correct.item() == ref_correct.item()
    for g, gr in zip(grads, ref_grads):
        torch.testing.assert_close(g, gr)


def test_autocast_bf16(backend, device):
    """Under autocast the matmuls run in bf16 and the softmax in fp32, as autocast does for
    linear + cross_entropy; fp32 master weights get fp32 gradients."""
    x, w, b, target, chunk = make_case("odd_sizes", torch.float32, device, True)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss, _ = linear_cross_entropy(x, w, b, target, chunk_rows=chunk)
        ref, _ = linear_cross_entropy_reference(x, w, b, target)
    assert loss.dtype == torch.float32
    grads = torch.autograd.grad(loss, [x, w, b])
    ref_grads = torch.autograd.grad(ref, [x, w, b])
    assert abs(loss.item() - ref.item()) <= 1e-2 * ref.item()
    for g, gr in zip(grads, ref_grads):
        assert g.dtype == torch.float32
        assert rel_err(g, gr) <= 3e-2


def test_second_backward_fails_loudly(backend):
    """In eager mode the saved gradients are scaled in place (one [V, D] buffer fewer): a
    retained graph cannot be reused silently, autograd's version check stops it."""
    x, w, b, target, chunk = make_case("odd_sizes", torch.float32, "cpu", True)
    loss, _ = linear_cross_entropy(x, w, b, target, chunk_rows=chunk)
    torch.autograd.grad(loss * 3.0, [x, w, b], retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(loss * 3.0, [x, w, b])


def test_autocast_fp16_with_grad_scaler(backend):
    """fp16 autocast + GradScaler: the scaled loss's gradient flows through the saved
    gradients, and the unscaled gradients match the reference."""
    x, w, b, target, chunk = make_case("odd_sizes", torch.float32, "cpu", True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    with torch.autocast("cpu", dtype=torch.float16):
        loss, _ = linear_cross_entropy(x, w, b, target, chunk_rows=chunk)
    scaler.scale(loss).backward()
    grads = [t.grad / scaler.get_scale() for t in (x, w, b)]
    ref, _ = linear_cross_entropy_reference(x, w, b, target)
    ref_grads = torch.autograd.grad(ref, [x, w, b])
    for g, gr in zip(grads, ref_grads):
        assert rel_err(g, gr) <= 5e-3


def test_float64_torch_path_is_fp64_throughout(monkeypatch):
    """fp64 inputs keep fp64 sums (loss, gradients) on the torch path."""
    monkeypatch.setenv("FASTULM_KERNELS", "torch")
    x, w, b, target, chunk = make_case("odd_sizes", torch.float64, "cpu", True)
    loss, n_correct = linear_cross_entropy(x, w, b, target, chunk_rows=chunk)
    ref_loss, ref_correct = linear_cross_entropy_reference(x, w, b, target)
    assert loss.dtype == torch.float64
    assert abs(loss.item() - ref_loss.item()) <= 1e-12 * abs(ref_loss.item())
    assert n_correct.item() == ref_correct.item()
    grads = torch.autograd.grad(loss, (x, w, b))
    ref_grads = torch.autograd.grad(ref_loss, (x, w, b))
    for g, gr in zip(grads, ref_grads):
        assert g.dtype == torch.float64 and rel_err(g, gr) <= 1e-12
