"""ModelNet40 classification with SamsaPointClassifier.

With no arguments it trains on the bundled *synthetic* sample (10 procedural
shape classes in the `modelnet40_normal_resampled` format) in a few minutes
on 2 CPU cores. Point --root at the real archive's parent folder to train on
ModelNet40 (`--format normal_resampled|hdf5|princeton`).

Protocol: ModelNet40 has no validation split, so --val-ratio of every train
class is held out; the epoch of the lowest validation loss (cross-entropy)
is selected and test is evaluated once, with that checkpoint. The run folder holds metrics.json (val_oa,
test_oa, test_macc, best_epoch, ...), best.pt / last.pt, log.csv and
confusion_matrix.png.

    python examples/modelnet40.py
    python examples/modelnet40.py --config examples/configs/modelnet40_paper.yaml --epochs 100
    python examples/modelnet40.py --train-rotation z --test-rotation so3 --rotation-invariant
    torchrun --standalone --nproc_per_node 2 examples/modelnet40.py --root data/ModelNet40 --preset paper --amp bf16
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import _modelnet40_pipeline as pipeline  # noqa: E402


def parse_args(argv=None):
    return pipeline.parse_args(argv, __doc__)


def main(argv=None):
    """Trains and tests with the command-line options; returns the
    metrics."""
    return pipeline.run(parse_args(argv))


if __name__ == '__main__':
    main()
