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
