"""Convergence on the bundled ModelNet sample: the small point classifier of
examples/modelnet40.py (its pipeline, preset and training defaults) trained
with several attentions, over several seeds, on the CPU. Records per run the
training loss of every step, the validation overall accuracy of every
epoch, the steps until the smoothed training loss (exponential moving
average) falls below a target, the final and best validation accuracy and
the test accuracy of the selected epoch; optionally plots the loss curves.
The target defaults to the loss the first variant's runs (SAMSA) reach at
half of the training: their mean smoothed loss at that step.

Attentions (``attn_kwargs`` of the classifier; the relative bias of the
point models stays on in all three):

* ``SAMSA softmax``: ``sampling='hard'``, dot-product scores, softmax;
* ``SFT leaky``: the SFT layer, ``sampling='sft'`` (one shared score, pair
  mixing of raw tokens), ``score='maxout'``, ``normalization='leaky'``;
* ``full attention``: ``sampling='full'``;
* ``SAMSA summary`` (only when named in ``--variants``): SAMSA softmax
  with the score-pooled summary key, ``summary=True``;
* ``SAMSA summary norm`` (only when named in ``--variants``): SAMSA
  summary with the scorer's input LayerNorm, ``scorer_norm=True``.

    python benchmarks/modelnet_convergence.py --seeds 0,1,2 --num-points 256 \\
        --out benchmarks/results/modelnet_convergence.json \\
        --plot docs/images/modelnet_convergence.png
"""
import argparse
import os.path as osp
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.join(ROOT, 'examples'))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import _modelnet40_pipeline as pipeline  # noqa: E402
from _common import add_commit_argument, device_name  # noqa: E402
from _common import write_records  # noqa: E402
from _point_pipeline import point_trainer  # noqa: E402

from samsa_geo.train import make_loader, seed_everything  # noqa: E402


def attention_variants() -> Dict[str, dict]:
    """The compared attentions: name -> ``attn_kwargs`` of the
    classifier."""
    return {
        'SAMSA softmax': dict(sampling='hard'),
        'SFT leaky': dict(sampling='sft', score='maxout',
                          normalization='leaky'),
        'full attention': dict(sampling='full'),
        'SAMSA summary': dict(sampling='hard', summary=True),
        'SAMSA summary norm': dict(sampling='hard', summary=True,
                                   scorer_norm=True),
    }


#: The attentions trained unless ``--variants`` names others.
DEFAULT_VARIANTS = ('SAMSA softmax', 'SFT leaky', 'full attention')


def ema(values: Sequence[float], factor: float) -> List[float]:
    """Exponential moving average ``a_t = factor a_{t-1} + (1 - factor)
    v_t``, starting at ``a_1 = v_1``."""
    out: List[float] = []
    for v in values:
        out.append(v if not out else factor * out[-1] + (1 - factor) * v)
    return out


def steps_to_target(losses: Sequence[float], target: float,
                    factor: float) -> Optional[int]:
    """The first step (1-based) whose smoothed loss (:func:`ema`) is below
    ``target``, or :obj:`None` if none is."""
    return next((i + 1 for i, v in enumerate(ema(losses, factor))
                 if v < target), None)


