"""samsa_geo.ops.gine_aggregate: equal to the update that PyG's GINEConv and
GINConv feed to their network (values and gradients, float64), its Triton
kernels (run on CPU by Triton's interpreter, compiled on a GPU) equal to
PyTorch's operators, the small-graph model with config.fused_gine on
equal to it off, and the errors."""
import pytest
import torch
from torch.nn import Identity
from torch_geometric.nn import GINConv, GINEConv

from samsa_geo.ops import _triton, gine_aggregate, value_checks


@pytest.fixture(scope='module')
def kernels(triton_modules):
    return triton_modules('samsa_geo.ops._triton.gine_aggregate')


def _graph(N, E, C, dtype=torch.float64, edges=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, generator=gen).to(dtype).requires_grad_()
    e = torch.randn(E, C, generator=gen).to(dtype).requires_grad_() \
        if edges else None
    edge_index = torch.randint(0, N, (2, E), generator=gen)
    return x, edge_index, e


def _grads(out, inputs, seed=1):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(out.shape, generator=gen).to(out.dtype)
    return torch.autograd.grad((out * g).sum(), inputs)


@pytest.mark.parametrize('edges', [True, False])
def test_torch_path_equals_pyg_gine_and_gin(edges):
    # GINEConv / GINConv with an identity network return (1 + eps) x_i +
    # the sum of the messages: the aggregation, values and gradients.
    x, edge_index, e = _graph(11, 30, 6, edges=edges)
    conv = (GINEConv(Identity(), train_eps=True) if edges
            else GINConv(Identity(), train_eps=True)).double()
    with torch.no_grad():
        conv.eps.fill_(0.25)
    ref = conv(x, edge_index, e) if edges else conv(x, edge_index)
    out = gine_aggregate(x, edge_index, e, conv.eps, backend='torch')
    torch.testing.assert_close(out, ref)
    inputs = [t for t in (x, e, conv.eps) if t is not None]
    for got, want in zip(_grads(out, inputs), _grads(ref, inputs)):
        torch.testing.assert_close(got, want)


def test_float_eps_and_dtypes():
    # A number eps keeps x's dtype; a float32 eps tensor promotes bf16 x
    # (as addcmul does), and the messages are summed in that dtype.
    x, edge_index, e = _graph(9, 20, 4, dtype=torch.float32)
    out = gine_aggregate(x, edge_index, e, 0.5)
    want = gine_aggregate(x, edge_index, e, torch.tensor([0.5]))
    torch.testing.assert_close(out, want)
    xb = x.detach().bfloat16()
    assert gine_aggregate(xb, edge_index, None, 0.0).dtype == torch.bfloat16
    out = gine_aggregate(xb, edge_index, None, torch.zeros(1))
    assert out.dtype == torch.float32
    ref = xb.float().index_add(0, edge_index[1], xb.float()[edge_index[0]])
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize('edges', [True, False])
@pytest.mark.parametrize('N, E, C', [(37, 90, 24), (5, 0, 8), (3, 64, 130),
                                     (1, 4, 1)])
def test_kernels_equal_torch_float32(kernels, edges, N, E, C):
    # Float32 rows (a width past one channel block, an empty edge set, a
    # single node with self-loops): equal up to the order of the sums.
    x, edge_index, e = _graph(N, E, C, torch.float32, edges)
    eps = torch.tensor([0.3], requires_grad=True)
    inputs = [t for t in (x, e, eps) if t is not None]
    want = gine_aggregate(x, edge_index, e, eps, backend='torch')
    got = gine_aggregate(x, edge_index, e, eps, backend='triton')
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(_grads(got, inputs), _grads(want, inputs)):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('x_dtype, e_dtype', [
    (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
    (torch.float16, torch.float16)])
def test_kernels_equal_torch_half_inputs(kernels, x_dtype, e_dtype):
    # Half-precision tokens with a float32 eps: a float32 result, each
    # gradient in its input's dtype. The messages are rounded to their
    # dtype on both paths; PyTorch sums x's gradient in that dtype, the
    # kernel in float32, hence a tolerance of a few half-precision steps.
    x, edge_index, _ = _graph(40, 120, 16, torch.float32)
    x = x.detach().to(x_dtype).requires_grad_()
    e = torch.randn(120, 16).to(e_dtype).requires_grad_()
    eps = torch.tensor([0.1], requires_grad=True)
    want = gine_aggregate(x, edge_index, e, eps, backend='torch')
    got = gine_aggregate(x, edge_index, e, eps, backend='triton')
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=2e-2, atol=6e-2)
    for g, w in zip(_grads(got, (x, e, eps)), _grads(want, (x, e, eps))):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g.float(), w.float(), rtol=2e-2,
                                   atol=1e-1)


