import os.path as osp
from typing import Callable, List, Optional

import torch
from torch_geometric.data import Data

from samsa_geo.datasets._modelnet_archive import ModelNetArchive
from samsa_geo.datasets._process import prepare, read_lines, read_table
from samsa_geo.io import DamagedFileError
from samsa_geo.ops import fps


class ModelNet40NormalResampled(ModelNetArchive):
    r"""The ModelNet40 (or ModelNet10) point clouds with normals of the
    :obj:`modelnet40_normal_resampled` archive used by PointNet++ and most
    point transformers: 10,000 points with unit normals per shape, sampled
    from the `"3D ShapeNets" <https://arxiv.org/abs/1406.5670>`_ CAD models
    and normalised to the unit sphere, :math:`y` up.

    The archive is read from :obj:`root/modelnet40_normal_resampled/`:
    :obj:`modelnet40_shape_names.txt` (one class per line),
    :obj:`modelnet40_train.txt` and :obj:`modelnet40_test.txt` (shape ids such
    as :obj:`airplane_0001`), and one file per shape
    :obj:`{class}/{class}_{0001}.txt` with lines :obj:`x,y,z,nx,ny,nz`.
    The bundled sample :obj:`datasets/modelnet40_sample` has this layout.
    Each shape keeps its first :obj:`num_points` points (the files are
    already uniformly resampled) or a farthest point sample of them.

    Args:
        root (str): Folder holding :obj:`modelnet40_normal_resampled/`;
            :obj:`processed/` is written next to it.
        split (str, optional): :obj:`"train"`, :obj:`"val"` or
            :obj:`"test"`. :obj:`"val"` is a per-class hold-out of
            :obj:`val_ratio` of the official training list, removed from
            :obj:`"train"`. (default: :obj:`"train"`)
        name (str, optional): :obj:`"40"` or :obj:`"10"` (reads the
            :obj:`modelnet10_*.txt` lists of the same archive).
            (default: :obj:`"40"`)
        num_points (int, optional): Points kept per shape.
            (default: :obj:`1024`)
        use_normals (bool, optional): Keep :obj:`data.normal`.
            (default: :obj:`True`)
        sampling (str, optional): :obj:`"first"` (first points of the file)
            or :obj:`"fps"` (farthest point sampling).
            (default: :obj:`"first"`)
        val_ratio (float, optional): Fraction of each class of the training
            list held out as :obj:`"val"` (seeded, fixed). :obj:`0` keeps the
            official training list whole. (default: :obj:`0.0`)
        transform (callable, optional): Applied at every access.
        pre_transform (callable, optional): Applied once before saving.
        pre_filter (callable, optional): Keeps shapes it returns
            :obj:`True` for.
        force_reload (bool, optional): Re-process. (default: :obj:`False`)

    Shapes:
        - :obj:`pos` :math:`(N, 3)`, :obj:`normal` :math:`(N, 3)`,
          :obj:`y` :math:`(1)`, with :math:`N` = :obj:`num_points`
    """
    url = ('https://shapenet.cs.stanford.edu/media/'
           'modelnet40_normal_resampled.zip')
    folder = 'modelnet40_normal_resampled'

    def __init__(
        self,
        root: str,
        split: str = 'train',
        name: str = '40',
        num_points: int = 1024,
        use_normals: bool = True,
        sampling: str = 'first',
        val_ratio: float = 0.0,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        force_reload: bool = False,
    ) -> None:
        if name not in ('10', '40'):
            raise ValueError(f"Expected 'name' to be '10' or '40' "
                             f"(got '{name}')")
        if sampling not in ('first', 'fps'):
            raise ValueError(f"Expected 'sampling' to be 'first' or 'fps' "
                             f"(got '{sampling}')")
        self.name = name
        self.sampling = sampling
        super().__init__(root, split, num_points, use_normals, val_ratio,
                         transform, pre_transform, pre_filter, force_reload)

    @property
    def raw_file_names(self) -> List[str]:
        return [f'modelnet{self.name}_{kind}.txt'
                for kind in ('shape_names', 'train', 'test')]

    @property
    def processed_file_names(self) -> List[str]:
        return [f'modelnet{self.name}_resampled_{self.num_points}_'
                f'{self.sampling}_{split}.pt' for split in ('train', 'test')]

    def read_shape(self, shape_id: str) -> Data:
        r"""Reads one shape, e.g. :obj:`"airplane_0001"`."""
        cls = shape_id.rsplit('_', 1)[0]
        path = osp.join(self.raw_dir, cls, f'{shape_id}.txt')
        points = torch.from_numpy(read_table(
            path, 6, 'x,y,z,nx,ny,nz', sep=',',
            max_rows=self.num_points if self.sampling == 'first' else None))
        if points.size(0) < self.num_points:
            raise DamagedFileError(
                f"Expected at least num_points={self.num_points} points in "
                f"'{path}' (got {points.size(0)}); the archive's files hold "
                f"10,000: the file is truncated, or pass a smaller num_points")
        if self.sampling == 'fps' and self.num_points < points.size(0):
            # Deterministic: farthest point sampling from point 0.
            index = fps(points[:, :3], ratio=self.num_points / points.size(0),
                        random_start=False)
            points = points[index[:self.num_points]]
        return Data(pos=points[:, :3].contiguous(),
                    normal=points[:, 3:].contiguous())

    def process(self) -> None:
        names_file, train_file, test_file = self.raw_paths
        class_idx = {c: i for i, c in enumerate(read_lines(names_file))}
        for path, out in zip((train_file, test_file), self.processed_paths):
            data_list = []
            for shape_id in read_lines(path):
                cls = shape_id.rsplit('_', 1)[0]
                if cls not in class_idx:
                    raise ValueError(f"Shape '{shape_id}' of '{path}' has a "
                                     f"class not in '{names_file}'")
                data = self.read_shape(shape_id)
                data.y = torch.tensor([class_idx[cls]])
                data = prepare(data, self.pre_filter, self.pre_transform)
                if data is not None:
                    data_list.append(data)
            self.save(data_list, out)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({len(self)}, name={self.name}, '
                f'split={self.split}, num_points={self.num_points})')
