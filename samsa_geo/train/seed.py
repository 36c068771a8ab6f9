"""Seeding, determinism and random-number-generator state capture."""
import os
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from samsa_geo.ops.validation import check_int


def seed_everything(seed: int) -> None:
    r"""Seeds :mod:`random`, :mod:`numpy` and :mod:`torch` (all devices).

    Args:
        seed (int): The seed.
    """
    check_int('seed', seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def enable_determinism() -> None:
    r"""Makes PyTorch pick deterministic kernels and error on ops that have none.

    Sets :obj:`torch.use_deterministic_algorithms(True)`, disables the cuDNN
    auto-tuner and sets :obj:`CUBLAS_WORKSPACE_CONFIG` when unset (required by
    deterministic cuBLAS).
    """
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def seed_worker(worker_id: int) -> None:
    r"""A :obj:`worker_init_fn` for :class:`~torch.utils.data.DataLoader` that
    seeds :mod:`random` and :mod:`numpy` in each worker from the worker's
    torch seed (itself derived from the loader's generator), so augmentations
    written with either are reproducible."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def get_rng_state() -> Dict[str, Any]:
    r"""Returns the states of the Python, NumPy, torch and CUDA generators as
    tensors and plain types, loadable with :obj:`torch.load(weights_only=True)`.
    """
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    cuda: Optional[List[torch.Tensor]] = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state_all()
    return {
        'python': (version, torch.tensor(py_state, dtype=torch.int64), gauss),
        'numpy': (np_name, torch.from_numpy(np_keys.astype(np.int64)),
                  int(np_pos), int(np_has_gauss), float(np_gauss)),
        'torch': torch.get_rng_state(),
        'cuda': cuda,
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    r"""Restores generator states captured by :func:`get_rng_state`."""
    version, py_state, gauss = state['python']
    random.setstate((version, tuple(int(v) for v in py_state.tolist()), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state['numpy']
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos,
                         np_has_gauss, np_gauss))
    torch.set_rng_state(state['torch'])
    cuda = state.get('cuda')
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
