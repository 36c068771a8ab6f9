"""Convergence on the needle task (samsa_geo.testing.needle_task): steps until
the training loss (exponential moving average, factor 0.95) falls below a
target, and the final evaluation accuracy, for SAMSA with softmax
attention (without and with the score-pooled summary key,
``summary=True``), SAMSA with SFT's leaky normalisation, the SFT layer
(``sampling='sft'``, leaky normalisation) and full attention, over several
seeds, on the CPU with one thread. Writes a JSON record (with its
provenance: device, torch, commit, date, flags) and a plot of the loss
curves.

    python benchmarks/needle_convergence.py --seeds 3 --batch-size 64 \
        --out benchmarks/results/needle_convergence.json \
        --plot docs/images/needle_convergence.png
"""
import argparse
import json
import os
import os.path as osp
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import add_commit_argument, device_name  # noqa: E402
from _common import run_provenance  # noqa: E402
from samsa_geo.testing.needle_task import train_needle  # noqa: E402

VARIANTS = {
    'SAMSA softmax (hard)': dict(sampling='hard'),
    'SAMSA summary (hard)': dict(sampling='hard',
                                 attn_kwargs=dict(summary=True)),
    'SAMSA leaky (hard)': dict(sampling='hard',
                               attn_kwargs=dict(normalization='leaky')),
    'SFT leaky': dict(sampling='sft',
                      attn_kwargs=dict(normalization='leaky')),
    'full attention': dict(sampling='full'),
}
COLORS = dict(zip(VARIANTS, ['C0', 'C4', 'C1', 'C3', 'C2']))


def ema(values, factor=0.95):
    out, avg = [], None
    for v in values:
        avg = v if avg is None else factor * avg + (1 - factor) * v
        out.append(avg)
    return out


def first_below(values, target):
    return next((i + 1 for i, v in enumerate(values) if v < target), None)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--steps', type=int, default=1000)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--target-loss', type=float, default=0.3)
    p.add_argument('--out', default='benchmarks/results/needle_convergence.json')
    p.add_argument('--plot', default=None)
    p.add_argument('--variants', default=','.join(VARIANTS),
                   help='comma list of the variants to train')
    p.add_argument('--update', action='store_true',
                   help="keep the other variants' runs already in --out")
    add_commit_argument(p)
    args = p.parse_args()
    torch.set_num_threads(1)
    record = {'args': vars(args),
              'device': device_name(torch.device('cpu')),
              **run_provenance(args.commit), 'runs': {}}
    if args.update and osp.isfile(args.out):
        with open(args.out) as f:
            record['runs'] = json.load(f)['runs']
        record['note'] = ("runs measured at different commits: see each "
                          "run's commit")
    for name in args.variants.split(','):
        kw = VARIANTS[name]
        runs = []
        for seed in range(args.seeds):
            t = time.time()
            # Train the whole budget (target=2: never stops early) so every
            # curve covers the same steps.
            res = train_needle(seed, steps=args.steps, target=2.0,
                               batch_size=args.batch_size, eval_every=50,
                               **kw)
            smooth = ema(res.losses)
            runs.append({'seed': seed, 'final_accuracy': res.accuracy,
                         'steps_to_target_loss': first_below(
                             smooth, args.target_loss),
                         'loss_ema': [round(v, 4) for v in smooth],
                         'seconds': time.time() - t,
                         'commit': record['commit']})
            print(f"{name} seed {seed}: steps to loss < {args.target_loss} "
                  f"{runs[-1]['steps_to_target_loss']}, final accuracy "
                  f"{res.accuracy:.3f}", flush=True)
        record['runs'][name] = runs
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(record, f)
    if args.plot:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, runs in record['runs'].items():
            for i, run in enumerate(runs):
                ax.plot(run['loss_ema'], color=COLORS[name], alpha=0.8, lw=1,
                        label=name if i == 0 else None)
        ax.axhline(args.target_loss, color='gray', ls='--', lw=0.8)
        ax.set_xlabel('step')
        ax.set_ylabel('training loss (EMA 0.95)')
        ax.set_title(f'needle task, k = 4 of 128, {args.batch_size} sets '
                     f'per step, {args.seeds} seeds')
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        plt.close(fig)


if __name__ == '__main__':
    main()
