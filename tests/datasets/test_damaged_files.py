r"""Damaged, crafted and changed data files: every loader names the file
(and the line or sample), reads caches without running code, and rebuilds
a cache whose raw files changed."""
import os
import os.path as osp
import pickle
import re

import numpy as np
import pytest
import torch
from torch_geometric.data import Data, InMemoryDataset

from samsa_geo.datasets import (FreeSolv, LRGBDataset, ModelNet40HDF5,
                                ModelNet40NormalResampled, ShapeNetPart,
                                modelnet_princeton)
from samsa_geo.datasets._checked_cache import CheckedCache
from samsa_geo.datasets.modelnet_princeton import PrincetonModelNet
from samsa_geo.io import DamagedFileError, UnsafeFileError
from samsa_geo.testing import CraftedPayload, write_lrgb_raw

CLASSES = ['cone', 'cube']
POINTS = 32


def write_resampled(root, points=POINTS):
    r"""A two-class archive in the modelnet40_normal_resampled layout;
    returns the path of one shape file."""
    folder = osp.join(root, 'modelnet40_normal_resampled')
    gen = np.random.default_rng(0)
    ids = {'train': [], 'test': []}
    for cls in CLASSES:
        os.makedirs(osp.join(folder, cls))
        for i in range(1, 4):
            shape_id = f'{cls}_{i:04d}'
            table = gen.uniform(-1, 1, (points, 6))
            np.savetxt(osp.join(folder, cls, f'{shape_id}.txt'), table,
                       fmt='%.6f', delimiter=',')
            ids['test' if i == 3 else 'train'].append(shape_id)
    for name, lines in [('shape_names', CLASSES), *ids.items()]:
        with open(osp.join(folder, f'modelnet40_{name}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return osp.join(folder, 'cube', 'cube_0002.txt')


def resampled(root, **kw):
    return ModelNet40NormalResampled(str(root), num_points=16, **kw)


def replace_line(path, number, text):
    with open(path) as f:
        lines = f.readlines()
    lines[number - 1] = text + '\n'
    with open(path, 'w') as f:
        f.writelines(lines)


@pytest.mark.parametrize('damage,line,match', [
    ('short_row', 5, r"Expected 6 fields 'x,y,z,nx,ny,nz' on line 5 of "
                     r"'{path}' \(got 2: '0.1,0.2'\); the file is truncated"),
    ('not_a_number', 3, r"Expected numbers on line 3 of '{path}' "
                        r"\(got 'abc'\)"),
    ('nan', 7, r"Expected finite values on line 7 of '{path}'"),
    ('overflow', 2, r"Expected finite values on line 2 of '{path}' .*"
                    r"beyond float32's 3.4e38"),
    ('bytes', 4, r"Expected text in '{path}' \(line 4 holds bytes that "
                 r"are not UTF-8"),
])
def test_modelnet_text_errors_name_file_and_line(tmp_path, damage, line,
                                                 match):
    path = write_resampled(tmp_path)
    text = {'short_row': '0.1,0.2', 'not_a_number': '0,0,abc,0,0,1',
            'nan': '0,0,nan,0,0,1', 'overflow': '1e39,0,0,0,0,1'}
    if damage == 'bytes':
        with open(path, 'rb') as f:
            lines = f.readlines()
        lines[line - 1] = bytes(range(128, 200)) + b'\n'
        with open(path, 'wb') as f:
            f.writelines(lines)
    else:
        replace_line(path, line, text[damage])
    with pytest.raises(DamagedFileError,
                       match=match.format(path=re.escape(path))):
        resampled(tmp_path)


def test_modelnet_point_count_is_checked(tmp_path):
    path = write_resampled(tmp_path)
    with open(path) as f:
        lines = f.readlines()
    with open(path, 'w') as f:  # 14 points, the last line cut
        f.writelines(lines[:13] + [lines[13][:9]])
    with pytest.raises(DamagedFileError, match=rf"line 14 of "
                       rf"'{re.escape(path)}'"):
        resampled(tmp_path)
    with open(path, 'w') as f:  # 14 whole points
        f.writelines(lines[:14])
    with pytest.raises(DamagedFileError, match=rf"at least num_points=16 "
                       rf"points in '{re.escape(path)}' \(got 14\)"):
        resampled(tmp_path, force_reload=True)


def test_crafted_cache_runs_nothing(tmp_path):
    write_resampled(tmp_path)
    ds = resampled(tmp_path)
    assert len(ds) == 4
    cache = ds.processed_paths[0]
    ran = tmp_path / 'ran'
    torch.save(({'pos': CraftedPayload(ran)}, {}, Data), cache)
    with pytest.raises(UnsafeFileError, match=rf"Cache file "
                       rf"'{re.escape(cache)}' \(\d+ bytes\) holds code or "
                       rf"types .* \('io.open'\)"):
        resampled(tmp_path)
    assert not ran.exists()
    # PyG's own loader retries without weights_only and runs the payload.
    with pytest.warns(UserWarning, match='Weights only load failed'):
        InMemoryDataset.load(ds, cache)
    assert ran.exists()
    ran.unlink()
    # PyG's own pre_transform.pt check would unpickle it without
    # weights_only: it is checked first.
    ds = resampled(tmp_path, force_reload=True)
    marker = osp.join(ds.processed_dir, 'pre_transform.pt')
    torch.save(CraftedPayload(ran), marker)
    with pytest.raises(UnsafeFileError, match='pre_transform.pt'):
        resampled(tmp_path)
    assert not ran.exists()


def test_damaged_cache_is_named(tmp_path):
    write_resampled(tmp_path)
    cache = resampled(tmp_path).processed_paths[0]
    with open(cache, 'r+b') as f:
        f.truncate(100)
    with pytest.raises(DamagedFileError, match=rf"Cache file "
                       rf"'{re.escape(cache)}' \(100 bytes\) is truncated or "
                       rf"corrupted .* force_reload=True"):
        resampled(tmp_path)


def test_changed_raw_file_rebuilds_cache(tmp_path):
    path = write_resampled(tmp_path)
    before = resampled(tmp_path)
    replace_line(path, 1, '0.5,0.5,0.5,0,0,1')
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 10**9))
    with pytest.warns(UserWarning, match="raw files under .* changed"):
        after = resampled(tmp_path)
    i = 3  # cube_0002: the 2nd cube of the training list
    assert not torch.equal(before[i].pos, after[i].pos)
    assert after[i].pos[0].tolist() == [0.5, 0.5, 0.5]
    # Unchanged raw files: the cache is reused without a warning.
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert torch.equal(resampled(tmp_path)[i].pos, after[i].pos)


