import json
import os.path as osp
import runpy
import sys

import pytest
import torch

from samsa_geo.testing.lrgb_fixtures import write_lrgb_raw

EXAMPLES = osp.join(osp.dirname(__file__), '..', '..', 'examples')
EXAMPLE = osp.join(EXAMPLES, 'lrgb.py')
HIT_KEYS = ['hits@1_filtered', 'hits@3_filtered', 'hits@10_filtered']


def _brute_force(z, edge_label_index, edge_label):
    # One graph: filtered rank of every contact (s, t) by counting, in plain
    # Python, the non-contacts m of s that score strictly higher.
    pairs = [tuple(p) for p, label in zip(edge_label_index.T.tolist(),
                                          edge_label.tolist()) if label == 1]
    if not pairs:
        return dict.fromkeys(['mrr_filtered'] + HIT_KEYS, 0.0)
    s = (z.double() @ z.double().T).tolist()
    ranks = [1 + sum(s[a][m] > s[a][b] for m in range(len(s))
                     if (a, m) not in pairs) for a, b in pairs]
    out = {'mrr_filtered': sum(1 / r for r in ranks) / len(ranks)}
    for k in (1, 3, 10):
        out[f'hits@{k}_filtered'] = sum(r <= k for r in ranks) / len(ranks)
    return out


def test_pcqm_contact_reports_hits(tmp_path, monkeypatch):
    # Larger graphs than the default fixture, so that ranks exceed 10.
    root = str(tmp_path / 'data')
    write_lrgb_raw(root, 'pcqm-contact', seed=3, num_nodes=(14, 30))
    monkeypatch.syspath_prepend(EXAMPLES)
    import lrgb
    from torch_geometric.loader import DataLoader

    from samsa_geo.datasets import lrgb_task
    from samsa_geo.nn.models import PRESETS, SamsaGraphModel

    args = lrgb.parse_args(['--dataset', 'pcqm-contact', '--root', root,
                            '--out', str(tmp_path / 'runs')])
    splits = lrgb.load_splits(args, PRESETS['pcqm-contact'])
    torch.manual_seed(0)
    model = SamsaGraphModel.from_preset('pcqm-contact').eval()
    task = lrgb.LRGBTask(lrgb_task('pcqm-contact'), model.pe_attr)
    dataset = splits['train']
    outputs = {}
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=3):
            for key, value in task.eval_step(model, batch).items():
                outputs.setdefault(key, []).append(value)
        metrics = task.compute_metrics({k: torch.cat(v)
                                        for k, v in outputs.items()})
        refs = []
        for data in dataset:
            z = model.embed(data.x, data.edge_index, data.edge_attr,
                            torch.zeros(data.num_nodes, dtype=torch.long),
                            pe=data[model.pe_attr])
            refs.append(_brute_force(z, data.edge_label_index,
                                     data.edge_label))
    assert list(metrics) == ['mrr', 'mrr_filtered'] + HIT_KEYS
    for key in ['mrr_filtered'] + HIT_KEYS:
        ref = sum(r[key] for r in refs) / len(refs)  # mean over graphs
        assert metrics[key] == pytest.approx(ref, abs=1e-6), key
    assert metrics['hits@1_filtered'] < metrics['hits@10_filtered'] < 1


def test_pcqm_contact_example_writes_hits(tmp_path, monkeypatch):
    root, out = str(tmp_path / 'data'), str(tmp_path / 'runs')
    write_lrgb_raw(root, 'pcqm-contact', seed=1)
    monkeypatch.setattr(sys, 'argv', [
        'lrgb.py', '--dataset', 'pcqm-contact', '--root', root, '--out', out,
        '--epochs', '1', '--seeds', '1', '--device', 'cpu', '--no-progress'])
    runpy.run_path(EXAMPLE, run_name='__main__')
    with open(osp.join(out, 'pcqm-contact', 'seed0', 'metrics.json')) as f:
        metrics = json.load(f)
    with open(osp.join(out, 'pcqm-contact', 'metrics.json')) as f:
        summary = json.load(f)
    saved = torch.load(osp.join(out, 'pcqm-contact', 'seed0',
                                'test_predictions.pt'))
    for key in ['mrr_filtered'] + HIT_KEYS:
        per_graph = saved[f'{key}_per_graph']
        assert per_graph.shape == (3, )  # 3 fixture test graphs
        assert metrics[f'test_{key}'] == pytest.approx(
            per_graph.mean().item(), abs=1e-12)
        assert summary[f'test_{key}'] == pytest.approx(
            metrics[f'test_{key}'])
    for key in HIT_KEYS:
        assert summary[f'test_{key}_std'] == 0.0
