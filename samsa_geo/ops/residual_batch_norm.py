r"""The residual sum followed by a training batch normalisation, with Triton
kernels (forward and backward) on CUDA."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from samsa_geo.ops import _triton
from samsa_geo.ops._utils import (
    check_channel_vectors,
    check_floating,
    check_residual,
    resolve_backend,
    use_triton,
)

#: Values of ``backend``.
BACKENDS = ('auto', 'triton', 'torch')


def residual_batch_norm(x: Tensor, h: Tensor, weight: Optional[Tensor] = None,
                        bias: Optional[Tensor] = None,
                        running_mean: Optional[Tensor] = None,
                        running_var: Optional[Tensor] = None, *,
                        momentum: float = 0.1, eps: float = 1e-5,
                        copy_dtype: Optional[torch.dtype] = None,
                        backend: str = 'auto',
                        ) -> Tuple[Tensor, Optional[Tensor]]:
    r"""Adds the residual ``h`` to ``x`` and normalises every channel with
    the statistics of the batch, as a batch norm in training does,

    .. math::
        \mathbf{y}_i = \frac{\mathbf{x}_i + \mathbf{h}_i - \boldsymbol{\mu}}
        {\sqrt{\boldsymbol{\sigma}^2 + \epsilon}} \odot \boldsymbol{\gamma}
        + \boldsymbol{\beta},

    where :math:`\boldsymbol{\mu}` and :math:`\boldsymbol{\sigma}^2` are
    the mean and the biased variance of :math:`\mathbf{x} + \mathbf{h}`
    over its :math:`N` rows: equal to ``F.batch_norm(x + h, running_mean,
    running_var, weight, bias, training=True, momentum=momentum,
    eps=eps)`` up to rounding, with the running statistics updated in
    place in the same way (with the unbiased variance), in the dtype that
    PyTorch's expression gives (float32 for a float32 ``x`` and a
    bfloat16 ``h``). With ``copy_dtype`` it also returns
    :math:`\mathbf{y}` in that dtype, the copy that a following autocast
    matrix product would make; gradients flow through both outputs.

    With ``backend='auto'``, on CUDA, outside :func:`torch.compile` and
    export, with :math:`N \ge 2` and :math:`C \le 1024`, three Triton
    kernels run the forward pass and three the backward pass. The sum is
    never stored and both copies' gradients are added inside the kernels;
    PyTorch needs about four passes over ``[N, C]`` more each way (see
    :mod:`samsa_geo.ops._triton.batch_norm`). ``backend='torch'`` runs
    PyTorch's, ``backend='triton'`` insists on the kernels (on a CPU under
    Triton's interpreter too). Gradients of gradients are not supported
    on the kernels' path.

    Args:
        x (Tensor): Rows :math:`(N, C)`, floating point.
        h (Tensor): The residual, :math:`(N, C)`, floating point.
        weight (Tensor, optional): :math:`\boldsymbol{\gamma}`,
            :math:`(C)`. (default: :obj:`None`)
        bias (Tensor, optional): :math:`\boldsymbol{\beta}`, :math:`(C)`.
            (default: :obj:`None`)
        running_mean (Tensor, optional): Running mean :math:`(C)`, updated
            in place; given with ``running_var`` or not at all.
            (default: :obj:`None`)
        running_var (Tensor, optional): Running variance :math:`(C)`,
            updated in place. (default: :obj:`None`)
        momentum (float, optional): Weight of the batch's statistics in
            the running ones. (default: :obj:`0.1`)
        eps (float, optional): Added to the variance. (default:
            :obj:`1e-5`)
        copy_dtype (torch.dtype, optional): Dtype of a second copy of the
            output. (default: :obj:`None`)
        backend (str, optional): :obj:`"auto"`, :obj:`"triton"` or
            :obj:`"torch"`. (default: :obj:`"auto"`)

    Returns:
        :math:`\mathbf{y}` :math:`(N, C)` and its copy in ``copy_dtype``
        (:obj:`None` without ``copy_dtype``).
    """
    check_residual(x, h)
    N, C = x.shape
    if N < 2:
        raise ValueError(f"Expected more than one row in 'x' for batch "
                         f"statistics (got shape {list(x.shape)})")
    vectors = (('weight', weight), ('bias', bias),
               ('running_mean', running_mean), ('running_var', running_var))
    check_channel_vectors(C, vectors)
    if (running_mean is None) != (running_var is None):
        raise ValueError("Expected 'running_mean' and 'running_var' to be "
                         "given together")
    check_floating((('x', x), ('h', h), *vectors))
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) \
            or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"Expected 'momentum' to be a float in [0, 1] "
                         f"(got {momentum!r})")
    backend = resolve_backend(backend, BACKENDS)
    if backend != 'torch' and use_triton(
            backend, _triton_serves(x, h, vectors, copy_dtype,
                                    backend == 'triton'),
            f'floating-point rows of at most {_triton.MAX_NORM_CHANNELS:,} '
            'channels on one CUDA device, parameters of those dtypes, a '
            'half-precision copy if any, outside compiled or exported '
            'graphs'):
        from samsa_geo.ops._triton.batch_norm import ResidualBatchNorm
        with _triton.device_guard(x.device):
            return ResidualBatchNorm.apply(x, h, weight, bias, running_mean,
                                           running_var, float(momentum),
                                           float(eps), copy_dtype)
    y = F.batch_norm(x + h, running_mean, running_var, weight, bias,
                     training=True, momentum=momentum, eps=eps)
    return y, None if copy_dtype is None else y.to(copy_dtype)


def _triton_serves(x: Tensor, h: Tensor, vectors, copy_dtype, forced: bool,
                   ) -> bool:
    others = [t for _, t in vectors if t is not None]
    return (copy_dtype in (None, torch.float16, torch.bfloat16)
            and all(t.dtype in _triton.KERNEL_DTYPES for t in (x, h, *others))
            and _triton.row_kernel_serves(x, (h, *others), forced,
                                          backward=True))
