"""Constructor arguments of SamsaAttention, ImportanceScorer, SamsaConv and
of the encoders and models built on them: wrong types and values raise
errors that name the argument."""
import numpy as np
import pytest
import torch
from torch.nn import LayerNorm, Linear

from samsa_geo.nn import RelativeBias, SamsaAttention, SamsaConv
from samsa_geo.nn.attention import ImportanceScorer
from samsa_geo.nn.encoders import (
    CategoricalEncoder,
    GraphTokenizer,
    PositionalEncoder,
    PPFPointEncoder,
    SFTPointEncoder,
)
from samsa_geo.nn.models import (
    SamsaGraphModel,
    SamsaPointBackbone,
    SamsaPointClassifier,
    SamsaPointSegmenter,
)


@pytest.mark.parametrize('kwargs, err, match', [
    (dict(num_registers=1.5), TypeError, "'num_registers' to be an int"),
    (dict(num_registers='2'), TypeError, "'num_registers' to be an int"),
    (dict(num_registers=True), TypeError, "'num_registers' to be an int"),
    (dict(num_registers=-1), ValueError, "'num_registers'"),
    (dict(dropout='0.1'), TypeError, "'dropout' to be a float"),
    (dict(dropout=True), TypeError, "'dropout' to be a float"),
    (dict(dropout=float('nan')), ValueError, "'dropout'"),
    (dict(dropout=1.0), ValueError, "'dropout'"),
    (dict(channels=True), ValueError, "'channels' to be a positive int"),
    (dict(channels=16.0), ValueError, "'channels' to be a positive int"),
    (dict(heads=True), ValueError, "'heads' to be a positive int"),
    (dict(heads=2.0), ValueError, "'heads' to be a positive int"),
    (dict(tile_size=1.5), TypeError, "'tile_size' to be an int"),
    (dict(tile_size=True), TypeError, "'tile_size' to be an int"),
    (dict(tile_size='8'), TypeError, "'tile_size' to be an int"),
    (dict(tile_size=0), ValueError, "'tile_size' to be positive"),
    (dict(relative_bias='yes'), TypeError, "'relative_bias' to be a bool"),
    (dict(stochastic_eval=1), TypeError, "'stochastic_eval' to be a bool"),
    (dict(padded='no'), TypeError, "'padded' to be a bool or None"),
])
def test_samsa_attention_arguments(kwargs, err, match):
    args = dict(channels=16, heads=2, k=4)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        SamsaAttention(**args)


@pytest.mark.parametrize('kwargs', [
    dict(num_registers=2, dropout=0, tile_size=16, padded=None),
    dict(dropout=0.1, relative_bias=True, stochastic_eval=True, padded=True),
    dict(padded=False),
])
def test_samsa_attention_valid_arguments(kwargs):
    attn = SamsaAttention(16, heads=2, k=4, **kwargs)
    pos = torch.randn(10, 3)
    assert attn(torch.randn(10, 16), pos=pos).shape == (10, 16)


@pytest.mark.parametrize('cls', [SamsaAttention, SamsaConv])
@pytest.mark.parametrize('k', [4, 0.5])
def test_numpy_integers_are_taken_as_ints(cls, k):
    # As PyG's GPSConv takes them; nothing downstream sees a NumPy type.
    torch.manual_seed(0)
    ref = cls(16, heads=4, k=k)
    torch.manual_seed(0)
    layer = cls(np.int64(16), heads=np.int32(4),
                k=np.int64(k) if isinstance(k, int) else k)
    attn = layer.attn if cls is SamsaConv else layer
    for value in (layer.channels, layer.heads, attn.channels, attn.heads,
                  attn.head_dim):
        assert type(value) is int
    assert type(attn.k) is type(k) and attn.k == k
    name = cls.__name__
    conv = ', conv=None' if cls is SamsaConv else ''
    assert repr(layer) == repr(ref) == (f"{name}(16{conv}, heads=4, k={k}, "
                                        f"sampling='hard')")
    a, b = ref.state_dict(), layer.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[key], b[key]) for key in a)
    x = torch.randn(10, 16)
    assert torch.equal(ref.eval()(x), layer.eval()(x))


