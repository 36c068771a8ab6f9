import os.path as osp
import shutil

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
MODELNET_SAMPLE = osp.join(REPO, 'datasets', 'modelnet40_sample')
SHAPENET_SAMPLE = osp.join(REPO, 'datasets', 'shapenet_part_sample')
LRGB_SAMPLE = osp.join(REPO, 'datasets', 'lrgb_sample')


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


@pytest.fixture
def offline(monkeypatch):
    r"""Downloads fail as without a network."""
    import samsa_geo.datasets._download as download

    def fail(url, folder, *args, **kwargs):
        raise OSError('network unreachable')

    monkeypatch.setattr(download, 'download_url', fail)


@pytest.fixture
def forbid(monkeypatch):
    r"""``forbid(cls, 'process')`` makes that method fail the test."""
    def patch(cls, method='process'):
        def fail(self):
            raise AssertionError(f'{cls.__name__}.{method}() was called')
        monkeypatch.setattr(cls, method, fail)
    return patch
