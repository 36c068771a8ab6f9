from typing import Optional

import torch
from torch import Tensor
from torch.nn import BatchNorm1d, GELU, Linear, Module, Sequential

from samsa_geo.ops.masked_batch_norm import counted_batch_norm
from samsa_geo.ops.validation import (
    check_bool,
    check_non_negative_int,
    check_positive_int,
)


def _mlp(in_channels: int, hidden_channels: int, out_channels: int,
         num_layers: int) -> Module:
    if num_layers == 1:
        return Linear(in_channels, out_channels)
    layers = [Linear(in_channels, hidden_channels), GELU()]
    for _ in range(num_layers - 2):
        layers += [Linear(hidden_channels, hidden_channels), GELU()]
    layers.append(Linear(hidden_channels, out_channels))
    return Sequential(*layers)


class PositionalEncoder(Module):
    r"""Maps structural positional encodings (:obj:`data.lap_pe`,
    :obj:`data.rw_pe`) to the token width.

    The plain variant is

    .. math::
        \mathbf{h}_i = \mathrm{MLP}(\mathrm{BN}(\mathbf{p}_i)),

    the sign-invariant variant (a per-node form of SignNet, `"Sign and Basis
    Invariant Networks for Spectral Graph Representation Learning"
    <https://arxiv.org/abs/2202.13013>`_) is

    .. math::
        \mathbf{h}_i = \rho\Big(\mathrm{BN}\big(\big\Vert_{j=1}^{k}
        \left[\phi(p_{ij}) + \phi(-p_{ij})\right]\big)\Big),

    where :math:`\mathbf{p}_i \in \mathbb{R}^k` is the encoding of node
    :math:`i`, :math:`\phi: \mathbb{R} \to \mathbb{R}^{h}` a small MLP shared
    over the :math:`k` columns, :math:`\Vert` concatenation and :math:`\rho` an
    MLP. The sign-invariant output is exactly unchanged (up to float
    round-off, tested to :obj:`1e-6`) when any subset of eigenvectors is
    multiplied by :math:`-1`; batch normalisation is applied after
    :math:`\phi` there, because normalising raw eigenvectors breaks the
    invariance. Both variants are permutation-equivariant over nodes.

    Args:
        in_channels (int): Size :math:`k` of each node's encoding.
        out_channels (int): Token width.
        hidden_channels (int, optional): Hidden width of the MLPs; defaults to
            :obj:`out_channels`. (default: :obj:`None`)
        num_layers (int, optional): Layers of the MLP (1 = Linear).
            (default: :obj:`1`)
        batch_norm (bool, optional): Whether to batch-normalise the input
            (the invariant features in the sign-invariant variant).
            (default: :obj:`True`)
        sign_invariant (bool, optional): Use the sign-invariant variant.
            (default: :obj:`False`)
        phi_channels (int, optional): Output width :math:`h` of :math:`\phi`.
            (default: :obj:`4`)

    Shapes:
        - **input:** pe :math:`(N, k)`
        - **output:** :math:`(N, F_{out})`
    """
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: Optional[int] = None,
        num_layers: int = 1,
        batch_norm: bool = True,
        sign_invariant: bool = False,
        phi_channels: int = 4,
    ) -> None:
        super().__init__()
        for name, value in (('in_channels', in_channels),
                            ('out_channels', out_channels),
                            ('num_layers', num_layers),
                            ('phi_channels', phi_channels)):
            check_positive_int(name, value)
        if hidden_channels is not None:  # 0, as None, gives out_channels
            check_non_negative_int('hidden_channels', hidden_channels,
                                   integral=True)
        check_bool('batch_norm', batch_norm)
        check_bool('sign_invariant', sign_invariant)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.hidden_channels = hidden_channels or out_channels
        self.num_layers = num_layers
        self.batch_norm = batch_norm
        self.sign_invariant = sign_invariant
        self.phi_channels = phi_channels

        if sign_invariant:
            self.phi_nn: Optional[Module] = Sequential(
                Linear(1, self.hidden_channels), GELU(),
                Linear(self.hidden_channels, phi_channels))
            rho_in = in_channels * phi_channels
        else:
            self.phi_nn = None
            rho_in = in_channels
        self.norm = BatchNorm1d(rho_in) if batch_norm else None
        self.rho_nn = _mlp(rho_in, self.hidden_channels, out_channels,
                           num_layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, 'reset_parameters'):
                module.reset_parameters()

    def forward(self, pe: Tensor) -> Tensor:
        if pe.dim() != 2 or pe.size(-1) != self.in_channels:
            raise ValueError(f"Expected 'pe' to have shape [N, "
                             f"{self.in_channels}] (got {list(pe.shape)})")
        pe = pe.to(self.rho_nn_dtype)
        if self.phi_nn is not None:
            v = pe.unsqueeze(-1)  # [N, k, 1]
            h = self.phi_nn(v) + self.phi_nn(-v)  # [N, k, h]
            pe = h.reshape(h.size(0), -1)  # [N, k * h]
        if self.norm is not None:
            out = counted_batch_norm(self.norm, pe)  # padded rows
            pe = self.norm(pe) if out is None else out
        return self.rho_nn(pe)

    @property
    def rho_nn_dtype(self) -> torch.dtype:
        return next(self.rho_nn.parameters()).dtype

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, num_layers={self.num_layers}, '
                f'sign_invariant={self.sign_invariant})')
