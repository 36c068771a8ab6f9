r"""Private backbone shared by :class:`SamsaPointClassifier` and
:class:`SamsaPointSegmenter`: point tokens and a stack of
:class:`~samsa_geo.nn.SamsaConv`."""
from typing import Any, Dict, NamedTuple, Optional, Type, TypeVar, Union

import torch
from torch import Tensor
from torch.nn import (
    GELU,
    Dropout,
    LayerNorm,
    Linear,
    Module,
    ModuleList,
    Sequential,
)
from torch_geometric.nn import EdgeConv, global_max_pool, global_mean_pool

from samsa_geo.nn.conv import SamsaConv
from samsa_geo.nn.encoders import PPFPointEncoder, SFTPointEncoder
from samsa_geo.nn.attention import config
from samsa_geo.nn.attention._sets import batch_sizes
from samsa_geo.nn.encoders._point_geometry import centroid, check_points
from samsa_geo.nn.models._reloadable import Reloadable
from samsa_geo.ops import knn_graph

ENCODERS = ('linear', 'sft', 'ppf')

Model = TypeVar('Model', bound='SamsaPointModel')


class PointFeatures(NamedTuple):
    x: Tensor  # [N, C] per-point features after the stack
    batch: Tensor  # [N]
    num_clouds: int
    max_num_points: Optional[int]


