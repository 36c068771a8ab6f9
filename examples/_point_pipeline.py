"""What the point-cloud examples (modelnet40.py, shapenet_part.py) share:
their common command-line flags, the rotation protocol's augmentations and
the trainer set-up (which saves the resolved configuration as config.yaml in
the run folder)."""
import torch_geometric.transforms as T

from samsa_geo.train import Trainer, add_run_args, save_config
from samsa_geo.transforms import (
    RandomAnisotropicScale,
    RandomJitter,
    RandomRotateSO3,
    RandomRotateZ,
)


def add_point_args(p, num_points, epochs, batch_size, out):
    """Adds the flags both examples take, with their own defaults."""
    p.add_argument('--root', default=None,
                   help='dataset root; unset: the bundled synthetic sample')
    p.add_argument('--num-points', type=int, default=num_points,
                   help='points sampled per shape')
    p.add_argument('--normals', action='store_true',
                   help='use normals as point features x')
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
    p.add_argument('--up-axis', type=int, default=1,
                   help="axis of 'z' rotations (1: y-up, as the archives)")
    p.add_argument('--epochs', type=int, default=epochs,
                   help='training epochs')
    p.add_argument('--batch-size', type=int, default=batch_size,
                   help='shapes per batch (per process under torchrun)')
    p.add_argument('--lr', type=float, default=2e-3,
                   help='peak learning rate of AdamW')
    p.add_argument('--device', default=None,
                   help="'cpu', 'cuda', 'cuda:1', ...; unset: CUDA when "
                   "available")
    p.add_argument('--out', default=out, help='run folder')
    add_run_args(p)


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
    """The examples' :class:`~samsa_geo.train.Trainer`: warm-up over a tenth
    of the steps (at most 2,000), selection on ``monitor`` (maximised)."""
    steps = num_train // args.batch_size * args.epochs
    trainer = Trainer(model, task, out_dir=args.out, epochs=args.epochs,
                      lr=args.lr, warmup_steps=min(2000, steps // 10),
                      amp=args.amp, compile=args.compile, device=args.device,
                      seed=args.seed, deterministic=args.deterministic,
                      monitor=monitor, mode='max', resume=args.resume,
                      progress=not args.no_progress)
    if trainer.is_main:
        save_config(args, args.out)  # the resolved --config and flags
    return trainer
