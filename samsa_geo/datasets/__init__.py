r"""Datasets in the on-disk formats of the real archives.

The bundled samples (synthetic shapes, :func:`sample_root`) use the same
formats and are read by the same classes.
"""
from .modelnet40_normal_resampled import ModelNet40NormalResampled
from .modelnet40_hdf5 import ModelNet40HDF5
from .modelnet_princeton import modelnet_princeton
from .shapenet_part import ShapeNetPart
from .sample_root import sample_root
from ._sample_data import write_samples
from ._split import holdout_indices
from .freesolv import FreeSolv
from .lrgb_dataset import LRGBDataset
from .lrgb import LRGB_TASKS, LRGBTask, lrgb_feature_normalization, lrgb_task

__all__ = [
    'ModelNet40NormalResampled',
    'ModelNet40HDF5',
    'modelnet_princeton',
    'ShapeNetPart',
    'sample_root',
    'write_samples',
    'holdout_indices',
    'FreeSolv',
    'LRGBDataset',
    'LRGB_TASKS',
    'LRGBTask',
    'lrgb_task',
    'lrgb_feature_normalization',
]
