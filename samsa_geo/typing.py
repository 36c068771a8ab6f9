"""Optional dependencies, probed once.

Compiled extras are never imported at module top level elsewhere in the
package: code checks these flags and imports lazily.
"""
import importlib.util


def _has(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


WITH_TORCH_CLUSTER: bool = _has('torch_cluster')
WITH_TORCH_SCATTER: bool = _has('torch_scatter')
WITH_OPEN3D: bool = _has('open3d')
WITH_MATPLOTLIB: bool = _has('matplotlib')
WITH_TENSORBOARD: bool = _has('tensorboard')
WITH_ONNXRUNTIME: bool = _has('onnxruntime')
WITH_H5PY: bool = _has('h5py')

__all__ = [
    'WITH_TORCH_CLUSTER',
    'WITH_TORCH_SCATTER',
    'WITH_OPEN3D',
    'WITH_MATPLOTLIB',
    'WITH_TENSORBOARD',
    'WITH_ONNXRUNTIME',
    'WITH_H5PY',
]
