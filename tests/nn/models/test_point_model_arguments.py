"""Edge cases and argument errors of the point models and their backbone."""
import pytest
import torch

from samsa_geo.nn.models import (
    SamsaPointBackbone,
    SamsaPointClassifier,
    SamsaPointSegmenter,
)

# Every way the backbone builds a k-NN graph: the local convolution, the PPF
# encoder, both; and the SFT encoder, which needs none.
GRAPH_OPTIONS = [
    dict(local_conv=True),
    dict(rotation_invariant=True),
    dict(rotation_invariant=True, local_conv=True),
    dict(encoder='sft', local_conv=True),
    dict(encoder='ppf'),
]


@pytest.mark.parametrize('batch', [None, torch.zeros(0, dtype=torch.long)])
@pytest.mark.parametrize('kwargs', GRAPH_OPTIONS)
def test_zero_points_give_zero_clouds_with_a_knn_graph(kwargs, batch):
    # As without a k-NN graph (docs/reliability.md): [0, num_classes].
    model = SamsaPointClassifier.small(5, **kwargs).eval()
    assert model(torch.zeros(0, 3), batch).shape == (0, 5)
    seg = SamsaPointSegmenter.small(6, num_categories=2, **kwargs).eval()
    category = torch.zeros(0, dtype=torch.long)
    assert seg(torch.zeros(0, 3), batch, category=category).shape == (0, 6)


@pytest.mark.parametrize('kwargs', [{}] + GRAPH_OPTIONS)
def test_zero_points_in_empty_clouds_pool_to_equal_logits(kwargs):
    # num_graphs=2 without points: two empty clouds, pooled to zeros.
    model = SamsaPointClassifier.small(5, **kwargs).eval()
    out = model(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long),
                num_graphs=2)
    assert out.shape == (2, 5)
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize('bias, err, match', [
    (torch.randn(10, 8), ValueError, r"'token_bias' to have shape \[10, 16\]"),
    (torch.randn(9, 16), ValueError, r"'token_bias' to have shape \[10, 16\]"),
    (torch.randn(10, 1), ValueError, r"'token_bias' to have shape"),
    (torch.randn(16), ValueError, r"'token_bias' to have shape"),
    (torch.ones(10, 16, dtype=torch.long), TypeError,
     "'token_bias' to be a floating-point"),
    ('bias', TypeError, "'token_bias' to be a Tensor"),
])
def test_token_bias_is_checked(bias, err, match):
    backbone = SamsaPointBackbone(channels=16, num_layers=1, heads=2, k=4)
    with pytest.raises(err, match=match):
        backbone(torch.randn(10, 3), token_bias=bias)


def test_token_bias_of_the_right_shape_is_added():
    backbone = SamsaPointBackbone(channels=16, num_layers=1, heads=2,
                                  k=4).eval()
    pos = torch.randn(10, 3)
    with torch.no_grad():
        zero = backbone(pos, token_bias=torch.zeros(10, 16)).x
        assert torch.equal(zero, backbone(pos).x)
        assert backbone(torch.zeros(0, 3),
                        token_bias=torch.zeros(0, 16)).x.shape == (0, 16)


@pytest.mark.parametrize('cls', [SamsaPointClassifier, SamsaPointSegmenter])
@pytest.mark.parametrize('dropout, err', [
    (1.5, ValueError), (1.0, ValueError), (-0.1, ValueError),
    (float('nan'), ValueError), ('0.5', TypeError), (True, TypeError),
])
def test_head_dropout_is_checked(cls, dropout, err):
    with pytest.raises(err, match="'head_dropout'"):
        cls.small(5, head_dropout=dropout)


POINT_MODELS = {
    'backbone': lambda **kw: SamsaPointBackbone(channels=16, num_layers=1,
                                                heads=2, k=4, **kw),
    'classifier': lambda **kw: SamsaPointClassifier(5, **kw),
    'classifier.small': lambda **kw: SamsaPointClassifier.small(5, **kw),
    'segmenter': lambda **kw: SamsaPointSegmenter(4, **kw),
    'segmenter.small': lambda **kw: SamsaPointSegmenter.small(4, **kw),
}


@pytest.mark.parametrize('model', POINT_MODELS)
@pytest.mark.parametrize('name, value', [
    ('local_conv', 'no'), ('local_conv', 1), ('rotation_invariant', 'yes'),
    ('rotation_invariant', None), ('norm_first', 'no'),
])
def test_flags_must_be_bools(model, name, value):
    # A string is true to Python: 'no' would build the other model.
    with pytest.raises(TypeError) as info:
        POINT_MODELS[model](**{name: value})
    assert str(info.value) == (f"Expected '{name}' to be a bool "
                               f"(got {value!r})")


@pytest.mark.parametrize('model', POINT_MODELS)
@pytest.mark.parametrize('name', ['attn_kwargs', 'norm_kwargs'])
def test_kwargs_must_be_dicts(model, name):
    with pytest.raises(TypeError) as info:
        POINT_MODELS[model](**{name: [1]})
    assert str(info.value) == (f"Expected '{name}' to be a dict or None "
                               f"(got list)")
