import json
import os
import os.path as osp
import re
import signal
import subprocess
import sys

import pytest
import torch
import yaml

sys.path.insert(0, osp.dirname(__file__))
from _train_toy import TOY, ToyTask, make_dataset, make_model  # noqa: E402

from samsa_geo.train import (  # noqa: E402
    Trainer,
    claim_run_folder,
    load_checkpoint,
    make_loader,
)
from samsa_geo.train.run_folder import (  # noqa: E402
    RunFolderError,
    RunFolderLock,
    drop_stale_evaluations,
    holds_run,
    run_entries,
)

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))


class RisingTask(ToyTask):
    r"""Validation score = number of training steps so far: every epoch is
    a new best under mode='max' (plus 'offset', for a resumed run)."""
    def __init__(self, offset=0):
        super().__init__()
        self.offset = offset

    def compute_metrics(self, outputs):
        return {'score': float(self.offset + self.calls)}


def make_trainer(out_dir, epochs=2, task=None, **kw):
    return Trainer(make_model(), task or RisingTask(), out_dir=str(out_dir),
                   epochs=epochs, lr=1e-2, monitor='val_score', mode='max',
                   progress=False, tensorboard=False, **kw)


def data():
    return (make_loader(make_dataset(16), 8, shuffle=True, seed=0),
            make_loader(make_dataset(8, seed=1), 8, shuffle=False))


def finished_run(out_dir, epochs=2):
    r"""A run trained, tested on best.pt and closed; returns its metrics."""
    tr = make_trainer(out_dir, epochs)
    train, val = data()
    tr.fit(train, val)
    tr.evaluate(val, split='test', checkpoint='best')
    tr.close()
    with open(osp.join(out_dir, 'metrics.json')) as f:
        return json.load(f)


