r"""A training batch norm whose statistics count some rows only: the batch
norm of a batch padded to a fixed size (a CUDA graph's), equal on the
rows that count to the batch norm of those rows alone."""
import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

# The rows that count in batch statistics, [N, 1] float32 of 0 / 1, while a
# counted_rows block runs; None outside one.
_mask: Optional[Tensor] = None


@contextlib.contextmanager
def counted_rows(mask: Tensor) -> Iterator[Tensor]:
    r"""Within the block, the training batch norms of samsa_geo's layers
    (:class:`~samsa_geo.nn.SamsaConv`'s, the positional encoder's) take
    their statistics over the rows where ``mask`` is true, through
    :func:`masked_batch_norm`, and write zeros to the others.

    Args:
        mask (Tensor): :math:`(N)` booleans, true for the rows that count;
            every batch norm in the block must normalise :math:`N` rows.

    Yields the mask as :math:`(N, 1)` float32."""
    global _mask
    if not isinstance(mask, Tensor) or mask.dim() != 1 or \
            mask.dtype != torch.bool:
        raise ValueError(f"Expected 'mask' to be a bool tensor of shape "
                         f"[N] (got {_describe(mask)})")
    old = _mask
    _mask = mask.view(-1, 1).float()  # [N, 1]
    try:
        yield _mask
    finally:
        _mask = old


def counted_rows_mask() -> Optional[Tensor]:
    r"""The :math:`(N, 1)` float32 mask of the :func:`counted_rows` block
    that runs, or :obj:`None` outside one."""
    return _mask


def masked_batch_norm(x: Tensor, mask: Tensor,
                      weight: Optional[Tensor] = None,
                      bias: Optional[Tensor] = None,
                      running_mean: Optional[Tensor] = None,
                      running_var: Optional[Tensor] = None,
                      num_batches_tracked: Optional[Tensor] = None,
                      momentum: Optional[float] = 0.1,
                      eps: float = 1e-5) -> Tensor:
    r"""A batch norm in training over the :math:`n = \sum_i m_i` rows of
    ``x`` that ``mask`` :math:`\mathbf{m}` keeps,

    .. math::
        \boldsymbol{\mu} = \frac{1}{n} \sum_i m_i \mathbf{x}_i, \qquad
        \boldsymbol{\sigma}^2 = \frac{1}{n} \sum_i m_i
        (\mathbf{x}_i - \boldsymbol{\mu})^2, \qquad
        \mathbf{y}_i = m_i \left(\frac{\mathbf{x}_i - \boldsymbol{\mu}}
        {\sqrt{\boldsymbol{\sigma}^2 + \epsilon}} \odot \boldsymbol{\gamma}
        + \boldsymbol{\beta}\right),

    with the statistics in float32 (or ``x``'s wider dtype) and
    :math:`\mathbf{y}` in ``x``'s dtype: on the kept rows,
    ``F.batch_norm`` of those rows alone up to rounding, and zero on the
    others, whose gradient is zero too. The
    running statistics are updated in place as ``F.batch_norm`` updates
    them (the unbiased variance, :math:`n \ge 2`), with the cumulative
    average where ``momentum`` is :obj:`None` (``num_batches_tracked`` is
    counted up on the device: nothing is read back). Nothing depends on
    the host knowing :math:`n`, so the call can be captured in a CUDA
    graph and replayed for another :math:`n`.

    Args:
        x (Tensor): Rows :math:`(N, C)`.
        mask (Tensor): :math:`(N, 1)` float32 of zeros and ones (see
            :func:`counted_rows`).
        weight, bias (Tensor, optional): :math:`(C)` affine parameters.
        running_mean, running_var (Tensor, optional): :math:`(C)` running
            statistics, updated in place.
        num_batches_tracked (Tensor, optional): The batch count, counted
            up in place where given.
        momentum (float, optional): As :class:`~torch.nn.BatchNorm1d`'s.
        eps (float, optional): Added to the variance.
    """
    if x.dim() != 2 or mask.shape != (x.size(0), 1):
        raise ValueError(f"Expected 'x' of shape [N, C] and 'mask' of shape "
                         f"[N, 1] (got {list(x.shape)} and "
                         f"{list(mask.shape)})")
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    count = mask.to(xf.dtype).sum()  # []
    mean = (xf * mask).sum(0) / count  # [C]
    diff = xf - mean
    var = (diff.square() * mask).sum(0) / count  # [C]
    out = diff * torch.rsqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    out = (out * mask).to(x.dtype)
    if num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            if momentum is None:  # cumulative average: 1 / batches
                factor: 'float | Tensor' = 1.0 / num_batches_tracked.to(
                    torch.float32)
            else:
                factor = momentum
            unbiased = var * (count / (count - 1))
            running_mean.lerp_(mean.to(running_mean.dtype),
                               factor)
            running_var.lerp_(unbiased.to(running_var.dtype), factor)
    return out


def batch_norm_counted(bn: _BatchNorm, x: Tensor, mask: Tensor) -> Tensor:
    r""":func:`masked_batch_norm` with the parameters, buffers and settings
    of the batch norm module ``bn`` (in training)."""
    return masked_batch_norm(
        x, mask, bn.weight, bn.bias,
        bn.running_mean if bn.track_running_stats else None,
        bn.running_var if bn.track_running_stats else None,
        bn.num_batches_tracked if bn.track_running_stats else None,
        bn.momentum, bn.eps)


def counted_batch_norm(bn: _BatchNorm, x: Tensor) -> Optional[Tensor]:
    r""":func:`batch_norm_counted` of ``x`` over the rows of the
    :func:`counted_rows` block that runs, where ``bn`` is in training;
    :obj:`None` outside such a block or in evaluation (``bn`` itself then
    applies)."""
    if _mask is None or not bn.training:
        return None
    return batch_norm_counted(bn, x, _mask)


def _describe(t: object) -> str:
    if isinstance(t, Tensor):
        return f"{t.dtype} of shape {list(t.shape)}"
    return type(t).__name__
