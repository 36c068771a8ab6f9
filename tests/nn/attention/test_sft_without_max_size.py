"""sampling='sft' with the number of sets alone (no ``max_num_nodes``):
nothing read back from the device, so torch.compile(fullgraph=True) traces
it; the values are those of the padded path that knows the largest set."""
import pytest
import torch

from samsa_geo.nn import SamsaAttention, SamsaConv
from samsa_geo.nn.attention._sft_sampling import sft_sample


def _sets(sizes, channels=5, ties=False):
    batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
    x = torch.randn(batch.numel(), channels)
    score = torch.randn(batch.numel())
    if ties:  # few distinct scores: ties keep token order
        score = score.round()
    return x, score, batch


def _trim(index, k_max):
    # Slots past k_max are unused (-1) where N bounds n_max.
    assert (index[:, k_max:] == -1).all()
    return index[:, :k_max]


@pytest.mark.parametrize('sizes', [(10, 3, 7), (0, 6, 0, 6), (4, 9, 1)])
@pytest.mark.parametrize('k', [2, 4])
@pytest.mark.parametrize('ties', [False, True])
@pytest.mark.parametrize('mix', [False, True])
def test_sample_without_max_size_equals_padded_path(sizes, k, ties, mix):
    x, score, batch = _sets(sizes, ties=ties)
    B, n_max = len(sizes), max(sizes)
    k_max = min(k, n_max)
    gen = torch.Generator()
    out = []
    for max_size in (n_max, None):
        gen.manual_seed(1)
        out.append(sft_sample(x, score, batch, k, mix=mix, perturb=mix,
                              num_sets=B, max_size=max_size, generator=gen))
    want, got = out
    assert torch.equal(_trim(got.index, k_max), want.index)
    assert torch.equal(got.x[:, :k_max], want.x)
    assert (got.x[:, k_max:] == 0).all()
    assert torch.equal(_trim(got.partner, k_max), want.partner)
    assert torch.equal(got.weight[:, :k_max], want.weight)


def _layer(cls, k):
    if cls is SamsaConv:
        return SamsaConv(16, None, heads=2, k=k, norm='layer_norm',
                         attn_kwargs={'sampling': 'sft'})
    return SamsaAttention(16, heads=2, k=k, sampling='sft')


def _call(layer, x, batch, **hints):
    if isinstance(getattr(layer, '_orig_mod', layer), SamsaConv):
        return layer(x, None, batch, **hints)
    return layer(x, batch, **hints)


@pytest.mark.parametrize('cls', [SamsaConv, SamsaAttention])
@pytest.mark.parametrize('train', [False, True])
def test_num_graphs_alone_gives_the_same_output(cls, train):
    x = torch.randn(20, 16)
    batch = torch.tensor([0] * 8 + [1] * 12)
    layer = _layer(cls, 3).train(train)
    out = []
    for hints in ({}, {'num_graphs': 2},
                  {'num_graphs': 2, 'max_num_nodes': 12}):
        torch.manual_seed(0)
        out.append(_call(layer, x, batch, **hints))
    assert torch.equal(out[1], out[0]) and torch.equal(out[2], out[0])


@pytest.mark.parametrize('cls', [SamsaConv, SamsaAttention])
@pytest.mark.parametrize('train', [False, True])
def test_compiles_into_one_graph_with_num_graphs_alone(cls, train):
    x = torch.randn(20, 16)
    batch = torch.tensor([0] * 8 + [1] * 12)
    layer = _layer(cls, 3).train(train)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend='aot_eager')
    torch.manual_seed(0)
    got = _call(compiled, x, batch, num_graphs=2)
    torch.manual_seed(0)
    want = _call(layer, x, batch, num_graphs=2)
    # aot_eager draws the same noise as eager calls in training.
    assert torch.allclose(got, want, atol=1e-5)
    if train:
        got.sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all()
                   for p in layer.parameters() if p.requires_grad)


@pytest.mark.parametrize('hints', [('num_graphs', ),
                                   ('num_graphs', 'max_num_nodes')])
def test_training_compiles_once_with_dynamic_shapes(dynamic_compile, hints):
    # The Gumbel noise and the partners are drawn at symbolic sizes: a
    # torch.rand(..., generator=None) of a symbolic size failed in Dynamo.
    torch.manual_seed(0)

    def call(fn, x, batch, pos, sizes):
        given = {'num_graphs': len(sizes), 'max_num_nodes': max(sizes)}
        return _call(fn, x, batch, **{name: given[name] for name in hints})

    run = dynamic_compile(_layer(SamsaConv, 3).train(), call)
    run.assert_equal(([10, 20, 5], [7, 30], [12, 12, 12, 9]))
    assert run.counter.frame_count == 1
