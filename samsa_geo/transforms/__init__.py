r"""Transforms on point-cloud :class:`~torch_geometric.data.Data` objects.

PyG's own transforms (:class:`~torch_geometric.transforms.NormalizeScale`,
:class:`~torch_geometric.transforms.SamplePoints`,
:class:`~torch_geometric.transforms.FixedPoints`,
:class:`~torch_geometric.transforms.Compose`, ...) are meant to be combined
with these; they are not re-implemented here.
"""
from .random_rotate_so3 import RandomRotateSO3
from .random_rotate_z import RandomRotateZ
from .random_anisotropic_scale import RandomAnisotropicScale
from .random_jitter import RandomJitter
from .random_point_dropout import RandomPointDropout

__all__ = [
    'RandomRotateSO3',
    'RandomRotateZ',
    'RandomAnisotropicScale',
    'RandomJitter',
    'RandomPointDropout',
]
