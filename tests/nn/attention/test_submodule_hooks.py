"""Hooks on the submodules of SamsaAttention (lin_q, lin_kv, lin_out, the
scorer's layers, the relative bias's): the fast paths read the weights in
stacked GEMMs and fused kernels; where a hook is set, every layer is called
as a module, so the hook runs and a weight set by a pre-hook (PyTorch's
spectral_norm, prune) is the one read. Identity hooks change nothing."""
import copy

import pytest
import torch
from torch.nn.modules import module as nn_module

from samsa_geo.nn import SamsaAttention, SamsaConv
from samsa_geo.nn.attention import ImportanceScorer, RelativeBias

CONFIGS = {
    'hard': dict(sampling='hard'),
    'soft': dict(sampling='soft'),
    'sft': dict(sampling='sft'),
    'full': dict(sampling='full', k=64),
    'registers_summary': dict(num_registers=2, summary=True),
    'scorer_norm': dict(scorer_norm=True),
    'relative_bias': dict(relative_bias=True),
    'keeps_all': dict(k=64),  # every set keeps all of its tokens
}


def make_input(seed=0, C=16):
    g = torch.Generator().manual_seed(seed)
    sizes = [9, 14, 5, 12]
    batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
    x = torch.randn(batch.numel(), C, generator=g)
    pos = torch.randn(batch.numel(), 3, generator=g)
    return x, batch, pos


def make_attention(**kwargs):
    torch.manual_seed(0)
    kwargs = dict(dict(heads=2, k=4), **kwargs)
    attn = SamsaAttention(16, **kwargs)
    with torch.no_grad():  # a relative bias that is not the identity
        for p in attn.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return attn


def own_layers(attn):
    # The Linear and LayerNorm layers of the attention, with their names.
    return [(name, m) for name, m in attn.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm))]


def run(attn, x, batch, pos, seed=1):
    torch.manual_seed(seed)
    pos = pos if attn.rel_bias is not None else None
    return attn(x, batch, pos=pos, return_indices=True, num_graphs=4)


@pytest.mark.parametrize('training', [False, True])
@pytest.mark.parametrize('name', list(CONFIGS))
def test_identity_hooks_change_nothing_and_run(name, training):
    attn = make_attention(**CONFIGS[name]).train(training)
    ref = copy.deepcopy(attn)
    calls = {}
    for layer_name, m in own_layers(attn):
        m.register_forward_hook(
            lambda m, args, out, n=layer_name: calls.update(
                {n: calls.get(n, 0) + 1}))
    x, batch, pos = make_input()
    x_ref = x.clone().requires_grad_(training)
    x = x.clone().requires_grad_(training)
    out, idx = run(attn, x, batch, pos)
    out_ref, idx_ref = run(ref, x_ref, batch, pos)
    assert torch.equal(idx, idx_ref)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    # Every layer ran once, as a module.
    assert calls == {n: 1 for n, _ in own_layers(attn)}
    if training:
        out.square().sum().backward()
        out_ref.square().sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4,
                                   atol=1e-6)
        for (n, p), p_ref in zip(attn.named_parameters(), ref.parameters()):
            assert (p.grad is None) == (p_ref.grad is None), n
            if p.grad is not None:
                # (atol: gradients that are zero up to rounding, such as
                # the relative bias's offset's under a softmax.)
                torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4,
                                           atol=1e-5, msg=n)


@pytest.mark.parametrize('training', [False, True])
def test_hook_based_spectral_norm_acts_on_the_attention_layers(training):
    # spectral_norm sets the weight from weight_orig in a pre-hook: the
    # layer reads that weight, and weight_orig gets the gradient.
    attn = make_attention().train(training)
    ref = copy.deepcopy(attn)
    for lin in (attn.lin_q, attn.lin_kv, attn.lin_out, attn.scorer.lin):
        torch.nn.utils.spectral_norm(lin)
    x, batch, pos = make_input()
    for _ in range(2):  # the power iteration moves in training
        out, idx = run(attn, x, batch, pos)
    with torch.no_grad():  # the normalised weights that call read
        for name in ('lin_q', 'lin_kv', 'lin_out'):
            getattr(ref, name).weight.copy_(getattr(attn, name).weight)
        ref.scorer.lin.weight.copy_(attn.scorer.lin.weight)
    assert not torch.allclose(attn.lin_q.weight, attn.lin_q.weight_orig)
    out_ref, idx_ref = run(ref, x, batch, pos)
    assert torch.equal(idx, idx_ref)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    if training:
        out.sum().backward()
        for lin in (attn.lin_q, attn.lin_kv, attn.lin_out, attn.scorer.lin):
            assert lin.weight_orig.grad is not None
            assert lin.weight_orig.grad.abs().sum() > 0


