from typing import Optional, Tuple

import torch
from torch import Tensor

import samsa_geo.typing
from samsa_geo.ops import _fallback, _triton
from samsa_geo.ops._utils import (
    batch_to_ptr,
    check_flow,
    check_pair,
    cluster_supports,
    finish_reads,
    flow_edges,
    resolve_backend,
    use_compiled,
    use_triton,
)
from samsa_geo.ops.validation import check_bool, check_positive_int


def knn(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Optional[Tensor] = None,
    batch_y: Optional[Tensor] = None,
    cosine: bool = False,
    num_workers: int = 1,
    batch_size: Optional[int] = None,
    *,
    chunk_size: Optional[int] = None,
    backend: str = 'auto',
) -> Tensor:
    r"""Finds for each point of :obj:`y` the :obj:`k` nearest points of
    :obj:`x` within the same example, with the semantics and output layout
    of :func:`torch_cluster.knn`.

    .. math::
        \mathcal{N}(i) = \operatorname{top-k}_{j \,:\, b^x_j = b^y_i}
        \left( - d(\mathbf{y}_i, \mathbf{x}_j) \right),

    where :math:`d` is the Euclidean distance (or :math:`1 - \cos` if
    :obj:`cosine`) and :math:`b^x, b^y` are the batch vectors. Examples with
    fewer than :obj:`k` points yield all of them.

    The pure-PyTorch path pads examples of similar size to a common length
    and ranks groups of whole examples (or query-row chunks of one large
    example) with one top-k call per distance block; very uneven batches
    are processed in query chunks that only look at the points of the
    examples they touch. Every block holds at most :obj:`chunk_size` entries
    (or one query row), so memory stays bounded for any :math:`N`. On CPU,
    large Euclidean examples (at least 20,000 candidates and 1,000 queries,
    up to three features) are ranked exactly on a spatial grid instead,
    against the points of neighbouring cells only.

    On CUDA without :obj:`torch_cluster`, Euclidean float32 points of up to
    three features and :math:`k \le 64` go to samsa_geo's Triton kernels,
    which give the neighbours of the brute-force reference exactly (the
    float32 distances of the pure-PyTorch path, equal distances ordered by
    index). Batches of small examples (up to 1,024 points per example on
    average) are ranked by brute force, one program per block of queries:
    the distances to a whole example sit in registers, and :math:`k`
    rounds each take the least (distance, index) pair. Larger examples are
    ordered along a Morton curve, and candidate
    tiles are skipped by a bounding-box bound. The kernels form a PyTorch
    custom operator (:obj:`torch.ops.samsa_geo.knn_neighbours`), so
    :func:`torch.compile` keeps them. With :obj:`batch_size` given, the
    call reads the device once, after the kernel (the value checks and the
    number of empty slots together); :func:`knn_neighbours` returns the
    table without the edge list.

    With value checks on (the default, see
    :func:`~samsa_geo.ops.value_checks`), non-finite :obj:`x` or :obj:`y`
    and unsorted batch vectors raise a :class:`ValueError` naming the
    argument; all such checks share one device-to-host read per call.
    Inner layers that validated their input at the model's entry turn them
    off, as a read stalls the host on every call.

    Args:
        x (torch.Tensor): Candidate points.
        y (torch.Tensor): Query points.
        k (int): The number of neighbours.
        batch_x (torch.Tensor, optional): Sorted batch vector of :obj:`x`.
            (default: :obj:`None`)
        batch_y (torch.Tensor, optional): Sorted batch vector of :obj:`y`.
            (default: :obj:`None`)
        cosine (bool, optional): Use the cosine distance (pure PyTorch path on
            CPU). (default: :obj:`False`)
        num_workers (int, optional): Threads of :obj:`torch_cluster` on CPU
            without batch vectors. (default: :obj:`1`)
        batch_size (int, optional): Number of examples :math:`B`.
            (default: :obj:`None`)
        chunk_size (int, optional): Upper bound on the entries of one
            query-by-candidate distance block of the pure-PyTorch path.
            (default: :obj:`2**22` on CPU, :obj:`2**26` on CUDA)
        backend (str, optional): :obj:`"auto"` (compiled when available,
            else Triton on CUDA where it applies, else pure PyTorch),
            :obj:`"compiled"`, :obj:`"triton"` or :obj:`"torch"`.
            (default: :obj:`"auto"`)

    Shapes:
        - **input:** :obj:`x` :math:`(N, F)`, :obj:`y` :math:`(M, F)`,
          batches :math:`(N)` and :math:`(M)`
        - **output:** :math:`(2, E)`; row 0 indexes :obj:`y`, row 1 indexes
          :obj:`x`; grouped by query in ascending order, neighbours by
          ascending distance
    """
    edges, _ = _knn(x, y, k, batch_x, batch_y, cosine, num_workers,
                    batch_size, chunk_size, backend, table=False)
    return edges


