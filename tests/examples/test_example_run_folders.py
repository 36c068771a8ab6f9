r"""Every file an example writes into its run folder belongs to the run: a
new run deletes it (--overwrite) or moves it aside with the trainer's files
before it starts, so that a new run that fails or is stopped early never
sits next to an old run's results; a user's own files in a project folder
stay. Each new run here is stopped at its first training step."""
import json
import os
import os.path as osp
import runpy
import shutil
import sys

import pytest
import yaml

from samsa_geo.nn.models import SamsaGraphModel

EXAMPLES = osp.abspath(osp.join(osp.dirname(__file__), '..', '..',
                                'examples'))
sys.path.insert(0, EXAMPLES)
import _modelnet40_pipeline as pipeline  # noqa: E402
import rotation_protocol  # noqa: E402
import visualize_sampling  # noqa: E402

# A quick modelnet40.py run on the bundled sample.
MODELNET40 = ['--epochs', '1', '--num-points', '32', '--batch-size', '32',
              '--device', 'cpu', '--no-progress']
TRAINER_FILES = ['best.pt', 'config.yaml', 'last.pt', 'log.csv',
                 'metrics.json']


class Stopped(Exception):
    pass


def stop(*args, **kwargs):
    raise Stopped


def names(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != '.lock')


def old_folders(parent, name):
    return sorted(p for p in parent.iterdir()
                  if p.name.startswith(f'{name}.old-'))


def write_files(folder, *files):
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        (folder / name).write_bytes(b'old')


@pytest.mark.parametrize('case', ['overwrite', 'project', 'plots only'])
def test_modelnet40_confusion_matrix_goes_with_its_run(tmp_path, monkeypatch,
                                                       case):
    out = tmp_path / 'run'
    if case == 'plots only':  # the checkpoints and logs were deleted
        write_files(out, 'config.yaml', 'confusion_matrix.png')
    else:
        write_files(out, *TRAINER_FILES, 'confusion_matrix.png')
    if case == 'project':  # a project folder given as --out
        (out / 'data').mkdir()
        (out / 'notes.txt').write_text('mine')
    monkeypatch.setattr(pipeline.Classification, 'training_step', stop)
    flags = ['--overwrite'] if case == 'overwrite' else []
    with pytest.raises(Stopped):
        pipeline.run(pipeline.parse_args(['--out', str(out), *MODELNET40,
                                          *flags]))
    # The new run's config.yaml and log.csv header only.
    assert names(out) == (['config.yaml', 'data', 'log.csv', 'notes.txt']
                          if case == 'project' else ['config.yaml',
                                                     'log.csv'])
    moved = old_folders(tmp_path, 'run')
    if case == 'overwrite':
        assert moved == []
    elif case == 'plots only':
        assert names(moved[0]) == ['config.yaml', 'confusion_matrix.png']
    else:
        assert names(moved[0]) == sorted(TRAINER_FILES
                                         + ['confusion_matrix.png'])


def run_lrgb(monkeypatch, root, out, *flags):
    monkeypatch.setattr(sys, 'argv', [
        'lrgb.py', '--dataset', 'peptides-func', '--root', root, '--out',
        str(out), '--epochs', '1', '--device', 'cpu', '--no-progress',
        *flags])
    runpy.run_path(osp.join(EXAMPLES, 'lrgb.py'), run_name='__main__')



