"""stacked_cast: one concatenation and one cast for the parameters of
several linear layers, with the values and gradients of separate casts;
the layers that use it compute what they computed with autocast's own
casts."""
import pytest
import torch

import samsa_geo.nn.attention.samsa_attention as samsa_attention
import samsa_geo.nn.conv.samsa_conv as samsa_conv
from samsa_geo.nn import SamsaConv
from samsa_geo.nn.attention import config
from samsa_geo.nn.attention._stacked import _apply, stacked_cast
from samsa_geo.testing import autograd_node_kinds


def params(dtype=torch.float64):
    shapes = [(3, 4), (2, 4), (3, ), (2, ), (5, 2), (5, )]
    return [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]


def grouped(t):
    return [[t[0], t[1]], [t[2], t[3]], [t[4]], [t[5]]]


def reference(groups, dtype):
    # The separate casts (and concatenations) stacked_cast stands for.
    return [torch.cat([t.to(dtype) for t in g], 0) for g in groups]


def test_gradcheck_float64():
    # Through the autograd Function (forced: nothing to cast in float64).
    torch.autograd.gradcheck(
        lambda *t: tuple(_apply(grouped(t), torch.float64)), params())
    torch.autograd.gradcheck(
        lambda *t: tuple(stacked_cast(grouped(t), torch.float64)), params())


def test_shapes_and_one_buffer():
    out = stacked_cast(grouped(params(torch.float32)), torch.bfloat16)
    assert [list(o.shape) for o in out] == [[5, 4], [5], [5, 2], [5]]
    assert all(o.dtype == torch.bfloat16 for o in out)
    assert len({o.untyped_storage().data_ptr() for o in out}) == 1


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_values_and_gradients_equal_separate_casts(dtype):
    t = params(torch.float32)
    weights = [torch.randn(o.shape) for o in reference(grouped(t), dtype)]

    def loss(out):
        return sum((o.float() * w).sum() for o, w in zip(out, weights))

    out = stacked_cast(grouped(t), dtype)
    ref = reference(grouped(t), dtype)
    for o, r in zip(out, ref):
        assert torch.equal(o, r)
    got = torch.autograd.grad(loss(out), t)
    want = torch.autograd.grad(loss(ref), t)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and torch.equal(g, w)


def test_nothing_to_cast_passes_single_tensors_through():
    t = params(torch.float32)
    out = stacked_cast(grouped(t), torch.float32)
    assert out[2] is t[4] and out[3] is t[5]
    assert torch.equal(out[0], torch.cat([t[0], t[1]]))


def test_bad_input():
    t = params(torch.float32)
    with pytest.raises(TypeError, match="'dtype'"):
        stacked_cast(grouped(t), 'bf16')
    with pytest.raises(ValueError, match="'groups'"):
        stacked_cast([[t[0]], []], torch.bfloat16)
    with pytest.raises(TypeError, match="dtype torch.float32"):
        stacked_cast([[t[0], t[1].double()]], torch.bfloat16)
    with pytest.raises(ValueError, match='every dim but the first'):
        stacked_cast([[t[0], t[4]]], torch.bfloat16)


def separate_casts(groups, dtype):
    # What the layers computed before: autocast casts each tensor itself.
    return [torch.cat(g, 0) if len(g) > 1 else g[0] for g in groups]


@pytest.mark.parametrize('sampling', ['hard', 'soft', 'sft', 'full'])
@pytest.mark.parametrize('train', [True, False])
def test_samsa_conv_step_equals_separate_casts(monkeypatch, sampling, train):
    # A training step (and an inference call) under bf16 autocast: the
    # output and every gradient equal those of autocast's own casts.
    torch.manual_seed(0)
    conv = SamsaConv(32, heads=4, k=6,
                     attn_kwargs=dict(sampling=sampling)).train(train)
    x = torch.randn(3 * 20, 32)
    batch = torch.arange(3).repeat_interleave(20)

    def step():
        torch.manual_seed(1)
        conv.attn._projection_cache = None
        xg = x.clone().requires_grad_(train)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            with torch.set_grad_enabled(train):
                out = conv(xg, None, batch, num_graphs=3, max_num_nodes=20)
        if not train:
            return [out]
        out.float().square().mean().backward()
        grads = [xg.grad] + [p.grad for p in conv.parameters()]
        conv.zero_grad(set_to_none=True)
        return [out] + grads

    with config.attention_config(stacked_casts=True):
        got = step()
    with config.attention_config(stacked_casts=False):
        off = step()
    monkeypatch.setattr(samsa_attention, 'stacked_cast', separate_casts)
    monkeypatch.setattr(samsa_conv, 'stacked_cast', separate_casts)
    with config.attention_config(stacked_casts=True):
        want = step()
    assert len(got) == len(want) == len(off)
    # Equal up to the float32 rounding of gradients that cancel to about
    # zero (the bias before the scorer's LayerNorm: about 1e-9), which the
    # scorer's training node sums in another order.
    scale = max(float(w.abs().max()) for w in want if w is not None)
    for g, o, w in zip(got, off, want):
        assert (g is None) == (o is None) == (w is None)
        if g is not None:
            assert g.dtype == w.dtype
            assert torch.allclose(g, w, rtol=1e-6, atol=1e-9 * scale)
            assert torch.allclose(o, w, rtol=1e-6, atol=1e-9 * scale)


@pytest.mark.parametrize('stacked', [True, False])
def test_training_step_casts_parameters_behind_two_nodes(stacked):
    # The parameters autocast would cast (projection weights and biases
    # stacked, the scorer's second layer, lin_out, MLP): behind two nodes;
    # the two casts left are of activations (x and the MLP's input; the
    # scorer's training node casts inside itself). Without the switch:
    # eight casts of parameters (the scorer's node takes its float32
    # parameters and casts them itself).
    conv = SamsaConv(32, heads=4, k=6).train()
    x = torch.randn(60, 32, requires_grad=True)
    batch = torch.arange(3).repeat_interleave(20)
    with config.attention_config(stacked_casts=stacked):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = conv(x, None, batch, num_graphs=3, max_num_nodes=20)
    kinds = autograd_node_kinds(out)
    assert kinds['ScoreTailBackward'] == 1
    if stacked:
        assert kinds['_StackedCastBackward'] == 2
        assert kinds['ToCopyBackward0'] == 2
    else:
        assert '_StackedCastBackward' not in kinds
        assert kinds['ToCopyBackward0'] == 2 + 8