@pytest.mark.parametrize('kwargs, err, message', [
    (dict(channels=np.int64(0)), ValueError,
     "Expected 'channels' to be a positive int (got np.int64(0))"),
    (dict(heads=np.int64(3)), ValueError,
     "Expected 'heads' to be a positive int dividing 'channels'=16 "
     "(got np.int64(3))"),
    (dict(k=np.int64(0)), ValueError,
     "Expected 'k' to be a positive int (got 0)"),
    (dict(k=np.bool_(True)), TypeError,
     "Expected 'k' to be an int or a float (got bool)"),
])
def test_numpy_integers_are_checked(kwargs, err, message):
    args = dict(channels=16, heads=4, k=4)
    args.update(kwargs)
    for cls in (SamsaAttention, SamsaConv):
        with pytest.raises(err) as info:
            cls(**args)
        assert str(info.value) == message


@pytest.mark.parametrize('build, message', [
    (lambda: SamsaConv(16, heads=2, k=4, norm_first='no'),
     "Expected 'norm_first' to be a bool (got 'no')"),
    (lambda: SamsaAttention(16, heads=2, k=4, relative_bias='no'),
     "Expected 'relative_bias' to be a bool (got 'no')"),
    (lambda: SamsaAttention(16, heads=2, k=4, summary=1),
     "Expected 'summary' to be a bool (got 1)"),
    (lambda: SamsaAttention(16, heads=2, k=4, padded='no'),
     "Expected 'padded' to be a bool or None (got 'no')"),
    (lambda: ImportanceScorer(16, 2, input_norm='no'),
     "Expected 'input_norm' to be a bool (got 'no')"),
])
def test_flag_errors_say_the_value(build, message):
    # One style with check_bool: the value, not its type's name.
    with pytest.raises(TypeError) as info:
        build()
    assert str(info.value) == message


@pytest.mark.parametrize('args, err, match', [
    ((16, -1), ValueError, "'heads' to be positive"),
    ((16, 0), ValueError, "'heads' to be positive"),
    ((16, 1.5), TypeError, "'heads' to be an int"),
    ((0, ), ValueError, "'channels' to be positive"),
    ((True, ), TypeError, "'channels' to be an int"),
])
def test_importance_scorer_arguments(args, err, match):
    with pytest.raises(err, match=match):
        ImportanceScorer(*args)


@pytest.mark.parametrize('args, err, message', [
    ((-1, 2), ValueError, "Expected 'in_features' to be positive (got -1)"),
    ((0, 2), ValueError, "Expected 'in_features' to be positive (got 0)"),
    ((2.5, 2), TypeError, "Expected 'in_features' to be an int (got float)"),
    ((True, 2), TypeError, "Expected 'in_features' to be an int (got bool)"),
    ((2, 0), ValueError, "Expected 'heads' to be positive (got 0)"),
    ((2, '2'), TypeError, "Expected 'heads' to be an int (got str)"),
])
def test_relative_bias_arguments(args, err, message):
    with pytest.raises(err) as info:
        RelativeBias(*args)
    assert str(info.value) == message


def test_relative_bias_valid_arguments():
    bias = RelativeBias(2, heads=4)
    assert repr(bias) == 'RelativeBias(2, heads=4)'
    assert bias.lin_scale.weight.shape == (4, 2)
    assert repr(RelativeBias(3)) == 'RelativeBias(3, heads=1)'


@pytest.mark.parametrize('x, err, match', [
    (torch.randn(5, 8), ValueError, r"'x' to have shape \[N, 16\]"),
    (torch.randn(16), ValueError, r"'x' to have shape \[N, 16\]"),
    (torch.randn(2, 5, 16), ValueError, r"'x' to have shape \[N, 16\]"),
    (torch.randint(0, 3, (5, 16)), TypeError, "'x' to be a floating-point"),
    ('x', TypeError, "'x' to be a Tensor"),
])
def test_importance_scorer_input(x, err, match):
    scorer = ImportanceScorer(16, 2)
    with pytest.raises(err, match=match):
        scorer(x)
    assert scorer(torch.randn(5, 16)).shape == (5, 2)


