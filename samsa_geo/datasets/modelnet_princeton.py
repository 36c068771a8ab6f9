import glob
import os
import os.path as osp
from typing import Callable, List, Optional

import torch
from torch_geometric.data import Data
from torch_geometric.datasets import ModelNet
from torch_geometric.io import read_off
from torch_geometric.transforms import SamplePoints

from samsa_geo.datasets._checked_cache import CheckedCache
from samsa_geo.datasets._download import fetch_archive
from samsa_geo.io import DamagedFileError
from samsa_geo.ops.validation import check_positive_int

#: Archive folders that the other ModelNet loaders read, by format.
_OTHER_FORMATS = {'modelnet40_normal_resampled': 'normal_resampled',
                  'modelnet40_ply_hdf5_2048': 'hdf5'}


class PrincetonModelNet(CheckedCache, ModelNet):
    r"""PyG's :class:`~torch_geometric.datasets.ModelNet` with the meshes
    turned into :obj:`num_points` points with normals by
    :class:`~torch_geometric.transforms.SamplePoints` before
    :obj:`pre_transform`, and with these changes:

    - the processed files are named after :obj:`name` and
      :obj:`num_points` (:obj:`processed/modelnet{name}_princeton_`
      :obj:`{num_points}_{train,test}.pt`; PyG's :obj:`training.pt` and
      :obj:`test.pt` would be reused for another :obj:`num_points` or
      :obj:`name`), read weights-only and rebuilt when the raw files change
      (:class:`CheckedCache`);
    - the meshes are read in sorted order (PyG's order is the file
      system's), so that sample :obj:`i` is the same shape on every machine;
    - a mesh that cannot be read or sampled raises a
      :class:`~samsa_geo.io.DamagedFileError` naming it;
    - the download goes through a :obj:`.part` file and a temporary folder
      (an interrupted download or a damaged zip leaves nothing that a later
      run reads), and a failure says which archive goes in which folder.

    Args:
        root (str): Root folder; :obj:`root/raw/` holds the meshes of one
            archive.
        name (str, optional): :obj:`"40"` or :obj:`"10"`.
            (default: :obj:`"40"`)
        train (bool, optional): Load the training split, else the test
            split. (default: :obj:`True`)
        num_points (int, optional): Points sampled per mesh, once.
            (default: :obj:`1024`)
        transform (callable, optional): Applied at every access.
        pre_transform (callable, optional): Applied once after sampling.
        pre_filter (callable, optional): Keeps the meshes it returns
            :obj:`True` for (it sees :obj:`pos`, :obj:`face`, :obj:`y`).
        force_reload (bool, optional): Re-process. (default: :obj:`False`)
    """
    def __init__(
        self,
        root: str,
        name: str = '40',
        train: bool = True,
        num_points: int = 1024,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        force_reload: bool = False,
    ) -> None:
        self.num_points = num_points
        self.sample = SamplePoints(num_points, include_normals=True)
        super().__init__(root, name, train, transform, pre_transform,
                         pre_filter, force_reload)

    @property
    def processed_file_names(self) -> List[str]:
        return [f'modelnet{self.name}_princeton_{self.num_points}_{split}.pt'
                for split in ('train', 'test')]

    def process_set(self, dataset: str) -> List[Data]:
        categories = sorted(osp.basename(osp.dirname(path)) for path in
                            glob.glob(osp.join(self.raw_dir, '*', '')))
        extra = sorted(set(categories) - set(self.raw_file_names))
        if self.name == '10' and extra:
            raise ValueError(
                f"Expected the 10 class folders of ModelNet10 in "
                f"'{self.raw_dir}' for name='10' (it also holds "
                f"{len(extra)} other class folder(s), e.g. '{extra[0]}': "
                f"the meshes of ModelNet40.zip); use another root for "
                f"name='10'")
        data_list = []
        for target, category in enumerate(categories):
            folder = osp.join(self.raw_dir, category, dataset)
            for path in sorted(glob.glob(osp.join(folder,
                                                  f'{category}_*.off'))):
                try:
                    data = read_off(path)
                    data.y = torch.tensor([target])
                    if (self.pre_filter is not None
                            and not self.pre_filter(data)):
                        continue
                    data = self.sample(data)
                except Exception as err:
                    cause = type(err).__name__ + (f': {err}' if str(err)
                                                  else '')
                    raise DamagedFileError(
                        f"Cannot read the mesh '{path}' ({cause}); the file "
                        f"is truncated or damaged: re-extract it from "
                        f"'ModelNet{self.name}.zip'") from err
                if self.pre_transform is not None:
                    data = self.pre_transform(data)
                data_list.append(data)
        return data_list

    def download(self) -> None:
        url = self.urls[self.name]
        other = [f"'{folder}/' (use format '{fmt}')"
                 for folder, fmt in _OTHER_FORMATS.items()
                 if osp.isdir(osp.join(self.root, folder))]
        hint = (f" '{self.root}' holds {', '.join(other)}, an archive of "
                f"another format." if other else '')
        archive = f'ModelNet{self.name}.zip'
        how = (f"'{osp.abspath(self.raw_dir)}' does not hold the Princeton "
               f"meshes.{hint} Download the zip by hand and either place it "
               f"at '{osp.abspath(osp.join(self.root, archive))}' or extract "
               f"it so that '{osp.abspath(self.raw_dir)}' holds one folder "
               f"per class ('{self.raw_file_names[0]}{os.sep}train{os.sep}"
               f"*.off', ...)")
        fetch_archive(url, self.root, f'ModelNet{self.name}',
                      self.raw_file_names, target=self.raw_dir, how=how,
                      keep_archive=False)


