"""SamsaGraphModel's CUDA graphs of whole training steps on padded batches
against eager steps, on the GPU machine (`pytest -m gpu tests/gpu`)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data

from samsa_geo.nn import batch_hints
from samsa_geo.nn.attention import config
from samsa_geo.nn.models import SamsaGraphModel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA'),
]


def _batches(count, seed, pe=False):
    # Molecule-sized batches of 32 graphs (2-25 nodes), about 430 nodes
    # each: most of them land in one bucket.
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        graphs = []
        for _ in range(32):
            n = int(torch.randint(2, 26, (1, ), generator=g))
            src = torch.arange(n - 1)
            ei = torch.stack([src, src + 1])
            ei = torch.cat([ei, ei.flip(0)], 1)
            d = Data(x=torch.randn(n, 9, generator=g), edge_index=ei,
                     edge_attr=torch.randn(ei.size(1), 3, generator=g),
                     y=torch.randn(1, generator=g))
            if pe:
                d.rw_pe = torch.rand(n, 8, generator=g)
            graphs.append(d)
        out.append(Batch.from_data_list(graphs).cuda())
    return out


def _step(model, data, level, dtype):
    # One training step's forward and backward pass: the loss, the output,
    # the gradients and the output's autograd node.
    model.zero_grad(set_to_none=True)
    node_id = torch.randn(data.num_nodes, 16, device='cuda',
                          generator=torch.Generator('cuda').manual_seed(0))
    with torch.autocast('cuda', dtype=torch.bfloat16,
                        enabled=dtype == torch.bfloat16):
        out = model(data.x, data.edge_index, data.edge_attr, data.batch,
                    pe=getattr(data, 'rw_pe', None), node_id=node_id,
                    **batch_hints(data))
    target = data.y if level == 'graph' else data.x[:, :1]
    loss = F.mse_loss(out.float().view(-1), target.view(-1))
    loss.backward()
    grads = [None if p.grad is None else p.grad.clone()
             for p in model.parameters()]
    return loss.detach(), out.detach(), grads, _origin(out)


def _origin(out):
    # The autograd node that made the output, below the padding's slice.
    node = out.grad_fn
    if type(node).__name__ == 'SliceBackward0':
        node = node.next_functions[0][0]
    return type(node).__name__


def _close(a, b, ref=None, slack=(1.5, 1e-2)):
    # a (graphed) equals b (eager); in bf16 (ref, the float32 eager step,
    # given) a is about as close to ref as b is: the autocast GEMMs of the
    # padded batch's shapes round differently, and a gradient that sums
    # many rows with cancellation (a scalar like GINE's eps, a bias) keeps
    # several percent of rounding error either way, so single tensors get
    # the wider slack and the whole gradient the narrow one (1.5 times the
    # eager step's error, plus a few of bf16's rounding steps, 0.4% each:
    # batch norms over the wrong rows, a quarter of them padding, would be
    # off by far more).
    if ref is None:
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5)
        return
    a, b, ref = a.float(), b.float(), ref.float()
    err, base = (a - ref).norm(), (b - ref).norm()
    assert err <= slack[0] * base + slack[1] * ref.norm() + 1e-6, (
        err, base, ref.norm())


def _flat(grads):
    return torch.cat([g.float().view(-1) for g in grads if g is not None])


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('level,pe', [('graph', None), ('node', 'rw')])
def test_graphed_steps_equal_eager_steps(dtype, level, pe):
    # Each step starts both models (and, in bf16, a float32 eager
    # reference) from the same state: the eager model's parameters and
    # running statistics, loaded into the others in place (the graphs stay
    # valid). AdamW updates the eager model.
    torch.manual_seed(0)
    eager = SamsaGraphModel(9, 64, 1, 3, edge_dim=3, heads=4, level=level,
                            pe=pe, pe_channels=8).cuda().train()
    graphed = copy.deepcopy(eager)
    full = copy.deepcopy(eager) if dtype == torch.bfloat16 else None
    opt = torch.optim.AdamW(eager.parameters(), lr=1e-3)
    batches = _batches(4, 0, pe is not None)
    nodes = []
    for epoch in range(3):  # eager, eager, then captured and replayed
        for data in batches:
            state = copy.deepcopy(eager.state_dict())
            graphed.load_state_dict(state)
            with config.attention_config(cuda_graphs=False):
                want = None
                if full is not None:
                    full.load_state_dict(state)
                    want = _step(full, data, level, torch.float32)
                ref = _step(eager, data, level, dtype)
            got = _step(graphed, data, level, dtype)
            nodes.append(got[3])
            if want is None:
                want = [None, None, [None] * len(got[2])]
            _close(got[0], ref[0], want[0])
            _close(got[1], ref[1], want[1])
            wide = (4.0, 0.1) if dtype == torch.bfloat16 else None
            for a, b, c in zip(got[2], ref[2], want[2]):
                assert (a is None) == (b is None)
                if a is not None:
                    _close(a, b, c, wide)
            if dtype == torch.bfloat16:  # the whole gradient
                _close(_flat(got[2]), _flat(ref[2]), _flat(want[2]))
            # running statistics
            fulls = [None] * 999 if full is None else list(full.buffers())
            for a, b, c in zip(graphed.buffers(), eager.buffers(), fulls):
                _close(a.float(), b.float(), c, wide)
            if full is not None:
                _close(_flat(graphed.buffers()), _flat(eager.buffers()),
                       _flat(full.buffers()))
            opt.step()
    assert len(graphed._train_graphs) >= 1
    assert not graphed._train_graphs._failed
    assert nodes[:4] != ['_ReplayedBackward'] * 4
    assert nodes[-4:].count('_ReplayedBackward') >= 2


def test_graphed_steps_never_sync():
    torch.manual_seed(0)
    model = SamsaGraphModel(9, 64, 1, 3, edge_dim=3, heads=4,
                            dropout=0.1).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    batches = _batches(3, 1)
    hints = [batch_hints(data) for data in batches]  # read once, here

    def epoch():
        for data, h in zip(batches, hints):
            out = model(data.x, data.edge_index, data.edge_attr, data.batch,
                        **h)
            loss = F.mse_loss(out.view(-1), data.y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    for _ in range(3):
        epoch()
    assert len(model._train_graphs) >= 1
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        epoch()
    finally:
        torch.cuda.set_sync_debug_mode('default')
    torch.empty(1, device='cuda').uniform_()  # the generator works


def test_hooks_and_edge_tokens_train_eagerly():
    torch.manual_seed(0)
    data = _batches(1, 2)[0]
    hooked = SamsaGraphModel(9, 32, 1, 2, edge_dim=3, heads=4).cuda()
    seen = []
    hooked.convs[0].register_forward_hook(lambda *a: seen.append(1))
    edges = SamsaGraphModel(9, 32, 1, 2, edge_dim=3, heads=4,
                            tokens='node_edge').cuda()
    for model in (hooked, edges):
        for _ in range(4):
            out = model(data.x, data.edge_index, data.edge_attr, data.batch,
                        **batch_hints(data))
            out.sum().backward()
        assert len(model._train_graphs) == 0
    assert len(seen) == 4


def test_smaller_batches_replay_a_kept_graph():
    # Once batches of one size have a graph, a smaller batch (an epoch's
    # last: two graphs) is padded to its sizes and replays it at once,
    # equal to an eager step from the same state (float32), and keeps no
    # graph of its own.
    torch.manual_seed(0)
    eager = SamsaGraphModel(9, 64, 1, 3, edge_dim=3, heads=4).cuda().train()
    graphed = copy.deepcopy(eager)
    data = _batches(1, 3)[0]
    for _ in range(3):  # eager, eager, captured
        _step(graphed, data, 'graph', torch.float32)
    assert len(graphed._train_graphs) == 1
    small = Batch.from_data_list(data.to_data_list()[:2])
    graphed.load_state_dict(eager.state_dict())
    with config.attention_config(cuda_graphs=False):
        ref = _step(eager, small, 'graph', torch.float32)
    got = _step(graphed, small, 'graph', torch.float32)
    assert got[3] == '_ReplayedBackward' and ref[3] != got[3]
    assert len(graphed._train_graphs) == 1
    _close(got[0], ref[0])
    _close(got[1], ref[1])
    for a, b in zip(got[2], ref[2]):
        assert (a is None) == (b is None)
        if a is not None:
            _close(a, b)
    for a, b in zip(graphed.buffers(), eager.buffers()):
        _close(a.float(), b.float())
