import inspect
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

import samsa_geo.typing
from samsa_geo.ops import _fallback
from samsa_geo.ops._utils import (
    CLUSTER_BACKENDS,
    batch_to_ptr,
    check_flow,
    check_pair,
    cluster_supports,
    flow_edges,
    resolve_backend,
    use_compiled,
)
from samsa_geo.ops.validation import (
    check_bool,
    check_number,
    check_positive_int,
)


def _compiled_radius(x: Tensor, y: Tensor, r: float,
                     batch_x: Optional[Tensor], batch_y: Optional[Tensor],
                     max_num_neighbors: int, num_workers: int,
                     batch_size: int, ignore_same_index: bool) -> Tensor:
    import torch_cluster

    params = inspect.signature(torch_cluster.radius).parameters
    if not ignore_same_index or 'ignore_same_index' in params:
        extra = (ignore_same_index, ) if ignore_same_index else ()
        return torch_cluster.radius(x, y, r, batch_x, batch_y,
                                    max_num_neighbors, num_workers,
                                    batch_size, *extra)
    # Releases up to 1.6.3 lack `ignore_same_index`: ask for one neighbour
    # more, drop the query itself, then cut every query back to the limit.
    row, col = torch_cluster.radius(x, y, r, batch_x, batch_y,
                                    max_num_neighbors + 1, num_workers,
                                    batch_size)
    mask = row != col
    row, col = row[mask], col[mask]
    row, perm = torch.sort(row, stable=True)
    col = col[perm]
    ptr = torch.searchsorted(row, row, right=False)  # first slot of each row
    rank = torch.arange(row.numel(), device=row.device) - ptr
    keep = rank < max_num_neighbors
    return torch.stack([row[keep], col[keep]], dim=0)


def radius(
    x: Tensor,
    y: Tensor,
    r: float,
    batch_x: Optional[Tensor] = None,
    batch_y: Optional[Tensor] = None,
    max_num_neighbors: int = 32,
    num_workers: int = 1,
    batch_size: Optional[int] = None,
    ignore_same_index: bool = False,
    *,
    chunk_size: Optional[int] = None,
    backend: str = 'auto',
) -> Tensor:
    r"""Finds for each point of :obj:`y` the points of :obj:`x` of the same
    example within distance :obj:`r`, with the semantics and output layout
    of :func:`torch_cluster.radius`.

    .. math::
        \mathcal{N}(i) = \{ j : b^x_j = b^y_i,\;
        \| \mathbf{y}_i - \mathbf{x}_j \|_2 < r \},

    truncated to :obj:`max_num_neighbors` points per query. Which points
    survive the truncation is unspecified in :obj:`torch_cluster` on CPU
    (k-d tree order); the pure-PyTorch path keeps the smallest indices, like
    :obj:`torch_cluster` on CUDA, and lists neighbours by ascending index.

    Non-finite points and unsorted batch vectors raise a
    :class:`ValueError` while value checks are on, as in
    :func:`~samsa_geo.ops.knn`.

    Args:
        x (torch.Tensor): Candidate points.
        y (torch.Tensor): Query points.
        r (float): The radius.
        batch_x (torch.Tensor, optional): Sorted batch vector of :obj:`x`.
            (default: :obj:`None`)
        batch_y (torch.Tensor, optional): Sorted batch vector of :obj:`y`.
            (default: :obj:`None`)
        max_num_neighbors (int, optional): Maximum number of neighbours per
            query. (default: :obj:`32`)
        num_workers (int, optional): Threads of :obj:`torch_cluster` on CPU
            without batch vectors. (default: :obj:`1`)
        batch_size (int, optional): Number of examples :math:`B`.
            (default: :obj:`None`)
        ignore_same_index (bool, optional): Skip :obj:`x[i]` as neighbour of
            :obj:`y[i]`. (default: :obj:`False`)
        chunk_size (int, optional): Upper bound on the entries of one
            query-by-candidate distance block of the pure-PyTorch path.
            (default: :obj:`2**22`)
        backend (str, optional): :obj:`"auto"`, :obj:`"compiled"` or
            :obj:`"torch"`. (default: :obj:`"auto"`)

    Shapes:
        - **input:** :obj:`x` :math:`(N, F)`, :obj:`y` :math:`(M, F)`,
          batches :math:`(N)` and :math:`(M)`
        - **output:** :math:`(2, E)`; row 0 indexes :obj:`y` (ascending),
          row 1 indexes :obj:`x`
    """
    check_bool('ignore_same_index', ignore_same_index)
    return _radius(x, y, r, batch_x, batch_y, max_num_neighbors,
                   num_workers, batch_size, ignore_same_index, chunk_size,
                   backend)


