from typing import Any, Optional

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import AddLaplacianEigenvectorPE, BaseTransform
from torch_geometric.utils import coalesce

from samsa_geo.ops.validation import check_bool
from samsa_geo.transforms._utils import check_weighted_graph


def canonical_eigenvector_sign(pe: Tensor) -> Tensor:
    r"""Flips every column of :obj:`pe` so that its entry of largest absolute
    value is positive (ties are broken by the lowest row index).

    All-zero columns (padding) are left unchanged.

    Args:
        pe (torch.Tensor): Eigenvectors as columns, shape :obj:`[N, k]`.
    """
    if pe.numel() == 0:
        return pe
    idx = pe.abs().argmax(dim=0)  # [k]
    sign = torch.sign(pe.gather(0, idx.view(1, -1)))  # [1, k]
    sign[sign == 0] = 1.0
    return pe * sign


def symmetric_adjacency(edge_index: Tensor, edge_weight: Optional[Tensor],
                        num_nodes: int) -> bool:
    r"""Whether the weighted adjacency matrix :math:`\mathbf{A}`
    (:math:`A_{ij}` the summed weights of all edges :math:`i \to j`, weights
    :obj:`1` if :obj:`edge_weight` is :obj:`None`) equals its transpose
    exactly.

    Args:
        edge_index (torch.Tensor): Edges, shape :obj:`[2, E]`.
        edge_weight (torch.Tensor, optional): Weights, shape :obj:`[E]`.
        num_nodes (int): The number of nodes :math:`N`.
    """
    if edge_weight is None:
        edge_weight = torch.ones(edge_index.size(1), device=edge_index.device)
    # Repeated edges summed; coalesce sorts by (row, col).
    index, weight = coalesce(edge_index, edge_weight, num_nodes, reduce='sum')
    index_t, weight_t = coalesce(index.flip(0), weight, num_nodes)
    return torch.equal(index, index_t) and torch.equal(weight, weight_t)


class AddLaplacianPE(BaseTransform):
    r"""Adds the Laplacian eigenvector positional encoding from the
    `"Benchmarking Graph Neural Networks" <https://arxiv.org/abs/2003.00982>`_
    paper, built on :class:`torch_geometric.transforms.AddLaplacianEigenvectorPE`
    and made suitable for a :obj:`pre_transform`.

    For the symmetric normalised Laplacian

    .. math::
        \mathbf{L} = \mathbf{I} - \mathbf{D}^{-1/2} \mathbf{A}
        \mathbf{D}^{-1/2} = \mathbf{U} \mathbf{\Lambda} \mathbf{U}^{\top},

    node :math:`i` receives :math:`(U_{i,1}, \ldots, U_{i,k})`, the entries of
    the :math:`k` eigenvectors following the first one (eigenvalues sorted
    ascending). :math:`A_{ij}` sums the weights of all edges :math:`i \to j`
    with :math:`i \neq j` (:obj:`data.edge_weight` if set, else :math:`1`;
    repeated edges add up) and :math:`D_{ii} = \sum_j A_{ij}`. Self-loops are
    ignored, as :func:`torch_geometric.utils.get_laplacian` removes them: a
    loop changes neither :math:`\mathbf{A}` nor :math:`\mathbf{D}`. Nodes
    without edges get :math:`L_{ii} = 1`. Compared to PyG's transform it

    * fixes the sign of every eigenvector deterministically (its entry of
      largest absolute value is positive) instead of drawing a random sign,
      and leaves the global random state untouched;
    * pads graphs with :math:`N \le k` nodes with zero columns (PyG raises a
      shape error there), so every graph gets a :obj:`[N, k]` tensor;
    * stores :obj:`torch.get_default_dtype()` values (PyG stores float64).

    Eigenvectors of repeated eigenvalues are only defined up to a rotation of
    their eigenspace; no sign convention removes that ambiguity. Use
    :class:`~samsa_geo.transforms.RandomSignFlip` during training so the
    model does not rely on the sign convention.

    Args:
        k (int): The number of non-trivial eigenvectors.
        attr_name (str, optional): The attribute to store the encoding in.
            (default: :obj:`"lap_pe"`)
        is_undirected (bool, optional): Whether the graphs are undirected
            (faster, exactly symmetric eigendecomposition, which reads one
            triangle of :math:`\mathbf{L}` only). If :obj:`None`, detected
            per graph: undirected if :math:`\mathbf{A} = \mathbf{A}^{\top}`
            exactly, edge weights included; else the general eigensolver
            runs. (default: :obj:`None`)
        **kwargs (optional): Passed to :class:`AddLaplacianEigenvectorPE`
            (arguments of :meth:`scipy.sparse.linalg.eigsh` / :meth:`eigs`).

    Shapes:
        - **input:** :obj:`Data` with :obj:`edge_index`
          :math:`(2, |\mathcal{E}|)` and optionally non-negative
          :obj:`edge_weight` :math:`(|\mathcal{E}|)`
        - **output:** same object with :obj:`data[attr_name]` :math:`(N, k)`
    """
    def __init__(
        self,
        k: int,
        attr_name: str = 'lap_pe',
        is_undirected: Optional[bool] = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"Expected 'k' to be a positive integer "
                             f"(got {k!r})")
        if not isinstance(attr_name, str) or not attr_name:
            raise ValueError(f"Expected 'attr_name' to be a non-empty string "
                             f"(got {attr_name!r})")
        check_bool('is_undirected', is_undirected, optional=True)
        self.k = k
        self.attr_name = attr_name
        self.is_undirected = is_undirected
        self.kwargs = kwargs

    def forward(self, data: Data) -> Data:
        edge_index, num_nodes, weight = check_weighted_graph(data)
        dtype = torch.get_default_dtype()
        pe = torch.zeros(num_nodes, self.k, dtype=dtype)

        num_eig = min(self.k, num_nodes - 1)  # non-trivial eigenvectors there
        if num_eig > 0:
            undirected = self.is_undirected
            if undirected is None:
                undirected = symmetric_adjacency(edge_index, weight,
                                                 num_nodes)
            inner = AddLaplacianEigenvectorPE(num_eig, attr_name='pe',
                                              is_undirected=undirected,
                                              **self.kwargs)
            if num_eig + 2 >= num_nodes:
                # ARPACK needs k + 1 < N - 1; a dense solve is exact here:
                inner.SPARSE_THRESHOLD = num_nodes + 1
            tmp = Data(edge_index=edge_index, num_nodes=num_nodes)
            if weight is not None:
                tmp.edge_weight = weight
            # PyG draws random signs from the global generator; we canonise
            # the signs anyway, so keep the caller's random stream intact:
            with torch.random.fork_rng(devices=[]):
                out = inner(tmp).pe
            pe[:, :num_eig] = canonical_eigenvector_sign(out.to(dtype))

        data[self.attr_name] = pe
        return data

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(k={self.k}, '
                f'attr_name={self.attr_name!r}, '
                f'is_undirected={self.is_undirected})')
