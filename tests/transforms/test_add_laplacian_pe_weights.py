import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.utils import erdos_renyi_graph, to_undirected

from samsa_geo.transforms import AddLaplacianPE
from samsa_geo.transforms.add_laplacian_pe import symmetric_adjacency


def _graph(num_nodes: int = 12, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    path = torch.stack([torch.arange(num_nodes - 1),
                        torch.arange(1, num_nodes)])
    return to_undirected(torch.cat([path, erdos_renyi_graph(num_nodes, 0.3)],
                                   dim=1), num_nodes=num_nodes)


def _laplacian(edge_index, weight, num_nodes):
    # L = I - D^-1/2 A D^-1/2 in float64; A_ij sums the weights of i -> j
    # (self-loops dropped), D the out-degrees.
    A = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    keep = edge_index[0] != edge_index[1]
    A.index_put_((edge_index[0, keep], edge_index[1, keep]),
                 weight[keep].double(), accumulate=True)
    d = A.sum(1).pow(-0.5)
    d[torch.isinf(d)] = 0.0
    return torch.eye(num_nodes, dtype=torch.float64) - \
        d.view(-1, 1) * A * d.view(1, -1)


def _symmetric_weights(edge_index, seed):
    # The graph with every edge in both directions, both of equal weight.
    upper = edge_index[:, edge_index[0] < edge_index[1]]
    w = torch.rand(upper.size(1),
                   generator=torch.Generator().manual_seed(seed)) + 0.5
    return torch.cat([upper, upper.flip(0)], dim=1), torch.cat([w, w])


def test_asymmetric_weights_on_symmetric_edges_are_eigenvectors():
    # w_ij = c_j: A = A_0 diag(c) is not symmetric, but the spectrum of L is
    # real (L is similar to a symmetric matrix), so the returned columns
    # must be real eigenvectors of L itself.
    N, k = 12, 4
    edge_index = _graph(N)
    c = torch.rand(N, generator=torch.Generator().manual_seed(1)) + 0.5
    weight = c[edge_index[1]]
    L = _laplacian(edge_index, weight, N)
    assert not torch.allclose(L, L.t())
    eigvals = torch.linalg.eigvals(L)
    assert eigvals.imag.abs().max() < 1e-10  # precondition: real spectrum
    expected = eigvals.real.sort().values[1:k + 1]

    data = Data(edge_index=edge_index, edge_weight=weight, num_nodes=N)
    pe = AddLaplacianPE(k)(data.clone()).lap_pe  # is_undirected=None
    V = pe.double()
    lam = (V * (L @ V)).sum(0) / (V * V).sum(0)  # [k]
    assert (L @ V - V * lam).abs().max() < 1e-5
    torch.testing.assert_close(lam, expected, rtol=0, atol=1e-5)
    directed = AddLaplacianPE(k, is_undirected=False)(data.clone()).lap_pe
    assert torch.equal(pe, directed)


def test_symmetric_weights_keep_the_symmetric_solver():
    N = 12
    edge_index, weight = _symmetric_weights(_graph(N, seed=2), seed=2)
    data = Data(edge_index=edge_index, edge_weight=weight, num_nodes=N)
    pe = AddLaplacianPE(4)(data.clone()).lap_pe
    assert torch.equal(pe, AddLaplacianPE(4, is_undirected=True)(
        data.clone()).lap_pe)
    L = _laplacian(edge_index, data.edge_weight, N)
    V = pe.double()
    lam = (V * (L @ V)).sum(0)
    assert (L @ V - V * lam).abs().max() < 1e-5


@pytest.mark.parametrize('weighted', [False, True])
def test_self_loops_are_ignored(weighted):
    N = 10
    edge_index, weight = _symmetric_weights(_graph(N, seed=3), seed=3)
    loops = torch.tensor([[0, 4, 4], [0, 4, 4]])
    with_loops = Data(edge_index=torch.cat([edge_index, loops], dim=1),
                      num_nodes=N)
    without = Data(edge_index=edge_index, num_nodes=N)
    if weighted:
        with_loops.edge_weight = torch.cat([weight,
                                            torch.tensor([5.0, 1.0, 2.0])])
        without.edge_weight = weight
    t = AddLaplacianPE(4)
    torch.testing.assert_close(t(with_loops).lap_pe, t(without).lap_pe,
                               rtol=0, atol=1e-6)


def test_symmetric_adjacency():
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    assert symmetric_adjacency(ei, None, 3)
    assert symmetric_adjacency(ei, torch.tensor([1., 1., 2., 2.]), 3)
    assert not symmetric_adjacency(ei, torch.tensor([1., 2., 2., 2.]), 3)
    # 0 -> 1 twice but 1 -> 0 once: A_01 = 2, A_10 = 1.
    multi = torch.tensor([[0, 0, 1], [1, 1, 0]])
    assert not symmetric_adjacency(multi, None, 2)
    # Repeated edges are summed before the comparison: 1 + 2 = 3.
    assert symmetric_adjacency(multi, torch.tensor([1., 2., 3.]), 2)
    assert symmetric_adjacency(torch.tensor([[0, 1], [0, 1]]), None, 2)
    assert not symmetric_adjacency(torch.tensor([[0], [1]]), None, 2)
