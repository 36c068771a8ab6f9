from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import (
    BatchNorm1d,
    Dropout,
    GELU,
    Linear,
    Module,
    ModuleList,
    Sequential,
)
from torch.nn.modules.batchnorm import _BatchNorm
from torch_geometric.nn import GINConv, GINEConv, global_add_pool, global_mean_pool
from torch_geometric.nn.norm import BatchNorm
from torch_geometric.nn.inits import reset

from samsa_geo.nn.attention import config
from samsa_geo.nn.attention._dispatch import is_tracing
from samsa_geo.nn.attention._sets import check_size_hint, checked_sizes
from samsa_geo.nn.conv._graph_training import (
    TrainingGraphReplay,
    autograd_allows_capture,
)
from samsa_geo.nn.attention._module_tree import ModuleTree
from samsa_geo.nn.conv.samsa_conv import SamsaConv
from samsa_geo.nn.encoders.categorical_encoder import CategoricalEncoder
from samsa_geo.nn.encoders.graph_tokenizer import GraphTokenizer
from samsa_geo.nn.encoders.positional_encoder import PositionalEncoder
from samsa_geo.nn.models._graph_padding import (
    PaddedGraphs,
    bucket,
    choose_sizes,
    pad_graphs,
)
from samsa_geo.nn.models._reloadable import Reloadable
from samsa_geo.ops.gine_aggregate import gine_aggregate_unchecked
from samsa_geo.ops.masked_batch_norm import counted_rows
from samsa_geo.ops.validation import (
    check_batch_vector,
    check_bool,
    check_edge_index,
    check_finite,
    check_float_tensor,
    check_kwargs,
    check_node_indices,
    check_positive_int,
    check_tensor,
)

TOKENS = ('node', 'node_edge')
PES = (None, 'lap', 'rw')
LEVELS = ('graph', 'node', 'edge')
POOLS = ('mean', 'sum')
#: The most padded token values (nodes times channels) of a training step
#: that :class:`SamsaGraphModel` captures as CUDA graphs; larger batches
#: keep the GPU busier than the host and train eagerly.
GRAPHED_STEP_MAX_ELEMENTS = 1 << 21

#: Presets for the five LRGB datasets (the keys of
#: :obj:`samsa_geo.datasets.LRGB_TASKS`), each below LRGB's 500k-parameter
#: budget; build one with :meth:`SamsaGraphModel.from_preset`.
PRESETS: Dict[str, Dict[str, Any]] = {
    'peptides-func': dict(in_channels=9, edge_dim=3, categorical=True,
                          out_channels=10, level='graph', hidden_channels=88,
                          num_layers=4, heads=4, k=64, pe='rw', pe_channels=16,
                          tokens='node', dropout=0.1),
    'peptides-struct': dict(in_channels=9, edge_dim=3, categorical=True,
                            out_channels=11, level='graph',
                            hidden_channels=88, num_layers=4, heads=4, k=64,
                            pe='rw', pe_channels=16, tokens='node',
                            dropout=0.1),
    'pascalvoc-sp': dict(in_channels=14, edge_dim=2, categorical=False,
                         out_channels=21, level='node', hidden_channels=88,
                         num_layers=4, heads=4, k=64, pe='lap', pe_channels=8,
                         tokens='node', dropout=0.1),
    'coco-sp': dict(in_channels=14, edge_dim=2, categorical=False,
                    out_channels=81, level='node', hidden_channels=88,
                    num_layers=4, heads=4, k=64, pe='lap', pe_channels=8,
                    tokens='node', dropout=0.1),
    'pcqm-contact': dict(in_channels=9, edge_dim=3, categorical=True,
                         out_channels=1, level='edge', hidden_channels=88,
                         num_layers=4, heads=4, k=32, pe='rw', pe_channels=16,
                         tokens='node', dropout=0.1),
}


