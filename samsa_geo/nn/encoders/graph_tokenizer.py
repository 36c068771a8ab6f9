from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import GELU, Linear, Module, Parameter, Sequential
from torch_geometric.nn.inits import reset

from samsa_geo.nn.attention import config
from samsa_geo.nn.attention._dispatch import is_tracing
from samsa_geo.nn.attention._sets import (
    batch_sizes,
    bounded_size_hint,
    check_size_hint,
    checked_sizes,
    set_offsets,
    sort_stable,
)
from samsa_geo.ops import check_sorted_batch
from samsa_geo.ops.validation import (
    check_bool,
    check_edge_index,
    check_float_tensor,
    check_matrix,
    check_node_indices,
    check_non_negative_int,
    check_positive_int,
    check_tensor,
)


class GraphTokens(NamedTuple):
    r"""Output of :class:`GraphTokenizer`.

    Attributes:
        x (torch.Tensor): Tokens :math:`(T, F)`, :math:`T = N + E` (or
            :math:`N` without edge tokens), grouped by graph; within a graph
            its node tokens come first (in node order), then its edge tokens
            (in edge order).
        batch (torch.Tensor): Graph of every token :math:`(T,)`, sorted.
        node_index (torch.Tensor): Position of node :math:`i`'s token,
            :math:`(N,)`: read node outputs back with :obj:`out[node_index]`.
        edge_index (torch.Tensor, optional): Position of edge :math:`e`'s
            token, :math:`(E,)`; :obj:`None` without edge tokens.
        node_mask (torch.Tensor): :obj:`True` for node tokens, :math:`(T,)`.
    """
    x: Tensor
    batch: Tensor
    node_index: Tensor
    edge_index: Optional[Tensor]
    node_mask: Tensor


