import csv
import json
import os
import os.path as osp
import signal
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, osp.dirname(__file__))
from _train_toy import ToyTask, make_dataset, make_model  # noqa: E402

from samsa_geo.train import Trainer, load_checkpoint, make_loader  # noqa: E402

N_TRAIN, BATCH = 40, 8  # 5 steps per epoch
STEPS = N_TRAIN // BATCH


def loaders(kind: str = 'make_loader'):
    train_set = make_dataset(N_TRAIN)
    if kind == 'make_loader':
        train = make_loader(train_set, BATCH, shuffle=True, seed=3)
    elif kind == 'plain_shuffle':  # RandomSampler drawing from the global RNG
        train = DataLoader(train_set, BATCH, shuffle=True)
    else:
        train = make_loader(train_set, BATCH, shuffle=False)
    val = make_loader(make_dataset(11, seed=5), 4, shuffle=False)
    return train, val


def trainer(out_dir, task=None, epochs=4, resume=False, dropout=0.3, **kw):
    kw = {'lr': 1e-2, 'warmup_steps': 3, 'deterministic': True,
          'progress': False, 'tensorboard': False, **kw}
    return Trainer(make_model(dropout=dropout), task or ToyTask(),
                   out_dir=str(out_dir), epochs=epochs, resume=resume, **kw)


def read_log(out_dir):
    with open(osp.join(out_dir, 'log.csv'), newline='') as f:
        return list(csv.DictReader(f))


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=0, atol=0)


