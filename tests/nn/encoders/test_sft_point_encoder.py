import pytest
import torch

from samsa_geo.nn.encoders import SFTPointEncoder

ATOL = 1e-4  # float32, evaluation mode (as stated in the docstring)


def _rotation(det: float = 1.0) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) * det < 0:
        q[:, 0] = -q[:, 0]
    return q.float()


def _cloud(n: int = 50):
    pos = torch.randn(n, 3)
    normal = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    return pos, normal


def test_repr_and_shape():
    enc = SFTPointEncoder(32, random_channels=8)
    assert repr(enc) == 'SFTPointEncoder(32, random_channels=8)'
    pos, normal = _cloud()
    assert enc(pos, normal=normal).shape == (50, 32)
    assert sum(p.numel() for p in enc.parameters()) == (
        32 + 3 * 32 + 32 + 32 * 32 + 32 + 8 * 32 + 1)


def test_scalars_values():
    enc = SFTPointEncoder(8)
    pos = torch.tensor([[1., 0., 0.], [-1., 0., 0.], [0., 3., 0.],
                        [0., -3., 0.]])
    normal = torch.tensor([[1., 0., 0.], [0., 1., 0.], [0., 0., 1.],
                           [0., 2., 0.]])
    batch = torch.zeros(4, dtype=torch.long)
    s = enc.scalars(pos, batch, 1, normal)
    rms = (20 / 4) ** 0.5
    expected = torch.tensor([[1., 1 / rms, 1.], [1., 1 / rms, 0.],
                             [3., 3 / rms, 0.], [3., 3 / rms, -1.]])
    assert torch.allclose(s, expected, atol=1e-5)


@pytest.mark.parametrize('with_normal', [True, False])
@pytest.mark.parametrize('det', [1.0, -1.0])
def test_rotation_translation_invariance(with_normal, det):
    enc = SFTPointEncoder(32, random_channels=4).eval()
    pos, normal = _cloud(80)
    pos = pos * torch.tensor([1.0, 2.0, 0.5])  # anisotropic
    batch = torch.tensor([0] * 30 + [1] * 50)
    normal = normal if with_normal else None
    out = enc(pos, batch, normal)
    for _ in range(5):
        R, t = _rotation(det), 5 * torch.randn(3)
        rot_normal = normal @ R.T if with_normal else None
        out_rot = enc(pos @ R.T + t, batch, rot_normal)
        assert torch.allclose(out, out_rot, atol=ATOL)


def test_permutation_and_batch_isolation():
    enc = SFTPointEncoder(16).eval()
    pos, normal = _cloud(60)
    batch = torch.tensor([0] * 25 + [1] * 35)
    out = enc(pos, batch, normal)
    perm = torch.cat([torch.randperm(25), 25 + torch.randperm(35)])
    assert torch.allclose(enc(pos[perm], batch, normal[perm]), out[perm],
                          atol=1e-6)
    alone = enc(pos[:25], None, normal[:25])
    assert torch.allclose(alone, out[:25], atol=1e-6)


def test_random_features():
    enc = SFTPointEncoder(16, random_channels=4)
    pos, _ = _cloud()
    enc.train()
    assert not torch.allclose(enc(pos), enc(pos))
    enc.eval()
    assert torch.equal(enc(pos), enc(pos))
    enc.stochastic_eval = True
    assert not torch.allclose(enc(pos), enc(pos))


DEGENERATE = {
    'one_point': torch.zeros(1, 3),
    'all_equal': torch.ones(20, 3) * 0.3,
    'collinear': torch.linspace(0, 1, 20)[:, None] * torch.tensor([1., 2., 3.]),
    'planar': torch.cat([torch.randn(20, 2), torch.zeros(20, 1)], dim=1),
    'duplicates': torch.randn(5, 3).repeat(4, 1),
}


@pytest.mark.parametrize('name', list(DEGENERATE))
def test_degenerate_inputs_finite(name):
    enc = SFTPointEncoder(16, random_channels=2)
    pos = DEGENERATE[name].clone().requires_grad_()
    normal = torch.zeros_like(pos).requires_grad_()
    out = enc(pos, normal=normal)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(pos.grad).all() and torch.isfinite(normal.grad).all()
    for p in enc.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_bad_input():
    enc = SFTPointEncoder(8)
    with pytest.raises(ValueError, match=r"'pos' to have shape \[N, 3\]"):
        enc(torch.randn(5, 2))
    with pytest.raises(ValueError, match="'normal'"):
        enc(torch.randn(5, 3), normal=torch.randn(4, 3))
    with pytest.raises(ValueError, match="'batch'"):
        enc(torch.randn(3, 3), torch.tensor([1, 0, 0]))
    with pytest.raises(ValueError, match="'random_channels'"):
        SFTPointEncoder(8, random_channels=-1)


@pytest.mark.parametrize('value', ['no', 1, None])
def test_stochastic_eval_must_be_a_bool(value):
    with pytest.raises(TypeError) as info:
        SFTPointEncoder(8, stochastic_eval=value)
    assert str(info.value) == (f"Expected 'stochastic_eval' to be a bool "
                               f"(got {value!r})")
