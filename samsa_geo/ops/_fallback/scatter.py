"""Scatter reductions in pure PyTorch."""
import torch
from torch import Tensor


def broadcast_index(index: Tensor, src: Tensor, dim: int) -> Tensor:
    r"""Expands a 1-dimensional :obj:`index` along :obj:`dim` to the shape of
    :obj:`src`."""
    if index.dim() == 1:
        shape = [1] * src.dim()
        shape[dim] = -1
        index = index.view(shape)  # [1, .., N, .., 1]
    return index.expand_as(src)


def scatter(src: Tensor, index: Tensor, dim: int, dim_size: int,
            reduce: str) -> Tensor:
    r"""Reduces slices of :obj:`src` that share an :obj:`index` along
    :obj:`dim`; empty segments are 0."""
    size = list(src.size())
    size[dim] = dim_size
    out = src.new_zeros(size)
    if reduce in ('sum', 'add', 'mean'):
        if index.dim() == 1:
            out.index_add_(dim, index, src)
        else:
            out.scatter_add_(dim, index, src)
        if reduce == 'mean':
            ones = torch.ones_like(index, dtype=src.dtype)
            count = src.new_zeros(dim_size if index.dim() == 1 else size)
            count = count.scatter_add_(index.dim() - 1 if index.dim() == 1
                                       else dim, index, ones).clamp(min=1)
            if index.dim() == 1:
                shape = [1] * src.dim()
                shape[dim] = -1
                count = count.view(shape)  # [1, .., dim_size, .., 1]
            if out.is_floating_point():
                out = out / count
            else:
                out = out.div(count, rounding_mode='floor')
        return out
    # With include_self=False untouched (empty) slots keep their 0.
    op = 'amax' if reduce == 'max' else 'amin'
    return out.scatter_reduce(dim, broadcast_index(index, src, dim), src, op,
                              include_self=False)