def test_hooks_that_change_outputs_change_the_layer():
    attn = make_attention().eval()
    ref = copy.deepcopy(attn)
    x, batch, pos = make_input()
    with torch.no_grad():
        out_ref, idx_ref = run(ref, x, batch, pos)
        # The output projection's hook doubles the layer's output.
        handle = attn.lin_out.register_forward_hook(
            lambda m, args, out: 2.0 * out)
        out, idx = run(attn, x, batch, pos)
        assert torch.equal(idx, idx_ref)
        torch.testing.assert_close(out, 2.0 * out_ref)
        handle.remove()
        # A pre-hook that negates the scorer's input to its last layer
        # ranks as the negated layer would.
        attn.scorer.lin.register_forward_pre_hook(lambda m, args: -args[0])
        ref.scorer.lin.weight.neg_()
        ref.scorer.lin.bias.neg_()
        out, idx = run(attn, x, batch, pos)
        out_ref, idx_ref = run(ref, x, batch, pos)
        assert torch.equal(idx, idx_ref)
        torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
        # Without hooks, the fast paths again.
        attn = make_attention().eval()
        assert not attn._hooked()
        attn.lin_kv.register_forward_pre_hook(lambda m, args: None)
        assert attn._hooked()


def test_a_global_module_hook_sees_the_attention_layers():
    attn = make_attention().eval()
    x, batch, pos = make_input()
    seen = []
    handle = nn_module.register_module_forward_hook(
        lambda m, args, out: seen.append(m))
    try:
        with torch.no_grad():
            run(attn, x, batch, pos)
    finally:
        handle.remove()
    for m in (attn.lin_q, attn.lin_kv, attn.lin_out, attn.scorer.lin,
              attn.scorer.norm, attn.scorer.score_nn[0]):
        assert sum(s is m for s in seen) == 1


@pytest.mark.parametrize('autocast', [False, True])
def test_scorer_modules_path_equals_its_formula(autocast):
    torch.manual_seed(0)
    scorer = ImportanceScorer(16, heads=3)
    x = torch.randn(20, 16)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        fast = scorer(x, hooked=False)
        modules = scorer(x, hooked=True)
        assert scorer._module_tree.read(scorer).hooked() is False
        checked = scorer(x)  # checks for itself
    assert modules.dtype == fast.dtype == torch.float32
    tol = 2e-2 if autocast else 1e-6
    torch.testing.assert_close(modules, fast, rtol=tol, atol=tol)
    torch.testing.assert_close(checked, fast, rtol=0, atol=0)
    # A half-precision scorer: its layers' dtype, float32 scores.
    half = copy.deepcopy(scorer).to(torch.bfloat16)
    out = half(x.bfloat16(), hooked=True)
    assert out.dtype == torch.float32 and out.shape == (20, 3)
    torch.testing.assert_close(out, fast, rtol=5e-2, atol=5e-2)


def test_relative_bias_modules_path_equals_its_formula():
    torch.manual_seed(0)
    rb = RelativeBias(2, heads=3)
    with torch.no_grad():
        for p in rb.parameters():
            p.copy_(torch.randn_like(p))
    score = torch.randn(4, 3, 5, 6)  # [c, H, T, k]
    dist, ndot = torch.rand(4, 3, 5, 6), torch.randn(4, 3, 5, 6)
    for rel in ((dist, ndot), (dist, None)):
        fast = rb(score, rel)
        seen = []
        handle = rb.lin_scale.register_forward_hook(
            lambda m, a, o: seen.append(o.shape))
        modules = rb(score, rel)
        handle.remove()
        assert seen == [(4, 3, 5, 6, 3)]  # [c, H, T, k, H]: every head's row
        torch.testing.assert_close(modules, fast, rtol=1e-5, atol=1e-6)
    # The formula, head h reading row h of A and B.
    h = 1
    a = rb.lin_scale.weight[h, 0] * dist[:, h] + rb.lin_scale.weight[h, 1] \
        * ndot[:, h] + rb.lin_scale.bias[h]
    b = rb.lin_bias.weight[h, 0] * dist[:, h] + rb.lin_bias.weight[h, 1] \
        * ndot[:, h] + rb.lin_bias.bias[h]
    want = score[:, h] * torch.nn.functional.softplus(a) + b
    torch.testing.assert_close(rb(score, (dist, ndot))[:, h], want)


