r"""Private helpers of the point encoders: input checks and rotation-invariant
scalars that stay finite (values *and* gradients) on degenerate clouds."""
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from samsa_geo.nn.attention import config
from samsa_geo.nn.attention._sets import check_size_hint, checked_sizes
from samsa_geo.ops.validation import (
    check_batch_vector,
    check_matrix,
    check_tensor,
)

#: Added under every square root: keeps norms and their gradients finite at
#: 0 (see :func:`eps_for` for dtypes in which it rounds to zero).
EPS: float = 1e-12


def eps_for(dtype: torch.dtype) -> float:
    r""":obj:`EPS`, or the smallest normal number of :obj:`dtype` where
    :obj:`EPS` would round to zero (float16: :math:`6.1 \cdot 10^{-5}`)."""
    return max(EPS, torch.finfo(dtype).tiny)


def geometry_dtype(t: Tensor) -> torch.dtype:
    r"""The dtype the geometry of :obj:`t` is computed in: at least float32,
    so that squared norms neither underflow nor overflow in float16."""
    return torch.promote_types(t.dtype, torch.float32)


def check_points(
    pos: Tensor,
    batch: Optional[Tensor],
    normal: Optional[Tensor],
    num_clouds: Optional[int] = None,
    check_values: Optional[bool] = None,
) -> Tuple[Tensor, int, Optional[int]]:
    r"""Validates ``pos`` :math:`(N, 3)`, ``batch`` :math:`(N)` (sorted) and
    ``normal`` :math:`(N, 3)`; returns the batch vector, the number of
    clouds and the largest cloud's size. The number is ``num_clouds`` if
    given (e.g. a PyG ``Batch.num_graphs``: then nothing is read back from
    a GPU and the size is :obj:`None`), else both are read from ``batch``
    once per batch tensor. With ``check_values`` (by default on the CPU, and on a
    GPU in the attention's debug mode, since it is a device sync) ``pos``
    and ``normal`` must also be finite; the error names the tensor and the
    first point."""
    if check_values is None:
        check_values = isinstance(pos, Tensor) and \
            config.checks_values(pos.device)
    N = check_matrix('pos', pos, 3).size(0)
    if normal is not None:
        if check_tensor('normal', normal).shape != pos.shape:
            raise ValueError(f"Expected 'normal' to have shape [{N}, 3] "
                             f"(got {list(normal.shape)})")
    if check_values:
        for name, t in (('pos', pos), ('normal', normal)):
            if t is not None and t.numel() > 0:
                bad = ~torch.isfinite(t).all(-1)  # [N]
                if bool(bad.any()):
                    i = int(bad.nonzero()[0])
                    raise ValueError(
                        f"Expected '{name}' to hold finite values only "
                        f"(point {i} is {t[i].tolist()}; "
                        f"{int(bad.sum())} point(s) affected)")
    if batch is None:
        return pos.new_zeros(N, dtype=torch.long), 1 if N > 0 else 0, N
    batch = check_batch_vector(batch, N).long()
    check_size_hint('num_graphs', num_clouds)
    if N == 0:
        return batch, 0 if num_clouds is None else num_clouds, 0
    check = config.checks_values(pos.device)
    max_size = None
    if num_clouds is None or check:
        # Also checks that 'batch' is sorted.
        B, n_max = checked_sizes(batch, num_clouds, None)
        if num_clouds is None:
            num_clouds, max_size = B, n_max
    return batch, num_clouds, max_size


def safe_norm(v: Tensor) -> Tensor:
    r""":math:`\sqrt{\Vert\mathbf{v}\Vert^2 + \epsilon}` over the last
    dimension, with :math:`\epsilon` = :func:`eps_for` of its dtype: its
    gradient has norm at most one, even at zero."""
    return (v * v).sum(-1).add(eps_for(v.dtype)).sqrt()


def safe_cos(a: Tensor, b: Tensor) -> Tensor:
    r"""Cosine of the angle between :math:`\mathbf{a}` and :math:`\mathbf{b}`
    with :func:`safe_norm`; :math:`0` if either is zero."""
    return (a * b).sum(-1) / (safe_norm(a) * safe_norm(b))


def centroid(pos: Tensor, batch: Tensor, num_clouds: int) -> Tensor:
    r"""Per-cloud mean of ``pos``, :math:`(B, 3)`."""
    return scatter(pos, batch, dim=0, dim_size=num_clouds, reduce='mean')