def test_modelnet40_eval_checkpoint_records_its_options(tmp_path):
    # --eval-checkpoint wrote its test results into --out and left the
    # folder's config.yaml (a training run's, or none) to describe them.
    run = tmp_path / 'run'
    trained = pipeline.run(pipeline.parse_args(['--out', str(run),
                                                *MODELNET40]))
    config = (run / 'config.yaml').read_bytes()
    weights = (run / 'best.pt').read_bytes()

    # The run's own checkpoint: the run stays, the evaluation's options go
    # to eval_config.yaml.
    pipeline.run(pipeline.parse_args(['--out', str(run), *MODELNET40,
                                      '--eval-checkpoint', 'best',
                                      '--votes', '2']))
    assert (run / 'config.yaml').read_bytes() == config
    assert (run / 'best.pt').read_bytes() == weights
    recorded = yaml.safe_load((run / 'eval_config.yaml').read_text())
    assert recorded['eval-checkpoint'] == 'best' and recorded['votes'] == 2
    assert yaml.safe_load(config)['votes'] == 1
    summary = json.loads((run / 'metrics.json').read_text())
    assert summary['checkpoint'] == {'test': 'best.pt'}
    assert old_folders(tmp_path, 'run') == []

    # Another folder, holding an old run: a new run folder of the
    # evaluation, the old run moved aside; the same checkpoint and options
    # give the training run's test metrics.
    other = tmp_path / 'other'
    write_files(other, *TRAINER_FILES)
    best = str(run / 'best.pt')
    result = pipeline.run(pipeline.parse_args(['--out', str(other),
                                               *MODELNET40,
                                               '--eval-checkpoint', best]))
    assert result['test_oa'] == trained['test_oa']
    assert result['test_macc'] == trained['test_macc']
    plot = ['confusion_matrix.png'] if pipeline.WITH_MATPLOTLIB else []
    assert names(other) == sorted(['config.yaml', 'metrics.json', *plot])
    assert yaml.safe_load((other / 'config.yaml').read_text())[
        'eval-checkpoint'] == best
    assert json.loads((other / 'metrics.json').read_text())[
        'checkpoint'] == {'test': best}
    (moved, ) = old_folders(tmp_path, 'other')
    assert names(moved) == TRAINER_FILES

    # --resume (a rotation protocol's, say) evaluates again in place:
    # nothing moves.
    pipeline.run(pipeline.parse_args(['--out', str(other), *MODELNET40,
                                      '--eval-checkpoint', best,
                                      '--resume']))
    assert names(other) == sorted(['config.yaml', 'metrics.json', *plot])
    assert len(old_folders(tmp_path, 'other')) == 1
    # ... and in a training run that --resume would continue, of another
    # checkpoint, it keeps the run's config.yaml.
    (tmp_path / 'kept').mkdir()
    foreign = str(tmp_path / 'kept' / 'model.pt')
    shutil.copyfile(best, foreign)
    pipeline.run(pipeline.parse_args(['--out', str(run), *MODELNET40,
                                      '--eval-checkpoint', foreign,
                                      '--resume']))
    assert (run / 'config.yaml').read_bytes() == config
    assert yaml.safe_load((run / 'eval_config.yaml').read_text())[
        'eval-checkpoint'] == foreign
    assert old_folders(tmp_path, 'run') == []

@pytest.mark.parametrize('overwrite', [False, True])
def test_lrgb_old_run_goes_whole(tmp_path, monkeypatch, overwrite):
    from samsa_geo.testing.lrgb_fixtures import write_lrgb_raw
    root, out = str(tmp_path / 'data'), tmp_path / 'runs'
    write_lrgb_raw(root, 'peptides-func', seed=1)
    run_lrgb(monkeypatch, root, out, '--seeds', '2')
    folder = out / 'peptides-func'
    assert names(folder) == ['config.yaml', 'metrics.json', 'seed0', 'seed1']
    assert 'test_predictions.pt' in names(folder / 'seed0')

    # A new run of one seed, stopped in its first step: none of the old
    # run's files (summary, predictions, the other seed) is left next to it.
    monkeypatch.setattr(SamsaGraphModel, 'forward', stop)
    with pytest.raises(Stopped):
        run_lrgb(monkeypatch, root, out, '--seeds', '1',
                 *(['--overwrite'] if overwrite else []))
    assert names(folder) == ['seed0']
    assert names(folder / 'seed0') == ['config.yaml', 'log.csv']
    moved = old_folders(out, 'peptides-func')
    if overwrite:
        assert moved == []
    else:
        assert names(moved[0]) == ['config.yaml', 'metrics.json', 'seed0',
                                   'seed1']
        assert 'test_predictions.pt' in names(moved[0] / 'seed0')


