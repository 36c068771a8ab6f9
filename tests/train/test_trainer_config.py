"""config.yaml of a run folder: written by Trainer.fit() once the folder is
prepared, so that an old run moved aside keeps its own; the examples that
write it through the trainer."""
import argparse
import os
import os.path as osp
import runpy
import sys
import warnings

import pytest

sys.path.insert(0, osp.dirname(__file__))
from _train_toy import ToyTask, make_model  # noqa: E402
from test_trainer import STEPS, loaders, read_log, trainer  # noqa: E402

from samsa_geo.train import load_config, save_config  # noqa: E402

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
EXAMPLES = osp.join(ROOT, 'examples')


def old_folders(parent, name):
    return sorted(p for p in parent.iterdir()
                  if p.name.startswith(f'{name}.old-'))


def test_new_run_keeps_the_old_runs_config(tmp_path):
    out = tmp_path / 'run'
    first = trainer(out, epochs=1, config={'lr': 0.01, 'name': 'first'})
    assert not (out / 'config.yaml').exists()  # written by fit(), not before
    first.fit(*loaders())
    first.close()
    assert load_config(out / 'config.yaml') == {'lr': 0.01, 'name': 'first'}

    second = trainer(out, epochs=1, lr=3e-3,
                     config=argparse.Namespace(lr=3e-3, name='second'))
    second.fit(*loaders())
    (moved, ) = old_folders(tmp_path, 'run')
    assert load_config(moved / 'config.yaml') == {'lr': 0.01,
                                                  'name': 'first'}
    assert load_config(out / 'config.yaml') == {'lr': 3e-3,
                                                'name': 'second'}


def test_config_is_a_copy_taken_at_construction(tmp_path):
    args = argparse.Namespace(lr=0.01, tags=['a'])
    tr = trainer(tmp_path, epochs=1, config=args)
    args.lr = 5.0
    tr.fit(*loaders())
    assert load_config(tmp_path / 'config.yaml') == {'lr': 0.01,
                                                     'tags': ['a']}


def test_overwrite_deletes_the_old_config(tmp_path):
    out = tmp_path / 'run'
    trainer(out, epochs=1, config={'name': 'first'}).fit(*loaders())
    trainer(out, epochs=1, overwrite=True).fit(*loaders())
    assert not (out / 'config.yaml').exists()  # the new run gave none
    trainer(out, epochs=1, overwrite=True,
            config={'name': 'third'}).fit(*loaders())
    assert load_config(out / 'config.yaml') == {'name': 'third'}
    assert old_folders(tmp_path, 'run') == []


def test_project_folder_moves_the_config_with_the_run(tmp_path):
    # A folder with subfolders of its own: only the run's files move,
    # config.yaml among them.
    out = tmp_path / 'project'
    trainer(out, epochs=1, config={'name': 'first'}).fit(*loaders())
    (out / 'src').mkdir()
    trainer(out, epochs=1, config={'name': 'second'}).fit(*loaders())
    (moved, ) = old_folders(tmp_path, 'project')
    assert sorted(p.name for p in moved.iterdir()) == [
        'best.pt', 'config.yaml', 'last.pt', 'log.csv', 'metrics.json']
    assert load_config(moved / 'config.yaml') == {'name': 'first'}
    assert load_config(out / 'config.yaml') == {'name': 'second'}
    assert (out / 'src').is_dir()


def test_refused_resume_leaves_the_config(tmp_path):
    trainer(tmp_path, epochs=1, config={'lr': 0.01}).fit(*loaders())
    resumed = trainer(tmp_path, epochs=1, lr=1e-3, resume=True,
                      config={'lr': 1e-3})
    with pytest.raises(ValueError, match=r"--lr 0.01 there \(got 0.001\)"):
        resumed.fit(*loaders())
    assert load_config(tmp_path / 'config.yaml') == {'lr': 0.01}
    # The trainer's own check, where config.yaml agrees.
    resumed = trainer(tmp_path, epochs=1, lr=1e-3, resume=True,
                      config={'lr': 0.01})
    with pytest.raises(ValueError, match="Expected 'lr' to be 0.01"):
        resumed.fit(*loaders())
    assert load_config(tmp_path / 'config.yaml') == {'lr': 0.01}
    # An accepted resume records the resumed run's options.
    trainer(tmp_path, epochs=1, resume=True,
            config={'lr': 0.01, 'resume': True}).fit(*loaders())
    assert load_config(tmp_path / 'config.yaml') == {'lr': 0.01,
                                                     'resume': True}


