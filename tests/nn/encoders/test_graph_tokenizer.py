import pytest
import torch
from torch.nn import Linear
from torch_geometric.data import Batch, Data
from torch_geometric.utils import erdos_renyi_graph

from samsa_geo.nn.encoders import CategoricalEncoder, GraphTokenizer


def _graph(n: int, seed: int, categorical: bool = False) -> Data:
    torch.manual_seed(seed)
    ei = erdos_renyi_graph(n, 0.4)
    if categorical:
        x = torch.stack([torch.randint(0, 119, (n, )),
                         torch.randint(0, 5, (n, ))], dim=1)
        ea = torch.randint(0, 5, (ei.size(1), 1))
    else:
        x, ea = torch.randn(n, 7), torch.randn(ei.size(1), 3)
    return Data(x=x, edge_index=ei, edge_attr=ea)


def _tokenizer(edge_tokens=True, categorical=False, id_channels=8,
               **kwargs):
    if categorical:
        node, edge = CategoricalEncoder(32, [119, 5]), CategoricalEncoder(32, [5])
    else:
        node, edge = Linear(7, 32), Linear(3, 32)
    return GraphTokenizer(32, node, edge, id_channels=id_channels,
                          edge_tokens=edge_tokens, **kwargs)


@pytest.mark.parametrize('edge_tokens', [True, False])
@pytest.mark.parametrize('categorical', [True, False])
def test_shapes_and_order(edge_tokens, categorical):
    data_list = [_graph(n, n, categorical) for n in (5, 9, 1, 6)]
    batch = Batch.from_data_list(data_list)
    tok = _tokenizer(edge_tokens, categorical)
    assert repr(tok) == f'GraphTokenizer(32, id_channels=8, edge_tokens={edge_tokens})'
    out = tok(batch.x, batch.edge_index, batch.edge_attr, batch.batch)
    num_tokens = batch.num_nodes + (batch.num_edges if edge_tokens else 0)
    assert out.x.shape == (num_tokens, 32)
    assert out.batch.shape == (num_tokens, ) and out.node_mask.shape == (num_tokens, )
    assert bool((out.batch[1:] >= out.batch[:-1]).all())  # sorted by graph
    assert int(out.node_mask.sum()) == batch.num_nodes
    assert torch.equal(out.batch[out.node_index], batch.batch)
    assert bool(out.node_mask[out.node_index].all())
    if edge_tokens:
        assert torch.equal(out.batch[out.edge_index], batch.batch[batch.edge_index[0]])
        assert not bool(out.node_mask[out.edge_index].any())
        # Per graph: node tokens first (in node order), then edge tokens.
        for g in range(len(data_list)):
            mask = out.node_mask[out.batch == g]
            n = data_list[g].num_nodes
            assert bool(mask[:n].all()) and not bool(mask[n:].any())
        assert bool((out.node_index.diff() > 0).all())
        assert bool((out.edge_index.diff() > 0).all())
    else:
        assert out.edge_index is None
        assert torch.equal(out.node_index, torch.arange(batch.num_nodes))

    out.x.square().sum().backward()
    for name, p in tok.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_batch_isolation_eval():
    tok = _tokenizer().eval()
    a, b, c = _graph(6, 0), _graph(8, 1), _graph(4, 2)
    one = tok(a.x, a.edge_index, a.edge_attr)
    batch = Batch.from_data_list([a, b])
    two = tok(batch.x, batch.edge_index, batch.edge_attr, batch.batch)
    batch2 = Batch.from_data_list([c, a])
    three = tok(batch2.x, batch2.edge_index, batch2.edge_attr, batch2.batch)
    assert torch.allclose(two.x[two.batch == 0], one.x, atol=1e-6)
    assert torch.allclose(three.x[three.batch == 1], one.x, atol=1e-6)


def test_eval_ids_deterministic_train_ids_random():
    a = _graph(7, 0)
    tok = _tokenizer(seed=3).eval()
    first = tok(a.x, a.edge_index, a.edge_attr).x
    other = _tokenizer(seed=3)
    other.load_state_dict(tok.state_dict())
    other.eval()
    assert torch.equal(other(a.x, a.edge_index, a.edge_attr).x, first)
    # Table grows block by block without changing its first rows:
    prefix = tok.node_ids(torch.zeros(5, dtype=torch.long), torch.float).clone()
    tok.node_ids(torch.zeros(3000, dtype=torch.long), torch.float)
    assert torch.equal(tok.node_ids(torch.zeros(5, dtype=torch.long), torch.float), prefix)

    tok.train()
    assert not torch.allclose(tok(a.x, a.edge_index, a.edge_attr).x, first)
    tok.eval()
    tok.stochastic_eval = True
    assert not torch.allclose(tok(a.x, a.edge_index, a.edge_attr).x, first)