class SamsaPointModel(Reloadable, Module):
    r"""Backbone: tokens (:obj:`"linear"` of xyz and ``x``, or a
    rotation-invariant encoder), then ``num_layers`` :class:`SamsaConv` with
    the relative bias of the centred positions (and normals), optionally
    with an :class:`~torch_geometric.nn.conv.EdgeConv` on the
    :math:`k`-NN graph as local branch."""
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
        if not isinstance(in_channels, int) or in_channels < 0:
            raise ValueError(f"Expected 'in_channels' to be a non-negative "
                             f"int (got {in_channels!r})")
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
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Expected '{name}' to be a positive int "
                                 f"(got {value!r})")
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

        attn_kwargs = dict(attn_kwargs or {})
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

    @classmethod
    def small(cls: Type[Model], num_classes: int, **kwargs: Any) -> Model:
        r"""A CPU-friendly preset (:attr:`SMALL`): 64 channels, 2 layers, 4
        heads, :math:`k = 64`, 16 neighbours; ``kwargs`` override any
        argument of the model's constructor."""
        return cls(num_classes, **{**cls.SMALL, **kwargs})

    def _head(self, num_classes: int, in_channels: int,
              head_dropout: float) -> Sequential:
        # The MLP head of the subclasses, from ``in_channels`` pooled and/or
        # per-point features to ``num_classes`` logits.
        if not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"Expected 'num_classes' to be a positive int "
                             f"(got {num_classes!r})")
        return Sequential(
            LayerNorm(in_channels),
            Linear(in_channels, self.channels),
            GELU(),
            Dropout(head_dropout),
            Linear(self.channels, num_classes),
        )

    def reset_parameters(self) -> None:
        for module in (self.lin_in, self.encoder):
            if module is not None:
                module.reset_parameters()
        for conv in self.convs:
            conv.reset_parameters()

    def _check_x(self, x: Optional[Tensor], N: int) -> Optional[Tensor]:
        if self.in_channels == 0:
            if x is not None:
                raise ValueError("Expected 'x' to be None since "
                                 "'in_channels=0'")
            return None
        if x is None:
            raise ValueError(f"Expected 'x' of shape [N, {self.in_channels}] "
                             f"since 'in_channels={self.in_channels}'")
        if not isinstance(x, Tensor):
            raise TypeError(f"Expected 'x' to be a Tensor "
                            f"(got {type(x).__name__})")
        if x.shape != (N, self.in_channels):
            raise ValueError(f"Expected 'x' to have shape [{N}, "
                             f"{self.in_channels}] (got {list(x.shape)})")
        if (config.checks_values(x.device) and x.numel() > 0
                and not bool(torch.isfinite(x).all())):
            raise ValueError("Expected 'x' to hold finite values only "
                             "(found NaN or inf)")
        return x

    def backbone(
        self,
        pos: Tensor,
        batch: Optional[Tensor] = None,
        x: Optional[Tensor] = None,
        token_bias: Optional[Tensor] = None,
        num_graphs: Optional[int] = None,
        max_num_nodes: Optional[int] = None,
    ) -> PointFeatures:
        max_num_nodes = point_counts(pos, batch, num_graphs, max_num_nodes)
        batch, B = check_points(pos, batch, None, num_graphs)
        return self._backbone(pos, batch, B, x, token_bias, max_num_nodes)

    def _backbone(
        self,
        pos: Tensor,
        batch: Tensor,
        num_clouds: int,
        x: Optional[Tensor] = None,
        token_bias: Optional[Tensor] = None,
        max_num_nodes: Optional[int] = None,
    ) -> PointFeatures:
        # :meth:`backbone` after ``check_points`` of ``pos`` and ``batch``.
        B = num_clouds
        N = pos.size(0)
        x = self._check_x(x, N)
        normal = x if self.rotation_invariant else None
        # Centred positions: the registers of SamsaAttention sit at the
        # origin, so this keeps the relative bias translation-invariant.
        pos_c = pos - centroid(pos, batch, B)[batch]  # [N, 3]

        edge_index = None
        if self.encoder_type == 'ppf' or self.local_conv:
            edge_index = knn_graph(pos_c.detach(), self.num_neighbors, batch,
                                   loop=True, batch_size=B)
        # Tokens in the parameters' dtype (e.g. after ``.bfloat16()``);
        # the geometry of the relative bias stays in float32.
        dtype = self.convs[0].attn.lin_q.weight.dtype
        h = pos.new_zeros(N, self.channels, dtype=dtype)
        if self.lin_in is not None:
            feats = pos if x is None else torch.cat([pos, x], dim=-1)
            h = h + self.lin_in(feats.to(dtype))
        if self.encoder is not None:  # inputs already checked above
            h = h + self.encoder._encode(pos_c, batch, B, normal, edge_index)
            if (config.checks_values(h.device) and N > 0
                    and not bool(torch.isfinite(h).all())):
                raise ValueError(
                    f"Expected the point encoder ({self.encoder_type}) to "
                    f"give finite tokens from finite 'pos' (got NaN or inf "
                    f"in {h.dtype}); its weights hold non-finite values or "
                    f"overflow this dtype")
        if token_bias is not None:
            h = h + token_bias

        if N == 0:  # no point: no attention; B empty clouds pool to zeros
            return PointFeatures(h, batch, B, 0)
        for conv in self.convs:
            h = conv(h, edge_index, batch, pos=pos_c, normal=normal,
                     num_graphs=B, max_num_nodes=max_num_nodes)
        return PointFeatures(h, batch, B, max_num_nodes)

    @staticmethod
    def max_mean_pool(feats: PointFeatures) -> Tensor:
        r"""Per-cloud :math:`\max_i \mathbf{h}_i \Vert \frac{1}{n}
        \sum_i \mathbf{h}_i`, :math:`(B, 2C)`; clouds of equal size are
        reduced as one reshape (no scatter)."""
        h, batch, B, n = feats
        N, C = h.shape
        if n is not None and B * n == N and N > 0:
            dense = h.view(B, n, C)  # [N, C] -> [B, n, C]
            return torch.cat([dense.amax(1), dense.mean(1)], dim=-1)
        return torch.cat([global_max_pool(h, batch, B),
                          global_mean_pool(h, batch, B)], dim=-1)

    def _repr_args(self) -> str:
        return (f'in_channels={self.in_channels}, '
                f'rotation_invariant={self.rotation_invariant}, '
                f'encoder={self.encoder_type!r}, channels={self.channels}, '
                f'num_layers={self.num_layers}, heads={self.heads}, '
                f'k={self.k}, local_conv={self.local_conv}')

    #: Hyper-parameters of the :meth:`small` preset.
    SMALL: Dict[str, Any] = dict(channels=64, num_layers=2, heads=4, k=64,
                                 num_neighbors=16)



def point_counts(pos: Tensor, batch: Optional[Tensor],
                 num_graphs: Optional[int],
                 max_num_nodes: Optional[int]) -> Optional[int]:
    r"""The largest cloud's size for the layers' shapes: the caller's
    ``max_num_nodes``; read from ``batch`` (once per batch tensor, cached)
    when the caller gave no ``num_graphs`` either; else :obj:`None`, and
    the layers use bounds without reading anything back."""
    if max_num_nodes is not None or num_graphs is not None:
        return max_num_nodes
    if batch is None or pos.size(0) == 0:
        return pos.size(0)
    return batch_sizes(batch)[1]