@pytest.mark.parametrize('kwargs, err, match', [
    (dict(conv='gine'), TypeError, "'conv' to be a Module"),
    (dict(conv=3), TypeError, "'conv' to be a Module"),
    (dict(norm='foo'), ValueError,
     r"Expected 'norm' to be the name of a normalization .*\(got 'foo'\)"),
    (dict(norm=5), TypeError, "'norm' to be a str, a Module or None"),
    (dict(act='foo'), ValueError,
     r"Expected 'act' to be the name of an activation .*\(got 'foo'\)"),
    (dict(act=None), TypeError, "'act' to be a str or a Module"),
    (dict(norm_first='yes'), TypeError, "'norm_first' to be a bool"),
])
def test_samsa_conv_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        SamsaConv(16, heads=2, k=4, **kwargs)


@pytest.mark.parametrize('name', ['attn_kwargs', 'norm_kwargs',
                                  'act_kwargs'])
@pytest.mark.parametrize('value', [[1], [], 'dropout', 0.5])
def test_samsa_conv_kwargs_must_be_dicts(name, value):
    # They raised errors of dict() or of the internal _resolve.
    with pytest.raises(TypeError) as info:
        SamsaConv(16, heads=2, k=4, **{name: value})
    assert str(info.value) == (f"Expected '{name}' to be a dict or None "
                               f"(got {type(value).__name__})")


def test_samsa_conv_kwargs_dicts_and_none():
    conv = SamsaConv(16, heads=2, k=4, attn_kwargs={'sampling': 'soft'},
                     norm_kwargs={'eps': 1e-3}, act_kwargs={})
    assert conv.attn.sampling == 'soft' and conv.norm2.module.eps == 1e-3
    conv = SamsaConv(16, heads=2, k=4, attn_kwargs=None, norm_kwargs=None,
                     act_kwargs=None)
    assert conv(torch.randn(10, 16)).shape == (10, 16)


def test_samsa_conv_norm_kwargs_errors_pass_through():
    # An error of the resolved layer itself is not reworded as an unknown
    # name.
    with pytest.raises(TypeError, match='unexpected keyword'):
        SamsaConv(16, norm='layer_norm', norm_kwargs={'colour': 1})


@pytest.mark.parametrize('kwargs', [
    dict(norm='BatchNorm'), dict(norm='layer_norm', act='gelu'),
    dict(norm=None, act=torch.nn.GELU()), dict(norm=LayerNorm(16)),
])
def test_samsa_conv_valid_norms_and_activations(kwargs):
    conv = SamsaConv(16, heads=2, k=4, **kwargs)
    assert conv(torch.randn(10, 16), None).shape == (10, 16)


# Small valid arguments of each constructor with counts; a test replaces one.
VALID = {
    PositionalEncoder: dict(in_channels=4, out_channels=8),
    CategoricalEncoder: dict(out_channels=8, num_categories=[3, 4]),
    GraphTokenizer: dict(channels=8, node_encoder=Linear(4, 8)),
    SFTPointEncoder: dict(channels=8),
    PPFPointEncoder: dict(channels=8),
    SamsaPointBackbone: dict(channels=8, num_layers=1, heads=2, k=4),
    SamsaPointClassifier: dict(num_classes=3, channels=8, num_layers=1,
                               heads=2, k=4),
    SamsaPointSegmenter: dict(num_classes=3, channels=8, num_layers=1,
                              heads=2, k=4),
    SamsaGraphModel: dict(in_channels=3, hidden_channels=8, out_channels=2,
                          num_layers=1, heads=2, k=4),
}