def test_second_process_fails_at_once_naming_the_holder(tmp_path):
    out = tmp_path / 'run'
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    proc = subprocess.Popen([sys.executable, TOY, str(out), '--epochs', '2',
                             '--sleep', '0.1'], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == 'READY'
        with pytest.raises(RunFolderError, match=rf"'{out}' is in use by "
                           rf"another run \(pid {proc.pid} on host .*"
                           rf"_train_toy\.py {out} --epochs 2"):
            make_trainer(out)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The first run finished untouched: all its epochs, one log row each.
    assert proc.returncode == 0, err
    with open(out / 'log.csv') as f:
        assert [line.split(',')[0] for line in f][1:] == ['1', '2']
    summary = json.loads((out / 'metrics.json').read_text())
    assert summary['last_epoch'] == 2
    assert load_checkpoint(out / 'best.pt')['best_epoch'] == \
        summary['best_epoch']


# Takes the lock of argv[1], retrying every 50 ms; prints each refusal once
# ('BUSY <message>'), then 'READY', then holds the lock until killed.
HOLDER = """
import sys, time
from samsa_geo.train.run_folder import RunFolderError, RunFolderLock
told = False
while True:
    try:
        lock = RunFolderLock(sys.argv[1])
        break
    except RunFolderError as e:
        if not told:
            print('BUSY', e, flush=True)
            told = True
        time.sleep(0.05)
print('READY', flush=True)
time.sleep(600)
"""


def test_lock_is_shared_within_a_process_and_released(tmp_path):
    a = RunFolderLock(str(tmp_path))
    b = RunFolderLock(str(tmp_path))  # same process: train, then evaluate
    holder = json.loads((tmp_path / '.lock').read_text())
    assert holder['pid'] == os.getpid()
    a.release()
    a.release()  # idempotent: b still holds it
    proc = subprocess.Popen([sys.executable, '-c', HOLDER, str(tmp_path)],
                            env=dict(os.environ, PYTHONPATH=ROOT),
                            stdout=subprocess.PIPE, text=True)
    try:
        busy = proc.stdout.readline()
        assert busy.startswith('BUSY') and f'pid {os.getpid()}' in busy
        b.release()  # the last holder: the other process gets the lock
        assert proc.stdout.readline().strip() == 'READY'
        with pytest.raises(RunFolderError, match=f'pid {proc.pid}'):
            RunFolderLock(str(tmp_path))
    finally:
        # A holder killed with SIGKILL frees the folder (the kernel drops it).
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    RunFolderLock(str(tmp_path)).release()


def test_new_run_moves_the_old_run_aside(tmp_path, capsys):
    out = tmp_path / 'run'
    old = finished_run(out, epochs=2)
    old_best = (out / 'best.pt').read_bytes()
    assert any(key.startswith('test_') for key in old)
    assert old['checkpoint'] == {'test': 'best.pt'}

    tr = make_trainer(out, epochs=1)
    tr.fit(*data())
    err = capsys.readouterr().err
    moved = [p for p in tmp_path.iterdir() if p.name.startswith('run.old-')]
    assert len(moved) == 1 and f"moved it to '{moved[0]}'" in err
    # The old run is whole in its new folder ...
    assert (moved[0] / 'best.pt').read_bytes() == old_best
    assert json.loads((moved[0] / 'metrics.json').read_text()) == old
    # ... and the new folder holds only the new run.
    summary = json.loads((out / 'metrics.json').read_text())
    assert 'test' not in summary and 'test_score' not in summary
    assert summary['best_epoch'] == summary['last_epoch'] == 1
    assert load_checkpoint(out / 'best.pt')['best_epoch'] == 1
    with open(out / 'log.csv') as f:
        assert len(f.readlines()) == 2  # header + one epoch



def _names(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != '.lock')


def test_start_evaluation_keeps_or_claims_the_folder(tmp_path):
    run = tmp_path / 'run'
    finished_run(run)
    best = str(run / 'best.pt')
    before = _names(run)

    # Its own checkpoint: the run stays; the options go to eval_config.yaml.
    tr = make_trainer(run, config={'votes': 3})
    path = tr.start_evaluation('best')
    assert path == str(run / 'eval_config.yaml')
    assert yaml.safe_load(open(path)) == {'votes': 3}
    assert _names(run) == sorted(before + ['eval_config.yaml'])
    tr.close()

    # Another folder holding a run: it moves aside whole (eval_config.yaml
    # with it), and config.yaml records the evaluation's options.
    other = tmp_path / 'other'
    other.mkdir()
    for name in before + ['eval_config.yaml']:
        (other / name).write_bytes((run / name).read_bytes())
    tr = make_trainer(other, config={'votes': 1})
    assert tr.start_evaluation(best) == str(other / 'config.yaml')
    result = tr.evaluate(data()[1], split='test', checkpoint=best)
    tr.close()
    moved = [p for p in tmp_path.iterdir() if p.name.startswith('other.old-')]
    assert len(moved) == 1
    assert _names(moved[0]) == sorted(before + ['eval_config.yaml'])
    assert _names(other) == ['config.yaml', 'metrics.json']
    summary = json.loads((other / 'metrics.json').read_text())
    assert summary['checkpoint'] == {'test': best}
    assert summary['test_score'] == result['test_score']

    # Without config nothing is written, and the folder is still claimed.
    third = tmp_path / 'third'
    third.mkdir()
    (third / 'log.csv').write_text('old')
    tr = make_trainer(third)
    assert tr.start_evaluation(best) is None
    tr.close()
    assert _names(third) == []

def test_folder_with_subfolders_keeps_them(tmp_path, capsys):
    # A project folder given as output: only the trainer's files move.
    out = tmp_path / 'project'
    finished_run(out)
    (out / 'src').mkdir()
    (out / 'src' / 'code.py').write_text('x = 1')
    (out / 'README').write_text('mine')
    make_trainer(out, epochs=1).fit(*data())
    moved = next(p for p in tmp_path.iterdir() if '.old-' in p.name)
    assert sorted(p.name for p in moved.iterdir()) == [
        'best.pt', 'last.pt', 'log.csv', 'metrics.json']
    assert "moved its last.pt, best.pt, log.csv, metrics.json" in \
        capsys.readouterr().err
    assert (out / 'src' / 'code.py').read_text() == 'x = 1'
    assert (out / 'README').read_text() == 'mine'


def test_overwrite_deletes_the_old_run(tmp_path, capsys):
    out = tmp_path / 'run'
    finished_run(out)
    (out / 'notes.txt').write_text('kept')
    tr = make_trainer(out, epochs=1, overwrite=True)
    tr.fit(*data())
    assert 'Overwriting the previous run' in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ['run']
    assert (out / 'notes.txt').read_text() == 'kept'
    summary = json.loads((out / 'metrics.json').read_text())
    assert summary['best_epoch'] == 1 and 'test' not in summary
    with pytest.raises(ValueError, match="'resume' and 'overwrite'"):
        make_trainer(tmp_path / 'other', resume=True, overwrite=True)


# What a caller writes into its run folder besides the trainer: a file, a
# folder and the files a pattern matches.
CALLER_FILES = ('plot.png', 'extra', re.compile(r'pred_\d+\.pt'))


def finished_run_with_files(out_dir):
    r"""A finished run whose caller also wrote plot.png, extra/ and
    pred_<k>.pt into its folder."""
    finished_run(out_dir)
    (out_dir / 'plot.png').write_bytes(b'old plot')
    (out_dir / 'extra').mkdir()
    (out_dir / 'extra' / 'table.csv').write_text('old')
    (out_dir / 'pred_0.pt').write_bytes(b'old')
    (out_dir / 'pred_1.pt').write_bytes(b'old')


def failing_fit(out_dir, **kw):
    r"""A new run with :obj:`CALLER_FILES` that fails at its first step,
    after preparing the folder; it wrote the header of its log.csv."""
    tr = make_trainer(out_dir, epochs=1, task=ToyTask(fail_at=1),
                      run_files=CALLER_FILES, **kw)
    with pytest.raises(RuntimeError, match='simulated crash'):
        tr.fit(*data())
    tr.close()
    with open(out_dir / 'log.csv') as f:
        assert len(f.readlines()) == 1


def test_overwrite_deletes_the_callers_files_too(tmp_path, capsys):
    out = tmp_path / 'run'
    finished_run_with_files(out)
    (out / 'notes.txt').write_text('kept')
    (out / 'pred_x.pt').write_text('kept')  # not matched by the pattern
    failing_fit(out, overwrite=True)
    # The new run stopped at once: nothing of the old one remains to pass
    # for its results.
    assert sorted(p.name for p in out.iterdir()) == [
        '.lock', 'log.csv', 'notes.txt', 'pred_x.pt']
    assert [p.name for p in tmp_path.iterdir()] == ['run']
    assert ("deleted last.pt, best.pt, log.csv, metrics.json, plot.png, "
            "extra/, pred_0.pt, pred_1.pt") in capsys.readouterr().err


def test_new_run_moves_the_callers_files_aside(tmp_path, capsys):
    out = tmp_path / 'run'
    finished_run_with_files(out)
    failing_fit(out)
    (moved, ) = [p for p in tmp_path.iterdir() if p.name != 'run']
    assert sorted(p.name for p in moved.iterdir()) == [
        'best.pt', 'extra', 'last.pt', 'log.csv', 'metrics.json',
        'plot.png', 'pred_0.pt', 'pred_1.pt']
    assert (moved / 'extra' / 'table.csv').read_text() == 'old'
    assert sorted(p.name for p in out.iterdir()) == ['.lock', 'log.csv']
    assert (f"moved it to '{moved}': last.pt, best.pt, log.csv, "
            f"metrics.json, plot.png, extra/, pred_0.pt, pred_1.pt") in \
        capsys.readouterr().err


def test_project_folder_moves_the_callers_files_and_keeps_the_users(
        tmp_path, capsys):
    # Subfolders of its own make it a project folder: the run's files move,
    # the caller's among them; the user's files and folders stay.
    out = tmp_path / 'project'
    finished_run_with_files(out)
    (out / 'src').mkdir()
    (out / 'src' / 'code.py').write_text('x = 1')
    (out / 'README').write_text('mine')
    failing_fit(out)
    (moved, ) = [p for p in tmp_path.iterdir() if p.name != 'project']
    assert sorted(p.name for p in moved.iterdir()) == [
        'best.pt', 'extra', 'last.pt', 'log.csv', 'metrics.json',
        'plot.png', 'pred_0.pt', 'pred_1.pt']
    assert sorted(p.name for p in out.iterdir()) == ['.lock', 'README',
                                                     'log.csv', 'src']
    assert (out / 'src' / 'code.py').read_text() == 'x = 1'
    assert "moved its last.pt, best.pt, log.csv, metrics.json, plot.png, " \
        "extra/, pred_0.pt, pred_1.pt to" in capsys.readouterr().err


def test_callers_files_alone_are_a_run(tmp_path):
    # A run that failed before its first checkpoint, or whose checkpoints
    # were deleted, leaves only its caller's files.
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'plot.png').write_bytes(b'old plot')
    (out / 'config.yaml').write_text('lr: 0.1\n')
    (out / 'pred_0.pt.old-1').write_text('no match')
    assert not holds_run(str(out))
    assert holds_run(str(out), CALLER_FILES)
    assert run_entries(str(out), CALLER_FILES) == ['config.yaml',
                                                   'plot.png']
    failing_fit(out)
    (moved, ) = [p for p in tmp_path.iterdir() if p.name != 'run']
    assert sorted(p.name for p in moved.iterdir()) == [
        'config.yaml', 'plot.png', 'pred_0.pt.old-1']
    # config.yaml alone is no run.
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'config.yaml').write_text('lr: 0.1\n')
    assert not holds_run(str(other), CALLER_FILES)


