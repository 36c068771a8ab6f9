import pytest
import torch
from torch_geometric.data import Batch, Data

from samsa_geo.nn.models import SamsaGraphModel


def _batch(seed: int = 0) -> Batch:
    # Two graphs of 5 and 4 nodes on a chain, 2 edge features, 4 PE columns.
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for n in (5, 4):
        src = torch.arange(n - 1)
        ei = torch.cat([torch.stack([src, src + 1]),
                        torch.stack([src + 1, src])], 1)
        graphs.append(Data(x=torch.randn(n, 7, generator=gen), edge_index=ei,
                           edge_attr=torch.randn(ei.size(1), 2, generator=gen),
                           pe=torch.randn(n, 4, generator=gen)))
    return Batch.from_data_list(graphs)


def _model(level='graph', **kwargs):
    torch.manual_seed(0)
    return SamsaGraphModel(7, 16, 1 if level == 'edge' else 3, 2, edge_dim=2,
                           level=level, pe='rw', pe_channels=4, heads=2, k=4,
                           **kwargs).eval()


def test_int32_batch_gives_the_long_batch_output():
    data, model = _batch(), _model()
    want = model(data.x, data.edge_index, data.edge_attr, data.batch,
                 pe=data.pe)
    got = model(data.x, data.edge_index, data.edge_attr, data.batch.int(),
                pe=data.pe)
    assert got.shape == (2, 3)
    assert torch.equal(got, want)
    with pytest.raises(TypeError, match="'batch' to be an integer"):
        model(data.x, data.edge_index, data.edge_attr, data.batch.float(),
              pe=data.pe)
    with pytest.raises(ValueError, match=r"'batch' to have shape \[9\]"):
        model(data.x, data.edge_index, data.edge_attr, data.batch[:7],
              pe=data.pe)


def test_non_finite_inputs_are_named():
    data, model = _batch(), _model()
    for name in ('x', 'edge_attr', 'pe'):
        args = dict(x=data.x, edge_index=data.edge_index,
                    edge_attr=data.edge_attr, batch=data.batch, pe=data.pe)
        bad = args[name].clone()
        bad[1, 0] = float('nan')
        args[name] = bad
        with pytest.raises(ValueError, match=f"'{name}' to hold finite"):
            model(**args)


def test_arguments_the_model_does_not_use_are_rejected():
    data = _batch()
    plain = SamsaGraphModel(7, 16, 3, 2, heads=2, k=4)  # no edge_dim, no pe
    with pytest.raises(ValueError, match="no 'edge_attr'.*edge_dim=None"):
        plain(data.x, data.edge_index, data.edge_attr, data.batch)
    with pytest.raises(ValueError, match="no 'pe'.*pe=None"):
        plain(data.x, data.edge_index, None, data.batch, pe=data.pe)
    with pytest.raises(TypeError, match="'x' to be a Tensor"):
        plain(data.x.numpy(), data.edge_index, None, data.batch)
    with pytest.raises(TypeError, match="'pe' to be a Tensor"):
        _model()(data.x, data.edge_index, data.edge_attr, data.batch,
                 pe=data.pe.tolist())


def test_edge_label_index_is_checked():
    data, model = _batch(), _model('edge')
    args = (data.x, data.edge_index, data.edge_attr, data.batch)
    pairs = torch.tensor([[0, 2, 5], [1, 8, 6]])
    out = model(*args, pe=data.pe, edge_label_index=pairs)
    z = model.embed(*args, pe=data.pe)
    assert torch.allclose(out, (z[pairs[0]] * z[pairs[1]]).sum(-1))
    for bad, match in ((pairs.t(), r"shape \[2, L\]"),
                       (pairs[0], r"shape \[2, L\]"),
                       (pairs.float(), 'integer'),
                       (torch.tensor([[0, 1], [2, -1]]), r"in \[0, 9\)"),
                       (torch.tensor([[0, 1], [2, 9]]), r"in \[0, 9\)")):
        with pytest.raises((TypeError, ValueError),
                           match=f"'edge_label_index'.*{match}"):
            model(*args, pe=data.pe, edge_label_index=bad)


def test_graph_level_without_nodes():
    model = _model()
    x, ei = torch.randn(0, 7), torch.zeros(2, 0, dtype=torch.long)
    ea, pe = torch.randn(0, 2), torch.randn(0, 4)
    with pytest.raises(ValueError, match="at least one node"):
        model(x, ei, ea, pe=pe)
    batch = torch.zeros(0, dtype=torch.long)
    assert model(x, ei, ea, batch, pe=pe).shape == (0, 3)
    summed = _model(pool='sum')
    head = summed.head(torch.zeros(1, 16))
    assert torch.allclose(summed(x, ei, ea, pe=pe), head)


