r"""Parameters of several linear layers cast (and concatenated) in one go.

Under autocast every :func:`torch.nn.functional.linear` casts its weight
and bias on its own: one kernel and one autograd node per tensor in the
forward pass, one kernel per tensor in the backward pass. Here the tensors
go through one concatenation and one cast forward and one concatenation
and one cast backward, behind a single autograd node; the values and the
gradients are those of the separate casts (a cast is elementwise).
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor


class _StackedCast(torch.autograd.Function):
    r"""Tensors :math:`t_1, \dots, t_n` in groups of ``sizes`` -> one
    tensor per group: the group's tensors concatenated along dim 0, cast
    to ``dtype``. Every output is a view of one flat buffer of
    :math:`\sum_i |t_i|` elements; the backward pass casts the flat
    gradient back and hands out views of it."""
    @staticmethod
    def forward(ctx, dtype: torch.dtype, sizes: Tuple[int, ...],
                *tensors: Tensor) -> Tuple[Tensor, ...]:
        ctx.in_dtype = tensors[0].dtype
        ctx.shapes = [t.shape for t in tensors]
        flat = torch.cat([_flat(t) for t in tensors])  # [sum |t_i|]
        if flat.dtype != dtype:
            flat = flat.to(dtype)
        out, i = [], 0
        for part in flat.split(_group_numels(ctx.shapes, sizes)):
            n = sizes[len(out)]
            shape = ctx.shapes[i]
            if len(shape) > 1:  # [sum of the group's dim 0, ...]
                rows = sum(s[0] for s in ctx.shapes[i:i + n])
                part = part.view(rows, *shape[1:])
            out.append(part)
            i += n
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        flat = torch.cat([_flat(g) for g in grads])  # [sum |t_i|]
        if flat.dtype != ctx.in_dtype:
            flat = flat.to(ctx.in_dtype)
        parts = flat.split([s.numel() for s in ctx.shapes])
        return (None, None) + tuple(
            p if len(s) == 1 else p.view(s)
            for p, s in zip(parts, ctx.shapes))


def _flat(t: Tensor) -> Tensor:
    # [*] -> [|t|]; a 1-d tensor as it is (no view to dispatch).
    return t if t.dim() == 1 else t.reshape(-1)


def _group_numels(shapes, sizes: Sequence[int]) -> List[int]:
    out, i = [], 0
    for n in sizes:
        out.append(sum(s.numel() for s in shapes[i:i + n]))
        i += n
    return out


def stacked_cast(groups: Sequence[Sequence[Tensor]],
                 dtype: torch.dtype) -> List[Tensor]:
    r"""One tensor per group of ``groups``: ``torch.cat(group, 0)`` cast to
    ``dtype``, differentiable, with one concatenation and one cast in all
    (forward and backward) instead of one cast per tensor and one
    concatenation per group. Where nothing needs a cast, single-tensor
    groups come back as they are and the others are concatenated by
    :func:`torch.cat` (an autograd function in Python would only add
    host work there).

    Args:
        groups (Sequence[Sequence[Tensor]]): Non-empty groups of tensors
            of one dtype; the tensors of a group agree in every dim but
            the first.
        dtype (torch.dtype): The dtype of the outputs.
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"Expected 'dtype' to be a torch.dtype "
                        f"(got {type(dtype).__name__})")
    if not groups or not all(groups):
        raise ValueError("Expected 'groups' to be non-empty groups of "
                         "tensors")
    in_dtype = groups[0][0].dtype
    tensors = [t for g in groups for t in g]
    if any(t.dtype != in_dtype for t in tensors):
        raise TypeError(f"Expected every tensor of 'groups' to be of "
                        f"dtype {in_dtype} (got "
                        f"{[t.dtype for t in tensors]})")
    multi = [g for g in groups if len(g) > 1]
    for g in multi:
        if any(t.dim() == 0 or t.shape[1:] != g[0].shape[1:] for t in g):
            raise ValueError(f"Expected the tensors of a group to agree "
                             f"in every dim but the first (got "
                             f"{[list(t.shape) for t in g]})")
    if dtype == in_dtype:  # nothing to cast: plain concatenations
        return [torch.cat(g, 0) if len(g) > 1 else g[0] for g in groups]
    return _apply(groups, dtype)


def tensor_stamp(tensors: Sequence[Optional[Tensor]]) -> tuple:
    r"""``(data pointer, version counter)`` of every tensor: it changes
    when a tensor is replaced, moved or changed in place. Inference
    tensors have no version counter (and cannot change outside inference
    mode): theirs reads 0. :obj:`None` entries stay :obj:`None`."""
    try:
        return tuple([None if t is None else (t.data_ptr(), t._version)
                      for t in tensors])
    except RuntimeError:  # an inference tensor
        return tuple([None if t is None else
                      (t.data_ptr(), 0 if t.is_inference() else t._version)
                      for t in tensors])


def kept_while_unchanged(cache: Optional[tuple], tensors: Sequence[Tensor],
                         make: Callable[[], Sequence[Tensor]],
                         *key: object) -> tuple:
    r"""``(key, *make())``, computed without gradients and kept between
    calls: ``cache`` (the previous call's result, :obj:`None` at first) is
    returned as it is while ``key``, inference mode and every tensor of
    ``tensors`` (its data pointer and version counter: not replaced,
    moved or changed in place; a write through ``.data`` goes unseen, see
    :func:`tensor_stamp`) are the same; tensors made in inference mode
    cannot be saved for a backward outside it, so entering or leaving it
    makes them again."""
    full_key = (*key, torch.is_inference_mode_enabled(),
                tensor_stamp(tensors))
    if cache is None or cache[0] != full_key:
        with torch.no_grad():
            cache = (full_key, *make())
    return cache


def cached_stacked_cast(cache: Optional[tuple],
                        groups: Sequence[Sequence[Tensor]],
                        dtype: torch.dtype) -> Tuple[tuple, List[Tensor]]:
    r""":func:`stacked_cast` for calls that no gradient reaches
    (inference), kept between calls by :func:`kept_while_unchanged`:
    returns the cache ``(key, *outputs)`` to keep and the outputs.

    Args:
        cache (tuple, optional): What the previous call returned first
            (:obj:`None` at first).
        groups (Sequence[Sequence[Tensor]]): As in :func:`stacked_cast`.
        dtype (torch.dtype): The dtype of the outputs.
    """
    cache = kept_while_unchanged(
        cache, [t for g in groups for t in g],
        lambda: stacked_cast(groups, dtype), dtype)
    return cache, list(cache[1:])


def _apply(groups: Sequence[Sequence[Tensor]],
           dtype: torch.dtype) -> List[Tensor]:
    return list(_StackedCast.apply(dtype, tuple(len(g) for g in groups),
                                   *[t for g in groups for t in g]))
