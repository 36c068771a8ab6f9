"""Long Range Graph Benchmark (https://arxiv.org/abs/2206.08164) with the
SAMSA graph model (LRGB presets, < 500k parameters) on all five datasets:
Peptides-func (AP), Peptides-struct (MAE), PascalVOC-SP / COCO-SP (macro F1,
channel-wise normalised features) and PCQM-Contact (filtered MRR).

Without --root it trains on the bundled *synthetic* sample of --dataset
(datasets/lrgb_sample: peptide-like chains and superpixel grids with labels
that follow from the structure, in the raw format of each archive), about a
minute per seed on one CPU thread. Point --root at a folder of the real
archives (or an empty one: the datasets are downloaded) to train on LRGB.

Standard protocol: official splits, model selection on validation, test
metric at the selected epoch, mean +- std over seeds. Every seed gets a run
folder ``<out>/<dataset>/seed<k>/`` holding the trainer's checkpoints and log,
``metrics.json`` (``val_<metric>``, ``test_<metric>``, ``best_epoch``,
``num_params``), ``test_predictions.pt`` (``{'pred', 'target'}``) and
``config.yaml`` (the options of that seed's run, which --resume must
repeat but for --epochs and the like); once every seed has finished,
``<out>/<dataset>/metrics.json`` holds the mean and std over seeds and
``<out>/<dataset>/config.yaml`` the options. A new run moves an old one in
``<out>/<dataset>/`` aside whole, seed folders and summary, to
``<out>/<dataset>.old-<time>/`` before its first seed (``--overwrite``
deletes it; ``--resume`` continues every seed in its folder).

    python examples/lrgb.py
    python examples/lrgb.py --dataset pascalvoc-sp --seeds 3
    python examples/lrgb.py --dataset peptides-func --root data/LRGB --epochs 200 --seeds 4
    python examples/lrgb.py --config examples/configs/lrgb_peptides-func.yaml
"""
import json
import os.path as osp
import re
import sys

import torch
import torch.nn.functional as F
from torch_geometric.transforms import Compose

from samsa_geo.datasets import (LRGB_TASKS, LRGBDataset,
                                lrgb_feature_normalization, lrgb_task,
                                sample_root)
from samsa_geo.metrics import (average_precision_multitask, macro_f1,
                               mean_absolute_error, mrr)
from samsa_geo.nn import batch_hints
from samsa_geo.nn.models import PRESETS, SamsaGraphModel
from samsa_geo.train import (Trainer, add_run_args, atomic_write,
                             check_resume_config, claim_run_folder,
                             continues_run, init_distributed, make_loader,
                             make_parser, parse_args_with_config, save_config,
                             seed_everything, steps_per_epoch)
from samsa_geo.transforms import AddLaplacianPE, AddRandomWalkPE, RandomSignFlip


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument('--dataset', default='peptides-func',
                   choices=list(LRGB_TASKS),
                   help='LRGB dataset (model preset, metric and task follow '
                   'from it)')
    p.add_argument('--root', default=None,
                   help="folder of PyG's LRGBDataset (raw archives under "
                   "<root>/<dataset>/raw, downloaded when missing); unset: "
                   "the bundled synthetic sample of the dataset")
    p.add_argument('--out', default='runs/lrgb',
                   help='run folders: <out>/<dataset>/seed<k>/')
    p.add_argument('--epochs', type=int, default=200, help='training epochs')
    add_run_args(p, seeds=4)
    p.add_argument('--batch-size', type=int, default=32,
                   help='graphs per batch')
    p.add_argument('--lr', type=float, default=None,
                   help='peak learning rate of AdamW; unset: 3e-4 for '
                   'pcqm-contact, 1e-3 for the others')
    p.add_argument('--weight-decay', type=float, default=0.0,
                   help='AdamW weight decay')
    p.add_argument('--tokens', default=None, choices=['node', 'node_edge'],
                   help="tokens of the graph model; unset: the dataset's "
                   "preset")
    p.add_argument('--device', default=None,
                   help="'cpu', 'cuda', ...; unset: CUDA when available")
    p.add_argument('--num-workers', type=int, default=0,
                   help='data-loader worker processes')
    args = parse_args_with_config(p, argv)
    if args.lr is None:  # at 1e-3 PCQM-Contact's sample overfits (docs)
        args.lr = 3e-4 if args.dataset == 'pcqm-contact' else 1e-3
    return args


#: What a seed's run writes into its folder besides the trainer's files, and
#: the run into <out>/<dataset> besides its metrics.json and config.yaml: the
#: seeds' folders. Each moves aside, or is deleted, with its run.
SEED_OUTPUTS = ('test_predictions.pt',)
OUTPUTS = (re.compile(r'seed\d+'),)

