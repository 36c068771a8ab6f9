from typing import Any, Dict, NamedTuple, Optional, Union

import torch
from torch import Tensor
from torch.nn import GELU, Linear, Module, ModuleList, Sequential
from torch_geometric.nn import EdgeConv, global_max_pool, global_mean_pool

from samsa_geo.nn.attention import config
from samsa_geo.nn.attention._sets import bounded_size_hint, check_size_hint
from samsa_geo.nn.conv import SamsaConv
from samsa_geo.nn.encoders import PPFPointEncoder, SFTPointEncoder
from samsa_geo.nn.encoders._point_geometry import (
    centroid,
    check_points,
    geometry_dtype,
    knn_table_edges,
    traced_knn_table,
    traces_knn,
)
from samsa_geo.ops import knn_graph, value_checks
from samsa_geo.ops.validation import (
    check_bool,
    check_float_tensor,
    check_kwargs,
    check_non_negative_int,
    check_positive_int,
    check_tensor,
)

ENCODERS = ('linear', 'sft', 'ppf')


class PointBatch(NamedTuple):
    r"""Checked batch layout of a set of point clouds."""
    batch: Tensor  # [N] sorted cloud index
    num_clouds: int
    max_num_points: Optional[int]  # None: the layers use bounds


class PointFeatures(NamedTuple):
    r"""Output of :class:`SamsaPointBackbone`."""
    x: Tensor  # [N, C] per-point features after the stack
    batch: Tensor  # [N]
    num_clouds: int
    max_num_points: Optional[int]