# ------------------------------------------------- resume against config.yaml
#: The options of a run as an example records them: data, model and
#: schedule, and options that a resume may change.
OPTIONS = {'root': 'data/a', 'num_points': 512, 'scale': [0.8, 1.25],
           'normals': True, 'epochs': 1, 'device': 'cpu', 'resume': False,
           'no_progress': False, 'out': 'runs/a'}
RUN_FILES = ('best.pt', 'last.pt', 'log.csv', 'metrics.json', 'config.yaml')


def contents(folder):
    return {name: (folder / name).read_bytes() for name in RUN_FILES}


def resume_warnings(record):
    return [str(w.message) for w in record
            if 'without comparing' in str(w.message)]


def test_resume_refuses_other_data_options(tmp_path):
    trainer(tmp_path, epochs=1, config=OPTIONS).fit(*loaders())
    before = contents(tmp_path)
    resumed = trainer(tmp_path, epochs=2, resume=True, config={
        **OPTIONS, 'root': 'data/b', 'num_points': 256, 'scale': (0.8, 1.5),
        'epochs': 2, 'resume': True})
    with pytest.raises(ValueError) as exc:
        resumed.fit(*loaders())
    message = str(exc.value)
    # Every differing option, with the recorded value and the given one.
    for diff in ("--num-points 512 there (got 256)",
                 "--root 'data/a' there (got 'data/b')",
                 "--scale [0.8, 1.25] there (got [0.8, 1.5])"):
        assert diff in message
    assert f"'{tmp_path / 'config.yaml'}'" in message
    assert message.count(' there (got ') == 3  # not --epochs nor --resume
    assert contents(tmp_path) == before
    assert resumed.global_step == 0


def test_resume_may_change_the_length_and_how_the_run_goes(tmp_path):
    trainer(tmp_path, epochs=1, config=OPTIONS).fit(*loaders())
    with pytest.raises(ValueError, match='--normals True there'):
        trainer(tmp_path, epochs=2, resume=True,
                config={**OPTIONS, 'normals': False}).fit(*loaders())
    # More epochs, another device, folder path and progress display, and a
    # worker count the run did not record: the same experiment.
    changed = {**OPTIONS, 'epochs': 2, 'resume': True, 'device': 'cuda',
               'out': str(tmp_path), 'no_progress': True, 'num_workers': 2}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter('always')
        resumed = trainer(tmp_path, epochs=2, resume=True, config=changed)
        resumed.fit(*loaders())
    assert resume_warnings(record) == []
    assert [row['epoch'] for row in read_log(tmp_path)] == ['1', '2']
    assert resumed.global_step == 2 * STEPS
    assert load_config(tmp_path / 'config.yaml') == changed


def test_resume_without_config_yaml_warns_and_continues(tmp_path):
    # A folder written before runs recorded their options (or by a trainer
    # without config) resumes as it did, saying that nothing was compared.
    trainer(tmp_path, epochs=1, config=OPTIONS).fit(*loaders())
    os.remove(tmp_path / 'config.yaml')
    changed = {**OPTIONS, 'epochs': 2, 'root': 'data/b'}
    with pytest.warns(UserWarning, match=r"without comparing its options: "
                      r"it has no 'config.yaml'"):
        trainer(tmp_path, epochs=2, resume=True,
                config=changed).fit(*loaders())
    assert [row['epoch'] for row in read_log(tmp_path)] == ['1', '2']
    # From then on the resumed run's options are on record.
    assert load_config(tmp_path / 'config.yaml') == changed
    with pytest.raises(ValueError, match="--root 'data/b' there"):
        trainer(tmp_path, epochs=3, resume=True,
                config={**OPTIONS, 'epochs': 3}).fit(*loaders())


