"""What SamsaConv and SamsaAttention keep between inference calls (stacked
and cast weights, batch norms' scale and shift): remade after every change
PyTorch records (in-place ops under no_grad, EMA's foreach lerp,
load_state_dict), not after writes through ``.data``, which ``.eval()``
then refreshes, as the class docstrings and docs/reliability.md say."""
import contextlib
import copy
import io
import pickle

import pytest
import torch

from samsa_geo.nn import SamsaAttention, SamsaConv


def _inputs():
    x = torch.randn(30, 16)
    batch = torch.tensor([0] * 12 + [1] * 18)
    return x, batch


def _layer():
    # norm='batch_norm' keeps its affine map in evaluation; autocast adds
    # the MLP's kept casts.
    layer = SamsaConv(16, None, heads=2, k=4, norm='batch_norm')
    with torch.no_grad():  # running statistics that are not 0 and 1
        for norm in (layer.norm2, layer.norm3):
            norm.module.running_mean.normal_()
            norm.module.running_var.uniform_(0.5, 2.0)
    return layer.eval()


def _context(autocast):
    if autocast:
        return torch.autocast('cpu', dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _scale_in_place(layer):
    for p in layer.parameters():
        p.mul_(0.5)


def _copy_in_place(layer):
    for p in layer.parameters():
        p.copy_(torch.randn_like(p))


def _ema_lerp(layer):
    # As EMA code updates its shadow weights (timm's ModelEmaV3, ...).
    params = list(layer.parameters())
    torch._foreach_lerp_(params, [torch.randn_like(p) for p in params], 0.5)


def _load_state_dict(layer):
    other = _layer()
    layer.load_state_dict(other.state_dict())


def _buffers_in_place(layer):
    layer.norm3.module.running_mean.add_(1.0)
    layer.norm2.module.running_var.mul_(2.0)


UPDATES = [_scale_in_place, _copy_in_place, _ema_lerp, _load_state_dict,
           _buffers_in_place]


@pytest.mark.parametrize('autocast', [False, True])
@pytest.mark.parametrize('update', UPDATES, ids=lambda f: f.__name__[1:])
def test_recorded_updates_are_seen_by_kept_values(update, autocast):
    x, batch = _inputs()
    layer = _layer()
    with torch.no_grad(), _context(autocast):
        before = layer(x, None, batch)
        layer(x, None, batch)  # every kept value made and read
        update(layer)
        out = layer(x, None, batch)
        layer.eval()  # drops everything kept: a fresh evaluation call
        fresh = layer(x, None, batch)
    assert not torch.equal(out, before)
    assert torch.equal(out, fresh)


@pytest.mark.parametrize('autocast', [False, True])
def test_writes_through_data_are_not_seen_until_eval(autocast):
    x, batch = _inputs()
    layer = _layer()
    with torch.no_grad(), _context(autocast):
        before = layer(x, None, batch)
        for p in layer.parameters():
            p.data.mul_(0.5)  # bumps no version counter
        stale = layer(x, None, batch)
        layer.eval()
        fresh = layer(x, None, batch)
        # The reference: a new layer holding the written values.
        ref = _layer()
        ref.load_state_dict(layer.state_dict())
        want = ref(x, None, batch)
    # Documented: the kept values still hold the old parameters.
    assert not torch.equal(stale, fresh)
    assert torch.equal(fresh, want) and not torch.equal(fresh, before)


def test_attention_kept_weights_follow_in_place_updates():
    x, batch = _inputs()
    attn = SamsaAttention(16, heads=2, k=4).eval()
    with torch.no_grad():
        attn(x, batch)
        params = list(attn.parameters())
        torch._foreach_lerp_(params, [torch.randn_like(p) for p in params],
                             0.5)
        out = attn(x, batch)
        attn.lin_q.weight.data.mul_(0.5)
        stale = attn(x, batch)
        attn.eval()
        fresh = attn(x, batch)
    assert torch.equal(stale, out)
    assert not torch.equal(fresh, out)
    ref = SamsaAttention(16, heads=2, k=4).eval()
    ref.load_state_dict(attn.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh, ref(x, batch))


def _saved_size(module):
    buf = io.BytesIO()
    torch.save(module, buf)
    return buf.tell()


def _torch_save_load(module):
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


CLONES = [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m)),
          _torch_save_load]


@pytest.mark.parametrize('clone', CLONES, ids=['deepcopy', 'pickle',
                                               'torch_save'])
@pytest.mark.parametrize('cls', [SamsaConv, SamsaAttention])
def test_copies_and_pickles_hold_no_kept_values(cls, clone):
    # Kept values are the process's own (stamped with its storage
    # pointers, keyed by module ids): a saved module holds its weights
    # only, and a copy makes its own from its own parameters.
    x, batch = _inputs()
    def build():
        if cls is SamsaConv:
            return _layer()
        return SamsaAttention(16, heads=2, k=4).eval()

    layer = build()
    args = (x, None, batch) if cls is SamsaConv else (x, batch)
    size, twin_size = _saved_size(layer), _saved_size(clone(build()))
    with torch.no_grad(), _context(True):
        layer(*args)
        out = layer(*args)
    assert _saved_size(layer) == size
    twin = clone(layer)
    assert _saved_size(twin) == twin_size
    with torch.no_grad(), _context(True):
        assert torch.equal(twin(*args), out)
        for p in twin.parameters():
            p.mul_(0.5)
        changed = twin(*args)
        assert torch.equal(layer(*args), out)
    assert not torch.equal(changed, out)


@pytest.mark.parametrize('cls', [SamsaConv, SamsaAttention])
def test_docstrings_say_what_is_kept_and_what_refreshes_it(cls):
    doc = ' '.join(cls.__doc__.split())
    for phrase in ('keep', 'in-place op on the parameter', 'no_grad',
                   '_foreach_lerp_', 'load_state_dict', 'replaced or moved',
                   '``.data``', '**not** seen', '``.eval()``'):
        assert phrase in doc, phrase
