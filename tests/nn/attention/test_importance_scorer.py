"""The importance scorer: its formula, float32 scores, compiled and fused
(Triton kernel, run on CPU by Triton's interpreter) forms."""
import copy
import importlib
import os

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from samsa_geo.nn.attention import ImportanceScorer, config


@pytest.fixture(scope='module')
def kernel():
    pytest.importorskip('triton')
    if os.environ.get('TRITON_INTERPRET') != '1':  # set by conftest.py
        pytest.skip('Triton interpreter not enabled (a GPU is present)')
    return importlib.import_module('samsa_geo.nn.attention._score_triton')


def _reference(scorer, x):
    # s = W (x + LN(MLP(x))) + b, everything in float64; x is LN_in(x)
    # with input_norm=True.
    ref = copy.deepcopy(scorer).double()
    x = x.double()
    if ref.norm_in is not None:
        mean, var = x.mean(-1, keepdim=True), x.var(-1, False, keepdim=True)
        x = (x - mean) / (var + ref.norm_in.eps).sqrt() \
            * ref.norm_in.weight + ref.norm_in.bias
    h = x + ref.norm(ref.score_nn(x))
    return h @ ref.lin.weight.t() + ref.lin.bias


@pytest.mark.parametrize('input_norm', [False, True])
def test_scores_match_the_formula(input_norm):
    torch.manual_seed(0)
    scorer = ImportanceScorer(16, heads=3, input_norm=input_norm)
    if input_norm:
        with torch.no_grad():  # away from the initial affine
            scorer.norm_in.weight.normal_(1.0, 0.3)
            scorer.norm_in.bias.normal_(0.0, 0.3)
    x = torch.randn(50, 16)
    out = scorer(x)
    assert out.shape == (50, 3) and out.dtype == torch.float32
    assert torch.allclose(out.double(), _reference(scorer, x), atol=1e-5)


def test_input_norm_scores_ignore_a_per_token_affine_map():
    # s(a_i x_i + b_i 1) = s(x_i) for a_i > 0 with input_norm=True; the
    # default scorer follows the tokens' scale.
    torch.manual_seed(0)
    x = torch.randn(50, 16)
    a, b = torch.rand(50, 1) * 4.0 + 0.5, torch.randn(50, 1)
    scorer = ImportanceScorer(16, heads=3, input_norm=True)
    assert torch.allclose(scorer(a * x + b), scorer(x), atol=1e-4)
    assert str(scorer) == 'ImportanceScorer(16, heads=3, input_norm=True)'
    scorer = ImportanceScorer(16, heads=3)
    assert not torch.allclose(scorer(a * x + b), scorer(x), atol=1e-1)
    with pytest.raises(TypeError, match="'input_norm' to be a bool"):
        ImportanceScorer(16, input_norm=1)


def test_scores_are_float32_under_bf16_autocast():
    torch.manual_seed(0)
    scorer = ImportanceScorer(16, heads=2)
    x = torch.randn(40, 16)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = scorer(x)
    assert out.dtype == torch.float32
    # Only the MLP runs in bf16: the scores stay close to float64's.
    ref = _reference(scorer, x)
    assert (out.double() - ref).abs().max() < 0.1 * ref.abs().max()


def test_compiled_scores_and_gradients_match_eager():
    torch.manual_seed(0)
    scorer = ImportanceScorer(32, heads=4)
    x = torch.randn(300, 32, requires_grad=True)
    ref = scorer(x)
    ref.square().sum().backward()
    ref_grads = [x.grad.clone()] + [p.grad.clone()
                                    for p in scorer.parameters()]
    x.grad = None
    scorer.zero_grad()
    out = torch.compile(scorer, fullgraph=True)(x)
    out.square().sum().backward()
    grads = [x.grad] + [p.grad for p in scorer.parameters()]
    assert torch.allclose(out, ref, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-4)


def _trained_like(C, H, seed=0):
    torch.manual_seed(seed)
    scorer = ImportanceScorer(C, heads=H)
    with torch.no_grad():  # away from the initial LayerNorm affine
        scorer.norm.weight.normal_(1.0, 0.3)
        scorer.norm.bias.normal_(0.0, 0.3)
    return scorer


