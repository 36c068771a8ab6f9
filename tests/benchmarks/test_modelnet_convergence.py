import math
import os.path as osp
import sys

import pytest
import torch

BENCHMARKS = osp.join(osp.dirname(__file__), '..', '..', 'benchmarks')
sys.path.insert(0, BENCHMARKS)
import modelnet_convergence as bench  # noqa: E402


def test_ema_values():
    assert bench.ema([], 0.9) == []
    out = bench.ema([1.0, 0.0, 0.0], 0.5)
    assert out == [1.0, 0.5, 0.25]
    # A constant sequence is its own average.
    assert bench.ema([2.0] * 5, 0.9) == pytest.approx([2.0] * 5)


def test_steps_to_target_uses_the_smoothed_loss():
    # One spike below the target does not count: its average stays above.
    losses = [2.0, 0.1, 2.0, 2.0] + [0.5] * 30
    assert bench.steps_to_target(losses, 1.0, 0.0) == 2  # unsmoothed
    smoothed = bench.ema(losses, 0.9)
    step = bench.steps_to_target(losses, 1.0, 0.9)
    assert step > 4 and smoothed[step - 1] < 1.0 <= smoothed[step - 2]
    # 1-based: a first loss below the target is step 1.
    assert bench.steps_to_target([0.5, 3.0], 1.0, 0.9) == 1
    assert bench.steps_to_target([2.0] * 10, 1.0, 0.9) is None


def test_half_training_target():
    # Smoothing 0: the loss of step n // 2 of each run, then their mean.
    runs = [{'train_loss': [4.0, 3.0, 2.0, 1.0]},
            {'train_loss': [4.0, 2.0, 1.0, 0.0]}]
    assert bench.half_training_target(runs, 0.0) == 2.5
    loss = [3.0, 2.0, 1.0, 0.5, 0.25, 0.125]
    expected = round(bench.ema(loss, 0.9)[2], 2)
    assert bench.half_training_target([{'train_loss': loss}], 0.9) == expected


def test_step_losses_records_and_passes_through():
    class Task:
        def training_step(self, model, data):
            return model(data).mean()

        def eval_step(self, model, data):
            return {'x': model(data)}

        def compute_metrics(self, out):
            return {'oa': out['x'].mean().item()}

    model = torch.nn.Linear(2, 1)
    task = bench.StepLosses(Task())
    data = torch.randn(4, 2)
    loss = task.training_step(model, data)
    loss.backward()  # the wrapped loss keeps its graph
    assert model.weight.grad is not None
    assert task.losses == [pytest.approx(loss.item())]
    metrics = task.compute_metrics(task.eval_step(model, data))
    assert task.evaluations == [metrics]
    assert metrics['oa'] == pytest.approx(model(data).mean().item())


def test_attention_variants_build():
    from samsa_geo.nn.models import SamsaPointClassifier
    variants = bench.attention_variants()
    assert set(variants) == {'SAMSA softmax', 'SFT leaky', 'full attention',
                             'SAMSA summary', 'SAMSA summary norm'}
    assert set(bench.DEFAULT_VARIANTS) < set(variants)
    for kwargs in variants.values():
        model = SamsaPointClassifier.small(10, attn_kwargs=kwargs)
        attn = model.backbone.convs[0].attn
        for key, value in kwargs.items():
            assert getattr(attn, key) == value


def test_train_run_records_every_step_and_epoch():
    """A reduced run (2 epochs, 16 points) records a loss per step and a
    validation accuracy per epoch, and repeats exactly with its seed."""
    kwargs = dict(epochs=2, num_points=16)
    run = bench.train_run(dict(sampling='full'), 0, **kwargs)
    assert run['epochs'] == 2 and run['num_points'] == 16
    assert run['steps_per_epoch'] == 100 // 16  # 100 training clouds
    assert len(run['train_loss']) == 2 * run['steps_per_epoch']
    assert all(math.isfinite(v) for v in run['train_loss'])
    assert len(run['val_oa']) == 2
    assert run['final_val_oa'] == run['val_oa'][-1]
    assert run['best_val_oa'] == max(run['val_oa'])
    assert 0.0 <= run['test_oa'] <= 1.0
    again = bench.train_run(dict(sampling='full'), 0, **kwargs)
    assert again['train_loss'] == run['train_loss']