def assert_same_training_curve(dir_a, dir_b) -> None:
    rows_a, rows_b = read_log(dir_a), read_log(dir_b)
    assert [r['epoch'] for r in rows_a] == [r['epoch'] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        for key in ('lr', 'train_loss', 'val_loss', 'val_acc'):
            assert ra[key] == rb[key], (ra['epoch'], key)


@pytest.mark.parametrize('kind', ['make_loader', 'plain_shuffle', 'no_shuffle'])
def test_resume_after_crash_is_bitwise_exact(tmp_path, kind):
    ref = trainer(tmp_path / 'ref')
    ref.fit(*loaders(kind))

    crashed = trainer(tmp_path / 'run', ToyTask(fail_at=2 * STEPS + 3))
    with pytest.raises(RuntimeError, match='simulated crash'):
        crashed.fit(*loaders(kind))
    state = load_checkpoint(tmp_path / 'run' / 'last.pt')
    assert (state['epoch'], state['step_in_epoch']) == (2, 0)
    assert state['global_step'] == 2 * STEPS

    resumed = trainer(tmp_path / 'run', resume=True)
    result = resumed.fit(*loaders(kind))
    assert resumed.global_step == ref.global_step == 4 * STEPS
    assert_same_weights(resumed.model, ref.model)
    assert_same_training_curve(tmp_path / 'ref', tmp_path / 'run')
    assert result['best_epoch'] == ref.best_epoch


@pytest.mark.parametrize('kind', ['make_loader', 'plain_shuffle'])
def test_resume_after_sigint_mid_epoch_is_bitwise_exact(tmp_path, kind):
    ref = trainer(tmp_path / 'ref')
    ref.fit(*loaders(kind))

    before = signal.getsignal(signal.SIGINT)
    stopped = trainer(tmp_path / 'run', ToyTask(signal_at=STEPS + 2))
    with pytest.raises(SystemExit) as exc:
        stopped.fit(*loaders(kind))
    assert exc.value.code == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    state = load_checkpoint(tmp_path / 'run' / 'last.pt')
    # The step during which the signal arrived was completed, then saved.
    assert (state['epoch'], state['step_in_epoch']) == (1, 2)
    assert state['global_step'] == STEPS + 2
    assert len(read_log(tmp_path / 'run')) == 1

    resumed = trainer(tmp_path / 'run', resume=True)
    resumed.fit(*loaders(kind))
    assert_same_weights(resumed.model, ref.model)
    assert_same_training_curve(tmp_path / 'ref', tmp_path / 'run')


def test_resume_after_sigint_at_last_step_of_epoch(tmp_path):
    # The signal arrives during the epoch's last step: last.pt holds
    # step_in_epoch == STEPS, and the resumed epoch trains no further batch
    # but must still log the lr of its last step.
    ref = trainer(tmp_path / 'ref')
    ref.fit(*loaders())
    stopped = trainer(tmp_path / 'run', ToyTask(signal_at=STEPS))
    with pytest.raises(SystemExit):
        stopped.fit(*loaders())
    state = load_checkpoint(tmp_path / 'run' / 'last.pt')
    assert (state['epoch'], state['step_in_epoch']) == (0, STEPS)
    resumed = trainer(tmp_path / 'run', resume=True)
    resumed.fit(*loaders())
    assert_same_weights(resumed.model, ref.model)
    assert_same_training_curve(tmp_path / 'ref', tmp_path / 'run')


class ScriptedTask(ToyTask):
    r"""Validation 'score' follows a fixed script; snapshots the weights the
    score belongs to."""
    def __init__(self, scores, losses=None):
        super().__init__()
        self.scores = list(scores)
        self.losses = losses
        self.model = None
        self.weights = []

    def compute_metrics(self, outputs):
        state = self.model.state_dict()
        self.weights.append({k: v.clone() for k, v in state.items()})
        i = (len(self.weights) - 1) % len(self.scores)
        out = {'score': self.scores[i]}
        if self.losses is not None:
            out['loss'] = self.losses[i]
        return out


@pytest.mark.parametrize('mode,best_epoch', [('max', 2), ('min', 3)])
def test_best_checkpoint_tracks_monitored_metric(tmp_path, mode, best_epoch):
    scores = [0.5, 0.9, 0.3, 0.7]
    task = ScriptedTask(scores)
    tr = trainer(tmp_path, task, monitor='val_score', mode=mode, dropout=0.0)
    task.model = tr.model
    weights = task.weights
    train, val = loaders()
    result = tr.fit(train, val)
    assert result['best_epoch'] == best_epoch
    assert result['best_score'] == scores[best_epoch - 1]
    assert result['val_score'] == scores[best_epoch - 1]
    best = load_checkpoint(tmp_path / 'best.pt')
    assert best['epoch'] == best_epoch
    for key, value in weights[best_epoch - 1].items():
        assert torch.equal(best['model'][key], value)
    last = load_checkpoint(tmp_path / 'last.pt')
    for key, value in weights[-1].items():
        assert torch.equal(last['model'][key], value)
    summary = json.load(open(tmp_path / 'metrics.json'))
    assert summary['best_epoch'] == best_epoch and summary['mode'] == mode
    assert summary['val_score'] == scores[best_epoch - 1]
    assert 'best' not in summary  # each value in one place
    # evaluate(checkpoint='best') restores the best weights.
    tr.evaluate(val, split='test', checkpoint='best')
    for key, value in weights[best_epoch - 1].items():
        assert torch.equal(tr.model.state_dict()[key], value)


@pytest.mark.parametrize('tie_break,best_epoch', [(None, 2), ('val_loss', 4)])
def test_tie_break_decides_between_equal_scores(tmp_path, tie_break,
                                                best_epoch):
    # Epochs 2-4 tie on the score; the loss picks epoch 4 (0.2), not the
    # NaN of epoch 3, and survives a resume.
    scores, losses = [0.5, 0.9, 0.9, 0.9], [2.0, 0.9, float('nan'), 0.2]
    task = ScriptedTask(scores, losses)
    tr = trainer(tmp_path, task, epochs=3, monitor='val_score', mode='max',
                 tie_break=tie_break, dropout=0.0)
    task.model = tr.model
    train, val = loaders()
    tr.fit(train, val)
    del tr
    tr = trainer(tmp_path, task, epochs=4, monitor='val_score', mode='max',
                 tie_break=tie_break, dropout=0.0, resume=True)
    task.model = tr.model
    result = tr.fit(train, val)
    assert result['best_epoch'] == best_epoch
    assert result['val_loss'] == losses[best_epoch - 1]
    assert load_checkpoint(tmp_path / 'best.pt')['epoch'] == best_epoch


def test_run_folder_contents(tmp_path):
    tr = trainer(tmp_path, epochs=3, monitor='val_acc', mode='max')
    train, val = loaders()
    tr.fit(train, val)
    test = tr.evaluate(val, split='test')
    rows = read_log(tmp_path)
    assert [int(r['epoch']) for r in rows] == [1, 2, 3]
    assert list(rows[0]) == ['epoch', 'lr', 'train_loss', 'time', 'val_acc',
                             'val_count', 'val_loss', 'val_x_sum']
    assert all(float(r['val_count']) == 11 for r in rows)
    # lr of each epoch's last step, following warm-up + cosine to 0.
    for epoch, row in enumerate(rows, 1):
        assert float(row['lr']) == pytest.approx(
            tr.scheduler.lr_at(epoch * STEPS - 1, 1e-2), rel=1e-12)
    assert 0 < float(rows[-1]['lr']) < 1e-3
    summary = json.load(open(tmp_path / 'metrics.json'))
    assert set(test) == {'test_loss', 'test_acc', 'test_count', 'test_x_sum'}
    assert {key: summary[key] for key in test} == test
    assert 'test' not in summary  # each value in one place
    # float32 metrics as they print, without float64 noise.
    floats = [v for k, v in summary.items() if k.startswith(('val_', 'test_'))]
    singles = [v for v in floats if float(np.float32(v)) == v]
    assert singles  # the toy task's losses are float32 means
    assert all(repr(v) == str(np.float32(v)) for v in singles)
    assert summary['global_step'] == 3 * STEPS
    assert sorted(os.listdir(tmp_path)) == ['.lock', 'best.pt', 'last.pt',
                                            'log.csv', 'metrics.json']
    state = torch.load(tmp_path / 'last.pt', weights_only=True)
    assert {'model', 'optimizer', 'scheduler', 'scaler', 'ranks', 'epoch',
            'global_step', 'best_score'} <= set(state)
    assert set(state['ranks'][0]['rng']) == {'python', 'numpy', 'torch', 'cuda'}


def test_train_loss_is_mean_of_step_losses(tmp_path):
    losses = []

    class Recording(ToyTask):
        def training_step(self, model, batch):
            loss = super().training_step(model, batch)
            losses.append(loss.item())
            return loss

    tr = trainer(tmp_path, Recording(), epochs=2)
    tr.fit(*loaders())
    rows = read_log(tmp_path)
    for epoch, row in enumerate(rows):
        expected = sum(losses[epoch * STEPS:(epoch + 1) * STEPS]) / STEPS
        assert float(row['train_loss']) == pytest.approx(expected, rel=1e-12)


def test_amp_bf16_autocasts_on_cpu(tmp_path):
    seen = []

    class Checking(ToyTask):
        def training_step(self, model, batch):
            x, y = batch
            out = model(x)
            seen.append((torch.is_autocast_enabled('cpu'), out.dtype))
            return F.cross_entropy(out.float(), y)

    tr = trainer(tmp_path, Checking(), epochs=2, amp='bf16', deterministic=False)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.fit(*loaders())
    assert seen and all(s == (True, torch.bfloat16) for s in seen)
    assert not tr.scaler.is_enabled()
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())
    assert any(not torch.equal(before[k], v)
               for k, v in tr.model.state_dict().items())
    rows = read_log(tmp_path)
    assert all(torch.isfinite(torch.tensor(float(r['train_loss']))) for r in rows)