def test_permutation_equivariance_with_fixed_ids():
    tok = _tokenizer()
    a = _graph(10, 4)
    ids = torch.randn(10, 8)
    perm = torch.randperm(10)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(10)
    out = tok(a.x, a.edge_index, a.edge_attr, node_id=ids)
    out_p = tok(a.x[perm], inv[a.edge_index], a.edge_attr, node_id=ids[perm])
    assert torch.allclose(out_p.x[out_p.node_index], out.x[out.node_index][perm],
                          atol=1e-6)
    # Edge tokens are the same (edge order unchanged):
    assert torch.allclose(out_p.x[out_p.edge_index], out.x[out.edge_index], atol=1e-6)


def test_pe_is_added():
    tok = _tokenizer(edge_tokens=False).eval()
    a = _graph(5, 0)
    pe = torch.randn(5, 32)
    base = tok(a.x, a.edge_index).x
    assert torch.allclose(tok(a.x, a.edge_index, pe=pe).x, base + pe, atol=1e-6)


def test_errors():
    tok = _tokenizer()
    a = _graph(5, 0)
    with pytest.raises(ValueError, match="'edge_attr'"):
        tok(a.x, a.edge_index)
    with pytest.raises(ValueError, match="'batch' to be sorted"):
        tok(a.x, a.edge_index, a.edge_attr, torch.tensor([1, 0, 0, 1, 1]))
    with pytest.raises(ValueError, match=r"'node_id' to have shape \[5, 8\]"):
        tok(a.x, a.edge_index, a.edge_attr, node_id=torch.randn(5, 3))
    with pytest.raises(ValueError, match="'id_channels'"):
        GraphTokenizer(8, Linear(2, 8), id_channels=0)


@pytest.mark.parametrize('name, value', [
    ('edge_tokens', 'no'), ('edge_tokens', 0), ('stochastic_eval', 'no'),
    ('stochastic_eval', None),
])
def test_flags_must_be_bools(name, value):
    with pytest.raises(TypeError) as info:
        GraphTokenizer(8, Linear(2, 8), **{name: value})
    assert str(info.value) == (f"Expected '{name}' to be a bool "
                               f"(got {value!r})")


def test_categorical_encoder():
    enc = CategoricalEncoder.ogb_atom(16)
    assert repr(enc) == ('CategoricalEncoder(16, num_categories='
                         '[119, 5, 12, 12, 10, 6, 6, 2, 2])')
    x = torch.tensor([[5, 0, 1, 2, 3, 4, 5, 0, 1]])
    expected = sum(enc.embeddings[c].weight[x[0, c]] for c in range(9))
    assert torch.allclose(enc(x)[0], expected)
    assert CategoricalEncoder.ogb_bond(4)(torch.zeros(3, 3, dtype=torch.long)).shape == (3, 4)
    with pytest.raises(IndexError):
        enc(torch.full((1, 9), 200))
    with pytest.raises(TypeError):
        enc(torch.zeros(1, 9))
    with pytest.raises(ValueError, match=r"Expected 'x' to have shape \[N, 9\]"):
        enc(torch.zeros(1, 3, dtype=torch.long))


def test_ogb_dims_match_ogb():
    features = pytest.importorskip('ogb.utils.features')
    from samsa_geo.nn.encoders.categorical_encoder import (
        OGB_ATOM_FEATURE_DIMS, OGB_BOND_FEATURE_DIMS)
    assert features.get_atom_feature_dims() == OGB_ATOM_FEATURE_DIMS
    assert features.get_bond_feature_dims() == OGB_BOND_FEATURE_DIMS


