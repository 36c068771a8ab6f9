r"""Transforms on :class:`~torch_geometric.data.Data` objects.

PyG's own transforms (:class:`~torch_geometric.transforms.NormalizeScale`,
:class:`~torch_geometric.transforms.SamplePoints`,
:class:`~torch_geometric.transforms.FixedPoints`,
:class:`~torch_geometric.transforms.Compose`, ...) are meant to be combined
with these; they are not re-implemented here.
"""
from .add_laplacian_pe import AddLaplacianPE
from .add_random_walk_pe import AddRandomWalkPE
from .random_sign_flip import RandomSignFlip
from .standardize_features import StandardizeFeatures
from .random_rotate_so3 import RandomRotateSO3
from .random_rotate_z import RandomRotateZ
from .random_anisotropic_scale import RandomAnisotropicScale
from .random_jitter import RandomJitter
from .random_point_dropout import RandomPointDropout

__all__ = [
    # graphs: structural encodings and feature normalisation
    'AddLaplacianPE',
    'AddRandomWalkPE',
    'RandomSignFlip',
    'StandardizeFeatures',
    # point clouds: augmentation
    'RandomRotateSO3',
    'RandomRotateZ',
    'RandomAnisotropicScale',
    'RandomJitter',
    'RandomPointDropout',
]
