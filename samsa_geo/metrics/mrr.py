from numbers import Integral
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor
from torch_geometric.utils import scatter, to_dense_batch

from samsa_geo.ops.validation import (
    check_float_tensor,
    check_integer_tensor,
    check_tensor,
    raise_non_finite,
    raise_unsorted,
    sorted_batch_flag,
)


def mrr(
    x: Tensor,
    edge_label_index: Tensor,
    edge_label: Tensor,
    batch: Optional[Tensor] = None,
    hits: Sequence[int] = (),
) -> Dict[str, float]:
    r"""Mean reciprocal rank of the PCQM-Contact link-prediction task of the
    `"Long Range Graph Benchmark" <https://arxiv.org/abs/2206.08164>`_, raw
    and filtered, as defined by the LRGB reference code
    (:obj:`GNNInductiveEdgeHead.compute_mrr`, dot-product decoding), and
    optionally the filtered Hits@:math:`k` the paper reports with it.

    For a graph with node embeddings :math:`\mathbf{X}`, scores are
    :math:`\mathbf{S} = \mathbf{X}\mathbf{X}^{\top}`. Each positive pair
    :math:`(s, t)` (:obj:`edge_label == 1`) is ranked against candidate
    columns :math:`m` of row :math:`s`:

    .. math::
        \mathrm{rank}(s, t) = 1 + \big|\{m \in \mathcal{M}(s, t) :
        S_{s,m} > S_{s,t}\}\big|,

    where :math:`\mathcal{M}` holds every node but :math:`t` for the raw MRR
    (:obj:`"mrr"`; other true contacts and :math:`s` itself count as
    negatives), every node that is not a positive partner of :math:`s` for
    :obj:`"mrr_filtered"` (the metric to report), and additionally not
    :math:`s` for :obj:`"mrr_filtered_noself"`. A graph scores the mean of
    :math:`1/\mathrm{rank}` over its positive pairs, and 0 if it has none
    (as the reference); the result is the mean over graphs. Ties count in
    favour of the positive pair (the reference's :obj:`argsort` leaves them
    implementation-defined). The reference averages per-batch values
    weighted by the number of labelled pairs, which equals this function
    when the whole split is passed at once.

    Hits@:math:`k` (:obj:`"hits@{k}_filtered"` for every :math:`k` in
    :obj:`hits`; LRGB reports :math:`k \in \{1, 3, 10\}`) reads the same
    filtered ranks as :obj:`"mrr_filtered"` and is averaged the same way:
    a graph scores the fraction of its positive pairs with
    :math:`\mathrm{rank}(s, t) \le k` (0 if it has none), the result is the
    mean over graphs.

    Args:
        x (torch.Tensor): Node embeddings :math:`(N, F)`, finite.
        edge_label_index (torch.Tensor): Labelled pairs :math:`(2, L)`, global
            integer node indices in :math:`[0, N)` (as batched by PyG).
        edge_label (torch.Tensor): Labels :math:`(L,)`, 1 for a contact.
        batch (torch.Tensor, optional): Graph of every node :math:`(N,)`,
            integer, sorted and non-negative. (default: :obj:`None`)
        hits (Sequence[int], optional): The cut-offs :math:`k \ge 1` of the
            filtered Hits@:math:`k` to add, e.g. :obj:`(1, 3, 10)`.
            (default: :obj:`()`)

    Returns:
        :obj:`{"mrr": ..., "mrr_filtered": ..., "mrr_filtered_noself": ...}`,
        plus :obj:`"hits@{k}_filtered"` for every :math:`k` in :obj:`hits`
        (in that order).
    """
    check_tensor('x', x)
    if x.dim() != 2:
        raise ValueError(f"Expected 'x' to have shape [N, F] "
                         f"(got {list(x.shape)})")
    check_float_tensor('x', x)
    num_nodes = x.size(0)
    check_integer_tensor('edge_label_index', edge_label_index)
    if edge_label_index.dim() != 2 or edge_label_index.size(0) != 2:
        raise ValueError(f"Expected 'edge_label_index' to have shape [2, L] "
                         f"(got {list(edge_label_index.shape)})")
    check_tensor('edge_label', edge_label)
    if edge_label.shape != (edge_label_index.size(1), ):
        raise ValueError(f"Expected 'edge_label' to have shape "
                         f"[{edge_label_index.size(1)}] "
                         f"(got {list(edge_label.shape)})")
    if batch is not None:
        check_integer_tensor('batch', batch)
        if batch.shape != (num_nodes, ):
            raise ValueError(f"Expected 'batch' to have shape [{num_nodes}] "
                             f"(got {list(batch.shape)})")
    if num_nodes == 0:
        raise ValueError("Expected at least one node in 'x'")
    if isinstance(hits, (str, Integral)) or not all(
            isinstance(k, Integral) and not isinstance(k, bool) and k >= 1
            for k in hits):
        raise ValueError(f"Expected 'hits' to be a sequence of integers "
                         f">= 1 (got {hits!r})")

    # The value checks and the number of graphs share one read of the device
    # (it replaces the read of batch.max()).
    x = x.detach()
    edge_label_index = edge_label_index.long()
    has_pairs = edge_label_index.numel() > 0
    reads = [torch.isfinite(x).all()]
    if has_pairs:
        reads += torch.aminmax(edge_label_index)  # low, high
    if batch is not None:
        batch = batch.long()
        reads += [sorted_batch_flag(batch), batch[-1]]
    values = torch.stack([v.long() for v in reads]).tolist()
    if not values[0]:
        raise_non_finite('x')
    if has_pairs and (values[1] < 0 or values[2] >= num_nodes):
        raise ValueError(f"Expected 'edge_label_index' to hold node indices "
                         f"in [0, {num_nodes}) (got values in "
                         f"[{values[1]}, {values[2]}])")
    if batch is None:
        batch = torch.zeros(num_nodes, dtype=torch.long, device=x.device)
        num_graphs = 1
    else:
        if not values[-2]:
            raise_unsorted('batch')
        num_graphs = values[-1] + 1
    counts = torch.bincount(batch, minlength=num_graphs)
    start = counts.cumsum(0) - counts

    dense, mask = to_dense_batch(x, batch, batch_size=num_graphs)  # [B, M, F]
    scores = dense @ dense.transpose(1, 2)  # [B, M, M]
    scores = scores.masked_fill(~mask.unsqueeze(1), float('-inf'))

    pos = edge_label_index[:, edge_label.detach() == 1]
    graph = batch[pos[0]]
    if not bool((batch[pos[1]] == graph).all()):
        raise ValueError("Expected every pair in 'edge_label_index' to join "
                         "two nodes of the same graph")
    src, dst = pos[0] - start[graph], pos[1] - start[graph]
    rows = scores[graph, src]  # [P, M]
    pos_score = rows.gather(1, dst.view(-1, 1))  # [P, 1]

    is_pos = torch.zeros_like(scores, dtype=torch.bool)  # [B, M, M]
    is_pos[graph, src, dst] = True
    filtered = rows.masked_fill(is_pos[graph, src], float('-inf'))
    noself = filtered.scatter(1, src.view(-1, 1), float('-inf'))

    def graph_mean(per_pair: Tensor) -> float:
        per_graph = scatter(per_pair, graph, dim=0, dim_size=num_graphs,
                            reduce='mean')  # 0 where a graph has none
        return float(per_graph.mean())

    out: Dict[str, float] = {}
    ranks: Dict[str, Tensor] = {}
    for key, cand in (('mrr', rows), ('mrr_filtered', filtered),
                      ('mrr_filtered_noself', noself)):
        ranks[key] = 1 + (cand > pos_score).sum(dim=1)  # [P]
        out[key] = graph_mean(1.0 / ranks[key].to(torch.float64))
    for k in hits:
        hit = ranks['mrr_filtered'] <= k  # [P]
        out[f'hits@{k}_filtered'] = graph_mean(hit.to(torch.float64))
    return out