@pytest.mark.parametrize('run_files,error,match', [
    ('plot.png', TypeError, "'run_files' to be a list"),
    ([3], TypeError, 'a str or a compiled str pattern'),
    ([re.compile(b'x')], TypeError, 'a str or a compiled str pattern'),
    (['plots/a.png'], ValueError, 'directly inside the run folder'),
    (['..'], ValueError, 'directly inside'),
    (['.lock'], ValueError, 'directly inside'),
])
def test_bad_run_files(tmp_path, run_files, error, match):
    with pytest.raises(error, match=match):
        make_trainer(tmp_path, run_files=run_files)
    with pytest.raises(error, match=match):
        with claim_run_folder(str(tmp_path), run_files=run_files):
            pass
    assert not (tmp_path / '.lock').exists()  # refused before the lock


MULTI_RUN = ('summary.txt', re.compile(r'seed\d+'))


def multi_run(folder):
    r"""A finished run of two seeds: a run folder each and a summary."""
    for seed in (0, 1):
        finished_run(folder / f'seed{seed}')
    (folder / 'metrics.json').write_text('{}')
    (folder / 'config.yaml').write_text('seeds: 2\n')
    (folder / 'summary.txt').write_text('old')


def test_claim_run_folder_moves_an_old_multi_run_whole(tmp_path, capsys):
    out = tmp_path / 'multi'
    multi_run(out)
    with claim_run_folder(str(out), run_files=MULTI_RUN) as message:
        # Before the first new run: nothing of the old one is left.
        assert sorted(p.name for p in out.iterdir()) == ['.lock']
        finished_run(out / 'seed0')
    (moved, ) = [p for p in tmp_path.iterdir() if p.name != 'multi']
    assert sorted(p.name for p in moved.iterdir()) == [
        'config.yaml', 'metrics.json', 'seed0', 'seed1', 'summary.txt']
    assert (moved / 'seed1' / 'best.pt').is_file()
    assert message == capsys.readouterr().err.strip()
    assert (f"moved it to '{moved}': metrics.json, config.yaml, "
            f"summary.txt, seed0/, seed1/") in message
    # The lock was held for the block and is released: another process
    # may take it now (in this process it is shared anyway).
    RunFolderLock(str(out)).release()