def test_node_tokens_without_identifiers():
    """id_channels=0: deterministic node tokens, identical in train and eval
    and equivariant to any node permutation; edge tokens need identifiers."""
    tok = _tokenizer(edge_tokens=False, id_channels=0)
    assert tok.id_scale is None
    data = Batch.from_data_list([_graph(7, 0), _graph(5, 1)])
    out_train = tok.train()(data.x, data.edge_index, batch=data.batch)
    out_eval = tok.eval()(data.x, data.edge_index, batch=data.batch)
    assert torch.equal(out_train.x, out_eval.x)
    # Nodes permuted within each graph (the batch stays sorted), in train
    # and eval: the tokens are permuted the same way.
    perm = torch.cat([torch.randperm(7), 7 + torch.randperm(5)])
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(12)
    for mode in (True, False):
        out = tok.train(mode)(data.x[perm], inv[data.edge_index],
                              batch=data.batch)
        torch.testing.assert_close(out.x, out_eval.x[perm], rtol=0,
                                   atol=1e-6)
        assert torch.equal(out.batch, data.batch)
        assert torch.equal(out.node_index, torch.arange(12))
    assert torch.allclose(out_eval.x, tok.lin_node(tok.node_encoder(data.x)))
    with pytest.raises(ValueError, match="'id_channels' > 0"):
        _tokenizer(edge_tokens=True, id_channels=0)


def test_reset_parameters_keeps_the_encoders_own_initialisation():
    # A CategoricalEncoder initialises its embeddings with Xavier: the
    # tokenizer's reset must not let each Embedding re-draw N(0, 1).
    tok = _tokenizer(categorical=True)
    torch.manual_seed(0)
    tok.reset_parameters()
    for enc in (tok.node_encoder, tok.edge_encoder):
        for emb in enc.embeddings:
            n, F = emb.weight.shape
            bound = (6.0 / (n + F)) ** 0.5  # xavier_uniform_
            assert emb.weight.abs().max() <= bound
    # Every other parameter is re-initialised too.
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    tok.reset_parameters()
    for key, value in tok.state_dict().items():
        if value.is_floating_point() and value.numel() > 1:
            assert not torch.equal(value, before[key]), key


@pytest.mark.parametrize('edge_tokens', [True, False])
def test_eval_ids_from_batch_hints_equal_the_read_back_ones(edge_tokens):
    # With batch_hints the evaluation identifiers are the same table rows
    # as without (where the sizes are read back), token for token; a hint
    # below the largest graph raises instead of indexing out of range.
    from samsa_geo.nn import batch_hints
    tok = _tokenizer(edge_tokens).eval()
    data = Batch.from_data_list([_graph(n, n) for n in (6, 1, 9, 4)])
    args = (data.x, data.edge_index, data.edge_attr, data.batch)
    hints = batch_hints(data)
    assert hints == {'num_graphs': 4, 'max_num_nodes': 9}
    ref, got = tok(*args), tok(*args, **hints)
    for a, b in zip(ref, got):
        assert (a is None and b is None) or torch.equal(a, b)
    ids = tok.node_ids(data.batch, torch.float, **hints)
    assert torch.equal(ids[6:7], tok.node_ids(data.batch[:1], torch.float))
    with pytest.raises(ValueError, match="'max_num_nodes' >= 9"):
        tok(*args, num_graphs=4, max_num_nodes=8)
    with pytest.raises(TypeError, match="'max_num_nodes'"):
        tok(*args, num_graphs=4, max_num_nodes=8.0)


def test_graph_inputs_are_named():
    # These failed inside torch (IndexError, a matmul shape error).
    torch.manual_seed(0)
    tok = GraphTokenizer(8, Linear(3, 8), Linear(2, 8)).eval()
    x, ei = torch.randn(4, 3), torch.tensor([[0, 1, 2], [1, 2, 3]])
    ea = torch.randn(3, 2)
    ref = tok(x, ei, ea).x
    cases = [
        (dict(edge_index=ei + 5), ValueError,
         "Expected 'edge_index' to hold node indices in [0, 4) "
         "(got values in [5, 8])"),
        (dict(edge_index=ei - 2), ValueError,
         "Expected 'edge_index' to hold node indices in [0, 4) "
         "(got values in [-2, 1])"),
        (dict(edge_index=ei.float()), TypeError,
         "Expected 'edge_index' to be an integer tensor (got torch.float32)"),
        (dict(x=torch.randn(4, 5)), ValueError,
         "Expected 'x' to have shape [N, 3] (got [4, 5])"),
        (dict(x=[[1.0, 2.0, 3.0]]), TypeError,
         "Expected 'x' to be a Tensor (got list)"),
        (dict(edge_attr=torch.randn(3, 5)), ValueError,
         "Expected 'edge_attr' to have shape [3, 2] (got [3, 5])"),
        (dict(node_id=torch.ones(4, 16, dtype=torch.long)), TypeError,
         "Expected 'node_id' to be a floating-point tensor (got torch.int64)"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error) as exc:
            tok(**{'x': x, 'edge_index': ei, 'edge_attr': ea, **kwargs})
        assert str(exc.value) == message
    assert torch.equal(tok(x, ei, ea).x, ref)
