import pytest
import torch
from torch.nn import Linear, ReLU, Sequential
from torch_geometric.nn import GINEConv

from samsa_geo.nn import SamsaConv


def _gine(channels=16, edge_dim=8):
    return GINEConv(Sequential(Linear(channels, channels), ReLU(),
                               Linear(channels, channels)), edge_dim=edge_dim)


def _inputs():
    x = torch.randn(10, 16)
    batch = torch.tensor([0] * 5 + [1] * 5)
    src = torch.tensor([0, 1, 2, 3, 5, 6, 7, 8])
    edge_index = torch.stack([src, src + 1])
    return x, edge_index, torch.randn(8, 8), batch


def test_batch_vector_in_the_edge_index_slot_is_an_error():
    # conv(x, batch) would attend over both graphs as one set.
    x, _, _, batch = _inputs()
    conv = SamsaConv(16, heads=4, k=4)
    with pytest.raises(ValueError, match=r"'edge_index' of shape \[2, E\].*"
                                         r"batch=batch"):
        conv(x, batch)
    with pytest.raises(ValueError, match=r"'edge_index' to have shape"):
        conv(x, torch.zeros(3, 4, dtype=torch.long), batch)
    # Without a local conv, edge_index and further keyword arguments are
    # ignored, as GPSConv ignores them.
    conv.eval()
    want = conv(x, None, batch)
    ei = torch.zeros(2, 0, dtype=torch.long)
    assert torch.equal(conv(x, ei, batch, edge_attr=torch.randn(0, 8)), want)


def test_x_is_checked_before_the_local_conv():
    x, edge_index, edge_attr, batch = _inputs()
    conv = SamsaConv(16, _gine(), heads=4, k=4)
    with pytest.raises(ValueError, match=r"'x' to have shape \[N, 16\]"):
        conv(x[:, :8], edge_index, batch, edge_attr=edge_attr)
    with pytest.raises(TypeError, match="'x' to be a floating-point"):
        conv(x.long(), edge_index, batch, edge_attr=edge_attr)
    with pytest.raises(ValueError, match="'edge_index' of shape"):
        conv(x, None, batch, edge_attr=edge_attr)
    with pytest.raises(TypeError, match="'edge_index' to be a Tensor"):
        conv(x, edge_index.tolist(), batch, edge_attr=edge_attr)


def test_one_token_in_training_with_batch_norm():
    x = torch.randn(1, 16)
    conv = SamsaConv(16, heads=4, k=4)  # norm='batch_norm'
    with pytest.raises(ValueError, match="more than one token in training"):
        conv(x)
    assert conv.eval()(x).shape == (1, 16)
    single = SamsaConv(16, heads=4, k=4,
                       norm_kwargs={'allow_single_element': True})
    out = single(x)
    assert out.shape == (1, 16) and torch.isfinite(out).all()
    ln = SamsaConv(16, heads=4, k=4, norm='layer_norm',
                   norm_kwargs={'mode': 'node'})
    assert torch.isfinite(ln(x)).all()


@pytest.mark.parametrize('layout', ['csr', 'coo'])
def test_sparse_adjacency_as_gpsconv_takes_it(layout):
    # PyG's Adj: conv(x, adj_t, batch) equals conv(x, edge_index, batch).
    from torch_geometric.nn import GINConv
    from torch_geometric.utils import to_torch_coo_tensor, to_torch_csr_tensor
    x, edge_index, _, batch = _inputs()
    to_sparse = to_torch_csr_tensor if layout == 'csr' else \
        to_torch_coo_tensor
    adj_t = to_sparse(edge_index.flip(0), size=(10, 10))
    gin = GINConv(Sequential(Linear(16, 16), ReLU(), Linear(16, 16)))
    conv = SamsaConv(16, gin, heads=4, k=4).eval()
    want = conv(x, edge_index, batch)
    assert torch.allclose(conv(x, adj_t, batch), want, atol=1e-6)
    with pytest.raises(ValueError, match=r"sparse 'edge_index' \(adjacency\) "
                                         r"of shape \[10, 10\]"):
        conv(x, to_sparse(edge_index.flip(0), size=(11, 11)), batch)


@pytest.mark.parametrize('norm', ['batch_norm', 'layer_norm', None])
def test_x_wider_than_the_layer_is_a_named_error(norm):
    x, edge_index, edge_attr, batch = _inputs()
    conv = SamsaConv(16, _gine(), heads=4, k=4, norm=norm)
    with pytest.raises(TypeError, match=r"'x' in the layer's dtype "
                       r"torch.float32 .*got torch.float64"):
        conv(x.double(), edge_index, batch, edge_attr=edge_attr)
    # Narrower tokens compute in the layer's dtype; a float64 layer takes
    # float64 tokens, with the values of the float32 call.
    narrow = conv(x.bfloat16(), edge_index, batch, edge_attr=edge_attr)
    assert narrow.dtype == torch.float32
    conv.eval()
    ref = conv(x, edge_index, batch, edge_attr=edge_attr)
    wide = conv.double()(x.double(), edge_index, batch,
                         edge_attr=edge_attr.double())
    assert wide.dtype == torch.float64
    assert torch.allclose(wide.float(), ref, atol=1e-5)


@pytest.mark.parametrize('with_conv', [False, True])
@pytest.mark.parametrize('dtype', [torch.long, torch.int32])
def test_integer_x_is_named_as_not_floating(with_conv, dtype):
    # An integer x (e.g. a PyG Batch of categorical features) is refused
    # as not floating-point, not as wider than the layer (whose advice,
    # 'conv.double()', would not help).
    x, edge_index, edge_attr, batch = _inputs()
    conv = SamsaConv(16, _gine() if with_conv else None, heads=4, k=4)
    with pytest.raises(TypeError, match=r"'x' to be a floating-point "
                                        r"tensor \(got torch\."):
        conv(x.to(dtype), edge_index, batch, edge_attr=edge_attr)
