"""The ModelNet40 run of examples/modelnet40.py, which
rotation_protocol.py and visualize_sampling.py also run: its flags, datasets
(with the per-class validation hold-out of the library for every format),
model, task and the run itself."""
import os.path as osp

import torch
import torch.nn.functional as F

from samsa_geo.datasets import (
    ModelNet40HDF5,
    ModelNet40NormalResampled,
    holdout_indices,
    modelnet_princeton,
    sample_root,
)
from samsa_geo.metrics import mean_class_accuracy, overall_accuracy
from samsa_geo.nn import batch_hints
from samsa_geo.nn.models import SamsaPointClassifier
from samsa_geo.train import (
    make_loader,
    make_parser,
    parse_args_with_config,
    seed_everything,
)
from samsa_geo.transforms import RandomAnisotropicScale
from samsa_geo.typing import WITH_MATPLOTLIB
from samsa_geo.visualization import plot_confusion_matrix

from _point_pipeline import (
    add_point_args,
    check_resume_first,
    point_trainer,
    point_transforms,
    preset_model,
    resolve_preset,
)


#: What a run writes into its folder (--out) besides the trainer's files:
#: it moves aside, or is deleted with --overwrite, with them.
OUTPUTS = ('confusion_matrix.png',)


def build_parser(doc=__doc__):
    """The flags of examples/modelnet40.py; ``doc``: the docstring that
    --help shows."""
    p = make_parser(doc)
    add_point_args(p, 'modelnet40', batch_size=16, out='runs/modelnet40')
    p.add_argument('--format', default='normal_resampled',
                   choices=['normal_resampled', 'hdf5', 'princeton'],
                   help='on-disk format of the archive under --root')
    p.add_argument('--votes', type=int, default=1,
                   help='test-time votes over random anisotropic scaling '
                   'within the training range (--scale)')
    p.add_argument('--val-ratio', type=float, default=0.2,
                   help='fraction of every train class held out for '
                   'validation')
    p.add_argument('--eval-checkpoint', default=None,
                   help="skip training: evaluate this checkpoint ('best', "
                   "'last' or a path) on test; the options go to "
                   "eval_config.yaml beside a checkpoint of --out, else to "
                   "config.yaml of --out as a new run")
    return p


def parse_args(argv=None, doc=__doc__):
    """The parsed flags, unset preset defaults filled in."""
    return resolve_preset(parse_args_with_config(build_parser(doc), argv),
                          'modelnet40')


def normalize_unit_sphere(data):
    """Centres a cloud on its centroid and scales it to radius 1: the
    normalisation of the other ModelNet40 archives, for the Princeton
    meshes, which keep their CAD units and origin."""
    pos = data.pos - data.pos.mean(dim=0)  # [N, 3]
    data.pos = pos / pos.norm(dim=-1).max().clamp_min(1e-12)
    return data


def datasets(args):
    resolve_preset(args, 'modelnet40')
    # Every split of --format princeton goes to the unit sphere (the other
    # formats are unit-sphere data); normals are unchanged by it.
    first = [normalize_unit_sphere] if args.format == 'princeton' else []
    train_tf, test_tf = point_transforms(args, first=first)
    root = args.root or sample_root('modelnet40')
    kw = dict(num_points=args.num_points)
    if args.format == 'princeton':  # PyG's ModelNet: official train/test only
        if not 0 < args.val_ratio < 1:
            raise ValueError(f"Expected '--val-ratio' in (0, 1) "
                             f"(got {args.val_ratio})")
        full = modelnet_princeton(root, 'train', **kw)
        # The per-class hold-out of the other formats.
        val_idx = holdout_indices(full.y.view(-1), args.val_ratio)
        is_val = torch.zeros(len(full), dtype=torch.bool)
        is_val[val_idx] = True
        val, train = full[val_idx], full[~is_val]
        test = modelnet_princeton(root, 'test', **kw)
        train.transform, val.transform, test.transform = \
            train_tf, test_tf, test_tf
        return train, val, test
    cls = ModelNet40NormalResampled if args.format == 'normal_resampled' \
        else ModelNet40HDF5
    kw.update(val_ratio=args.val_ratio)
    if args.format == 'hdf5':
        kw.update(use_normals=args.normals)
    return (cls(root, 'train', transform=train_tf, **kw),
            cls(root, 'val', transform=test_tf, **kw),
            cls(root, 'test', transform=test_tf, **kw))


