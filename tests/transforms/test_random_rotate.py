import math

import pytest
import torch
from torch_geometric.data import Data

from samsa_geo.transforms import RandomRotateSO3, RandomRotateZ


def _cloud(n: int = 64) -> Data:
    pos = torch.randn(n, 3, dtype=torch.float64)
    normal = torch.nn.functional.normalize(torch.randn(n, 3,
                                                       dtype=torch.float64))
    return Data(pos=pos, normal=normal, y=torch.tensor([3]))


def test_rotate_so3_orthogonal_and_normals_follow():
    transform = RandomRotateSO3()
    assert str(transform) == 'RandomRotateSO3()'
    data = _cloud()
    pos, normal = data.pos.clone(), data.normal.clone()
    out = transform(data.clone())
    rot = transform.last_rotation
    assert torch.allclose(rot @ rot.t(), torch.eye(3, dtype=rot.dtype),
                          atol=1e-12)
    assert math.isclose(float(torch.linalg.det(rot)), 1.0, abs_tol=1e-12)
    assert torch.allclose(out.pos, pos @ rot.t())
    assert torch.allclose(out.normal, normal @ rot.t())
    # Rigid: pairwise distances and point-normal angles are preserved.
    assert torch.allclose(torch.cdist(out.pos, out.pos), torch.cdist(pos, pos),
                          atol=1e-6)
    assert torch.allclose((out.pos * out.normal).sum(-1),
                          (pos * normal).sum(-1))
    assert out.y.tolist() == [3]


def test_rotate_so3_uniformity():
    # Under the Haar measure E[R] = 0 and E[R_ij^2] = 1/3.
    transform = RandomRotateSO3()
    rots = []
    for _ in range(4000):
        transform(Data(pos=torch.zeros(1, 3)))
        rots.append(transform.last_rotation)
    rots = torch.stack(rots)
    assert rots.mean(0).abs().max() < 0.05
    assert (rots.pow(2).mean(0) - 1 / 3).abs().max() < 0.03
    # The rotated first axis is uniform on the sphere: its z is U[-1, 1].
    z = rots[:, 2, 0]
    for q in (0.25, 0.5, 0.75):
        assert abs(float(torch.quantile(z, q)) - (2 * q - 1)) < 0.05


@pytest.mark.parametrize('axis', [0, 1, 2])
def test_rotate_z_keeps_axis(axis):
    transform = RandomRotateZ(axis=axis)
    assert str(transform) == f'RandomRotateZ(axis={axis})'
    data = _cloud()
    pos, normal = data.pos.clone(), data.normal.clone()
    out = transform(data)
    rot = transform.last_rotation
    assert math.isclose(float(torch.linalg.det(rot)), 1.0, abs_tol=1e-12)
    assert torch.allclose(rot @ rot.t(), torch.eye(3, dtype=rot.dtype))
    assert torch.allclose(out.pos[:, axis], pos[:, axis])
    assert torch.allclose(out.normal[:, axis], normal[:, axis])
    assert torch.allclose(out.pos, pos @ rot.t())
    assert torch.allclose(out.normal, normal @ rot.t())


def test_rotate_z_angle_uniform():
    transform = RandomRotateZ()
    angles = []
    for _ in range(3000):
        transform(Data(pos=torch.zeros(1, 3)))
        rot = transform.last_rotation
        angles.append(math.atan2(rot[1, 0], rot[0, 0]) % (2 * math.pi))
    angles = torch.tensor(angles)
    hist = torch.histc(angles, bins=4, min=0, max=2 * math.pi) / len(angles)
    assert (hist - 0.25).abs().max() < 0.04


@pytest.mark.parametrize('cls', [RandomRotateSO3, RandomRotateZ])
def test_rotate_seed_reproducible(cls):
    torch.manual_seed(7)
    a = cls()(_cloud())
    torch.manual_seed(7)
    b = cls()(_cloud())
    assert torch.equal(a.pos, b.pos) and torch.equal(a.normal, b.normal)


def test_rotate_bad_input():
    with pytest.raises(ValueError, match=r"'pos' to have shape \[N, 3\]"):
        RandomRotateSO3()(Data(pos=torch.randn(5, 2)))
    with pytest.raises(ValueError, match="'axis'"):
        RandomRotateZ(axis=3)
    with pytest.raises(ValueError, match="'normal'"):
        RandomRotateSO3()(Data(pos=torch.randn(5, 3),
                               normal=torch.randn(4, 3)))


@pytest.mark.parametrize('axis, error', [
    (True, TypeError), (False, TypeError), (2.0, TypeError),
    ('2', TypeError), (None, TypeError), (3, ValueError), (-1, ValueError),
])
def test_rotate_z_axis_is_0_1_or_2(axis, error):
    # True == 1 and 2.0 == 2: they were taken for the y and z axes.
    with pytest.raises(error) as info:
        RandomRotateZ(axis=axis)
    assert str(info.value) == (f"Expected 'axis' to be 0, 1 or 2 "
                               f"(got {axis!r})")


def test_rotate_z_takes_a_numpy_axis():
    import numpy as np
    transform = RandomRotateZ(axis=np.int64(1))
    assert type(transform.axis) is int and transform.axis == 1
    assert repr(transform) == 'RandomRotateZ(axis=1)'


@pytest.mark.parametrize('cls', [RandomRotateSO3, RandomRotateZ])
def test_rotate_integer_pos_raises(cls):
    # The rotation used to be cast to int64: all-zero coordinates.
    with pytest.raises(TypeError, match="'pos' to be a floating-point"):
        cls()(Data(pos=torch.ones(5, 3, dtype=torch.long)))
    with pytest.raises(TypeError, match="'normal' to be a floating-point"):
        cls()(Data(pos=torch.randn(5, 3),
                   normal=torch.ones(5, 3, dtype=torch.long)))
    with pytest.raises(TypeError, match="'pos' to be a Tensor"):
        cls()(Data(pos=[[0., 0., 1.]]))
