"""Bookkeeping for variable-size sets given by a PyG ``batch`` vector.

Nothing here reads a value back from the device once the number of sets is
known: sizes and offsets stay on the device, and the host-side shapes use
the exact largest set size where the caller knows it (``max_num_nodes``)
and safe bounds where it does not.
"""
import math
from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor

from samsa_geo.nn.attention._dispatch import is_exporting, is_tracing
from samsa_geo.ops.validation import sorted_batch_flag


class SetInfo:
    r"""Sizes of the sets in a batch and of the sampled key sets.

    Attributes:
        num_sets (int): :math:`B`, number of sets (empty ones included).
        max_size (int, optional): largest set size :math:`n_{\max}`, or
            :obj:`None` where the host does not know it.
        k_max (int): key slots per set, :math:`\geq \max_b k_b`.
        m_max (int): bottom slots per set, :math:`\geq \max_b m_b`.
        equal (bool): every set has :math:`n_{\max}` tokens (the padded
            layout is a reshape).
        all_valid (bool): every set has :math:`k_b = k_{\max}` and
            :math:`m_b = m_{\max}` (no slot needs masking): the sets are
            equal.
        ptr (Tensor): ``[B + 1]`` offsets of the sets in the token list.
        size (Tensor): ``[B]`` tokens per set :math:`n_b`.
        k (Tensor): ``[B]`` keys kept per set and head :math:`k_b`.
        num_bottom (Tensor): ``[B]`` size of the relaxation's bottom set
            :math:`m_b = \min(k_b, n_b + R - k_b)`.

    The four tensors are computed on first use: equal-size sets, the
    common case, need none of them (every shape is a reshape).
    """
    def __init__(self, num_sets: int, max_size: Optional[int], k_max: int,
                 m_max: int, equal: bool,
                 tensors: Callable[[], Tuple[Tensor, Tensor, Tensor, Tensor]],
                 ) -> None:
        self.num_sets, self.max_size = num_sets, max_size
        self.k_max, self.m_max = k_max, m_max
        self.equal = equal
        self._make = tensors
        self._tensors: Optional[Tuple[Tensor, Tensor, Tensor, Tensor]] = None

    def _get(self, i: int) -> Tensor:
        if self._tensors is None:
            self._tensors = self._make()
        return self._tensors[i]

    all_valid = property(lambda self: self.equal)
    ptr = property(lambda self: self._get(0))
    size = property(lambda self: self._get(1))
    k = property(lambda self: self._get(2))
    num_bottom = property(lambda self: self._get(3))


def resolve_k(k: Union[int, float], size: Tensor, num_registers: int,
              full: bool) -> Tensor:
    r"""Returns :math:`k_b` per set: ``k`` tokens (int) or a fraction of the
    set (float), never more than the :math:`n_b + R` candidates."""
    num_cand = size + num_registers
    if full:
        return num_cand
    if isinstance(k, float):
        kb = torch.ceil(size.to(torch.float64) * k).long().clamp(min=1)
    else:
        kb = torch.full_like(size, k)
    return torch.minimum(kb, num_cand)


def k_of_size(n: int, k: Union[int, float], num_registers: int,
              full: bool) -> int:
    r""":math:`k_b` of a set of ``n`` tokens as a Python int (the
    :func:`resolve_k` rule without touching the device)."""
    if full:
        return n + num_registers
    if isinstance(k, float):
        return min(max(1, math.ceil(n * k)), n + num_registers)
    return min(k, n + num_registers)


def read_batch(batch: Tensor) -> Tuple[int, int, bool]:
    r"""Reads ``(num_sets, max_size, sorted)`` of a non-empty ``batch``
    vector back from the device in one transfer: the number of sets
    :math:`\max_i b_i + 1`, the longest run of equal values, and whether
    the vector is sorted and non-negative."""
    N = batch.numel()
    idx = torch.arange(N, device=batch.device)
    start = torch.ones_like(batch, dtype=torch.bool)
    start[1:] = batch[1:] != batch[:-1]
    # Position of each token inside its run: index minus the run's start.
    run_start = torch.where(start, idx, 0).cummax(0).values
    ok = sorted_batch_flag(batch)
    stats = torch.stack([batch[-1], (idx - run_start).max(), ok.long()])
    last, longest, is_sorted = stats.tolist()
    return int(last) + 1, int(longest) + 1, bool(is_sorted)


