import inspect
from typing import Any, Dict, Optional, Union

import torch.nn.functional as F
from torch import Tensor
from torch.nn import Dropout, Linear, Module, Sequential
from torch_geometric.nn.inits import reset
from torch_geometric.nn.resolver import (
    activation_resolver,
    normalization_resolver,
)

from samsa_geo.nn.attention.samsa_attention import SamsaAttention


class SamsaConv(Module):
    r"""A GPS-style layer with SAMSA global attention: a drop-in for
    :class:`torch_geometric.nn.conv.GPSConv` whose attention costs
    :math:`O(N k)` instead of :math:`O(N^2)`
    (`"SAMSA: Efficient Transformer for Many Data Modalities"
    <https://arxiv.org/abs/2408.05391>`_).

    .. math::
        \mathbf{X}^{M} &= \mathrm{Norm}_1\big(\mathrm{MPNN}(\mathbf{X},
        \mathbf{E}) + \mathbf{X}\big), \qquad
        \mathbf{X}^{T} = \mathrm{Norm}_2\big(\mathrm{SAMSA}(\mathbf{X}) +
        \mathbf{X}\big),

        \mathbf{X}' &= \mathrm{Norm}_3\big(\mathbf{Y} +
        \mathrm{MLP}(\mathbf{Y})\big), \qquad
        \mathbf{Y} = \mathbf{X}^{M} + \mathbf{X}^{T},

    where :math:`\mathrm{MPNN}` is the optional local message passing layer
    ``conv`` (:math:`\mathbf{X}^{M} = 0` without it) and :math:`\mathrm{SAMSA}`
    is :class:`~samsa_geo.nn.SamsaAttention`. This is GPSConv's order
    (post-norm). With ``norm_first=True`` the layer is pre-norm, as the
    released SAMSA layer: the residual stream itself is never normalised,

    .. math::
        \mathbf{Y} = \mathbf{X} + \mathrm{MPNN}\big(\mathrm{Norm}_1(
        \mathbf{X}), \mathbf{E}\big) + \mathrm{SAMSA}\big(
        \mathrm{Norm}_2(\mathbf{X})\big), \qquad
        \mathbf{X}' = \mathbf{Y} + \mathrm{MLP}\big(\mathrm{Norm}_3(
        \mathbf{Y})\big),

    so a stack of them needs a normalisation before its head. The 6-layer
    point classifier of 256 channels diverged at learning rate 2e-3 in
    post-norm order and trained in pre-norm order.

    Args:
        channels (int): Size of each input and output sample.
        conv (MessagePassing, optional): Local message passing layer, called
            as ``conv(x, edge_index, **kwargs)``. (default: :obj:`None`)
        heads (int, optional): Attention heads. (default: :obj:`1`)
        k (int or float, optional): Keys kept per set and head.
            (default: :obj:`64`)
        dropout (float, optional): Dropout after the residual branches.
            (default: :obj:`0.0`)
        act (str or Callable, optional): MLP activation.
            (default: :obj:`"relu"`)
        act_kwargs (Dict[str, Any], optional): Arguments of ``act``.
        norm (str or Callable, optional): Normalisation, resolved as in PyG
            (:obj:`"batch_norm"`, :obj:`"layer_norm"`, :obj:`"graph_norm"`,
            ...); :obj:`None` for none. (default: :obj:`"batch_norm"`)
        norm_kwargs (Dict[str, Any], optional): Arguments of ``norm``.
        attn_kwargs (Dict[str, Any], optional): Further arguments of
            :class:`~samsa_geo.nn.SamsaAttention` (``sampling``,
            ``num_registers``, ``score``, ...). (default: :obj:`None`)
        norm_first (bool, optional): Pre-norm instead of GPSConv's
            post-norm order. (default: :obj:`False`)

    Shapes:
        - **input:** ``x`` :math:`(N, C)`, ``edge_index`` :math:`(2, E)`,
          ``batch`` :math:`(N)`, ``pos`` :math:`(N, P)`
        - **output:** :math:`(N, C)`
    """
    def __init__(
        self,
        channels: int,
        conv: Optional[Module] = None,
        heads: int = 1,
        k: Union[int, float] = 64,
        dropout: float = 0.0,
        act: str = 'relu',
        act_kwargs: Optional[Dict[str, Any]] = None,
        norm: Optional[str] = 'batch_norm',
        norm_kwargs: Optional[Dict[str, Any]] = None,
        attn_kwargs: Optional[Dict[str, Any]] = None,
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.norm_first = norm_first
        self.conv = conv
        self.heads = heads
        self.dropout = dropout
        attn_kwargs = attn_kwargs or {}
        self.attn = SamsaAttention(channels, heads=heads, k=k, **attn_kwargs)
        self.mlp = Sequential(
            Linear(channels, channels * 2),
            activation_resolver(act, **(act_kwargs or {})),
            Dropout(dropout),
            Linear(channels * 2, channels),
            Dropout(dropout),
        )
        norm_kwargs = norm_kwargs or {}
        self.norm1 = None  # only the local branch uses it
        if conv is not None:
            self.norm1 = normalization_resolver(norm, channels, **norm_kwargs)
        self.norm2 = normalization_resolver(norm, channels, **norm_kwargs)
        self.norm3 = normalization_resolver(norm, channels, **norm_kwargs)
        self.norm_with_batch = False
        if self.norm2 is not None:
            signature = inspect.signature(self.norm2.forward)
            self.norm_with_batch = 'batch' in signature.parameters

    def reset_parameters(self) -> None:
        if self.conv is not None:
            self.conv.reset_parameters()
        self.attn.reset_parameters()
        reset(self.mlp)
        for norm in (self.norm1, self.norm2, self.norm3):
            if norm is not None:
                norm.reset_parameters()

    def _norm(self, norm: Optional[Module], h: Tensor,
              batch: Optional[Tensor]) -> Tensor:
        if norm is None:
            return h
        if self.norm_with_batch:
            return norm(h, batch=batch)
        return norm(h)

    def forward(
        self,
        x: Tensor,
        edge_index: Optional[Tensor] = None,
        batch: Optional[Tensor] = None,
        pos: Optional[Tensor] = None,
        **kwargs: Any,
    ) -> Tensor:
        r"""Runs the layer; extra keyword arguments (``edge_attr``, ...) go
        to ``conv``. ``normal``, ``num_graphs`` and ``max_num_nodes`` are
        passed to the attention."""
        attn_kwargs = {key: kwargs.pop(key) for key in
                       ('normal', 'num_graphs', 'max_num_nodes')
                       if key in kwargs}
        if self.conv is not None and edge_index is None:
            raise ValueError("Expected 'edge_index' of shape [2, E] "
                             "since a local 'conv' is set")
        if self.norm_first:
            out = x
            if self.conv is not None:
                h = self.conv(self._norm(self.norm1, x, batch), edge_index,
                              **kwargs)
                out = out + F.dropout(h, p=self.dropout,
                                      training=self.training)
            h = self.attn(self._norm(self.norm2, x, batch), batch, pos=pos,
                          **attn_kwargs)
            out = out + F.dropout(h, p=self.dropout, training=self.training)
            return out + self.mlp(self._norm(self.norm3, out, batch))

        hs = []
        if self.conv is not None:
            h = self.conv(x, edge_index, **kwargs)
            h = F.dropout(h, p=self.dropout, training=self.training)
            hs.append(self._norm(self.norm1, h + x, batch))

        h = self.attn(x, batch, pos=pos, **attn_kwargs)
        h = F.dropout(h, p=self.dropout, training=self.training)
        hs.append(self._norm(self.norm2, h + x, batch))

        out = hs[0] if len(hs) == 1 else hs[0] + hs[1]
        out = out + self.mlp(out)
        return self._norm(self.norm3, out, batch)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.channels}, conv={self.conv}, '
                f'heads={self.heads}, k={self.attn.k}, '
                f'sampling={self.attn.sampling!r}'
                f'{", norm_first=True" if self.norm_first else ""})')
