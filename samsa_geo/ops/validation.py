r"""Checks of input tensors, raising errors that name the argument.

Type, dtype and shape checks (:func:`check_tensor`,
:func:`check_float_tensor`, :func:`check_integer_tensor`,
:func:`check_matrix`, :func:`check_edge_index`, :func:`check_bool`,
:func:`check_kwargs`, :func:`check_int`, :func:`check_positive_int`,
:func:`check_non_negative_int`,
:func:`check_batch_vector`) read nothing from the device. Value checks (a
sorted batch vector, finite points) read the device, which on a GPU makes
the host wait: call them once at a model's or layer's entry. The geometry
ops run such checks behind the switch of
:mod:`samsa_geo.ops.config`.
"""
import math
from numbers import Integral, Real
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

#: The dtypes a batch vector of the attention and the models may have.
BATCH_DTYPES = (torch.long, torch.int32)


def check_tensor(name: str, value: Any) -> Tensor:
    r"""Raises a :class:`TypeError` naming :obj:`name` unless :obj:`value`
    is a tensor; returns it."""
    if not isinstance(value, Tensor):
        raise TypeError(f"Expected '{name}' to be a Tensor "
                        f"(got {type(value).__name__})")
    return value


def check_float_tensor(name: str, value: Any) -> Tensor:
    r""":func:`check_tensor`, and a :class:`TypeError` unless the dtype is a
    floating-point one."""
    check_tensor(name, value)
    if not value.is_floating_point():
        raise TypeError(f"Expected '{name}' to be a floating-point tensor "
                        f"(got {value.dtype})")
    return value


def check_integer_tensor(name: str, value: Any,
                         dtypes: Optional[Tuple[torch.dtype, ...]] = None
                         ) -> Tensor:
    r""":func:`check_tensor`, and a :class:`TypeError` unless the dtype is
    one of :obj:`dtypes` (:obj:`None`: any integer dtype)."""
    check_tensor(name, value)
    if dtypes is None:
        ok = not (value.dtype.is_floating_point or value.dtype == torch.bool)
    else:
        ok = value.dtype in dtypes
    if not ok:
        of = '' if dtypes is None else \
            f" of dtype {' or '.join(map(str, dtypes))}"
        raise TypeError(f"Expected '{name}' to be an integer tensor{of} "
                        f"(got {value.dtype})")
    return value


