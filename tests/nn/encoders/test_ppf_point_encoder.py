import math

import pytest
import torch

from samsa_geo.nn.encoders import PPFPointEncoder
from samsa_geo.ops import knn_graph

ATOL = 1e-4  # float32 (as stated in the docstring)


def _rotation(det: float = 1.0) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) * det < 0:
        q[:, 0] = -q[:, 0]
    return q.float()


def _cloud(n: int = 60):
    pos = torch.randn(n, 3) * torch.tensor([1.0, 2.0, 0.5])
    normal = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    return pos, normal


def test_repr_shape_parameters():
    enc = PPFPointEncoder(32, num_neighbors=8, hidden_channels=16)
    assert repr(enc) == 'PPFPointEncoder(32, num_neighbors=8)'
    pos, normal = _cloud()
    assert enc(pos, normal=normal).shape == (60, 32)
    assert sum(p.numel() for p in enc.parameters()) == (
        12 * 16 + 16 + 2 * 16 + 16 * 16 + 16 + 16 * 32 + 32)


def _reference_features(pos, normal, i, j, nbrs):
    def norm(v):
        return math.sqrt(sum(a * a for a in v))

    def cos(a, b):
        na, nb = norm(a), norm(b)
        return 0.0 if na == 0 or nb == 0 else sum(
            x * y for x, y in zip(a, b)) / (na * nb)

    def sub(a, b):
        return [x - y for x, y in zip(a, b)]

    P = pos.tolist()
    Nn = normal.tolist()
    c = [sum(p[d] for p in P) / len(P) for d in range(3)]
    m = [sum(P[q][d] for q in nbrs) / len(nbrs) for d in range(3)]
    d = sub(P[j], P[i])
    a, b = sub(P[i], m), sub(P[j], m)
    u_i, u_j = sub(P[i], c), sub(P[j], c)
    return [norm(d), norm(a), norm(b), cos(a, d), cos(a, b), norm(u_i),
            norm(u_j), cos(u_i, d), cos(Nn[i], d), cos(Nn[j], d),
            cos(Nn[i], Nn[j]), cos(Nn[i], u_i)]


def test_feature_values():
    torch.manual_seed(0)
    pos, normal = _cloud(12)
    normal = 2 * normal  # cosines must not depend on the normals' length
    enc = PPFPointEncoder(8, num_neighbors=4)
    batch = torch.zeros(12, dtype=torch.long)
    edge_index = knn_graph(pos, 4, batch, loop=True)
    f = enc.features(pos, batch, 1, edge_index, normal)
    assert f.shape == (edge_index.size(1), 12)
    for e in range(edge_index.size(1)):
        j, i = edge_index[:, e].tolist()
        nbrs = edge_index[0, edge_index[1] == i].tolist()
        ref = _reference_features(pos, normal, i, j, nbrs)
        assert torch.allclose(f[e], torch.tensor(ref), atol=1e-4), e
    f0 = enc.features(pos, batch, 1, edge_index, None)
    assert torch.equal(f0[:, :8], f[:, :8]) and (f0[:, 8:] == 0).all()


@pytest.mark.parametrize('with_normal', [True, False])
@pytest.mark.parametrize('det', [1.0, -1.0])
def test_rotation_translation_invariance(with_normal, det):
    enc = PPFPointEncoder(32, num_neighbors=8).eval()
    pos, normal = _cloud(80)
    batch = torch.tensor([0] * 30 + [1] * 50)
    normal = normal if with_normal else None
    out = enc(pos, batch, normal)
    for _ in range(5):
        R, t = _rotation(det), 5 * torch.randn(3)
        rot_normal = normal @ R.T if with_normal else None
        out_rot = enc(pos @ R.T + t, batch, rot_normal)
        assert torch.allclose(out, out_rot, atol=ATOL)


def test_permutation_batch_isolation_and_precomputed_graph():
    enc = PPFPointEncoder(16, num_neighbors=6)
    pos, normal = _cloud(60)
    batch = torch.tensor([0] * 25 + [1] * 35)
    out = enc(pos, batch, normal)
    perm = torch.cat([torch.randperm(25), 25 + torch.randperm(35)])
    assert torch.allclose(enc(pos[perm], batch, normal[perm]), out[perm],
                          atol=1e-5)
    assert torch.allclose(enc(pos[25:], None, normal[25:]), out[25:],
                          atol=1e-6)
    # The precomputed graph takes the edge-list path (scatter mean and
    # max), the default the dense table: equal up to rounding.
    edge_index = knn_graph(pos, 6, batch, loop=True)
    assert torch.allclose(enc(pos, batch, normal, edge_index), out,
                          atol=1e-6)
    assert torch.allclose(enc(pos, batch, None, edge_index),
                          enc(pos, batch), atol=1e-6)


def test_small_clouds_use_all_points():
    enc = PPFPointEncoder(8, num_neighbors=16)
    pos, _ = _cloud(7)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    out = enc(pos, batch)
    assert out.shape == (7, 8) and torch.isfinite(out).all()
    assert torch.allclose(enc(pos[:3]), out[:3], atol=1e-6)