def build_model(num_classes, args, **kwargs):
    """The classifier of --preset, taking normals as x with --normals;
    ``kwargs`` are further model arguments (e.g. ``attn_kwargs``)."""
    return preset_model(SamsaPointClassifier, args, num_classes,
                        in_channels=3 if args.normals else 0,
                        rotation_invariant=args.rotation_invariant, **kwargs)


class Classification:
    """Loss and metrics of ModelNet40 (overall and mean class accuracy);
    ``votes`` over random anisotropic scalings within ``scale``, the
    training range (``--scale``)."""
    def __init__(self, num_classes, normals, votes=1, scale=(2. / 3., 3. / 2.)):
        self.num_classes, self.normals, self.votes = num_classes, normals, votes
        self.scale = RandomAnisotropicScale(*scale)

    def logits(self, model, data):
        x = data.normal if self.normals else None
        # The batch's sizes from its CPU-side bookkeeping: no device sync.
        return model(data.pos, data.batch, x=x, **batch_hints(data))

    def training_step(self, model, data):
        return F.cross_entropy(self.logits(model, data), data.y.view(-1),
                               label_smoothing=0.1)

    def eval_step(self, model, data):
        logits = self.logits(model, data).float()
        for _ in range(self.votes - 1):  # votes over random scalings
            voted = self.scale(data.clone())
            logits = logits + self.logits(model, voted).float()
        y = data.y.view(-1)
        return {'pred': logits.argmax(-1), 'target': y,
                'loss': F.cross_entropy(logits / self.votes, y,
                                        reduction='none')}

    def compute_metrics(self, out):
        pred, target = out['pred'], out['target']
        return {'oa': overall_accuracy(pred, target),
                'macc': mean_class_accuracy(pred, target, self.num_classes),
                'loss': out['loss'].mean().item()}


def build_trainer(model, task, args, num_train):
    """The trainer of --preset: selection on validation accuracy, ties (a
    small hold-out reaches its ceiling at many epochs) going to the lower
    validation loss."""
    return point_trainer(model, task, args, num_train, 'val_oa',
                         run_files=OUTPUTS)


def run(args):
    """Trains and tests with the parsed options; returns the metrics."""
    resolve_preset(args, 'modelnet40')
    if args.votes < 1:  # before training: 0 votes divided the loss by zero
        raise ValueError(f"Expected '--votes' to be at least 1 "
                         f"(got {args.votes})")
    check_resume_first(args)  # before the data: another --root, say
    seed_everything(args.seed)  # model initialisation too
    train_ds, val_ds, test_ds = datasets(args)
    classes = list(getattr(train_ds, 'classes', None)
                   or range(int(train_ds.y.max()) + 1))
    model = build_model(len(classes), args)
    task = Classification(len(classes), args.normals, scale=args.scale)
    trainer = build_trainer(model, task, args, len(train_ds))
    train_loader = make_loader(train_ds, args.batch_size, shuffle=True,
                               seed=args.seed, drop_last=True)
    val_loader = make_loader(val_ds, args.batch_size, shuffle=False)
    test_loader = make_loader(test_ds, args.batch_size, shuffle=False)
    best = {}
    if args.eval_checkpoint is None:
        best = trainer.fit(train_loader, val_loader)
    else:  # the options beside the results (eval_config.yaml in the
        # checkpoint's own run, else config.yaml of a new run folder)
        trainer.start_evaluation(args.eval_checkpoint)
    task.votes = args.votes
    test = trainer.evaluate(test_loader, 'test',
                            checkpoint=args.eval_checkpoint or 'best')
    num_params = sum(p.numel() for p in model.parameters())
    trainer.update_summary(num_params=num_params)
    if trainer.is_main:
        out = trainer.last_outputs
        if WITH_MATPLOTLIB:
            plot_confusion_matrix(out['pred'], out['target'], classes,
                                  osp.join(args.out, 'confusion_matrix.png'))
        head = (f"best epoch {best.get('best_epoch')}: val_loss "
                f"{best.get('val_loss', float('nan')):.4f} val_oa "
                f"{best.get('val_oa', float('nan')):.4f} | "
                if args.eval_checkpoint is None
                else f"checkpoint {args.eval_checkpoint}: ")
        print(f"{head}test_oa {test['test_oa']:.4f}"
              f" test_macc {test['test_macc']:.4f} -> {args.out}")
    metrics = {**best, **test, 'num_params': num_params}
    return metrics
