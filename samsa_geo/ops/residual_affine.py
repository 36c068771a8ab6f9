r"""The residual sum followed by a per-channel affine map (an evaluation
batch norm, say), with a Triton kernel for inference on CUDA."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from samsa_geo.ops import _triton
from samsa_geo.ops._utils import (
    check_channel_vectors,
    check_floating,
    check_residual,
    promoted_float,
    resolve_backend,
    use_triton,
)

#: Values of ``backend``.
BACKENDS = ('auto', 'triton', 'torch')


def residual_affine(x: Tensor, h: Tensor, scale: Tensor, shift: Tensor, *,
                    copy_dtype: Optional[torch.dtype] = None,
                    backend: str = 'auto',
                    ) -> Tuple[Tensor, Optional[Tensor]]:
    r"""Adds the residual ``h`` to ``x`` and maps every channel affinely,

    .. math::
        \mathbf{y}_i = (\mathbf{x}_i + \mathbf{h}_i) \odot \mathbf{s}
        + \mathbf{t},

    equal to ``torch.addcmul(shift, x + h, scale)`` up to the rounding of
    one fused multiply-add, in the dtype that PyTorch's expression gives
    (float32 for a float32 ``x`` and a bfloat16 ``h``). With
    ``copy_dtype`` it also returns :math:`\mathbf{y}` in that dtype: the
    copy that a following autocast matrix product would make.

    With ``backend='auto'`` a call that records no gradient, on CUDA,
    outside :func:`torch.compile` and export, with :math:`C \le 1024`,
    runs one Triton kernel (PyTorch runs the addition, ``addcmul`` and the
    cast as three, each a pass over ``[N, C]``); ``backend='torch'`` runs
    PyTorch's, ``backend='triton'`` insists on the kernel (on a CPU under
    Triton's interpreter too).

    Args:
        x (Tensor): Rows :math:`(N, C)`, floating point.
        h (Tensor): The residual, :math:`(N, C)`, floating point.
        scale (Tensor): :math:`\mathbf{s}`, :math:`(C)`.
        shift (Tensor): :math:`\mathbf{t}`, :math:`(C)`.
        copy_dtype (torch.dtype, optional): Dtype of a second copy of the
            output. (default: :obj:`None`)
        backend (str, optional): :obj:`"auto"`, :obj:`"triton"` or
            :obj:`"torch"`. (default: :obj:`"auto"`)

    Returns:
        :math:`\mathbf{y}` :math:`(N, C)` and its copy in ``copy_dtype``
        (:obj:`None` without ``copy_dtype``).
    """
    check_residual(x, h)
    vectors = (('scale', scale), ('shift', shift))
    check_channel_vectors(x.size(1), vectors)
    check_floating((('x', x), ('h', h), *vectors))
    backend = resolve_backend(backend, BACKENDS)
    if backend != 'torch' and use_triton(
            backend, _triton_serves(x, h, scale, shift, copy_dtype,
                                    backend == 'triton'),
            f'floating-point rows of at most {_triton.MAX_NORM_CHANNELS:,} '
            'channels, on one CUDA device, a half-precision copy if any, '
            'without gradients, outside compiled or exported graphs'):
        from samsa_geo.ops._triton.residual_affine import (
            residual_affine_triton,
        )
        out_dtype = promoted_float(promoted_float(x.dtype, h.dtype),
                                   promoted_float(scale.dtype, shift.dtype))
        with _triton.device_guard(x.device):
            return residual_affine_triton(x, h, scale, shift, out_dtype,
                                          copy_dtype)
    y = torch.addcmul(shift, x + h, scale)
    return y, None if copy_dtype is None else y.to(copy_dtype)


def _triton_serves(x: Tensor, h: Tensor, scale: Tensor, shift: Tensor,
                   copy_dtype: Optional[torch.dtype], forced: bool) -> bool:
    others = (h, scale, shift)
    return (copy_dtype in (None, torch.float16, torch.bfloat16)
            and all(t.dtype in _triton.KERNEL_DTYPES for t in (x, *others))
            and _triton.row_kernel_serves(x, others, forced))
