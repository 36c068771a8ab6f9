import os.path as osp
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data

from samsa_geo.datasets._modelnet_archive import ModelNetArchive
from samsa_geo.datasets._process import prepare, read_lines
from samsa_geo.io import DamagedFileError


def read_h5(h5py: Any, path: str) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    r"""The :obj:`data`, :obj:`label` and optional :obj:`normal` datasets
    of one archive file; errors name the file."""
    try:
        with h5py.File(path, 'r') as h5:
            missing = [k for k in ('data', 'label') if k not in h5]
            if missing:
                raise DamagedFileError(
                    f"Expected datasets 'data' and 'label' in '{path}' (it "
                    f"lacks {missing}; it holds {sorted(h5.keys())})")
            pos = torch.from_numpy(h5['data'][:].astype('float32'))
            y = torch.from_numpy(h5['label'][:].astype('int64')).view(-1)
            normal = (torch.from_numpy(h5['normal'][:].astype('float32'))
                      if 'normal' in h5 else None)
    except (OSError, KeyError, ValueError, TypeError) as e:
        if isinstance(e, DamagedFileError):
            raise
        raise DamagedFileError(
            f"Cannot read the HDF5 file '{path}' ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); it is truncated "
            f"or not an HDF5 file: re-extract it from the archive") from e
    return pos, y, normal


def check_samples(path: str, pos: Tensor, normal: Optional[Tensor],
                  y: Tensor, num_classes: int) -> None:
    r"""Labels in :math:`[0, C)` and finite coordinates; errors name the
    file and the first sample at fault."""
    bad = ((y < 0) | (y >= num_classes)).nonzero().view(-1)
    if bad.numel() > 0:
        i = int(bad[0])
        raise DamagedFileError(
            f"Expected labels in [0, {num_classes}) (the classes of "
            f"'shape_names.txt') in '{path}' (sample {i} has label "
            f"{int(y[i])}; {bad.numel()} sample(s) out of range)")
    for name, value in (('data', pos), ('normal', normal)):
        if value is None:
            continue
        bad = (~torch.isfinite(value).view(value.size(0), -1).all(1)
               ).nonzero().view(-1)  # [num_bad]
        if bad.numel() > 0:
            raise DamagedFileError(
                f"Expected finite '{name}' in '{path}' (sample {int(bad[0])} "
                f"holds NaN or infinity; {bad.numel()} sample(s) affected)")


class ModelNet40HDF5(ModelNetArchive):
    r"""The ModelNet40 point clouds of the :obj:`modelnet40_ply_hdf5_2048`
    archive of `"PointNet" <https://arxiv.org/abs/1612.00593>`_ (2,048
    points per shape, unit sphere, :math:`y` up), used by DGCNN and PCT.

    The archive is read from :obj:`root/modelnet40_ply_hdf5_2048/`:
    :obj:`shape_names.txt`, :obj:`train_files.txt` and :obj:`test_files.txt`
    (one :obj:`.h5` path per line, e.g.
    :obj:`data/modelnet40_ply_hdf5_2048/ply_data_train0.h5`; the base name is
    looked up in the folder), and the :obj:`.h5` files with datasets
    :obj:`data` :math:`(M, 2048, 3)`, :obj:`label` :math:`(M, 1)` and
    optionally :obj:`normal` :math:`(M, 2048, 3)`. Requires :obj:`h5py`.

    Args:
        root (str): Folder holding :obj:`modelnet40_ply_hdf5_2048/`;
            :obj:`processed/` is written next to it.
        split (str, optional): :obj:`"train"`, :obj:`"val"` (a seeded
            per-class hold-out of :obj:`val_ratio` of the training files,
            removed from :obj:`"train"`) or :obj:`"test"`.
            (default: :obj:`"train"`)
        num_points (int, optional): The first :obj:`num_points` points of
            each shape are kept. (default: :obj:`1024`)
        use_normals (bool, optional): Keep :obj:`data.normal` when the files
            have normals. (default: :obj:`False`)
        val_ratio (float, optional): Hold-out fraction for :obj:`"val"`.
            (default: :obj:`0.0`)
        transform (callable, optional): Applied at every access.
        pre_transform (callable, optional): Applied once before saving.
        pre_filter (callable, optional): Keeps shapes it returns
            :obj:`True` for.
        force_reload (bool, optional): Re-process. (default: :obj:`False`)

    Shapes:
        - :obj:`pos` :math:`(N, 3)`, optional :obj:`normal` :math:`(N, 3)`,
          :obj:`y` :math:`(1)`
    """
    url = ('https://shapenet.cs.stanford.edu/media/'
           'modelnet40_ply_hdf5_2048.zip')
    folder = 'modelnet40_ply_hdf5_2048'

    def __init__(
        self,
        root: str,
        split: str = 'train',
        num_points: int = 1024,
        use_normals: bool = False,
        val_ratio: float = 0.0,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        force_reload: bool = False,
    ) -> None:
        super().__init__(root, split, num_points, use_normals, val_ratio,
                         transform, pre_transform, pre_filter, force_reload)

    @property
    def raw_file_names(self) -> List[str]:
        return ['shape_names.txt', 'train_files.txt', 'test_files.txt']

    @property
    def processed_file_names(self) -> List[str]:
        return [f'modelnet40_hdf5_{self.num_points}_{split}.pt'
                for split in ('train', 'test')]

    def process(self) -> None:
        import h5py

        num_classes = len(read_lines(self.raw_paths[0]))
        for list_file, out in zip(self.raw_paths[1:], self.processed_paths):
            data_list = []
            for file in read_lines(list_file):
                path = osp.join(self.raw_dir, osp.basename(file))
                pos, y, normal = read_h5(h5py, path)
                if pos.dim() != 3 or pos.size(-1) != 3:
                    raise DamagedFileError(
                        f"Expected 'data' of '{path}' to have shape "
                        f"[M, P, 3] (got {list(pos.size())})")
                if y.numel() != pos.size(0):
                    raise DamagedFileError(
                        f"Expected one 'label' per shape in '{path}' (got "
                        f"{y.numel()} labels for {pos.size(0)} shapes)")
                if pos.size(1) < self.num_points:
                    raise DamagedFileError(
                        f"Expected at least num_points={self.num_points} "
                        f"points per shape in '{path}' (got {pos.size(1)})")
                check_samples(path, pos, normal, y, num_classes)
                y = y.view(-1)  # [M]
                for i in range(pos.size(0)):
                    data = Data(pos=pos[i, :self.num_points].clone(),
                                y=y[i:i + 1].clone())
                    if normal is not None:
                        data.normal = normal[i, :self.num_points].clone()
                    data = prepare(data, self.pre_filter,
                                   self.pre_transform)
                    if data is not None:
                        data_list.append(data)
            self.save(data_list, out)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({len(self)}, split={self.split}, '
                f'num_points={self.num_points})')
