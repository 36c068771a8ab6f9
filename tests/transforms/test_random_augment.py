import pytest
import torch
from torch_geometric.data import Data

from samsa_geo.transforms import (
    RandomAnisotropicScale,
    RandomJitter,
    RandomPointDropout,
)


def test_anisotropic_scale():
    transform = RandomAnisotropicScale()
    assert str(transform) == 'RandomAnisotropicScale(low=0.6667, high=1.5)'
    pos = torch.randn(200, 3)
    # Normals of the plane x + y + z = 0 stay perpendicular to the scaled
    # in-plane vectors after scaling.
    in_plane = torch.cross(pos, torch.ones(200, 3), dim=-1)
    normal = torch.ones(200, 3) / 3**0.5
    out = transform(Data(pos=in_plane.clone(), normal=normal.clone()))
    scale = out.pos / in_plane
    scale = scale[in_plane.abs() > 1e-3].view(-1)
    assert scale.min() >= 2 / 3 - 1e-5 and scale.max() <= 1.5 + 1e-5
    assert torch.allclose(out.normal.norm(dim=-1), torch.ones(200))
    assert (out.pos * out.normal).sum(-1).abs().max() < 1e-5
    # One factor per axis, shared by all points.
    out = transform(Data(pos=torch.ones(10, 3)))
    assert torch.allclose(out.pos, out.pos[:1].expand(10, 3))
    with pytest.raises(ValueError, match="'low'"):
        RandomAnisotropicScale(low=2, high=1)


def test_jitter():
    transform = RandomJitter(sigma=0.01, clip=0.02)
    assert str(transform) == 'RandomJitter(sigma=0.01, clip=0.02)'
    pos = torch.randn(20000, 3)
    out = transform(Data(pos=pos.clone(), normal=pos.clone()))
    noise = out.pos - pos
    assert noise.abs().max() <= 0.02 + 1e-6
    assert abs(float(noise.std()) - 0.01) < 0.001
    assert abs(float(noise.mean())) < 0.001
    assert torch.equal(out.normal, pos)
    with pytest.raises(ValueError, match="'sigma'"):
        RandomJitter(sigma=-1)


def test_point_dropout_keeps_attributes_aligned():
    transform = RandomPointDropout(max_ratio=0.875)
    assert str(transform) == 'RandomPointDropout(max_ratio=0.875)'
    n = 1000
    ident = torch.arange(n)
    sizes = []
    for _ in range(50):
        data = Data(pos=ident.view(-1, 1).float().expand(n, 3).clone(),
                    normal=ident.view(-1, 1).float().expand(n, 3) * 2,
                    x=ident.view(-1, 1).float() * 3, y=ident.clone(),
                    category=torch.tensor([4]))
        out = transform(data)
        keep = out.pos[:, 0].long()
        assert out.num_nodes == keep.numel() >= 1
        assert torch.equal(out.y, keep)
        assert torch.equal(out.normal[:, 1], out.pos[:, 1] * 2)
        assert torch.equal(out.x.view(-1), out.pos[:, 2] * 3)
        assert out.category.tolist() == [4]
        assert keep.unique().numel() == keep.numel()
        sizes.append(keep.numel())
    sizes = torch.tensor(sizes, dtype=torch.float)
    # E[kept fraction] = 1 - E[r] = 1 - 0.875 / 2.
    assert abs(float(sizes.mean()) / n - (1 - 0.875 / 2)) < 0.1
    assert sizes.min() < 0.5 * n


def test_point_dropout_graph_label_kept_and_seed():
    out = RandomPointDropout(0.5)(Data(pos=torch.randn(64, 3),
                                       y=torch.tensor([7])))
    assert out.y.tolist() == [7]
    torch.manual_seed(3)
    a = RandomPointDropout()(Data(pos=torch.randn(100, 3)))
    torch.manual_seed(3)
    b = RandomPointDropout()(Data(pos=torch.randn(100, 3)))
    assert torch.equal(a.pos, b.pos)
    with pytest.raises(ValueError, match="'max_ratio'"):
        RandomPointDropout(1.0)


@pytest.mark.parametrize('transform', [RandomJitter(),
                                       RandomAnisotropicScale()])
def test_integer_pos_raises(transform):
    # Used to raise torch's NotImplementedError for Long.
    with pytest.raises(TypeError, match="'pos' to be a floating-point"):
        transform(Data(pos=torch.ones(5, 3, dtype=torch.long)))


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(sigma=float('nan')), ValueError, "'sigma' to be finite"),
    (dict(sigma=float('inf')), ValueError, "'sigma' to be finite"),
    (dict(clip=float('nan')), ValueError, "'clip' to be finite"),
    (dict(sigma='0.1'), TypeError, "'sigma' to be a float"),
])
def test_jitter_parameters_finite(kwargs, error, match):
    with pytest.raises(error, match=match):
        RandomJitter(**kwargs)


@pytest.mark.parametrize('kwargs, match', [
    (dict(low=float('nan')), "'low' to be finite"),
    (dict(high=float('inf')), "'high' to be finite"),
])
def test_anisotropic_scale_parameters_finite(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandomAnisotropicScale(**kwargs)


@pytest.mark.parametrize('max_ratio, error, message', [
    ('0.5', TypeError, "Expected 'max_ratio' to be a float (got str)"),
    (None, TypeError, "Expected 'max_ratio' to be a float (got NoneType)"),
    (True, TypeError, "Expected 'max_ratio' to be a float (got bool)"),
    (float('nan'), ValueError, "Expected 'max_ratio' in [0, 1) (got nan)"),
    (-0.1, ValueError, "Expected 'max_ratio' in [0, 1) (got -0.1)"),
])
def test_point_dropout_max_ratio_is_checked(max_ratio, error, message):
    # A string or None raised the '<=' of int and str.
    with pytest.raises(error) as info:
        RandomPointDropout(max_ratio)
    assert str(info.value) == message
    assert RandomPointDropout(0).max_ratio == 0


def test_point_dropout_reindexes_edges():
    # A ring 0 -> 1 -> ... -> n-1 -> 0 whose edge features name their ends.
    n = 200
    src = torch.arange(n)
    dst = (src + 1) % n
    for seed in range(5):
        torch.manual_seed(seed)
        data = Data(pos=src.view(-1, 1).float().expand(n, 3).clone(),
                    edge_index=torch.stack([src, dst]),
                    edge_attr=torch.stack([src, dst], dim=1).float(),
                    edge_weight=src.float(), y=torch.tensor([1]))
        out = RandomPointDropout(0.5)(data)
        old_id = out.pos[:, 0].long()  # [N'] the surviving points
        assert out.edge_index.max() < out.num_nodes
        ends = old_id[out.edge_index]  # [2, E'] in the old numbering
        assert torch.equal(ends.t(), out.edge_attr.long())
        assert torch.equal(ends[0], out.edge_weight.long())
        # Exactly the edges whose both ends survived.
        kept = torch.zeros(n, dtype=torch.bool)
        kept[old_id] = True
        assert out.edge_index.size(1) == int((kept[src] & kept[dst]).sum())
        assert out.y.tolist() == [1]


def test_point_dropout_other_node_indices_raise():
    with pytest.raises(ValueError, match="'data.face'"):
        RandomPointDropout()(Data(pos=torch.randn(6, 3),
                                  face=torch.tensor([[0], [1], [2]])))
    with pytest.raises(ValueError, match="'edge_index' to hold node indices"):
        RandomPointDropout()(Data(pos=torch.randn(6, 3),
                                  edge_index=torch.tensor([[0], [6]])))
