"""CUDA checks, run on the GPU machine with `pytest -m gpu tests/gpu`."""
import pytest
import torch

from samsa_geo.nn import SamsaAttention, SamsaConv
from samsa_geo.nn.attention import config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA'),
]


def _batch(sizes, C, device):
    batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
    return torch.randn(batch.numel(), C).to(device), batch.to(device)


@pytest.mark.parametrize('kwargs', [dict(), dict(num_registers=4),
                                    dict(relative_bias=True),
                                    dict(score='maxout',
                                         normalization='leaky')])
def test_cuda_matches_cpu(kwargs):
    attn = SamsaAttention(64, heads=4, k=32, **kwargs).eval()
    x, batch = _batch([100, 7, 300], 64, 'cpu')
    pos = torch.randn(x.size(0), 3)
    ref, idx_ref = attn(x, batch, pos=pos, return_indices=True)
    attn = attn.cuda()
    out, idx = attn(x.cuda(), batch.cuda(), pos=pos.cuda(),
                    return_indices=True)
    assert torch.equal(idx.cpu(), idx_ref)
    err = (out.cpu() - ref).norm() / ref.norm()
    assert err < 1e-3, err  # tf32-class matmuls allowed


@pytest.mark.parametrize('kwargs', [dict(), dict(summary=True),
                                    dict(score='maxout',
                                         normalization='leaky'),
                                    dict(relative_bias=True)])
def test_float64_layer_trains_in_float64_on_cuda(kwargs):
    # A float64 SamsaConv computes in float64 throughout: on CUDA the
    # float32 Triton kernels (scorer, relaxation's score gradient, fused
    # relative bias and inference paths) leave it to PyTorch's formulas,
    # so a training step equals the one with every such kernel switched
    # off (the same noise: one device, one seed) to float64 rounding.
    from samsa_geo.nn import SamsaConv
    torch.manual_seed(0)
    conv = SamsaConv(64, None, heads=4, k=32,
                     attn_kwargs=kwargs).double().cuda()
    x = torch.randn(1200, 64, dtype=torch.float64, device='cuda')
    batch = torch.arange(4, device='cuda').repeat_interleave(300)
    hints = dict(num_graphs=4, max_num_nodes=300)
    if kwargs.get('relative_bias'):
        hints['pos'] = torch.randn(1200, 3, dtype=torch.float64,
                                   device='cuda')

    def step(**switches):
        conv.zero_grad()
        x_ = x.clone().requires_grad_()
        torch.manual_seed(1)
        with config.attention_config(cuda_graphs=False, **switches):
            out = conv(x_, None, batch, **hints)
        out.square().sum().backward()
        return out.detach(), x_.grad, {
            name: p.grad.clone() for name, p in conv.named_parameters()
            if p.grad is not None}

    out, grad_x, grads = step()
    ref, ref_x, ref_grads = step(fused_scorer=False, fused_relax=False,
                                 fused_bias=False, fused_inference=False)
    assert out.dtype == grad_x.dtype == torch.float64
    assert (out - ref).norm() / ref.norm() < 1e-12
    assert (grad_x - ref_x).norm() / ref_x.norm() < 1e-10
    for name, want in ref_grads.items():
        assert (grads[name] - want).norm() <= 1e-10 * want.norm() + 1e-14, \
            name


def test_bf16_close_to_fp32():
    # Scores stay float32 under autocast: bf16 changes few selections.
    attn = SamsaAttention(256, heads=8, k=64).cuda().eval()
    x, batch = _batch([1024] * 4, 256, 'cuda')
    _, idx = attn(x, batch, return_indices=True)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        _, idx16 = attn(x, batch, return_indices=True)
    same = [len(set(a.tolist()) & set(b.tolist())) / a.numel()
            for a, b in zip(idx.flatten(0, 1), idx16.flatten(0, 1))]
    assert min(same) >= 0.8 and sum(same) / len(same) >= 0.95, same
    # With the selection fixed (k >= n) bf16 is within bf16 accuracy.
    attn = SamsaAttention(256, heads=8, k=64).cuda().eval()
    x, batch = _batch([64] * 16, 256, 'cuda')
    ref = attn(x, batch)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        out = attn(x, batch)
    err = (out.float() - ref).norm() / ref.norm()
    assert err < 2e-2, err


