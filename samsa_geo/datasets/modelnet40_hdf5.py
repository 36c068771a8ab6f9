import os.path as osp
from typing import Callable, List, Optional

import torch
from torch_geometric.data import Data

from samsa_geo.datasets._modelnet_archive import ModelNetArchive
from samsa_geo.datasets._process import prepare, read_lines
from samsa_geo.datasets._split import check_split_args


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
        check_split_args(split, num_points, val_ratio)
        self.split = split
        self.num_points = num_points
        self.val_ratio = val_ratio
        super().__init__(root, transform, pre_transform, pre_filter,
                         force_reload=force_reload)
        self.load_split(split, val_ratio, use_normals, self.raw_paths[0])

    @property
    def raw_file_names(self) -> List[str]:
        return ['shape_names.txt', 'train_files.txt', 'test_files.txt']

    @property
    def processed_file_names(self) -> List[str]:
        return [f'modelnet40_hdf5_{self.num_points}_{split}.pt'
                for split in ('train', 'test')]

    def process(self) -> None:
        import h5py

        for list_file, out in zip(self.raw_paths[1:], self.processed_paths):
            data_list = []
            for file in read_lines(list_file):
                path = osp.join(self.raw_dir, osp.basename(file))
                with h5py.File(path, 'r') as h5:
                    pos = torch.from_numpy(h5['data'][:].astype('float32'))
                    y = torch.from_numpy(h5['label'][:].astype('int64'))
                    normal = (torch.from_numpy(h5['normal'][:].astype(
                        'float32')) if 'normal' in h5 else None)
                if pos.dim() != 3 or pos.size(-1) != 3:
                    raise ValueError(f"Expected 'data' of '{path}' to have "
                                     f"shape [M, P, 3] "
                                     f"(got {list(pos.size())})")
                if pos.size(1) < self.num_points:
                    raise ValueError(f"Expected at least num_points="
                                     f"{self.num_points} points per shape in "
                                     f"'{path}' (got {pos.size(1)})")
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
