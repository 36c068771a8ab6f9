import filecmp
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest

from samsa_geo.datasets import (
    ModelNet40NormalResampled,
    ShapeNetPart,
    sample_root,
)

from .conftest import LRGB_SAMPLE, MODELNET_SAMPLE, REPO, SHAPENET_SAMPLE


def _files(top: str) -> list:
    return sorted(
        osp.relpath(osp.join(d, f), top) for d, _, fs in os.walk(top)
        for f in fs if 'processed' not in d)


def test_script_reproduces_committed_sample(tmp_path):
    subprocess.run([sys.executable, osp.join(REPO, 'scripts',
                                             'make_sample_data.py'),
                    '--out', str(tmp_path)], check=True, capture_output=True)
    size = 0
    for committed in (MODELNET_SAMPLE, SHAPENET_SAMPLE, LRGB_SAMPLE):
        fresh = osp.join(str(tmp_path), osp.basename(committed))
        names = _files(committed)
        assert names == _files(fresh)
        _, mismatch, errors = filecmp.cmpfiles(committed, fresh, names,
                                               shallow=False)
        assert mismatch == [] and errors == []
        size += sum(osp.getsize(osp.join(committed, n)) for n in names)
    assert size < 15 * 10**6
    for name in ('peptides-func', 'peptides-struct', 'pascalvoc-sp',
                 'coco-sp', 'pcqm-contact'):  # each below 600 kB
        folder = osp.join(LRGB_SAMPLE, name)
        assert sum(osp.getsize(osp.join(folder, n))
                   for n in _files(folder)) < 600 * 10**3, name
    for top in (MODELNET_SAMPLE, SHAPENET_SAMPLE, LRGB_SAMPLE):
        with open(osp.join(top, 'README.md')) as f:
            assert 'SYNTHETIC' in f.read()


def test_convex_sample_normals_point_outwards(modelnet_root):
    ds = ModelNet40NormalResampled(modelnet_root, split='test')
    convex = {'capsule', 'cone', 'cube', 'cylinder', 'ellipsoid', 'pyramid',
              'slab', 'sphere'}
    for data in ds:
        if ds.classes[int(data.y)] not in convex:
            continue
        center = (data.pos.max(0).values + data.pos.min(0).values) / 2
        assert bool(((data.pos - center) * data.normal).sum(-1).gt(0).all())


def test_sample_root():
    assert sample_root('modelnet40') == MODELNET_SAMPLE
    root = sample_root('shapenet_part')
    assert root == SHAPENET_SAMPLE
    assert ShapeNetPart.categories_on_disk(root) == ['Lamp', 'Mug', 'Table']
    assert sample_root('lrgb') == LRGB_SAMPLE
    with pytest.raises(ValueError, match="'name'"):
        sample_root('modelnet10')


def test_sample_root_after_non_editable_install(tmp_path):
    """A real non-editable install (no datasets/ folder next to the package)
    writes the samples on first use, byte for byte the checkout's."""
    # Built from a copy of the sources: the build leaves the checkout alone.
    source = tmp_path / 'source'
    shutil.copytree(osp.join(REPO, 'samsa_geo'), source / 'samsa_geo',
                    ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('setup.cfg', 'pyproject.toml', 'README.md'):
        shutil.copy(osp.join(REPO, name), source / name)
    target, cache = tmp_path / 'site', tmp_path / 'cache'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps',
                    '--no-build-isolation', '--disable-pip-version-check',
                    '--target', str(target), str(source)],
                   check=True, capture_output=True)
    assert not (target / 'datasets').exists()
    code = ('import os.path as osp, samsa_geo\n'
            'from samsa_geo.datasets import sample_root\n'
            'root = sample_root("modelnet40")\n'
            'stamp = osp.getmtime(osp.join(root, "README.md"))\n'
            'print(samsa_geo.__file__, root, sample_root("shapenet_part"),\n'
            '      sample_root("lrgb"))\n'
            '# a second call finds the sample instead of writing it again\n'
            'assert sample_root("modelnet40") == root\n'
            'assert osp.getmtime(osp.join(root, "README.md")) == stamp\n')
    env = dict(os.environ, PYTHONPATH=str(target),
               SAMSA_GEO_DATA=str(cache), OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-c', code], env=env, check=True,
                         capture_output=True, text=True, cwd=str(tmp_path))
    package, modelnet, shapenet, peptides = out.stdout.split()
    assert package.startswith(str(target))
    assert modelnet == str(cache / 'modelnet40_sample')
    assert shapenet == str(cache / 'shapenet_part_sample')
    assert peptides == str(cache / 'lrgb_sample')
    for committed, fresh in ((MODELNET_SAMPLE, modelnet),
                             (SHAPENET_SAMPLE, shapenet),
                             (LRGB_SAMPLE, peptides)):
        names = _files(committed)
        assert names == _files(fresh)
        _, mismatch, errors = filecmp.cmpfiles(committed, fresh, names,
                                               shallow=False)
        assert mismatch == [] and errors == []