def _cpu_runs_fp16_autocast() -> bool:
    # Some CPU builds lack float16 kernels: a matmul and its backward
    # under fp16 autocast tell, without touching the random state.
    try:
        a = torch.ones(2, 4, requires_grad=True)
        with torch.autocast('cpu', dtype=torch.float16):
            out = a @ torch.ones(4, 3)
        out.float().sum().backward()
    except RuntimeError:
        return False
    return out.dtype == torch.float16


def test_amp_fp16_uses_grad_scaler(tmp_path):
    if not _cpu_runs_fp16_autocast():
        pytest.skip('fp16 autocast unsupported on this CPU build')
    seen, loss_grads, scaled_grads = [], [], {}

    class Checking(ToyTask):
        def training_step(self, model, batch):
            x, y = batch
            out = model(x)
            seen.append((torch.is_autocast_enabled('cpu'), out.dtype))
            loss = F.cross_entropy(out, y)
            loss.register_hook(lambda g: loss_grads.append(g.item()))
            return loss

    # clip_grad: unscale_() runs before clipping, which never binds here,
    # so the gradients the optimizer sees are exactly the unscaled ones.
    tr = trainer(tmp_path, Checking(), epochs=1, amp='fp16',
                 deterministic=False, clip_grad=1e6)
    assert tr.scaler.is_enabled()
    scale = tr.scaler.get_scale()
    for name, p in tr.model.named_parameters():
        p.register_hook(
            lambda g, name=name: scaled_grads.__setitem__(name, g.clone()))
    tr.fit(*loaders())
    assert seen and all(s == (True, torch.float16) for s in seen)
    # backward() ran on the loss times the scale, ...
    assert loss_grads == [scale] * STEPS
    # ... the optimizer stepped on gradients unscaled again (exactly: the
    # scale is a power of two), ...
    for name, p in tr.model.named_parameters():
        assert torch.equal(p.grad, scaled_grads[name] / scale), name
    # ... and update() ran after every step, none of which overflowed.
    state = load_checkpoint(tmp_path / 'last.pt')['scaler']
    assert state['_growth_tracker'] == STEPS
    assert state['scale'] == scale


