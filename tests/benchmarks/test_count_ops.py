import os.path as osp
import sys

import pytest

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', '..', 'benchmarks'))
import count_ops as bench  # noqa: E402

from samsa_geo.nn.attention import config  # noqa: E402


def test_graph_kernel_counts_launch_the_gine_kernels_once_per_layer(
        triton_modules):
    # --graph-step --kernels fused_gine: the kernels run interpreted and
    # count as launches (one forward and one backward per layer, three
    # layers), the PyTorch operators they replace disappear from the aten
    # calls, and the switch is off again afterwards.
    triton_modules('samsa_geo.ops._triton.gine_aggregate')
    base = bench.measure_graph_step('samsa_graph_model_hints', 0)
    assert base['fwd_launches'] == base['bwd_launches'] == 0
    gine, = bench.graph_kernel_counts(['fused_gine'])
    assert gine['op'] == 'samsa_graph_model_hints +fused_gine'
    assert (gine['fwd_launches'], gine['bwd_launches']) == (3, 3)
    assert gine['fwd_top']['index_add_'] == 0 < base['fwd_top']['index_add_']
    assert gine['fwd_ops'] < base['fwd_ops'] - 3
    assert gine['bwd_ops'] < base['bwd_ops'] - 3
    assert not config.use_fused_gine()


@pytest.mark.slow  # the packed attention interpreted: about 3 minutes
def test_graph_kernel_counts_of_two_switches_add_up(triton_modules):
    # Each switch alone and both: the launches of both are the sum of each
    # alone (the packed attention: one forward and two backward per
    # layer), and so are the aten calls they save.
    triton_modules('samsa_geo.ops._triton.gine_aggregate',
                   'samsa_geo.nn.attention._tile_attention_triton')
    base = bench.measure_graph_step('samsa_graph_model_hints', 0)
    rows = bench.graph_kernel_counts(['packed_attention', 'fused_gine'])
    assert [r['op'] for r in rows] == [
        'samsa_graph_model_hints +packed_attention',
        'samsa_graph_model_hints +fused_gine',
        'samsa_graph_model_hints +packed_attention+fused_gine']
    assert [(r['fwd_launches'], r['bwd_launches']) for r in rows] == [
        (3, 6), (3, 3), (6, 9)]
    packed, gine, both = rows
    sdpa = '_scaled_dot_product_flash_attention_for_cpu'
    assert packed['fwd_top'][sdpa] == 0 < base['fwd_top'][sdpa]
    for pas in ('fwd_ops', 'bwd_ops'):
        saved = (base[pas] - packed[pas]) + (base[pas] - gine[pas])
        assert both[pas] == base[pas] - saved
    assert not config.use_packed_attention() and not config.use_fused_gine()


def test_graph_step_options_need_the_graph_step_and_known_switches(monkeypatch):
    for argv in (['--kernels', 'fused_gine'],
                 ['--graph-step', '--kernels', 'tile_attention'],
                 ['--per-layer']):
        monkeypatch.setattr(sys, 'argv', ['count_ops.py', *argv])
        with pytest.raises(SystemExit):
            bench.main()


def test_graph_host_times_time_each_model_and_pass(monkeypatch):
    # Every model's forward and backward are timed once per round (after 5
    # rounds of warm-up), on the 4-graph batch; the times are not compared
    # (speed is the benchmark's to measure).
    calls = []
    original = bench.graph_forward

    def spy(op, model, data):
        calls.append((op, data.num_graphs))
        return original(op, model, data)

    monkeypatch.setattr(bench, 'graph_forward', spy)
    ops = ['samsa_graph_model_hints', 'gine_graph_model']
    times = bench.graph_host_times(ops, rounds=3)
    assert list(times) == ops
    assert calls == [(op, 4) for _ in range(8) for op in ops]
    for fwd, bwd in times.values():
        assert fwd > 0 and bwd > 0


def test_graph_layer_counts_add_up_at_every_depth(monkeypatch):
    # The split is linear in the depth: a model of one layer counts the
    # rest plus one layer, call for call and view for view.
    monkeypatch.setattr(config, 'checks_values', lambda device: False)
    op = 'samsa_graph_model_hints'
    split = bench.graph_layer_counts(op)
    one = bench.measure_graph_step(op, 0, depth=1)
    for key in ('fwd', 'bwd'):
        layer, rest = split[f'layer_{key}'], split[f'rest_{key}']
        assert layer[0] > layer[1] > 0 and rest[0] > rest[1] > 0
        assert (one[f'{key}_ops'], one[f'{key}_views']) == (
            rest[0] + layer[0], rest[1] + layer[1])


def test_replay_host_times_replay_and_launch_the_copies_first(monkeypatch):
    # Every timed call replays the stand-in graph (none runs eagerly);
    # inputs at new addresses are copied in before the replay, inputs at
    # the last call's are read in place (no copy). A replayed call gives
    # the eager call's output.
    monkeypatch.setattr(config, 'checks_values', lambda device: False)
    r = bench.replay_host_times(2, 16, 16, 2, 4, repeat=11)
    assert set(r) == {'copies', 'in_place'}
    for mode, m in r.items():
        assert m['replays'] == 11 and m['max_abs_diff'] < 1e-6
        assert 0 < m['to_replay_us'] < m['call_us']
    m = r['copies']
    assert m['copies'] == 11 and 0 < m['to_copies_us'] < m['to_replay_us']
    m = r['in_place']
    assert m['copies'] == 0 and m['to_copies_us'] != m['to_copies_us']