def test_one_million_points_inference_and_training_step():
    torch.cuda.reset_peak_memory_stats()
    layers = torch.nn.ModuleList([
        SamsaConv(128, heads=8, k=256, norm='layer_norm') for _ in range(2)
    ]).cuda()
    x = torch.randn(1_000_000, 128, device='cuda')
    opt = torch.optim.AdamW(layers.parameters(), lr=1e-3)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        layers.eval()
        with torch.no_grad():
            h = x
            for layer in layers:
                h = layer(h)
        assert torch.isfinite(h).all()
        layers.train()
        h = x
        for layer in layers:
            h = layer(h)
        loss = h.float().square().mean()
    loss.backward()
    opt.step()
    assert all(torch.isfinite(p.grad).all() for p in layers.parameters())
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f'1M tokens, 2 SamsaConv(128) layers: peak {peak:.2f} GiB')


@pytest.mark.parametrize('sizes,kwargs', [([1024] * 8, dict(k=256)),
                                          ([300, 17, 700], dict(k=64,
                                           num_registers=4))])
def test_fused_relative_bias_matches_explicit(sizes, kwargs):
    # FlexAttention kernel == explicit chunked path, forward and backward
    # (training mode: same Gumbel noise through the same seed).
    from samsa_geo.nn.attention._flex import flex_supported
    assert flex_supported(torch.device('cuda'))  # Triton is there
    torch.manual_seed(0)
    attn = SamsaAttention(128, heads=8, relative_bias=True,
                          **kwargs).cuda().train()
    with torch.no_grad():
        for lin in (attn.rel_bias.lin_scale, attn.rel_bias.lin_bias):
            lin.weight.normal_(std=0.5)
    x, batch = _batch(sizes, 128, 'cuda')
    pos = torch.randn(x.size(0), 3, device='cuda')
    normal = torch.nn.functional.normalize(torch.randn_like(pos), dim=-1)
    results = []
    for fused in (True, False):
        with config.attention_config(fused_bias=fused):
            torch.manual_seed(1)
            xg = x.clone().requires_grad_()
            out = attn(xg, batch, pos=pos, normal=normal)
            grads = torch.autograd.grad(
                out.square().sum(), [xg] + list(attn.parameters()),
                allow_unused=True)
        results.append((out, grads))
    (out_f, g_f), (out_e, g_e) = results
    assert (out_f - out_e).norm() / out_e.norm() < 1e-3
    # Float32 sums over 10^6-10^7 pairs in different orders (and the
    # explicit path's |p|^2 + |q|^2 - 2 p.q distances) differ by ~0.1 %;
    # some gradients are zero in exact arithmetic (a per-head score
    # offset, the key bias): tolerances relative to each tensor's scale,
    # floored by the scale of all gradients.
    pairs = [(a, b) for a, b in zip(g_f, g_e) if b is not None]
    scale = max(b.abs().max() for _, b in pairs)
    for a, b in pairs:
        tol = 1e-2 * torch.clamp(b.abs().max(), min=1e-2 * scale)
        assert (a - b).abs().max() <= tol, ((a - b).abs().max(), tol)
    flat_f = torch.cat([a.flatten() for a, _ in pairs])
    flat_e = torch.cat([b.flatten() for _, b in pairs])
    assert (flat_f - flat_e).norm() <= 5e-3 * flat_e.norm()


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('sizes,kwargs', [([1024] * 8, dict(k=512)),
                                          ([300, 17, 700], dict(k=64,
                                           num_registers=4))])
def test_triton_inference_kernel_matches_flex_and_explicit(dtype, sizes,
                                                           kwargs):
    # Inference: samsa_geo's Triton kernel == FlexAttention == the explicit
    # path, with a non-trivial bias, normals, uneven sets and registers.
    torch.manual_seed(0)
    attn = SamsaAttention(128, heads=8, relative_bias=True, **kwargs)
    with torch.no_grad():
        for lin in (attn.rel_bias.lin_scale, attn.rel_bias.lin_bias):
            lin.weight.normal_(std=0.5)
            lin.bias.normal_(std=0.5)
    attn = attn.cuda().to(dtype).eval()
    x, batch = _batch(sizes, 128, 'cuda')
    x = x.to(dtype)
    pos = torch.randn(x.size(0), 3, device='cuda')
    normal = torch.nn.functional.normalize(torch.randn_like(pos), dim=-1)
    outs = {}
    with torch.no_grad():
        for name in ('triton', 'flex', 'explicit'):
            with config.attention_config(
                    bias_inference_kernel='flex' if name == 'flex'
                    else 'triton', fused_bias=name != 'explicit'):
                outs[name] = attn(x, batch, pos=pos, normal=normal).float()
    tol = 1e-3 if dtype == torch.float32 else 2e-2
    for name in ('flex', 'explicit'):
        err = (outs['triton'] - outs[name]).norm() / outs[name].norm()
        assert err < tol, (name, err)


