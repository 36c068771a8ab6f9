r"""Downloads and archives: an interrupted download, a truncated or
corrupted zip, and a failed extraction leave nothing that a later run
reads, and the errors name the zip and say what to do."""
import os
import os.path as osp
import re
import zipfile
import zlib

import pytest
import torch

import samsa_geo.datasets._download as download
from samsa_geo.datasets import (LRGBDataset, ModelNet40NormalResampled,
                                ShapeNetPart)
from samsa_geo.datasets._download import extract_archive
from samsa_geo.io import DamagedFileError
from samsa_geo.testing import write_lrgb_raw

SHAPENET = 'shapenetcore_partanno_segmentation_benchmark_v0_normal'
RESAMPLED = 'modelnet40_normal_resampled'


def make_zip(path, source, folder):
    r"""Zips :obj:`source` as the folder :obj:`folder` of the archive."""
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as f:
        for top, dirs, files in os.walk(source):
            dirs.sort()
            for name in sorted(files):
                full = osp.join(top, name)
                f.write(full, osp.join(folder, osp.relpath(full, source)))
    with open(path, 'rb') as f:
        return f.read()


def corrupt_member(data, path, member):
    r""":obj:`data` (the bytes of the zip :obj:`path`) with one byte of the
    compressed data of :obj:`member` flipped."""
    with zipfile.ZipFile(path) as f:
        info = f.getinfo(member)
    start = (info.header_offset + 30 + len(info.filename.encode())
             + len(info.extra))
    out = bytearray(data)
    out[start + 10] ^= 0xFF
    return bytes(out)


class Server:
    r"""Stands in for PyG's :func:`download_url`: writes :obj:`payload`
    (cut to :obj:`cut` bytes, then raises, if :obj:`cut` is set) and, like
    PyG's, reuses a file that is already there."""
    def __init__(self, payload, cut=None):
        self.payload, self.cut, self.calls = payload, cut, 0

    def __call__(self, url, folder, log=True, filename=None):
        self.calls += 1
        path = osp.join(folder, filename or url.rpartition('/')[2])
        if osp.exists(path):
            return path
        with open(path, 'wb') as f:
            f.write(self.payload[:self.cut])
        if self.cut is not None:
            raise ConnectionResetError('connection reset by peer')
        return path


def entries(folder):
    r"""Every file and folder under :obj:`folder`, relative to it."""
    out = []
    for top, dirs, files in os.walk(folder):
        out += [osp.relpath(osp.join(top, n), folder) for n in dirs + files]
    return sorted(out)


def mug_test_pos(root):
    return [d.pos for d in ShapeNetPart(root, categories='Mug',
                                        split='test')]


@pytest.fixture
def shapenet_zip(tmp_path, shapenet_root):
    path = str(tmp_path / 'archive.zip')
    return path, make_zip(path, osp.join(shapenet_root, SHAPENET), SHAPENET)


