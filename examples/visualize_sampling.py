"""See which points every SAMSA layer and head sampled for one test cloud.

Writes one coloured PLY file per layer (grey: not sampled; one colour per
head; black: sampled by several heads), a PNG with one panel per layer and
head (Open3D off-screen rendering, matplotlib where Open3D cannot render)
and the run's training curves, and prints their paths. Those of a previous
call in --out are deleted first (the PLY files of layers this call does not
draw would stay next to its own); without --checkpoint the brief training
runs in <out>/train/, replacing the one there (--overwrite).

    python examples/visualize_sampling.py --checkpoint runs/modelnet40/best.pt --index 0 --out runs/vis
    python examples/visualize_sampling.py            # trains briefly on the bundled sample first
"""
import os
import os.path as osp
import re
import sys

import torch
from torch_geometric.data import Batch

from samsa_geo.nn.models import SamsaPointClassifier
from samsa_geo.train import load_config, make_parser, parse_args_with_config
from samsa_geo.visualization import plot_training_curves, visualize_sampling

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import _modelnet40_pipeline as modelnet40  # noqa: E402

# Flags of the modelnet40.py run that define its data.
RUN_FLAGS = ('root', 'format', 'num_points', 'normals')

#: The files a call writes into --out (besides train/).
PICTURES = re.compile(r'sampling_.+\.ply|sampling_(panels|graph)\.png|'
                      r'curves\.png')


def clear_pictures(out):
    """Deletes the files of a previous call in ``out`` (:data:`PICTURES`
    only, never a run's files); returns their names."""
    names = sorted(n for n in os.listdir(out) if PICTURES.fullmatch(n)) \
        if osp.isdir(out) else []
    for name in names:
        os.remove(osp.join(out, name))
    if names:
        print(f"Deleted the previous call's files in '{out}': "
              f"{', '.join(names)}", file=sys.stderr, flush=True)
    return names


def load_model(checkpoint):
    """Rebuilds the classifier of a modelnet40.py run from its checkpoint;
    returns it with modelnet40.py's arguments carrying the run's data flags
    (from the run folder's config.yaml)."""
    run_dir = osp.dirname(osp.abspath(checkpoint))
    config = osp.join(run_dir, 'config.yaml')
    if not osp.isfile(config):
        raise FileNotFoundError(
            f"Expected '{config}' next to the checkpoint '{checkpoint}': it "
            f"holds the modelnet40.py flags (data, preset) of the run. Pass "
            f"the best.pt of a modelnet40.py run folder")
    saved = load_config(config)
    model = SamsaPointClassifier.from_checkpoint(checkpoint)
    run_args = modelnet40.parse_args([])
    for key in RUN_FLAGS:
        if key in saved:
            setattr(run_args, key, saved[key])
    return model, run_args, run_dir


def main(argv=None):
    p = make_parser(__doc__)
    p.add_argument('--checkpoint', default=None,
                   help='best.pt of a modelnet40.py run; unset: train '
                   'briefly on the bundled sample first')
    p.add_argument('--index', type=int, default=0, help='test cloud index')
    p.add_argument('--out', default='runs/visualize_sampling',
                   help='folder of the pictures and PLY files')
    p.add_argument('--backend', default='auto',
                   choices=['auto', 'open3d', 'matplotlib'],
                   help='renderer of the panels (auto: Open3D where it can '
                   'render off-screen)')
    p.add_argument('--layers', default=None,
                   help='comma list of layer positions; unset: all')
    p.add_argument('--epochs', type=int, default=3,
                   help='epochs of the brief training without --checkpoint')
    args = parse_args_with_config(p, argv)

    checkpoint = args.checkpoint
    if checkpoint is not None and not osp.isfile(checkpoint):
        p.error(f"argument --checkpoint: '{checkpoint}' does not exist "
                f"(expected the best.pt of a modelnet40.py run, or leave "
                f"--checkpoint out to train briefly)")
    if checkpoint is None:
        run = osp.join(args.out, 'train')
        modelnet40.run(modelnet40.parse_args([
            '--epochs', str(args.epochs), '--out', run, '--no-progress',
            '--overwrite']))  # a scratch run
        checkpoint = osp.join(run, 'best.pt')
    model, run_args, run_dir = load_model(checkpoint)
    _, _, test_ds = modelnet40.datasets(run_args)
    if not 0 <= args.index < len(test_ds):
        raise IndexError(f"Expected '--index' in [0, {len(test_ds) - 1}] "
                         f"(got {args.index})")
    data = Batch.from_data_list([test_ds[args.index]])
    task = modelnet40.Classification(model.num_classes, run_args.normals)
    with torch.no_grad():
        pred = int(task.logits(model, data).argmax(-1))
    classes = getattr(test_ds, 'classes', None)
    pred_name = classes[pred] if classes else pred
    true_name = classes[int(data.y)] if classes else int(data.y)
    title = f'test cloud {args.index}: predicted {pred_name}, true {true_name}'

    layers = None if args.layers is None else \
        [int(v) for v in args.layers.split(',')]
    clear_pictures(args.out)
    paths = visualize_sampling(model, data, args.out, layers=layers,
                               backend=args.backend, title=title,
                               forward_fn=task.logits)
    curves = plot_training_curves(run_dir, osp.join(args.out, 'curves.png'))
    print(title)
    print(f"panels ({paths['backend']}): {paths['png']}")
    for layer, path in paths['ply'].items():
        print(f'ply {layer}: {path}')
    print(f'training curves: {curves}')
    return paths


if __name__ == '__main__':
    main()