@pytest.mark.parametrize('normals', [False, True])
def test_flex_training_gradients_match_explicit(normals):
    # Training through FlexAttention (per-query coefficient copies) gives
    # the explicit path's gradients, the relative bias weights included.
    torch.manual_seed(0)
    attn = SamsaAttention(64, heads=4, k=32, relative_bias=True).cuda()
    with torch.no_grad():
        for lin in (attn.rel_bias.lin_scale, attn.rel_bias.lin_bias):
            lin.weight.normal_(std=0.5)
            lin.bias.normal_(std=0.5)
    x, batch = _batch([256, 100, 256], 64, 'cuda')
    pos = torch.randn(x.size(0), 3, device='cuda')
    normal = torch.nn.functional.normalize(torch.randn_like(pos), dim=-1) \
        if normals else None
    grads = {}
    for fused in (True, False):
        torch.manual_seed(1)  # the same Gumbel noise
        attn.zero_grad()
        with config.attention_config(fused_bias=fused):
            out = attn(x, batch, pos=pos, normal=normal)
        (out * torch.linspace(-1, 1, out.numel(), device='cuda').view_as(
            out)).sum().backward()
        grads[fused] = {n: p.grad.clone() for n, p in attn.named_parameters()
                        if p.grad is not None}
    assert grads[True].keys() == grads[False].keys()
    assert any('rel_bias' in n for n in grads[True])
    # Gradients that are sums of cancelling terms (the LayerNorm bias of
    # the scorer: the pair gradients of the scores sum to zero) are
    # compared against the scale of the others.
    scale = max(g.abs().max() for g in grads[False].values())
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, rtol=1e-3,
                                   atol=1e-4 * scale, msg=name)


@pytest.mark.parametrize('mode', [None, 'reduce-overhead'])
def test_compiled_point_classifier_matches_eager(spy, mode):
    # The default classifier (relative bias) compiled, with the Triton
    # kernel as a custom operator in every layer, also under CUDA graphs:
    # same logits as eager.
    import samsa_geo.nn.attention._bias_triton as kernel
    from samsa_geo.nn.models import SamsaPointClassifier
    calls = spy(kernel, 'biased_triton_attention', keep_args=False)
    torch.manual_seed(0)
    model = SamsaPointClassifier(40).cuda().eval()
    pos = torch.randn(4 * 1024, 3, device='cuda')
    batch = torch.arange(4, device='cuda').repeat_interleave(1024)
    compiled = torch.compile(model, mode=mode)
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
        ref = model(pos, batch).float()
        calls.clear()
        for _ in range(3):  # CUDA graphs: warm-up, record, replay
            torch.compiler.cudagraph_mark_step_begin()
            out = compiled(pos, batch).float()
    assert len(calls) >= len(model.backbone.convs), \
        'compiled: fused path not taken'
    assert (out - ref).norm() / ref.norm() < 2e-2


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('C,N', [(256, 32768 - 5), (48, 32768), (768, 4099),
                                 (256, 131072 + 7)])
