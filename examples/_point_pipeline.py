"""What the point-cloud examples (modelnet40.py, shapenet_part.py) share:
their common command-line flags, the rotation protocol's augmentations and
the trainer set-up (whose fit() saves the resolved configuration as
config.yaml in the run folder)."""
import argparse

import torch_geometric.transforms as T

from samsa_geo.train import (Trainer, add_run_args, check_resume_config,
                             continues_run, init_distributed,
                             steps_per_epoch)
from samsa_geo.transforms import (
    RandomAnisotropicScale,
    RandomJitter,
    RandomRotateSO3,
    RandomRotateZ,
)


#: Model arguments and training defaults of each ``--preset``: the one place
#: that sets them. ``lr``: peak learning rate; warm-up lasts a tenth of the
#: steps, at least ``min_warmup`` and at most 2,000; ``scale``: range of the
#: training shapes' random anisotropic scaling; per example the defaults of
#: ``--num-points``, ``--epochs`` and ``--normals``. ``paper`` (6 x 256) is
#: pre-norm with a lower learning rate: in GPSConv's post-norm order at 2e-3
#: it diverged within a few epochs (training loss back at chance).
#: ``small`` (2 x 64) has dropout 0.1 in its layers and a milder scaling,
#: and on ModelNet40 reads 512 points with their normals: without them its
#: validation accuracy on the bundled sample peaked mid-run and ended up to
#: 0.3 lower (docs/training.md gives the runs).
PRESETS = {
    'small': dict(model=dict(dropout=0.1), lr=2e-3, min_warmup=0,
                  scale=(0.8, 1.25),
                  modelnet40=dict(num_points=512, epochs=60, normals=True),
                  shapenet_part=dict(num_points=512, epochs=60,
                                     normals=False)),
    'paper': dict(model=dict(norm_first=True), lr=5e-4, min_warmup=50,
                  scale=(2. / 3., 3. / 2.),
                  modelnet40=dict(num_points=1024, epochs=40, normals=False),
                  shapenet_part=dict(num_points=512, epochs=60,
                                     normals=False)),
}


def preset_model(builder, args, *model_args, **model_kwargs):
    """``builder.small`` or ``builder`` (the full size) with the model
    arguments of ``args.preset``."""
    preset = PRESETS[args.preset]
    build = builder.small if args.preset == 'small' else builder
    return build(*model_args, **{**preset['model'], **model_kwargs})


def add_point_args(p, example, batch_size, out):
    """Adds the flags both examples take; ``example`` (``'modelnet40'`` or
    ``'shapenet_part'``) names the per-example defaults of
    :data:`PRESETS`."""
    p.add_argument('--root', default=None,
                   help='dataset root; unset: the bundled synthetic sample')
    sampled = ('training points sampled per shape (validation and test '
               'keep all)' if example == 'shapenet_part' else
               'points sampled per shape')
    p.add_argument('--num-points', type=int, default=None,
                   help=sampled + "; unset: the preset's ("
                   + _per_preset(example, 'num_points') + ')')
    p.add_argument('--normals', action=argparse.BooleanOptionalAction,
                   default=None,
                   help="use normals as point features x; unset: the "
                   "preset's (" + _per_preset(example, 'normals') + ')')
    p.add_argument('--preset', default='small', choices=['small', 'paper'],
                   help="model size: 'small' (CPU-friendly) or the paper's")
    p.add_argument('--rotation-invariant', action='store_true',
                   help='rotation-invariant encoder (PPF) and relative bias')
    p.add_argument('--train-rotation', default='none',
                   choices=['none', 'z', 'so3'],
                   help='random rotation of the training shapes')
    p.add_argument('--test-rotation', default='none',
                   choices=['none', 'z', 'so3'],
                   help='random rotation of the validation and test shapes')
    up = ('2 (z-up) with --format princeton, else 1 (y-up, as the other '
          'archives)' if example == 'modelnet40' else '1 (y-up)')
    p.add_argument('--up-axis', type=int, default=None, choices=[0, 1, 2],
                   help="axis of 'z' rotations; unset: the data's up axis, "
                   + up)
    p.add_argument('--epochs', type=int, default=None,
                   help="training epochs; unset: the preset's ("
                   + _per_preset(example, 'epochs') + ')')
    p.add_argument('--batch-size', type=int, default=batch_size,
                   help='shapes per batch (per process under torchrun)')
    p.add_argument('--lr', type=float, default=None,
                   help="peak learning rate of AdamW; unset: the preset's "
                   "(see PRESETS)")
    p.add_argument('--scale', type=float, nargs=2, default=None,
                   metavar=('LOW', 'HIGH'),
                   help="range of the random anisotropic scaling of the "
                   "training shapes; unset: the preset's (" + ', '.join(
                       f'{low:.3g}-{high:.3g} with {name}'
                       for name, (low, high) in _scales()) + ')')
    p.add_argument('--device', default=None,
                   help="'cpu', 'cuda', 'cuda:1', ...; unset: CUDA when "
                   "available")
    p.add_argument('--out', default=out, help='run folder')
    add_run_args(p)


