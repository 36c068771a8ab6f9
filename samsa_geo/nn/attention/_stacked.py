r"""Parameters of several linear layers cast (and concatenated) in one go.

Under autocast every :func:`torch.nn.functional.linear` casts its weight
and bias on its own: one kernel and one autograd node per tensor in the
forward pass, one kernel per tensor in the backward pass. Here the tensors
go through one concatenation and one cast forward and one concatenation
and one cast backward, behind a single autograd node; the values and the
gradients are those of the separate casts (a cast is elementwise).
"""
from typing import List, Sequence, Tuple

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
        ctx.numel = [t.numel() for t in tensors]
        ctx.shapes = [t.shape for t in tensors]
        flat = torch.cat([_flat(t) for t in tensors])  # [sum |t_i|]
        if flat.dtype != dtype:
            flat = flat.to(dtype)
        groups = [ctx.shapes[i:i + n] for i, n in _starts(sizes)]
        parts = flat.split([sum(s.numel() for s in g) for g in groups])
        # [sum of the group's dim 0, ...] views of the flat buffer
        return tuple(p if len(g[0]) == 1 else
                     p.view(sum(s[0] for s in g), *g[0][1:])
                     for p, g in zip(parts, groups))

    @staticmethod
    def backward(ctx, *grads: Tensor):
        flat = torch.cat([_flat(g) for g in grads])  # [sum |t_i|]
        if flat.dtype != ctx.in_dtype:
            flat = flat.to(ctx.in_dtype)
        parts = flat.split(ctx.numel)
        return (None, None) + tuple(
            p if len(s) == 1 else p.view(s)
            for p, s in zip(parts, ctx.shapes))


def _flat(t: Tensor) -> Tensor:
    # [*] -> [|t|]; a 1-d tensor as it is (no view to dispatch).
    return t if t.dim() == 1 else t.reshape(-1)


def _starts(sizes: Sequence[int]) -> List[Tuple[int, int]]:
    # (first tensor, number of tensors) of every group.
    out, i = [], 0
    for n in sizes:
        out.append((i, n))
        i += n
    return out


def stacked_cast(groups: Sequence[Sequence[Tensor]],
                 dtype: torch.dtype) -> List[Tensor]:
    r"""One tensor per group of ``groups``: ``torch.cat(group, 0)`` cast to
    ``dtype``, differentiable, with one concatenation and one cast in all
    (forward and backward) instead of one cast per tensor and one
    concatenation per group. Where nothing needs a cast, single-tensor
    groups come back as they are and only the others are concatenated.

    Args:
        groups (Sequence[Sequence[Tensor]]): Groups of tensors of one
            dtype; the tensors of a group agree in every dim but the
            first.
        dtype (torch.dtype): The dtype of the outputs.
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"Expected 'dtype' to be a torch.dtype "
                        f"(got {type(dtype).__name__})")
    groups = [list(g) for g in groups]
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError("Expected 'groups' to be non-empty groups of "
                         "tensors")
    in_dtype = groups[0][0].dtype
    for g in groups:
        for t in g:
            if not isinstance(t, Tensor) or t.dtype != in_dtype:
                raise TypeError(f"Expected every tensor of 'groups' to be "
                                f"a tensor of dtype {in_dtype}")
            if t.dim() == 0 or t.shape[1:] != g[0].shape[1:]:
                raise ValueError(f"Expected the tensors of a group to agree "
                                 f"in every dim but the first (got "
                                 f"{[list(u.shape) for u in g]})")
    if dtype == in_dtype:  # nothing to cast: single tensors pass through
        multi = [g for g in groups if len(g) > 1]
        stacked = iter(_apply(multi, dtype) if multi else ())
        return [next(stacked) if len(g) > 1 else g[0] for g in groups]
    return _apply(groups, dtype)


def _apply(groups: List[List[Tensor]], dtype: torch.dtype) -> List[Tensor]:
    sizes = tuple(len(g) for g in groups)
    return list(_StackedCast.apply(dtype, sizes,
                                   *[t for g in groups for t in g]))
