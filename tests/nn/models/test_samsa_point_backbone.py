import pytest
import torch

from samsa_geo.nn.models import (
    SamsaPointBackbone,
    SamsaPointClassifier,
    SamsaPointSegmenter,
)
from samsa_geo.nn.models.samsa_point_backbone import max_mean_pool


def clouds(B=3, n=24):
    torch.manual_seed(0)
    pos = torch.randn(B * n, 3)
    batch = torch.arange(B).repeat_interleave(n)
    return pos, batch


def test_repr_and_shape():
    backbone = SamsaPointBackbone(channels=32, num_layers=2, heads=4, k=8)
    assert repr(backbone) == (
        "SamsaPointBackbone(in_channels=0, rotation_invariant=False, "
        "encoder='linear', channels=32, num_layers=2, heads=4, k=8, "
        "local_conv=False)")
    pos, batch = clouds()
    feats = backbone.eval()(pos, batch)
    assert feats.x.shape == (72, 32) and feats.num_clouds == 3
    assert feats.max_num_points == 24
    assert torch.equal(feats.batch, batch)


@pytest.mark.parametrize('kwargs', [dict(), dict(rotation_invariant=True,
                                                 in_channels=3)])
def test_classifier_is_backbone_pool_head(kwargs):
    model = SamsaPointClassifier.small(5, num_layers=1, **kwargs).eval()
    assert model.backbone.rotation_invariant == kwargs.get(
        'rotation_invariant', False)
    pos, batch = clouds()
    x = torch.nn.functional.normalize(torch.randn_like(pos), dim=-1) \
        if kwargs else None
    with torch.no_grad():
        out = model(pos, batch, x)
        feats = model.backbone(pos, batch, x)
        assert torch.equal(out, model.head(max_mean_pool(feats)))
        # check_points + features is forward in two steps.
        layout = model.backbone.check_points(pos, batch)
        two_steps = model.backbone.features(pos, layout, x)
    assert torch.equal(two_steps.x, feats.x)


def test_segmenter_adds_the_category_to_every_token():
    model = SamsaPointSegmenter.small(6, num_categories=2,
                                      num_layers=1).eval()
    pos, batch = clouds()
    category = torch.tensor([0, 1, 1])
    with torch.no_grad():
        out = model(pos, batch, category=category)
        bias = model.category_emb(category)[batch]  # [N, C]
        feats = model.backbone(pos, batch, token_bias=bias)
        glob = max_mean_pool(feats)[batch]
        ref = model.head(torch.cat([feats.x, glob], dim=-1))
    assert torch.equal(out, ref)


def test_tokens_follow_the_parameters_dtype():
    backbone = SamsaPointBackbone(channels=16, num_layers=1, heads=2, k=4)
    assert backbone.dtype == torch.float32
    backbone = backbone.to(torch.float64)
    assert backbone.dtype == torch.float64
    pos, batch = clouds(2, 8)
    assert backbone(pos, batch).x.dtype == torch.float64


def test_bad_arguments():
    with pytest.raises(ValueError, match="'encoder' to be one of"):
        SamsaPointBackbone(encoder='mlp')
    with pytest.raises(ValueError,
                       match=r"Expected 'channels' to be positive \(got 0\)"):
        SamsaPointBackbone(channels=0)
    with pytest.raises(ValueError, match="'in_channels' to be 0 or 3"):
        SamsaPointBackbone(in_channels=2, rotation_invariant=True)