def knn_neighbours(
    x: Tensor,
    y: Tensor,
    k: int,
    batch_x: Optional[Tensor] = None,
    batch_y: Optional[Tensor] = None,
    batch_size: Optional[int] = None,
    *,
    chunk_size: Optional[int] = None,
    backend: str = 'auto',
) -> Tensor:
    r"""The :obj:`k` nearest points of :obj:`x` for every point of
    :obj:`y` as a table, the neighbours of :func:`knn` without its edge
    list: row :math:`i` holds the indices of :math:`\mathcal{N}(i)` by
    ascending distance (equal distances by index on the Triton path),
    padded with :obj:`-1` where the example holds fewer than :obj:`k`
    points.

    On the Triton path, with :obj:`batch_size` given and value checks off
    (:func:`~samsa_geo.ops.value_checks`), the call never waits for the
    GPU: the table's size is known without reading the device.

    Args:
        x (torch.Tensor): Candidate points.
        y (torch.Tensor): Query points.
        k (int): The number of neighbours.
        batch_x (torch.Tensor, optional): Sorted batch vector of :obj:`x`.
            (default: :obj:`None`)
        batch_y (torch.Tensor, optional): Sorted batch vector of :obj:`y`.
            (default: :obj:`None`)
        batch_size (int, optional): Number of examples :math:`B`.
            (default: :obj:`None`)
        chunk_size (int, optional): See :func:`knn`. (default: :obj:`None`)
        backend (str, optional): See :func:`knn`. (default: :obj:`"auto"`)

    Shapes:
        - **input:** :obj:`x` :math:`(N, F)`, :obj:`y` :math:`(M, F)`,
          batches :math:`(N)` and :math:`(M)`
        - **output:** :math:`(M, k)`, indices into :obj:`x`
    """
    _, table = _knn(x, y, k, batch_x, batch_y, False, 1, batch_size,
                    chunk_size, backend, table=True)
    return table


def _knn(x: Tensor, y: Tensor, k: int, batch_x: Optional[Tensor],
         batch_y: Optional[Tensor], cosine: bool, num_workers: int,
         batch_size: Optional[int], chunk_size: Optional[int], backend: str,
         table: bool, batch_names: Tuple[str, str] = ('batch_x', 'batch_y'),
         ) -> Tuple[Tensor, Tensor]:
    # (edges [2, E], table [M, k]) of knn and knn_neighbours: the table of
    # the Triton path (with table=True: no edge list), else the edges.
    # Errors name the batch vectors batch_names (see check_pair).
    backend = resolve_backend(backend)
    check_positive_int('k', k)
    check_bool('cosine', cosine)
    x, y, batch_x, batch_y, size, pending = check_pair(
        x, y, batch_x, batch_y, batch_size, chunk_size, defer=True,
        batch_names=batch_names)
    if x.numel() == 0 or y.numel() == 0:
        finish_reads(pending, size) if pending is not None else None
        empty = torch.empty(2, 0, dtype=torch.long, device=x.device)
        return empty, empty.new_full((y.size(0), k), -1)

    same = y is x and batch_y is batch_x  # one point set: sorted once
    supported = _triton.knn_supported(x, y, k, cosine,
                                      forced=backend == 'triton')
    if not use_compiled(backend, samsa_geo.typing.WITH_TORCH_CLUSTER,
                        _cluster_serves(x, k, cosine), 'torch_cluster') \
            and use_triton(backend, supported, 'Euclidean float32 points of '
                           'up to 3 features on a CUDA device and k <= 64'):
        from samsa_geo.ops._triton.knn import use_dense
        if pending is not None and not use_dense(x.size(0), size):
            # The tiled kernel indexes by the batch values before any
            # check could be read after it: check them first. The dense
            # kernel clamps them, so its checks are launched after it and
            # the host issues them while the GPU ranks.
            finish_reads(pending, size)
            pending = None
        count = not table and not torch.compiler.is_compiling()
        missing = x.new_zeros((), dtype=torch.long) if count else None
        out = _triton.knn_indices(x.detach().contiguous(),
                                  y.detach().contiguous(), k, batch_x,
                                  batch_y, size, same, missing)  # [2, M, k]
        edges = out.view(2, -1)  # [2, M * k]
        found = finish_reads(pending, size, [missing] if count else [])[1] \
            if pending is not None else [missing.item()] if count else []
        if table:
            return edges, out[1]
        if count and found[0] == 0:
            return edges, out[1]
        return edges[:, edges[1] >= 0], out[1]

    if pending is not None:  # the other paths read sizes anyway
        finish_reads(pending, size)
    if use_compiled(backend, samsa_geo.typing.WITH_TORCH_CLUSTER,
                    _cluster_serves(x, k, cosine), 'torch_cluster'):
        import torch_cluster
        edges = torch_cluster.knn(x.contiguous(), y.contiguous(), k,
                                  batch_x, batch_y, cosine, num_workers, size)
    else:
        ptr_x = batch_to_ptr(batch_x, x.size(0), size, x.device)
        if batch_y is None:
            batch_y = y.new_zeros(y.size(0), dtype=ptr_x.dtype)
        edges = _fallback.knn(x, y, k, ptr_x, batch_y, cosine, chunk_size)
    return edges, _edge_table(edges, y.size(0), k) if table else edges