def _radius(x: Tensor, y: Tensor, r: float, batch_x: Optional[Tensor],
            batch_y: Optional[Tensor], max_num_neighbors: int,
            num_workers: int, batch_size: Optional[int],
            ignore_same_index: bool, chunk_size: Optional[int], backend: str,
            batch_names: Tuple[str, str] = ('batch_x', 'batch_y'),
            ) -> Tensor:
    # radius, with errors naming the batch vectors batch_names (see
    # check_pair).
    backend = resolve_backend(backend, CLUSTER_BACKENDS)
    check_number('r', r)
    if not 0 <= r < math.inf:  # also refuses NaN
        raise ValueError(f"Expected 'r' to be a finite non-negative float "
                         f"(got {r})")
    check_positive_int('max_num_neighbors', max_num_neighbors)
    x, y, batch_x, batch_y, size, _ = check_pair(
        x, y, batch_x, batch_y, batch_size, chunk_size,
        batch_names=batch_names)
    if x.numel() == 0 or y.numel() == 0:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)

    supported = (cluster_supports(x)
                 if samsa_geo.typing.WITH_TORCH_CLUSTER else False)
    if use_compiled(backend, samsa_geo.typing.WITH_TORCH_CLUSTER, supported,
                    'torch_cluster'):
        return _compiled_radius(x.contiguous(), y.contiguous(), float(r),
                                batch_x, batch_y, max_num_neighbors,
                                num_workers, size, ignore_same_index)

    ptr_x = batch_to_ptr(batch_x, x.size(0), size, x.device)
    if batch_y is None:
        batch_y = torch.zeros(y.size(0), dtype=torch.long, device=y.device)
    return _fallback.radius(x, y, float(r), ptr_x, batch_y,
                            max_num_neighbors, ignore_same_index, chunk_size)


def radius_graph(
    x: Tensor,
    r: float,
    batch: Optional[Tensor] = None,
    loop: bool = False,
    max_num_neighbors: int = 32,
    flow: str = 'source_to_target',
    num_workers: int = 1,
    batch_size: Optional[int] = None,
    *,
    chunk_size: Optional[int] = None,
    backend: str = 'auto',
) -> Tensor:
    r"""Connects every point to the points of its example within distance
    :obj:`r`, with the semantics of :func:`torch_cluster.radius_graph`.

    .. math::
        \mathcal{E} = \{ (j, i) : b_j = b_i,\;
        \| \mathbf{x}_i - \mathbf{x}_j \|_2 < r \},

    at most :obj:`max_num_neighbors` per centre :math:`i`, without
    self-loops unless :obj:`loop`.

    Args:
        x (torch.Tensor): Points.
        r (float): The radius.
        batch (torch.Tensor, optional): Sorted batch vector.
            (default: :obj:`None`)
        loop (bool, optional): Keep self-loops. (default: :obj:`False`)
        max_num_neighbors (int, optional): Maximum number of neighbours per
            centre. (default: :obj:`32`)
        flow (str, optional): :obj:`"source_to_target"` or
            :obj:`"target_to_source"`. (default: :obj:`"source_to_target"`)
        num_workers (int, optional): See :func:`radius`. (default: :obj:`1`)
        batch_size (int, optional): Number of examples.
            (default: :obj:`None`)
        chunk_size (int, optional): See :func:`radius`.
            (default: :obj:`None`)
        backend (str, optional): See :func:`radius`.
            (default: :obj:`"auto"`)

    Shapes:
        - **input:** points :math:`(N, F)`, batch :math:`(N)`
        - **output:** edge index :math:`(2, E)`
    """
    check_flow(flow)
    check_bool('loop', loop)
    edge_index = _radius(x, x, r, batch, batch, max_num_neighbors,
                         num_workers, batch_size, not loop, chunk_size,
                         backend, batch_names=('batch', 'batch'))
    return torch.stack(flow_edges(edge_index, flow), dim=0)