def test_interrupted_download_then_a_successful_run(tmp_path, monkeypatch,
                                                    modelnet_root):
    path = str(tmp_path / 'archive.zip')
    payload = make_zip(path, osp.join(modelnet_root, RESAMPLED), RESAMPLED)
    root = str(tmp_path / 'root')
    monkeypatch.setattr(download, 'download_url',
                        Server(payload, cut=len(payload) // 2))
    for _ in range(2):  # each run tries again, none reuses the cut file
        with pytest.raises(RuntimeError, match=r"Could not download "
                           r"'modelnet40_normal_resampled.zip' .*"
                           r"\(ConnectionResetError: connection reset by "
                           r"peer\)"):
            ModelNet40NormalResampled(root, split='test')
        assert entries(root) == [RESAMPLED]  # PyG's empty raw folder
    server = Server(payload)
    monkeypatch.setattr(download, 'download_url', server)
    ds = ModelNet40NormalResampled(root, split='test')
    assert server.calls == 1
    ref = ModelNet40NormalResampled(modelnet_root, split='test')
    assert len(ds) == len(ref) == 40
    assert torch.equal(ds.pos, ref.pos) and torch.equal(ds.y, ref.y)
    assert entries(osp.join(root, RESAMPLED)) == entries(
        osp.join(modelnet_root, RESAMPLED))
    assert not [e for e in os.listdir(root) if e.endswith('.part')
                or e.endswith('.extracting')]


def test_stale_part_file_is_not_reused(tmp_path, monkeypatch, shapenet_root,
                                       shapenet_zip):
    # A download killed outright leaves its '.part' file.
    _, payload = shapenet_zip
    root = str(tmp_path / 'root')
    os.makedirs(root)
    with open(osp.join(root, f'{SHAPENET}.zip.part'), 'wb') as f:
        f.write(payload[:1000])
    monkeypatch.setattr(download, 'download_url', Server(payload))
    pos = mug_test_pos(root)
    assert len(pos) == 4
    for a, b in zip(pos, mug_test_pos(shapenet_root)):
        assert torch.equal(a, b)
    assert sorted(os.listdir(root)) == ['processed', SHAPENET,
                                        f'{SHAPENET}.zip']


def test_downloaded_truncated_zip_is_deleted(tmp_path, monkeypatch,
                                             shapenet_root, shapenet_zip):
    # The server closed the connection early without an error.
    _, payload = shapenet_zip
    root = str(tmp_path / 'root')
    monkeypatch.setattr(download, 'download_url',
                        Server(payload[:len(payload) // 2]))
    path = osp.abspath(osp.join(root, f'{SHAPENET}.zip'))
    with pytest.raises(DamagedFileError, match=rf"Cannot read the zip "
                       rf"archive '{re.escape(path)}': BadZipFile: .*It was "
                       rf"just downloaded from .* and has been deleted: run "
                       rf"again to download it anew"):
        ShapeNetPart(root, categories='Mug', split='test')
    assert entries(root) == [SHAPENET]  # PyG's empty raw folder
    monkeypatch.setattr(download, 'download_url', Server(payload))
    for a, b in zip(mug_test_pos(root), mug_test_pos(shapenet_root)):
        assert torch.equal(a, b)


def test_hand_placed_truncated_zip_is_named(tmp_path, monkeypatch,
                                            shapenet_root, shapenet_zip):
    _, payload = shapenet_zip
    root = str(tmp_path / 'root')
    os.makedirs(root)
    path = osp.join(root, f'{SHAPENET}.zip')
    with open(path, 'wb') as f:
        f.write(payload[:len(payload) // 2])
    monkeypatch.setattr(download, 'download_url', None)  # never called
    for _ in range(2):
        with pytest.raises(DamagedFileError, match=rf"Cannot read the zip "
                           rf"archive '{re.escape(path)}': BadZipFile: File "
                           rf"is not a zip file; the archive is truncated or "
                           rf"corrupted. It was not downloaded by this run .*"
                           rf"delete '{re.escape(osp.abspath(path))}' so that "
                           rf"the next run downloads it again, or replace it "
                           rf"with an intact copy"):
            ShapeNetPart(root, categories='Mug', split='test')
        assert osp.getsize(path) == len(payload) // 2  # kept
        assert entries(osp.join(root, SHAPENET)) == []
    with open(path, 'wb') as f:  # replaced, as the error says
        f.write(payload)
    for a, b in zip(mug_test_pos(root), mug_test_pos(shapenet_root)):
        assert torch.equal(a, b)


@pytest.mark.parametrize('downloaded', [False, True])
def test_corrupt_member_is_named_and_nothing_extracted(
        tmp_path, monkeypatch, shapenet_root, shapenet_zip, downloaded):
    source, payload = shapenet_zip
    member = f'{SHAPENET}/03797390/synthetic_mug_0016.txt'
    bad = corrupt_member(payload, source, member)
    root = str(tmp_path / 'root')
    os.makedirs(root)
    path = osp.join(root, f'{SHAPENET}.zip')
    if downloaded:
        monkeypatch.setattr(download, 'download_url', Server(bad))
    else:
        with open(path, 'wb') as f:
            f.write(bad)
    with pytest.raises(DamagedFileError, match=rf"Cannot read the zip "
                       rf"archive '{re.escape(path)}' \(member "
                       rf"'{re.escape(member)}'\): (zlib.error|BadZipFile): "):
        ShapeNetPart(root, categories='Mug', split='test')
    # Nothing that a later run would read: no file of the archive, no
    # half-extracted folder; a downloaded zip is deleted, a placed one kept.
    assert entries(osp.join(root, SHAPENET)) == []
    expected = [SHAPENET] if downloaded else [SHAPENET, f'{SHAPENET}.zip']
    assert sorted(os.listdir(root)) == expected


def test_failed_extraction_leaves_nothing(tmp_path, monkeypatch,
                                          shapenet_root, shapenet_zip):
    # A failure while writing (here: a damaged member that the check did not
    # see) removes the temporary folder and leaves the target as it was.
    source, payload = shapenet_zip
    member = f'{SHAPENET}/03797390/synthetic_mug_0016.txt'
    root = str(tmp_path / 'root')
    os.makedirs(osp.join(root, SHAPENET))
    with open(osp.join(root, f'{SHAPENET}.zip'), 'wb') as f:
        f.write(corrupt_member(payload, source, member))
    monkeypatch.setattr(download, 'check_archive', lambda path: None)
    with pytest.raises((zlib.error, zipfile.BadZipFile)):
        ShapeNetPart(root, categories='Mug', split='test')
    assert entries(osp.join(root, SHAPENET)) == []
    assert sorted(os.listdir(root)) == [SHAPENET, f'{SHAPENET}.zip']


def test_extract_archive_renames_or_merges(tmp_path):
    src = tmp_path / 'src' / 'top'
    (src / 'sub').mkdir(parents=True)
    (src / 'a.txt').write_text('new a')
    (src / 'sub' / 'b.txt').write_text('b')
    path = str(tmp_path / 'x.zip')
    make_zip(path, str(src), 'top')
    # An absent or empty target: the folder is renamed into place.
    for target in (tmp_path / 'absent', tmp_path / 'empty'):
        if target.name == 'empty':
            target.mkdir()
        extract_archive(path, 'top', str(target))
        assert entries(str(target)) == ['a.txt', 'sub', 'sub/b.txt']
        assert (target / 'a.txt').read_text() == 'new a'
    # A target holding files: the archive's replace theirs, others stay.
    target = tmp_path / 'partial'
    (target / 'sub').mkdir(parents=True)
    (target / 'a.txt').write_text('old a')
    (target / 'sub' / 'mine.txt').write_text('mine')
    extract_archive(path, 'top', str(target), files=['a.txt'])
    assert entries(str(target)) == ['a.txt', 'sub', 'sub/b.txt',
                                    'sub/mine.txt']
    assert (target / 'a.txt').read_text() == 'new a'
    assert (target / 'sub' / 'mine.txt').read_text() == 'mine'
    # An archive without the folder.
    with pytest.raises(RuntimeError, match=rf"Expected the archive "
                       rf"'{re.escape(path)}' to hold the folder 'other/' "
                       rf"\(it holds \['top'\]\)"):
        extract_archive(path, 'other', str(tmp_path / 'none'))
    assert not (tmp_path / 'none').exists()
    assert not [e for e in os.listdir(tmp_path) if e.endswith('.extracting')]


def lrgb_zip(tmp_path):
    raw = write_lrgb_raw(str(tmp_path / 'made'), 'peptides-func')
    path = str(tmp_path / 'peptidesfunc-archive.zip')
    return make_zip(path, raw, 'peptidesfunc'), raw


def test_lrgb_interrupted_download_then_a_successful_run(tmp_path,
                                                         monkeypatch):
    payload, raw = lrgb_zip(tmp_path)
    root = str(tmp_path / 'root')
    monkeypatch.setattr(download, 'download_url',
                        Server(payload, cut=len(payload) // 2))
    with pytest.raises(RuntimeError, match=r"Could not download "
                       r"'peptidesfunc.zip' .*\(ConnectionResetError: "):
        LRGBDataset(root, 'Peptides-func', split='val')
    assert entries(root) == ['peptides-func', 'peptides-func/raw']
    monkeypatch.setattr(download, 'download_url', Server(payload))
    ds = LRGBDataset(root, 'Peptides-func', split='val')
    graphs = torch.load(osp.join(raw, 'val.pt'))
    assert len(ds) == len(graphs) == 2
    for data, graph in zip(ds, graphs):
        assert torch.equal(data.x, graph[0]) and torch.equal(data.y, graph[3])
    # PyG deletes the zip once extracted; the raw folder is the archive's.
    assert sorted(os.listdir(root)) == ['peptides-func']
    assert sorted(os.listdir(osp.join(root, 'peptides-func', 'raw'))) == [
        'test.pt', 'train.pt', 'val.pt']


def test_lrgb_hand_placed_truncated_zip_is_named(tmp_path, monkeypatch):
    payload, _ = lrgb_zip(tmp_path)
    root = str(tmp_path / 'root')
    os.makedirs(root)
    path = osp.join(root, 'peptidesfunc.zip')
    with open(path, 'wb') as f:
        f.write(payload[:len(payload) // 2])
    monkeypatch.setattr(download, 'download_url', None)  # never called
    with pytest.raises(DamagedFileError, match=rf"Cannot read the zip "
                       rf"archive '{re.escape(path)}': BadZipFile: .*delete "
                       rf"'{re.escape(osp.abspath(path))}' so that the next "
                       rf"run downloads it again, or replace it with an "
                       rf"intact copy. Download that official LRGB archive"):
        LRGBDataset(root, 'Peptides-func')
    assert entries(osp.join(root, 'peptides-func')) == ['raw']
    with open(path, 'wb') as f:
        f.write(payload)
    assert len(LRGBDataset(root, 'Peptides-func')) == 4
