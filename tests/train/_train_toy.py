"""A tiny MLP task on synthetic tensors shared by the trainer tests.

Also a command-line entry point for the subprocess tests (torchrun DDP and
SIGTERM): ``python _train_toy.py OUT_DIR [options]``.
"""
import argparse
import json
import os
import signal
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

#: This script (run as a subprocess by the tests) and the repository root.
TOY = os.path.abspath(__file__)
ROOT = os.path.abspath(os.path.join(os.path.dirname(TOY), '..', '..'))
sys.path.insert(0, ROOT)
from samsa_geo.train import Trainer, make_loader, seed_everything  # noqa: E402

IN_CHANNELS, NUM_CLASSES = 8, 3


def make_dataset(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_CHANNELS, generator=g)
    w = torch.randn(IN_CHANNELS, NUM_CLASSES, generator=g)
    y = (x @ w).argmax(-1)
    return TensorDataset(x, y)


def make_model(dropout: float = 0.0, seed: int = 0) -> torch.nn.Module:
    seed_everything(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(IN_CHANNELS, 16), torch.nn.ReLU(),
        torch.nn.Dropout(dropout), torch.nn.Linear(16, NUM_CLASSES))


class ToyTask:
    r"""Classification; optional hooks fire at a given training step
    (1-based count of :meth:`training_step` calls in this process)."""
    def __init__(self, fail_at=None, signal_at=None, sleep=0.0):
        self.calls = 0
        self.fail_at = fail_at
        self.signal_at = signal_at
        self.sleep = sleep

    def training_step(self, model, batch):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError('simulated crash')
        if self.signal_at is not None and self.calls == self.signal_at:
            os.kill(os.getpid(), signal.SIGINT)
        if self.sleep:
            time.sleep(self.sleep)
        x, y = batch
        return F.cross_entropy(model(x), y)

    def eval_step(self, model, batch):
        x, y = batch
        logits = model(x)
        return {'loss': F.cross_entropy(logits, y, reduction='none'),
                'pred': logits.argmax(-1), 'target': y,
                'x_sum': x.sum(-1).double()}

    def compute_metrics(self, outputs):
        return {'loss': outputs['loss'].mean().item(),
                'acc': (outputs['pred'] == outputs['target']).double().mean().item(),
                'count': float(outputs['target'].numel()),
                'x_sum': outputs['x_sum'].sum().item()}


def fit_toy(out_dir, *, epochs=3, batch_size=8, n_train=64, n_val=13,
            sleep=0.0, resume=False, ready=False):
    r"""Deterministic shuffled run used by the subprocess tests and their
    in-process references; returns the trainer after a final test pass."""
    model = make_model(dropout=0.0)
    trainer = Trainer(model, ToyTask(sleep=sleep), out_dir=out_dir,
                      epochs=epochs, lr=1e-2, warmup_steps=2,
                      deterministic=True, monitor='val_acc', mode='max',
                      resume=resume, progress=False, tensorboard=False)
    train = make_loader(make_dataset(n_train), batch_size, shuffle=True,
                        seed=1)
    val = make_loader(make_dataset(n_val, seed=7), 4, shuffle=False)
    if ready:
        print('READY', flush=True)
    trainer.fit(train, val)
    metrics = trainer.evaluate(val, split='test', checkpoint='last')
    if trainer.is_main:
        torch.save(trainer.model.state_dict(),
                   os.path.join(out_dir, 'final_weights.pt'))
        with open(os.path.join(out_dir, 'final_metrics.json'), 'w') as f:
            json.dump(metrics, f)
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('out_dir')
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--batch_size', type=int, default=8)
    parser.add_argument('--n_train', type=int, default=64)
    parser.add_argument('--n_val', type=int, default=13)
    parser.add_argument('--sleep', type=float, default=0.0)
    parser.add_argument('--resume', action='store_true')
    args = parser.parse_args()
    fit_toy(args.out_dir, epochs=args.epochs, batch_size=args.batch_size,
            n_train=args.n_train, n_val=args.n_val, sleep=args.sleep,
            resume=args.resume, ready=True)
    if torch.distributed.is_initialized():
        # Leave together: a rank that tears down the group while the other
        # still talks to it can abort the other ("terminate called ...").
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main()