def test_kernels_gradients_where_some_inputs_need_none(kernels):
    # A fixed eps (GINConv without train_eps), then a fixed x: the other
    # gradients are those of PyTorch's path.
    x, edge_index, e = _graph(12, 40, 8, torch.float32)
    eps = torch.tensor([0.2])
    for x_grad in (True, False):
        inputs = (x, e) if x_grad else (e, )
        xi = x if x_grad else x.detach()
        outs = [gine_aggregate(xi, edge_index, e, eps, backend=b)
                for b in ('torch', 'triton')]
        for g, w in zip(_grads(outs[1], inputs), _grads(outs[0], inputs)):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)


def test_kernels_read_strided_rows(kernels):
    # Rows with a stride past their width (a slice of wider tensors) and a
    # column-strided x, which the kernels read through a copy.
    x, edge_index, e = _graph(10, 25, 12, torch.float32)
    wide = torch.randn(10, 20)
    xs = wide[:, 3:15]
    xt = torch.randn(12, 10).t()
    for xi in (xs, xt):
        want = gine_aggregate(xi, edge_index, e.detach(), 0.0,
                              backend='torch')
        got = gine_aggregate(xi, edge_index, e.detach(), 0.0,
                             backend='triton')
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_auto_backend_keeps_pytorch_on_cpu():
    # backend='auto' never chooses Triton's interpreter: PyTorch's
    # indexed sum ends the graph.
    x, edge_index, e = _graph(6, 10, 4, torch.float32)
    out = gine_aggregate(x, edge_index, e, torch.zeros(1))
    assert out.grad_fn is not None and 'IndexAdd' in type(
        out.grad_fn).__name__


def test_errors_name_the_argument():
    x, edge_index, e = _graph(6, 10, 4, torch.float32)
    with pytest.raises(ValueError, match="'x'.*shape \\[N, C\\]"):
        gine_aggregate(x[0], edge_index)
    with pytest.raises(ValueError, match="'x'"):
        gine_aggregate(x.long(), edge_index)
    with pytest.raises(ValueError, match="'edge_index'.*\\[2, E\\]"):
        gine_aggregate(x, edge_index[0])
    with pytest.raises(TypeError, match="'edge_index'.*integer"):
        gine_aggregate(x, edge_index.float())
    with pytest.raises(ValueError, match="'edge_attr'.*\\[10, 4\\]"):
        gine_aggregate(x, edge_index, e[:, :3])
    with pytest.raises(ValueError, match="'eps'.*one value"):
        gine_aggregate(x, edge_index, e, torch.zeros(2))
    with pytest.raises(TypeError, match="'eps'"):
        gine_aggregate(x, edge_index, e, 'zero')
    with pytest.raises(ValueError, match="'backend'"):
        gine_aggregate(x, edge_index, e, backend='cuda')
    bad = edge_index.clone()
    bad[1, 3] = 6
    with pytest.raises(ValueError, match="'edge_index'.*\\[0, 6\\)"):
        gine_aggregate(x, bad, e)
    bad[1, 3] = -1
    with pytest.raises(ValueError, match="'edge_index'.*\\[0, 6\\)"):
        gine_aggregate(x, bad, e)
    with value_checks(False), pytest.raises((IndexError, RuntimeError)):
        gine_aggregate(x, bad, e, backend='torch')  # PyTorch's own check


def test_triton_backend_refuses_what_it_cannot_serve(kernels):
    # A half-precision result (a number eps keeps bf16 x) has no kernel,
    # nor has a deterministic run (its sums are atomic).
    x, edge_index, _ = _graph(6, 10, 4, torch.float32)
    with pytest.raises(ValueError, match='float32 result'):
        gine_aggregate(x.detach().bfloat16(), edge_index, None, 0.0,
                       backend='triton')
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(ValueError, match='nondeterministic'):
            gine_aggregate(x, edge_index, None, 0.0, backend='triton')
    finally:
        torch.use_deterministic_algorithms(False)


