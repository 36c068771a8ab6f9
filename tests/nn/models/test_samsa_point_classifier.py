import pytest
import torch
import torch.nn.functional as F

from samsa_geo.nn.models import SamsaPointClassifier

ATOL = 1e-4  # float32, evaluation mode (as stated in the docstring)


def _rotation() -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.float()


def _perturb(model: torch.nn.Module, std: float = 0.1) -> None:
    # Fresh relative biases and ReZero-like parts start at the identity:
    # perturb everything so that geometry really reaches every output.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn_like(p))


def _clouds(sizes=(70, 40, 55)):
    n = sum(sizes)
    pos = torch.randn(n, 3) * torch.tensor([1.0, 2.0, 0.5])
    normal = F.normalize(torch.randn(n, 3), dim=-1)
    batch = torch.repeat_interleave(torch.arange(len(sizes)),
                                    torch.tensor(sizes))
    return pos, normal, batch, sizes


def _small(**kwargs):
    # k=24 < cloud sizes: sampling is exercised; registers too.
    kwargs = {'k': 24, 'num_neighbors': 8,
              'attn_kwargs': {'num_registers': 4}, **kwargs}
    return SamsaPointClassifier.small(5, **kwargs)


def test_repr_and_shape():
    model = _small(in_channels=3)
    assert repr(model) == (
        "SamsaPointClassifier(5, in_channels=3, rotation_invariant=False, "
        "encoder='linear', channels=64, num_layers=2, heads=4, k=24, "
        "local_conv=False)")
    pos, normal, batch, _ = _clouds()
    assert model(pos, batch, normal).shape == (3, 5)
    assert model(pos[:70], None, normal[:70]).shape == (1, 5)