#: PCQM-Contact's ranking metrics (as the LRGB paper): raw and filtered MRR,
#: and Hits@1, @3, @10 of the filtered ranks, each a mean over graphs.
HITS = (1, 3, 10)
RANK_METRICS = ('mrr', 'mrr_filtered',
                *(f'hits@{k}_filtered' for k in HITS))


class LRGBTask:
    """Loss and standard metric of one LRGB dataset; keeps the outputs of
    the last evaluated split (saved as test predictions)."""
    def __init__(self, info, model_pe_attr):
        self.info, self.pe_attr = info, model_pe_attr
        self.last_outputs = None

    def predict(self, model, batch):
        return model(batch.x, batch.edge_index, batch.edge_attr, batch.batch,
                     pe=batch[self.pe_attr],
                     edge_label_index=getattr(batch, 'edge_label_index', None),
                     **batch_hints(batch))

    def training_step(self, model, batch):
        info = self.info
        out = self.predict(model, batch)
        if info.task_type == 'multilabel':
            valid = ~torch.isnan(batch.y)  # unlabelled entries do not count
            return F.binary_cross_entropy_with_logits(out[valid],
                                                      batch.y[valid])
        if info.task_type == 'regression':
            return F.l1_loss(out, batch.y)
        if info.task_type == 'multiclass':
            return F.cross_entropy(out, batch.y)
        return F.binary_cross_entropy_with_logits(out, batch.edge_label.float())

    def eval_step(self, model, batch):
        info = self.info
        out = self.predict(model, batch)
        if info.task_type == 'multiclass':  # labels: logits of COCO are huge
            return {'pred': out.argmax(-1), 'target': batch.y}
        if info.task_type != 'link_prediction':
            return {'pred': out, 'target': batch.y}
        # Filtered MRR and Hits@k are means over graphs: return one value
        # per graph.
        z = model.embed(batch.x, batch.edge_index, batch.edge_attr,
                        batch.batch, pe=batch[self.pe_attr])
        per_graph = {key: [] for key in RANK_METRICS}
        pair_graph = batch.batch[batch.edge_label_index[0]]
        for g in range(batch.num_graphs):
            lo, hi = int(batch.ptr[g]), int(batch.ptr[g + 1])
            mask = pair_graph == g
            ranks = mrr(z[lo:hi], batch.edge_label_index[:, mask] - lo,
                        batch.edge_label[mask], hits=HITS)
            for key in per_graph:
                per_graph[key].append(ranks[key])
        return {'pred': out, 'target': batch.edge_label,
                **{f'{k}_per_graph': torch.tensor(v, dtype=torch.float64)
                   for k, v in per_graph.items()}}

    def compute_metrics(self, outputs):
        info = self.info
        self.last_outputs = outputs
        pred, target = outputs['pred'], outputs['target']
        if info.task_type == 'multilabel':
            return {info.metric: average_precision_multitask(pred, target)}
        if info.task_type == 'regression':
            return {info.metric: mean_absolute_error(pred, target)}
        if info.task_type == 'multiclass':
            return {info.metric: macro_f1(pred, target, info.out_channels)}
        return {key: outputs[f'{key}_per_graph'].mean().item()
                for key in RANK_METRICS}


def data_root(args):
    """``--root``, else the bundled synthetic sample of every dataset."""
    if args.root is not None:
        return args.root
    print(f'{args.dataset}: the bundled SYNTHETIC sample (pass --root for '
          f'the real dataset)', file=sys.stderr)
    return sample_root('lrgb')


def load_splits(args, preset):
    pe_transform = (AddLaplacianPE(preset['pe_channels'])
                    if preset['pe'] == 'lap' else
                    AddRandomWalkPE(preset['pe_channels']))
    root = data_root(args)
    splits = {split: LRGBDataset(root, args.dataset, split=split,
                                 pre_transform=pe_transform)
              for split in ('train', 'val', 'test')}
    norm = lrgb_feature_normalization(args.dataset, splits['train'])
    flip = RandomSignFlip() if preset['pe'] == 'lap' else None
    for split, dataset in splits.items():
        parts = [t for t in (norm, flip if split == 'train' else None) if t]
        dataset.transform = Compose(parts) if parts else None
    return splits


def seed_dir(args, seed):
    """The run folder of one seed."""
    return osp.join(args.out, args.dataset, f'seed{seed}')


def seed_config(args, seed):
    """The options of one seed's run, as its config.yaml records them."""
    return {**vars(args), 'seed': seed, 'seeds': 1}


