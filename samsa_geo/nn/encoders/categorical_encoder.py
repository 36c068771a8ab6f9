from typing import List, Sequence

import torch
from torch import Tensor
from torch.nn import Embedding, Module, ModuleList

from samsa_geo.ops.validation import check_positive_int

#: Number of categories of each of the 9 OGB atom features
#: (:func:`ogb.utils.features.get_atom_feature_dims`, ogb 1.3.6).
OGB_ATOM_FEATURE_DIMS: List[int] = [119, 5, 12, 12, 10, 6, 6, 2, 2]
#: Number of categories of each of the 3 OGB bond features
#: (:func:`ogb.utils.features.get_bond_feature_dims`, ogb 1.3.6).
OGB_BOND_FEATURE_DIMS: List[int] = [5, 6, 2]


class CategoricalEncoder(Module):
    r"""Embeds integer-valued (categorical) node or edge features, like OGB's
    :obj:`AtomEncoder` / :obj:`BondEncoder`:

    .. math::
        \mathbf{h}_i = \sum_{c=1}^{C} \mathbf{E}_c[x_{i,c}],

    where :math:`\mathbf{E}_c \in \mathbb{R}^{n_c \times F}` is the embedding
    table of column :math:`c` with :math:`n_c` categories. Use
    :meth:`ogb_atom` / :meth:`ogb_bond` for the OGB molecular features of
    Peptides, PCQM-Contact and :class:`~samsa_geo.datasets.FreeSolv`.

    Args:
        out_channels (int): Embedding width :math:`F`.
        num_categories (Sequence[int]): :math:`n_c` for every column.
        input_name (str, optional): The input's name in error messages.
            (default: :obj:`"x"`; :obj:`"edge_attr"` for :meth:`ogb_bond`)

    Shapes:
        - **input:** :math:`(N, C)` tensor of any integer dtype
          (:obj:`torch.uint8` and :obj:`torch.int16` too, as datasets may
          store categories; or :math:`(N,)` if :math:`C = 1`)
        - **output:** :math:`(N, F)`
    """
    def __init__(self, out_channels: int, num_categories: Sequence[int],
                 input_name: str = 'x') -> None:
        super().__init__()
        check_positive_int('out_channels', out_channels)
        num_categories = list(num_categories)
        for c, n in enumerate(num_categories):
            if isinstance(n, bool):  # int() would read True as 1 category
                raise TypeError(f"Expected 'num_categories[{c}]' to be an "
                                f"int (got bool)")
        num_categories = [int(n) for n in num_categories]
        if len(num_categories) == 0 or min(num_categories) < 1:
            raise ValueError(f"Expected 'num_categories' to be a non-empty "
                             f"list of positive integers (got {num_categories})")
        self.out_channels = out_channels
        self.num_categories = num_categories
        self.input_name = input_name
        self.embeddings = ModuleList(
            [Embedding(n, out_channels) for n in num_categories])
        self.register_buffer('upper', torch.tensor(num_categories),
                             persistent=False)
        self.reset_parameters()

    @classmethod
    def ogb_atom(cls, out_channels: int) -> 'CategoricalEncoder':
        r"""Encoder for the 9 OGB atom features (:obj:`x` of OGB molecules)."""
        return cls(out_channels, OGB_ATOM_FEATURE_DIMS)

    @classmethod
    def ogb_bond(cls, out_channels: int) -> 'CategoricalEncoder':
        r"""Encoder for the 3 OGB bond features (:obj:`edge_attr`)."""
        return cls(out_channels, OGB_BOND_FEATURE_DIMS,
                   input_name='edge_attr')

    def reset_parameters(self) -> None:
        for emb in self.embeddings:
            torch.nn.init.xavier_uniform_(emb.weight)

    def forward(self, x: Tensor) -> Tensor:
        name = self.input_name
        if x.dim() == 1:
            x = x.view(-1, 1)  # [N, 1]
        if x.dim() != 2 or x.size(1) != len(self.embeddings):
            raise ValueError(f"Expected '{name}' to have shape [N, "
                             f"{len(self.embeddings)}] (got {list(x.shape)})")
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"Expected '{name}' to hold integer categories "
                            f"(got dtype {x.dtype})")
        if x.dtype not in (torch.long, torch.int32):
            x = x.long()  # uint8, int16, ...: the tables take int32 / int64
        if x.numel() > 0 and ((x < 0).any() or (x >= self.upper).any()):
            raise IndexError(f"Expected column c of '{name}' in [0, n_c) "
                             f"with n_c = {self.num_categories}")
        out = self.embeddings[0](x[:, 0])
        for c in range(1, x.size(1)):
            out = out + self.embeddings[c](x[:, c])
        return out

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.out_channels}, '
                f'num_categories={self.num_categories})')
