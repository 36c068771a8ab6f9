import pytest
import torch
import torch.nn.functional as F

from samsa_geo.nn.models import SamsaPointSegmenter

ATOL = 1e-4  # float32, evaluation mode (as stated in the docstring)


def _rotation() -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.float()


def _perturb(model: torch.nn.Module, std: float = 0.1) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn_like(p))


def _clouds(sizes=(70, 40, 55)):
    n = sum(sizes)
    pos = torch.randn(n, 3) * torch.tensor([1.0, 2.0, 0.5])
    normal = F.normalize(torch.randn(n, 3), dim=-1)
    batch = torch.repeat_interleave(torch.arange(len(sizes)),
                                    torch.tensor(sizes))
    return pos, normal, batch, torch.tensor([2, 0, 5])


def _small(**kwargs):
    kwargs = {'k': 24, 'num_neighbors': 8, 'num_categories': 6,
              'attn_kwargs': {'num_registers': 4}, **kwargs}
    return SamsaPointSegmenter.small(7, **kwargs)


def test_repr_and_shape():
    model = _small(in_channels=3)
    assert repr(model) == (
        "SamsaPointSegmenter(7, num_categories=6, in_channels=3, "
        "rotation_invariant=False, encoder='linear', channels=64, "
        "num_layers=2, heads=4, k=24, local_conv=False)")
    pos, normal, batch, category = _clouds()
    assert model(pos, batch, normal, category).shape == (165, 7)
    out = _small(num_categories=0)(pos, batch)
    assert out.shape == (165, 7)


@pytest.mark.parametrize('kwargs,expected', [
    (dict(), 101_674),
    (dict(rotation_invariant=True), 110_698),
    (dict(rotation_invariant=True, encoder='sft'), 105_898),
])
def test_small_parameter_count(kwargs, expected):
    model = SamsaPointSegmenter.small(50, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_default_parameter_count():
    model = SamsaPointSegmenter(50)
    assert sum(p.numel() for p in model.parameters()) == 5_523_634


def test_category_conditioning():
    model = _small().eval()
    pos, _, batch, category = _clouds()
    out = model(pos, batch, category=category)
    per_point = model(pos, batch, category=category[batch])
    assert torch.equal(out, per_point)
    other = model(pos, batch, category=torch.tensor([3, 0, 5]))
    assert not torch.allclose(other[:70], out[:70])
    # Clouds 1 and 2 do not see cloud 0's category.
    assert torch.allclose(other[70:], out[70:], atol=1e-6)


@pytest.mark.parametrize('kwargs', [
    dict(in_channels=3),
    dict(in_channels=3, local_conv=True),
    dict(rotation_invariant=True, in_channels=3),
    dict(rotation_invariant=True, encoder='sft'),
])
def test_permutation_equivariance_and_batch_isolation(kwargs):
    model = _small(**kwargs)
    _perturb(model)
    model.eval()
    pos, normal, batch, category = _clouds()
    x = normal if model.backbone.in_channels else None
    out = model(pos, batch, x, category)
    perm = torch.cat([torch.randperm(70), 70 + torch.randperm(40),
                      110 + torch.randperm(55)])
    x_perm = x[perm] if x is not None else None
    assert torch.allclose(model(pos[perm], batch, x_perm, category),
                          out[perm], atol=1e-5)
    sl = slice(70, 110)
    alone = model(pos[sl], None, x[sl] if x is not None else None,
                  category[1:2])
    assert torch.allclose(alone, out[sl], atol=1e-5)


@pytest.mark.parametrize('encoder', ['ppf', 'sft'])
@pytest.mark.parametrize('with_normal', [True, False])
def test_rotation_translation_invariance(encoder, with_normal):
    model = _small(rotation_invariant=True, encoder=encoder,
                   in_channels=3 if with_normal else 0, local_conv=True)
    _perturb(model)
    model.eval()
    pos, normal, batch, category = _clouds()
    normal = normal if with_normal else None
    out = model(pos, batch, normal, category)
    for _ in range(3):
        R, t = _rotation(), 5 * torch.randn(3)
        rot_normal = normal @ R.T if with_normal else None
        out_rot = model(pos @ R.T + t, batch, rot_normal, category)
        assert torch.allclose(out_rot, out, atol=ATOL)


DEGENERATE = {
    'all_equal': torch.ones(30, 3) * 0.3,
    'collinear': torch.linspace(0, 1, 30)[:, None] * torch.tensor([1., 2., 3.]),
    'planar': torch.cat([torch.randn(30, 2), torch.zeros(30, 1)], dim=1),
    'duplicates': torch.randn(10, 3).repeat(3, 1),
}


@pytest.mark.parametrize('name', list(DEGENERATE))
@pytest.mark.parametrize('kwargs', [
    dict(local_conv=True),
    dict(rotation_invariant=True, in_channels=3),
    dict(rotation_invariant=True, encoder='sft'),
])
def test_degenerate_inputs_finite_and_gradients(name, kwargs):
    model = _small(**kwargs)
    pos = DEGENERATE[name].clone().requires_grad_()
    x = torch.zeros_like(pos) if model.backbone.in_channels else None
    category = torch.tensor([1])
    model(pos, None, x, category).square().sum().backward()
    assert torch.isfinite(pos.grad).all()
    for name_, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name_
    model.eval()
    assert torch.isfinite(model(pos, None, x, category)).all()


def test_learns_a_part_split():
    # Part 0: upper half of a sphere, part 1: lower half; two categories.
    torch.manual_seed(0)
    pos = F.normalize(torch.randn(4 * 64, 3), dim=-1)
    batch = torch.arange(4).repeat_interleave(64)
    category = torch.tensor([0, 1, 0, 1])
    y = (pos[:, 2] < 0).long() + 2 * category[batch]
    model = SamsaPointSegmenter.small(4, num_categories=2, channels=32, k=32,
                                      head_dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(50):
        loss = F.cross_entropy(model(pos, batch, category=category), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    acc = (model(pos, batch, category=category).argmax(-1) == y).float()
    assert acc.mean() > 0.95


def test_bad_input():
    model = _small()
    pos, _, batch, category = _clouds()
    with pytest.raises(ValueError, match="'category' of shape"):
        model(pos, batch)
    with pytest.raises(ValueError, match=r"'category' to have shape \[3\]"):
        model(pos, batch, category=torch.tensor([0, 1]))
    with pytest.raises(IndexError, match="'category' in"):
        model(pos, batch, category=torch.tensor([0, 1, 6]))
    with pytest.raises(TypeError, match="'category' to be an integer"):
        model(pos, batch, category=torch.zeros(3))
    with pytest.raises(ValueError, match="'category' to be None"):
        _small(num_categories=0)(pos, batch, category=category)
    with pytest.raises(ValueError, match="'batch' to have shape"):
        model(pos, batch[:-1], category=category)