DEGENERATE = {
    'one_point': torch.zeros(1, 3),
    'all_equal': torch.ones(20, 3) * 0.3,
    'collinear': torch.linspace(0, 1, 20)[:, None] * torch.tensor([1., 2., 3.]),
    'planar': torch.cat([torch.randn(20, 2), torch.zeros(20, 1)], dim=1),
    'duplicates': torch.randn(5, 3).repeat(4, 1),
}


@pytest.mark.parametrize('name', list(DEGENERATE))
@pytest.mark.parametrize('with_normal', [True, False])
def test_degenerate_inputs_finite(name, with_normal):
    enc = PPFPointEncoder(16, num_neighbors=8)
    pos = DEGENERATE[name].clone().requires_grad_()
    normal = None
    if with_normal:  # zero normals are degenerate too
        normal = torch.zeros_like(pos)
        normal[::2, 2] = 1.0
        normal.requires_grad_()
    out = enc(pos, normal=normal)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(pos.grad).all()
    if with_normal:
        assert torch.isfinite(normal.grad).all()
    for p in enc.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_bad_input():
    enc = PPFPointEncoder(8)
    with pytest.raises(ValueError, match=r"'pos' to have shape \[N, 3\]"):
        enc(torch.randn(5, 2))
    with pytest.raises(ValueError, match="'edge_index'"):
        enc(torch.randn(5, 3), edge_index=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="'num_neighbors'"):
        PPFPointEncoder(8, num_neighbors=0)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_features_are_finite_and_match_float32(dtype):
    # EPS = 1e-12 rounds to 0 in float16: the geometry runs in float32 and
    # the epsilon follows the dtype.
    from samsa_geo.nn.encoders._point_geometry import eps_for, safe_norm
    assert torch.tensor(eps_for(torch.float16), dtype=torch.float16) > 0
    assert eps_for(torch.float32) == 1e-12
    zero = torch.zeros(4, 3, dtype=torch.float16, requires_grad=True)
    norm = safe_norm(zero)
    norm.sum().backward()
    assert torch.isfinite(norm).all() and torch.isfinite(zero.grad).all()

    enc = PPFPointEncoder(16, num_neighbors=8, hidden_channels=16)
    pos, normal = _cloud(40)
    pos[1] = pos[0]  # a duplicate point: zero-length pair vector
    edge_index = knn_graph(pos, 8, loop=True)
    ref = enc.features(pos, torch.zeros(40, dtype=torch.long), 1, edge_index,
                       normal)
    half = enc.features(pos.to(dtype), torch.zeros(40, dtype=torch.long), 1,
                        edge_index, normal.to(dtype))
    assert torch.isfinite(half).all()
    # Only the rounding of the inputs to the half dtype differs.
    torch.testing.assert_close(half, ref, atol=0.05, rtol=0.02)
    out = enc.to(dtype)(pos.to(dtype), normal=normal.to(dtype),
                        edge_index=edge_index)
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_non_finite_input_is_named():
    enc = PPFPointEncoder(16, num_neighbors=4, hidden_channels=16)
    pos, normal = _cloud(10)
    pos[3, 2] = float('inf')
    with pytest.raises(ValueError, match=r"Expected 'pos' to hold finite "
                       r"values only \(point 3 is \[.*inf\]; 1 point"):
        enc(pos)
    pos, normal = _cloud(10)
    normal[7, 0] = float('nan')
    with pytest.raises(ValueError, match=r"Expected 'normal' to hold finite "
                       r"values only \(point 7"):
        enc(pos, normal=normal)


def test_edge_index_out_of_range_or_float_is_named():
    # -1 was read as the last point, 30 failed deep inside torch.
    enc = PPFPointEncoder(16, num_neighbors=4).eval()
    pos = torch.randn(20, 3)
    for bad, got in (([[0, -1], [1, 2]], '[-1, 2]'),
                     ([[0, 30], [1, 2]], '[0, 30]')):
        with pytest.raises(ValueError) as exc:
            enc(pos, edge_index=torch.tensor(bad))
        assert str(exc.value) == ("Expected 'edge_index' to hold node "
                                  f"indices in [0, 20) (got values in {got})")
    with pytest.raises(TypeError) as exc:
        enc(pos, edge_index=torch.tensor([[0., 1.], [1., 2.]]))
    assert str(exc.value) == ("Expected 'edge_index' to be an integer "
                              "tensor (got torch.float32)")


@pytest.mark.parametrize('edges', [False, True])
def test_empty_input_gives_empty_tokens(edges):
    # As SFTPointEncoder: no point, no token (and no cloud to count).
    enc = PPFPointEncoder(16, num_neighbors=4)
    pos = torch.randn(0, 3, requires_grad=True)
    edge_index = torch.zeros(2, 0, dtype=torch.long) if edges else None
    for batch in (None, torch.zeros(0, dtype=torch.long)):
        out = enc(pos, batch, edge_index=edge_index)
        assert out.shape == (0, 16) and out.dtype == torch.float32
        out.sum().backward()
