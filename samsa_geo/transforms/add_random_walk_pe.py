from torch_geometric.data import Data
from torch_geometric.transforms import AddRandomWalkPE as _PyGAddRandomWalkPE
from torch_geometric.transforms import BaseTransform


class AddRandomWalkPE(BaseTransform):
    r"""Adds the random-walk structural encoding from the `"Graph Neural
    Networks with Learnable Structural and Positional Representations"
    <https://arxiv.org/abs/2110.07875>`_ paper, computed by
    :class:`torch_geometric.transforms.AddRandomWalkPE` and stored under the
    samsa_geo attribute name.

    .. math::
        \mathbf{p}_i = \left( (\mathbf{D}^{-1}\mathbf{A})_{ii},
        ((\mathbf{D}^{-1}\mathbf{A})^2)_{ii}, \ldots,
        ((\mathbf{D}^{-1}\mathbf{A})^{L})_{ii} \right)

    is the probability of a random walk from node :math:`i` to be back at
    :math:`i` after :math:`1, \ldots, L` steps. It is deterministic and exactly
    permutation-equivariant, so it needs no sign handling; graphs of any size
    (also single nodes) are supported. Meant as a :obj:`pre_transform`.

    Args:
        walk_length (int): The number of random-walk steps :math:`L`.
        attr_name (str, optional): The attribute to store the encoding in.
            (default: :obj:`"rw_pe"`)

    Shapes:
        - **input:** :obj:`Data` with :obj:`edge_index` :math:`(2, |\mathcal{E}|)`
        - **output:** same object with :obj:`data[attr_name]` :math:`(N, L)`
    """
    def __init__(self, walk_length: int, attr_name: str = 'rw_pe') -> None:
        if not isinstance(walk_length, int) or walk_length < 1:
            raise ValueError(f"Expected 'walk_length' to be a positive integer "
                             f"(got {walk_length!r})")
        if not isinstance(attr_name, str) or not attr_name:
            raise ValueError(f"Expected 'attr_name' to be a non-empty string "
                             f"(got {attr_name!r})")
        self.walk_length = walk_length
        self.attr_name = attr_name
        self._inner = _PyGAddRandomWalkPE(walk_length, attr_name=attr_name)

    def forward(self, data: Data) -> Data:
        if data.edge_index is None:
            raise ValueError("Expected 'data.edge_index' to be set (got None)")
        return self._inner(data)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(walk_length={self.walk_length}, '
                f'attr_name={self.attr_name!r})')
