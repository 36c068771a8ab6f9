r"""Layer normalisation of the last dimension, as
:func:`torch.nn.functional.layer_norm`, with a Triton kernel for inference
on CUDA."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from samsa_geo.ops import _triton
from samsa_geo.ops._utils import resolve_backend, use_triton

#: Values of ``backend``.
BACKENDS = ('auto', 'triton', 'torch')


def layer_norm(x: Tensor, weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5, *,
               backend: str = 'auto') -> Tensor:
    r"""Normalises every row :math:`\mathbf{x} \in \mathbb{R}^C` of ``x``
    over its last dimension,

    .. math::
        \mathbf{y} = \frac{\mathbf{x} - \mu}{\sqrt{\sigma^2 + \epsilon}}
        \odot \boldsymbol{\gamma} + \boldsymbol{\beta},

    equal to ``F.layer_norm(x, (C,), weight, bias, eps)``, autocast
    included (under autocast the result is float32, as autocast runs
    layer normalisation in float32).

    With ``backend='auto'`` a call that records no gradient, on CUDA,
    outside :func:`torch.compile` and export, with :math:`C \le 1024`, runs
    one Triton kernel that normalises blocks of rows per program: at the
    point encoders' widths (:math:`C = 64`, millions of rows) PyTorch's
    kernel takes several times longer. Other calls, and ``backend='torch'``,
    run :func:`torch.nn.functional.layer_norm`; ``backend='triton'``
    insists on the kernel (on a CPU under Triton's interpreter too).

    Args:
        x (Tensor): Rows :math:`(*, C)`, floating point.
        weight (Tensor, optional): Scale :math:`\boldsymbol{\gamma}`,
            :math:`(C)`. (default: :obj:`None`)
        bias (Tensor, optional): Shift :math:`\boldsymbol{\beta}`,
            :math:`(C)`. (default: :obj:`None`)
        eps (float, optional): :math:`\epsilon`. (default: :obj:`1e-5`)
        backend (str, optional): :obj:`"auto"`, :obj:`"triton"` or
            :obj:`"torch"`. (default: :obj:`"auto"`)

    Shapes:
        - **input:** :math:`(*, C)`
        - **output:** :math:`(*, C)`
    """
    if not isinstance(x, Tensor) or x.dim() == 0:
        raise ValueError(f"Expected 'x' to be a tensor of shape [*, C] "
                         f"(got {getattr(x, 'shape', type(x).__name__)})")
    if not x.is_floating_point():
        raise TypeError(f"Expected 'x' to be floating point (got {x.dtype})")
    C = x.size(-1)
    for name, t in (('weight', weight), ('bias', bias)):
        if t is not None and (not isinstance(t, Tensor)
                              or tuple(t.shape) != (C, )):
            raise ValueError(f"Expected '{name}' to have shape [{C}] "
                             f"(got {getattr(t, 'shape', t)})")
        if t is not None and not t.is_floating_point():
            raise TypeError(f"Expected '{name}' to be floating point (got "
                            f"{t.dtype})")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) \
            or not eps > 0:
        raise ValueError(f"Expected 'eps' to be a positive number (got "
                         f"{eps!r})")
    backend = resolve_backend(backend, BACKENDS)
    if backend != 'torch' and use_triton(
            backend, _triton_serves(x, weight, bias, backend == 'triton'),
            f'floating-point rows of at most {_triton.MAX_NORM_CHANNELS:,} '
            'channels, on CUDA, without gradients, outside compiled or '
            'exported graphs'):
        from samsa_geo.ops._triton.layer_norm import layer_norm_triton
        # CUDA autocast runs layer normalisation in float32.
        autocast = x.is_cuda and torch.is_autocast_enabled('cuda')
        with _triton.device_guard(x.device):
            return layer_norm_triton(
                x, weight, bias, eps,
                torch.float32 if autocast else x.dtype)
    return F.layer_norm(x, (C, ), weight, bias, eps)


def _triton_serves(x: Tensor, weight: Optional[Tensor],
                   bias: Optional[Tensor], forced: bool) -> bool:
    affine = [t for t in (weight, bias) if t is not None]
    return (x.dtype in _triton.KERNEL_DTYPES
            and _triton.row_kernel_serves(x, affine, forced))
