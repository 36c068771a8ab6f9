import glob
import os
import os.path as osp
from typing import Callable, Optional

from torch_geometric.datasets import ModelNet
from torch_geometric.io import read_off
from torch_geometric.transforms import Compose, SamplePoints

from samsa_geo.datasets._checked_cache import CheckedCache
from samsa_geo.io import DamagedFileError

#: Archive folders that the other ModelNet loaders read, by format.
_OTHER_FORMATS = {'modelnet40_normal_resampled': 'normal_resampled',
                  'modelnet40_ply_hdf5_2048': 'hdf5'}


class PrincetonModelNet(CheckedCache, ModelNet):
    r"""PyG's :class:`~torch_geometric.datasets.ModelNet` with a checked
    cache (see :class:`CheckedCache`), a download failure that says which
    archive goes in which folder, and a processing failure that names the
    damaged mesh."""
    def process(self) -> None:
        try:
            super().process()
        except Exception as e:
            # Only on failure: find the first mesh that PyG's reader or the
            # point sampling rejects.
            for path in sorted(glob.glob(osp.join(self.raw_dir, '*', '*',
                                                  '*.off'))):
                try:
                    data = read_off(path)
                    if self.pre_transform is not None:
                        self.pre_transform(data)
                except Exception as err:
                    cause = type(err).__name__ + (f': {err}' if str(err)
                                                  else '')
                    raise DamagedFileError(
                        f"Cannot read the mesh '{path}' ({cause}); the file "
                        f"is truncated or damaged: "
                        f"re-extract it from 'ModelNet{self.name}.zip'"
                    ) from e
            raise
    def download(self) -> None:
        try:
            super().download()
        except Exception as e:
            url = self.urls[self.name]
            other = [f"'{folder}/' (use format '{fmt}')"
                     for folder, fmt in _OTHER_FORMATS.items()
                     if osp.isdir(osp.join(self.root, folder))]
            hint = (f" '{self.root}' holds {', '.join(other)}, an archive of "
                    f"another format." if other else '')
            raise RuntimeError(
                f"Could not download 'ModelNet{self.name}.zip' from {url} "
                f"({type(e).__name__}: {e}), and '{osp.abspath(self.raw_dir)}'"
                f" does not hold the Princeton meshes.{hint} Download the "
                f"zip by hand and extract it so that "
                f"'{osp.abspath(self.raw_dir)}' holds one folder per class "
                f"('{self.raw_file_names[0]}{os.sep}train{os.sep}*.off', "
                f"...)") from e


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
    downloaded by PyG to :obj:`root/raw/` if absent (a failed download says
    which archive goes in which folder). The cache is read weights-only and
    rebuilt when the raw files change.

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
    if num_points < 1:
        raise ValueError(f"Expected 'num_points' >= 1 (got {num_points})")
    sample = SamplePoints(num_points, include_normals=True)
    pre = sample if pre_transform is None else Compose([sample,
                                                        pre_transform])
    return PrincetonModelNet(root, name=name, train=split == 'train',
                    transform=transform, pre_transform=pre,
                    force_reload=force_reload)