COUNTS = [(cls, name) for cls, names in [
    (PositionalEncoder, ['in_channels', 'out_channels', 'hidden_channels',
                         'num_layers', 'phi_channels']),
    (CategoricalEncoder, ['out_channels']),
    (GraphTokenizer, ['channels', 'id_channels']),
    (SFTPointEncoder, ['channels', 'random_channels']),
    (PPFPointEncoder, ['channels', 'num_neighbors', 'hidden_channels']),
    (SamsaPointBackbone, ['in_channels', 'channels', 'num_layers',
                          'num_neighbors', 'random_channels']),
    (SamsaPointClassifier, ['num_classes', 'in_channels']),
    (SamsaPointSegmenter, ['num_classes', 'num_categories']),
    (SamsaGraphModel, ['in_channels', 'hidden_channels', 'out_channels',
                       'num_layers', 'edge_dim', 'pe_channels',
                       'id_channels']),
] for name in names]


@pytest.mark.parametrize('value', [True, False])
@pytest.mark.parametrize('cls, name', COUNTS, ids=[
    f'{cls.__name__}-{name}' for cls, name in COUNTS])
def test_counts_must_not_be_bools(cls, name, value):
    # bool is a subclass of int: True passed isinstance(value, int) as 1
    # (SamsaGraphModel(in_channels=True) built a model of one channel) or
    # failed inside torch, False as 0 where 0 is allowed.
    with pytest.raises(TypeError) as info:
        cls(**{**VALID[cls], name: value})
    assert str(info.value) == f"Expected '{name}' to be an int (got bool)"


@pytest.mark.parametrize('value', [True, False])
def test_categorical_encoder_category_counts_must_not_be_bools(value):
    with pytest.raises(TypeError) as info:
        CategoricalEncoder(8, [3, value])
    assert str(info.value) == ("Expected 'num_categories[1]' to be an int "
                               "(got bool)")


@pytest.mark.parametrize('cls, kwargs, err, message', [
    (SamsaPointBackbone, dict(in_channels=-1), ValueError,
     "Expected 'in_channels' to be non-negative (got -1)"),
    (SamsaPointBackbone, dict(num_layers=2.0), TypeError,
     "Expected 'num_layers' to be an int (got float)"),
    (SamsaPointBackbone, dict(random_channels=-1), ValueError,
     "Expected 'random_channels' to be non-negative (got -1)"),
    (SamsaPointSegmenter, dict(num_categories=-1), ValueError,
     "Expected 'num_categories' to be non-negative (got -1)"),
    (SamsaGraphModel, dict(edge_dim=0), ValueError,
     "Expected 'edge_dim' to be positive (got 0)"),
    (GraphTokenizer, dict(id_channels=np.int64(4)), TypeError,
     "Expected 'id_channels' to be an int (got int64)"),
    (PositionalEncoder, dict(hidden_channels=-1), ValueError,
     "Expected 'hidden_channels' to be non-negative (got -1)"),
])
def test_count_errors(cls, kwargs, err, message):
    with pytest.raises(err) as info:
        cls(**{**VALID[cls], **kwargs})
    assert str(info.value) == message


def test_counts_that_were_taken_still_are():
    # 0 where a count may be 0; hidden_channels=0, as None, is the default
    # width; PositionalEncoder's hidden_channels takes a NumPy int.
    assert SamsaPointBackbone(in_channels=0, **VALID[SamsaPointBackbone])
    assert SamsaPointSegmenter(**VALID[SamsaPointSegmenter],
                               num_categories=0).category_emb is None
    assert GraphTokenizer(8, Linear(4, 8), id_channels=0,
                          edge_tokens=False).id_channels == 0
    assert SFTPointEncoder(8, random_channels=0).random_channels == 0
    assert PPFPointEncoder(8, hidden_channels=0).hidden_channels == 8
    assert PositionalEncoder(4, 8, hidden_channels=0).hidden_channels == 8
    assert PositionalEncoder(4, 8,
                             hidden_channels=np.int64(6)).hidden_channels == 6
    assert CategoricalEncoder(8, np.array([3, 4])).num_categories == [3, 4]
