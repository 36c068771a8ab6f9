"""The kNN fallback: picks the padded, span or grid strategy per batch and
merges their results."""
import itertools
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from samsa_geo.ops._fallback import blocks, knn_grid
from samsa_geo.ops._fallback.knn_padded import knn_padded, use_padding
from samsa_geo.ops._fallback.knn_span import knn_span
from samsa_geo.ops._utils import batch_to_ptr


def knn(x: Tensor, y: Tensor, k: int, ptr_x: Tensor, batch_y: Tensor,
        cosine: bool = False, chunk_size: Optional[int] = None,
        padded: Optional[bool] = None, grid: Optional[bool] = None
        ) -> Tensor:
    r"""For every row of :obj:`y`, the (up to) :obj:`k` nearest rows of
    :obj:`x` in the same example, sorted by distance.

    Batches of similar-sized examples (see
    :func:`~samsa_geo.ops._fallback.knn_padded.use_padding`, or
    :obj:`padded=True`) are padded to :obj:`[F, B, N_max]` and ranked in
    groups of whole examples; very uneven batches walk contiguous query
    chunks over the candidate span of their examples instead. Both rank the
    same distances and give the same output.

    Large Euclidean examples of up to three features (see
    :func:`~samsa_geo.ops._fallback.knn_grid.grid_examples`;
    :obj:`grid=None` picks them on CPU, :obj:`grid=True` forces every
    eligible example, :obj:`grid=False` none) are ranked exactly on a
    spatial grid (:func:`~samsa_geo.ops._fallback.knn_grid.knn_grid`)
    instead of by brute force; the output is the same, except that among
    candidates at exactly equal distance the grid prefers the lower index
    while the brute force paths keep whatever order :meth:`torch.topk`
    gives.

    Distances are ranked in at least float32: 16-bit points are converted
    first, as their squared distances overflow (float16: points more than
    256 apart) and round coarsely. A real distance that still overflows (or is
    NaN) ranks after every finite one but before padding and the points of
    other examples, which are never returned.

    Returns :obj:`[2, E]` with row = index into :obj:`y`, col = index into
    :obj:`x`.
    """
    chunk_size = chunk_size or blocks.default_chunk_size(x.device)
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, y = x.to(dtype), y.to(dtype)
    if cosine:
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    batch_size = ptr_x.numel() - 1
    ptr_y = batch_to_ptr(batch_y, y.size(0), batch_size, y.device)
    # The only host copy before the output is known:
    size_x, size_y = torch.stack([ptr_x[1:] - ptr_x[:-1],
                                  ptr_y[1:] - ptr_y[:-1]]).tolist()
    large = knn_grid.grid_examples(size_x, size_y, x, cosine, grid)
    if large:
        return knn_mixed(x, y, k, ptr_x, batch_y, size_x, size_y, large,
                         chunk_size, padded)
    return knn_brute(x, y, k, ptr_x, ptr_y, batch_y, size_x, size_y,
                     cosine, chunk_size, padded)


def knn_brute(x: Tensor, y: Tensor, k: int, ptr_x: Tensor, ptr_y: Tensor,
              batch_y: Tensor, size_x: List[int], size_y: List[int],
              cosine: bool, chunk_size: int,
              padded: Optional[bool]) -> Tensor:
    r"""Brute-force :func:`knn`: the padded path for similar-sized examples
    (or :obj:`padded=True`), the span path otherwise."""
    if padded is None:
        padded = use_padding(size_x, size_y)
    if padded:
        return knn_padded(x, y, k, ptr_x, ptr_y, size_x, size_y, cosine,
                          chunk_size)
    return knn_span(x, y, k, ptr_x, batch_y, cosine, chunk_size)


def knn_mixed(x: Tensor, y: Tensor, k: int, ptr_x: Tensor,
              batch_y: Tensor, size_x: List[int], size_y: List[int],
              large: List[int], chunk_size: int,
              padded: Optional[bool]) -> Tensor:
    r"""Ranks the examples :obj:`large` on a grid and all others by brute
    force, then merges both by query."""
    device = x.device
    start_x = [0] + list(itertools.accumulate(size_x))
    start_y = [0] + list(itertools.accumulate(size_y))
    keep_x = torch.ones(x.size(0), dtype=torch.bool, device=device)
    keep_y = torch.ones(y.size(0), dtype=torch.bool, device=device)
    rest_x, rest_y = list(size_x), list(size_y)
    rows, cols = [], []
    for b in large:
        x0, x1, y0, y1 = start_x[b], start_x[b + 1], start_y[b], start_y[b + 1]
        nbr = knn_grid.knn_grid(x[x0:x1], y[y0:y1], k, chunk_size)
        if nbr is None:  # degenerate or non-finite: brute force
            continue
        keep_x[x0:x1], keep_y[y0:y1] = False, False
        rest_x[b], rest_y[b] = 0, 0
        rows.append(torch.arange(y0, y1, device=device).repeat_interleave(
            nbr.size(1)))
        cols.append(nbr.view(-1) + x0)  # [M_b * K]
    if sum(rest_y) > 0 and sum(rest_x) > 0:
        sub_y = keep_y.nonzero().view(-1)
        sub_x = keep_x.nonzero().view(-1)
        sub_ptr_x = torch.tensor([0] + rest_x, device=device).cumsum(0)
        sub_ptr_y = torch.tensor([0] + rest_y, device=device).cumsum(0)
        out = knn_brute(x[sub_x], y[sub_y], k, sub_ptr_x, sub_ptr_y,
                        batch_y[sub_y], rest_x, rest_y, False, chunk_size,
                        padded)
        rows.append(sub_y[out[0]])
        cols.append(sub_x[out[1]])
    if not rows:
        return torch.empty(2, 0, dtype=torch.long, device=device)
    row, col = torch.cat(rows), torch.cat(cols)
    if len(rows) > 1:  # each query's neighbours stay in distance order
        perm = row.argsort(stable=True)
        row, col = row[perm], col[perm]
    return torch.stack([row, col], dim=0)