def test_scorer_kernel_matches_pytorch_formula(dtype, C, N, spy):
    # The fused inference kernel of the importance scorer against the
    # scorer's own PyTorch formula (the path that training takes); up to
    # 512 channels the kernel also runs GELU and the second layer (bf16:
    # an entry of y may round to the neighbouring bf16 value).
    from samsa_geo.nn.attention import ImportanceScorer, _score_triton
    torch.manual_seed(0)
    scorer = ImportanceScorer(C, heads=8).cuda().to(dtype).eval()
    x = torch.randn(N, C, device='cuda', dtype=dtype)
    calls = spy(_score_triton, 'importance_score_triton')
    with torch.no_grad():
        out = scorer(x)
        with config.attention_config(fused_scorer=False):
            ref = scorer(x)
    assert len(calls) == 1 and out.dtype == torch.float32
    assert len(calls[0]) == (10 if C <= 512 else 7)
    tol = 1e-3 if dtype == torch.float32 else 1e-2
    assert (out - ref).abs().max() < tol * ref.abs().max()
    if dtype == torch.bfloat16:  # the selection barely changes
        top = out.topk(64, 0).indices.sort(0).values
        ref_top = ref.topk(64, 0).indices.sort(0).values
        assert (top == ref_top).float().mean() > 0.9


@pytest.mark.parametrize('autocast', [False, True])
@pytest.mark.parametrize('C,N', [(256, 32768 - 5), (48, 40000),
                                 (768, 4099)])
def test_scorer_training_kernels_match_pytorch(autocast, C, N, spy):
    # Eager training: the scorer's tail forward (the inference kernel) and
    # backward (_score_grad_triton) against the node's PyTorch path,
    # scores and every gradient; beyond SCORE_GRAD_MAX_CHANNELS the node
    # keeps PyTorch's ops.
    import copy

    from samsa_geo.nn.attention import ImportanceScorer, _score_grad_triton
    torch.manual_seed(0)
    scorer = ImportanceScorer(C, heads=8).cuda()
    for p in scorer.parameters():
        p.data.normal_(0, 0.3)
    x0 = torch.randn(N, C, device='cuda')
    g = torch.randn(N, 8, device='cuda')
    calls = spy(_score_grad_triton, 'score_tail_backward_triton',
                keep_args=False)
    results = []
    for fused in (True, False):
        model = copy.deepcopy(scorer)
        x = x0.clone().requires_grad_()
        with config.attention_config(fused_scorer=fused), \
                torch.autocast('cuda', dtype=torch.bfloat16,
                               enabled=autocast):
            out = model(x)
        (out * g).sum().backward()
        results.append([out.detach(), x.grad] +
                       [p.grad for p in model.parameters()])
    assert len(calls) == (C <= 512)
    tol = 2e-2 if autocast else 1e-4
    for got, ref in zip(*results):
        assert (got - ref).norm() <= tol * ref.norm()


