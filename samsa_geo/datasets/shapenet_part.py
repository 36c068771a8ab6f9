import os.path as osp
import warnings
from typing import Callable, Dict, List, Optional, Union

import torch
from torch_geometric.data import Data
from torch_geometric.datasets import ShapeNet
from torch_geometric.transforms import Compose, FixedPoints

from samsa_geo.datasets._checked_cache import CheckedCache
from samsa_geo.datasets._download import fetch_archive
from samsa_geo.datasets._process import prepare, read_table
from samsa_geo.io import DamagedFileError
from samsa_geo.ops.validation import check_positive_int


class ShapeNetPart(CheckedCache, ShapeNet):
    r"""The ShapeNet-part segmentation benchmark (16 categories, 50 parts)
    of the :obj:`shapenetcore_partanno_segmentation_benchmark_v0_normal`
    archive, read by PyG's :class:`~torch_geometric.datasets.ShapeNet` with
    these changes:

    - the archive is read from
      :obj:`root/shapenetcore_partanno_segmentation_benchmark_v0_normal/`
      (its own folder name; PyG's :obj:`root/raw/` is not used), so the
      bundled sample :obj:`datasets/shapenet_part_sample` is read as is;
    - :obj:`categories=None` loads the categories the archive lists in
      :obj:`synsetoffset2category.txt` (all 16 in the real archive);
    - :obj:`data.category` is the *global* category index :math:`c \in
      \{0, \dots, 15\}` (PyG's order) whatever the subset loaded, so that
      :obj:`category_parts[c]` (the global part labels of :math:`c`) and
      :obj:`y_mask[c]` always apply;
    - normals are stored as :obj:`data.normal` (PyG stores them as
      :obj:`data.x`), as in the other point-cloud loaders and as
      :class:`~samsa_geo.transforms.RandomRotateSO3` expects;
    - :obj:`num_points` adds PyG's
      :class:`~torch_geometric.transforms.FixedPoints` (without
      replacement, duplicating only when a shape is smaller, with a warning
      at load naming how many are) before :obj:`transform`: a new random
      subset at every access, meant for training. Evaluate on every point
      (:obj:`num_points=None`, as PointNet and PyG's example do), or the
      metric changes from one evaluation to the next; and since
      :obj:`transform` then sees only the subset, a
      :class:`~torch_geometric.transforms.NormalizeScale` meant for the
      whole shape goes before the sampling instead
      (:obj:`transform=Compose([NormalizeScale(), FixedPoints(n), ...])`,
      as :obj:`examples/shapenet_part.py` does);
    - every file is checked as it is processed: seven numbers per line,
      finite, part labels of the shape's category; errors name the file and
      line (:class:`~samsa_geo.io.DamagedFileError`);
    - a failed download raises an error naming the folder to fill; an
      interrupted download, a damaged zip or a failed extraction leaves
      nothing that a later run reads (the zip is read whole before it is
      extracted through a temporary folder), and a damaged zip is named.

    Files: :obj:`{synset}/{id}.txt` with lines :obj:`x y z nx ny nz part`,
    :obj:`train_test_split/shuffled_{train,val,test}_file_list.json`
    listing :obj:`shape_data/{synset}/{id}`.

    Args:
        root (str): Folder holding the archive folder; :obj:`processed/` is
            written next to it.
        categories (str or [str], optional): Category names (PyG's, e.g.
            :obj:`"Table"`); :obj:`None` for all on disk.
            (default: :obj:`None`)
        include_normals (bool, optional): Keep :obj:`data.normal`.
            (default: :obj:`True`)
        split (str, optional): :obj:`"train"`, :obj:`"val"`,
            :obj:`"trainval"` or :obj:`"test"`. (default: :obj:`"trainval"`)
        num_points (int, optional): Points sampled at random per access
            (training), :obj:`None` to keep all (evaluation).
            (default: :obj:`None`)
        transform (callable, optional): Applied at every access.
        pre_transform (callable, optional): Applied once before saving (sees
            :obj:`normal` and the global :obj:`category`).
        pre_filter (callable, optional): Keeps shapes it returns
            :obj:`True` for (same attributes).
        force_reload (bool, optional): Re-process. (default: :obj:`False`)

    Shapes:
        - :obj:`pos` :math:`(N, 3)`, :obj:`normal` :math:`(N, 3)`,
          :obj:`y` :math:`(N)` (global part labels in :math:`[0, 50)`),
          :obj:`category` :math:`(1)`
    """
    folder = 'shapenetcore_partanno_segmentation_benchmark_v0_normal'

    #: Category names in PyG's order (the global category index).
    category_names: List[str] = list(ShapeNet.category_ids.keys())

    #: Global part labels of each category, indexed by global category.
    category_parts: List[List[int]] = [
        list(parts) for parts in ShapeNet.seg_classes.values()
    ]

    #: Category of each of the 50 global part labels.
    part_category: List[int] = [
        c for c, parts in enumerate(ShapeNet.seg_classes.values())
        for _ in parts
    ]

    def __init__(
        self,
        root: str,
        categories: Optional[Union[str, List[str]]] = None,
        include_normals: bool = True,
        split: str = 'trainval',
        num_points: Optional[int] = None,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        force_reload: bool = False,
    ) -> None:
        if categories is None:
            categories = self.categories_on_disk(root)
        if isinstance(categories, str):
            categories = [categories]
        unknown = [c for c in categories if c not in self.category_ids]
        if unknown or not categories:
            raise ValueError(f"Expected 'categories' among "
                             f"{self.category_names} (got {categories})")
        if split not in ('train', 'val', 'test', 'trainval'):
            raise ValueError(f"Expected 'split' to be 'train', 'val', "
                             f"'trainval' or 'test' (got '{split}')")
        if num_points is not None:
            check_positive_int('num_points', num_points, integral=True)
            sample = FixedPoints(num_points, replace=False,
                                 allow_duplicates=True)
            transform = sample if transform is None else Compose(
                [sample, transform])
        self.split = split
        self.num_points = num_points
        super().__init__(root, categories, True, split, transform,
                         pre_transform, pre_filter, force_reload)
        if not include_normals:
            self._data.normal = None
        if num_points is not None:
            self._warn_small_shapes()

    @classmethod
    def categories_on_disk(cls, root: str) -> List[str]:
        r"""The categories listed in :obj:`synsetoffset2category.txt` of the
        archive under :obj:`root`, or all 16 if it is absent."""
        path = osp.join(root, cls.folder, 'synsetoffset2category.txt')
        if not osp.exists(path):
            return list(cls.category_names)
        names = {v: k for k, v in cls.category_ids.items()}
        found = []
        with open(path) as f:
            for line in f:
                fields = line.split()
                if len(fields) == 2 and fields[1] in names:
                    found.append(names[fields[1]])
        return [c for c in cls.category_names if c in found]

    @property
    def seg_classes_table(self) -> Dict[str, List[int]]:
        r"""PyG's :obj:`seg_classes` restricted to the loaded categories."""
        return {c: list(self.seg_classes[c]) for c in self.categories}

    @property
    def raw_dir(self) -> str:
        return osp.join(self.root, self.folder)

    @property
    def raw_file_names(self) -> List[str]:
        return [self.category_ids[c] for c in self.categories
                ] + ['train_test_split']

    @property
    def processed_file_names(self) -> List[str]:
        return ['part_' + name for name in super().processed_file_names]

    def download(self) -> None:
        fetch_archive(self.url, self.root, self.folder, self.raw_file_names)

    def process_filenames(self, filenames: List[str]) -> List[Data]:
        # PyG's file layout, read by read_table (errors name the file and
        # line), with part labels checked against the shape's category; the
        # filter and pre-transform see the attributes users get.
        synsets = {self.category_ids[c]: c for c in self.categories}
        out = []
        for name in filenames:
            synset = name.split(osp.sep)[0]
            if synset not in synsets:
                continue
            path = osp.join(self.raw_dir, name)
            table = torch.from_numpy(read_table(path, 7,
                                                'x y z nx ny nz part'))
            category = self.category_names.index(synsets[synset])
            y = table[:, 6].long()
            parts = torch.tensor(self.category_parts[category])
            bad = (~torch.isin(y, parts) | (table[:, 6] != y)).nonzero()
            if bad.numel() > 0:
                row = int(bad[0])
                raise DamagedFileError(
                    f"Expected part labels in {parts.tolist()} (category "
                    f"'{synsets[synset]}') in '{path}' (point {row} has "
                    f"label {float(table[row, 6]):g}; {bad.numel()} point(s) "
                    f"out of range)")
            data = Data(pos=table[:, :3].contiguous(),
                        normal=table[:, 3:6].contiguous(), y=y,
                        category=category)
            data = prepare(data, self.pre_filter, self.pre_transform)
            if data is not None:
                out.append(data)
        return out

    def _warn_small_shapes(self) -> None:
        sizes = self.slices['pos'].diff()  # [num_shapes]
        small = (sizes < self.num_points).nonzero().view(-1)
        if small.numel() > 0:
            i = int(sizes.argmin())
            warnings.warn(
                f"{small.numel()} of {sizes.numel()} shapes of the "
                f"'{self.split}' split have fewer than num_points="
                f"{self.num_points} points (the smallest, index {i}, has "
                f"{int(sizes[i])}): their points are repeated to fill up",
                stacklevel=3)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({len(self)}, split={self.split}, '
                f'categories={self.categories})')