def run_seed(args, info, seed, splits):
    run_dir = seed_dir(args, seed)
    seed_everything(seed)
    model = SamsaGraphModel.from_preset(
        args.dataset, **({'tokens': args.tokens} if args.tokens else {}))
    num_params = model.num_parameters()
    init_distributed()  # under torchrun the ranks share every epoch
    steps = max(1, steps_per_epoch(len(splits['train']), args.batch_size,
                                   drop_last=True))
    # Batch-norm running statistics average over about two epochs (at most
    # ten steps): at PyTorch's momentum of 0.1 they lag ten steps, ten
    # epochs of weight updates on a training set of one batch (docs).
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.momentum = max(0.1, 1 / (2 * steps))
    task = LRGBTask(info, model.pe_attr)
    trainer = Trainer(model, task, out_dir=run_dir, epochs=args.epochs,
                      lr=args.lr, weight_decay=args.weight_decay,
                      warmup_steps=min(5, args.epochs // 10) * steps,
                      amp=args.amp, compile=args.compile,
                      deterministic=args.deterministic,
                      device=args.device, seed=seed,
                      monitor=f'val_{info.metric}',
                      mode='max' if info.higher_is_better else 'min',
                      resume=args.resume, overwrite=args.overwrite,
                      run_files=SEED_OUTPUTS,
                      progress=not args.no_progress,
                      # written by fit() once an old run is moved aside;
                      # a resume first compares it with the recorded one
                      config=seed_config(args, seed))
    loaders = {split: make_loader(dataset, args.batch_size,
                                  shuffle=split == 'train', seed=seed,
                                  num_workers=args.num_workers,
                                  # no 1-graph last batch (batch norm)
                                  drop_last=(split == 'train' and len(dataset)
                                             > args.batch_size))
               for split, dataset in splits.items()}
    best = trainer.fit(loaders['train'], loaders['val'])
    test = trainer.evaluate(loaders['test'], split='test', checkpoint='best')
    with atomic_write(osp.join(run_dir, 'test_predictions.pt'), 'wb') as f:
        torch.save(task.last_outputs, f)
    result = {f'val_{info.metric}': best[f'val_{info.metric}'],
              f'test_{info.metric}': test[f'test_{info.metric}'],
              'best_epoch': best['best_epoch'], 'num_params': num_params}
    # PCQM-Contact: Hits@k next to the filtered MRR (as the LRGB paper).
    result.update({k: v for k, v in test.items()
                   if k.startswith('test_hits@')})
    trainer.update_summary(**result)
    print(f'[seed {seed}] ' + ' | '.join(f'{k} {v:.4f}' if isinstance(v, float)
                                         else f'{k} {v}'
                                         for k, v in result.items()),
          flush=True)
    return result


def summarize(args, info, seeds, results):
    """The runs' results with the mean and std over seeds of each metric."""
    summary = {'dataset': args.dataset, 'metric': info.metric,
               'seeds': seeds, 'num_params': results[0]['num_params'],
               'best_epoch': [r['best_epoch'] for r in results],
               'runs': results}
    keys = [f'val_{info.metric}', f'test_{info.metric}',
            *(k for k in results[0] if k.startswith('test_hits@'))]
    for key in keys:
        values = torch.tensor([r[key] for r in results], dtype=torch.float64)
        summary[key] = float(values.mean())
        summary[f'{key}_std'] = float(values.std()) if len(values) > 1 else 0.0
    return summary


def main(argv=None):
    args = parse_args(argv)
    info = lrgb_task(args.dataset)
    seeds = range(args.seed, args.seed + args.seeds)
    for seed in seeds:  # before the data: another --root, say
        run_dir = seed_dir(args, seed)
        if continues_run(run_dir, args.resume):
            check_resume_config(seed_config(args, seed), run_dir)
    splits = load_splits(args, PRESETS[args.dataset])
    print(f'{args.dataset}: ' + ', '.join(f'{s} {len(d)}' for s, d in
                                          splits.items()), file=sys.stderr)
    init_distributed()  # under torchrun the ranks share every epoch
    folder = osp.join(args.out, args.dataset)
    # The whole run's folder: an old run in it moves aside (or is deleted)
    # whole, seed folders and summary, before the first seed starts.
    with claim_run_folder(folder, args.resume, args.overwrite,
                          run_files=OUTPUTS):
        results = [run_seed(args, info, seed, splits) for seed in seeds]
        summary = summarize(args, info, list(seeds), results)
        # With the summary, not before the runs (the seed folders keep
        # their own config.yaml).
        save_config(args, folder)
        with atomic_write(osp.join(folder, 'metrics.json')) as f:
            json.dump(summary, f, indent=2, sort_keys=True)
    key = f'test_{info.metric}'
    print(f'{args.dataset} {key}: {summary[key]:.4f} +- '
          f'{summary[key + "_std"]:.4f} over {args.seeds} seeds '
          f'({summary["num_params"]:,} parameters)')


if __name__ == '__main__':
    main()