def test_resume_compares_the_options_both_record(tmp_path):
    # An older config.yaml without --num-points and with an option since
    # removed: the others are compared, the two named in a warning.
    trainer(tmp_path, epochs=1, config=OPTIONS).fit(*loaders())
    older = {key: value for key, value in OPTIONS.items()
             if key != 'num_points'}
    save_config({**older, 'k': 8}, tmp_path)
    with pytest.warns(UserWarning, match=r"not recorded there: "
                      r"--num-points; not given now: --k"):
        with pytest.raises(ValueError, match="--root 'data/a' there"):
            trainer(tmp_path, epochs=2, resume=True, config={
                **OPTIONS, 'epochs': 2, 'root': 'data/b'}).fit(*loaders())
    with pytest.warns(UserWarning, match='not recorded there'):
        trainer(tmp_path, epochs=2, resume=True,
                config={**OPTIONS, 'epochs': 2}).fit(*loaders())
    assert [row['epoch'] for row in read_log(tmp_path)] == ['1', '2']


# --------------------------------------------------------------- examples
def test_point_examples_keep_the_old_runs_config(tmp_path):
    sys.path.insert(0, EXAMPLES)
    try:
        from _point_pipeline import point_trainer
    finally:
        sys.path.remove(EXAMPLES)
    out = tmp_path / 'run'

    def run(lr):
        args = argparse.Namespace(
            out=str(out), preset='small', batch_size=8, epochs=1, lr=lr,
            amp=None, compile=False, device='cpu', seed=0,
            deterministic=False, resume=False, overwrite=False,
            no_progress=True)
        tr = point_trainer(make_model(), ToyTask(), args, 40, 'val_acc')
        tr.fit(*loaders())
        tr.close()

    run(1e-2)
    assert load_config(out / 'config.yaml')['lr'] == 1e-2
    run(3e-3)  # a new run in the same --out, without --resume
    (moved, ) = old_folders(tmp_path, 'run')
    assert load_config(moved / 'config.yaml')['lr'] == 1e-2
    assert load_config(out / 'config.yaml')['lr'] == 3e-3


def test_lrgb_example_keeps_each_runs_config(tmp_path, monkeypatch):
    from samsa_geo.testing.lrgb_fixtures import write_lrgb_raw
    root, out = str(tmp_path / 'data'), tmp_path / 'runs'
    write_lrgb_raw(root, 'peptides-func', seed=1)

    def run(lr):
        monkeypatch.setattr(sys, 'argv', [
            'lrgb.py', '--dataset', 'peptides-func', '--root', root,
            '--out', str(out), '--epochs', '1', '--seeds', '1',
            '--lr', str(lr), '--device', 'cpu', '--no-progress'])
        runpy.run_path(osp.join(EXAMPLES, 'lrgb.py'), run_name='__main__')

    run(1e-3)
    parent = out / 'peptides-func'
    assert load_config(parent / 'seed0' / 'config.yaml')['lr'] == 1e-3
    run(5e-4)  # the old run moves aside whole, seeds and summary
    (moved, ) = old_folders(out, 'peptides-func')
    old, new = (load_config(moved / 'seed0' / 'config.yaml'),
                load_config(parent / 'seed0' / 'config.yaml'))
    assert (old['lr'], new['lr']) == (1e-3, 5e-4)
    # Each seed's file repeats that seed's run alone.
    assert (new['seed'], new['seeds']) == (0, 1)
    # The parent's describes the runs its metrics.json summarises.
    assert load_config(parent / 'config.yaml')['lr'] == 5e-4
    assert load_config(moved / 'config.yaml')['lr'] == 1e-3


def test_molecules_example_keeps_each_runs_config(tmp_path):
    pytest.importorskip('datamol')
    pytest.importorskip('ogb')
    sys.path.insert(0, EXAMPLES)
    try:
        import molecules
    finally:
        sys.path.remove(EXAMPLES)
    out = tmp_path / 'runs'
    flags = ['--root', str(tmp_path / 'data'), '--out', str(out),
             '--models', 'gine', '--epochs', '1', '--seeds', '1',
             '--hidden', '8', '--layers', '1', '--device', 'cpu',
             '--no-progress']
    molecules.main(flags + ['--lr', '1e-3'])
    molecules.main(flags + ['--lr', '5e-4'])  # the old run moves aside whole
    (moved, ) = old_folders(tmp_path, 'runs')
    old = load_config(moved / 'gine' / 'seed0' / 'config.yaml')
    new = load_config(out / 'gine' / 'seed0' / 'config.yaml')
    assert (old['lr'], new['lr']) == (1e-3, 5e-4)
    assert (new['models'], new['seed'], new['seeds']) == ('gine', 0, 1)
    assert load_config(out / 'config.yaml')['lr'] == 5e-4
    assert load_config(moved / 'config.yaml')['lr'] == 1e-3
