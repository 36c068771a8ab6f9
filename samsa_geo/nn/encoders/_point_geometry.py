r"""Private helpers of the point encoders: input checks and rotation-invariant
scalars that stay finite (values *and* gradients) on degenerate clouds."""
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from samsa_geo.nn.attention import config
from samsa_geo.nn.attention._dispatch import is_exporting, is_tracing
from samsa_geo.nn.attention._sets import (
    check_size_hint,
    checked_sizes,
    set_offsets,
)
from samsa_geo.ops._fallback.blocks import distances, exclude
from samsa_geo.ops.validation import (
    check_batch_vector,
    check_matrix,
    check_tensor,
)

#: Entries of one distance block of :func:`traced_knn_table`.
TRACED_KNN_CHUNK: int = 2**22

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
    # int(): a TorchScript trace (ONNX export) gives sizes as tensors,
    # which the size hints reject; its graph is specialised to N anyway.
    N = int(check_matrix('pos', pos, 3).size(0))
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


def traces_knn(pos: Tensor) -> bool:
    r"""Whether the :math:`k`-NN of ``pos`` is being traced where the
    geometry ops would read the clouds' sizes back (their CPU fallback, an
    exported graph): :func:`traced_knn_table` then ranks it instead."""
    return is_tracing() and (pos.device.type == 'cpu' or is_exporting())


def traced_knn_table(pos: Tensor, batch: Tensor, k: int, num_clouds: int,
                     max_size: Optional[int]) -> Tensor:
    r"""The table of :func:`~samsa_geo.ops.knn_neighbours` (``pos`` as
    candidates and queries, row :math:`i` the up to :math:`k` nearest
    points of :math:`i`'s cloud by ascending squared distance, :obj:`-1`
    padded), with shapes known before the values: no size is read back,
    so :func:`torch.export` and ``torch.compile(fullgraph=True)`` trace it.

    With ``max_size`` the clouds are padded to :math:`(B, n_{\max})` and
    ranked by brute force per cloud; without it, all :math:`N` points as
    one set, masked by cloud (:math:`N^2` distances). Either way in query
    blocks of at most :obj:`TRACED_KNN_CHUNK` distances."""
    N = pos.size(0)
    arange = torch.arange(N, device=pos.device)
    if max_size is None:  # one row of every point, masked by cloud below
        idx = arange.view(1, N)  # [G, S] = [1, N]
        group, local = arange.new_zeros(N), arange
    else:
        group = batch
        local = arange - set_offsets(batch, num_clouds)[batch]
        idx = arange.new_full((num_clouds, max_size), -1)
        idx[group, local] = arange  # [G, S] point of each slot, or -1
    G, S = idx.shape
    kk = min(k, S)
    slot = idx.clamp(min=0)
    cloud = torch.where(idx >= 0, batch[slot], -1)  # [G, S]
    points = pos[slot].permute(2, 0, 1)  # [3, G, S]
    rows = max(1, TRACED_KNN_CHUNK // max(G * S, 1))
    blocks = []
    for q0 in range(0, S, rows):
        q1 = min(q0 + rows, S)
        # [G, Q, S], summed in feature order as the ops' fallback; other
        # clouds and padding rank after every real candidate.
        dist = distances(points[:, :, q0:q1], points, False)
        other = cloud[:, q0:q1].unsqueeze(-1) != cloud.unsqueeze(-2)
        dist = exclude(dist, other)
        d, j = dist.topk(kk, dim=-1, largest=False)  # [G, Q, kk]
        nbr = idx.gather(1, j.view(G, -1)).view(G, q1 - q0, kk)
        blocks.append(torch.where(d.isinf(), -1, nbr))
    table = torch.cat(blocks, dim=1)[group, local]  # [N, kk]
    if kk < k:  # clouds smaller than k: -1 columns, as the ops pad
        table = torch.cat([table, table.new_full((N, k - kk), -1)], dim=1)
    return table


def knn_table_edges(table: Tensor) -> Tensor:
    r"""The edges :math:`j \to i` (``edge_index[1]`` the centre) of a
    :func:`traced_knn_table`, grouped by centre, as
    :func:`~samsa_geo.ops.knn_graph` with ``loop=True`` gives them."""
    N, k = table.shape
    centre = torch.arange(N, device=table.device).view(-1, 1).expand(N, k)
    valid = table >= 0  # [N, k]
    return torch.stack([table[valid], centre[valid]], dim=0)  # [2, E]
