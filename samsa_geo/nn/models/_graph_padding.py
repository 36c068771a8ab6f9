r"""Batches of graphs padded to a few fixed sizes, so that one CUDA graph of
a model's training step serves every batch of about the same size.

A batch of :math:`B` graphs with :math:`N` nodes and :math:`E` edges is
padded to :math:`N_b` nodes and :math:`E_b` edges, sizes of the form
:math:`s \cdot 2^j` with :math:`4 \le s < 8` (:func:`bucket`: less than a
quarter of padding). The padding nodes form graphs of their own, after
the real ones, of at most :math:`M_b` nodes each (the largest graph's size
rounded up to a power of two), :math:`G_b` graphs in all (some padding
graphs may be empty), and the padding edges are self-loops on the last
padding node: no real node exchanges a message or an attention weight with
a padding node. Batch norms count the real rows only (see
:func:`~samsa_geo.ops.masked_batch_norm.counted_rows`). Real graphs then
get what the unpadded batch gets, and the padding nodes' outputs are
dropped.

A batch may also be padded to larger sizes than its own bucket: to those
of a graph the model keeps already (:func:`choose_sizes`), so that a
shuffling loader's batches of other sizes, and an epoch's last, smaller
batch, replay a kept graph instead of running eagerly.
"""
from typing import Iterable, NamedTuple, Optional, Tuple

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


#: The most padded token values (nodes times channels) of a kept graph
#: that a batch of any smaller size replays (see :func:`choose_sizes`).
#: A training step of that size makes as many launches as one of a few
#: nodes, each on a few hundred kilobytes: launch latency, not its size,
#: sets its GPU time, far below an eager step's host time.
REUSED_STEP_MAX_ELEMENTS = 1 << 16


class PaddedSizes(NamedTuple):
    r"""The sizes of a padded batch."""
    num_nodes: int  #: :math:`N_b`
    num_edges: int  #: :math:`E_b`
    num_graphs: int  #: :math:`G_b`, real and padding graphs
    max_num_nodes: int  #: :math:`M_b`, the largest graph's bound


def padded_sizes(num_nodes: int, num_edges: int, num_graphs: int,
                 max_num_nodes: int) -> PaddedSizes:
    r"""The bucket of a batch of ``num_graphs`` graphs of ``num_nodes``
    nodes and ``num_edges`` edges, the largest ``max_num_nodes`` nodes:
    :math:`N_b` and :math:`E_b` from :func:`bucket` (at least one padding
    node and edge), :math:`M_b` from :func:`set_bound`, and room for
    :math:`\lceil s / M_b \rceil` padding graphs, :math:`s` the node
    bucket's step, the graph count rounded up by :func:`bucket` too (so
    that batches of a larger bucket may replay its graph, see
    :func:`holds`)."""
    nodes, step = bucket(num_nodes + 1)
    bound = set_bound(max(max_num_nodes, 1))
    graphs = bucket(num_graphs + -(-step // bound))[0]
    return PaddedSizes(nodes, bucket(num_edges + 1)[0], graphs, bound)


def holds(sizes: PaddedSizes, num_nodes: int, num_edges: int,
          num_graphs: int, max_num_nodes: int) -> bool:
    r"""Whether a batch (arguments as in :func:`padded_sizes`) can be
    padded to ``sizes``: more nodes and edges, its largest graph within
    the bound, and room for its padding nodes in graphs of at most
    :math:`M_b` nodes after its own."""
    pad = sizes.num_nodes - num_nodes
    return (pad >= 1 and sizes.num_edges > num_edges
            and sizes.max_num_nodes >= max_num_nodes
            and sizes.num_graphs >= num_graphs +
            -(-pad // sizes.max_num_nodes))


def choose_sizes(kept: Iterable[PaddedSizes], num_nodes: int,
                 num_edges: int, num_graphs: int, max_num_nodes: int,
                 channels: int) -> PaddedSizes:
    r"""The sizes a batch is padded to: the smallest of ``kept`` (the
    sizes whose graphs a model keeps) that :func:`holds` it and has at
    most twice the nodes of its own bucket or at most
    :data:`REUSED_STEP_MAX_ELEMENTS` token values of ``channels``
    channels; else its own bucket (:func:`padded_sizes`). A batch of a
    rare size, such as an epoch's last, then replays a graph instead of
    running eagerly until its own is captured."""
    own = padded_sizes(num_nodes, num_edges, num_graphs, max_num_nodes)
    fits = [s for s in kept
            if holds(s, num_nodes, num_edges, num_graphs, max_num_nodes)
            and (s.num_nodes <= 2 * own.num_nodes
                 or s.num_nodes * channels <= REUSED_STEP_MAX_ELEMENTS)]
    return min(fits, default=own)


class PaddedGraphs(NamedTuple):
    r"""A padded batch (see :func:`pad_graphs`)."""
    x: Tensor  #: :math:`(N_b, F)`, zeros in the padding rows
    edge_index: Tensor  #: :math:`(2, E_b)`
    edge_attr: Optional[Tensor]  #: :math:`(E_b, D)`
    batch: Tensor  #: :math:`(N_b)`, padding graphs :math:`B, \dots`
    pe: Optional[Tensor]  #: :math:`(N_b, P)`
    node_id: Optional[Tensor]  #: :math:`(N_b, d)`
    real: Tensor  #: :math:`(N_b)`, true for the real nodes
    num_graphs: int  #: :math:`G_b`
    max_num_nodes: int  #: :math:`M_b`


def pad_graphs(x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor],
               batch: Tensor, pe: Optional[Tensor], node_id: Optional[Tensor],
               num_graphs: int, max_num_nodes: int,
               sizes: Optional[PaddedSizes] = None) -> PaddedGraphs:
    r"""Pads a batch of ``num_graphs`` graphs (``batch`` sorted, the
    largest ``max_num_nodes`` nodes) as the module describes, to
    ``sizes`` (its own bucket, :func:`padded_sizes`, by default; sizes
    that :func:`holds` it). Reads nothing back from the device."""
    N, E = x.size(0), edge_index.size(1)
    if sizes is None:
        sizes = padded_sizes(N, E, num_graphs, max_num_nodes)
    if not holds(sizes, N, E, num_graphs, max_num_nodes):
        raise ValueError(f"Expected sizes that hold a batch of {N} nodes, "
                         f"{E} edges and {num_graphs} graphs of at most "
                         f"{max_num_nodes} nodes (got {sizes})")
    num_nodes, bound = sizes.num_nodes, sizes.max_num_nodes
    pad = num_nodes - N
    # Padding node j goes to padding graph num_graphs + j // bound.
    tail = torch.arange(pad, device=batch.device).div_(
        bound, rounding_mode='floor').add_(num_graphs)  # [pad]
    batch = torch.cat([batch.long(), tail])  # [N_b]
    edge_index = F.pad(edge_index, (0, sizes.num_edges - E),
                       value=num_nodes - 1)  # [2, E_b]

    def rows(t: Optional[Tensor], n: int) -> Optional[Tensor]:
        # t [n_t, ...] with zero rows up to n
        if t is None:
            return None
        return F.pad(t, (0, 0) * (t.dim() - 1) + (0, n - t.size(0)))

    return PaddedGraphs(rows(x, num_nodes), edge_index,
                        rows(edge_attr, sizes.num_edges), batch,
                        rows(pe, num_nodes), rows(node_id, num_nodes),
                        batch < num_graphs, sizes.num_graphs, bound)