def _one_node(edges: bool = False) -> Data:
    gen = torch.Generator().manual_seed(3)
    ei = torch.tensor([[0], [0]]) if edges else torch.empty(2, 0,
                                                            dtype=torch.long)
    return Data(x=torch.randn(1, 7, generator=gen), edge_index=ei,
                edge_attr=torch.randn(ei.size(1), 2, generator=gen),
                pe=torch.randn(1, 4, generator=gen))


@pytest.mark.parametrize('tokens', ['node', 'node_edge'])
def test_one_node_in_training_is_named_with_advice_that_works(tokens):
    # The batch norms in training need two rows: a named error whose advice
    # (arguments of SamsaGraphModel) makes the step run.
    data = _one_node()
    args = (data.x, data.edge_index, data.edge_attr)
    model = _model(tokens=tokens).train()
    with pytest.raises(ValueError, match=r"^Expected 'x' to hold more than "
                       r"one node in training since pe='rw' batch-normalises "
                       r"'pe' and norm='batch_norm' \(got 1\): batch the "
                       r"graph with others, build the model with "
                       r"pe_kwargs=\{'batch_norm': False\} and "
                       r"norm='layer_norm', or call model.eval\(\)$"):
        model(*args, pe=data.pe)
    torch.manual_seed(0)
    model = SamsaGraphModel(7, 16, 3, 2, edge_dim=2, tokens=tokens, heads=2,
                            k=4).train()  # pe=None
    with pytest.raises(ValueError, match=r"since norm='batch_norm' \(got 1\)"
                       r": batch the graph with others, build the model with "
                       r"norm='layer_norm', or call model.eval\(\)$"):
        model(*args)
    # A self-loop gives node+edge tokens two tokens: only the PE's norm.
    loop = _one_node(edges=True)
    model = _model(tokens=tokens).train()
    message = r"since pe='rw' batch-normalises 'pe' and norm='batch_norm'" \
        if tokens == 'node' else r"since pe='rw' batch-normalises 'pe' \("
    with pytest.raises(ValueError, match=message):
        model(loop.x, loop.edge_index, loop.edge_attr, pe=loop.pe)
    # The advice works: the training step runs, with finite gradients.
    model = _model(tokens=tokens, norm='layer_norm',
                   pe_kwargs={'batch_norm': False}).train()
    out = model(*args, pe=data.pe)
    assert out.shape == (1, 3) and bool(torch.isfinite(out).all())
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert model.pe_encoder.rho_nn.weight.grad.abs().sum() > 0
    # In evaluation mode one node is fine with the batch norms.
    with torch.no_grad():
        out = _model(tokens=tokens).eval()(*args, pe=data.pe)
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize('tokens', ['node', 'node_edge'])
def test_categorical_features_of_any_integer_dtype(tokens):
    # OGB features stored narrow (uint8, int16) give the long features'
    # output; floating-point or bool features, and categories out of
    # range, are errors naming the argument at fault.
    gen = torch.Generator().manual_seed(0)
    data = _batch()
    x = torch.randint(0, 2, (data.num_nodes, 9), generator=gen)
    edge_attr = torch.randint(0, 2, (data.num_edges, 3), generator=gen)
    torch.manual_seed(0)
    model = SamsaGraphModel(9, 16, 3, 2, edge_dim=3, categorical=True,
                            tokens=tokens, heads=2, k=4).eval()
    want = model(x, data.edge_index, edge_attr, data.batch)
    for dtype in (torch.uint8, torch.int16, torch.int32):
        got = model(x.to(dtype), data.edge_index, edge_attr.to(dtype),
                    data.batch)
        assert torch.equal(got, want), dtype
    with pytest.raises(TypeError, match="'x' to hold integer categories"):
        model(x.float(), data.edge_index, edge_attr, data.batch)
    with pytest.raises(TypeError,
                       match="'edge_attr' to hold integer categories"):
        model(x, data.edge_index, edge_attr.bool(), data.batch)
    with pytest.raises(IndexError, match="column c of 'edge_attr'"):
        model(x, data.edge_index, edge_attr + 7, data.batch)


def test_max_num_nodes_beyond_the_nodes_grows_no_identifier_table():
    # The evaluation identifiers' table grows to the largest graph's size:
    # a hint beyond the batch's nodes (here 3,000,000 for 4 nodes) sizes it
    # by the nodes instead, with the same output.
    torch.manual_seed(0)
    model = SamsaGraphModel(5, 16, 1, 2, tokens='node_edge', heads=2,
                            k=4).eval()
    x, edge_index = torch.randn(4, 5), torch.tensor([[0, 1, 2], [1, 2, 3]])
    batch = torch.zeros(4, dtype=torch.long)
    with torch.no_grad():
        want = model(x, edge_index, batch=batch, num_graphs=1,
                     max_num_nodes=4)
        got = model(x, edge_index, batch=batch, num_graphs=1,
                    max_num_nodes=3_000_000)
    assert torch.equal(got, want)
    assert model.tokenizer._eval_ids.size(0) < 10_000
