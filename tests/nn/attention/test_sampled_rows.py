"""The general path projects keys and values of the sampled rows alone
(project_rows) where they are at most half the tokens, from
SAMPLED_ROWS_MIN_TOKENS tokens: in evaluation the rows of the top set, in
training those of the top and bottom sets that the relaxation reads. The
outputs, and in training every gradient, equal those of projecting every
token and gathering."""
import pytest
import torch
import torch.nn.functional as F

from samsa_geo.nn import SamsaAttention
from samsa_geo.nn.attention import _relax, config, samsa_attention
from samsa_geo.nn.attention._sampling import gather_rows, project_rows
from samsa_geo.ops import value_checks
from samsa_geo.testing import autograd_node_kinds


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('B,H,K', [(1, 4, 6), (3, 2, 5)])
def test_project_rows_equals_projecting_every_row(dtype, B, H, K):
    torch.manual_seed(0)
    M, C, F_ = 40, 12, 6
    x = torch.randn(M, C, dtype=dtype)
    weight = torch.randn(H * F_, C, dtype=dtype)
    bias = torch.randn(H * F_, dtype=dtype)
    ids = torch.randint(0, M, (B, H, K))
    head = torch.arange(H).view(1, H, 1)
    want = gather_rows(F.linear(x, weight, bias).view(M, H, F_), ids, head,
                       False)
    got = project_rows(ids, x, weight, bias)
    assert got.shape == (B, H, K, F_) and got.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    # Head h's rows of the weight project head h's ids: swapping two
    # heads' weights changes both heads' rows.
    swapped = weight.view(H, F_, C)[[1, 0, *range(2, H)]].reshape(-1, C)
    other = project_rows(ids, x, swapped, bias)
    assert not torch.allclose(other[:, :2], want[:, :2])


@pytest.fixture
def any_size(monkeypatch):
    # The path from any number of tokens (small sets in these tests).
    monkeypatch.setattr(samsa_attention, 'SAMPLED_ROWS_MIN_TOKENS', 0)
    monkeypatch.setattr(samsa_attention, 'TRAINING_SAMPLED_ROWS_MIN_TOKENS',
                        0)


def _forward(attn, x, batch, sizes, **kwargs):
    with value_checks(False):
        return attn(x, batch, num_graphs=len(sizes),
                    max_num_nodes=max(sizes), **kwargs)


@pytest.mark.parametrize('sizes', [[60, 60], [70, 35, 64]])
@pytest.mark.parametrize('kwargs', [{}, {'return_indices': True},
                                    {'return_indices': True,
                                     'return_weights': True}])
def test_the_sampled_rows_path_equals_the_full_projection(
        monkeypatch, any_size, sizes, kwargs):
    torch.manual_seed(0)
    attn = SamsaAttention(32, heads=2, k=8).eval()
    x = torch.randn(sum(sizes), 32, dtype=torch.float64)
    attn = attn.double()
    batch = torch.repeat_interleave(torch.arange(len(sizes)),
                                    torch.tensor(sizes))
    taken = []
    _spy_path(monkeypatch, taken)
    got = _forward(attn, x, batch, sizes, **kwargs)
    assert taken == [True]
    monkeypatch.setattr(SamsaAttention, '_projects_sampled_rows',
                        lambda self, *args, **kwargs: False)
    want = _forward(attn, x, batch, sizes, **kwargs)
    got = got if isinstance(got, tuple) else (got, )
    want = want if isinstance(want, tuple) else (want, )
    assert len(got) == len(want)
    for a, b in zip(got, want):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        else:
            assert torch.equal(a, b)


def _spy_path(monkeypatch, taken):
    original = SamsaAttention._projects_sampled_rows

    def spy(self, *args, **kwargs):
        taken.append(original(self, *args, **kwargs))
        return taken[-1]

    monkeypatch.setattr(SamsaAttention, '_projects_sampled_rows', spy)


def _training_step(attn, x, batch, sizes):
    # Output and the gradients of x and of every parameter, with the
    # same sampling noise.
    attn.zero_grad()
    x = x.clone().requires_grad_()
    torch.manual_seed(5)
    out = _forward(attn, x, batch, sizes)
    g = torch.randn(out.shape, dtype=out.dtype,
                    generator=torch.Generator().manual_seed(3))
    (out * g).sum().backward()
    grads = {name: p.grad for name, p in attn.named_parameters()
             if p.grad is not None}
    return out.detach(), x.grad, grads