@pytest.mark.parametrize('overwrite', [False, True])
def test_molecules_old_run_goes_whole(tmp_path, overwrite):
    pytest.importorskip('datamol')
    pytest.importorskip('ogb')
    import molecules
    out = tmp_path / 'runs'
    flags = ['--root', str(tmp_path / 'data'), '--out', str(out),
             '--epochs', '1', '--seeds', '1', '--hidden', '8', '--layers',
             '1', '--device', 'cpu', '--no-progress']
    molecules.main(flags + ['--models', 'gine'])
    assert names(out) == ['config.yaml', 'gine', 'metrics.json']

    # Another model, stopped in its first step: the old summary and the
    # old model's runs are gone from --out.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(molecules.Regression, 'training_step', stop)
        with pytest.raises(Stopped):
            molecules.main(flags + ['--models', 'gps']
                           + (['--overwrite'] if overwrite else []))
    assert names(out) == ['gps']
    moved = old_folders(tmp_path, 'runs')
    if overwrite:
        assert moved == []
    else:
        assert names(moved[0]) == ['config.yaml', 'gine', 'metrics.json']
        assert 'best.pt' in names(moved[0] / 'gine' / 'seed0')


@pytest.mark.parametrize('overwrite', [False, True])
def test_rotation_protocol_old_protocol_goes_whole(tmp_path, monkeypatch,
                                                   overwrite):
    out = tmp_path / 'protocol'
    write_files(out, 'rotation_protocol.json')
    for name in ('samsa', 'samsa_ri'):
        for tag in ('z_z', 'z_so3', 'so3_so3'):
            write_files(out / name / tag, 'metrics.json',
                        'confusion_matrix.png')
    (out / 'notes').mkdir()  # the user's own: a project folder
    monkeypatch.setattr(pipeline.Classification, 'training_step', stop)
    with pytest.raises(Stopped):
        rotation_protocol.main(['--out', str(out), *MODELNET40,
                                *(['--overwrite'] if overwrite else [])])
    assert names(out) == ['notes', 'samsa']
    assert names(out / 'samsa') == ['z_z']
    assert names(out / 'samsa' / 'z_z') == ['config.yaml', 'log.csv']
    moved = old_folders(tmp_path, 'protocol')
    if overwrite:
        assert moved == []
    else:
        assert names(moved[0]) == ['rotation_protocol.json', 'samsa',
                                   'samsa_ri']
        assert names(moved[0] / 'samsa' / 'z_so3') == [
            'confusion_matrix.png', 'metrics.json']


def test_visualize_sampling_deletes_a_previous_calls_files(tmp_path,
                                                           monkeypatch):
    out = tmp_path / 'vis'
    write_files(out, 'sampling_attns.5.ply', 'sampling_panels.png',
                'sampling_graph.png', 'curves.png',
                # not a call's: a run's files and the user's
                'last.pt', 'metrics.json', 'sampling.ply', 'notes.txt')
    checkpoint = tmp_path / 'best.pt'
    checkpoint.write_bytes(b'')
    run_args = pipeline.parse_args(['--num-points', '32'])
    model = pipeline.build_model(10, run_args)
    monkeypatch.setattr(visualize_sampling, 'load_model',
                        lambda path: (model, run_args, str(tmp_path)))
    seen = []

    def record(model, data, out_dir, **kwargs):  # before it writes
        seen.append(sorted(os.listdir(out_dir)))
        raise Stopped

    monkeypatch.setattr(visualize_sampling, 'visualize_sampling', record)
    with pytest.raises(Stopped):
        visualize_sampling.main(['--checkpoint', str(checkpoint), '--out',
                                 str(out)])
    assert seen == [['last.pt', 'metrics.json', 'notes.txt', 'sampling.ply']]