def test_mlp_relu_epilogue_matches_the_module():
    # In inference the MLP's first layer and ReLU are one cuBLASLt GEMM.
    conv = SamsaConv(256, None, heads=8, k=64).cuda().eval()
    h = torch.randn(4096, 256, device='cuda')
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
        out = conv._mlp(h)
        ref = conv.mlp(h)
    torch.testing.assert_close(out, ref, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize('training', [False, True])
def test_forward_never_syncs_with_a_pyg_batch(training):
    # Given a PyG Batch (num_graphs and max_num_nodes from its CPU-side
    # slices), SamsaAttention, SamsaConv, the point model and the graph
    # model run forward without a single host synchronisation.
    from torch_geometric.data import Batch, Data
    from torch_geometric.utils import erdos_renyi_graph

    from samsa_geo.nn import batch_hints
    from samsa_geo.nn.models import SamsaGraphModel, SamsaPointClassifier
    torch.manual_seed(0)
    data = Batch.from_data_list([
        Data(pos=torch.randn(n, 3)) for n in (300, 0, 1024, 5, 700)
    ]).to('cuda')
    x = torch.randn(data.num_nodes, 64, device='cuda')
    attn = SamsaAttention(64, heads=4, k=32).cuda().train(training)
    conv = SamsaConv(64, None, heads=4, k=32).cuda().train(training)
    model = SamsaPointClassifier.small(10).cuda().train(training)
    hints = batch_hints(data)
    graphs = []
    for n in (12, 3, 25, 7):  # small graphs: every one fits in k
        ei = erdos_renyi_graph(n, 0.3)
        graphs.append(Data(x=torch.randn(n, 9), edge_index=ei,
                           edge_attr=torch.randn(ei.size(1), 3)))
    mol = Batch.from_data_list(graphs).to('cuda')
    graph_model = SamsaGraphModel(9, 32, 1, 2, edge_dim=3, heads=4,
                                  k=32).cuda().train(training)
    for mode in ('default', 'error'):  # warm-up, then the checked pass
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode(mode)
        try:
            attn(x, data.batch, **hints)
            attn(x, data.batch, num_graphs=data.num_graphs)  # bounds
            conv(x, None, data.batch, **hints)
            model(data.pos, data.batch, **hints)
            graph_model(mol.x, mol.edge_index, mol.edge_attr, mol.batch,
                        **batch_hints(mol))
        finally:
            torch.cuda.set_sync_debug_mode('default')


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('sizes,R', [
    ([1024] * 32, 0), ([1024] * 32, 4), ([4096] * 8, 0),
    ([1000, 7, 0, 3000, 256, 5000, 64], 0),
    ([1000, 7, 0, 3000, 256, 5000, 64], 4),
    ([16384] * 2, 0), ([65536], 4),  # chunked selection
    ([20000, 3, 0, 9000], 2),
])
def test_fused_inference_matches_unfused(fused_inference_on, spy, dtype,
                                         sizes, R):
    # The default inference path (two Triton kernels) selects the same
    # keys as the unfused path and attends to them alike.
    from samsa_geo.nn.attention import samsa_attention as module
    torch.manual_seed(0)
    attn = SamsaAttention(256, heads=8, k=256, num_registers=R).cuda()
    attn.eval()
    x, batch = _batch(sizes, 256, 'cuda')
    hints = dict(num_graphs=len(sizes), max_num_nodes=max(sizes))
    calls = spy(module, 'fused_sampled_attention', keep_args=False)
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16,
                                         enabled=dtype == torch.bfloat16):
        out, idx = attn(x, batch, return_indices=True, **hints)
        with config.attention_config(fused_inference=False):
            ref, ref_idx = attn(x, batch, return_indices=True, **hints)
    assert len(calls) == 1
    assert torch.equal(idx.sort(-1).values, ref_idx.sort(-1).values)
    err = (out.float() - ref.float()).norm() / ref.float().norm()
    assert err < (1e-4 if dtype == torch.float32 else 1e-2), err


def test_fused_inference_leaves_large_sets_to_the_unfused_path(
        fused_inference_on, spy):
    # 9,000 tokens and k = 5,000: two chunks' winners exceed one block;
    # a set beyond FUSED_MAX_SET_SIZE (131,072 tokens).
    from samsa_geo.nn.attention import samsa_attention as module
    attn = SamsaAttention(64, heads=4, k=5000).cuda().eval()
    x, batch = _batch([9000, 100], 64, 'cuda')
    calls = spy(module, 'fused_sampled_attention', keep_args=False)
    with torch.no_grad():
        attn(x, batch, num_graphs=2, max_num_nodes=9000)
        attn(x[:200], batch[:200] * 0, num_graphs=1, max_num_nodes=200)
        assert len(calls) == 1
        small_k = SamsaAttention(64, heads=4, k=64).cuda().eval()
        big = torch.randn(131073, 64, device='cuda')
        small_k(big, None, num_graphs=1, max_num_nodes=131073)
        small_k(big[:131072], None, num_graphs=1, max_num_nodes=131072)
    assert len(calls) == 2


@pytest.mark.parametrize('mode', ['default', 'reduce-overhead'])
@pytest.mark.parametrize('sizes', [[1024] * 8, [1000, 7, 0, 3000, 64]])
def test_compiled_conv_runs_the_fused_kernels(fused_inference_on, spy, mode,
                                              sizes):
    # A compiled SamsaConv (one graph; CUDA graphs too) runs the fused
    # inference kernels as one operator: the eager layer's keys and
    # outputs.
    from samsa_geo.nn.attention import _ops
    torch.manual_seed(0)
    conv = SamsaConv(256, None, heads=8, k=256).cuda().eval()
    x, batch = _batch(sizes, 256, 'cuda')
    hints = dict(num_graphs=len(sizes), max_num_nodes=max(sizes))
    torch._dynamo.reset()
    compiled = torch.compile(conv, mode=mode, fullgraph=True)
    calls = spy(_ops, 'sampled_attention_kernels', keep_args=False)
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
        ref = conv(x, None, batch, **hints)
        for _ in range(3):  # compiled, recorded, replayed
            torch.compiler.cudagraph_mark_step_begin()
            out = compiled(x, None, batch, **hints).clone()
    assert calls  # the operator ran (CUDA graphs replay its launches)
    err = (out.float() - ref.float()).norm() / ref.float().norm()
    assert err < 1e-2, err


