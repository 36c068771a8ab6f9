r"""Batches of graphs padded to a few fixed sizes, so that one CUDA graph of
a model's training step serves every batch of about the same size.

A batch of :math:`B` graphs with :math:`N` nodes and :math:`E` edges is
padded to :math:`N_b` nodes and :math:`E_b` edges, sizes of the form
:math:`s \cdot 2^j` with :math:`4 \le s < 8` (:func:`bucket`: less than a
quarter of padding). The padding nodes form :math:`P` graphs of their own,
after the real ones, of at most :math:`M_b` nodes each (the largest graph's
size rounded up to a power of two), and the padding edges are self-loops on
the last padding node: no real node exchanges a message or an attention
weight with a padding node. Batch norms count the real rows only (see
:func:`~samsa_geo.ops.masked_batch_norm.counted_rows`). Real graphs then
get what the unpadded batch gets, and the padding nodes' outputs are
dropped.
"""
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

#: The smallest padded size.
MIN_BUCKET = 16


def bucket(n: int) -> Tuple[int, int]:
    r"""The padded size of :math:`n` items, the smallest multiple of
    :math:`2^{\lfloor \log_2 n \rfloor - 2}` (at least 16) that holds them,
    and that step; fewer than a quarter of the padded size is padding
    (beyond 16 items)."""
    if n <= MIN_BUCKET:
        return MIN_BUCKET, MIN_BUCKET
    step = 1 << (n.bit_length() - 3)
    return -(-n // step) * step, step


def set_bound(max_num_nodes: int) -> int:
    r"""The padded batch's largest set: ``max_num_nodes`` rounded up to a
    power of two (at least 8)."""
    return max(8, 1 << (max_num_nodes - 1).bit_length())


class PaddedGraphs(NamedTuple):
    r"""A padded batch (see :func:`pad_graphs`)."""
    x: Tensor  #: :math:`(N_b, F)`, zeros in the padding rows
    edge_index: Tensor  #: :math:`(2, E_b)`
    edge_attr: Optional[Tensor]  #: :math:`(E_b, D)`
    batch: Tensor  #: :math:`(N_b)`, padding graphs :math:`B, \dots`
    pe: Optional[Tensor]  #: :math:`(N_b, P)`
    node_id: Optional[Tensor]  #: :math:`(N_b, d)`
    num_graphs: int  #: :math:`B + P`
    max_num_nodes: int  #: :math:`M_b`


def pad_graphs(x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor],
               batch: Tensor, pe: Optional[Tensor], node_id: Optional[Tensor],
               num_graphs: int, max_num_nodes: int) -> PaddedGraphs:
    r"""Pads a batch of ``num_graphs`` graphs (``batch`` sorted, the
    largest ``max_num_nodes`` nodes) as the module describes. Reads
    nothing back from the device."""
    N, E = x.size(0), edge_index.size(1)
    num_nodes, step = bucket(N + 1)  # at least one padding node
    num_edges = bucket(E + 1)[0]
    bound = set_bound(max(max_num_nodes, 1))
    pad = num_nodes - N  # 1 <= pad <= step
    # Padding node j goes to padding graph num_graphs + j // bound.
    tail = torch.arange(pad, device=batch.device).div_(
        bound, rounding_mode='floor').add_(num_graphs)  # [pad]
    batch = torch.cat([batch.long(), tail])  # [N_b]
    edge_index = F.pad(edge_index, (0, num_edges - E),
                       value=num_nodes - 1)  # [2, E_b]

    def rows(t: Optional[Tensor], n: int) -> Optional[Tensor]:
        # t [n_t, ...] with zero rows up to n
        if t is None:
            return None
        return F.pad(t, (0, 0) * (t.dim() - 1) + (0, n - t.size(0)))

    return PaddedGraphs(rows(x, num_nodes), edge_index,
                        rows(edge_attr, num_edges), batch,
                        rows(pe, num_nodes), rows(node_id, num_nodes),
                        num_graphs + -(-step // bound), bound)
