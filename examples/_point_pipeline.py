"""What the point-cloud examples (modelnet40.py, shapenet_part.py) share:
their common command-line flags, the rotation protocol's augmentations and
the trainer set-up."""
import torch_geometric.transforms as T

from samsa_geo.train import Trainer
from samsa_geo.transforms import (
    RandomAnisotropicScale,
    RandomJitter,
    RandomRotateSO3,
    RandomRotateZ,
)


#: Model arguments and training defaults of each ``--preset``: the one place
#: that sets them. ``paper`` (6 x 256 channels) is pre-norm with a lower
#: learning rate: in GPSConv's post-norm order at 2e-3 it diverged within
#: a few epochs (training loss back at chance). Warm-up lasts a tenth of
#: the steps, at least ``min_warmup`` and at most 2,000.
PRESETS = {
    'small': dict(model=dict(), lr=2e-3, min_warmup=0),
    'paper': dict(model=dict(norm_first=True), lr=5e-4, min_warmup=50),
}


def preset_model(builder, args, *model_args, **model_kwargs):
    """``builder.small`` or ``builder`` (the full size) with the model
    arguments of ``args.preset``."""
    preset = PRESETS[args.preset]
    build = builder.small if args.preset == 'small' else builder
    return build(*model_args, **{**preset['model'], **model_kwargs})


def add_point_args(p, num_points, epochs, batch_size, out):
    """Adds the flags both examples take, with their own defaults."""
    p.add_argument('--root', default=None,
                   help='dataset root (default: the bundled synthetic sample)')
    p.add_argument('--num-points', type=int, default=num_points)
    p.add_argument('--normals', action='store_true', help='use normals as x')
    p.add_argument('--preset', default='small', choices=['small', 'paper'])
    p.add_argument('--rotation-invariant', action='store_true')
    p.add_argument('--train-rotation', default='none',
                   choices=['none', 'z', 'so3'])
    p.add_argument('--test-rotation', default='none',
                   choices=['none', 'z', 'so3'])
    p.add_argument('--up-axis', type=int, default=1,
                   help="axis of 'z' rotations (1: y-up, as the archives)")
    p.add_argument('--epochs', type=int, default=epochs)
    p.add_argument('--batch-size', type=int, default=batch_size)
    p.add_argument('--lr', type=float, default=None,
                   help="learning rate (default: the preset's, see PRESETS)")
    p.add_argument('--amp', default=None, choices=['bf16', 'fp16'])
    p.add_argument('--compile', action='store_true')
    p.add_argument('--device', default=None)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--deterministic', action='store_true',
                   help='bit-reproducible runs (slower)')
    p.add_argument('--out', default=out)
    p.add_argument('--resume', action='store_true')
    p.add_argument('--no-progress', action='store_true')


def rotation(kind, up_axis):
    return {'none': None, 'z': RandomRotateZ(axis=up_axis),
            'so3': RandomRotateSO3()}[kind]


def point_transforms(args, first=()):
    """Train transform (``first``, the train rotation, anisotropic scaling,
    jitter) and evaluation transform (``first``, the test rotation)."""
    train = [*first, rotation(args.train_rotation, args.up_axis),
             RandomAnisotropicScale(), RandomJitter()]
    test = [*first, rotation(args.test_rotation, args.up_axis)]
    return (T.Compose([t for t in train if t is not None]),
            T.Compose([t for t in test if t is not None]))


def point_trainer(model, task, args, num_train, monitor):
    """The examples' :class:`~samsa_geo.train.Trainer` with the learning
    rate and warm-up of ``args.preset`` (see :data:`PRESETS`), selection on
    ``monitor`` (maximised)."""
    preset = PRESETS[args.preset]
    steps = num_train // args.batch_size * args.epochs
    warmup = min(2000, max(steps // 10, preset['min_warmup']), steps)
    if args.lr is None:  # recorded with the run's arguments
        args.lr = preset['lr']
    return Trainer(model, task, out_dir=args.out, epochs=args.epochs,
                   lr=args.lr, warmup_steps=warmup,
                   amp=args.amp, compile=args.compile, device=args.device,
                   seed=args.seed, deterministic=args.deterministic,
                   monitor=monitor, mode='max', resume=args.resume,
                   progress=not args.no_progress)
