r"""A point file without a row (0 bytes, as a failed extraction leaves it,
or blank lines only) is a damaged file, named, not a shape of 0 points."""
import os.path as osp
import re

import numpy as np
import pytest

from samsa_geo.datasets import ModelNet40NormalResampled, ShapeNetPart
from samsa_geo.datasets._process import read_table
from samsa_geo.io import DamagedFileError

SHAPENET = 'shapenetcore_partanno_segmentation_benchmark_v0_normal'
GOT = {'empty': 'it is empty', 'blank': 'it holds only blank lines'}


def write(path, content):
    with open(path, 'w') as f:
        f.write('' if content == 'empty' else '\n  \n\n')


@pytest.mark.parametrize('content', ['empty', 'blank'])
def test_shapenet_empty_shape_file_is_named(shapenet_root, content):
    path = osp.join(shapenet_root, SHAPENET, '03797390',
                    'synthetic_mug_0016.txt')
    assert osp.getsize(path) > 0  # a shape of the test split
    write(path, content)
    with pytest.raises(DamagedFileError, match=rf"Expected rows of 7 fields "
                       rf"'x y z nx ny nz part' in '{re.escape(path)}' "
                       rf"\({GOT[content]}\); the file is truncated or "
                       rf"damaged, re-extract it from the archive"):
        ShapeNetPart(shapenet_root, categories='Mug', split='test')


def test_modelnet_empty_shape_file_is_named(modelnet_root):
    path = osp.join(modelnet_root, 'modelnet40_normal_resampled', 'cone',
                    'cone_0001.txt')
    write(path, 'empty')
    with pytest.raises(DamagedFileError, match=rf"Expected rows of 6 fields "
                       rf"'x,y,z,nx,ny,nz' in '{re.escape(path)}' \(it is "
                       rf"empty\)"):
        ModelNet40NormalResampled(modelnet_root, split='train',
                                  num_points=16)


def test_read_table_rows(tmp_path):
    path = str(tmp_path / 'points.txt')
    with open(path, 'w') as f:
        f.write('\n1 2 3\n\n4 5 6\n')
    table = read_table(path, 3, 'x y z')
    assert table.dtype == np.float32
    assert table.tolist() == [[1, 2, 3], [4, 5, 6]]
    write(path, 'blank')
    with pytest.raises(DamagedFileError, match="it holds only blank lines"):
        read_table(path, 3, 'x y z')
