import os.path as osp
import sys
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', '..', 'benchmarks'))
import profile_graph_step as bench  # noqa: E402
from count_ops import OpCounter  # noqa: E402


def test_profile_counts_the_epochs_steps_and_operators():
    # Two batches on the CPU: the summary is per step of the profiled
    # epoch, its aten::addmm calls those that the dispatcher sees in a
    # training step, and no GPU kernel runs.
    batches = bench.molecule_batches(torch.device('cpu'), num_graphs=20,
                                     batch_size=10)
    args = SimpleNamespace(channels=8, depth=2, warmup=1)
    r = bench.profile_epoch('gine_graph_model', batches, args,
                            torch.device('cpu'))
    torch.manual_seed(0)
    model = bench.build_graph_model('gine_graph_model', 8, 2)
    with OpCounter() as counter:
        F.mse_loss(bench.graph_forward('gine_graph_model', model,
                                       batches[0]), batches[0].y).backward()
    assert r['steps'] == 2 and r['epoch_ms'] > 0
    assert r['addmm_per_step'] == counter.ops['addmm'] > 0
    assert r['kernel_ms'] == 0 and r['kernels_per_step'] == 0
    assert r['runtime_calls'] == {}
    # Outermost calls only: aten::linear counts, the addmm inside it not.
    names = {e.key for e in r['events']}
    assert {'aten::linear', 'aten::addmm'} <= names
    every = sum(e.count for e in r['events'] if e.key.startswith('aten::'))
    assert 0 < r['aten_calls_per_step'] < every / 2


def test_outermost_calls_exclude_nested_ones():
    with torch.profiler.profile() as prof:
        torch.nn.functional.linear(torch.randn(4, 3), torch.randn(2, 3),
                                   torch.randn(2))
    events = {e.name: e for e in prof.events()}
    assert not bench._inside_aten(events['aten::linear'])
    assert bench._inside_aten(events['aten::addmm'])
