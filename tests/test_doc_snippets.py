"""The Python snippets of the README and ``docs/*.md`` run as written, in
the context their text gives them (``x``, ``edge_index``, ``batch``,
``data``, a trained checkpoint, ...), and do what their comments say."""
import glob
import os.path as osp
import re

import pytest
import torch
from torch_geometric.data import Batch, Data

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# Signature summaries, not code to run.
NOT_RUN = {('docs/points.md', 0)}


def snippets(path: str):
    with open(osp.join(ROOT, path)) as f:
        return re.findall(r'```python\n(.*?)```', f.read(), re.S)


def run(path: str, index: int, namespace: dict) -> dict:
    code = snippets(path)[index]
    exec(compile(code, f'{path}#{index}', 'exec'), namespace)
    return namespace


def test_every_snippet_is_run_here():
    # A snippet added to the docs gets a case below (or a NOT_RUN entry).
    cases = {('README.md', 0), ('docs/graphs.md', 0),
             ('docs/quickstart.md', 0), ('docs/quickstart.md', 1),
             ('docs/quickstart.md', 2), ('docs/quickstart.md', 3),
             ('docs/training.md', 0), ('docs/training.md', 1),
             ('docs/training.md', 2), ('docs/visualization.md', 0),
             ('docs/visualization.md', 1)}
    found = set()
    docs = sorted(glob.glob(osp.join(ROOT, 'docs', '*.md')))
    for path in ['README.md'] + [f'docs/{osp.basename(p)}' for p in docs]:
        found |= {(path, i) for i in range(len(snippets(path)))}
    assert found == cases | NOT_RUN


def _graph_batch(edge_dim: int):
    torch.manual_seed(0)
    sizes = [5, 7, 4]
    x = torch.randn(sum(sizes), 64)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    start = torch.tensor([0, 5, 12])
    src = torch.cat([torch.arange(n - 1) + s for n, s in zip(sizes, start)])
    edge_index = torch.stack([torch.cat([src, src + 1]),
                              torch.cat([src + 1, src])])
    edge_attr = torch.randn(edge_index.size(1), edge_dim)
    return {'x': x, 'edge_index': edge_index, 'batch': batch,
            'edge_attr': edge_attr}


def test_readme_samsa_conv():
    ns = run('README.md', 0, _graph_batch(8))
    assert ns['h'].shape == (16, 64)


def test_quickstart_gpsconv_swap_and_attention_weights():
    ns = run('docs/quickstart.md', 2, _graph_batch(64))
    assert ns['h'].shape == (16, 64)
    ns = run('docs/quickstart.md', 3, ns)
    indices, alpha = ns['indices'], ns['alpha']
    assert indices.shape[:2] == (3, 4)  # [num_graphs, heads, k_max]
    ptr = torch.tensor([0, 5, 12, 16])
    for b in range(3):  # global node indices of graph b, or -1
        got = indices[b][indices[b] >= 0]
        assert bool(((got >= ptr[b]) & (got < ptr[b + 1])).all())
    assert torch.isfinite(alpha).all()


def test_graphs_model():
    from samsa_geo.transforms import AddRandomWalkPE
    torch.manual_seed(0)
    graphs = []
    for n in (6, 9):
        src = torch.arange(n - 1)
        ei = torch.stack([torch.cat([src, src + 1]),
                          torch.cat([src + 1, src])])
        graphs.append(AddRandomWalkPE(16)(Data(
            x=torch.randint(0, 2, (n, 9)), edge_index=ei,
            edge_attr=torch.randint(0, 2, (ei.size(1), 3)), num_nodes=n)))
    ns = run('docs/graphs.md', 0, {'data': Batch.from_data_list(graphs)})
    assert ns['out'].shape == (2, 1)


