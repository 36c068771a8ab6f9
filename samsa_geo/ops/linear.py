r"""A linear layer whose bias gradient is summed by a Triton kernel on
CUDA."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from samsa_geo.ops import _triton
from samsa_geo.ops._utils import resolve_backend, use_triton

#: Values of ``backend``.
BACKENDS = ('auto', 'triton', 'torch')

#: The smallest output (``M * C_out`` values) for which ``backend='auto'``
#: takes the kernel. Its gains were measured from 2^23 values up (the
#: layer of 256 channels at 32 x 1,024 tokens on the H200, a88eb0c,
#: ``benchmarks/layer.py --linear-min-elements``); below, where calls are
#: small and bound by the host, the extra autograd node's host work is not
#: repaid, and this limit is a choice, not a measurement.
MIN_ELEMENTS = 1 << 22


def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *,
           backend: str = 'auto') -> Tensor:
    r"""Applies :math:`\mathbf{Y} = \mathbf{X} \mathbf{W}^\top +
    \mathbf{b}`, as :func:`torch.nn.functional.linear` does, with the same
    values and gradients up to the order of the bias gradient's sum.

    With ``backend='auto'``, where the bias needs a gradient, on CUDA,
    outside :func:`torch.compile` and export, with ``input``, ``weight``
    and ``bias`` of one floating dtype (under autocast: after the casts to
    autocast's dtype that :func:`torch.nn.functional.linear` would make)
    and at least :data:`MIN_ELEMENTS` output values, the backward pass sums
    the bias gradient :math:`\sum_i \partial / \partial \mathbf{y}_i` in a
    Triton kernel (:mod:`samsa_geo.ops._triton.linear`): PyTorch's
    reduction reads a 16-bit gradient of 256-1,024 columns at a fraction of
    the memory bandwidth. ``backend='torch'`` runs
    :func:`torch.nn.functional.linear`, ``backend='triton'`` insists on the
    kernel (on a CPU under Triton's interpreter too, at any size). Where
    no bias gradient is recorded, every backend runs
    :func:`torch.nn.functional.linear`: the kernel serves the backward
    pass only. Gradients of gradients are not supported on the kernel's
    path.

    Args:
        input (Tensor): :math:`(*, C_{in})`.
        weight (Tensor): :math:`(C_{out}, C_{in})`.
        bias (Tensor, optional): :math:`(C_{out})`. (default: :obj:`None`)
        backend (str, optional): :obj:`"auto"`, :obj:`"triton"` or
            :obj:`"torch"`. (default: :obj:`"auto"`)

    Returns:
        :math:`(*, C_{out})`.
    """
    if not isinstance(input, Tensor) or input.dim() < 1:
        raise ValueError(f"Expected 'input' to be a tensor of shape "
                         f"[*, C_in] (got "
                         f"{getattr(input, 'shape', type(input).__name__)})")
    if not isinstance(weight, Tensor) or weight.dim() != 2 \
            or weight.size(1) != input.size(-1):
        raise ValueError(f"Expected 'weight' to be a tensor of shape "
                         f"[C_out, {input.size(-1)}] (got "
                         f"{getattr(weight, 'shape', type(weight).__name__)})")
    if bias is not None and (not isinstance(bias, Tensor) or bias.dim() != 1
                             or bias.size(0) != weight.size(0)):
        raise ValueError(f"Expected 'bias' to be a tensor of shape "
                         f"[{weight.size(0)}] (got "
                         f"{getattr(bias, 'shape', type(bias).__name__)})")
    for name, t in (('input', input), ('weight', weight), ('bias', bias)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"Expected '{name}' to be floating point (got "
                            f"{t.dtype})")
    if not torch.is_autocast_enabled(input.device.type) and any(
            t is not None and t.dtype != input.dtype for t in (weight, bias)):
        raise TypeError(f"Expected 'input', 'weight' and 'bias' of one dtype "
                        f"outside autocast (got {input.dtype}, {weight.dtype}"
                        f"{'' if bias is None else ', ' + str(bias.dtype)})")
    if backend not in BACKENDS:
        resolve_backend(backend, BACKENDS)  # its error
    return linear_unchecked(input, weight, bias, backend)


def linear_unchecked(input: Tensor, weight: Tensor,
                     bias: Optional[Tensor] = None,
                     backend: str = 'auto') -> Tensor:
    r""":func:`linear` of arguments that the caller has checked (a
    layer's own input and parameters): no checks, ``backend`` one of
    :data:`BACKENDS`."""
    # The kernel serves the backward pass only: without a bias gradient
    # to record every backend is F.linear (checked first: most calls, in
    # inference, end here).
    if bias is None or not (bias.requires_grad and torch.is_grad_enabled()):
        return F.linear(input, weight, bias)
    backend = resolve_backend(backend, BACKENDS)
    if backend != 'torch' and (backend == 'triton' or (
                input.numel() // max(1, input.size(-1)) * weight.size(0)
                >= MIN_ELEMENTS)):
        args = _autocast(input, weight, bias)
        if use_triton(backend, _triton_serves(*args, backend == 'triton'),
                      'input, weight and bias of one floating dtype '
                      '(after autocast\'s casts) on one CUDA device, '
                      'outside compiled or exported graphs'):
            from samsa_geo.ops._triton.linear import BiasGradLinear
            with _triton.device_guard(input.device):
                return BiasGradLinear.apply(*args)
    return F.linear(input, weight, bias)


def _autocast(*tensors: Tensor) -> Tuple[Tensor, ...]:
    # The tensors as autocast would cast them for F.linear: every floating
    # one but float64 to autocast's dtype, where autocast is on.
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device) or _triton.tracing():
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t.is_floating_point() and t.dtype not in (
        dtype, torch.float64) else t for t in tensors)


def _triton_serves(input: Tensor, weight: Tensor, bias: Tensor,
                   forced: bool) -> bool:
    dtype = input.dtype
    device = input.device
    return (dtype in _triton.KERNEL_DTYPES and weight.dtype == dtype
            and bias.dtype == dtype
            and weight.device == device and bias.device == device
            and _triton.runs_on(input, forced)
            and not _triton.tracing())


__all__: Tuple[str, ...] = ('linear', )
