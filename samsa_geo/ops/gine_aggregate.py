r"""The aggregation of GIN / GINE message passing, with Triton kernels
(forward and backward) on CUDA."""
from typing import Optional, Union

import torch
from torch import Tensor

from samsa_geo.ops import _triton, config, validation
from samsa_geo.ops._utils import promoted_float, resolve_backend, use_triton

#: Values of ``backend``.
BACKENDS = ('auto', 'triton', 'torch')


def gine_aggregate(x: Tensor, edge_index: Tensor,
                   edge_attr: Optional[Tensor] = None,
                   eps: Union[float, Tensor] = 0.0, *,
                   backend: str = 'auto') -> Tensor:
    r"""The update that :class:`~torch_geometric.nn.conv.GINEConv` (with
    ``edge_attr``) and :class:`~torch_geometric.nn.conv.GINConv` (without)
    feed to their network,

    .. math::
        \mathbf{h}_i = (1 + \epsilon)\,\mathbf{x}_i + \sum_{(j, i) \in
        \mathcal{E}} \mathrm{ReLU}(\mathbf{x}_j + \mathbf{e}_{ji})
        \qquad \text{or} \qquad
        \mathbf{h}_i = (1 + \epsilon)\,\mathbf{x}_i + \sum_{(j, i) \in
        \mathcal{E}} \mathbf{x}_j,

    for edges :math:`j \to i` given as ``edge_index[0] = j``,
    ``edge_index[1] = i`` (PyG's ``source_to_target`` flow). The result
    has the dtype of :math:`(1 + \epsilon)\,\mathbf{x}` (float32 for
    bfloat16 ``x`` and a float32 ``eps`` tensor); each message is formed in
    the dtype of :math:`\mathbf{x}_j + \mathbf{e}_{ji}` and summed in the
    result's.

    With ``backend='auto'``, on CUDA, outside :func:`torch.compile` and
    export, with a float32 result, a Triton kernel forms and adds the
    messages (and one more their gradients): two launches forward against
    PyTorch's six, no ``[E, C]`` messages kept for the backward pass (see
    :mod:`samsa_geo.ops._triton.gine_aggregate`). Its float32 sums run in
    a varying order, as PyTorch's ``index_add_`` on CUDA does; with
    :func:`torch.use_deterministic_algorithms` on, ``'auto'`` runs
    PyTorch's operators.
    ``backend='torch'`` runs PyTorch's operators, ``backend='triton'``
    insists on the kernels (on a CPU under Triton's interpreter too).
    Gradients of gradients are not supported on the kernels' path.

    With value checks on (:func:`~samsa_geo.ops.value_checks`), indices
    outside :math:`[0, N)` raise an error (one read of the device).

    Args:
        x (Tensor): Node features :math:`(N, C)`, floating point.
        edge_index (Tensor): Edges :math:`(2, E)`, integer.
        edge_attr (Tensor, optional): Edge features :math:`(E, C)`,
            floating point. (default: :obj:`None`)
        eps (float or Tensor, optional): :math:`\epsilon`, a number or a
            one-value tensor (a trainable one gets its gradient).
            (default: :obj:`0.0`)
        backend (str, optional): :obj:`"auto"`, :obj:`"triton"` or
            :obj:`"torch"`. (default: :obj:`"auto"`)

    Returns:
        :math:`(N, C)`.
    """
    _check_arguments(x, edge_index, edge_attr, eps)
    if config.value_checks_enabled() and not _triton.tracing():
        validation.check_node_indices(edge_index, x.size(0))
    return gine_aggregate_unchecked(x, edge_index[0], edge_index[1],
                                    edge_attr, eps, resolve_backend(
                                        backend, BACKENDS))