def _scales():
    return [(name, preset['scale']) for name, preset in PRESETS.items()]


def _per_preset(example, key):
    return ', '.join(f'{preset[example][key]} with {name}'
                     for name, preset in PRESETS.items())


def resolve_preset(args, example):
    """Fills the options left unset (``None``) with the defaults of
    ``args.preset`` (see :data:`PRESETS`): learning rate, scaling range,
    and the number of points, epochs and use of normals of ``example``;
    and the up axis of the data (``--up-axis``: 2 for the z-up Princeton
    meshes of ``--format princeton``, 1 for the y-up archives).
    ``config.yaml`` records the resolved values. Returns ``args``."""
    preset = PRESETS[args.preset]
    values = {'lr': preset['lr'], 'scale': list(preset['scale']),
              'up_axis': 2 if getattr(args, 'format', None) == 'princeton'
              else 1, **preset[example]}
    for name, value in values.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


def rotation(kind, up_axis):
    return {'none': None, 'z': RandomRotateZ(axis=up_axis),
            'so3': RandomRotateSO3()}[kind]


def point_transforms(args, first=()):
    """Train transform (``first``, the train rotation, anisotropic scaling
    within ``args.scale``, jitter) and evaluation transform (``first``, the
    test rotation)."""
    train = [*first, rotation(args.train_rotation, args.up_axis),
             RandomAnisotropicScale(*args.scale), RandomJitter()]
    test = [*first, rotation(args.test_rotation, args.up_axis)]
    return (T.Compose([t for t in train if t is not None]),
            T.Compose([t for t in test if t is not None]))


def check_resume_first(args):
    """With ``--resume`` and a run to continue in ``args.out`` (its
    ``last.pt``), refuses options that differ from the run's
    ``config.yaml`` before any data is read or processed (see
    ``samsa_geo.train.check_resume_config``; ``Trainer.fit`` checks again
    when it resumes)."""
    if continues_run(args.out, args.resume):
        check_resume_config(args, args.out)


def point_trainer(model, task, args, num_train, monitor, run_files=()):
    """The examples' :class:`~samsa_geo.train.Trainer` with the learning
    rate and warm-up of ``args.preset`` (see :data:`PRESETS`), selection on
    ``monitor`` (maximised; ties go to the lower validation loss). Its
    ``fit()`` writes ``args`` to ``config.yaml`` once an old run in
    ``args.out`` has been moved aside (with its own ``config.yaml``) or,
    with ``--overwrite``, deleted, together with the files ``run_files``
    names: those the example writes into ``args.out`` itself; with
    ``--resume`` it first refuses options that differ from the recorded
    ones (see ``samsa_geo.train.check_resume_config``)."""
    preset = PRESETS[args.preset]
    init_distributed()  # under torchrun the ranks share every epoch
    steps = steps_per_epoch(num_train, args.batch_size,
                            drop_last=True) * args.epochs
    warmup = min(2000, max(steps // 10, preset['min_warmup']), steps)
    if args.lr is None:  # recorded with the run's arguments and config
        args.lr = preset['lr']
    trainer = Trainer(model, task, out_dir=args.out, epochs=args.epochs,
                      lr=args.lr, warmup_steps=warmup, amp=args.amp,
                      compile=args.compile, device=args.device,
                      seed=args.seed, deterministic=args.deterministic,
                      monitor=monitor, mode='max', tie_break='val_loss',
                      resume=args.resume,
                      overwrite=args.overwrite, run_files=run_files,
                      progress=not args.no_progress,
                      config=args)  # the resolved --config and flags
    return trainer