def test_fit_without_validation(tmp_path):
    tr = trainer(tmp_path, epochs=2)
    result = tr.fit(loaders()[0])
    assert result['best_epoch'] == 2
    assert load_checkpoint(tmp_path / 'best.pt')['epoch'] == 2


def test_pyg_batches(tmp_path):
    from torch_geometric.data import Data
    from torch_geometric.loader import DataLoader as PyGDataLoader
    from torch_geometric.nn import global_mean_pool

    g = torch.Generator().manual_seed(0)
    graphs = []
    for i in range(10):
        n = 3 + i % 4
        x = torch.randn(n, 4, generator=g)
        graphs.append(Data(x=x, y=torch.tensor([int(x.sum() > 0)])))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, x, batch):
            return global_mean_pool(self.lin(x), batch)

    class GraphTask:
        def training_step(self, model, batch):
            return F.cross_entropy(model(batch.x, batch.batch), batch.y)

        def eval_step(self, model, batch):
            # Per-node outputs: variable length per graph.
            return {'node_out': model.lin(batch.x), 'y': batch.y}

        def compute_metrics(self, outputs):
            return {'nodes': float(outputs['node_out'].shape[0]),
                    'graphs': float(outputs['y'].numel())}

    loader = make_loader(graphs, 4, shuffle=True)
    assert isinstance(loader, PyGDataLoader)
    tr = Trainer(Net(), GraphTask(), out_dir=str(tmp_path), epochs=1,
                 monitor='val_graphs', mode='max', progress=False,
                 tensorboard=False)
    tr.fit(loader, make_loader(graphs, 3, shuffle=False))
    metrics = tr.evaluate(make_loader(graphs, 3, shuffle=False), 'test')
    assert metrics == {'test_nodes': sum(d.num_nodes for d in graphs),
                       'test_graphs': 10.0}


class Broken(ToyTask):
    def __init__(self, what):
        super().__init__()
        self.what = what

    def training_step(self, model, batch):
        loss = super().training_step(model, batch)
        if self.what == 'vector':
            return loss.expand(3)
        if self.what == 'nan':
            return loss * float('nan')
        return loss


def test_errors(tmp_path):
    train, val = loaders()
    with pytest.raises(ValueError, match="'training_step' to return a scalar"):
        trainer(tmp_path, Broken('vector')).fit(train)
    with pytest.raises(FloatingPointError, match='Non-finite training loss'):
        trainer(tmp_path, Broken('nan')).fit(train)
    with pytest.raises(KeyError, match="'val_nope'"):
        trainer(tmp_path, monitor='val_nope').fit(train, val)
    with pytest.raises(TypeError, match="'train_loader' to have a length"):
        trainer(tmp_path).fit(b for b in train)
    with pytest.raises(ValueError, match="'train_loader' to yield batches"):
        trainer(tmp_path).fit(iter(train))
    with pytest.raises(ValueError, match="'warmup_steps' <= total steps"):
        trainer(tmp_path, warmup_steps=10_000).fit(train)


