import os.path as osp
import shutil

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
MODELNET_SAMPLE = osp.join(REPO, 'datasets', 'modelnet40_sample')
SHAPENET_SAMPLE = osp.join(REPO, 'datasets', 'shapenet_part_sample')


@pytest.fixture
def modelnet_root(tmp_path):
    r"""A copy of the bundled sample, so that tests never write into the
    repository."""
    root = tmp_path / 'modelnet'
    shutil.copytree(osp.join(MODELNET_SAMPLE, 'modelnet40_normal_resampled'),
                    root / 'modelnet40_normal_resampled')
    return str(root)


@pytest.fixture
def shapenet_root(tmp_path):
    root = tmp_path / 'shapenet'
    folder = 'shapenetcore_partanno_segmentation_benchmark_v0_normal'
    shutil.copytree(osp.join(SHAPENET_SAMPLE, folder), root / folder)
    return str(root)
