from typing import Callable, Optional

from torch_geometric.datasets import ModelNet
from torch_geometric.transforms import Compose, SamplePoints


def modelnet_princeton(
    root: str,
    split: str = 'train',
    num_points: int = 1024,
    name: str = '40',
    transform: Optional[Callable] = None,
    pre_transform: Optional[Callable] = None,
    force_reload: bool = False,
) -> ModelNet:
    r"""Returns PyG's :class:`~torch_geometric.datasets.ModelNet` (the
    Princeton :obj:`.off` meshes, :math:`z` up) turned into point clouds by
    PyG's :class:`~torch_geometric.transforms.SamplePoints`.

    :obj:`num_points` points with normals are sampled once, area-weighted,
    when the meshes are processed (then :obj:`pre_transform`, e.g.
    :class:`~torch_geometric.transforms.NormalizeScale`); the meshes are
    downloaded by PyG to :obj:`root/raw/` if absent.

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
    return ModelNet(root, name=name, train=split == 'train',
                    transform=transform, pre_transform=pre,
                    force_reload=force_reload)
