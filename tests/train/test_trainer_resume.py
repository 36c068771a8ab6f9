"""Resuming a run: crashes between the files an epoch writes, arguments
that must match the checkpoint, and what the checkpoint carries over
(best-epoch metrics, training time, a sampler's own generator)."""
import json
import os.path as osp
import sys

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler

sys.path.insert(0, osp.dirname(__file__))
from _train_toy import ToyTask, make_dataset  # noqa: E402
from test_trainer import (  # noqa: E402
    STEPS,
    assert_same_training_curve,
    assert_same_weights,
    loaders,
    read_log,
    trainer,
)

import samsa_geo.train.trainer as trainer_module  # noqa: E402
from samsa_geo.train import (  # noqa: E402
    Trainer,
    load_checkpoint,
    save_checkpoint,
)

#: Validation score after epochs 1-4 (mode='max'): epoch 2 is the best.
SCORES = [0.1, 0.9, 0.5, 0.5]


class ScoreTask(ToyTask):
    r"""The validation 'score' of epoch :math:`e` is :obj:`SCORES[e - 1]`,
    read from the trainer's global step (so it survives a resume)."""
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.trainer = None

    def compute_metrics(self, outputs):
        return {**super().compute_metrics(outputs),
                'score': SCORES[self.trainer.global_step // STEPS - 1]}


def score_trainer(out_dir, epochs=4, resume=False, **kw):
    task = ScoreTask()
    tr = trainer(out_dir, task, epochs=epochs, resume=resume,
                 monitor='val_score', mode='max', **kw)
    task.trainer = tr
    return tr


def summary(out_dir):
    with open(osp.join(out_dir, 'metrics.json')) as f:
        return json.load(f)


# ---------------------------------------------------- crashes between files
@pytest.mark.parametrize('failing', ['best.pt', 'last.pt'])
def test_crash_between_checkpoint_files_resumes_consistently(
        tmp_path, monkeypatch, failing):
    # The process dies while epoch 2 (a new best) saves 'failing'. best.pt
    # is written first, so either neither file holds epoch 2 (the resume
    # trains it again) or best.pt does and last.pt lags (the resume
    # continues from best.pt); both end as an uninterrupted run.
    ref = score_trainer(tmp_path / 'ref')
    ref.fit(*loaders())

    def dying_save(state, path):
        if state['epoch'] == 2 and path.endswith(failing):
            raise KeyboardInterrupt(f'killed while saving {failing}')
        save_checkpoint(state, path)

    monkeypatch.setattr(trainer_module, 'save_checkpoint', dying_save)
    crashed = score_trainer(tmp_path / 'run')
    with pytest.raises(KeyboardInterrupt):
        crashed.fit(*loaders())
    crashed.close()
    monkeypatch.undo()
    run = tmp_path / 'run'
    best_epoch = load_checkpoint(run / 'best.pt')['epoch']
    assert load_checkpoint(run / 'last.pt')['epoch'] == 1
    assert best_epoch == (1 if failing == 'best.pt' else 2)

    resumed = score_trainer(run, resume=True)
    result = resumed.fit(*loaders())
    assert result['best_epoch'] == 2 and result['val_score'] == 0.9
    best = load_checkpoint(run / 'best.pt')
    assert best['epoch'] == best['best_epoch'] == 2
    torch.testing.assert_close(best['model'],
                               load_checkpoint(tmp_path / 'ref' / 'best.pt')
                               ['model'], rtol=0, atol=0)
    assert load_checkpoint(run / 'last.pt')['epoch'] == 4
    assert_same_weights(resumed.model, ref.model)
    assert_same_training_curve(tmp_path / 'ref', run)
    assert summary(run)['best_epoch'] == 2
    assert summary(run)['val_score'] == 0.9


def test_resume_from_best_pt_catches_last_pt_up(tmp_path, monkeypatch, capsys):
    # A crash after best.pt of the last epoch: nothing is left to train,
    # and last.pt and metrics.json are brought up to best.pt's epoch.
    def dying_save(state, path):
        if state['epoch'] == 2 and path.endswith('last.pt'):
            raise KeyboardInterrupt
        save_checkpoint(state, path)

    monkeypatch.setattr(trainer_module, 'save_checkpoint', dying_save)
    crashed = score_trainer(tmp_path, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        crashed.fit(*loaders())
    crashed.close()
    monkeypatch.undo()
    assert summary(tmp_path)['last_epoch'] == 1

    resumed = score_trainer(tmp_path, epochs=2, resume=True)
    result = resumed.fit(*loaders())
    assert f"Resuming from {tmp_path / 'best.pt'}: epoch 3" in \
        capsys.readouterr().out
    assert (result['best_epoch'], result['best_score'],
            result['val_score']) == (2, 0.9, 0.9)
    assert load_checkpoint(tmp_path / 'last.pt')['epoch'] == 2
    record = summary(tmp_path)
    assert (record['last_epoch'], record['best_epoch']) == (2, 2)
    assert record['val_score'] == record['last']['val_score'] == 0.9
    assert record['global_step'] == 2 * STEPS


# ---------------------------------------------- metrics of the best epoch
def _crash_before_summary(tr, epoch):
    real = tr.metrics_file.record_epoch

    def dying(best, improved, **values):
        if values['last_epoch'] == epoch:
            raise KeyboardInterrupt('killed before metrics.json')
        real(best, improved, **values)

    tr.metrics_file.record_epoch = dying


def test_best_metrics_come_from_the_checkpoint(tmp_path):
    # Killed after the checkpoints of epoch 2 (the new best), before
    # metrics.json: the summary still names epoch 1's metrics.
    tr = score_trainer(tmp_path)
    _crash_before_summary(tr, epoch=2)
    with pytest.raises(KeyboardInterrupt):
        tr.fit(*loaders())
    tr.close()
    assert summary(tmp_path)['val_score'] == 0.1
    assert load_checkpoint(tmp_path / 'last.pt')['best_metrics'][
        'val_score'] == 0.9

    resumed = score_trainer(tmp_path, resume=True)
    result = resumed.fit(*loaders())
    assert result['best_epoch'] == 2 and result['val_score'] == 0.9
    record = summary(tmp_path)
    assert (record['best_epoch'], record['val_score']) == (2, 0.9)
    assert record['last']['val_score'] == 0.5


def test_summary_is_repaired_when_the_crash_was_in_the_last_epoch(tmp_path):
    tr = score_trainer(tmp_path, epochs=2)
    _crash_before_summary(tr, epoch=2)
    with pytest.raises(KeyboardInterrupt):
        tr.fit(*loaders())
    tr.close()
    resumed = score_trainer(tmp_path, epochs=2, resume=True)
    assert resumed.fit(*loaders())['val_score'] == 0.9
    record = summary(tmp_path)
    assert (record['last_epoch'], record['best_epoch']) == (2, 2)
    assert record['val_score'] == record['last']['val_score'] == 0.9


def test_checkpoints_without_best_metrics_fall_back_to_the_summary(tmp_path):
    # Checkpoints written before they kept the best epoch's metrics.
    tr = score_trainer(tmp_path, epochs=2)
    tr.fit(*loaders())
    tr.close()
    state = load_checkpoint(tmp_path / 'last.pt')
    for key in ('best_metrics', 'last_metrics', 'tie_break', 'amp',
                'train_time_s'):
        del state[key]
    save_checkpoint(state, tmp_path / 'last.pt')
    with pytest.warns(UserWarning, match='stretched'):
        result = score_trainer(tmp_path, epochs=3, resume=True).fit(
            *loaders())
    assert result['best_epoch'] == 2 and result['val_score'] == 0.9


# --------------------------------------- arguments that must match last.pt
def _finished(out_dir, **kw):
    tr = trainer(out_dir, epochs=2, dropout=0.0, **kw)
    tr.fit(*loaders())
    tr.close()
    return load_checkpoint(osp.join(out_dir, 'last.pt'))


@pytest.mark.parametrize('first,then,name,saved,given', [
    ({}, {'monitor': 'val_acc', 'mode': 'max'}, 'monitor', "'val_loss'",
     "'val_acc'"),
    ({}, {'mode': 'max'}, 'mode', "'min'", "'max'"),
    ({'monitor': 'val_acc', 'mode': 'max'},
     {'monitor': 'val_acc', 'mode': 'max', 'tie_break': 'val_loss'},
     'tie_break', 'None', "'val_loss'"),
    ({}, {'lr': 1e-4}, 'lr', '0.01', '0.0001'),
    ({}, {'weight_decay': 0.5}, 'weight_decay', '0.05', '0.5'),
    ({}, {'min_lr': 5e-5}, 'min_lr', '0.0', '5e-05'),
    ({}, {'warmup_steps': 0}, 'warmup_steps', '3', '0'),
    ({}, {'amp': 'bf16'}, 'amp', 'None', "'bf16'"),
    ({}, {'amp': 'fp16'}, 'amp', 'None', "'fp16'"),
])
def test_resume_refuses_changed_settings(tmp_path, first, then, name, saved,
                                         given):
    before = _finished(tmp_path, **first)
    tr = trainer(tmp_path, epochs=2, dropout=0.0, resume=True,
                 **{**first, **then})
    last = tmp_path / 'last.pt'
    with pytest.raises(ValueError) as exc:
        tr.fit(*loaders())
    message = str(exc.value)
    assert message.startswith(f"Expected '{name}' to be {saved}, as in the "
                              f"checkpoint '{last}'")
    assert f'(got {given})' in message
    assert f'Resume with {name}={saved}' in message
    # Nothing was loaded or trained.
    assert tr.global_step == 0
    after = load_checkpoint(last)
    assert after['global_step'] == before['global_step']
    torch.testing.assert_close(after['model'], before['model'], rtol=0,
                               atol=0)


class ConfiguredMLP(torch.nn.Sequential):
    r"""The toy model with its constructor arguments on record, as the
    models of :mod:`samsa_geo.nn.models` keep them."""
    def __init__(self, hidden=16, dropout=0.0):
        super().__init__(torch.nn.Linear(8, hidden), torch.nn.ReLU(),
                         torch.nn.Dropout(dropout),
                         torch.nn.Linear(hidden, 3))
        self.kwargs = {'hidden': hidden, 'dropout': dropout}

    def model_config(self):
        return {'class': 'ConfiguredMLP', 'kwargs': dict(self.kwargs)}


def _model_trainer(out_dir, model, resume=False):
    return Trainer(model, ToyTask(), out_dir=str(out_dir), epochs=2, lr=1e-2,
                   warmup_steps=3, deterministic=True, progress=False,
                   tensorboard=False, resume=resume)


@pytest.mark.parametrize('kwargs,differs', [
    ({'dropout': 0.5}, 'dropout=0.0 there (got 0.5)'),
    ({'hidden': 32, 'dropout': 0.5},
     'dropout=0.0 there (got 0.5), hidden=16 there (got 32)'),
])
def test_resume_refuses_a_model_built_otherwise(tmp_path, kwargs, differs):
    # Another dropout leaves the weights' shapes as they were: without the
    # check, the resume trained on with a model the run never had.
    first = _model_trainer(tmp_path, ConfiguredMLP())
    first.fit(*loaders())
    first.close()
    before = load_checkpoint(tmp_path / 'last.pt')
    tr = _model_trainer(tmp_path, ConfiguredMLP(**kwargs), resume=True)
    with pytest.raises(ValueError) as exc:
        tr.fit(*loaders())
    last = tmp_path / 'last.pt'
    assert str(exc.value) == (
        f"Expected the model to be built as in the checkpoint '{last}' that "
        f"resume=True continues: {differs}. Resume with the same model "
        f"arguments, or start a new run without resume")
    assert tr.global_step == 0
    assert load_checkpoint(last)['global_step'] == before['global_step']
    # The same arguments resume.
    tr.close()
    again = _model_trainer(tmp_path, ConfiguredMLP(), resume=True)
    again.fit(*loaders())
    assert again.global_step == before['global_step']


def test_resume_refuses_weights_that_do_not_fit(tmp_path):
    # A model without constructor arguments on record.
    _finished(tmp_path)
    wider = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 3))
    tr = Trainer(wider, ToyTask(), out_dir=str(tmp_path), epochs=2, lr=1e-2,
                 warmup_steps=3, progress=False, tensorboard=False,
                 resume=True)
    with pytest.raises(ValueError, match=r"(?s)Expected the model to be "
                       r"the one that wrote the checkpoint '.*last\.pt' that "
                       r"resume=True continues: its weights do not fit\. "
                       r".*size mismatch for 0\.weight"):
        tr.fit(*loaders())


def test_older_checkpoint_refuses_fp16_by_its_scaler_state(tmp_path):
    state = _finished(tmp_path)
    del state['amp']  # not recorded before
    save_checkpoint(state, tmp_path / 'last.pt')
    with pytest.raises(ValueError, match=r"Expected 'amp' to be None or "
                       r"'bf16', as in the checkpoint .*\(got 'fp16'\)"):
        trainer(tmp_path, epochs=2, dropout=0.0, resume=True,
                amp='fp16').fit(*loaders())


def test_warmup_may_change_with_the_epochs(tmp_path):
    # The examples derive warmup_steps from the epochs: both change, and the
    # schedule is reshaped from the current step on.
    _finished(tmp_path)
    tr = trainer(tmp_path, epochs=4, dropout=0.0, resume=True,
                 warmup_steps=6)
    with pytest.warns(UserWarning, match=r'Resuming with 20 total steps and '
                      r'6 warm-up steps instead of 10 and 3: the cosine '
                      r'schedule is stretched'):
        tr.fit(*loaders())
    assert (tr.scheduler.total_steps, tr.scheduler.warmup_steps) == (20, 6)
    rows = read_log(tmp_path)
    for epoch in (3, 4):  # lr of each resumed epoch's last step
        assert float(rows[epoch - 1]['lr']) == pytest.approx(
            tr.scheduler.lr_at(epoch * STEPS - 1, 1e-2), rel=1e-12)
    assert load_checkpoint(tmp_path / 'last.pt')['scheduler'][
        'warmup_steps'] == 6


# -------------------------------------------------- carried over on resume
def test_train_time_adds_up_over_resumed_segments(tmp_path):
    crashed = trainer(tmp_path, ToyTask(sleep=0.02, fail_at=3 * STEPS + 1))
    with pytest.raises(RuntimeError, match='simulated crash'):
        crashed.fit(*loaders())
    crashed.close()
    first = summary(tmp_path)['train_time_s']
    assert load_checkpoint(tmp_path / 'last.pt')['train_time_s'] == first
    assert first >= 3 * STEPS * 0.02
    trainer(tmp_path, ToyTask(sleep=0.02), resume=True).fit(*loaders())
    total = summary(tmp_path)['train_time_s']
    # The resumed segment trained one more epoch (STEPS sleeps) on top.
    assert total >= first + STEPS * 0.02
    assert load_checkpoint(tmp_path / 'last.pt')['train_time_s'] == total


def _sampler_loaders(kind):
    train_set = make_dataset(40)
    generator = torch.Generator().manual_seed(0)
    if kind == 'sampler':
        sampler = RandomSampler(train_set, generator=generator)
        return DataLoader(train_set, 8, sampler=sampler), loaders()[1]
    # shuffle=True: the loader's RandomSampler draws from the loader's
    # generator, which the trainer re-seeds at every epoch's start.
    return (DataLoader(train_set, 8, shuffle=True, generator=generator),
            loaders()[1])


@pytest.mark.parametrize('kind', ['sampler', 'loader'])
@pytest.mark.parametrize('stop', ['crash', 'sigint'])
def test_resume_continues_a_samplers_own_generator(tmp_path, stop, kind):
    # RandomSampler(ds, generator=g) draws from g, not the global RNG: its
    # state is saved with the checkpoint, at the epoch's end or (mid-epoch)
    # at its start, so that the resumed order is the uninterrupted one.
    # DataLoader(ds, shuffle=True, generator=g) hands g to its sampler: the
    # epoch's re-seed decides the order, also after a resume at an epoch's
    # end (the crash, at the first step of the third epoch).
    ref = trainer(tmp_path / 'ref')
    ref.fit(*_sampler_loaders(kind))
    task = (ToyTask(fail_at=2 * STEPS + 1) if stop == 'crash'
            else ToyTask(signal_at=2 * STEPS + 2))
    stopped = trainer(tmp_path / 'run', task)
    with pytest.raises((RuntimeError, SystemExit)):
        stopped.fit(*_sampler_loaders(kind))
    stopped.close()
    resumed = trainer(tmp_path / 'run', resume=True)
    resumed.fit(*_sampler_loaders(kind))
    assert_same_weights(resumed.model, ref.model)
    assert_same_training_curve(tmp_path / 'ref', tmp_path / 'run')


def test_load_weights_refuses_a_model_built_otherwise(tmp_path):
    # Evaluating a checkpoint (the examples' --eval-checkpoint) with a model
    # of other arguments loaded the weights silently or failed inside
    # load_state_dict.
    first = _model_trainer(tmp_path / 'run', ConfiguredMLP(hidden=16))
    first.fit(*loaders())
    first.close()
    best = str(tmp_path / 'run' / 'best.pt')
    tr = _model_trainer(tmp_path / 'eval', ConfiguredMLP(dropout=0.5))
    with pytest.raises(ValueError) as exc:
        tr.load_weights(best)
    assert str(exc.value) == (
        f"Expected the model to be built as in the checkpoint '{best}' "
        f"whose weights load_weights() loads: dropout=0.0 there (got 0.5). "
        f"Build the model with the checkpoint's arguments (e.g. "
        f"Model.from_checkpoint)")
    wider = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 3))
    tr.close()
    tr = _model_trainer(tmp_path / 'eval', wider)
    with pytest.raises(ValueError, match=r"(?s)checkpoint '.*best.pt' whose "
                       r"weights load_weights\(\) loads: its weights do not "
                       r"fit\. Build the model .*size mismatch"):
        tr.load_weights(best)
    tr.close()
    # The same arguments load the weights.
    model = ConfiguredMLP(hidden=16)
    tr = _model_trainer(tmp_path / 'eval', model)
    tr.load_weights(best)
    saved = load_checkpoint(best)['model']
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name])