def test_spectral_norm_on_the_attention_of_a_conv_trains():
    torch.manual_seed(0)
    conv = SamsaConv(16, None, heads=2, k=4)
    ref = copy.deepcopy(conv)
    torch.nn.utils.spectral_norm(conv.attn.lin_kv)
    x, batch, _ = make_input()
    torch.manual_seed(1)
    out = conv(x, None, batch)
    out.square().sum().backward()
    assert conv.attn.lin_kv.weight_orig.grad.abs().sum() > 0
    # The conv without the hook, its weight set to the normalised one
    # that call read: the same training call (and norm statistics), then
    # the same evaluation.
    with torch.no_grad():
        ref.attn.lin_kv.weight.copy_(conv.attn.lin_kv.weight)
    torch.manual_seed(1)
    torch.testing.assert_close(out, ref(x, None, batch), rtol=1e-5,
                               atol=1e-6)
    conv.eval()
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(conv(x, None, batch), ref(x, None, batch),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_attention_runs_hooks_set_before_compiling():
    # Dynamo traces the modules path where the hook is set at compile
    # time (a hook set later is PyTorch's matter: skip_nnmodule_hook_guards).
    attn = make_attention()
    x, batch, pos = make_input()
    with torch.no_grad():
        out_ref, _ = run(attn.eval(), x, batch, pos)
    attn.lin_out.register_forward_hook(lambda m, args, out: 2.0 * out)
    compiled = torch.compile(attn, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, batch, num_graphs=4),
                                   2.0 * out_ref)
    attn.train()
    torch.nn.utils.spectral_norm(attn.lin_q)
    compiled = torch.compile(attn)
    compiled(x, batch, num_graphs=4).sum().backward()
    assert attn.lin_q.weight_orig.grad.abs().sum() > 0


def test_compiled_graphs_ask_the_registered_layers_for_hooks():
    # traced_hooks, a constant of a compiled graph, reads the hooks of
    # every live attention and scorer, copies and unpickled ones included.
    import gc
    import pickle

    from samsa_geo.nn.attention._module_tree import traced_hooks
    gc.collect()  # layers of other tests, hooked ones among them
    attn = make_attention()
    assert not traced_hooks()
    for other in (copy.deepcopy(attn), pickle.loads(pickle.dumps(attn))):
        handle = other.lin_q.register_forward_pre_hook(lambda m, args: None)
        assert traced_hooks()
        handle.remove()
        assert not traced_hooks()
    handle = attn.scorer.norm.register_forward_hook(lambda m, a, o: None)
    assert traced_hooks()
    del attn, handle
    gc.collect()
    assert not traced_hooks()


def test_a_hooked_relative_bias_leaves_the_fused_bias_kernel(monkeypatch):
    # The fused kernel reads lin_scale's and lin_bias's weights; where it
    # serves (CUDA), a hook on them sends the call to the explicit path.
    from samsa_geo.nn.attention import samsa_attention

    def kernel(*args, **kwargs):
        raise AssertionError('the fused bias kernel ran')

    monkeypatch.setattr(samsa_attention, 'biased_attention', kernel)
    monkeypatch.setattr(SamsaAttention, '_fused_bias', lambda *args: True)
    attn = make_attention(relative_bias=True).eval()
    x, batch, pos = make_input()
    with torch.no_grad(), pytest.raises(AssertionError, match='fused bias'):
        run(attn, x, batch, pos)
    ref = copy.deepcopy(attn)
    attn.rel_bias.lin_scale.register_forward_hook(lambda m, a, o: None)
    with torch.no_grad():
        out, _ = run(attn, x, batch, pos)  # the kernel left out
        monkeypatch.undo()
        out_ref, _ = run(ref, x, batch, pos)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
