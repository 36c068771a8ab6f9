import os.path as osp
import sys

import pytest
import torch

from samsa_geo.datasets import holdout_indices, modelnet_princeton

EXAMPLES = osp.join(osp.dirname(__file__), '..', '..', 'examples')
sys.path.insert(0, EXAMPLES)
import _modelnet40_pipeline as pipeline  # noqa: E402

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', 'datasets'))
from test_modelnet_princeton import CLASSES, _write_modelnet10  # noqa: E402


def test_princeton_validation_is_the_stratified_holdout(tmp_path):
    """The Princeton format holds out validation per class with the
    library's holdout_indices, as the other formats do."""
    root = str(tmp_path)
    _write_modelnet10(root)
    args = pipeline.parse_args(['--root', root, '--format', 'princeton',
                                '--num-points', '16', '--val-ratio', '0.5'])
    train, val, test = pipeline.datasets(args)
    full = modelnet_princeton(root, 'train', num_points=16)
    assert len(train) + len(val) == len(full) == 2 * len(CLASSES)
    assert len(test) == len(CLASSES)
    # One shape of every class held out (2 per class, ratio 0.5).
    assert sorted(val.y.view(-1).tolist()) == list(range(len(CLASSES)))
    assert sorted(train.y.view(-1).tolist()) == list(range(len(CLASSES)))
    expected = holdout_indices(full.y.view(-1), 0.5)
    assert torch.equal(torch.as_tensor(list(val.indices())), expected)
    assert not set(val.indices()) & set(train.indices())

    args.val_ratio = 0.0
    with pytest.raises(ValueError, match="'--val-ratio' in \\(0, 1\\)"):
        pipeline.datasets(args)