def _point_sets(num: int, classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [Data(pos=torch.randn(32, 3, generator=g),
                 x=torch.randn(32, 3, generator=g),
                 y=torch.tensor([i % classes])) for i in range(num)]


@pytest.fixture
def trained(tmp_path, monkeypatch):
    # The training guide's two snippets, shortened: 1 epoch, no workers,
    # float32 (bf16 autocast on this CPU is slow); their checkpoint is the
    # one the quickstart loads.
    from samsa_geo.nn.models import SamsaPointClassifier
    monkeypatch.chdir(tmp_path)
    ns = run('docs/training.md', 0, {})
    code = snippets('docs/training.md')[1]
    for old, new in (('epochs=300', 'epochs=1'), ('num_workers=4', ''),
                     ("amp='bf16'", 'amp=None'), ('warmup_steps=1000',
                                                  'warmup_steps=1')):
        assert old in code
        code = code.replace(old, new)
    from samsa_geo.train import make_loader

    class Args:
        resume = False

    torch.manual_seed(0)
    ns.update(model=SamsaPointClassifier.small(4, in_channels=3),
              args=Args(), train_set=_point_sets(8, 4, 0),
              val_set=_point_sets(4, 4, 1),
              test_loader=make_loader(_point_sets(4, 4, 2), 4, shuffle=False))
    exec(compile(code, 'docs/training.md#1', 'exec'), ns)
    assert set(ns['best']) >= {'best_epoch', 'best_score', 'val_acc'}
    assert set(ns['test']) >= {'test_acc', 'test_loss'}
    assert osp.exists(tmp_path / 'runs' / 'modelnet40' / 'best.pt')
    return ns


def test_training_guide_and_reload(trained):
    ns = run('docs/training.md', 2, {})
    model = ns['model']
    assert not model.training
    ref = trained['model']
    ref.load_state_dict(torch.load('runs/modelnet40/best.pt',
                                   weights_only=True)['model'])
    for name, value in ref.state_dict().items():
        assert torch.equal(value, model.state_dict()[name])


def test_quickstart_checkpoint_and_visualization(tmp_path, monkeypatch,
                                                  capsys):
    # The README's main job trains on the bundled sample; a checkpoint of
    # the same kind (40 classes, normals as x) stands in for its best.pt.
    from samsa_geo.datasets import ModelNet40NormalResampled, sample_root
    from samsa_geo.nn.models import SamsaPointClassifier
    from samsa_geo.train import Trainer, make_loader
    monkeypatch.chdir(tmp_path)
    classes = len(ModelNet40NormalResampled(sample_root('modelnet40'),
                                            split='test').classes)
    torch.manual_seed(0)
    model = SamsaPointClassifier.small(classes, in_channels=3)
    ns = run('docs/training.md', 0, {})
    Trainer(model, ns['Classification'](), out_dir='runs/modelnet40',
            epochs=1, progress=False).fit(
        make_loader(_point_sets(4, classes, 0), 4, shuffle=True))
    capsys.readouterr()
    ns = run('docs/quickstart.md', 0, {})
    test, logits = ns['test'], ns['logits']
    assert logits.shape == (1, classes)  # one cloud
    # The predicted and the true class of the test set's first cloud.
    assert capsys.readouterr().out.split() == [
        test.classes[int(logits.argmax())], test.classes[int(test[0].y)]]
    ns = run('docs/quickstart.md', 1, ns)
    assert osp.exists(ns['paths']['png'])


def test_visualization_guide(tmp_path, monkeypatch):
    from samsa_geo.nn.models import SamsaPointClassifier
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = SamsaPointClassifier.small(4)  # points alone: no x
    data = Batch.from_data_list([Data(pos=d.pos)
                                 for d in _point_sets(2, 4, 0)])
    ns = run('docs/visualization.md', 0, {'model': model, 'data': data,
                                           'torch': torch})
    indices = ns['rec'].indices['backbone.convs.0.attn']
    assert indices.dim() == 3 and indices.size(0) == 2
    # The layer's pos: each cloud's points about its centroid.
    from torch_geometric.utils import scatter
    centred = data.pos - scatter(data.pos, data.batch, reduce='mean')[
        data.batch]
    torch.testing.assert_close(
        ns['rec'].records['backbone.convs.0.attn'][-1].pos, centred)
    with torch.no_grad():  # to float rounding (ranked keys, see the docs)
        torch.testing.assert_close(ns['out'], model(data.pos, data.batch),
                                   rtol=0, atol=1e-6)
    ns = run('docs/visualization.md', 1, ns)
    paths = ns['paths']
    assert osp.exists(paths['png'])
    assert paths['backend'] in ('open3d', 'matplotlib')
    assert set(paths['ply']) >= {'backbone.convs.0.attn'}