def write_h5(root, damage):
    h5py = pytest.importorskip('h5py')
    folder = osp.join(root, 'modelnet40_ply_hdf5_2048')
    os.makedirs(folder)
    data = np.random.default_rng(0).uniform(-1, 1, (3, 32, 3))
    label = np.array([[0], [1], [2]], dtype='uint8')
    path = osp.join(folder, 'ply_data_train0.h5')
    if damage == 'nan':
        data[1, 5, 2] = np.nan
    if damage == 'label_range':
        label[2, 0] = 40
    with h5py.File(path, 'w') as f:
        f.create_dataset('data', data=data.astype('float32'))
        if damage != 'no_label':
            f.create_dataset('label', data=label)
    if damage == 'truncate':
        with open(path, 'r+b') as f:
            f.truncate(os.path.getsize(path) // 2)
    elif damage == 'garbage':
        with open(path, 'wb') as f:
            f.write(os.urandom(4096))
    for split in ('train', 'test'):
        with open(osp.join(folder, f'{split}_files.txt'), 'w') as f:
            f.write('data/modelnet40_ply_hdf5_2048/ply_data_train0.h5\n')
    with open(osp.join(folder, 'shape_names.txt'), 'w') as f:
        f.write('a\nb\nc\n')
    return path


@pytest.mark.parametrize('damage,match', [
    ('truncate', r"Cannot read the HDF5 file '{path}' \(OSError: .*\); it "
                 r"is truncated or not an HDF5 file"),
    ('garbage', r"Cannot read the HDF5 file '{path}'"),
    ('no_label', r"Expected datasets 'data' and 'label' in '{path}' \(it "
                 r"lacks \['label'\]; it holds \['data'\]\)"),
    ('label_range', r"Expected labels in \[0, 3\) .* in '{path}' \(sample 2 "
                    r"has label 40"),
    ('nan', r"Expected finite 'data' in '{path}' \(sample 1 holds NaN"),
])
def test_hdf5_errors_name_file_and_sample(tmp_path, damage, match):
    path = write_h5(str(tmp_path), damage)
    with pytest.raises(DamagedFileError,
                       match=match.format(path=re.escape(path))):
        ModelNet40HDF5(str(tmp_path), num_points=16)


def shapenet_file(root):
    folder = osp.join(root, ShapeNetPart.folder, '03797390')  # Mug
    return osp.join(folder, sorted(os.listdir(folder))[0])


@pytest.mark.parametrize('damage,match', [
    ('cut', r"Expected 7 fields 'x y z nx ny nz part' on line 14 of "
            r"'{path}' \(got 3"),
    ('label', r"Expected part labels in \[36, 37\] \(category 'Mug'\) in "
              r"'{path}' \(point 3 has label 12"),
    ('nan', r"Expected finite values on line 2 of '{path}'"),
])
def test_shapenet_errors_name_file_and_line(shapenet_root, damage, match):
    path = shapenet_file(shapenet_root)
    with open(path) as f:
        lines = f.readlines()
    if damage == 'cut':  # 14 of the points, the last line cut
        lines = lines[:13] + [' '.join(lines[13].split()[:3])]
    elif damage == 'label':
        lines[3] = ' '.join(lines[3].split()[:6] + ['12']) + '\n'
    else:
        lines[1] = 'nan ' + ' '.join(lines[1].split()[1:]) + '\n'
    with open(path, 'w') as f:
        f.writelines(lines)
    with pytest.raises(DamagedFileError,
                       match=match.format(path=re.escape(path))):
        ShapeNetPart(shapenet_root, categories='Mug', split='test')


@pytest.mark.parametrize('name,file', [('PascalVOC-SP', 'train.pickle'),
                                       ('Peptides-func', 'val.pt')])
def test_crafted_lrgb_raw_file_runs_nothing(tmp_path, forbid, name, file):
    forbid(LRGBDataset, 'download')
    raw_dir = write_lrgb_raw(str(tmp_path), name)
    path, ran = osp.join(raw_dir, file), tmp_path / 'ran'
    if file.endswith('.pickle'):
        with open(path, 'wb') as f:
            pickle.dump([CraftedPayload(ran)], f)
    else:
        torch.save([CraftedPayload(ran)], path)
    with pytest.raises(UnsafeFileError, match=rf"Raw LRGB file "
                       rf"'{re.escape(path)}' .*holds code or types .*"
                       rf"'io.open'"):
        LRGBDataset(str(tmp_path), name)
    assert not ran.exists()


def test_lrgb_wrong_name_and_offline_download(tmp_path, offline):
    with pytest.raises(ValueError, match=r"Expected 'name' to be one of "
                       r"\[.*'peptides-func'.*\] \(case-insensitive; got "
                       r"'peptides'\)"):
        LRGBDataset(str(tmp_path), 'peptides')
    raw = osp.abspath(osp.join(tmp_path, 'peptides-func', 'raw'))
    with pytest.raises(RuntimeError, match=rf"Could not download "
                       rf"'peptidesfunc.zip' .*\(OSError: network "
                       rf"unreachable\).* rename its folder 'peptidesfunc' "
                       rf"to '{re.escape(raw)}', so that it holds train.pt, "
                       rf"val.pt, test.pt"):
        LRGBDataset(str(tmp_path), 'Peptides-func')


def test_princeton_on_the_wrong_folder(tmp_path, offline):
    write_resampled(tmp_path)  # the archive of another format
    with pytest.raises(RuntimeError, match=r"Could not download "
                       r"'ModelNet40.zip' .*\(OSError: network "
                       r"unreachable\).*holds 'modelnet40_normal_"
                       r"resampled/' \(use format 'normal_resampled'\).* "
                       r"one folder per class"):
        modelnet_princeton(str(tmp_path))


@pytest.mark.parametrize('cls', [ModelNet40NormalResampled, ModelNet40HDF5,
                                 ShapeNetPart, LRGBDataset, FreeSolv,
                                 PrincetonModelNet])
def test_every_loader_has_the_checked_cache(cls):
    # The tests above exercise CheckedCache through three of the loaders;
    # every loader of samsa_geo must use it (first in the bases, so that its
    # load() and _process() replace PyG's).
    assert cls.__mro__.index(CheckedCache) < cls.__mro__.index(
        InMemoryDataset)


@pytest.mark.parametrize('damage', ['nan', 'label'])
def test_lrgb_values_are_checked_at_load(tmp_path, forbid, damage):
    forbid(LRGBDataset, 'download')
    raw_dir = write_lrgb_raw(str(tmp_path), 'PascalVOC-SP')
    path = osp.join(raw_dir, 'val.pickle')
    with open(path, 'rb') as f:
        graphs = pickle.load(f)
    x, edge_attr, edge_index, y = graphs[1]
    if damage == 'nan':
        x = x.clone()
        x[2, 5] = float('nan')
    else:
        y = y.copy()  # a NumPy array, as in the real pickles
        y[0] = 21
    graphs[1] = (x, edge_attr, edge_index, y)
    with open(path, 'wb') as f:
        pickle.dump(graphs, f)
    LRGBDataset(str(tmp_path), 'PascalVOC-SP', split='train')  # intact
    match = (r"Expected finite 'x' in '{}' \(graph 1 holds NaN" if damage ==
             'nan' else r"Expected labels in \[0, 21\) in '{}' \(graph 1 has "
             r"label 21\)")
    with pytest.raises(DamagedFileError,
                       match=match.format(re.escape(path))):
        LRGBDataset(str(tmp_path), 'PascalVOC-SP', split='val')