def test_claim_run_folder_refuses_to_move_a_sub_run_in_use(tmp_path):
    # A Trainer of another process in <out>/seed1 (started alone, outside
    # the claim) holds that folder: the claim fails naming it and nothing
    # moves; once it is free, the claim moves the old run whole.
    out = tmp_path / 'multi'
    multi_run(out)
    RunFolderLock(str(out / 'seed0')).release()  # a lock file, free
    proc = subprocess.Popen([sys.executable, '-c', HOLDER,
                             str(out / 'seed1')],
                            env=dict(os.environ, PYTHONPATH=ROOT),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'READY'
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(RunFolderError,
                           match=f"'{out / 'seed1'}' is in use.*pid "
                           f"{proc.pid}"):
            with claim_run_folder(str(out), run_files=MULTI_RUN):
                pass
        # (The claim's own lock file stays.)
        assert sorted(p.name for p in out.iterdir()) == ['.lock', *before]
        assert (out / 'seed1' / 'best.pt').is_file()
        assert [p.name for p in tmp_path.iterdir()] == ['multi']
        with claim_run_folder(str(out), resume=True, run_files=MULTI_RUN):
            pass  # nothing moves: the sub-runs continue in their folders
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    with claim_run_folder(str(out), run_files=MULTI_RUN):
        assert sorted(p.name for p in out.iterdir()) == ['.lock']
    (moved, ) = [p for p in tmp_path.iterdir() if p.name != 'multi']
    assert (moved / 'seed1' / 'best.pt').is_file()
    # The sub-runs' locks were released: their folders can be taken again.
    RunFolderLock(str(moved / 'seed0')).release()


def test_claim_run_folder_overwrite_resume_and_project(tmp_path):
    out = tmp_path / 'multi'
    multi_run(out)
    (out / 'data').mkdir()  # the user's: a project folder
    (out / 'notes.txt').write_text('mine')
    (out / 'seed0.old-20240101-000000').mkdir()  # no match of seed\d+
    with claim_run_folder(str(out), resume=True, run_files=MULTI_RUN):
        pass  # every run continues in its folder: nothing moves
    assert (out / 'summary.txt').is_file() and (out / 'seed1').is_dir()
    with claim_run_folder(str(out), overwrite=True, run_files=MULTI_RUN):
        assert sorted(p.name for p in out.iterdir()) == [
            '.lock', 'data', 'notes.txt', 'seed0.old-20240101-000000']
    multi_run(out)
    with claim_run_folder(str(out), run_files=MULTI_RUN):
        assert sorted(p.name for p in out.iterdir()) == [
            '.lock', 'data', 'notes.txt', 'seed0.old-20240101-000000']
    (moved, ) = [p for p in tmp_path.iterdir() if p.name != 'multi']
    assert sorted(p.name for p in moved.iterdir()) == [
        'config.yaml', 'metrics.json', 'seed0', 'seed1', 'summary.txt']
    with pytest.raises(ValueError, match="'resume' and 'overwrite'"):
        with claim_run_folder(str(out), resume=True, overwrite=True):
            pass


def test_resume_without_last_pt_but_with_best_pt_refuses(tmp_path):
    out = tmp_path / 'run'
    finished_run(out)
    os.remove(out / 'last.pt')  # what the old error message advised
    best = (out / 'best.pt').read_bytes()
    tr = make_trainer(out, epochs=3, resume=True)
    with pytest.raises(RunFolderError, match=r"holds 'best.pt' but no "
                       r"'last.pt'.*copy .*best\.pt' to '.*last\.pt'"):
        tr.fit(*data())
    assert (out / 'best.pt').read_bytes() == best
    # The advice works: a copy of best.pt resumes from the best epoch.
    (out / 'last.pt').write_bytes(best)
    with pytest.warns(UserWarning, match='stretched'):
        tr.fit(*data())
    assert tr.global_step == 3 * 2
    # Resume with nothing to resume starts from scratch.
    fresh = make_trainer(tmp_path / 'empty', epochs=1, resume=True)
    fresh.fit(*data())
    assert fresh.best_epoch == 1


def test_metrics_describe_best_pt_after_resume(tmp_path):
    out = tmp_path / 'run'
    old = finished_run(out, epochs=2)
    assert old['test_score'] == old['best_score'] == 4.0
    tr = make_trainer(out, epochs=3, resume=True, task=RisingTask(100))
    train, val = data()
    tr.evaluate(val, split='last_eval', checkpoint='last')
    with pytest.warns(UserWarning, match='stretched'):
        tr.fit(train, val)  # epoch 3 replaces best.pt and last.pt
    summary = json.loads((out / 'metrics.json').read_text())
    for split in ('test', 'last_eval'):
        assert split not in summary and split not in summary['checkpoint']
        assert not any(k.startswith(split + '_') for k in summary)
    assert summary['best_epoch'] == 3
    tr.evaluate(val, split='test', checkpoint=str(out / 'best.pt'))
    summary = json.loads((out / 'metrics.json').read_text())
    assert summary['checkpoint'] == {'test': 'best.pt'}


def test_drop_stale_evaluations_keeps_other_checkpoints():
    summary = {'test': {'test_a': 1.0}, 'test_a': 1.0,
               'ext': {'ext_a': 2.0}, 'ext_a': 2.0, 'best_epoch': 3,
               'checkpoint': {'test': 'best.pt', 'ext': '/w/other.pt'}}
    assert drop_stale_evaluations(summary, 'best.pt') == {
        'ext': {'ext_a': 2.0}, 'ext_a': 2.0, 'best_epoch': 3,
        'checkpoint': {'ext': '/w/other.pt'}}


def test_stale_temporary_files_are_removed_at_start(tmp_path):
    out = tmp_path / 'run'
    out.mkdir()
    stale = out / '.last.pt.999999999.tmp'
    stale.write_bytes(b'\x00' * 1024)
    other = out / 'notes.tmp'
    other.write_text('not ours')
    make_trainer(out).close()
    assert not stale.exists() and other.exists()


def test_killed_save_leaves_no_orphan_after_restart(tmp_path):
    # A save killed before its rename leaves '.last.pt.<pid>.tmp'.
    out = tmp_path / 'run'
    tr = make_trainer(out, epochs=1)
    tr.fit(*data())
    tr.close()
    orphan = out / f'.last.pt.{os.getpid() + 1}.tmp'
    orphan.write_bytes((out / 'last.pt').read_bytes()[:500])
    with pytest.warns(UserWarning, match='stretched'):
        make_trainer(out, epochs=2, resume=True).fit(*data())
    assert sorted(p.name for p in out.iterdir() if p.name.startswith('.')) \
        == ['.lock']
    assert torch.load(out / 'last.pt', weights_only=True)['epoch'] == 2