@pytest.mark.parametrize('kwargs,expected', [
    (dict(), 95_776),
    (dict(rotation_invariant=True), 104_800),
    (dict(rotation_invariant=True, encoder="sft"), 100_000),
    (dict(local_conv=True), 120_864),
])
def test_small_parameter_count(kwargs, expected):
    model = SamsaPointClassifier.small(40, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_default_parameter_count():
    assert sum(p.numel() for p in SamsaPointClassifier(40).parameters()) \
        == 4_111_480
    model = SamsaPointClassifier(40, rotation_invariant=True)
    assert sum(p.numel() for p in model.parameters()) == 4_245_880


@pytest.mark.parametrize('kwargs', [
    dict(in_channels=3),
    dict(in_channels=3, local_conv=True),
    dict(rotation_invariant=True, in_channels=3),
    dict(rotation_invariant=True, encoder='sft'),
])
def test_permutation_invariance_and_batch_isolation(kwargs):
    model = _small(**kwargs)
    _perturb(model)
    model.eval()
    pos, normal, batch, sizes = _clouds()
    x = normal if model.backbone.in_channels else None
    out = model(pos, batch, x)
    perm = torch.cat([torch.randperm(70), 70 + torch.randperm(40),
                      110 + torch.randperm(55)])
    x_perm = x[perm] if x is not None else None
    assert torch.allclose(model(pos[perm], batch, x_perm), out, atol=1e-5)
    # Cloud 1 alone gives what it gives inside the batch.
    sl = slice(70, 110)
    alone = model(pos[sl], None, x[sl] if x is not None else None)
    assert torch.allclose(alone, out[1:2], atol=1e-5)


@pytest.mark.parametrize('encoder', ['ppf', 'sft'])
@pytest.mark.parametrize('with_normal', [True, False])
@pytest.mark.parametrize('local_conv', [False, True])
def test_rotation_translation_invariance(encoder, with_normal, local_conv):
    model = _small(rotation_invariant=True, encoder=encoder,
                   in_channels=3 if with_normal else 0,
                   local_conv=local_conv)
    _perturb(model)
    model.eval()
    pos, normal, batch, _ = _clouds()
    normal = normal if with_normal else None
    out = model(pos, batch, normal)
    for _ in range(3):
        R, t = _rotation(), 5 * torch.randn(3)
        rot_normal = normal @ R.T if with_normal else None
        assert torch.allclose(model(pos @ R.T + t, batch, rot_normal), out,
                              atol=ATOL)


def test_non_invariant_model_sees_orientation():
    model = _small()
    _perturb(model)
    model.eval()
    pos, _, batch, _ = _clouds()
    out = model(pos, batch)
    assert not torch.allclose(model(pos @ _rotation().T, batch), out,
                              atol=1e-3)


DEGENERATE = {
    'all_equal': torch.ones(30, 3) * 0.3,
    'collinear': torch.linspace(0, 1, 30)[:, None] * torch.tensor([1., 2., 3.]),
    'planar': torch.cat([torch.randn(30, 2), torch.zeros(30, 1)], dim=1),
    'duplicates': torch.randn(10, 3).repeat(3, 1),
}


@pytest.mark.parametrize('name', list(DEGENERATE))
@pytest.mark.parametrize('kwargs', [
    dict(),
    dict(rotation_invariant=True, in_channels=3),
    dict(rotation_invariant=True, encoder='sft', local_conv=True),
])
def test_degenerate_inputs_finite(name, kwargs):
    model = _small(**kwargs)
    pos = DEGENERATE[name].clone().requires_grad_()
    x = torch.zeros_like(pos) if model.backbone.in_channels else None
    model.train()
    model(pos, None, x).square().sum().backward()
    assert torch.isfinite(pos.grad).all()
    for name_, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name_
    model.eval()
    assert torch.isfinite(model(pos, None, x)).all()


@pytest.mark.parametrize('kwargs', [
    dict(in_channels=3, local_conv=True),
    dict(rotation_invariant=True, in_channels=3, local_conv=True),
    dict(rotation_invariant=True, encoder='sft', random_channels=4),
])
def test_every_parameter_gets_a_finite_gradient(kwargs):
    model = _small(**kwargs)
    pos, normal, batch, _ = _clouds()
    x = normal if model.backbone.in_channels else None
    y = torch.tensor([0, 3, 4])
    F.cross_entropy(model(pos, batch, x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def _two_classes(rotate: bool, n: int = 64):
    # Class 0: a sphere; class 1: a cigar (rotation-invariant task) or the
    # same ellipsoid along another axis (orientation task).
    pos, y = [], []
    for c in range(8):
        p = F.normalize(torch.randn(n, 3), dim=-1)
        if rotate:
            p = p * torch.tensor([1.5, 0.3, 0.3]) if c % 2 else p
            p = p @ _rotation().T
        else:
            p = p * (torch.tensor([1.5, 0.5, 0.5]) if c % 2 else
                     torch.tensor([0.5, 1.5, 0.5]))
        pos.append(p)
        y.append(c % 2)
    return (torch.cat(pos), torch.arange(8).repeat_interleave(n),
            torch.tensor(y))


@pytest.mark.parametrize('kwargs', [
    dict(),
    dict(rotation_invariant=True),
    dict(rotation_invariant=True, encoder='sft'),
])
def test_overfits_two_easy_classes(kwargs):
    rotate = kwargs.get('rotation_invariant', False)
    pos, batch, y = _two_classes(rotate)
    model = SamsaPointClassifier.small(2, channels=32, k=32, head_dropout=0.0,
                                       **kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(50):
        loss = F.cross_entropy(model(pos, batch), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.05:
            break
    assert loss.item() < 0.05
    model.eval()
    assert (model(pos, batch).argmax(-1) == y).all()
    if rotate:  # the rotation-invariant model is right in any pose
        R = _rotation()
        assert (model(pos @ R.T, batch).argmax(-1) == y).all()


def test_bad_input():
    model = _small()
    with pytest.raises(ValueError, match=r"'pos' to have shape \[N, 3\]"):
        model(torch.randn(10, 2))
    with pytest.raises(ValueError, match="'x' to be None"):
        model(torch.randn(10, 3), None, torch.randn(10, 3))
    with pytest.raises(ValueError, match=r"'x' to have shape \[10, 3\]"):
        _small(in_channels=3)(torch.randn(10, 3), None, torch.randn(10, 4))
    with pytest.raises(ValueError, match="'in_channels' to be 0 or 3"):
        _small(rotation_invariant=True, in_channels=6)
    with pytest.raises(ValueError, match="'encoder'"):
        _small(rotation_invariant=True, encoder='linear')
    with pytest.raises(ValueError, match="'relative_bias'"):
        _small(rotation_invariant=True,
               attn_kwargs={'relative_bias': False})
    with pytest.raises(ValueError, match="'num_classes'"):
        SamsaPointClassifier(0)


def test_reset_parameters():
    model = _small(rotation_invariant=True, local_conv=True)
    pos, _, batch, _ = _clouds()
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    shifted = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(1)
    model.reset_parameters()
    # reset_parameters() reaches every parameter.
    for (name, p), s in zip(model.named_parameters(), shifted):
        assert not torch.equal(p, s), name
    out = model(pos, batch)
    # The reset model is the same function as an untouched model reset
    # from the same seed: no trace of the earlier weights is left.
    fresh = _small(rotation_invariant=True, local_conv=True).eval()
    torch.manual_seed(1)
    fresh.reset_parameters()
    for (name, a), b in zip(model.state_dict().items(),
                            fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(fresh(pos, batch), out)
    torch.manual_seed(1)
    model.reset_parameters()
    assert torch.equal(model(pos, batch), out)


@pytest.mark.parametrize('attn_kwargs', [
    {'score': 'lily', 'normalization': 'leaky', 'num_registers': 4},
    {'score': 'maxout', 'sampling': 'soft'},
])
def test_rotation_invariance_with_sft_attention_options(attn_kwargs):
    model = _small(rotation_invariant=True, encoder='sft', in_channels=3,
                   attn_kwargs=attn_kwargs)
    _perturb(model)
    model.eval()
    pos, normal, batch, _ = _clouds()
    out = model(pos, batch, normal)
    R, t = _rotation(), 5 * torch.randn(3)
    assert torch.allclose(model(pos @ R.T + t, batch, normal @ R.T), out,
                          atol=ATOL)


def test_sft_geometry_enters_through_relative_bias():
    # Two clouds of antipodal pairs on the unit sphere: every point has the
    # same invariant scalars, so all SFT tokens are equal and only the
    # pairwise features of the attention can tell the shapes apart.
    half = F.normalize(torch.randn(30, 3), dim=-1)
    spread = torch.cat([half, -half])
    clustered = F.normalize(half * torch.tensor([3.0, 0.2, 0.2]), dim=-1)
    clustered = torch.cat([clustered, -clustered])
    model = _small(rotation_invariant=True, encoder='sft')
    _perturb(model)
    model.eval()
    batch = torch.zeros(60, dtype=torch.long)
    tok_a = model.backbone.encoder(spread, batch)
    tok_b = model.backbone.encoder(clustered, batch)
    assert torch.allclose(tok_a, tok_b, atol=1e-5)
    assert torch.allclose(tok_a, tok_a[:1].expand_as(tok_a), atol=1e-5)
    out_a, out_b = model(spread), model(clustered)
    assert (out_a - out_b).abs().max() > 1e-3


def test_equal_size_pooling_matches_scatter_pooling():
    from torch_geometric.nn import global_max_pool, global_mean_pool

    from samsa_geo.nn.models.samsa_point_backbone import (
        PointFeatures,
        max_mean_pool,
    )
    h = torch.randn(3 * 7, 5)
    batch = torch.arange(3).repeat_interleave(7)
    ref = torch.cat([global_max_pool(h, batch, 3),
                     global_mean_pool(h, batch, 3)], dim=-1)
    out = max_mean_pool(PointFeatures(h, batch, 3, 7))
    assert torch.allclose(out, ref, atol=1e-6)
    # Uneven clouds take the scatter path: same values per cloud.
    batch = torch.tensor([0] * 5 + [1] * 9 + [2] * 7)
    ref = torch.cat([global_max_pool(h, batch, 3),
                     global_mean_pool(h, batch, 3)], dim=-1)
    out = max_mean_pool(PointFeatures(h, batch, 3, 9))
    assert torch.allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize('kwargs', [dict(), dict(rotation_invariant=True,
                                                 in_channels=3)])
def test_bfloat16_parameters(kwargs):
    # model.bfloat16(): tokens follow the parameters, geometry stays
    # float32, logits agree with the float32 model to bf16 accuracy.
    torch.manual_seed(0)
    pos = torch.randn(2 * 96, 3)
    batch = torch.arange(2).repeat_interleave(96)
    x = F.normalize(torch.randn_like(pos), dim=-1) if kwargs else None
    model = SamsaPointClassifier.small(10, **kwargs).eval()
    ref = model(pos, batch, x)
    out = model.bfloat16()(pos, batch, x)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_float16_rotation_invariant_classifier_is_finite():
    model = SamsaPointClassifier.small(5, rotation_invariant=True).eval()
    pos = torch.randn(64, 3)
    batch = torch.zeros(64, dtype=torch.long)
    ref = model(pos, batch)
    out = model.half()(pos.half(), batch)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=0.02, rtol=0.02)


def test_errors_name_the_tensor_at_fault():
    model = SamsaPointClassifier.small(5).eval()
    pos = torch.randn(32, 3)
    pos[4, 1] = float('nan')
    with pytest.raises(ValueError, match=r"Expected 'pos' to hold finite "
                       r"values only \(point 4"):
        model(pos)
    model = SamsaPointClassifier.small(5, in_channels=3).eval()
    x = torch.randn(32, 3)
    x[0, 0] = float('inf')
    with pytest.raises(ValueError, match=r"Expected 'x' to hold finite"):
        model(torch.randn(32, 3), x=x)


@pytest.mark.parametrize('batch', [None, torch.zeros(0, dtype=torch.long)])
def test_zero_points_give_zero_clouds(batch):
    model = SamsaPointClassifier.small(5).eval()
    assert model(torch.zeros(0, 3), batch).shape == (0, 5)
