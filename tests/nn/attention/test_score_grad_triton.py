"""The backward kernel of the importance scorer's float32 tail (run on CPU
by Triton's interpreter, compiled on a GPU) against autograd of the
formula in float64, and the training node taking it."""
import copy

import pytest
import torch
import torch.nn.functional as F

from samsa_geo.nn.attention import ImportanceScorer, config


@pytest.fixture(scope='module')
def kernel(triton_modules):
    return triton_modules('samsa_geo.nn.attention._score_grad_triton')


def _reference(y, x, grad, weight, ln_weight, ln_bias, eps):
    # Autograd of s = W (x + LN(y)) in float64.
    leaves = [t.detach().double().requires_grad_()
              for t in (y, x, weight, ln_weight, ln_bias)]
    y, x, weight, ln_weight, ln_bias = leaves
    C = y.size(-1)
    s = (x + F.layer_norm(y, [C], ln_weight, ln_bias, eps)) @ weight.t()
    s.backward(grad.double())
    return [t.grad for t in leaves]


@pytest.mark.parametrize('N,C,H', [(37, 32, 4), (70, 48, 3), (100, 256, 8),
                                   (5, 16, 17)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_kernel_matches_float64_autograd(kernel, N, C, H, dtype):
    # Widths not a power of two, heads beyond one block of 16, rows not a
    # multiple of the row block and more blocks than programs, bf16 rows.
    y = (torch.randn(N, C) * 3.0 + 1.0).to(dtype)
    x = torch.randn(N, C).to(dtype)
    grad = torch.randn(N, H)
    weight, ln_weight, ln_bias = torch.randn(H, C), torch.randn(C), \
        torch.randn(C)
    g_x, g_y, g_w, g_lnw, g_lnb, g_b2 = kernel.score_tail_backward_triton(
        y, x, grad, weight, ln_weight, ln_bias, 1e-5)
    r_y, r_x, r_w, r_lnw, r_lnb = _reference(y, x, grad, weight, ln_weight,
                                             ln_bias, 1e-5)
    assert g_x.dtype == g_y.dtype == dtype
    assert g_x.shape == g_y.shape == (N, C) and g_w.shape == (H, C)
    # The [N, C] gradients are rounded to dtype once; the sums over the
    # tokens stay float32.
    rows = 1e-5 if dtype == torch.float32 else 8e-3
    for got, ref, tol in ((g_x, r_x, rows), (g_y, r_y, rows),
                          (g_w, r_w, 1e-5), (g_lnw, r_lnw, 1e-5),
                          (g_lnb, r_lnb, 1e-5), (g_b2, r_y.sum(0), 1e-4)):
        scale = ref.abs().max().item()
        assert torch.allclose(got.double(), ref, rtol=tol, atol=tol * scale)


def test_kernel_reads_strided_rows_and_handles_empty(kernel):
    N, C, H = 33, 24, 2
    y, x = torch.randn(N, 2 * C)[:, ::2], torch.randn(N, C + 5)[:, :C]
    grad = torch.randn(N, H + 1)[:, :H]
    args = (torch.randn(H, C), torch.rand(C) + 0.5, torch.randn(C), 1e-5)
    got = kernel.score_tail_backward_triton(y, x, grad, *args)
    ref = kernel.score_tail_backward_triton(y.contiguous(), x.contiguous(),
                                            grad.contiguous(), *args)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    empty = kernel.score_tail_backward_triton(
        torch.randn(0, C), torch.randn(0, C), torch.randn(0, H), *args)
    assert empty[0].shape == (0, C) and empty[1].shape == (0, C)
    for g in empty[2:]:
        assert torch.equal(g, torch.zeros_like(g))


def test_kernel_checks_shapes(kernel):
    args = (torch.randn(2, 8), torch.ones(8), torch.zeros(8), 1e-5)
    with pytest.raises(ValueError, match="'y' and 'x'"):
        kernel.score_tail_backward_triton(torch.randn(4, 8),
                                          torch.randn(4, 9),
                                          torch.randn(4, 2), *args)
    with pytest.raises(ValueError, match='at most 512 channels'):
        kernel.score_tail_backward_triton(torch.randn(4, 513),
                                          torch.randn(4, 513),
                                          torch.randn(4, 2),
                                          torch.randn(2, 513),
                                          torch.ones(513), torch.zeros(513),
                                          1e-5)
    with pytest.raises(ValueError, match="'grad' of shape \\[4, 2\\]"):
        kernel.score_tail_backward_triton(torch.randn(4, 8),
                                          torch.randn(4, 8),
                                          torch.randn(4, 3), *args)


def _scores_and_grads(scorer, x, autocast):
    scorer = copy.deepcopy(scorer)
    x = x.detach().clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        out = scorer(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * g).sum().backward()
    return out.detach(), [x.grad] + [p.grad for p in scorer.parameters()]


@pytest.mark.parametrize('autocast', [False, True])
@pytest.mark.parametrize('from_hidden', [True, False])
@pytest.mark.parametrize('input_norm', [False, True])
def test_training_node_takes_the_kernels(kernel, monkeypatch, spy, autocast,
                                         from_hidden, input_norm):
    # Where the kernels serve (CUDA; here forced onto the interpreter), the
    # training node's forward runs the inference kernel (from the hidden
    # rows, or beyond SCORE_MLP_MAX_CHANNELS from the second layer's
    # output) and its backward the tail's kernel: scores and every gradient
    # equal those of the node's PyTorch path.
    # _score_triton binds SCORE_MLP_MAX_CHANNELS when first imported:
    # imported here before the bound is patched below.
    from samsa_geo.nn.attention import _dispatch, _score_grad, _score_triton
    assert (_score_triton.SCORE_MLP_MAX_CHANNELS
            == _dispatch.SCORE_MLP_MAX_CHANNELS)
    torch.manual_seed(0)
    scorer = ImportanceScorer(48, heads=5, input_norm=input_norm)
    for p in scorer.parameters():
        p.data.normal_(0, 0.5)
    x = torch.randn(70, 48)
    ref, ref_grads = _scores_and_grads(scorer, x, autocast)
    monkeypatch.setattr(_score_grad, 'triton_serves', lambda device: True)
    if not from_hidden:
        monkeypatch.setattr(_dispatch, 'SCORE_MLP_MAX_CHANNELS', 32)
    backward = spy(kernel, 'score_tail_backward_triton')
    out, grads = _scores_and_grads(scorer, x, autocast)
    assert len(backward) == 1
    # Under bf16 autocast the second layer's bf16 output may round the
    # other way (another summation order).
    tol = 1e-2 if autocast else 1e-5
    assert torch.allclose(out, ref, rtol=tol, atol=tol * ref.abs().max())
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=tol, atol=tol * r.abs().max())
    with config.attention_config(fused_scorer=False):  # the switch
        _scores_and_grads(scorer, x, autocast)
    assert len(backward) == 1


def test_training_node_keeps_pytorch_beyond_the_kernel_width(
        kernel, monkeypatch, spy):
    # Wider than SCORE_GRAD_MAX_CHANNELS: PyTorch's ops, forward and
    # backward, where the kernels would otherwise serve.
    from samsa_geo.nn.attention import _score_grad, _score_triton
    monkeypatch.setattr(_score_grad, 'triton_serves', lambda device: True)
    forward = spy(_score_triton, 'importance_score_triton')
    backward = spy(kernel, 'score_tail_backward_triton')
    scorer = ImportanceScorer(520, heads=2)
    out, grads = _scores_and_grads(scorer, torch.randn(8, 520), False)
    assert not forward and not backward
    assert out.shape == (8, 2) and all(g is not None for g in grads)