@pytest.mark.parametrize('C,H,N', [(32, 4, 37), (48, 3, 16), (256, 8, 70),
                                   (16, 17, 5)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_kernel_matches_float64(kernel, C, H, N, dtype):
    # Any width (also not a power of two), heads beyond one block of 16,
    # row counts not a multiple of the row block, bf16 inputs.
    scorer = _trained_like(C, H)
    x = (torch.randn(N, C) * 2.0).to(dtype)
    y = torch.randn(N, C).to(dtype) * 3.0 + 1.0
    norm, lin = scorer.norm, scorer.lin
    out = kernel.importance_score_triton(y, x, norm.weight, norm.bias,
                                         norm.eps, lin.weight, lin.bias)
    h = x.double() + torch.nn.functional.layer_norm(
        y.double(), (C, ), norm.weight.double(), norm.bias.double(),
        norm.eps)
    ref = h @ lin.weight.double().t() + lin.bias.double()
    assert out.dtype == torch.float32 and out.shape == (N, H)
    assert torch.allclose(out.double(), ref, atol=1e-4, rtol=1e-5)


def _mlp_tail_reference(hidden, x, lin2, norm, lin, approximate):
    # The unfused inference formula in float64, with GELU(z) and y rounded
    # to z's dtype where F.gelu and F.linear write them.
    dtype = hidden.dtype
    a = F.gelu(hidden.double(), approximate=approximate).to(dtype).double()
    w2, b2 = lin2.weight.to(dtype).double(), lin2.bias.to(dtype).double()
    y = (a @ w2.t() + b2).to(dtype).double()
    h = x.double() + F.layer_norm(y, y.shape[-1:], norm.weight.double(),
                                  norm.bias.double(), norm.eps)
    return h @ lin.weight.double().t() + lin.bias.double()


@pytest.mark.parametrize('C,H,N', [(32, 4, 37), (48, 3, 16), (256, 8, 70)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('approximate', ['none', 'tanh'])
def test_kernel_runs_the_mlp_second_layer(kernel, C, H, N, dtype,
                                          approximate):
    # From the hidden layer z: s = W (x + LN(W2 GELU(z) + b2)) + b, equal
    # to the unfused formula (GELU and the linear layer in z's dtype) up
    # to float32 summation order; widths that are not a power of two, row
    # counts off the row block, both GELUs.
    scorer = _trained_like(C, H)
    lin2, norm, lin = scorer.score_nn[2], scorer.norm, scorer.lin
    hidden = (torch.randn(N, C) * 2.0).to(dtype)
    x = torch.randn(N, C) * 2.0
    out = kernel.importance_score_triton(
        hidden, x, norm.weight, norm.bias, norm.eps, lin.weight, lin.bias,
        lin2.weight.to(dtype), lin2.bias.to(dtype), approximate)
    ref = _mlp_tail_reference(hidden, x, lin2, norm, lin, approximate)
    assert out.dtype == torch.float32 and out.shape == (N, H)
    # bf16: a y entry may round to the neighbouring bf16 value (2^-8
    # relative) where the summation order differs.
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert torch.allclose(out.double(), ref, atol=tol, rtol=tol)
    other = 'tanh' if approximate == 'none' else 'none'
    wrong = _mlp_tail_reference(hidden, x, lin2, norm, lin, other)
    assert not torch.allclose(out.double(), wrong, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_kernel_products_with_the_projection_are_float32_accurate(
        kernel, dtype):
    # From 16-bit hidden rows the products of x and LN(y) with W run as
    # split products on the tensor cores: with W2 = 0 (y = b2, exact in
    # any dtype) the scores equal the float64 formula to about 2^-16.
    C, H, N = 96, 5, 40
    scorer = _trained_like(C, H)
    norm, lin = scorer.norm, scorer.lin
    b2 = (torch.randn(C) * 2.0).to(dtype)
    hidden = torch.randn(N, C).to(dtype)
    x = torch.randn(N, C) * 3.0
    out = kernel.importance_score_triton(
        hidden, x, norm.weight, norm.bias, norm.eps, lin.weight, lin.bias,
        torch.zeros(C, C, dtype=dtype), b2)
    h = x.double() + F.layer_norm(b2.double().expand(N, C), (C, ),
                                  norm.weight.double(), norm.bias.double(),
                                  norm.eps)
    ref = h @ lin.weight.double().t() + lin.bias.double()
    # Relative to the sum of the products' magnitudes: about 2^-16, where
    # bfloat16 products of the same rows are off by about 2^-11.
    scale = h.abs() @ lin.weight.double().abs().t()
    assert ((out.double() - ref).abs() / scale).max() < 3e-5
    plain = h.bfloat16().double() @ lin.weight.bfloat16().double().t()
    assert ((plain + lin.bias.double() - ref).abs() / scale).max() > 2e-4


def test_kernel_mlp_reads_strided_hidden_and_checks_arguments(kernel):
    scorer = _trained_like(32, 2)
    lin2, norm, lin = scorer.score_nn[2], scorer.norm, scorer.lin
    args = (norm.weight, norm.bias, norm.eps, lin.weight, lin.bias)
    both = torch.randn(20, 96)
    hidden, x = both[:, 32:64], both[:, :32]  # row stride 96
    out = kernel.importance_score_triton(hidden, x, *args, lin2.weight,
                                         lin2.bias)
    ref = kernel.importance_score_triton(hidden.contiguous(), x.contiguous(),
                                         *args, lin2.weight, lin2.bias)
    assert torch.equal(out, ref)
    assert kernel.importance_score_triton(hidden[:0], x[:0], *args,
                                          lin2.weight, lin2.bias).shape \
        == (0, 2)
    with pytest.raises(ValueError, match="'lin2_weight' and 'lin2_bias'"):
        kernel.importance_score_triton(hidden, x, *args, lin2.weight)
    with pytest.raises(ValueError, match=r"'lin2_weight' of shape \[32, 32\]"):
        kernel.importance_score_triton(hidden, x, *args, lin2.weight[:, :8],
                                       lin2.bias)
    with pytest.raises(ValueError, match="'approximate'"):
        kernel.importance_score_triton(hidden, x, *args, lin2.weight,
                                       lin2.bias, 'erf')
    with pytest.raises(TypeError, match="'y' in float32"):
        kernel.importance_score_triton(hidden.double(), x, *args,
                                       lin2.weight, lin2.bias)
    wide = torch.randn(3, 520)
    with pytest.raises(ValueError, match="at most 512 channels"):
        kernel.importance_score_triton(wide, wide, torch.ones(520),
                                       torch.zeros(520), 1e-5,
                                       torch.zeros(2, 520), torch.zeros(2),
                                       torch.zeros(520, 520),
                                       torch.zeros(520))


def test_kernel_reads_strided_rows_and_handles_empty(kernel):
    scorer = _trained_like(32, 2)
    norm, lin = scorer.norm, scorer.lin
    args = (norm.weight, norm.bias, norm.eps, lin.weight, lin.bias)
    both = torch.randn(20, 64)
    y, x = both[:, :32], both[:, 32:]  # row stride 64
    out = kernel.importance_score_triton(y, x, *args)
    ref = kernel.importance_score_triton(y.contiguous(), x.contiguous(),
                                         *args)
    assert torch.equal(out, ref)
    empty = kernel.importance_score_triton(y[:0], x[:0], *args)
    assert empty.shape == (0, 2)
    with pytest.raises(ValueError, match='heads'):
        kernel.importance_score_triton(
            y, x, norm.weight, norm.bias, norm.eps,
            torch.zeros(65, 32), torch.zeros(65))


def test_scorer_dispatches_to_the_kernel_in_inference(kernel, monkeypatch,
                                                      spy):
    # Inference (no gradient) on a device the kernels serve takes the
    # custom operator, eager and compiled without a graph break; a pass
    # that needs gradients takes the training node, whose forward runs the
    # same kernel; with the switch off, the PyTorch formula.
    import samsa_geo.nn.attention._score_grad as score_grad

    scorer = _trained_like(32, 4).eval()
    x = torch.randn(50, 32)
    ref = scorer(x)
    monkeypatch.setattr(score_grad, 'triton_serves', lambda device: True)
    calls = spy(kernel, 'importance_score_triton')
    with torch.no_grad():
        out = scorer(x)
        compiled = torch.compile(scorer, fullgraph=True)(x)
    assert len(calls) == 2
    # The activation and the second layer run in the kernel: it reads
    # the hidden layer and the second layer's weight.
    lin1, _, lin2 = scorer.score_nn
    assert torch.allclose(calls[0][0], F.linear(x, lin1.weight, lin1.bias))
    assert calls[0][7] is lin2.weight
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(compiled, ref, atol=1e-5)
    from samsa_geo.nn.attention import importance_scorer
    score_tail = spy(importance_scorer, 'score_tail', keep_args=False)
    scorer(x)  # the parameters need gradients
    assert len(calls) == 3 and len(score_tail) == 1
    with torch.no_grad(), config.attention_config(fused_scorer=False):
        scorer(x)
    assert len(calls) == 3


def test_input_norm_scorer_takes_the_kernel_under_autocast(
        kernel, monkeypatch, spy):
    # The kernel reads the normalised tokens (float32) next to the MLP's
    # bf16 rows and agrees with the PyTorch formula on the same rows.
    import samsa_geo.nn.attention._score_grad as score_grad

    scorer = ImportanceScorer(32, heads=4, input_norm=True).eval()
    x = torch.randn(50, 32) * 3.0
    monkeypatch.setattr(score_grad, 'triton_serves', lambda device: True)
    calls = spy(kernel, 'importance_score_triton')
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = scorer(x)
        with config.attention_config(fused_scorer=False):
            ref = scorer(x)
    assert len(calls) == 1
    hidden, x_hat = calls[0][:2]
    assert hidden.dtype == torch.bfloat16 and x_hat.dtype == torch.float32
    assert torch.allclose(out, ref, atol=2e-2)


@pytest.mark.parametrize('C,max_channels', [(520, 512), (32, 16)])
def test_scorer_runs_its_mlp_before_the_kernel_beyond_the_limits(
        kernel, monkeypatch, spy, C, max_channels):
    # Beyond SCORE_MLP_MAX_CHANNELS channels the kernel reads the MLP's
    # output; at the limit, the hidden rows (any number of rows).
    import samsa_geo.nn.attention._dispatch as dispatch
    import samsa_geo.nn.attention._score_grad as score_grad

    scorer = _trained_like(C, 2).eval()
    x = torch.randn(6, C)
    monkeypatch.setattr(score_grad, 'triton_serves', lambda device: True)
    monkeypatch.setattr(dispatch, 'SCORE_MLP_MAX_CHANNELS', max_channels)
    calls = spy(kernel, 'importance_score_triton')
    with torch.no_grad():
        out = scorer(x)
        with config.attention_config(fused_scorer=False):
            ref = scorer(x)
    assert len(calls) == 1 and len(calls[0]) == 7
    assert torch.allclose(calls[0][0], scorer.score_nn(x), atol=1e-5)
    assert torch.allclose(out, ref, atol=1e-4)
    if C <= 512:  # the kernel's own limit
        monkeypatch.setattr(dispatch, 'SCORE_MLP_MAX_CHANNELS', C)
        with torch.no_grad():
            assert torch.allclose(scorer(x), ref, atol=1e-4)
        assert len(calls) == 2 and len(calls[1]) == 10


def test_kernel_is_a_valid_custom_operator(kernel):
    scorer = _trained_like(32, 4)
    norm, lin = scorer.norm, scorer.lin
    y, x = torch.randn(30, 32), torch.randn(30, 32)
    op = torch.ops.samsa_geo.importance_score.default
    args = (y, x, norm.weight.detach(), norm.bias.detach(), norm.eps,
            lin.weight.detach(), lin.bias.detach())
    torch.library.opcheck(op, args)
    lin2 = scorer.score_nn[2]
    torch.library.opcheck(op, args + (lin2.weight.detach(),
                                      lin2.bias.detach(), 'tanh'))


def _formula_and_grads(scorer, x, hidden, autocast, plain):
    # Scores and gradients (x, hidden, every parameter) of one training
    # call; plain=True takes the PyTorch formula's autograd (as traced
    # graphs do) instead of the ScoreTail node.
    from samsa_geo.nn.attention import importance_scorer as module
    scorer = copy.deepcopy(scorer)
    x = x.detach().clone().requires_grad_()
    h = None if hidden is None else hidden.detach().clone().requires_grad_()
    tracing = module.is_tracing
    if plain:
        module.is_tracing = lambda: True
    try:
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            hid = h if h is None else h.to(torch.bfloat16) if autocast else h
            out = scorer(x, hid)
    finally:
        module.is_tracing = tracing
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * g).sum().backward()
    grads = [x.grad] + ([] if h is None else [h.grad]) + \
        [p.grad for p in scorer.parameters()]
    return out.detach(), grads


@pytest.mark.parametrize('autocast', [False, True])
@pytest.mark.parametrize('given_hidden,input_norm', [(False, False),
                                                     (True, False),
                                                     (False, True)])
def test_training_node_equals_the_formula(autocast, given_hidden,
                                          input_norm):
    # The ScoreTail node (eager training) against plain autograd of the
    # formula: equal scores, equal gradients (bf16 autocast: the bias of
    # the second layer is summed in float32 here, in bf16 by autograd).
    torch.manual_seed(0)
    scorer = ImportanceScorer(16, heads=3, input_norm=input_norm)
    for p in scorer.parameters():
        p.data.normal_(0, 0.5)
    x = torch.randn(40, 16)
    lin1 = scorer.score_nn[0]
    hidden = (x @ lin1.weight.t() + lin1.bias).detach() if given_hidden \
        else None
    out, grads = _formula_and_grads(scorer, x, hidden, autocast, False)
    ref, ref_grads = _formula_and_grads(scorer, x, hidden, autocast, True)
    assert torch.equal(out, ref)
    tol = 1e-2 if autocast else 1e-5
    for g, r in zip(grads, ref_grads):
        if r is None:  # the first layer's, where hidden is given
            assert g is None and given_hidden
            continue
        assert torch.allclose(g, r, rtol=tol, atol=tol * r.abs().max())


@pytest.mark.parametrize('input_norm', [False, True])
def test_training_node_backward_inside_autocast(input_norm):
    # A backward pass called inside the autocast region of its forward
    # (PyTorch advises against it, but its own ops allow it) gives the
    # gradients of one called after the region: the node's backward runs
    # outside autocast, as its forward does.
    torch.manual_seed(0)
    scorer = ImportanceScorer(16, heads=3, input_norm=input_norm)
    x = torch.randn(40, 16)
    grads = []
    for inside in (False, True):
        model, xg = copy.deepcopy(scorer), x.clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss = model(xg).square().sum()
            if inside:
                loss.backward()
        if not inside:
            loss.backward()
        grads.append([xg.grad] + [p.grad for p in model.parameters()])
    for g, ref in zip(*grads):
        assert g is not None and torch.equal(g, ref)


def test_training_node_saves_no_float32_activations():
    # Memory: of the per-token tensors the node keeps the tokens alone (and
    # its parameters), not the [N, C] float32 LayerNorm input or residual
    # sum, nor hidden, nor the LayerNorm's row statistics.
    torch.manual_seed(0)
    scorer = ImportanceScorer(32, heads=4)
    x = torch.randn(256, 32, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        scorer(x)
    rows = [t for t in saved if t.numel() > 0 and t.size(0) == 256]
    assert rows and {t.data_ptr() for t in rows} == {x.data_ptr()}


class _Casts(TorchDispatchMode):
    # The dtype casts dispatched (aten._to_copy).
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket.__name__ == '_to_copy'
        return func(*args, **(kwargs or {}))


def test_training_node_recomputes_hidden_from_the_callers_casts():
    # Given the cast input, weight and bias that computed hidden (which a
    # stacked projection keeps for its own backward), the node's backward
    # recomputes hidden without casting x, w1 and b1 again; the gradients
    # are the same.
    torch.manual_seed(0)
    scorer = ImportanceScorer(32, heads=4)
    lin1 = scorer.score_nn[0]
    x0 = torch.randn(64, 32)
    grads, casts = {}, {}
    for given in (False, True):
        scorer.zero_grad()
        x = x0.clone().requires_grad_()
        x_in = x.to(torch.bfloat16)
        w1, b1 = lin1.weight.to(torch.bfloat16), lin1.bias.to(torch.bfloat16)
        hidden = F.linear(x_in, w1, b1)
        out = scorer(x, hidden, lin1_inputs=(x_in, w1, b1) if given else None)
        with _Casts() as c:
            out.square().sum().backward()
        casts[given] = c.count
        grads[given] = [x.grad] + [p.grad for p in scorer.parameters()]
    assert casts[False] - casts[True] == 3
    for a, b in zip(grads[False], grads[True]):
        assert torch.equal(a, b)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('approximate', ['none', 'tanh'])
def test_gelu_kernel_matches_pytorch_on_strided_rows(kernel, dtype,
                                                     approximate):
    # A column slice of a stacked projection (row stride 3C, C not a
    # power of two): a new contiguous tensor equal to PyTorch's GELU up to
    # the dtype's rounding.
    stacked = (torch.randn(37, 3 * 40) * 3.0).to(dtype)
    z = stacked[:, 80:]
    out = kernel.gelu_triton(z, approximate)
    ref = F.gelu(z.float(), approximate=approximate)
    assert out.dtype == dtype and out.shape == (37, 40)
    assert out.is_contiguous()
    tol = 1e-6 if dtype == torch.float32 else 8e-3
    assert torch.allclose(out.float(), ref, rtol=tol, atol=tol)
    assert kernel.gelu_triton(z[:0]).shape == (0, 40)
    with pytest.raises(ValueError, match="'z' of shape"):
        kernel.gelu_triton(stacked[:, ::2])
    with pytest.raises(ValueError, match="'z' of shape"):
        kernel.gelu_triton(stacked[0])
    with pytest.raises(TypeError, match="'z' in float32"):
        kernel.gelu_triton(z.double())
    with pytest.raises(ValueError, match="'approximate'"):
        kernel.gelu_triton(z, 'fast')


def test_scorer_reads_strided_hidden_rows_through_the_gelu_kernel(
        kernel, monkeypatch, spy):
    # Beyond SCORE_MLP_MAX_CHANNELS, hidden rows sliced from a stacked
    # projection go through the GELU kernel and give the scores of the
    # PyTorch formula; contiguous rows, rows that need gradients and the
    # switch off keep PyTorch's GELU.
    import samsa_geo.nn.attention._dispatch as dispatch
    import samsa_geo.nn.attention._score_grad as score_grad

    scorer = _trained_like(32, 4).eval()
    lin1 = scorer.score_nn[0]
    x = torch.randn(50, 32)
    other = torch.randn(64, 32)
    with torch.no_grad():
        stacked = F.linear(x, torch.cat([other, lin1.weight]),
                           torch.cat([other.new_zeros(64), lin1.bias]))
    hidden = stacked[:, 64:]  # [50, 32], row stride 96
    monkeypatch.setattr(score_grad, 'triton_serves', lambda device: True)
    monkeypatch.setattr(dispatch, 'SCORE_MLP_MAX_CHANNELS', 16)
    calls = spy(kernel, 'gelu_triton')
    with torch.no_grad():
        out = scorer(x, hidden)
        with config.attention_config(fused_scorer=False):
            ref = scorer(x, hidden)
        assert len(calls) == 1 and calls[0][0] is hidden
        scorer(x, hidden.contiguous())
        assert len(calls) == 1
    assert torch.allclose(out, ref, atol=1e-4)
    assert torch.allclose(out, _reference(scorer, x).float(), atol=1e-4)
    assert score_grad.scorer_gelu(hidden.requires_grad_()).requires_grad
    assert len(calls) == 1