@pytest.mark.parametrize('sizes', [[100, 100], [150, 12, 5, 90]])
@pytest.mark.parametrize('sampling', ['hard', 'soft'])
@pytest.mark.parametrize('fused', [False, True])
def test_training_on_the_sampled_rows_equals_the_full_projection(
        monkeypatch, any_size, triton_modules, sizes, sampling, fused):
    # The top and bottom rows projected alone, relaxed by relax_rows,
    # against every token projected and relaxed by relax: outputs, the
    # gradient of x and of every parameter (the keys' and values'
    # projection, the scorer's through the relaxed scores); fused: the
    # scores' gradient from the Triton kernel (float32, interpreted on a
    # CPU).
    dtype = torch.float64
    if fused:
        triton_modules('samsa_geo.nn.attention._relax_triton')
        monkeypatch.setattr(_relax, '_fused_score_grad',
                            lambda u, score: True)
        dtype = torch.float32
    torch.manual_seed(0)
    attn = SamsaAttention(32, heads=2, k=8, sampling=sampling).to(dtype)
    attn.train()
    x = torch.randn(sum(sizes), 32, dtype=dtype)
    batch = torch.repeat_interleave(torch.arange(len(sizes)),
                                    torch.tensor(sizes))
    taken = []
    _spy_path(monkeypatch, taken)
    got = _training_step(attn, x, batch, sizes)
    assert taken == [True]
    monkeypatch.setattr(SamsaAttention, '_projects_sampled_rows',
                        lambda self, *args, **kwargs: False)
    want = _training_step(attn, x, batch, sizes)
    # The scorer's backward runs on the scored rows alone, in float32
    # from its LayerNorm on (in another order of the sums over rows).
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got[0], want[0], rtol=tol, atol=tol)
    close = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float64 else \
        dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1], want[1], **close)
    assert got[2].keys() == want[2].keys()
    assert 'lin_kv.weight' in got[2] and 'scorer.score_nn.0.weight' in got[2]
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], **close)


def test_paths_that_keep_every_projected_row(monkeypatch, any_size):
    # Registers, the summary key, SFT, sets whose sampled rows are more
    # than half the tokens (in training the top and bottom rows), and
    # fewer tokens than the threshold project every token.
    x = torch.randn(120, 32)
    batch = torch.zeros(120, dtype=torch.long)
    cases = [({}, False, True), ({}, True, True),
             ({'num_registers': 2}, False, False),
             ({'summary': True}, False, False),
             ({'sampling': 'sft'}, False, False),
             ({'k': 40}, False, False),  # 2 heads x 40 x 2 > 120 tokens
             ({'k': 20}, False, True),  # 2 heads x 20 x 2 <= 120
             ({'k': 20}, True, False)]  # 2 heads x (20 + 20) x 2 > 120
    for kwargs, train, want in cases:
        attn = SamsaAttention(32, heads=2, **{'k': 8, **kwargs}).train(train)
        info = attn._set_info(x, batch, None, None, 1, 120)
        assert attn._projects_sampled_rows(info, 120, False) == want, kwargs
    attn = SamsaAttention(32, heads=2, k=8).eval()
    info = attn._set_info(x, batch, None, None, 1, 120)
    monkeypatch.setattr(samsa_attention, 'SAMPLED_ROWS_MIN_TOKENS', 121)
    assert not attn._projects_sampled_rows(info, 120, False)
    monkeypatch.setattr(samsa_attention, 'SAMPLED_ROWS_MIN_TOKENS', 120)
    assert attn._projects_sampled_rows(info, 120, False)
    # Training's own threshold: the evaluation's does not apply.
    attn.train()
    monkeypatch.setattr(samsa_attention, 'SAMPLED_ROWS_MIN_TOKENS', 0)
    monkeypatch.setattr(samsa_attention, 'TRAINING_SAMPLED_ROWS_MIN_TOKENS',
                        121)
    assert not attn._projects_sampled_rows(info, 120, False)
    monkeypatch.setattr(samsa_attention, 'TRAINING_SAMPLED_ROWS_MIN_TOKENS',
                        120)
    monkeypatch.setattr(samsa_attention, 'SAMPLED_ROWS_MIN_TOKENS', 121)
    assert attn._projects_sampled_rows(info, 120, False)
    attn.eval()
    assert not attn._projects_sampled_rows(info, 120, False)
    monkeypatch.setattr(samsa_attention, 'SAMPLED_ROWS_MIN_TOKENS', 120)
    with config.attention_config(sampled_rows=False):
        assert not attn._projects_sampled_rows(info, 120, False)
    # The fused path's own threshold, in a CUDA graph's capture; none in
    # a traced call, whose compiled operator takes every token's keys and
    # values.
    monkeypatch.setattr(samsa_attention, 'FUSED_SAMPLED_ROWS_MIN_TOKENS',
                        120)
    assert not attn._projects_sampled_rows(info, 120, False, fused=True)
    monkeypatch.setattr(samsa_attention, 'is_capturing', lambda: True)
    monkeypatch.setattr(samsa_attention, 'FUSED_SAMPLED_ROWS_MIN_TOKENS',
                        121)
    assert not attn._projects_sampled_rows(info, 120, False, fused=True)
    monkeypatch.setattr(samsa_attention, 'FUSED_SAMPLED_ROWS_MIN_TOKENS',
                        120)
    assert attn._projects_sampled_rows(info, 120, False, fused=True)
    monkeypatch.setattr(samsa_attention, 'is_tracing', lambda: True)
    assert not attn._projects_sampled_rows(info, 120, False, fused=True)


def test_training_on_the_sampled_rows_slices_no_stacked_weight(any_size):
    # Training on the sampled rows reads lin_kv's own weight and bias, not
    # rows of the stacked ones: no slice's backward zeroes and fills the
    # stacked gradient. The relaxation of the rows and the scorer's node
    # are in the graph.
    torch.manual_seed(0)
    attn = SamsaAttention(32, heads=2, k=8).train()
    x = torch.randn(300, 32, requires_grad=True)
    out = _forward(attn, x, torch.zeros(300, dtype=torch.long), [300])
    names = autograd_node_kinds(out)
    assert '_RelaxRowsBackward' in names and 'ScoreTailBackward' in names
    assert 'SliceBackward0' not in names
