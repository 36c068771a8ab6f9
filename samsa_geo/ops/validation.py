r"""Value checks of the geometry ops' inputs, and the switch that turns
them off.

Shape, dtype and device checks read only metadata and always run. Checks of
*values* (finite points, a sorted and non-negative batch vector) read the
tensors, which on a GPU makes the host wait for the device. The public ops
(:func:`~samsa_geo.ops.fps`, :func:`~samsa_geo.ops.knn`,
:func:`~samsa_geo.ops.radius` and their graph versions) run them by
default, folded into a single device-to-host read per call; a caller that
validated its input once at its own entry, such as a model's
:meth:`forward`, turns them off around its inner calls:

.. code-block:: python

    from samsa_geo.ops import knn_graph, value_checks

    with value_checks(False):
        edge_index = knn_graph(pos, 16, batch, batch_size=num_clouds)

Under :func:`torch.compile` the ops skip their value checks (a read of a
value would break the graph).
"""
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import Tensor

_VALUE_CHECKS = True


def value_checks_enabled() -> bool:
    r"""Whether the geometry ops check the values of their inputs
    (default :obj:`True`)."""
    return _VALUE_CHECKS


def set_value_checks(enabled: bool) -> None:
    r"""Turns the value checks of the geometry ops on or off for the whole
    process."""
    global _VALUE_CHECKS
    if not isinstance(enabled, bool):
        raise TypeError(f"Expected 'enabled' to be a bool "
                        f"(got {type(enabled).__name__})")
    _VALUE_CHECKS = enabled


@contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    r"""Context manager that turns the value checks of the geometry ops on
    or off, and restores the previous setting on exit."""
    previous = _VALUE_CHECKS
    set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(previous)


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


__all__ = [
    'value_checks_enabled',
    'set_value_checks',
    'value_checks',
    'check_sorted_batch',
    'check_finite',
]
