"""What SamsaConv and SamsaAttention keep between inference calls (stacked
and cast weights, batch norms' scale and shift): remade after every change
PyTorch records (in-place ops under no_grad, EMA's foreach lerp,
load_state_dict), not after writes through ``.data``, which ``.eval()``
then refreshes, as the class docstrings and docs/reliability.md say; never
carried by copies; and module operations after inference calls (dtype
conversions, inference mode, frozen fine-tuning, re-initialisation) give
what a fresh layer gives after the same operations."""
import contextlib
import copy
import io
import pickle

import pytest
import torch

from samsa_geo.nn import SamsaAttention, SamsaConv


def _inputs(dtype=torch.float32):
    x = torch.randn(30, 16, generator=torch.Generator().manual_seed(1),
                    dtype=dtype)
    batch = torch.tensor([0] * 12 + [1] * 18)
    return x, batch


def _layer(seed=None):
    # norm='batch_norm' keeps its affine map in evaluation; autocast adds
    # the MLP's kept casts.
    if seed is not None:
        torch.manual_seed(seed)
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


def _eval(layer, dtype=torch.float32, autocast=False, mode=torch.no_grad):
    x, batch = _inputs(dtype)
    layer.eval()
    with mode(), _context(autocast):
        layer(x, None, batch)
        return layer(x, None, batch)


@pytest.mark.parametrize('autocast', [False, True])
@pytest.mark.parametrize('convert', [
    lambda m: m.double(),
    lambda m: m.to(torch.bfloat16),
    lambda m: m.to(torch.bfloat16).float(),
    lambda m: m.double().float(),
], ids=['double', 'bfloat16', 'bfloat16_float', 'double_float'])
def test_conversions_after_inference_calls_equal_a_fresh_layer(convert,
                                                               autocast):
    layer = _layer(0)
    _eval(layer, autocast=autocast)  # every kept value made
    layer = convert(layer)
    dtype = layer.attn.lin_q.weight.dtype
    ref = convert(_layer(0))
    autocast = autocast and dtype == torch.float32
    out = _eval(layer, dtype, autocast)
    assert out.dtype == dtype
    assert torch.equal(out, _eval(ref, dtype, autocast))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('autocast', [False, True])
def test_inference_mode_equals_no_grad_and_leaks_nothing(dtype, autocast):
    autocast = autocast and dtype == torch.float32
    layer = _layer(0).to(dtype)
    out = _eval(layer, dtype, autocast, torch.inference_mode)
    assert not out.requires_grad
    assert torch.equal(out, _eval(layer, dtype, autocast))
    # A training step after inference mode: the gradients of a layer that
    # never ran in it.
    _eval(layer, dtype, autocast, torch.inference_mode)
    ref = _layer(0).to(dtype)
    x, batch = _inputs(dtype)
    grads = []
    for m in (layer, ref):
        m.train()
        torch.manual_seed(2)
        with _context(autocast):
            loss = m(x, None, batch).float().square().sum()
        loss.backward()
        grads.append([p.grad for p in m.parameters()])
    for g, g_ref in zip(*grads):
        assert g is not None and torch.equal(g, g_ref)


@pytest.mark.parametrize('autocast', [False, True])
def test_frozen_fine_tuning_after_inference_calls(autocast):
    # Half the parameters frozen (the attention), the others trained: the
    # frozen ones keep their values, and evaluation equals a fresh layer
    # with the trained weights.
    layer = _layer(0)
    _eval(layer, autocast=autocast)
    layer.attn.requires_grad_(False)
    frozen = copy.deepcopy(layer.attn.state_dict())
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad],
                          lr=0.1)
    x, batch = _inputs()
    layer.train()
    for _ in range(2):
        with _context(autocast):
            loss = layer(x, None, batch).float().square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, t in layer.attn.state_dict().items():
        assert torch.equal(t, frozen[name]), name
    out = _eval(layer, autocast=autocast)
    ref = _layer(seed=5)
    ref.load_state_dict(layer.state_dict())
    assert torch.equal(out, _eval(ref, autocast=autocast))
    assert not torch.equal(out, _eval(_layer(0), autocast=autocast))


def _reset_children(module):
    module.apply(lambda m: m.reset_parameters()
                 if hasattr(m, 'reset_parameters') and m is not module
                 else None)


@pytest.mark.parametrize('autocast', [False, True])
@pytest.mark.parametrize('reset', [lambda m: m.reset_parameters(),
                                   _reset_children],
                         ids=['reset_parameters', 'apply'])
def test_reinitialised_after_inference_calls_equals_a_fresh_layer(
        reset, autocast):
    layer = _layer(0)
    before = _eval(layer, autocast=autocast)
    torch.manual_seed(3)
    reset(layer)
    ref = _layer(seed=7)
    torch.manual_seed(3)
    reset(ref)
    out = _eval(layer, autocast=autocast)
    assert not torch.equal(out, before)
    assert torch.equal(out, _eval(ref, autocast=autocast))


@pytest.mark.parametrize('autocast', [False, True])
def test_copy_loaded_with_new_weights_leaves_the_original(autocast):
    layer = _layer(0)
    out = _eval(layer, autocast=autocast)
    twin = copy.deepcopy(layer)
    assert torch.equal(_eval(twin, autocast=autocast), out)
    other = _layer(seed=5)
    twin.load_state_dict(other.state_dict())
    assert torch.equal(_eval(twin, autocast=autocast),
                       _eval(other, autocast=autocast))
    assert torch.equal(_eval(layer, autocast=autocast), out)


def test_conversions_drop_the_kept_values():
    # .half().float() (or .to(), .cuda()) gives the parameters new storage,
    # which may take the old one's address, with new version counters: the
    # stamps alone could then match, so the kept values go at once.
    layer = _layer(0)
    _eval(layer, autocast=True)
    assert layer._mlp_cache is not None and layer._affine_cache
    assert layer.attn._projection_cache is not None
    layer = layer.half().float()
    assert layer._mlp_cache is None and layer._affine_cache == {}
    assert layer.attn._projection_cache is None
    assert torch.equal(_eval(layer, autocast=True),
                       _eval(_layer(0).half().float(), autocast=True))