class SamsaPointBackbone(Module):
    r"""The point backbone of
    :class:`~samsa_geo.nn.models.SamsaPointClassifier` and
    :class:`~samsa_geo.nn.models.SamsaPointSegmenter` (`"SAMSA: Efficient
    Transformer for Many Data Modalities"
    <https://arxiv.org/abs/2408.05391>`_):

    .. math::
        \mathbf{H}^{(0)} = \mathrm{Enc}(\mathbf{P}, \mathbf{X}) +
        \mathbf{B}, \qquad
        \mathbf{H}^{(l)} = \mathrm{SamsaConv}(\mathbf{H}^{(l-1)},
        \mathbf{P} - \mathbf{c}),

    where :math:`\mathbf{P}` are the positions, :math:`\mathbf{c}` their
    centroid per cloud, :math:`\mathbf{X}` optional point features,
    :math:`\mathbf{B}` an optional token bias of the caller (e.g. a
    category embedding) and :math:`\mathrm{Enc}` a linear map of
    :math:`[\mathbf{P} \Vert \mathbf{X}]` or, with
    ``rotation_invariant=True``, a rotation-invariant encoder
    (:class:`~samsa_geo.nn.encoders.PPFPointEncoder` or
    :class:`~samsa_geo.nn.encoders.SFTPointEncoder`). Attention uses the
    relative bias of squared distances (and normal dot products in
    rotation-invariant mode) of the sampled pairs.

    Args:
        in_channels (int, optional): Width of the point features ``x``
            (e.g. :obj:`3` for normals). (default: :obj:`0`)
        rotation_invariant (bool, optional): Use only rotation-invariant
            geometry; ``x`` must then be the normals (``in_channels=3``) or
            absent, and is used only through invariant features.
            (default: :obj:`False`)
        encoder (str, optional): :obj:`"linear"` (xyz and ``x``),
            :obj:`"ppf"` or :obj:`"sft"`; :obj:`None` picks :obj:`"ppf"` if
            ``rotation_invariant`` else :obj:`"linear"`. Without rotation
            invariance a PPF/SFT encoder is added to the linear tokens.
            (default: :obj:`None`)
        channels (int, optional): Token width. (default: :obj:`256`)
        num_layers (int, optional): Number of :class:`SamsaConv` layers.
            (default: :obj:`6`)
        heads (int, optional): Attention heads. (default: :obj:`8`)
        k (int or float, optional): Keys sampled per cloud and head.
            (default: :obj:`512`)
        num_neighbors (int, optional): :math:`k`-NN size of the PPF encoder
            and the local convolution. (default: :obj:`16`)
        local_conv (bool, optional): Add an
            :class:`~torch_geometric.nn.conv.EdgeConv` on the :math:`k`-NN
            graph as local branch of every layer. (default: :obj:`False`)
        dropout (float, optional): Dropout inside the layers.
            (default: :obj:`0.0`)
        random_channels (int, optional): Random features of the SFT encoder.
            (default: :obj:`0`)
        norm (str, optional): Normalisation of the layers;
            :obj:`"layer_norm"` is per point. (default: :obj:`"layer_norm"`)
        norm_kwargs (Dict[str, Any], optional): Arguments of ``norm``.
            (default: :obj:`None`)
        attn_kwargs (Dict[str, Any], optional): Further arguments of
            :class:`~samsa_geo.nn.SamsaAttention` (``relative_bias`` defaults
            to :obj:`True`). (default: :obj:`None`)
        norm_first (bool, optional): Pre-norm :class:`SamsaConv` layers.
            (default: :obj:`False`)

    Shapes:
        - **input:** ``pos`` :math:`(N, 3)`, ``batch`` :math:`(N)` sorted,
          ``x`` :math:`(N, F_{in})`, ``token_bias`` :math:`(N, C)`
        - **output:** :class:`PointFeatures` with ``x`` :math:`(N, C)`
    """
    def __init__(
        self,
        in_channels: int = 0,
        rotation_invariant: bool = False,
        encoder: Optional[str] = None,
        channels: int = 256,
        num_layers: int = 6,
        heads: int = 8,
        k: Union[int, float] = 512,
        num_neighbors: int = 16,
        local_conv: bool = False,
        dropout: float = 0.0,
        random_channels: int = 0,
        norm: Optional[str] = 'layer_norm',
        norm_kwargs: Optional[Dict[str, Any]] = None,
        attn_kwargs: Optional[Dict[str, Any]] = None,
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        check_bool('local_conv', local_conv)
        check_bool('norm_first', norm_first)
        encoder = _check_arguments(in_channels, rotation_invariant, encoder,
                                   channels, num_layers, num_neighbors,
                                   random_channels)
        self.in_channels = in_channels
        self.rotation_invariant = rotation_invariant
        self.encoder_type = encoder
        self.channels = channels
        self.num_layers = num_layers
        self.heads = heads
        self.k = k
        self.num_neighbors = num_neighbors
        self.local_conv = local_conv
        self.norm_first = norm_first

        self.lin_in = None
        if not rotation_invariant:
            self.lin_in = Linear(3 + in_channels, channels)
        self.encoder: Optional[Union[SFTPointEncoder, PPFPointEncoder]] = None
        if encoder == 'sft':
            self.encoder = SFTPointEncoder(channels, random_channels)
        elif encoder == 'ppf':
            self.encoder = PPFPointEncoder(channels, num_neighbors)

        attn_kwargs = check_kwargs('attn_kwargs', attn_kwargs)
        if rotation_invariant and attn_kwargs.get('relative_bias') is False:
            raise ValueError("Expected 'attn_kwargs' not to disable "
                             "'relative_bias' since 'rotation_invariant=True'")
        attn_kwargs.setdefault('relative_bias', True)
        if norm == 'layer_norm' and norm_kwargs is None:
            norm_kwargs = {'mode': 'node'}  # per token: no cross-cloud mixing
        self.convs = ModuleList()
        for _ in range(num_layers):
            conv = None
            if local_conv:
                conv = EdgeConv(Sequential(Linear(2 * channels, channels),
                                           GELU(),
                                           Linear(channels, channels)),
                                aggr='max')
            layer = SamsaConv(channels, conv, heads=heads, k=k,
                              dropout=dropout, act='gelu', norm=norm,
                              norm_kwargs=norm_kwargs,
                              attn_kwargs=attn_kwargs, norm_first=norm_first)
            self.convs.append(layer)

    def reset_parameters(self) -> None:
        for module in (self.lin_in, self.encoder):
            if module is not None:
                module.reset_parameters()
        for conv in self.convs:
            conv.reset_parameters()

    @property
    def dtype(self) -> torch.dtype:
        r"""The parameters' dtype (e.g. :obj:`torch.bfloat16` after
        ``.bfloat16()``), which the tokens take; the geometry of the
        relative bias stays in float32."""
        return next(self.convs.parameters()).dtype

    def check_points(
        self,
        pos: Tensor,
        batch: Optional[Tensor] = None,
        num_graphs: Optional[int] = None,
        max_num_nodes: Optional[int] = None,
    ) -> PointBatch:
        r"""Checks ``pos`` and ``batch`` once and returns the batch layout
        that :meth:`features` takes. ``num_graphs`` and ``max_num_nodes``
        (e.g. :func:`~samsa_geo.nn.batch_hints` of a PyG ``Batch``) spare
        the device read-backs that would compute them from ``batch``; with
        ``num_graphs`` the forward pass never waits for the GPU."""
        batch, B, n_max = check_points(pos, batch, None, num_graphs)
        if max_num_nodes is None:
            return PointBatch(batch, B, n_max)
        check_size_hint('max_num_nodes', max_num_nodes)
        return PointBatch(batch, B,
                          bounded_size_hint(max_num_nodes, pos.size(0)))

    def forward(
        self,
        pos: Tensor,
        batch: Optional[Tensor] = None,
        x: Optional[Tensor] = None,
        token_bias: Optional[Tensor] = None,
        num_graphs: Optional[int] = None,
        max_num_nodes: Optional[int] = None,
    ) -> PointFeatures:
        r"""Per-point features of the clouds; ``num_graphs`` and
        ``max_num_nodes`` as in :meth:`check_points`."""
        layout = self.check_points(pos, batch, num_graphs, max_num_nodes)
        return self.features(pos, layout, x, token_bias)

    def features(
        self,
        pos: Tensor,
        layout: PointBatch,
        x: Optional[Tensor] = None,
        token_bias: Optional[Tensor] = None,
    ) -> PointFeatures:
        r""":meth:`forward` on the ``layout`` of :meth:`check_points`."""
        batch, B, max_num_nodes = layout
        N = pos.size(0)
        x = self._check_x(x, N)
        normal = x if self.rotation_invariant else None
        # Centred positions: the registers of SamsaAttention sit at the
        # origin, so this keeps the relative bias translation-invariant.
        pos_c = pos - centroid(pos, batch, B)[batch]  # [N, 3]

        token_bias = self._check_token_bias(token_bias, N)

        # Without points (and then possibly no cloud, B = 0) there is no
        # graph to build; the encoder and the layers are skipped too.
        edge_index = None
        if self.local_conv and N > 0:  # else the PPF encoder ranks its own
            points = pos_c.detach().to(geometry_dtype(pos))
            if traces_knn(pos):  # no size read back
                _check_onnx_scatter_max("'local_conv=True'")
                edge_index = knn_table_edges(traced_knn_table(
                    points, batch, self.num_neighbors, B, max_num_nodes))
            else:
                with value_checks(config.checks_values(pos.device)):
                    edge_index = knn_graph(points, self.num_neighbors, batch,
                                           loop=True, batch_size=B)
        h = self._tokens(pos, pos_c, layout, x, normal, edge_index)
        if token_bias is not None:
            h = h + token_bias

        if N == 0:  # no point: no attention; B empty clouds pool to zeros
            return PointFeatures(h, batch, B, 0)
        for conv in self.convs:
            h = conv(h, edge_index, batch, pos=pos_c, normal=normal,
                     num_graphs=B, max_num_nodes=max_num_nodes)
        return PointFeatures(h, batch, B, max_num_nodes)

    def _tokens(self, pos: Tensor, pos_c: Tensor, layout: PointBatch,
                x: Optional[Tensor], normal: Optional[Tensor],
                edge_index: Optional[Tensor]) -> Tensor:
        # The input tokens [N, C] in the parameters' dtype.
        dtype = self.dtype
        N = pos.size(0)
        h = pos.new_zeros(N, self.channels, dtype=dtype)
        if self.lin_in is not None:
            feats = pos if x is None else torch.cat([pos, x], dim=-1)
            h = h + self.lin_in(feats.to(dtype))
        if self.encoder is not None and N > 0:  # inputs already checked
            h = h + self.encoder.encode(pos_c, layout.batch,
                                        layout.num_clouds, normal, edge_index,
                                        layout.max_num_points)
            if (config.checks_values(h.device)
                    and not bool(torch.isfinite(h).all())):
                raise ValueError(
                    f"Expected the point encoder ({self.encoder_type}) to "
                    f"give finite tokens from finite 'pos' (got NaN or inf "
                    f"in {h.dtype}); its weights hold non-finite values or "
                    f"overflow this dtype")
        return h

    def _check_token_bias(self, token_bias: Optional[Tensor],
                          N: int) -> Optional[Tensor]:
        if token_bias is None:
            return None
        check_float_tensor('token_bias', token_bias)
        if token_bias.shape != (N, self.channels):
            raise ValueError(f"Expected 'token_bias' to have shape [{N}, "
                             f"{self.channels}] (got "
                             f"{list(token_bias.shape)})")
        return token_bias

    def _check_x(self, x: Optional[Tensor], N: int) -> Optional[Tensor]:
        if self.in_channels == 0:
            if x is not None:
                raise ValueError("Expected 'x' to be None since "
                                 "'in_channels=0'")
            return None
        if x is None:
            raise ValueError(f"Expected 'x' of shape [N, {self.in_channels}] "
                             f"since 'in_channels={self.in_channels}'")
        if check_tensor('x', x).shape != (N, self.in_channels):
            raise ValueError(f"Expected 'x' to have shape [{N}, "
                             f"{self.in_channels}] (got {list(x.shape)})")
        if (config.checks_values(x.device) and x.numel() > 0
                and not bool(torch.isfinite(x).all())):
            raise ValueError("Expected 'x' to hold finite values only "
                             "(found NaN or inf)")
        return x

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({self.repr_args()})'

    def repr_args(self) -> str:
        r"""The key hyper-parameters, as the models' ``__repr__`` shows
        them."""
        return (f'in_channels={self.in_channels}, '
                f'rotation_invariant={self.rotation_invariant}, '
                f'encoder={self.encoder_type!r}, channels={self.channels}, '
                f'num_layers={self.num_layers}, heads={self.heads}, '
                f'k={self.k}, local_conv={self.local_conv}')


def _check_arguments(in_channels: int, rotation_invariant: bool,
                     encoder: Optional[str], channels: int, num_layers: int,
                     num_neighbors: int, random_channels: int) -> str:
    # Validates the constructor's arguments; returns the encoder's name.
    check_bool('rotation_invariant', rotation_invariant)
    check_non_negative_int('in_channels', in_channels)
    if encoder is None:
        encoder = 'ppf' if rotation_invariant else 'linear'
    if encoder not in ENCODERS:
        raise ValueError(f"Expected 'encoder' to be one of {ENCODERS} "
                         f"(got {encoder!r})")
    if rotation_invariant and encoder == 'linear':
        raise ValueError("Expected 'encoder' to be 'sft' or 'ppf' since "
                         "'rotation_invariant=True' (got 'linear')")
    if rotation_invariant and in_channels not in (0, 3):
        raise ValueError(f"Expected 'in_channels' to be 0 or 3 (normals) "
                         f"since 'rotation_invariant=True' "
                         f"(got {in_channels})")
    for name, value in (('channels', channels), ('num_layers', num_layers),
                        ('num_neighbors', num_neighbors)):
        check_positive_int(name, value)
    # Checked whatever the encoder: only the SFT encoder reads it.
    check_non_negative_int('random_channels', random_channels)
    return encoder


def max_mean_pool(feats: PointFeatures) -> Tensor:
    r"""Per-cloud :math:`\max_i \mathbf{h}_i \Vert \frac{1}{n}
    \sum_i \mathbf{h}_i`, :math:`(B, 2C)`; clouds of equal size are
    reduced as one reshape (no scatter)."""
    h, batch, B, n = feats
    N, C = h.shape
    if n is not None and B * n == N and N > 0:
        dense = h.view(B, n, C)  # [N, C] -> [B, n, C]
        return torch.cat([dense.amax(1), dense.mean(1)], dim=-1)
    _check_onnx_scatter_max('clouds of unequal sizes')
    return torch.cat([global_max_pool(h, batch, B),
                      global_mean_pool(h, batch, B)], dim=-1)


def _check_onnx_scatter_max(what: str) -> None:
    # PyG's scatter(reduce='max') fails inside the TorchScript-based ONNX
    # exporter (it passes a tensor as torch.full's fill value).
    if torch.onnx.is_in_onnx_export() and torch.jit.is_tracing():
        raise ValueError(f"Expected torch.onnx.export(..., dynamo=True) for "
                         f"{what} (got dynamo=False): PyG's max "
                         f"aggregation does not export through the "
                         f"TorchScript tracer")