def gine_aggregate_unchecked(x: Tensor, src: Tensor, dst: Tensor,
                             edge_attr: Optional[Tensor],
                             eps: Union[float, Tensor],
                             backend: str) -> Tensor:
    r""":func:`gine_aggregate` of edges ``src[e] -> dst[e]`` whose
    arguments the caller has checked (a model's layer, which built them):
    no checks, ``backend`` one of :data:`BACKENDS` with ``"auto"`` taken
    as it is."""
    if backend != 'torch':
        msg_dtype = x.dtype if edge_attr is None else promoted_float(
            x.dtype, edge_attr.dtype)
        out_dtype = promoted_float(x.dtype, eps.dtype) \
            if isinstance(eps, Tensor) else x.dtype
        if use_triton(
                backend, _triton_serves(x, out_dtype, msg_dtype,
                                        backend == 'triton'),
                'a float32 result of float32, float16 or bfloat16 inputs '
                'on one CUDA device, nondeterministic algorithms allowed, '
                'outside compiled or exported graphs'):
            from samsa_geo.ops._triton.gine_aggregate import GINEAggregate
            if not isinstance(eps, Tensor):
                eps = x.new_full((1, ), float(eps))
            with _triton.device_guard(x.device):
                return GINEAggregate.apply(x, edge_attr, eps, src, dst,
                                           msg_dtype)
    msg = x.index_select(0, src)  # [E, C] x_j
    if edge_attr is not None:
        msg = (msg + edge_attr).relu()
    # (1 + eps) x_i, as GINEConv computes it, then the messages of every
    # node i = dst added in place. (x + eps x in one addcmul saves a
    # launch forward but costs three more operators backward.)
    h = x * (1.0 + eps)  # [N, C]
    return h.index_add_(0, dst, msg.to(h.dtype))


def _check_arguments(x: Tensor, edge_index: Tensor,
                     edge_attr: Optional[Tensor],
                     eps: Union[float, Tensor]) -> None:
    # Types, shapes and devices (no values read).
    if not isinstance(x, Tensor) or x.dim() != 2 \
            or not x.is_floating_point():
        raise ValueError(f"Expected 'x' to be a floating-point tensor of "
                         f"shape [N, C] (got {_described(x)})")
    validation.check_edge_index(edge_index)
    validation.check_integer_tensor('edge_index', edge_index,
                                    validation.BATCH_DTYPES)
    C, E = x.size(1), edge_index.size(1)
    if edge_attr is not None and (
            not isinstance(edge_attr, Tensor)
            or tuple(edge_attr.shape) != (E, C)
            or not edge_attr.is_floating_point()):
        raise ValueError(f"Expected 'edge_attr' of shape [{E}, {C}], "
                         f"floating point (got {_described(edge_attr)})")
    if isinstance(eps, Tensor):
        if eps.numel() != 1 or not eps.is_floating_point():
            raise ValueError(f"Expected 'eps' to be a float or a "
                             f"floating-point tensor of one value (got "
                             f"{_described(eps)})")
    elif isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"Expected 'eps' to be a float or a tensor (got "
                        f"{type(eps).__name__})")
    for name, t in (('edge_index', edge_index), ('edge_attr', edge_attr),
                    ('eps', eps)):
        if isinstance(t, Tensor) and t.device != x.device:
            raise ValueError(f"Expected '{name}' on the device of 'x' "
                             f"({x.device}, got {t.device})")


def _triton_serves(x: Tensor, out_dtype: torch.dtype,
                   msg_dtype: torch.dtype, forced: bool) -> bool:
    return (_triton.runs_on(x, forced) and out_dtype == torch.float32
            and x.size(1) > 0 and msg_dtype in _triton.KERNEL_DTYPES
            and x.dtype in _triton.KERNEL_DTYPES
            and not torch.are_deterministic_algorithms_enabled()
            and not _triton.tracing())


def _described(t) -> str:
    # What a wrong argument was, for an error message.
    if isinstance(t, Tensor):
        return f"{t.dtype} tensor of shape {list(t.shape)}"
    return type(t).__name__
