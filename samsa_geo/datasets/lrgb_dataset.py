import os.path as osp
from typing import Callable, Optional

import torch
from torch_geometric.datasets import LRGBDataset as PyGLRGBDataset

from samsa_geo.datasets._checked_cache import CheckedCache
from samsa_geo.datasets._download import archive_name, fetch_archive
from samsa_geo.datasets.lrgb import lrgb_task
from samsa_geo.io import (DamagedFileError, restricted_pickle_load,
                          weights_only_load)


class LRGBDataset(CheckedCache, PyGLRGBDataset):
    r"""PyG's :class:`~torch_geometric.datasets.LRGBDataset` (the five
    datasets of the `"Long Range Graph Benchmark"
    <https://arxiv.org/abs/2206.08164>`_) with the same files and results,
    read without running code from them:

    - the processed cache loads weights-only and is rebuilt when the raw
      files change (:class:`CheckedCache`);
    - before PyG processes the raw files, each one is read safely: the
      :obj:`.pt` files of Peptides and PCQM-Contact weights-only, the
      :obj:`.pickle` files of PascalVOC-SP and COCO-SP with an unpickler
      that accepts tensors, arrays and containers only, so a crafted file
      fails with :class:`~samsa_geo.io.UnsafeFileError` naming it (this
      reads each raw file twice, once);
    - float features and targets must be finite and class labels in range
      when a split is loaded (errors name the raw file and the graph);
    - a wrong name or split, and a failed download, raise errors that say
      what is expected and which archive goes in which folder; an
      interrupted download, a damaged zip or a failed extraction leaves
      nothing that a later run reads, and a damaged zip is named (PyG's
      download would reuse a cut zip forever).

    The raw files must come from the official archives (the URLs in
    :obj:`LRGBDataset.urls`); no checksum is published for them.

    Args:
        root (str): Root folder; :obj:`root/{name}/raw/` and
            :obj:`root/{name}/processed/` are used.
        name (str): :obj:`"Peptides-func"`, :obj:`"Peptides-struct"`,
            :obj:`"PascalVOC-SP"`, :obj:`"COCO-SP"` or
            :obj:`"PCQM-Contact"` (case-insensitive).
        split (str, optional): :obj:`"train"`, :obj:`"val"` or
            :obj:`"test"`. (default: :obj:`"train"`)
        transform (callable, optional): Applied at every access.
        pre_transform (callable, optional): Applied once before saving.
        pre_filter (callable, optional): Keeps graphs it returns
            :obj:`True` for.
        force_reload (bool, optional): Re-process. (default: :obj:`False`)
    """
    def __init__(
        self,
        root: str,
        name: str,
        split: str = 'train',
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        force_reload: bool = False,
    ) -> None:
        if not isinstance(name, str) or name.lower() not in self.names:
            raise ValueError(f"Expected 'name' to be one of {self.names} "
                             f"(case-insensitive; got {name!r})")
        if split not in ('train', 'val', 'test'):
            raise ValueError(f"Expected 'split' to be 'train', 'val' or "
                             f"'test' (got {split!r})")
        super().__init__(root, name, split, transform, pre_transform,
                         pre_filter, force_reload)
        self._check_values(split)

    def _check_values(self, split: str) -> None:
        # Finite float features and targets, class labels in range; errors
        # name the raw file and the graph.
        source = osp.join(self.raw_dir, self.raw_file_names[
            ('train', 'val', 'test').index(split)])
        task = lrgb_task(self.name)
        for key in ('x', 'edge_attr', 'y'):
            value = self._data[key] if key in self._data else None
            if value is None or not value.is_floating_point():
                continue
            bad = (~torch.isfinite(value.view(value.size(0), -1)).all(1)
                   ).nonzero().view(-1)  # [num_bad]
            if bad.numel() > 0:
                raise DamagedFileError(
                    f"Expected finite '{key}' in '{source}' (graph "
                    f"{self._graph_of(key, int(bad[0]))} holds NaN or "
                    f"infinity)")
        if task.task_type == 'multiclass':
            y = self._data.y
            bad = ((y < 0) | (y >= task.out_channels)).nonzero().view(-1)
            if bad.numel() > 0:
                raise DamagedFileError(
                    f"Expected labels in [0, {task.out_channels}) in "
                    f"'{source}' (graph {self._graph_of('y', int(bad[0]))} "
                    f"has label {int(y[bad[0]])})")

    def _graph_of(self, key: str, row: int) -> int:
        return int(torch.searchsorted(self.slices[key], row, right=True)) - 1

    def download(self) -> None:
        # PyG's download writes the zip in place and reuses any file found
        # there, so an interrupted download would be reused forever; the
        # shared helper downloads through a '.part' file, checks every
        # member and extracts through a temporary folder.
        url = self.urls[self.name]
        archive = archive_name(url)
        folder = self.dwnld_file_name[self.name]
        how = (f"Download that official LRGB archive by hand and place it "
               f"at '{osp.abspath(osp.join(self.root, archive))}', or "
               f"extract it in '{osp.abspath(self.root)}' and rename its "
               f"folder '{folder}' to '{osp.abspath(self.raw_dir)}', so "
               f"that it holds {', '.join(self.raw_file_names)}. Use only "
               f"the official archive: these files are unpickled")
        fetch_archive(url, self.root, folder, self.raw_file_names,
                      target=self.raw_dir, how=how, keep_archive=False)

    def process(self) -> None:
        for name in self.raw_file_names:
            path = osp.join(self.raw_dir, name)
            if name.endswith('.pickle'):
                with open(path, 'rb') as f:
                    restricted_pickle_load(f, path, 'Raw LRGB file')
            else:
                weights_only_load(path, 'Raw LRGB file',
                                  'Replace it with the file of the official '
                                  'archive')
        super().process()