def modelnet_princeton(
    root: str,
    split: str = 'train',
    num_points: int = 1024,
    name: str = '40',
    transform: Optional[Callable] = None,
    pre_transform: Optional[Callable] = None,
    force_reload: bool = False,
) -> PrincetonModelNet:
    r"""Returns PyG's :class:`~torch_geometric.datasets.ModelNet` (the
    Princeton :obj:`.off` meshes, :math:`z` up) turned into point clouds by
    PyG's :class:`~torch_geometric.transforms.SamplePoints`.

    :obj:`num_points` points with normals are sampled once, area-weighted,
    when the meshes are processed (then :obj:`pre_transform`). The meshes
    keep their CAD units and origin, unlike the unit-sphere clouds of the
    other ModelNet40 archives: normalise every shape in :obj:`transform` or
    :obj:`pre_transform` (:obj:`examples/modelnet40.py` centres and scales
    each to the unit sphere at access, in every split). The meshes are
    downloaded to :obj:`root/raw/` if absent (a failed download says which
    archive goes in which folder); :obj:`root/raw/` holds the meshes of one
    archive, so use one root per :obj:`name`. The cache,
    :obj:`root/processed/modelnet{name}_princeton_{num_points}_{split}.pt`,
    is kept per :obj:`name` and :obj:`num_points`, read weights-only and
    rebuilt when the raw files change; the meshes are read in sorted order,
    so the samples come in the same order on every machine.

    Args:
        root (str): PyG root of the dataset.
        split (str, optional): :obj:`"train"` or :obj:`"test"`.
            (default: :obj:`"train"`)
        num_points (int, optional): Points per shape. (default: :obj:`1024`)
        name (str, optional): :obj:`"40"` or :obj:`"10"`.
            (default: :obj:`"40"`)
        transform (callable, optional): Applied at every access.
        pre_transform (callable, optional): Applied once after sampling.
        force_reload (bool, optional): Re-process. (default: :obj:`False`)

    Shapes:
        - :obj:`pos` :math:`(N, 3)`, :obj:`normal` :math:`(N, 3)`,
          :obj:`y` :math:`(1)`
    """
    if split not in ('train', 'test'):
        raise ValueError(f"Expected 'split' to be 'train' or 'test' "
                         f"(got '{split}')")
    if name not in ('10', '40'):
        raise ValueError(f"Expected 'name' to be '10' or '40' (got '{name}')")
    check_positive_int('num_points', num_points, integral=True)
    return PrincetonModelNet(root, name=name, train=split == 'train',
                             num_points=num_points, transform=transform,
                             pre_transform=pre_transform,
                             force_reload=force_reload)
