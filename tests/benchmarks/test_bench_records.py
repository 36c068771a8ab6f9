"""What the benchmark scripts record, run on the CPU in tiny
configurations: the configuration measured, case names and targets from
the actual sizes, like-with-like ratios, labels that match the timing."""
import argparse
import importlib.util
import json
import os.path as osp
import statistics
import subprocess
import sys

import pytest
import torch

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
BENCHMARKS = osp.join(ROOT, 'benchmarks')
sys.path.insert(0, BENCHMARKS)


def load(name):
    """The benchmark script ``name`` as a module of its own (``ops`` would
    clash with samsa_geo.ops' name)."""
    spec = importlib.util.spec_from_file_location(
        f'bench_{name}', osp.join(BENCHMARKS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_attention_measures_the_layers_default_arguments(
        tmp_path, monkeypatch):
    # By default SamsaConv and the GPSConvs have their default norm (batch
    # norm); --layer-norm builds them with norm='layer_norm'. The records
    # say which (norm, flags), and carry the commit given.
    attention = load('attention')
    for layer_norm in (False, True):
        conv = attention.build('samsa_conv', 16, 2, 4, layer_norm)
        gps = attention.build('gps_conv_performer', 16, 2, 4, layer_norm)
        name = 'LayerNorm' if layer_norm else 'BatchNorm'
        assert type(conv.norm2).__name__ == name
        assert type(gps.norm1).__name__ == name
    out = tmp_path / 'attention.json'
    base = ['attention.py', '--device', 'cpu', '--sizes', '2x16', '--ops',
            'samsa_conv,gps_conv_multihead,sdpa', '--passes', 'fwd',
            '--channels', '16', '--heads', '2', '--k', '4', '--warmup', '0',
            '--repeat', '1', '--commit', 'test-commit', '--out', str(out)]
    for extra in ([], ['--layer-norm']):
        monkeypatch.setattr(sys, 'argv', base + extra)
        attention.main()
    records = json.loads(out.read_text())
    assert [(r['op'], r['norm']) for r in records] == [
        ('samsa_conv', 'default'), ('gps_conv_multihead', 'default'),
        ('sdpa', None), ('samsa_conv', 'layer_norm'),
        ('gps_conv_multihead', 'layer_norm'), ('sdpa', None)]
    assert [r['flags'].endswith('--layer-norm') for r in records] == \
        [False] * 3 + [True] * 3
    assert all(r['commit'] == 'test-commit' and 'dirty' in r
               and '--commit' not in r['flags'] for r in records)


def test_ops_cases_are_named_by_their_sizes_with_targets_at_those_only(
        tmp_path):
    # --knn-points 2000 is knn_2k, not knn_100k, and has no target; a
    # target needs the sizes it is set for.
    ops = load('ops')
    cuda = torch.device('cuda')  # targets are for the GPU
    assert ops.case_target(cuda, 'knn_100k', {}) == 20.0
    assert ops.case_target(cuda, 'knn_2k', {}) is None
    assert ops.case_target(cuda, 'knn_128x1024', {}) == 1.0
    assert ops.case_target(cuda, 'knn_2x1024', {}) is None
    assert ops.case_target(cuda, 'fps_32x10k', {}) == 10.0
    assert ops.case_target(torch.device('cpu'), 'knn_100k', {}) is None
    ratio = 'classifier_ri_vs_plain'
    assert ops.case_target(cuda, ratio, dict(batch=128, n=1024)) == 0.5
    assert ops.case_target(cuda, ratio, dict(batch=2, n=1024)) is None
    assert [ops.count(n) for n in (100_000, 2000, 10_000, 1024, 1500)] == \
        ['100k', '2k', '10k', '1024', '1500']
    out = tmp_path / 'ops.json'
    run = subprocess.run(
        [sys.executable, 'benchmarks/ops.py', '--device', 'cpu',
         '--knn-clouds', '2', '--knn-points', '2000', '--fps-clouds', '1',
         '--classifier-clouds', '1', '--repeat', '1', '--commit',
         'test-commit', '--out', str(out)], cwd=ROOT, capture_output=True,
        text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    records = json.loads(out.read_text())
    cases = {r['case']: r for r in records}
    assert {'knn_2x1024', 'knn_2k', 'fps_1x10k'} <= set(cases)
    assert (cases['knn_2k']['n'], cases['knn_2x1024']['batch']) == (2000, 2)
    assert not any('target' in r or 'target_ms' in r for r in records)
    assert all(r['commit'] == 'test-commit' and 'dirty' in r
               for r in records)


def test_the_ratio_compares_both_models_on_the_same_backend():
    # classifier_ri_vs_plain per backend: RI on torch over plain on torch
    # (not over plain on auto), both named in the record.
    ops = load('ops')
    timed = {}
    for (variant, impl), ms in {('plain', 'auto'): 1.0,
                                ('plain', 'torch'): 4.0,
                                ('ri', 'auto'): 2.0,
                                ('ri', 'torch'): 5.0}.items():
        timed[variant, impl] = dict(case=f'classifier_{variant}', impl=impl,
                                    n=1024, batch=128, ms=ms,
                                    clouds_per_s=128 / ms * 1e3)
    got = {r['impl']: r for r in ops.ratio_records(torch.device('cuda'),
                                                   timed)}
    assert got['auto']['ratio'] == 0.5 and got['torch']['ratio'] == 0.8
    assert got['torch']['numerator'] == 'classifier_ri (torch)'
    assert got['torch']['denominator'] == 'classifier_plain (torch)'
    assert got['auto']['meets_target'] and got['torch']['meets_target']
    for rec in timed.values():
        rec['batch'] = 2
    assert not any('target' in r for r in ops.ratio_records(
        torch.device('cuda'), timed))


def test_the_graph_epoch_is_labelled_as_it_is_timed(monkeypatch):
    # layer.py --graph-epoch: the record's 'pipelined' is the timing's,
    # and the model's kept graphs are dropped before it.
    import layer
    batches = layer.molecule_batches('cpu', num_graphs=8, batch_size=4)
    monkeypatch.setattr(layer, 'molecule_batches',
                        lambda device, shuffle=None: batches)
    seen = {}
    timed = layer.measure_or_error

    def spy(fn, device, **kwargs):
        seen.update(kwargs)
        return timed(fn, device, **kwargs)

    monkeypatch.setattr(layer, 'measure_or_error', spy)
    args = argparse.Namespace(graph_channels=8, graph_depth=1, warmup=0,
                              repeat=1, commit='test-commit')
    rec = layer.graph_epoch_case('samsa_graph_model', args,
                                 torch.device('cpu'))
    assert rec['pipelined'] is seen['pipelined'] is False
    assert rec['pass'] == 'train_epoch' and rec['ms'] > 0
    (model, ) = seen['modules']
    assert any(type(m).__name__ == 'SamsaConv' for m in model.modules())
    assert rec['commit'] == 'test-commit'


def test_a_stopped_layer_run_keeps_the_sizes_it_finished(
        tmp_path, monkeypatch):
    # layer.py writes its records after each size: a run stopped at the
    # second size (a time limit) keeps the first one's, and a finished run
    # replaces them with all of its records.
    import layer
    real = layer.layer_case

    def stopped_at(n_stop):
        def case(op, B, n, *args):
            if n == n_stop:
                raise KeyboardInterrupt
            return real(op, B, n, *args)
        return case

    out = tmp_path / 'layer.json'
    argv = ['layer.py', '--device', 'cpu', '--sizes', '2x16,1x24',
            '--ops', 'samsa_conv_batch', '--passes', 'fwd', '--warmup', '0',
            '--repeat', '1', '--channels', '16', '--heads', '2', '--k', '4',
            '--commit', 'test-commit', '--out', str(out)]
    monkeypatch.setattr(sys, 'argv', argv)
    monkeypatch.setattr(layer, 'layer_case', stopped_at(24))
    with pytest.raises(KeyboardInterrupt):
        layer.main()
    assert [(r['batch'], r['n']) for r in json.loads(out.read_text())] == [
        (2, 16)]
    monkeypatch.setattr(layer, 'layer_case', real)
    layer.main()
    recs = json.loads(out.read_text())
    assert [(r['batch'], r['n']) for r in recs] == [(2, 16), (1, 24)]
    assert all(r['commit'] == 'test-commit' and r['ms'] > 0 for r in recs)


def test_graph_scale_reports_the_median_epoch_and_the_device(tmp_path):
    run = subprocess.run(
        [sys.executable, 'benchmarks/graph_scale.py', '--device', 'cpu',
         '--nodes', '300', '--models', 'gcn', '--hidden', '8', '--epochs',
         '3', '--warmup', '0', '--commit', 'test-commit', '--out',
         str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
        timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    (rec, ) = json.loads((tmp_path / 'graph_scale.json').read_text())
    assert rec['device'].startswith('cpu') and rec['machine']['device'] == \
        'cpu'
    assert rec['commit'] == 'test-commit' and 'dirty' in rec
    assert '--commit' not in rec['flags']
    (row, ) = rec['results']
    assert len(row['epoch_times_s']) == 3
    assert row['epoch_time_s'] == statistics.median(row['epoch_times_s'])
    assert row['epoch_time_mean_s'] == pytest.approx(
        statistics.mean(row['epoch_times_s']))


def test_points_records_carry_the_commit_given(tmp_path, monkeypatch):
    points = load('points')
    out = tmp_path / 'points.json'
    argv = ['--device', 'cpu', '--clouds', '1', '--points', '32', '--only',
            'samsa_conv_layer', '--repeat', '1', '--commit', 'test-commit',
            '--out', str(out)]
    monkeypatch.setattr(sys, 'argv', ['points.py'] + argv)
    points.main(argv)
    (rec, ) = json.loads(out.read_text())
    assert rec['op'] == 'samsa_conv_layer' and rec['commit'] == 'test-commit'
    assert 'dirty' in rec and '--commit' not in rec['flags']