def test_compiled_training_recompiles_with_dynamic_shapes():
    # A compiled SamsaConv trained at one layout, then at another: the
    # second compile is dynamic (sizes as symbols). Inductor's tiling
    # analysis once asserted on the bottom scores' gradient (a pointwise
    # node over m = K - k); both layouts' outputs and gradients match the
    # eager layer's (float32: bf16 rounding could move the selection).
    torch.manual_seed(0)
    conv = SamsaConv(256, None, heads=8, k=256).cuda().train()
    params = list(conv.parameters())
    torch._dynamo.reset()
    compiled = torch.compile(conv)
    for sizes in ([1024] * 8, [4096] * 2):  # the second compile: dynamic
        x, batch = _batch(sizes, 256, 'cuda')
        hints = dict(num_graphs=len(sizes), max_num_nodes=max(sizes))
        w = torch.randn(x.shape, device='cuda')  # the loss's projection
        runs = []
        for model in (conv, compiled):
            x.grad = None
            x.requires_grad_(True)
            conv.zero_grad(set_to_none=True)
            torch.manual_seed(1)  # the same sampling noise: the compiled
            # graph draws it through PyTorch's generator (fallback_random)
            with torch._inductor.config.patch(fallback_random=True):
                out = model(x, None, batch, **hints)
            (out * w).sum().backward()
            runs.append((out.detach(), x.grad.clone(),
                         torch.cat([p.grad.flatten() for p in params])))
        for got, ref in zip(*runs[::-1]):  # (compiled, eager) pairs
            assert ((got - ref).norm() / ref.norm()) < 2e-2


def test_fused_inference_never_syncs(fused_inference_on, spy):
    from torch_geometric.data import Batch, Data

    from samsa_geo.nn import batch_hints
    from samsa_geo.nn.attention import samsa_attention as module
    data = Batch.from_data_list([
        Data(pos=torch.randn(n, 3)) for n in (300, 0, 1024, 5, 700)
    ]).to('cuda')
    x = torch.randn(data.num_nodes, 64, device='cuda')
    attn = SamsaAttention(64, heads=4, k=32, num_registers=2).cuda().eval()
    conv = SamsaConv(64, None, heads=4, k=32).cuda().eval()
    hints = batch_hints(data)
    calls = spy(module, 'fused_sampled_attention', keep_args=False)
    for mode in ('default', 'error'):  # warm-up, then the checked pass
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode(mode)
        try:
            with torch.no_grad():
                attn(x, data.batch, **hints)
                conv(x, None, data.batch, **hints)
        finally:
            torch.cuda.set_sync_debug_mode('default')
    assert len(calls) == 4


@pytest.mark.parametrize('hard', [True, False])
@pytest.mark.parametrize('sizes', [[300, 300], [300, 40, 7]])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_relaxation_on_cuda_matches_cpu(hard, sizes, dtype):
    # The fused relaxation (gather, pair weights, capped score gradient)
    # on CUDA, with float32 or bfloat16 rows (autocast's), against the
    # float32 CPU result, which tests/nn/attention/test_relax.py checks
    # against the plain-autograd formula.
    from samsa_geo.nn.attention._relax import relax
    from samsa_geo.nn.attention._sampling import select
    from samsa_geo.nn.attention._sets import set_info
    g = torch.Generator().manual_seed(0)
    batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
    N, H, F = batch.numel(), 4, 16
    score0 = torch.randn(N, H, generator=g)
    kv0 = torch.randn(N, H, F, generator=g)
    results = []
    for device, kv_dtype in (('cpu', torch.float32), ('cuda', dtype)):
        score = score0.to(device).requires_grad_()
        kv = kv0.to(device, kv_dtype).requires_grad_()
        b = batch.to(device)
        info = set_info(N, b, 32, 0, False, torch.device(device))
        sel = select(score, None, b, info, 0, False, True)
        head = torch.arange(H, device=device).view(1, -1, 1)
        out = relax(sel, kv, head, 0.2, hard, unique=info.all_valid)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        w = w.to(device)
        if sel.top_valid is not None:  # unused slots are never read
            w = w * sel.top_valid.view(-1, 1, sel.k, 1)
        gs, gkv = torch.autograd.grad((out.float() * w).sum(), (score, kv))
        results.append([t.float().cpu() for t in (out, gs, gkv)])
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for ref, got in zip(*results):
        err = (got - ref).norm() / ref.norm()
        assert err < tol, err