class GraphTokenizer(Module):
    r"""Turns a (batch of) graph(s) into a token set, nodes *and* edges being
    tokens, as in the released code of `"SAMSA: Efficient Transformer for
    Many Data Modalities" <https://arxiv.org/abs/2408.05391>`_.

    Every node gets a random identifier :math:`\mathbf{r}_i \sim
    \mathcal{N}(0, \mathbf{I}_{d})`, scaled by a learned
    :math:`\sigma = \mathrm{softplus}(\theta)`:

    .. math::
        \mathbf{t}_i &= \mathbf{W}_{\mathrm{node}}\left[\,
            f_{\mathrm{node}}(\mathbf{x}_i) \,\Vert\, \sigma\mathbf{r}_i
            \right] + \mathbf{p}_i

        \mathbf{t}_{(j \to i)} &= \mathrm{MLP}_{\mathrm{edge}}\left(
            f_{\mathrm{edge}}(\mathbf{e}_{j,i}) \,\Vert\,
            \sigma(\mathbf{r}_j - \mathbf{r}_i) \right)

    where :math:`f_{\mathrm{node}}, f_{\mathrm{edge}}` are pluggable input
    encoders (:class:`torch.nn.Linear` for float features,
    :class:`CategoricalEncoder` for OGB features), :math:`\mathbf{p}_i` an
    optional encoded positional encoding and :math:`j \to i` the edge
    :obj:`edge_index[:, e] = (j, i)`.

    Identifiers: in training mode fresh ones are drawn at every call (the
    model is permutation-equivariant in distribution). In evaluation mode
    they are deterministic: node :math:`i`, the :math:`m`-th node of its
    graph, gets row :math:`m` of a fixed table generated from :obj:`seed`, so
    predictions are reproducible and independent of the other graphs in the
    batch (set :obj:`stochastic_eval=True` for the released code's fresh
    draws). Passing :obj:`node_id` overrides both. Given fixed identifiers,
    node tokens are exactly permutation-equivariant. Given
    :obj:`num_graphs` and :obj:`max_num_nodes` (e.g.
    :func:`~samsa_geo.nn.batch_hints` of a PyG batch), the forward pass
    reads nothing back from the device in either mode.

    Args:
        channels (int): Token width :math:`F`.
        node_encoder (torch.nn.Module): Maps :obj:`x` to :math:`(N, F)`.
        edge_encoder (torch.nn.Module, optional): Maps :obj:`edge_attr` to
            :math:`(E, F)`; if :obj:`None`, edge tokens use the identifiers
            only. (default: :obj:`None`)
        id_channels (int, optional): Identifier size :math:`d`; :obj:`0`
            for node tokens without identifiers (only without edge
            tokens).
            (default: :obj:`16`)
        edge_tokens (bool, optional): Whether to emit edge tokens.
            (default: :obj:`True`)
        stochastic_eval (bool, optional): Draw fresh identifiers in
            evaluation mode too. (default: :obj:`False`)
        seed (int, optional): Seed of the evaluation identifiers.
            (default: :obj:`0`)

    Shapes:
        - **input:** x :math:`(N, *)` (:math:`(N, F_{in})` for a
          :class:`~torch.nn.Linear` node encoder), edge_index :math:`(2, E)`
          (node indices in :math:`[0, N)`), edge_attr :math:`(E, *)`, batch
          :math:`(N,)` (sorted; the order and the node indices are checked
          on the CPU and in debug mode, see
          :func:`~samsa_geo.nn.attention.config.set_debug`), pe
          :math:`(N, F)`, node_id :math:`(N, d)` floating-point
        - **output:** :class:`GraphTokens`
    """
    _BLOCK: int = 1024  # rows of the evaluation id table generated at once

    def __init__(
        self,
        channels: int,
        node_encoder: Module,
        edge_encoder: Optional[Module] = None,
        id_channels: int = 16,
        edge_tokens: bool = True,
        stochastic_eval: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_positive_int('channels', channels)
        check_non_negative_int('id_channels', id_channels)
        check_bool('edge_tokens', edge_tokens)
        check_bool('stochastic_eval', stochastic_eval)
        if id_channels == 0 and edge_tokens:
            raise ValueError("Expected 'id_channels' > 0 since edge tokens "
                             "are built from node identifiers")
        self.channels = channels
        self.id_channels = id_channels
        self.edge_tokens = edge_tokens
        self.stochastic_eval = stochastic_eval
        self.seed = seed

        self.node_encoder = node_encoder
        self.edge_encoder = edge_encoder if edge_tokens else None
        # Node-only tokens may go without identifiers (id_channels=0).
        self.id_scale = Parameter(torch.empty(())) if id_channels else None
        self.lin_node = Linear(channels + id_channels, channels)
        if edge_tokens:
            edge_in = id_channels + (channels if edge_encoder is not None else 0)
            self.edge_nn: Optional[Module] = Sequential(
                Linear(edge_in, channels), GELU(), Linear(channels, channels))
        else:
            self.edge_nn = None
        self._eval_ids = torch.empty(0, id_channels)
        # Copies of the table on the devices and dtypes it was read in: a
        # copy from host memory waits for the device, so it is made once.
        self._eval_copies: Dict[Tuple[torch.device, torch.dtype],
                                Tensor] = {}
        # The first block now: a traced call cannot draw it (see
        # _eval_table).
        self._extend_eval_ids(1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # softplus(0.5413) = 1: identifiers start with unit variance.
        if self.id_scale is not None:
            torch.nn.init.constant_(self.id_scale, 0.5413)
        # PyG's reset: a module's own reset_parameters wins over its
        # children's (a CategoricalEncoder's Xavier init stays).
        for module in (self.node_encoder, self.edge_encoder, self.lin_node,
                       self.edge_nn):
            if module is not None:
                reset(module)

    def _extend_eval_ids(self, rows: int) -> None:
        # Generates the evaluation table on the CPU in blocks (deterministic
        # per block) until it holds `rows` rows.
        while self._eval_ids.size(0) < rows:
            block = self._eval_ids.size(0) // self._BLOCK
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + block)
            new = torch.randn(self._BLOCK, self.id_channels, generator=gen)
            self._eval_ids = torch.cat([self._eval_ids, new], dim=0)
            self._eval_copies.clear()

    def _eval_table(self, rows: int, device: torch.device,
                    dtype: torch.dtype) -> Tensor:
        # The first `rows` rows of the evaluation table, on `device` in
        # `dtype`.
        tracing = is_tracing()
        if self._eval_ids.size(0) < rows:
            if tracing:
                # The graph would hold the generator and redraw the rows on
                # every call: they are drawn before tracing.
                raise ValueError(
                    f"Expected at most {self._eval_ids.size(0)} nodes per "
                    f"graph while tracing (got {rows}): run the model once "
                    f"in evaluation mode on a graph of {rows} nodes before "
                    f"exporting or compiling it, which draws the node "
                    f"identifiers of graphs that large")
            self._extend_eval_ids(rows)
        if tracing:  # a constant of the traced graph, not cached
            return self._eval_ids[:rows].to(device, dtype)
        key = (device, dtype)
        table = self._eval_copies.get(key)
        if table is None:
            table = self._eval_ids.to(device, dtype)
            self._eval_copies[key] = table
        return table[:rows]

    def node_ids(self, batch: Tensor, dtype: torch.dtype,
                 num_graphs: Optional[int] = None,
                 max_num_nodes: Optional[int] = None) -> Tensor:
        r"""Unscaled identifiers :math:`\mathbf{r}` for the nodes of
        :obj:`batch` in the current mode, shape :math:`(N, d)`. In
        evaluation mode, :obj:`num_graphs` and :obj:`max_num_nodes` (e.g.
        from :func:`~samsa_geo.nn.batch_hints`) spare the read-back of the
        largest graph's size."""
        num_nodes = batch.numel()
        if self.training or self.stochastic_eval:
            return torch.randn(num_nodes, self.id_channels, device=batch.device,
                               dtype=dtype)
        if num_nodes == 0:
            return torch.empty(0, self.id_channels, device=batch.device,
                               dtype=dtype)
        check_size_hint('num_graphs', num_graphs)
        check_size_hint('max_num_nodes', max_num_nodes)
        max_num_nodes = bounded_size_hint(max_num_nodes, num_nodes)
        if num_graphs is None or max_num_nodes is None:
            # The read-back the layers share (cached on the batch tensor).
            num_graphs, max_num_nodes = batch_sizes(batch)
        elif config.checks_values(batch.device):  # hints checked
            checked_sizes(batch, num_graphs, max_num_nodes)
        start = set_offsets(batch, num_graphs)  # first node of each graph
        local = torch.arange(num_nodes, device=batch.device) - start[batch]
        return self._eval_table(max_num_nodes, batch.device, dtype)[local]

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Optional[Tensor] = None,
        batch: Optional[Tensor] = None,
        pe: Optional[Tensor] = None,
        node_id: Optional[Tensor] = None,
        num_graphs: Optional[int] = None,
        max_num_nodes: Optional[int] = None,
    ) -> GraphTokens:
        check_tensor('x', x)
        if isinstance(self.node_encoder, Linear):  # others check their own
            check_matrix('x', x, self.node_encoder.in_features)
        num_nodes = x.size(0)
        check_edge_index(edge_index)
        if batch is None:
            batch = x.new_zeros(num_nodes, dtype=torch.long)
        if check_tensor('batch', batch).shape != (num_nodes, ):
            raise ValueError(f"Expected 'batch' to have shape [{num_nodes}] "
                             f"(got {list(batch.shape)})")
        if config.checks_values(batch.device):  # reads the device back
            check_sorted_batch(batch)
            check_node_indices(edge_index, num_nodes)

        h = self.node_encoder(x)
        if h.shape != (num_nodes, self.channels):
            raise ValueError(f"Expected 'node_encoder' to return shape "
                             f"[{num_nodes}, {self.channels}] "
                             f"(got {list(h.shape)})")
        if self.id_channels == 0:
            node_tok = self.lin_node(h)  # [N, F]
        else:
            if node_id is None:
                node_id = self.node_ids(batch, h.dtype, num_graphs,
                                        max_num_nodes)
            elif check_float_tensor('node_id', node_id).shape != (
                    num_nodes, self.id_channels):
                raise ValueError(f"Expected 'node_id' to have shape "
                                 f"[{num_nodes}, {self.id_channels}] "
                                 f"(got {list(node_id.shape)})")
            node_id = F.softplus(self.id_scale) * node_id.to(h.dtype)
            node_tok = self.lin_node(torch.cat([h, node_id], dim=-1))
        if pe is not None:
            if check_tensor('pe', pe).shape != node_tok.shape:
                raise ValueError(f"Expected 'pe' to have shape "
                                 f"{list(node_tok.shape)} (got {list(pe.shape)})")
            node_tok = node_tok + pe

        node_arange = torch.arange(num_nodes, device=x.device)
        if self.edge_nn is None:
            return GraphTokens(node_tok, batch, node_arange, None,
                               torch.ones_like(batch, dtype=torch.bool))

        src, dst = edge_index
        # Rows gathered by index_select, whose backward on CUDA is one
        # index_add (advanced indexing's sorts the indices first).
        feats = [node_id.index_select(0, src)
                 - node_id.index_select(0, dst)]  # [E, d]
        if self.edge_encoder is not None:
            if edge_attr is None:
                raise ValueError("Expected 'edge_attr' since an 'edge_encoder' "
                                 "is set (got None)")
            num_edges = edge_index.size(1)
            if isinstance(self.edge_encoder, Linear):
                width = self.edge_encoder.in_features
                if check_tensor('edge_attr', edge_attr).shape != (
                        num_edges, width):
                    raise ValueError(f"Expected 'edge_attr' to have shape "
                                     f"[{num_edges}, {width}] "
                                     f"(got {list(edge_attr.shape)})")
            elif check_tensor('edge_attr', edge_attr).size(0) != num_edges:
                raise ValueError(f"Expected 'edge_attr' to have "
                                 f"{num_edges} rows "
                                 f"(got {edge_attr.size(0)})")
            feats.insert(0, self.edge_encoder(edge_attr))
        edge_tok = self.edge_nn(torch.cat(feats, dim=-1))  # [E, F]

        tokens = torch.cat([node_tok, edge_tok], dim=0)  # [N + E, F]
        token_batch = torch.cat([batch, batch[src]], dim=0)
        # Stable sort: per graph, node tokens (first in the concatenation)
        # stay before edge tokens, each in their original order.
        token_batch, perm = sort_stable(token_batch)
        position = torch.empty_like(perm)
        position[perm] = torch.arange(perm.numel(), device=perm.device)
        node_mask = perm < num_nodes
        return GraphTokens(tokens.index_select(0, perm), token_batch,
                           position[:num_nodes], position[num_nodes:],
                           node_mask)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.channels}, '
                f'id_channels={self.id_channels}, '
                f'edge_tokens={self.edge_tokens})')