def test_graph_model_training_with_fused_gine_equals_pytorch(
        kernels, monkeypatch, small_graphs, graph_model_step):
    # config.fused_gine on (CUDA's kernels; here interpreted): a training
    # step of the small-graph model on a ragged batch with an empty graph
    # gives PyTorch's output and gradients, for node tokens (GINE on the
    # edge features) and node+edge tokens (GINE on the edge tokens).
    from samsa_geo.nn.models import SamsaGraphModel
    monkeypatch.setattr(_triton, 'runs_on', lambda x, forced: True)
    data = small_graphs((7, 0, 12, 3), 5, seed=3)
    g = torch.randn(4, 1)
    launched = []
    real = kernels.GINEAggregate.apply
    monkeypatch.setattr(kernels.GINEAggregate, 'apply',
                        lambda *a: launched.append(1) or real(*a))
    for tokens in ('node', 'node_edge'):
        torch.manual_seed(0)
        model = SamsaGraphModel(5, 16, 1, 2, edge_dim=3, heads=2, k=8,
                                tokens=tokens).train()
        launched.clear()
        got = graph_model_step(model, data, g, {'fused_gine': True})
        assert len(launched) == 2  # one per layer
        want = graph_model_step(model, data, g, {'fused_gine': False})
        assert len(launched) == 2
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
        assert got[1].keys() == want[1].keys()
        for name in want[1]:
            torch.testing.assert_close(got[1][name], want[1][name],
                                       rtol=1e-4, atol=1e-5, msg=name)


def test_graph_model_checks_node_indices_once():
    # An edge to a node past the batch is named at the model's entry.
    from samsa_geo.nn.models import SamsaGraphModel
    model = SamsaGraphModel(5, 16, 1, 2, edge_dim=3, heads=2, k=8)
    x = torch.randn(6, 5)
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 6]])
    with pytest.raises(ValueError, match="'edge_index'.*\\[0, 6\\)"):
        model(x, edge_index, torch.randn(3, 3))


COMPILE_SCRIPT = r"""
import torch
from samsa_geo.ops._triton.gine_aggregate import GINEAggregate
from samsa_geo.testing.triton_compile import (
    compile_for_sm90, launched_kernels, recorded_launches)


def step(dtype, C, edges, x_grad=True, e_grad=True):
    # One forward and backward of the kernels' Function on CPU tensors.
    x = torch.randn(40, C, dtype=dtype, requires_grad=x_grad)
    e = torch.randn(90, C, dtype=dtype, requires_grad=e_grad) \
        if edges else None
    eps = torch.zeros(1, requires_grad=True)
    src, dst = torch.randint(0, 40, (2, 90))
    GINEAggregate.apply(x, e, eps, src, dst, dtype).sum().backward()


# The launches that CUDA calls make, recorded on CPU tensors: GINE with
# bf16 / fp32 / fp16 messages of narrow and wide rows, GIN (fp16 and
# fp32), and steps with the nodes' gradient alone or the edges' alone.
with recorded_launches() as launches:
    step(torch.bfloat16, 64, True)
    step(torch.float32, 300, True)
    step(torch.float16, 8, False)
    step(torch.float32, 64, False)
    step(torch.bfloat16, 64, True, x_grad=False)
    step(torch.float32, 32, True, e_grad=False)
print('compiled', compile_for_sm90(launched_kernels(launches)))
"""


def test_kernels_compile_for_sm90(compiled_run):
    # The interpreter runs the kernels' Python; this compiles the kernels
    # as CUDA calls launch them to H100/H200 machine code (no GPU needed)
    # and checks that they fit sm90's shared memory (a few seconds: run
    # by default).
    assert 'compiled 11' in compiled_run(COMPILE_SCRIPT)


def test_compiled_graph_model_traces_pytorchs_operators(
        kernels, monkeypatch, small_graphs):
    # Under torch.compile the kernels stay out (the compiler sees
    # PyTorch's operators) even with config.fused_gine on; the compiled
    # model gives the eager model's output.
    from samsa_geo.nn import batch_hints
    from samsa_geo.nn.attention import config
    from samsa_geo.nn.models import SamsaGraphModel
    monkeypatch.setattr(_triton, 'runs_on', lambda x, forced: True)
    data = small_graphs((6, 9, 4), 5, seed=2)
    torch.manual_seed(0)
    model = SamsaGraphModel(5, 16, 1, 2, edge_dim=3, heads=2, k=8).eval()
    launched = []
    real = kernels.GINEAggregate.apply
    monkeypatch.setattr(kernels.GINEAggregate, 'apply',
                        lambda *a: launched.append(1) or real(*a))
    args = (data.x, data.edge_index, data.edge_attr, data.batch)
    with config.attention_config(fused_gine=True), torch.no_grad():
        want = model(*args, **batch_hints(data))
        assert len(launched) == 2
        got = torch.compile(model, backend='eager')(*args,
                                                    **batch_hints(data))
    assert len(launched) == 2
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