@pytest.mark.parametrize('amp', [None, 'bf16', 'fp16'])
def test_trainer_uses_fused_adamw_and_resumes_exactly(tmp_path, amp):
    # On CUDA the trainer's AdamW is the fused implementation (with fp16
    # AMP it takes the gradient scaler's scale and inf flags); a run
    # stopped by a crash and resumed from its checkpoint ends with the
    # weights of an uninterrupted run.
    import os.path as osp
    import sys
    sys.path.insert(0, osp.join(osp.dirname(__file__), '..', 'train'))
    from _train_toy import ToyTask
    from test_trainer import loaders, trainer

    from samsa_geo.train import load_checkpoint
    ref = trainer(tmp_path / 'ref', device='cuda', dropout=0.0, amp=amp)
    assert ref.optimizer.defaults['fused'] is True
    assert ref.scaler.is_enabled() == (amp == 'fp16')
    ref.fit(*loaders('no_shuffle'))
    crashed = trainer(tmp_path / 'run', ToyTask(fail_at=7), device='cuda',
                      dropout=0.0, amp=amp)
    with pytest.raises(RuntimeError, match='simulated crash'):
        crashed.fit(*loaders('no_shuffle'))
    assert load_checkpoint(tmp_path / 'run' / 'last.pt')['epoch'] == 1
    resumed = trainer(tmp_path / 'run', resume=True, device='cuda',
                      dropout=0.0, amp=amp)
    resumed.fit(*loaders('no_shuffle'))
    assert resumed.optimizer.param_groups[0]['fused'] is True
    torch.testing.assert_close(resumed.model.state_dict(),
                               ref.model.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize('sizes', [[1024] * 4, [300, 0, 1024, 5]])
def test_deterministic_algorithms_train_and_infer_reproducibly(sizes):
    # Trainer(deterministic=True) (--deterministic in the examples) turns
    # on PyTorch's deterministic algorithms: the layer still trains and
    # infers on CUDA, CUDA graphs included, and repeats itself bit for bit
    # (k = 128 > 64 top rows: the relaxation's Triton score gradient would
    # add each bottom score's parts from two programs in varying order).
    # The suite's autouse fixture switches the flags back afterwards.
    from samsa_geo.train import enable_determinism
    enable_determinism()
    x, batch = _batch(sizes, 64, 'cuda')
    hints = dict(num_graphs=len(sizes), max_num_nodes=max(sizes))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        conv = SamsaConv(64, None, heads=4, k=128).cuda().train()
        for _ in range(3):  # eager, eager, captured (the layer's graphs)
            conv.zero_grad()
            conv(x, None, batch, **hints).square().sum().backward()
        runs.append([p.grad.clone() for p in conv.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    conv.eval()
    with torch.no_grad():
        outs = [conv(x, None, batch, **hints) for _ in range(4)]
    for out in outs[1:]:
        assert torch.equal(out, outs[0])


def test_conv_residual_norm_kernel_matches_torch(spy):
    # Evaluation under autocast: norm(x + h) and the MLP's input copy in
    # one Triton kernel; the same result as PyTorch's three kernels.
    from samsa_geo.ops import use_backend
    from samsa_geo.ops._triton import residual_affine as kernel_module
    conv = SamsaConv(256, None, heads=8, k=64).cuda()
    x, batch = _batch([1024] * 4, 256, 'cuda')
    conv.train()
    for _ in range(3):  # running statistics away from (0, 1)
        conv(x * 2 + 1, None, batch)
    conv.eval()
    calls = spy(kernel_module, 'residual_affine_triton', keep_args=False)
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
        out = conv(x, None, batch, num_graphs=4, max_num_nodes=1024)
        assert len(calls) == 2
        with use_backend('torch'):
            ref = conv(x, None, batch, num_graphs=4, max_num_nodes=1024)
    assert len(calls) == 2 and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
