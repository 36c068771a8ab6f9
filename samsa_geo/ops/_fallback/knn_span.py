"""The span brute-force kNN strategy, for very uneven batches: contiguous
query chunks, each against all candidates of the examples it touches."""
import torch
from torch import Tensor

from samsa_geo.ops._fallback import blocks


def knn_span(x: Tensor, y: Tensor, k: int, ptr_x: Tensor, batch_y: Tensor,
             cosine: bool, chunk_size: int) -> Tensor:
    r"""The span path of :func:`~samsa_geo.ops._fallback.knn.knn`."""
    cand_start, cand_end = blocks.candidate_ranges(ptr_x, batch_y)
    start, end = cand_start.tolist(), cand_end.tolist()
    count = (cand_end - cand_start).clamp(max=k)  # neighbours per query
    rows, cols = [], []
    for q0, q1 in blocks.query_chunks(start, end, chunk_size):
        if end[q1 - 1] <= start[q0]:  # no candidates at all
            continue
        dist, s0, s1 = blocks.span_block(x, y, cand_start, cand_end, start,
                                         end, q0, q1, cosine)
        kk = min(k, s1 - s0)
        idx = dist.topk(kk, dim=1, largest=False, sorted=True)[1]  # [Q, kk]
        keep = (torch.arange(kk, device=x.device).unsqueeze(0)
                < count[q0:q1].unsqueeze(1))
        query = torch.arange(q0, q1, device=x.device).unsqueeze(1)
        rows.append(query.expand(-1, kk)[keep])
        cols.append((idx + s0)[keep])
    return blocks.stack_edges(rows, cols, x.device)