def check_size_hint(name: str, value: Optional[int]) -> None:
    r"""Raises a :class:`TypeError` unless the caller's size hint ``value``
    (``num_graphs``, ``max_num_nodes``) is a non-negative int or
    :obj:`None`."""
    if value is not None and (isinstance(value, bool)
                              or not isinstance(value, int) or value < 0):
        raise TypeError(f"Expected '{name}' to be a non-negative int or "
                        f"None (got {value!r})")


def bounded_size_hint(max_num_nodes: Optional[int],
                      num_tokens: Union[int, torch.SymInt]) -> Optional[int]:
    r"""The caller's ``max_num_nodes`` hint, at most ``num_tokens``: no set
    holds more than the batch's tokens, so a larger bound (one kept for
    every batch, or a mistyped one) sizes nothing beyond them. Unchanged
    where ``num_tokens`` is symbolic (a traced graph keeps its bound)."""
    if max_num_nodes is None or not isinstance(num_tokens, int):
        return max_num_nodes
    return min(max_num_nodes, num_tokens)


def batch_sizes(batch: Tensor) -> Tuple[int, int]:
    r"""``(num_sets, max_size)`` of a sorted ``batch`` vector: read back
    from the device once per batch tensor in eager mode (cached on the
    tensor, keyed by its version counter, so that the layers of a model
    share one read-back); raises :class:`ValueError` if ``batch`` is not
    sorted and non-negative."""
    if batch.numel() == 0:
        return 1, 0
    tracing = is_tracing()
    cache = None if tracing else getattr(batch, '_samsa_sets', None)
    if cache is not None and cache[0] == batch._version:
        return cache[1], cache[2]
    B, n_max, ok = read_batch(batch)
    if not ok:
        raise ValueError("Expected 'batch' to be sorted and non-negative "
                         "(PyG convention)")
    if not tracing:
        try:
            batch._samsa_sets = (batch._version, B, n_max)
        except (AttributeError, RuntimeError):  # tensor subclasses
            pass
    return B, n_max


def checked_sizes(batch: Tensor, num_graphs: Optional[int],
                  max_num_nodes: Optional[int]) -> Tuple[int, int]:
    r""":func:`batch_sizes` of ``batch``, after checking the caller's size
    hints against them: a :class:`ValueError` naming a hint below the
    number of sets or the largest set (:obj:`None`: not checked)."""
    B, n_max = batch_sizes(batch)
    for name, hint, needed, what in (
            ('num_graphs', num_graphs, B, 'number of sets'),
            ('max_num_nodes', max_num_nodes, n_max, 'largest set size')):
        if hint is not None and hint < needed:
            raise ValueError(f"Expected '{name}' >= {needed}, the {what} in "
                             f"'batch' (got {hint}); pass batch_hints(data) "
                             f"or leave it None")
    return B, n_max


def check_exportable(num_graphs: Optional[int],
                     max_num_nodes: Optional[int], need_size: bool) -> None:
    r"""Raises a :class:`ValueError` while :func:`torch.export.export` (or
    a TorchScript trace, as ONNX export runs it) records a call with a
    ``batch`` vector whose set sizes would have to be read back from it:
    without ``num_graphs``, or without ``max_num_nodes`` where
    ``need_size`` (a fractional ``k``, full attention). An exported graph
    cannot hold that read-back (PyTorch reports it as a
    ``GuardOnDataDependentSymNode`` error naming neither)."""
    if (num_graphs is not None
            and (max_num_nodes is not None or not need_size)) \
            or not is_exporting():
        return
    names = "'num_graphs' and 'max_num_nodes'" if need_size \
        else "'num_graphs'"
    raise ValueError(
        f"Expected {names} when exporting or tracing a call with a "
        f"'batch' vector: the sizes of the sets cannot be read back from "
        f"'batch' inside an exported graph. Pass them as keyword "
        f"arguments of the call, e.g. torch.export.export(model, args, "
        f"kwargs=batch_hints(data)) (samsa_geo.nn.batch_hints)")


def check_hints(batch: Tensor, num_graphs: Optional[int],
                max_num_nodes: Optional[int], check_values: bool) -> None:
    r"""Checks the caller's size hints of a call with a ``batch`` vector:
    their types (:func:`check_size_hint`); while exporting, that nothing
    must be read back (:func:`check_exportable`); and, where
    ``check_values`` (the CPU, or debug mode on other devices), their
    values against ``batch`` (:func:`checked_sizes`, one read-back per
    batch tensor: a later check of the same tensor reads the sizes
    cached on it)."""
    check_size_hint('num_graphs', num_graphs)
    check_size_hint('max_num_nodes', max_num_nodes)
    if is_tracing():
        check_exportable(num_graphs, max_num_nodes, False)
    elif check_values and batch.numel() > 0 and (
            num_graphs is not None or max_num_nodes is not None):
        checked_sizes(batch, num_graphs, max_num_nodes)


