"""In evaluation the general path projects keys and values of the sampled
rows alone (project_rows) where they are at most half the tokens, from
SAMPLED_ROWS_MIN_TOKENS tokens: the outputs equal those of projecting every
token and gathering."""
import pytest
import torch
import torch.nn.functional as F

from samsa_geo.nn import SamsaAttention
from samsa_geo.nn.attention import samsa_attention
from samsa_geo.nn.attention._sampling import gather_rows, project_rows
from samsa_geo.ops import value_checks


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
    original = SamsaAttention._projects_sampled_rows

    def spy(self, *args):
        taken.append(original(self, *args))
        return taken[-1]

    monkeypatch.setattr(SamsaAttention, '_projects_sampled_rows', spy)
    got = _forward(attn, x, batch, sizes, **kwargs)
    assert taken == [True]
    monkeypatch.setattr(SamsaAttention, '_projects_sampled_rows',
                        lambda self, *args: False)
    want = _forward(attn, x, batch, sizes, **kwargs)
    got = got if isinstance(got, tuple) else (got, )
    want = want if isinstance(want, tuple) else (want, )
    assert len(got) == len(want)
    for a, b in zip(got, want):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        else:
            assert torch.equal(a, b)


def test_paths_that_keep_every_projected_row(monkeypatch, any_size):
    # Training, registers, the summary key, SFT, sets whose sampled rows
    # are more than half the tokens, and fewer tokens than the threshold
    # project every token.
    x = torch.randn(120, 32)
    batch = torch.zeros(120, dtype=torch.long)
    cases = [({}, False, True), ({}, True, False),
             ({'num_registers': 2}, False, False),
             ({'summary': True}, False, False),
             ({'sampling': 'sft'}, False, False),
             ({'k': 40}, False, False)]  # 2 heads x 40 x 2 > 120 tokens
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
