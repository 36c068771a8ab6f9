"""Given the sizes of a PyG Batch (``batch_hints``), the forward passes read
nothing back from the device: no operator that needs a value on the host
(``item``, ``bool(tensor)``, ``nonzero``, ...) runs. Checked on the CPU with
the value checks off (as they are on a GPU outside debug mode), by watching
every operator call; ``tests/gpu`` checks the same on CUDA with
``torch.cuda.set_sync_debug_mode('error')``."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch_geometric.data import Batch, Data

from samsa_geo.nn import SamsaAttention, SamsaConv, batch_hints
from samsa_geo.nn.attention import config
from samsa_geo.nn.models import SamsaPointClassifier

#: Operators whose result size or value must reach the host.
HOST_READS = {'_local_scalar_dense', 'nonzero', 'unique', '_unique2',
              'masked_select', 'bincount', 'repeat_interleave', 'equal',
              'is_nonzero'}


class HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in HOST_READS and not (name == 'repeat_interleave'
                                       and 'output_size' in (kwargs or {})):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def no_value_checks(monkeypatch):
    monkeypatch.setattr(config, 'checks_values', lambda device: False)


def pyg_batch(sizes=(30, 0, 64, 5, 40)):
    return Batch.from_data_list([Data(pos=torch.randn(n, 3)) for n in sizes])


@pytest.mark.parametrize('training', [False, True])
@pytest.mark.parametrize('kwargs', [
    dict(sampling='hard'), dict(sampling='soft'), dict(sampling='full'),
    dict(sampling='sft'), dict(sampling='hard', num_registers=2),
    dict(sampling='hard', relative_bias=True), dict(sampling='hard', k=0.25),
    dict(sampling='soft', summary=True, num_registers=2),
])
def test_attention_reads_nothing_back(no_value_checks, training, kwargs):
    kwargs = {'k': 8, **kwargs}
    data = pyg_batch()
    x = torch.randn(data.num_nodes, 16)
    attn = SamsaAttention(16, heads=2, **kwargs).train(training)
    hints = batch_hints(data)
    with HostReads() as mode:
        attn(x, data.batch, pos=data.pos, **hints)
    assert mode.seen == []
    if not isinstance(kwargs['k'], float) and kwargs['sampling'] != 'full':
        with HostReads() as mode:  # the number of sets alone: bounds
            attn(x, data.batch, pos=data.pos, num_graphs=data.num_graphs)
        assert mode.seen == []


@pytest.mark.parametrize('training', [False, True])
def test_conv_and_point_model_read_nothing_back(no_value_checks, training):
    data = pyg_batch()
    x = torch.randn(data.num_nodes, 16)
    conv = SamsaConv(16, None, heads=2, k=8).train(training)
    model = SamsaPointClassifier.small(10).train(training)
    hints = batch_hints(data)
    with HostReads() as mode:
        conv(x, None, data.batch, **hints)
        model(data.pos, data.batch, **hints)
    assert mode.seen == []


def test_the_watch_sees_host_reads():
    with HostReads() as mode:
        bool(torch.ones(2).sum() > 1)
        torch.arange(4).nonzero()
    assert mode.seen == ['_local_scalar_dense', 'nonzero']


@pytest.mark.parametrize('kwargs', [dict(), dict(num_registers=2)])
def test_fused_inference_reads_nothing_back(no_value_checks, monkeypatch,
                                            spy, kwargs, fused_inference_on):
    # The fused inference path (served on the CPU by Triton's interpreter):
    # the sets' offsets are searched inside the selection kernel.
    import importlib
    import os
    pytest.importorskip('triton')
    if os.environ.get('TRITON_INTERPRET') != '1':  # set by conftest.py
        pytest.skip('Triton interpreter not enabled (a GPU is present)')
    module = importlib.import_module('samsa_geo.nn.attention.samsa_attention')
    monkeypatch.setattr(module, 'triton_serves', lambda device: True)
    calls = spy(module, 'fused_sampled_attention', keep_args=False)
    data = pyg_batch()
    x = torch.randn(data.num_nodes, 16)
    attn = SamsaAttention(16, heads=2, k=8, **kwargs).eval()
    hints = batch_hints(data)
    with torch.no_grad(), HostReads() as mode:
        attn(x, data.batch, **hints)
    assert len(calls) == 1
    assert mode.seen == []


@pytest.mark.parametrize('training', [True, False])
def test_graph_model_reads_nothing_back(no_value_checks, training):
    # Node tokens with batch_hints, a training step and an evaluation
    # forward (the tokenizer's fixed identifiers indexed by the hints):
    # the tokenizer's sortedness check is a value check too (CPU and debug
    # mode only).
    from samsa_geo.nn.models import SamsaGraphModel
    data = Batch.from_data_list([
        Data(x=torch.randn(n, 4), edge_index=torch.randint(0, n, (2, 2 * n)),
             edge_attr=torch.randn(2 * n, 2)) for n in (5, 9, 2)])
    model = SamsaGraphModel(4, 16, 1, 2, edge_dim=2, heads=2,
                            k=16).train(training)
    hints = batch_hints(data)  # the Batch's CPU-side offsets
    with HostReads() as mode:
        out = model(data.x, data.edge_index, data.edge_attr, data.batch,
                    **hints)
        if training:
            out.sum().backward()
    assert mode.seen == []