def set_offsets(batch: Tensor, num_sets: int) -> Tensor:
    r"""``[B + 1]`` offsets of the sets of a sorted ``batch`` vector, on
    the device without a read-back: set :math:`b` starts at the first
    :math:`b`. ONNX has no ``searchsorted``: an ONNX export counts the
    tokens of every set instead (the same offsets for a valid ``batch``)."""
    if torch.onnx.is_in_onnx_export():
        count = batch.new_zeros(num_sets).scatter_add_(
            0, batch, torch.ones_like(batch))  # [B]
        return torch.cat([count.new_zeros(1), count.cumsum(0)])  # [B + 1]
    return torch.searchsorted(batch, torch.arange(
        num_sets + 1, device=batch.device, dtype=batch.dtype))


def search_right(bounds: Tensor, values: Tensor) -> Tensor:
    r"""``torch.searchsorted(bounds, values, right=True)`` for a sorted 1-D
    ``bounds``: the number of bounds at most each value. ONNX has no
    ``searchsorted``: an ONNX export compares every value with every
    bound instead."""
    if torch.onnx.is_in_onnx_export():
        # [V, 1] against [1, L] -> [V, L] -> [V]
        return (bounds.view(1, -1) <= values.view(-1, 1)).sum(1)
    return torch.searchsorted(bounds, values, right=True)


def sort_stable(keys: Tensor, dim: int = -1) -> Tuple[Tensor, Tensor]:
    r"""``torch.sort(keys, dim=dim, stable=True)`` (values and indices) of
    integer ``keys``. ONNX has no stable sort: an ONNX export sorts the
    unique keys ``key * n + position`` (``n`` entries along ``dim``)."""
    if torch.onnx.is_in_onnx_export():
        n = keys.size(dim)
        shape = [1] * keys.dim()
        shape[dim] = n
        position = torch.arange(n, device=keys.device).view(shape)
        indices = (keys * n + position).sort(dim=dim).indices
        return keys.gather(dim, indices), indices
    return torch.sort(keys, dim=dim, stable=True)


def set_info(num_tokens: int, batch: Optional[Tensor], k: Union[int, float],
             num_registers: int, full: bool, device: torch.device,
             num_sets: Optional[int] = None,
             max_size: Optional[int] = None) -> SetInfo:
    r"""Computes :class:`SetInfo`, reading nothing back from the device
    once ``num_sets`` is given.

    Args:
        num_tokens (int): :math:`N`.
        batch (Tensor, optional): ``[N]`` sorted set index per token;
            :obj:`None` for one set.
        num_sets (int, optional): :math:`B` (ignored when ``batch`` is
            :obj:`None`); without it :math:`B` and :math:`n_{\max}` are
            read from ``batch`` (one device read-back).
        max_size (int, optional): :math:`n_{\max}` if the caller knows it;
            :obj:`None` makes the slot counts safe bounds and every slot
            masked by its set's own count. An integer ``k`` needs no
            :math:`n_{\max}`; a fractional one does.
    """
    N, R = num_tokens, num_registers
    if batch is None:  # one set: Python ints, device fills on demand
        k_max = k_of_size(N, k, R, full)
        m_max = min(k_max, N + R - k_max)

        def one_set():
            one = torch.ones(1, dtype=torch.long, device=device)
            ptr = torch.arange(2, device=device) * N  # [0, N]
            return ptr, one * N, one * k_max, one * m_max

        return SetInfo(1, N, k_max, m_max, True, one_set)

    if num_sets is None:
        num_sets, max_size = batch_sizes(batch)
    B = num_sets
    equal = max_size is not None and B * max_size == N
    if max_size is not None:
        k_max = k_of_size(max_size, k, R, full)
        m_max = min(k_max, max_size + R - k_max)
    elif full or isinstance(k, float):
        raise ValueError("Expected 'max_size' when 'k' is a fraction or "
                         "the attention is full")
    else:  # no set holds more than the N + R candidates
        k_max = min(k, N + R)
        m_max = min(k_max, max(N + R - 1, 0))

    def tensors():
        if equal:  # sizes sum to N and none exceeds max_size: all equal
            ptr = torch.arange(B + 1, device=device) * max_size
        else:
            ptr = set_offsets(batch, B)
        size = ptr[1:] - ptr[:-1]
        kb = resolve_k(k, size, R, full)
        return ptr, size, kb, torch.minimum(kb, size + R - kb)

    return SetInfo(B, max_size, k_max, m_max, equal, tensors)
