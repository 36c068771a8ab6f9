import os.path as osp
import sys

import pytest

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', '..', 'benchmarks'))
import graph_step as bench  # noqa: E402

from samsa_geo.nn.attention import config  # noqa: E402


def test_ab_runs_the_samsa_model_with_the_switch_off_and_on(
        monkeypatch, tmp_path):
    # --ab: the SAMSA model's records name the switch's state, the other
    # models' none; the switch is back to its default afterwards and was
    # set while each SAMSA case ran.
    seen = []
    case = bench.graph_step_case

    def spy_case(op, optimizer, batches, args, device, switch=None,
                 state=False):
        if switch is None:
            seen.append((op, config.use_packed_attention()))
            return dict(op=op, optimizer=optimizer)
        return case(op, optimizer, batches, args, device, switch, state)

    monkeypatch.setattr(bench, 'graph_step_case', spy_case)
    monkeypatch.setattr(bench, 'molecule_batches', lambda device: [])
    out = tmp_path / 'graph_step.json'
    monkeypatch.setattr(sys, 'argv', [
        'graph_step.py', '--device', 'cpu', '--optimizers', 'foreach',
        '--ops', 'samsa_graph_model_hints,gine_graph_model',
        '--ab', 'packed_attention', '--out', str(out)])
    written = []
    monkeypatch.setattr(bench, 'write_records',
                        lambda records, path: written.extend(records))
    bench.main()
    assert seen == [('samsa_graph_model_hints', False),
                    ('samsa_graph_model_hints', True),
                    ('gine_graph_model', False)]
    assert [r.get('attention_config') for r in written] == [
        'packed_attention=0', 'packed_attention=1', None]
    assert not config.use_packed_attention()


def test_ab_of_two_switches_runs_each_alone_and_both(monkeypatch):
    # --ab a,b: all off, each alone on, both on; the records say which.
    seen = []

    def spy_case(op, optimizer, batches, args, device):
        seen.append((config.use_packed_attention(), config.use_fused_gine()))
        return dict(op=op, optimizer=optimizer)

    monkeypatch.setattr(bench, 'graph_step_case', spy_case)
    monkeypatch.setattr(bench, 'molecule_batches', lambda device: [])
    monkeypatch.setattr(sys, 'argv', [
        'graph_step.py', '--device', 'cpu', '--optimizers', 'fused',
        '--ops', 'samsa_graph_model_hints',
        '--ab', 'packed_attention,fused_gine'])
    written = []
    monkeypatch.setattr(bench, 'write_records',
                        lambda records, path: written.extend(records))
    bench.main()
    assert seen == [(False, False), (True, False), (False, True),
                    (True, True)]
    assert [r['attention_config'] for r in written] == [
        'packed_attention=0,fused_gine=0', 'packed_attention=1,fused_gine=0',
        'packed_attention=0,fused_gine=1', 'packed_attention=1,fused_gine=1']
    assert not config.use_packed_attention() and not config.use_fused_gine()


def test_ab_names_an_existing_switch(monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['graph_step.py', '--ab', 'nope'])
    with pytest.raises(SystemExit):
        bench.main()


def test_records_count_the_triton_kernels_launches(triton_modules):
    # A SAMSA case with config.fused_gine on, its kernels interpreted where
    # they would serve CUDA: one forward and one backward launch per layer
    # beside the aten calls; none with the switch off.
    import argparse

    import count_ops
    triton_modules('samsa_geo.ops._triton.gine_aggregate')
    batches = bench.molecule_batches('cpu', num_graphs=16, batch_size=8)
    args = argparse.Namespace(channels=16, depth=2, warmup=0, repeat=1,
                              commit='test')
    records = []
    for on in (False, True):
        with count_ops.interpreted_kernels(), \
                config.attention_config(fused_gine=on):
            records.append(bench.graph_step_case(
                'samsa_graph_model_hints', 'foreach', batches, args,
                bench.torch.device('cpu')))
    off, gine = records
    assert (off['fwd_launches'], off['bwd_launches']) == (0, 0)
    assert (gine['fwd_launches'], gine['bwd_launches']) == (2, 2)
    assert gine['opt_launches'] == 0
    assert gine['fwd_calls'] < off['fwd_calls']
    assert gine['bwd_calls'] < off['bwd_calls']


def test_shuffled_epochs_hold_the_same_graphs_in_other_batches():
    # Each epoch of the benchmark is one order of the same graphs, as a
    # shuffling loader gives them: other batch sizes, the same graphs.
    first = bench.molecule_batches('cpu', num_graphs=40, batch_size=8)
    other = bench.molecule_batches('cpu', num_graphs=40, batch_size=8,
                                   shuffle=1)
    again = bench.molecule_batches('cpu', num_graphs=40, batch_size=8,
                                   shuffle=1)

    def graphs(batches):
        return sorted(tuple(g.x.sum(0).tolist()) for data in batches
                      for g in data.to_data_list())

    assert graphs(first) == graphs(other)
    assert [d.num_graphs for d in other] == [8] * 5
    assert [d.num_nodes for d in first] != [d.num_nodes for d in other]
    assert [d.num_nodes for d in other] == [d.num_nodes for d in again]
