"""samsa_geo.ops.gine_aggregate's Triton kernels compiled on the GPU against
PyTorch's operators, and a training step of the small-graph model with
config.fused_gine on, which never synchronises with the host. Run on the
GPU machine with ``pytest -m gpu tests/gpu``."""
import pytest
import torch

from samsa_geo.nn.attention import config
from samsa_geo.ops import gine_aggregate

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA'),
]


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize('N, E, C, dtype', [
    (700, 1400, 64, torch.float32), (700, 1400, 64, torch.bfloat16),
    (100_000, 400_000, 256, torch.bfloat16), (50, 120, 300, torch.float32)])
@pytest.mark.parametrize('edges', [True, False])
def test_kernels_match_pytorch(N, E, C, dtype, edges):
    g = torch.Generator('cuda').manual_seed(0)
    x = torch.randn(N, C, device='cuda', generator=g).to(dtype)
    e = torch.randn(E, C, device='cuda', generator=g).to(dtype) \
        if edges else None
    edge_index = torch.randint(0, N, (2, E), device='cuda', generator=g)
    eps = torch.tensor([0.2], device='cuda')
    grads = []
    for backend in ('torch', 'triton'):
        xi = x.clone().requires_grad_()
        ei = None if e is None else e.clone().requires_grad_()
        epsi = eps.clone().requires_grad_()
        out = gine_aggregate(xi, edge_index, ei, epsi, backend=backend)
        go = torch.randn(out.shape, device='cuda',
                         generator=torch.Generator('cuda').manual_seed(1))
        inputs = [t for t in (xi, ei, epsi) if t is not None]
        grads.append((out, torch.autograd.grad((out * go).sum(), inputs)))
    (want, want_g), (got, got_g) = grads
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert got.dtype == want.dtype == torch.float32
    assert _rel(got, want) < tol
    for a, b in zip(got_g, want_g):
        assert a.dtype == b.dtype and _rel(a, b) < tol


def test_graph_model_training_with_fused_gine_matches_pytorch(
        molecule_case, graph_model_step, assert_as_accurate_as_pytorch):
    # A bf16 training step of the small-graph model on molecule-sized
    # graphs with config.fused_gine on is as close to the float32 step as
    # the bf16 step on PyTorch's operators; the forward pass makes no host
    # synchronisation.
    from samsa_geo.nn import batch_hints
    model, data, g = molecule_case
    got = graph_model_step(model, data, g, {'fused_gine': True},
                           torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        with config.attention_config(fused_gine=True), \
                torch.autocast('cuda', dtype=torch.bfloat16):
            model(data.x, data.edge_index, data.edge_attr, data.batch,
                  **batch_hints(data))
    finally:
        torch.cuda.set_sync_debug_mode('default')
    want = graph_model_step(model, data, g, {'fused_gine': False},
                            torch.bfloat16)
    exact = graph_model_step(model, data, g, {'fused_gine': False})
    assert_as_accurate_as_pytorch(got, want, exact)
