import os.path as osp
from typing import Callable, List, Optional

from torch_geometric.data import InMemoryDataset

from samsa_geo.datasets._checked_cache import CheckedCache
from samsa_geo.datasets._download import fetch_archive
from samsa_geo.datasets._process import read_lines
from samsa_geo.datasets._split import check_split_args, split_indices


class ModelNetArchive(CheckedCache, InMemoryDataset):
    r"""What the ModelNet40 archive loaders share: the extracted archive
    :obj:`root/{folder}/` as raw folder, its download (checked and
    extracted through a temporary folder, see :func:`fetch_archive`), and
    the split set up after loading (processed file 0 is train, 1 is test;
    :obj:`"train"` and :obj:`"val"` index the training file).

    Subclasses set :obj:`url` and :obj:`folder`, and call this
    :obj:`__init__` once their own attributes are set (the processed file
    names may read them). The cache is read weights-only and rebuilt when
    the raw files change (:class:`CheckedCache`).
    """
    url: str
    folder: str

    def __init__(self, root: str, split: str, num_points: int,
                 use_normals: bool, val_ratio: float,
                 transform: Optional[Callable],
                 pre_transform: Optional[Callable],
                 pre_filter: Optional[Callable], force_reload: bool) -> None:
        check_split_args(split, num_points, val_ratio)
        self.split = split
        self.num_points = num_points
        self.val_ratio = val_ratio
        super().__init__(root, transform, pre_transform, pre_filter,
                         force_reload=force_reload)
        self.load_split(split, val_ratio, use_normals, self.raw_paths[0])

    @property
    def raw_dir(self) -> str:
        return osp.join(self.root, self.folder)

    def download(self) -> None:
        fetch_archive(self.url, self.root, self.folder, self.raw_file_names)

    def load_split(self, split: str, val_ratio: float, use_normals: bool,
                   names_file: str) -> None:
        r"""Loads :obj:`split`, drops normals unless :obj:`use_normals`,
        reads the class names from :obj:`names_file` (one per line) into
        :obj:`self.classes`."""
        self.load(self.processed_paths[1 if split == 'test' else 0])
        if use_normals and 'normal' not in self._data and len(self) > 0:
            raise ValueError(
                f"Expected normals for use_normals=True, but the files in "
                f"'{self.raw_dir}' hold none; pass use_normals=False")
        if not use_normals and 'normal' in self._data:
            self._data.normal = None
        self.classes: List[str] = read_lines(names_file)
        self._indices = split_indices(self._data.y.view(-1), split,
                                      val_ratio)
