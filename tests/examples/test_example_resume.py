r"""--resume of the examples continues the run its folder holds only with
the options that decide its data, model, schedule and evaluation, as the
run's config.yaml records them; it may change the number of epochs and how
the run goes (device, progress, workers)."""
import os
import os.path as osp
import pathlib
import sys
import warnings

import pytest
import torch

from samsa_geo.datasets import sample_root
from samsa_geo.testing.lrgb_fixtures import write_lrgb_raw

EXAMPLES = osp.join(osp.dirname(__file__), '..', '..', 'examples')
sys.path.insert(0, EXAMPLES)
import _modelnet40_pipeline  # noqa: E402
import lrgb  # noqa: E402
import modelnet40  # noqa: E402
import shapenet_part  # noqa: E402

RUN_FILES = ('best.pt', 'last.pt', 'log.csv', 'metrics.json', 'config.yaml')


def contents(folder):
    return {name: pathlib.Path(folder, name).read_bytes()
            for name in RUN_FILES}


def epochs_logged(folder):
    with open(osp.join(folder, 'log.csv')) as f:
        return [line.split(',')[0] for line in f.read().splitlines()[1:]]


def small_splits(module, monkeypatch):
    """Replaces ``module.datasets`` by the first clouds of each split (one
    batch of training clouds): the runs take a second."""
    datasets = module.datasets

    def first_clouds(args):
        train, val, test = datasets(args)
        return train[:16], val[:4], test[:4]

    monkeypatch.setattr(module, 'datasets', first_clouds)


POINT_EXAMPLES = {'modelnet40': (modelnet40, _modelnet40_pipeline),
                  'shapenet_part': (shapenet_part, shapenet_part)}


SAMPLE = sample_root('modelnet40')


@pytest.mark.parametrize('example,flag,value,recorded,got', [
    ('modelnet40', '--num-points', '24', '16', '24'),
    ('modelnet40', '--root', SAMPLE, 'None', repr(SAMPLE)),
    ('modelnet40', '--val-ratio', '0.25', '0.2', '0.25'),
    ('modelnet40', '--train-rotation', 'z', "'none'", "'z'"),
    ('shapenet_part', '--num-points', '24', '16', '24'),
])
def test_point_example_resume_refuses_other_data(example, flag, value,
                                                 recorded, got, tmp_path,
                                                 monkeypatch):
    script, module = POINT_EXAMPLES[example]
    small_splits(module, monkeypatch)
    out = str(tmp_path / 'run')
    flags = ['--num-points', '16', '--batch-size', '8', '--out', out,
             '--device', 'cpu', '--no-progress']
    script.main(flags + ['--epochs', '1'])
    before = contents(out)

    # Refused before any data is read (another --root is not processed).
    read = module.datasets
    monkeypatch.setattr(module, 'datasets', lambda args: pytest.fail(
        'the data was read before the resume was refused'))
    with pytest.raises(ValueError) as exc:
        script.main(flags + ['--epochs', '2', '--resume', flag, value])
    assert f'{flag} {recorded} there (got {got})' in str(exc.value)
    assert str(exc.value).count(' there (got ') == 1
    assert contents(out) == before

    # More epochs, without progress bars: the run goes on.
    monkeypatch.setattr(module, 'datasets', read)
    script.main(flags[:-1] + ['--epochs', '2', '--resume'])
    assert epochs_logged(out) == ['1', '2']


def test_modelnet40_resume_without_config_yaml(tmp_path, monkeypatch):
    # A run folder written before runs recorded their options resumes as
    # before, with a warning that nothing was compared.
    small_splits(_modelnet40_pipeline, monkeypatch)
    out = str(tmp_path / 'run')
    flags = ['--num-points', '16', '--batch-size', '8', '--out', out,
             '--device', 'cpu', '--no-progress']
    modelnet40.main(flags + ['--epochs', '1'])
    os.remove(osp.join(out, 'config.yaml'))
    with pytest.warns(UserWarning, match="has no 'config.yaml'"):
        modelnet40.main(flags + ['--epochs', '2', '--resume'])
    assert epochs_logged(out) == ['1', '2']
    assert osp.isfile(osp.join(out, 'config.yaml'))


def test_lrgb_resume_refuses_another_root(tmp_path, monkeypatch):
    # Two roots with the same graphs and classes: only the record tells
    # them apart.
    roots = [str(tmp_path / 'data'), str(tmp_path / 'copy')]
    for root in roots:
        write_lrgb_raw(root, 'peptides-func', seed=1)
    out = str(tmp_path / 'runs')
    run_dir = osp.join(out, 'peptides-func', 'seed0')

    def main(*flags):
        monkeypatch.setattr(sys, 'argv', [
            'lrgb.py', '--dataset', 'peptides-func', '--out', out,
            '--seeds', '1', '--device', 'cpu', '--no-progress', *flags])
        lrgb.main()

    main('--root', roots[0], '--epochs', '1')
    before = contents(run_dir)
    load = lrgb.load_splits  # refused before the other root is read
    monkeypatch.setattr(lrgb, 'load_splits', lambda *args: pytest.fail(
        'the data was read before the resume was refused'))
    with pytest.raises(ValueError, match=rf"--root '{roots[0]}' there "
                       rf"\(got '{roots[1]}'\)"):
        main('--root', roots[1], '--epochs', '2', '--resume')
    assert contents(run_dir) == before
    monkeypatch.setattr(lrgb, 'load_splits', load)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter('always')
        main('--root', roots[0], '--epochs', '2', '--resume')
    assert not [w for w in record if 'without comparing' in str(w.message)]
    assert epochs_logged(run_dir) == ['1', '2']


@pytest.fixture
def torch_threads():
    threads = torch.get_num_threads()  # molecules.py sets --threads
    yield
    torch.set_num_threads(threads)


def test_molecules_resume_refuses_another_dropout(tmp_path, torch_threads,
                                                 monkeypatch):
    # The baselines record no constructor arguments in their checkpoints:
    # config.yaml is what tells another --dropout.
    pytest.importorskip('datamol')
    pytest.importorskip('ogb')
    import molecules
    out = str(tmp_path / 'runs')
    run_dir = osp.join(out, 'gine', 'seed0')
    flags = ['--root', str(tmp_path / 'data'), '--out', out, '--models',
             'gine', '--seeds', '1', '--hidden', '8', '--layers', '1',
             '--device', 'cpu', '--no-progress']
    molecules.main(flags + ['--epochs', '1'])
    before = contents(run_dir)
    load = molecules.FreeSolv  # refused before the data is read
    monkeypatch.setattr(molecules, 'FreeSolv', lambda *args, **kwargs:
                        pytest.fail('the data was read before the resume '
                                    'was refused'))
    with pytest.raises(ValueError, match=r"--dropout 0.2 there "
                       r"\(got 0.3\)"):
        molecules.main(flags + ['--epochs', '2', '--resume', '--dropout',
                                '0.3'])
    assert contents(run_dir) == before
    monkeypatch.setattr(molecules, 'FreeSolv', load)
    molecules.main(flags + ['--epochs', '2', '--resume', '--threads', '2'])
    assert epochs_logged(run_dir) == ['1', '2']