class _TokenGINE(Module):
    # GINE(x, edge_index, edge_attr) whose edge features are read from the
    # current edge tokens when `edge_token_index` is given (node+edge tokens).
    # The GINEConv / GINConv module holds the parameters (state_dict,
    # repr); the forward pass computes its update directly,
    # nn((1 + eps) x_i + sum_{j -> i} ReLU(x_j + e_ji)), through
    # gine_aggregate_unchecked (PyTorch's gather and indexed sum, or
    # samsa_geo's Triton kernels with config.use_fused_gine(); the model
    # built and checked its inputs) and none of MessagePassing's per-call
    # dispatch.
    def __init__(self, channels: int, with_edges: bool) -> None:
        super().__init__()
        nn = Sequential(Linear(channels, channels), GELU(),
                        Linear(channels, channels))
        self.conv = GINEConv(nn, train_eps=True) if with_edges else GINConv(
            nn, train_eps=True)

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor,
                edge_attr: Optional[Tensor] = None,
                edge_token_index: Optional[Tensor] = None) -> Tensor:
        conv = self._modules['conv']
        if isinstance(conv, GINEConv):
            if edge_token_index is not None:
                edge_attr = x.index_select(0, edge_token_index)  # [E, C]
            if edge_attr is None or edge_attr.shape != (edge_index.size(1),
                                                        x.size(1)):
                shape = None if edge_attr is None else list(edge_attr.shape)
                raise ValueError(f"Expected 'edge_attr' of shape "
                                 f"[{edge_index.size(1)}, {x.size(1)}] "
                                 f"(got {shape})")
        else:
            edge_attr = None
        # The sum over the incoming edges is taken in the dtype of
        # (1 + eps) x_i (float32 for bf16 tokens, as float32 eps promotes
        # them).
        src, dst = edge_index.unbind()  # [E] each
        h = gine_aggregate_unchecked(
            x, src, dst, edge_attr, conv.eps,
            'auto' if config.use_fused_gine() else 'torch')
        lin1, act, lin2 = conv.nn._modules.values()
        h = F.gelu(F.linear(h, lin1.weight, lin1.bias),
                   approximate=act.approximate)
        return F.linear(h, lin2.weight, lin2.bias)

    def __repr__(self) -> str:
        return repr(self.conv)


