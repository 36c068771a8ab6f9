r"""Checks of the values of tensors: a sorted batch vector, finite points.

Each reads the device, which on a GPU makes the host wait: call them once
at a model's or layer's entry. The geometry ops run such checks behind the
switch of :mod:`samsa_geo.ops.config`.
"""
from typing import Optional

import torch
from torch import Tensor


def sorted_batch_flag(batch: Tensor) -> Tensor:
    r"""A device-side boolean scalar: whether the non-empty batch vector
    :obj:`batch` is sorted in ascending order and non-negative."""
    return (batch[1:] >= batch[:-1]).all() & (batch[0] >= 0)


def raise_unsorted(name: str) -> None:
    raise ValueError(f"Expected '{name}' to be sorted in ascending order "
                     f"and non-negative (as built by PyG's DataLoader)")


def check_sorted_batch(batch: Optional[Tensor], name: str = 'batch') -> None:
    r"""Raises a :class:`ValueError` naming :obj:`name` unless the batch
    vector :obj:`batch` (PyG's assignment of nodes to graphs) is sorted in
    ascending order and non-negative, as PyG's
    :class:`~torch_geometric.loader.DataLoader` builds it. :obj:`None` and
    empty vectors pass.

    This reads the device (one host synchronisation on a GPU): call it once
    at a model's or layer's entry, not in an inner loop.
    """
    if batch is None or batch.numel() == 0:
        return
    if not bool(sorted_batch_flag(batch)):
        raise_unsorted(name)


def check_finite(x: Tensor, name: str) -> None:
    r"""Raises a :class:`ValueError` naming :obj:`name` if :obj:`x` holds NaN
    or infinite values (one host synchronisation on a GPU)."""
    if x.numel() > 0 and not bool(torch.isfinite(x).all()):
        raise_non_finite(name)


def raise_non_finite(name: str) -> None:
    raise ValueError(f"Expected '{name}' to hold finite values only (found "
                     f"NaN or inf)")


__all__ = ['check_sorted_batch', 'check_finite']