@pytest.mark.parametrize('kwargs,match', [
    ({'epochs': 0}, "'epochs'"),
    ({'epochs': True}, r"'epochs' to be a positive int \(got True\)"),
    ({'lr': 0.0}, "'lr'"),
    ({'lr': float('inf')}, r"'lr' to be finite \(got inf\)"),
    ({'weight_decay': float('nan')}, r"'weight_decay' to be finite"),
    ({'weight_decay': -0.1}, r"'weight_decay' to be non-negative"),
    ({'min_lr': float('nan')}, r"'min_lr' to be finite"),
    ({'min_lr': 0.5}, r"'min_lr' to be in \[0, lr=0.01\] \(got 0.5\)"),
    ({'min_lr': -1e-3}, r"'min_lr' to be in \[0, lr=0.01\]"),
    ({'amp': 'fp8'}, "'amp'"),
    ({'mode': 'up'}, "'mode'"),
    ({'monitor': 'acc'}, "'monitor'"),
    ({'clip_grad': -1.0}, "'clip_grad'"),
    ({'clip_grad': float('inf')}, r"'clip_grad' to be finite"),
    ({'warmup_steps': -1}, "'warmup_steps'"),
    ({'warmup_steps': True}, r"'warmup_steps' to be a non-negative int"),
    ({'tie_break': 'loss'}, "'tie_break'"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        trainer(tmp_path, **kwargs)


@pytest.mark.parametrize('kwargs,match', [
    ({'lr': '1e-3'}, r"'lr' to be a float \(got str\)"),
    ({'weight_decay': None}, r"'weight_decay' to be a float \(got NoneType\)"),
    ({'min_lr': '0'}, r"'min_lr' to be a float \(got str\)"),
    ({'clip_grad': '2'}, r"'clip_grad' to be a float \(got str\)"),
    ({'out_dir': None}, r"'out_dir' to be a str or os.PathLike "
     r"\(got NoneType\)"),
    ({'config': ['lr', 1]}, r"'config' to be None, a dict or an "
     r"argparse.Namespace \(got list\)"),
])
def test_bad_argument_types(tmp_path, kwargs, match):
    kwargs = {'out_dir': str(tmp_path), **kwargs}
    with pytest.raises(TypeError, match=match):
        Trainer(make_model(), ToyTask(), epochs=1, progress=False,
                tensorboard=False, **kwargs)


def test_min_lr_may_equal_lr(tmp_path):
    tr = trainer(tmp_path, epochs=1, lr=1e-3, min_lr=1e-3, warmup_steps=0)
    tr.fit(loaders()[0])
    assert tr.scheduler.get_last_lr() == [1e-3, 1e-3]


def test_empty_validation_loader_is_refused_before_training(tmp_path):
    from torch.utils.data import TensorDataset
    empty = TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long))
    tr = trainer(tmp_path, epochs=2)
    with pytest.raises(ValueError, match="Expected 'val_loader' to yield at "
                       r"least one batch \(got an empty loader\)"):
        tr.fit(loaders()[0], make_loader(empty, 4, shuffle=False))
    assert tr.global_step == 0  # refused up front: nothing trained or written
    assert sorted(os.listdir(tmp_path)) == ['.lock']
    # A loader without a length that yields nothing: named by its split.
    with pytest.raises(ValueError, match="Expected the 'val' loader to yield "
                       r"at least one batch \(got none\)"):
        tr.fit(loaders()[0], iter([]))
    with pytest.raises(ValueError, match="Expected the 'test' loader"):
        tr.evaluate([], split='test')


def test_train_split_smaller_than_a_batch_is_named(tmp_path):
    from torch.utils.data import TensorDataset
    small = TensorDataset(torch.zeros(3, 8), torch.zeros(3, dtype=torch.long))
    tr = trainer(tmp_path, epochs=1, warmup_steps=0)
    with pytest.raises(ValueError, match=r"'train_loader' to yield at least "
                       r"one batch \(got an empty loader: 3 examples per "
                       r"epoch, fewer than its batch_size 4, and "
                       r"drop_last=True; lower the batch size\)"):
        tr.fit(make_loader(small, 4, shuffle=True, drop_last=True))
    assert tr.global_step == 0
    # Without drop_last the three examples make one batch.
    tr.fit(make_loader(small, 4, shuffle=True))
    assert tr.global_step == 1


def test_bad_task_and_model(tmp_path):
    with pytest.raises(TypeError, match="'task' to define a method 'training_step'"):
        Trainer(make_model(), object(), out_dir=str(tmp_path), epochs=1)
    with pytest.raises(TypeError, match="'model' to be a torch.nn.Module"):
        Trainer(lambda x: x, ToyTask(), out_dir=str(tmp_path), epochs=1)


def test_weight_decay_skips_biases(tmp_path):
    tr = trainer(tmp_path, weight_decay=0.1)
    decay, no_decay = tr.optimizer.param_groups
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    assert all(p.ndim == 2 for p in decay['params'])
    assert all(p.ndim == 1 for p in no_decay['params'])
    assert 'Trainer(' in repr(tr) and 'world_size=1' in repr(tr)


def test_tensorboard_flag(tmp_path):
    from samsa_geo.typing import WITH_TENSORBOARD
    tr = trainer(tmp_path, epochs=1, tensorboard=True)
    if WITH_TENSORBOARD:
        tr.fit(*loaders())
        assert (tmp_path / 'tensorboard').is_dir()
    else:
        with pytest.raises(ImportError, match="'tensorboard=True' requires"):
            tr.fit(*loaders())


@pytest.mark.slow
def test_compile_matches_eager(tmp_path):
    eager = trainer(tmp_path / 'eager', epochs=1, dropout=0.0)
    eager.fit(*loaders())
    compiled = trainer(tmp_path / 'compiled', epochs=1, dropout=0.0,
                       compile=True, deterministic=False)
    compiled.fit(*loaders())
    for key, value in eager.model.state_dict().items():
        torch.testing.assert_close(compiled.model.state_dict()[key], value,
                                   rtol=1e-4, atol=1e-5)
    # Checkpoints hold the plain model's keys (no '_orig_mod.' prefix).
    state = load_checkpoint(tmp_path / 'compiled' / 'last.pt')
    assert state['model'].keys() == eager.model.state_dict().keys()
