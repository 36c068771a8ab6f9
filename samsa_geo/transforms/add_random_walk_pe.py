import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from samsa_geo.transforms._utils import check_weighted_graph


class AddRandomWalkPE(BaseTransform):
    r"""Adds the random-walk structural encoding from the `"Graph Neural
    Networks with Learnable Structural and Positional Representations"
    <https://arxiv.org/abs/2110.07875>`_ paper under the samsa_geo attribute
    name.

    .. math::
        \mathbf{P} = \mathbf{D}^{-1}\mathbf{A}, \qquad
        \mathbf{p}_i = \left( P_{ii}, (\mathbf{P}^2)_{ii}, \ldots,
        (\mathbf{P}^{L})_{ii} \right),

    where :math:`A_{ij}` sums the weights of all edges :math:`i \to j`
    (:obj:`data.edge_weight` if set, else :math:`1`; repeated edges add up,
    self-loops are kept) and :math:`\mathbf{D} = \mathrm{diag}(\mathbf{A}
    \mathbf{1})` holds the weighted out-degrees. :math:`(\mathbf{P}^l)_{ii}`
    is the probability of a random walk from node :math:`i` to be back at
    :math:`i` after :math:`l` steps. Rows of :math:`\mathbf{P}` of nodes
    without outgoing weight (e.g. isolated nodes) are zero, so walks stop
    there and such a node's encoding is zero. On graphs without weights and
    repeated edges the values equal those of
    :class:`torch_geometric.transforms.AddRandomWalkPE` (which, on repeated
    or weighted edges, sets entries to :math:`1 / \mathrm{deg}` instead of
    adding up :math:`w / \mathrm{deg}`).

    It is deterministic and permutation-equivariant (up to float
    round-off), so it needs no sign handling; graphs of any size (also single
    nodes) are supported. Meant as a :obj:`pre_transform`. The powers are
    computed in float64 and stored as :obj:`torch.get_default_dtype()`:
    densely for graphs of up to :obj:`DENSE_THRESHOLD` nodes, else as sparse
    products :math:`\mathbf{P}^l \mathbf{E}_S` with blocks :math:`S` of unit
    columns (time :math:`O(L (|\mathcal{E}| + N) N)`, memory
    :math:`O(N |S|)` with :math:`N |S| \le` :obj:`BLOCK_ENTRIES`). Both give
    the same values up to float64 round-off, whatever the graph's size.

    Args:
        walk_length (int): The number of random-walk steps :math:`L`.
        attr_name (str, optional): The attribute to store the encoding in.
            (default: :obj:`"rw_pe"`)

    Shapes:
        - **input:** :obj:`Data` with :obj:`edge_index`
          :math:`(2, |\mathcal{E}|)` and optionally non-negative
          :obj:`edge_weight` :math:`(|\mathcal{E}|)`
        - **output:** same object with :obj:`data[attr_name]` :math:`(N, L)`
    """
    #: Graphs with more nodes take the blocked sparse path.
    DENSE_THRESHOLD: int = 256
    #: Entries of one dense block :math:`(N, |S|)` of the sparse path.
    BLOCK_ENTRIES: int = 2**22

    def __init__(self, walk_length: int, attr_name: str = 'rw_pe') -> None:
        if (isinstance(walk_length, bool) or not isinstance(walk_length, int)
                or walk_length < 1):
            raise ValueError(f"Expected 'walk_length' to be a positive integer "
                             f"(got {walk_length!r})")
        if not isinstance(attr_name, str) or not attr_name:
            raise ValueError(f"Expected 'attr_name' to be a non-empty string "
                             f"(got {attr_name!r})")
        self.walk_length = walk_length
        self.attr_name = attr_name

    def forward(self, data: Data) -> Data:
        edge_index, num_nodes, weight = check_weighted_graph(data)
        if weight is None:
            weight = torch.ones(edge_index.size(1), device=edge_index.device)
        weight = weight.to(torch.float64)

        # The entries P_ij = w_ij / d_i of every edge; repeated edges are
        # summed when the matrix is built.
        row, col = edge_index
        deg = weight.new_zeros(num_nodes).index_add_(0, row, weight)
        inv_deg = deg.reciprocal().masked_fill_(deg == 0, 0.0)
        value = weight * inv_deg[row]

        if num_nodes <= self.DENSE_THRESHOLD:
            pe = self._dense(row, col, value, num_nodes)
        else:
            pe = self._blocked(edge_index, value, num_nodes)
        data[self.attr_name] = pe.to(torch.get_default_dtype())
        return data

    def _dense(self, row: Tensor, col: Tensor, value: Tensor,
               num_nodes: int) -> Tensor:
        # diag(P^l), l = 1..L, from dense powers of P.
        P = value.new_zeros(num_nodes, num_nodes)
        P.index_put_((row, col), value, accumulate=True)  # [N, N]
        out = value.new_empty(num_nodes, self.walk_length)
        power = P
        out[:, 0] = power.diagonal()
        for step in range(1, self.walk_length):
            power = P @ power
            out[:, step] = power.diagonal()
        return out

    def _blocked(self, edge_index: Tensor, value: Tensor,
                 num_nodes: int) -> Tensor:
        # diag(P^l) from X_l = P X_{l-1}, X_0 = E_S, for blocks S of nodes:
        # (P^l)_ii is row i of X_l in the column of i.
        P = torch.sparse_coo_tensor(edge_index.long(), value,
                                    (num_nodes, num_nodes),
                                    check_invariants=False).coalesce()
        out = value.new_empty(num_nodes, self.walk_length)
        block = max(self.BLOCK_ENTRIES // num_nodes, 1)
        for s0 in range(0, num_nodes, block):
            s1 = min(s0 + block, num_nodes)
            nodes = torch.arange(s0, s1, device=value.device)
            local = nodes - s0
            X = value.new_zeros(num_nodes, s1 - s0)  # [N, |S|]
            X[nodes, local] = 1.0
            for step in range(self.walk_length):
                X = torch.sparse.mm(P, X)  # [N, |S|]
                out[s0:s1, step] = X[nodes, local]
        return out

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(walk_length={self.walk_length}, '
                f'attr_name={self.attr_name!r})')