class SamsaGraphModel(Reloadable, Module):
    r"""A graph transformer of :class:`~samsa_geo.nn.SamsaConv` layers
    (`"SAMSA: Efficient Transformer for Many Data Modalities"
    <https://arxiv.org/abs/2408.05391>`_): local GINE message passing plus
    SAMSA sampled global attention in every layer, for graph-, node- and
    edge-(pair-)level tasks.

    .. math::
        \mathbf{T}^{(0)} &= \mathrm{Tokenize}(\mathbf{X}, \mathbf{E},
        \mathbf{P}), \qquad \mathbf{T}^{(\ell)} =
        \mathrm{SamsaConv}_{\ell}\big(\mathbf{T}^{(\ell-1)}\big),

        \hat{\mathbf{y}} &= \mathrm{MLP}_2\Big(\mathrm{Read}\big(
        \mathbf{T}^{(L)}\big)\Big),

    where :math:`\mathrm{Tokenize}` is :class:`GraphTokenizer` (node tokens
    with random identifiers, optionally one token per edge), :math:`\mathbf{P}`
    the encoded positional encoding (:class:`PositionalEncoder` of
    :obj:`data.lap_pe` or :obj:`data.rw_pe`), :math:`\mathrm{Read}` the node
    tokens pooled per graph (:obj:`level="graph"`), the node tokens
    (:obj:`"node"`), or node embeddings decoded on pairs :math:`(s, t)` by the
    dot product :math:`\mathbf{z}_s^\top \mathbf{z}_t` (:obj:`"edge"`, as
    LRGB's PCQM-Contact head), and :math:`\mathrm{MLP}_2` a 2-layer head.
    The local layer of every :class:`SamsaConv` is
    :class:`~torch_geometric.nn.conv.GINEConv` on the edge features
    (:class:`~torch_geometric.nn.conv.GINConv` without them); with
    :obj:`tokens="node_edge"` it reads the edge features from the current
    edge tokens, so the local and the global branch share them.

    Parameter count: every :class:`SamsaConv` layer with a GINE branch holds
    :math:`12C^2 + CH + 19C + H + 1` parameters for :math:`C` hidden channels
    and :math:`H` heads (attention :math:`4C^2 + 4C`, importance scorer
    :math:`2C^2 + CH + 4C + H`, MLP :math:`4C^2 + 3C`, GINE
    :math:`2C^2 + 2C + 1`, three batch norms :math:`6C`); the head adds
    :math:`C^2 + C + (C + 1)F_{out}` (:math:`2C^2 + 2C` for :obj:`"edge"`),
    the tokenizer :math:`(C + d)C + C + 1` plus the feature encoders (and an
    edge MLP :math:`(C + d)C + C^2 + 2C` for :obj:`"node_edge"`). The
    :data:`PRESETS` (:math:`C = 88`, :math:`L = 4`, :math:`H = 4`) hold
    401k-423k parameters (418k-440k with :obj:`tokens="node_edge"`), within
    LRGB's 500k budget; :meth:`num_parameters` counts exactly.

    Training steps on CUDA are bound by the host on batches of small
    graphs (hundreds of operator calls per step, each dispatched and
    launched on its own). Where the batch's hints are given
    (:obj:`num_graphs` and :obj:`max_num_nodes`, e.g. from
    :func:`~samsa_geo.nn.batch_hints`) with :obj:`tokens="node"` and
    :obj:`level="graph"` or :obj:`"node"`, the model therefore pads each
    training batch to one of a few sizes (less than a quarter of padding:
    padding nodes in graphs of their own, self-loops among them, batch
    norms over the real nodes only) and, once a size has trained twice,
    replays CUDA graphs of its forward and backward passes: one launch
    each, the outputs and gradients of the real nodes those of the
    unpadded batch up to rounding. Random numbers (dropout, node
    identifiers) are drawn for the padding rows too, so they differ from
    an unpadded step's. Other calls, and all of them with
    :func:`~samsa_geo.nn.attention.config.set_cuda_graphs` off, run
    eagerly.

    Args:
        in_channels (int): Columns of :obj:`x` (9 for OGB atom features).
        hidden_channels (int): Token width :math:`C`.
        out_channels (int): Outputs per graph/node (1 for :obj:`"edge"`).
        num_layers (int): Number of :class:`SamsaConv` layers :math:`L`.
        edge_dim (int, optional): Columns of :obj:`edge_attr`; :obj:`None`
            for graphs without edge features. (default: :obj:`None`)
        categorical (bool, optional): :obj:`x` / :obj:`edge_attr` hold OGB
            atom / bond categories (embedded by :class:`CategoricalEncoder`)
            instead of floats (:class:`~torch.nn.Linear`).
            (default: :obj:`False`)
        level (str, optional): :obj:`"graph"`, :obj:`"node"` or
            :obj:`"edge"`. (default: :obj:`"graph"`)
        pool (str, optional): Graph read-out :obj:`"mean"` or :obj:`"sum"`
            over node tokens. (default: :obj:`"mean"`)
        tokens (str, optional): :obj:`"node"` or :obj:`"node_edge"`.
            (default: :obj:`"node"`)
        pe (str, optional): :obj:`None`, :obj:`"lap"` (:obj:`data.lap_pe`)
            or :obj:`"rw"` (:obj:`data.rw_pe`). (default: :obj:`None`)
        pe_channels (int, optional): Columns of the positional encoding.
            (default: :obj:`16`)
        heads (int, optional): Attention heads. (default: :obj:`4`)
        k (int or float, optional): Keys sampled per graph and head.
            (default: :obj:`32`)
        dropout (float, optional): Dropout in the layers and the head.
            (default: :obj:`0.0`)
        local_conv (bool, optional): Use the GINE branch. (default: :obj:`True`)
        norm (str, optional): Normalisation of :class:`SamsaConv`.
            (default: :obj:`"batch_norm"`)
        id_channels (int, optional): Size of the random node identifiers.
            (default: :obj:`16`)
        attn_kwargs (dict, optional): Further arguments of
            :class:`~samsa_geo.nn.SamsaAttention`. (default: :obj:`None`)
        pe_kwargs (dict, optional): Further arguments of
            :class:`PositionalEncoder`. (default: :obj:`None`)

    Shapes:
        - **input:** ``x`` :math:`(N, F_{in})`, ``edge_index`` :math:`(2, E)`,
          ``edge_attr`` :math:`(E, D)`, ``batch`` :math:`(N)` sorted, ``pe``
          :math:`(N, P)`, ``edge_label_index`` :math:`(2, L)`
        - **output:** :math:`(B, F_{out})` graph level, :math:`(N, F_{out})`
          node level, :math:`(L)` pair logits edge level
    """
    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        num_layers: int,
        edge_dim: Optional[int] = None,
        categorical: bool = False,
        level: str = 'graph',
        pool: str = 'mean',
        tokens: str = 'node',
        pe: Optional[str] = None,
        pe_channels: int = 16,
        heads: int = 4,
        k: Union[int, float] = 32,
        dropout: float = 0.0,
        local_conv: bool = True,
        norm: Optional[str] = 'batch_norm',
        id_channels: int = 16,
        attn_kwargs: Optional[Dict[str, Any]] = None,
        pe_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        _check_arguments(in_channels, hidden_channels, out_channels,
                         num_layers, edge_dim, categorical, level, pool,
                         tokens, pe, pe_channels, local_conv)
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.out_channels = out_channels
        self.num_layers = num_layers
        self.edge_dim = edge_dim
        self.categorical = categorical
        self.level = level
        self.pool = pool
        self.tokens = tokens
        self.pe = pe
        self.pe_channels = pe_channels
        self.heads = heads
        self.k = k
        C = hidden_channels

        node_encoder, edge_encoder = _feature_encoders(in_channels, edge_dim,
                                                       C, categorical)
        node_edge = tokens == 'node_edge'
        self.tokenizer = GraphTokenizer(
            C, node_encoder, edge_encoder if node_edge else None,
            id_channels=id_channels, edge_tokens=node_edge)
        # Node tokens only: edge features are embedded once for every GINE.
        self.edge_encoder = None if node_edge else edge_encoder
        pe_kwargs = check_kwargs('pe_kwargs', pe_kwargs)
        self.pe_encoder = (PositionalEncoder(pe_channels, C, **pe_kwargs)
                           if pe is not None else None)

        with_edges = node_edge or edge_dim is not None
        self.convs = ModuleList([
            SamsaConv(C, _TokenGINE(C, with_edges) if local_conv else None,
                      heads=heads, k=k, dropout=dropout, norm=norm,
                      attn_kwargs=attn_kwargs)
            for _ in range(num_layers)
        ])
        head_out = C if level == 'edge' else out_channels
        self.head = Sequential(Linear(C, C), GELU(), Dropout(dropout),
                               Linear(C, head_out))
        # CUDA graphs of training steps on padded batches (see
        # _replay_training), and the modules they read.
        self._train_graphs = TrainingGraphReplay(max_graphs=8)
        self._module_tree = ModuleTree()
        self.reset_parameters()

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .half(), ...: new storage for the parameters.
        self._train_graphs.clear()
        return super()._apply(fn, *args, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> 'SamsaGraphModel':
        r"""Builds the model of :data:`PRESETS` for LRGB dataset :obj:`name`;
        :obj:`kwargs` override single arguments."""
        key = name.lower()
        if key not in PRESETS:
            raise ValueError(f"Expected 'name' to be one of {list(PRESETS)} "
                             f"(got {name!r})")
        return cls(**{**PRESETS[key], **kwargs})

    @property
    def pe_attr(self) -> Optional[str]:
        r"""Attribute of :class:`~torch_geometric.data.Data` holding the
        positional encoding the model expects (:obj:`"lap_pe"`,
        :obj:`"rw_pe"` or :obj:`None`)."""
        return None if self.pe is None else f'{self.pe}_pe'

    def num_parameters(self) -> int:
        r"""Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def reset_parameters(self) -> None:
        self.tokenizer.reset_parameters()
        if self.edge_encoder is not None:
            self.edge_encoder.reset_parameters()
        if self.pe_encoder is not None:
            self.pe_encoder.reset_parameters()
        for conv in self.convs:
            conv.reset_parameters()
        reset(self.head)

    def node_embeddings(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Optional[Tensor] = None,
        batch: Optional[Tensor] = None,
        pe: Optional[Tensor] = None,
        node_id: Optional[Tensor] = None,
        num_graphs: Optional[int] = None,
        max_num_nodes: Optional[int] = None,
    ) -> Tensor:
        r"""Node representations after the last layer, before the head,
        shape :math:`(N, C)`; arguments as in :meth:`forward`."""
        edge_attr, batch, num_graphs, max_num_nodes = self._checked_inputs(
            x, edge_index, edge_attr, batch, pe, node_id, num_graphs,
            max_num_nodes)
        return self._embed(x, edge_index, edge_attr, batch, pe, node_id,
                           num_graphs, max_num_nodes)

    def _checked_inputs(
        self, x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor],
        batch: Optional[Tensor], pe: Optional[Tensor],
        node_id: Optional[Tensor], num_graphs: Optional[int],
        max_num_nodes: Optional[int],
    ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[int],
               Optional[int]]:
        # node_embeddings' checks of its inputs: edge_attr as [E, D],
        # batch as long, and the hints of one graph.
        check_tensor('x', x)
        if x.dim() != 2 or x.size(1) != self.in_channels:
            raise ValueError(f"Expected 'x' to have shape [N, "
                             f"{self.in_channels}] (got {list(x.shape)})")
        check_edge_index(edge_index)
        if self.training and x.size(0) == 1:  # a shape: nothing read back
            self._check_one_node(edge_index.size(1))
        checks = config.checks_values(x.device)  # reads (see checks_values)
        if checks:
            check_node_indices(edge_index, x.size(0))
        if batch is not None:
            check_batch_vector(batch, x.size(0))
            batch = batch.long()  # int32 too (PyG's pooling indexes long)
        elif num_graphs is None and x.size(0) > 0:
            # One graph: its sizes are shapes (nothing read back, and an
            # exported graph needs no hints).
            num_graphs, max_num_nodes = 1, int(x.size(0))
        if self.edge_dim is not None:
            if edge_attr is None:
                raise ValueError(f"Expected 'edge_attr' of shape [E, "
                                 f"{self.edge_dim}] since 'edge_dim' is set "
                                 f"(got None)")
            check_tensor('edge_attr', edge_attr)
            if edge_attr.dim() == 1:
                edge_attr = edge_attr.view(-1, 1)  # [E, 1]
            if edge_attr.shape != (edge_index.size(1), self.edge_dim):
                raise ValueError(f"Expected 'edge_attr' to have shape "
                                 f"[{edge_index.size(1)}, {self.edge_dim}] "
                                 f"(got {list(edge_attr.shape)})")
        elif edge_attr is not None:
            raise ValueError(f"Expected no 'edge_attr' since the model was "
                             f"built with edge_dim=None (got shape "
                             f"{list(getattr(edge_attr, 'shape', []))}): "
                             f"pass edge_dim to use edge features")
        if self.pe_encoder is not None:
            if pe is None:
                raise ValueError(f"Expected 'pe' (data.{self.pe_attr}) of "
                                 f"shape [N, {self.pe_channels}] since "
                                 f"pe={self.pe!r} (got None)")
            check_tensor('pe', pe)
            if checks and pe.is_floating_point():
                check_finite(pe, 'pe')
        elif pe is not None:
            raise ValueError("Expected no 'pe' since the model was built with "
                             "pe=None: pass pe='lap' or pe='rw' (and "
                             "pe_channels) to use a positional encoding")
        self._check_node_id(node_id, x.size(0))
        if checks:
            for name, t in (('x', x), ('edge_attr', edge_attr),
                            ('node_id', node_id)):
                if t is not None and t.is_floating_point():
                    check_finite(t, name)
        return edge_attr, batch, num_graphs, max_num_nodes

    def _check_node_id(self, node_id: Optional[Tensor], N: int) -> None:
        # Fixed identifiers as [N, id_channels] floats (their values are
        # checked with x's).
        if node_id is None:
            return
        d = self.tokenizer.id_channels
        if d == 0:
            raise ValueError(f"Expected no 'node_id' since the model was "
                             f"built with id_channels=0 (got shape "
                             f"{list(getattr(node_id, 'shape', []))})")
        check_float_tensor('node_id', node_id)
        if node_id.shape != (N, d):
            raise ValueError(f"Expected 'node_id' to have shape [{N}, {d}] "
                             f"(got {list(node_id.shape)})")

    def _embed(self, x: Tensor, edge_index: Tensor,
               edge_attr: Optional[Tensor], batch: Optional[Tensor],
               pe: Optional[Tensor], node_id: Optional[Tensor],
               num_graphs: Optional[int],
               max_num_nodes: Optional[int]) -> Tensor:
        # node_embeddings on checked inputs.
        if self.pe_encoder is not None:
            pe = self.pe_encoder(pe)
        if not self.categorical:  # float features in the parameters' dtype
            dtype = self.head[0].weight.dtype
            x = x.to(dtype)
            edge_attr = None if edge_attr is None else edge_attr.to(dtype)

        tok = self.tokenizer(x, edge_index, edge_attr, batch, pe=pe,
                             node_id=node_id, num_graphs=num_graphs,
                             max_num_nodes=max_num_nodes)
        conv_kwargs: Dict[str, Any] = {}
        tok_edge_index = edge_index
        if tok.edge_index is not None:  # node+edge tokens
            tok_edge_index = tok.node_index[edge_index]  # [2, E] token ids
            conv_kwargs['edge_token_index'] = tok.edge_index
        elif self.edge_encoder is not None:
            conv_kwargs['edge_attr'] = self.edge_encoder(edge_attr)
        if num_graphs is not None:  # the layers read nothing back
            conv_kwargs['num_graphs'] = num_graphs
        if max_num_nodes is not None and tok.edge_index is None:
            # Node tokens only: a set then holds one graph's nodes.
            conv_kwargs['max_num_nodes'] = max_num_nodes
        elif num_graphs == 1:  # one set of all the tokens
            conv_kwargs['max_num_nodes'] = int(tok.x.size(0))
        h = tok.x
        for conv in self.convs:
            h = conv(h, tok_edge_index, tok.batch, **conv_kwargs)
        if tok.edge_index is None:  # node tokens only: token i is node i
            return h
        return h.index_select(0, tok.node_index)  # [N, C]

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Optional[Tensor] = None,
        batch: Optional[Tensor] = None,
        pe: Optional[Tensor] = None,
        edge_label_index: Optional[Tensor] = None,
        node_id: Optional[Tensor] = None,
        num_graphs: Optional[int] = None,
        max_num_nodes: Optional[int] = None,
    ) -> Tensor:
        r"""Runs the model.

        Args:
            x (Tensor): Node features :math:`(N, F_{in})`.
            edge_index (Tensor): Edges :math:`(2, E)`.
            edge_attr (Tensor, optional): Edge features :math:`(E, D)`.
            batch (Tensor, optional): Graph of every node, sorted.
            pe (Tensor, optional): Positional encoding :math:`(N, P)`
                (:obj:`data[model.pe_attr]`).
            edge_label_index (Tensor, optional): Pairs to score
                :math:`(2, L)`, required for :obj:`level="edge"`.
            node_id (Tensor, optional): Fixed node identifiers
                :math:`(N, d)`, floating-point, :math:`d` the
                ``id_channels`` (see :class:`GraphTokenizer`).
            num_graphs (int, optional): Number of graphs :math:`B`, e.g. a
                PyG ``Batch.num_graphs`` (saves device read-backs in every
                layer; :obj:`batch.max() + 1` if :obj:`None`).
            max_num_nodes (int, optional): Nodes of the largest graph, e.g.
                :obj:`samsa_geo.nn.batch_hints(data)['max_num_nodes']`:
                exact attention layouts instead of bounds (used with
                :obj:`tokens="node"`). (default: :obj:`None`)
        """
        if self.level == 'edge':
            if edge_label_index is None:
                raise ValueError("Expected 'edge_label_index' of shape "
                                 "[2, L] since level='edge' (got None)")
            check_edge_index(edge_label_index, 'edge_label_index', 'L')
        if (self.level != 'edge' and self.training and config.use_cuda_graphs()
                and isinstance(x, Tensor) and x.is_cuda):
            out = self._replay_training(x, edge_index, edge_attr, batch, pe,
                                        node_id, num_graphs, max_num_nodes)
            if out is not None:
                return out
        h = self.node_embeddings(x, edge_index, edge_attr, batch, pe, node_id,
                                 num_graphs, max_num_nodes)
        if self.level == 'node':
            return self.head(h)
        if self.level == 'edge':
            if config.checks_values(h.device):
                check_node_indices(edge_label_index, h.size(0),
                                   'edge_label_index')
            z = self.head(h)  # [N, C]
            return (z[edge_label_index[0]] * z[edge_label_index[1]]).sum(-1)
        if batch is None and h.size(0) == 0 and self.pool == 'mean':
            raise ValueError("Expected at least one node for a graph-level "
                             "prediction without 'batch' (got 0): an empty "
                             "graph has no mean (pool='sum' gives its sum, "
                             "zero)")
        if batch is not None:
            batch = batch.long()  # int32 too (checked by node_embeddings)
        self._check_num_graphs(num_graphs, batch, h.size(0))
        return self._read_out(h, batch, num_graphs)

    def _read_out(self, h: Tensor, batch: Optional[Tensor],
                  num_graphs: Optional[int]) -> Tensor:
        # The head on the node embeddings h [N, C] (level='node') or on
        # their pool per graph.
        if self.level == 'node':
            return self.head(h)
        pool = global_mean_pool if self.pool == 'mean' else global_add_pool
        return self.head(pool(h, batch, size=num_graphs))

    def _replay_training(
        self, x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor],
        batch: Optional[Tensor], pe: Optional[Tensor],
        node_id: Optional[Tensor], num_graphs: Optional[int],
        max_num_nodes: Optional[int],
    ) -> Optional[Tensor]:
        # A training call on CUDA as the replay of CUDA graphs of the
        # model's forward and backward passes on the batch padded to its
        # bucket's sizes or a kept graph's (see _graph_padding and
        # TrainingGraphReplay), or None where it runs eagerly: without the
        # hints (B and the largest graph's size, read from a PyG batch by
        # batch_hints), with edge tokens (sets of unknown size), beyond
        # GRAPHED_STEP_MAX_ELEMENTS padded token values, where autograd's
        # state forbids a capture (autograd_allows_capture), in
        # deterministic mode (the indexed sums), in debug mode, while
        # tracing, or with hooks.
        N = x.size(0)
        if (batch is None or num_graphs is None or max_num_nodes is None
                or self.tokens != 'node' or N < 2
                or any(t is not None and (not isinstance(t, Tensor)
                                          or t.size(0) != N)
                       for t in (pe, node_id))  # eager: checked, named
                or bucket(N + 1)[0] * self.hidden_channels
                > GRAPHED_STEP_MAX_ELEMENTS
                or not autograd_allows_capture()
                or torch.are_deterministic_algorithms_enabled()
                or config.is_debug() or is_tracing()
                or torch.cuda.is_current_stream_capturing()):
            return None
        edge_attr, batch, num_graphs, max_num_nodes = self._checked_inputs(
            x, edge_index, edge_attr, batch, pe, node_id, num_graphs,
            max_num_nodes)
        check_size_hint('num_graphs', num_graphs)
        check_size_hint('max_num_nodes', max_num_nodes)
        tree = self._module_tree.read(self)
        if tree.hooked():
            return None
        modules, params = tree.modules, tree.params()
        if not all(p.requires_grad for p in params):
            return None
        # Which inputs are given (the mask of real nodes always), and the
        # rest of the key besides the sizes: a batch is padded to the
        # sizes of a graph kept with the same rest where one holds it
        # (choose_sizes), else to its own bucket's.
        B = num_graphs
        given = tuple(t is not None for t in (x, edge_index, edge_attr,
                                              batch, pe, node_id)) + (True, )
        rest = (given, torch.is_autocast_enabled('cuda'),
                torch.get_autocast_dtype('cuda'),
                torch.get_float32_matmul_precision(), config.snapshot(),
                tree.settings())
        kept = [k[0] for k in self._train_graphs.kept_keys()
                if k[1:] == rest]
        sizes = choose_sizes(kept, N, edge_index.size(1), B, max_num_nodes,
                             self.hidden_channels)
        padded = pad_graphs(x, edge_index, edge_attr, batch, pe, node_id,
                            B, max_num_nodes, sizes)
        inputs = [t for t in padded[:7] if t is not None]
        key = (sizes, ) + rest

        def fn(*tensors: Tensor) -> Tensor:
            it = iter(tensors)
            return self._padded_forward(padded._replace(**{
                name: next(it) for name, g in zip(padded._fields, given)
                if g}))

        def eligible() -> bool:
            # Asked once per signature, before its capture.
            return (all(conv._trains_in_graphs() for conv in self.convs)
                    and all(isinstance(conv.attn.k, int)
                            for conv in self.convs)
                    and all(type(m) is BatchNorm1d or not isinstance(
                        m, _BatchNorm) for m in modules))

        def slots() -> 'List[Tuple[Module, str]]':
            # Where params live, in their order (asked at a capture).
            return [(m, name) for m in modules
                    for name, p in m._parameters.items() if p is not None]

        out = self._train_graphs(fn, inputs, params, key,
                                 lambda: params + tree.buffers(), eligible,
                                 slots)
        return out[:N] if self.level == 'node' else out[:B]

    def _padded_forward(self, padded: PaddedGraphs) -> Tensor:
        # The model's output on a batch padded by pad_graphs: batch norms
        # count the real nodes (padded.real). [N_b, F_out] for
        # level='node', else [G_b, F_out]; the padding's rows are to be
        # dropped.
        with counted_rows(padded.real):
            h = self._embed(padded.x, padded.edge_index, padded.edge_attr,
                            padded.batch, padded.pe, padded.node_id,
                            padded.num_graphs, padded.max_num_nodes)
            return self._read_out(h, padded.batch, padded.num_graphs)

    def _check_one_node(self, num_edges: int) -> None:
        # The batch norms in training need two rows or more (a variance):
        # torch's own error names no argument, and SamsaConv's suggests
        # norm_kwargs, which this model does not take.
        pe_norm = self.pe_encoder is not None and \
            self.pe_encoder.norm is not None
        one_token = self.tokens == 'node' or num_edges == 0
        conv_norm = one_token and any(
            isinstance(norm, BatchNorm) for conv in self.convs
            for norm in (conv.norm1, conv.norm2, conv.norm3))
        if not (pe_norm or conv_norm):
            return
        why, fix = [], []
        if pe_norm:
            why.append(f"pe={self.pe!r} batch-normalises 'pe'")
            fix.append("pe_kwargs={'batch_norm': False}")
        if conv_norm:
            why.append("norm='batch_norm'")
            fix.append("norm='layer_norm'")
        raise ValueError(
            f"Expected 'x' to hold more than one node in training since "
            f"{' and '.join(why)} (got 1): batch the graph with others, "
            f"build the model with {' and '.join(fix)}, or call "
            f"model.eval()")

    @staticmethod
    def _check_num_graphs(num_graphs: Optional[int], batch: Optional[Tensor],
                          N: int) -> None:
        # A hint smaller than the batch makes pooling index out of range.
        check_size_hint('num_graphs', num_graphs)
        if (num_graphs is None or N == 0 or batch is None
                or torch.compiler.is_compiling()
                or not config.checks_values(batch.device)):
            return
        checked_sizes(batch, num_graphs, None)  # read by the layers already

    def embed(self, *args: Any, **kwargs: Any) -> Tensor:
        r"""For :obj:`level="edge"`: the embeddings :math:`\mathbf{z}` whose
        dot products are the pair logits, shape :math:`(N, C)` (input of
        :func:`samsa_geo.metrics.mrr`)."""
        if self.level != 'edge':
            raise ValueError(f"Expected level='edge' for 'embed' "
                             f"(got {self.level!r})")
        return self.head(self.node_embeddings(*args, **kwargs))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.hidden_channels}, {self.out_channels}, '
                f'num_layers={self.num_layers}, level={self.level!r}, '
                f'tokens={self.tokens!r}, pe={self.pe!r}, heads={self.heads}, '
                f'k={self.k})')


def _check_arguments(in_channels: int, hidden_channels: int,
                     out_channels: int, num_layers: int,
                     edge_dim: Optional[int], categorical: bool, level: str,
                     pool: str, tokens: str, pe: Optional[str],
                     pe_channels: int, local_conv: bool) -> None:
    # The constructor's checks of SamsaGraphModel.
    check_bool('categorical', categorical)
    check_bool('local_conv', local_conv)
    for name, value in (('in_channels', in_channels),
                        ('hidden_channels', hidden_channels),
                        ('out_channels', out_channels),
                        ('num_layers', num_layers),
                        ('pe_channels', pe_channels)):
        check_positive_int(name, value)
    if edge_dim is not None:
        check_positive_int('edge_dim', edge_dim)
    for name, value, options in (('level', level, LEVELS),
                                 ('pool', pool, POOLS),
                                 ('tokens', tokens, TOKENS),
                                 ('pe', pe, PES)):
        if value not in options:
            raise ValueError(f"Expected '{name}' to be one of {options} "
                             f"(got {value!r})")
    if level == 'edge' and out_channels != 1:
        raise ValueError(f"Expected 'out_channels' to be 1 for "
                         f"level='edge' (dot-product decoder) "
                         f"(got {out_channels})")
    if categorical and (in_channels != 9 or edge_dim not in (None, 3)):
        raise ValueError(f"Expected OGB features (in_channels=9, "
                         f"edge_dim=3) since 'categorical=True' (got "
                         f"in_channels={in_channels}, edge_dim={edge_dim})")


def _feature_encoders(in_channels: int, edge_dim: Optional[int],
                      channels: int, categorical: bool,
                      ) -> Tuple[Module, Optional[Module]]:
    # Node and edge feature embeddings: OGB's categorical tables or linear.
    if categorical:
        node_encoder: Module = CategoricalEncoder.ogb_atom(channels)
    else:
        node_encoder = Linear(in_channels, channels)
    edge_encoder: Optional[Module] = None
    if edge_dim is not None:
        edge_encoder = (CategoricalEncoder.ogb_bond(channels) if categorical
                        else Linear(edge_dim, channels))
    return node_encoder, edge_encoder