def check_number(name: str, value: Any, finite: bool = False) -> float:
    r"""Raises a :class:`TypeError` naming :obj:`name` unless :obj:`value`
    is a real number (a bool is not), and with :obj:`finite` a
    :class:`ValueError` where it is NaN or infinite; returns it. Ranges
    are the caller's to check (a comparison with NaN is false, so a range
    written as ``low <= value < high`` refuses NaN too)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"Expected '{name}' to be a float "
                        f"(got {type(value).__name__})")
    if finite and not math.isfinite(value):
        raise ValueError(f"Expected '{name}' to be finite (got {value})")
    return value


def check_positive_int(name: str, value: int, *,
                       integral: bool = False) -> None:
    r"""Raises a :class:`TypeError` unless :obj:`value` is an int, a
    :class:`ValueError` unless it is positive. A bool is no int here
    (:obj:`True` would count as 1); with :obj:`integral`, NumPy ints (any
    :class:`numbers.Integral`) pass too, unconverted."""
    check_int(name, value, integral=integral)
    if value <= 0:
        raise ValueError(f"Expected '{name}' to be positive (got {value})")


def check_non_negative_int(name: str, value: int, *,
                           integral: bool = False) -> None:
    r"""As :func:`check_positive_int`, for counts that may be 0."""
    check_int(name, value, integral=integral)
    if value < 0:
        raise ValueError(f"Expected '{name}' to be non-negative "
                         f"(got {value})")


def check_int(name: str, value: Any, *, integral: bool = False) -> None:
    r"""Raises a :class:`TypeError` naming :obj:`name` unless :obj:`value`
    is an int (not a bool; with :obj:`integral`, any
    :class:`numbers.Integral`, such as a NumPy int)."""
    if isinstance(value, bool) or not isinstance(
            value, Integral if integral else int):
        raise TypeError(f"Expected '{name}' to be an int "
                        f"(got {type(value).__name__})")


def check_matrix(name: str, value: Any, columns: int) -> Tensor:
    r"""Raises an error naming :obj:`name` unless :obj:`value` is a
    floating-point tensor of shape :obj:`[N, columns]`; returns it."""
    check_tensor(name, value)
    if value.dim() != 2 or value.size(1) != columns:
        raise ValueError(f"Expected '{name}' to have shape [N, {columns}] "
                         f"(got {list(value.shape)})")
    if not value.is_floating_point():
        raise TypeError(f"Expected '{name}' to be a floating-point tensor "
                        f"(got {value.dtype})")
    return value


def check_bool(name: str, value: Any,
               optional: bool = False) -> Optional[bool]:
    r"""Raises a :class:`TypeError` naming :obj:`name` unless :obj:`value`
    is a bool (a string such as :obj:`'no'` is true to Python), or with
    :obj:`optional` :obj:`None`; returns it."""
    if optional and value is None:
        return value
    if not isinstance(value, bool):
        or_none = ' or None' if optional else ''
        raise TypeError(f"Expected '{name}' to be a bool{or_none} "
                        f"(got {value!r})")
    return value


def check_kwargs(name: str, value: Any) -> Dict[str, Any]:
    r"""Raises a :class:`TypeError` naming :obj:`name` unless :obj:`value`,
    keyword arguments of a layer, is a dict (a mapping) or :obj:`None`;
    returns them as a new dict (empty for :obj:`None`)."""
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"Expected '{name}' to be a dict or None "
                        f"(got {type(value).__name__})")
    return dict(value or {})


def check_edge_index(edge_index: Any, name: str = 'edge_index',
                     length: str = 'E') -> Tensor:
    r"""Raises an error naming :obj:`name` unless :obj:`edge_index` is an
    integer tensor of shape :obj:`[2, E]` (:obj:`length` names :obj:`E` in
    the message); returns it."""
    check_tensor(name, edge_index)
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"Expected '{name}' to have shape [2, {length}] "
                         f"(got {list(edge_index.shape)})")
    return check_integer_tensor(name, edge_index)


def check_node_indices(edge_index: Tensor, num_nodes: int,
                       name: str = 'edge_index') -> None:
    r"""Raises an error naming :obj:`name` unless every entry of
    :obj:`edge_index` is a node index in :math:`[0, N)`, :math:`N =`
    :obj:`num_nodes` (one read of the device for a non-empty
    :obj:`edge_index`)."""
    if edge_index.numel() == 0:
        return
    low, high = torch.stack(torch.aminmax(edge_index)).tolist()
    if low < 0 or high >= num_nodes:
        raise ValueError(f"Expected '{name}' to hold node indices in "
                         f"[0, {num_nodes}) (got values in [{low}, {high}])")


def check_batch_vector(batch: Any, size: int,
                       name: str = 'batch') -> Tensor:
    r"""Raises an error naming :obj:`name` unless :obj:`batch` is a
    :obj:`torch.long` or :obj:`torch.int32` vector of shape :obj:`[size]`
    (its order is checked by :func:`check_sorted_batch`); returns it."""
    check_integer_tensor(name, batch, BATCH_DTYPES)
    if batch.dim() != 1 or batch.numel() != size:
        raise ValueError(f"Expected '{name}' to have shape [{size}] "
                         f"(got {list(batch.shape)})")
    return batch


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
    at a model's or layer's entry, not in an inner loop. Anything but an
    integer vector raises a :class:`TypeError` or :class:`ValueError`.
    """
    if batch is None:
        return
    check_integer_tensor(name, batch)
    if batch.dim() != 1:
        raise ValueError(f"Expected '{name}' to be a vector of shape [N] "
                         f"(got {list(batch.shape)})")
    if batch.numel() == 0:
        return
    if not bool(sorted_batch_flag(batch)):
        raise_unsorted(name)


def check_finite(x: Tensor, name: str) -> None:
    r"""Raises a :class:`ValueError` naming :obj:`name` if :obj:`x` holds NaN
    or infinite values (one host synchronisation on a GPU)."""
    if x.numel() > 0 and not bool(torch.isfinite(x).all()):
        raise_non_finite(name)


def scores_flag(x: Tensor) -> Tensor:
    r"""A device-side boolean scalar: whether the scores :obj:`x` hold no
    NaN and no :math:`+\infty` (:math:`-\infty` marks a masked score)."""
    return ~(torch.isnan(x) | (x == float('inf'))).any()


def check_scores(x: Tensor, name: str) -> None:
    r"""Raises a :class:`ValueError` naming :obj:`name` if the scores
    :obj:`x` hold NaN or :math:`+\infty` (one host synchronisation on a
    GPU); :math:`-\infty` (a masked score) is accepted."""
    if x.numel() > 0 and not bool(scores_flag(x)):
        raise_bad_scores(name)


def raise_bad_scores(name: str) -> None:
    raise ValueError(f"Expected '{name}' to hold no NaN and no +inf (found "
                     f"some; masked scores may be -inf)")


def raise_non_finite(name: str) -> None:
    raise ValueError(f"Expected '{name}' to hold finite values only (found "
                     f"NaN or inf)")


__all__ = [
    'check_tensor',
    'check_float_tensor',
    'check_number',
    'check_bool',
    'check_int',
    'check_positive_int',
    'check_non_negative_int',
    'check_kwargs',
    'check_integer_tensor',
    'check_matrix',
    'check_edge_index',
    'check_batch_vector',
    'check_sorted_batch',
    'check_finite',
    'check_scores',
]