def half_training_target(records: List[dict], factor: float) -> float:
    """The mean over ``records`` of the smoothed training loss (:func:`ema`)
    at half of each run's steps, rounded to two decimals."""
    halves = [ema(r['train_loss'], factor)[len(r['train_loss']) // 2 - 1]
              for r in records]
    return round(sum(halves) / len(halves), 2)


class StepLosses:
    """A :class:`~samsa_geo.train.Task` that runs ``task`` and keeps the
    loss of every training step and the metrics of every evaluation."""
    def __init__(self, task):
        self.task = task
        self.losses: List[float] = []
        self.evaluations: List[Dict[str, float]] = []

    def training_step(self, model, data):
        loss = self.task.training_step(model, data)
        self.losses.append(loss.detach().item())
        return loss

    def eval_step(self, model, data):
        return self.task.eval_step(model, data)

    def compute_metrics(self, out):
        metrics = self.task.compute_metrics(out)
        self.evaluations.append(metrics)
        return metrics


def train_run(attn_kwargs: dict, seed: int, epochs: Optional[int] = None,
              num_points: Optional[int] = None,
              out_dir: Optional[str] = None) -> dict:
    """Trains the classifier of ``examples/modelnet40.py`` (its defaults,
    ``epochs`` and ``num_points`` where given) on the bundled sample with
    ``attn_kwargs`` on the CPU; returns the step losses, the validation
    accuracy per epoch and the test accuracy of the selected epoch."""
    argv = ['--seed', str(seed), '--device', 'cpu', '--no-progress',
            '--overwrite']
    if epochs is not None:
        argv += ['--epochs', str(epochs)]
    if num_points is not None:
        argv += ['--num-points', str(num_points)]
    with tempfile.TemporaryDirectory() as tmp:
        args = pipeline.parse_args(argv + ['--out', out_dir or tmp])
        seed_everything(args.seed)  # model initialisation too
        train_ds, val_ds, test_ds = pipeline.datasets(args)
        num_classes = len(train_ds.classes)
        model = pipeline.build_model(num_classes, args,
                                     attn_kwargs=attn_kwargs)
        task = StepLosses(pipeline.Classification(num_classes, args.normals))
        trainer = point_trainer(model, task, args, len(train_ds), 'val_oa')
        train_loader = make_loader(train_ds, args.batch_size, shuffle=True,
                                   seed=args.seed, drop_last=True)
        t = time.time()
        best = trainer.fit(train_loader,
                           make_loader(val_ds, args.batch_size, shuffle=False))
        seconds = time.time() - t
        val_oa = [round(m['oa'], 4) for m in task.evaluations]
        test = trainer.evaluate(make_loader(test_ds, args.batch_size,
                                            shuffle=False), 'test',
                                checkpoint='best')
        trainer.close()
    return {'epochs': args.epochs, 'num_points': args.num_points,
            'batch_size': args.batch_size, 'lr': args.lr,
            'steps_per_epoch': len(train_loader),
            'train_loss': [round(v, 4) for v in task.losses],
            'val_oa': val_oa, 'final_val_oa': val_oa[-1],
            'best_val_oa': max(val_oa), 'best_epoch': best['best_epoch'],
            'test_oa': round(test['test_oa'], 4), 'train_seconds': seconds}


def summarize(records: List[dict], target: float, factor: float) -> None:
    """Adds ``steps_to_target`` to every record (in place) and prints the
    table of variants and seeds with the mean of each variant."""
    print(f'{"variant":<16} seed  steps to loss < {target}  final val OA  '
          f'best val OA  test OA')
    for variant in dict.fromkeys(r['variant'] for r in records):
        runs = [r for r in records if r['variant'] == variant]
        for r in runs:
            r['target_loss'], r['ema_factor'] = target, factor
            r['steps_to_target'] = steps_to_target(r['train_loss'], target,
                                                   factor)
            print(f"{variant:<16} {r['seed']:>4}  "
                  f"{str(r['steps_to_target'] or '-'):>22}  "
                  f"{r['final_val_oa']:>12.3f}  {r['best_val_oa']:>11.3f}  "
                  f"{r['test_oa']:>7.3f}")
        reached = [r['steps_to_target'] for r in runs
                   if r['steps_to_target'] is not None]
        mean = lambda key: sum(r[key] for r in runs) / len(runs)  # noqa: E731
        steps = (f'{sum(reached) / len(reached):.0f} ({len(reached)}/'
                 f'{len(runs)})' if reached else f'- (0/{len(runs)})')
        print(f"{variant:<16} mean  {steps:>22}  {mean('final_val_oa'):>12.3f}"
              f"  {mean('best_val_oa'):>11.3f}  {mean('test_oa'):>7.3f}")


def plot_curves(records: List[dict], path: str, target: float,
                factor: float) -> None:
    """Smoothed training loss against the step, one line per run, one
    colour per variant, with the target as a dashed line."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    colors = dict(zip(dict.fromkeys(r['variant'] for r in records),
                      ['C0', 'C3', 'C2', 'C1', 'C4']))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labelled = set()
    for r in records:
        ax.plot(range(1, len(r['train_loss']) + 1),
                ema(r['train_loss'], factor), color=colors[r['variant']],
                alpha=0.8, lw=1, label=None if r['variant'] in labelled
                else r['variant'])
        labelled.add(r['variant'])
    ax.axhline(target, color='gray', ls='--', lw=0.8)
    r = records[0]
    ax.set_xlabel(f"step ({r['steps_per_epoch']} per epoch)")
    ax.set_ylabel(f'training loss (EMA {factor})')
    ax.set_title(f"ModelNet sample, small preset, {r['num_points']} points, "
                 f"seeds {', '.join(sorted({str(r['seed']) for r in records}))}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seeds', default='0,1,2', help='comma list of seeds')
    p.add_argument('--variants', default=','.join(DEFAULT_VARIANTS),
                   help='comma list of the attentions to train')
    p.add_argument('--epochs', type=int, default=None,
                   help="training epochs; unset: the example's default")
    p.add_argument('--num-points', type=int, default=None,
                   help="points per shape; unset: the example's default")
    p.add_argument('--target-loss', type=float, default=None,
                   help='target of the smoothed training loss; unset: the '
                   "first variant's mean smoothed loss at half the steps")
    p.add_argument('--ema', type=float, default=0.9,
                   help='smoothing factor of the training loss')
    p.add_argument('--threads', type=int, default=1,
                   help='CPU threads of torch')
    p.add_argument('--out',
                   default='benchmarks/results/modelnet_convergence.json')
    p.add_argument('--plot', default=None, help='PNG of the loss curves')
    add_commit_argument(p)
    return p.parse_args(argv)


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = attention_variants()
    records = []
    for name in args.variants.split(','):
        for seed in map(int, args.seeds.split(',')):
            run = train_run(variants[name], seed, args.epochs,
                            args.num_points)
            records.append({'device': device_name(torch.device('cpu')),
                            'variant': name, 'attn_kwargs': variants[name],
                            'seed': seed, **run})
            print(f"{name} seed {seed}: {run['train_seconds']:.0f} s, "
                  f"final val OA {run['final_val_oa']:.3f}", flush=True)
    target = args.target_loss
    if target is None:
        target = half_training_target(
            [r for r in records if r['variant'] == records[0]['variant']],
            args.ema)
    summarize(records, target, args.ema)
    write_records(records, args.out, commit=args.commit)
    if args.plot:
        plot_curves(records, args.plot, target, args.ema)
    return records


if __name__ == '__main__':
    main()