def _cluster_serves(x: Tensor, k: int, cosine: bool) -> bool:
    # Whether the installed torch_cluster serves this knn call.
    return samsa_geo.typing.WITH_TORCH_CLUSTER and cluster_supports(x) \
        and not (cosine and x.device.type == 'cpu') \
        and not (x.device.type == 'cuda' and k > 100)


def _edge_table(edges: Tensor, num_queries: int, k: int) -> Tensor:
    # The [M, k] table of knn's edges (grouped by query, -1 padded).
    row, col = edges
    if row.numel() == num_queries * k:
        return col.view(num_queries, k)  # [M * k] -> [M, k]
    count = torch.bincount(row, minlength=num_queries)
    start = count.cumsum(0) - count
    slot = torch.arange(row.numel(), device=row.device) - start[row]
    table = row.new_full((num_queries, k), -1)
    table[row, slot] = col
    return table


def knn_graph(
    x: Tensor,
    k: int,
    batch: Optional[Tensor] = None,
    loop: bool = False,
    flow: str = 'source_to_target',
    cosine: bool = False,
    num_workers: int = 1,
    batch_size: Optional[int] = None,
    *,
    chunk_size: Optional[int] = None,
    backend: str = 'auto',
) -> Tensor:
    r"""Connects every point to its :obj:`k` nearest neighbours within its
    example, with the semantics of :func:`torch_cluster.knn_graph`.

    .. math::
        \mathcal{E} = \{ (j, i) : j \in \mathcal{N}(i) \},

    with :math:`\mathcal{N}(i)` the :math:`k` nearest points to
    :math:`\mathbf{x}_i` (:math:`i` itself excluded unless :obj:`loop`).

    Args:
        x (torch.Tensor): Points.
        k (int): The number of neighbours.
        batch (torch.Tensor, optional): Sorted batch vector.
            (default: :obj:`None`)
        loop (bool, optional): Keep self-loops. (default: :obj:`False`)
        flow (str, optional): :obj:`"source_to_target"` (edges
          :math:`j \to i`, :obj:`edge_index[1]` is the centre) or
          :obj:`"target_to_source"`. (default: :obj:`"source_to_target"`)
        cosine (bool, optional): Use the cosine distance.
            (default: :obj:`False`)
        num_workers (int, optional): See :func:`knn`. (default: :obj:`1`)
        batch_size (int, optional): Number of examples.
            (default: :obj:`None`)
        chunk_size (int, optional): See :func:`knn`. (default: :obj:`None`)
        backend (str, optional): See :func:`knn`. (default: :obj:`"auto"`)

    Shapes:
        - **input:** points :math:`(N, F)`, batch :math:`(N)`
        - **output:** edge index :math:`(2, E)`
    """
    check_flow(flow)
    check_positive_int('k', k)
    check_bool('loop', loop)
    edge_index, _ = _knn(x, x, k if loop else k + 1, batch, batch, cosine,
                         num_workers, batch_size, chunk_size, backend,
                         table=False, batch_names=('batch', 'batch'))
    row, col = flow_edges(edge_index, flow)
    if not loop:
        mask = row != col
        row, col = row[mask], col[mask]
    return torch.stack([row, col], dim=0)
