import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.transforms import AddRandomWalkPE as PyGAddRandomWalkPE
from torch_geometric.utils import erdos_renyi_graph, to_undirected

from samsa_geo.transforms import AddRandomWalkPE


def _reference(edge_index, num_nodes, walk_length, edge_weight=None):
    # Independent float64 computation: A sums repeated (weighted) edges one
    # at a time, P = D^-1 A with zero rows where nothing leaves a node, and
    # the diagonals of the explicit matrix powers.
    A = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    weights = [1.0] * edge_index.size(1) if edge_weight is None \
        else edge_weight.tolist()
    for (i, j), w in zip(edge_index.t().tolist(), weights):
        A[i, j] += w
    P = torch.zeros_like(A)
    for i in range(num_nodes):
        if A[i].sum() > 0:
            P[i] = A[i] / A[i].sum()
    return torch.stack([torch.linalg.matrix_power(P, step).diagonal()
                        for step in range(1, walk_length + 1)], dim=1)


def _paths(walk_length, data):
    # The dense and the blocked sparse path (in several blocks) on data.
    dense, blocked = AddRandomWalkPE(walk_length), AddRandomWalkPE(walk_length)
    dense.DENSE_THRESHOLD = 10**9
    blocked.DENSE_THRESHOLD = 0
    blocked.BLOCK_ENTRIES = 2 * data.num_nodes  # blocks of two nodes
    return dense(data.clone()).rw_pe, blocked(data.clone()).rw_pe


GRAPHS = {
    # 0-1 twice, 0-2 once (undirected): P_01 = 2/3, not PyG's 1/3.
    'multi_edge': ([[0, 0, 1, 1, 0, 2], [1, 1, 0, 0, 2, 0]], 3, None),
    # 0-1 of weight 3, 0-2 of weight 1.
    'weighted': ([[0, 1, 0, 2], [1, 0, 2, 0]], 3, [3.0, 3.0, 1.0, 1.0]),
    # A directed cycle 0->1->2->0 with a chord 0->2 and a sink 3.
    'directed': ([[0, 1, 2, 0, 2], [1, 2, 0, 2, 3]], 4, None),
    # Triangle, self-loop on 1 (kept), isolated nodes 3 and 4.
    'loop_and_isolated': ([[0, 1, 1, 2, 2, 0, 1], [1, 0, 2, 1, 0, 2, 1]], 5,
                          None),
    # Weighted multi-edges, loops and a direction: everything at once.
    'mixed': ([[0, 0, 1, 2, 2, 3, 3, 0], [1, 1, 0, 2, 3, 0, 0, 3]], 4,
              [0.5, 1.5, 2.0, 1.0, 0.25, 4.0, 1.0, 2.0]),
}


@pytest.mark.parametrize('name', list(GRAPHS))
def test_random_walk_pe_equals_dense_reference(name):
    edges, num_nodes, weights = GRAPHS[name]
    edge_index = torch.tensor(edges)
    data = Data(edge_index=edge_index, num_nodes=num_nodes)
    weight = None
    if weights is not None:
        data.edge_weight = weight = torch.tensor(weights)
    pe = AddRandomWalkPE(5)(data.clone()).rw_pe
    ref = _reference(edge_index, num_nodes, 5, weight)
    assert pe.shape == (num_nodes, 5) and pe.dtype == torch.float32
    torch.testing.assert_close(pe, ref.float(), rtol=0, atol=1e-6)
    for out in _paths(5, data):
        torch.testing.assert_close(out, pe, rtol=0, atol=1e-7)


def test_random_walk_pe_hand_values():
    ei = torch.tensor(GRAPHS['multi_edge'][0])
    pe = AddRandomWalkPE(2)(Data(edge_index=ei, num_nodes=3)).rw_pe
    # 0 -> 1 -> 0: 2/3 * 1, 0 -> 2 -> 0: 1/3 * 1.
    assert torch.allclose(pe[:, 1], torch.tensor([1.0, 2 / 3, 1 / 3]))
    ei, w = GRAPHS['weighted'][0], GRAPHS['weighted'][2]
    pe = AddRandomWalkPE(2)(Data(edge_index=torch.tensor(ei), num_nodes=3,
                                 edge_weight=torch.tensor(w))).rw_pe
    assert torch.allclose(pe[:, 1], torch.tensor([1.0, 0.75, 0.25]))
    # Isolated nodes: rows of zeros, an encoding of zeros.
    ei = torch.tensor(GRAPHS['loop_and_isolated'][0])
    pe = AddRandomWalkPE(3)(Data(edge_index=ei, num_nodes=5)).rw_pe
    assert torch.equal(pe[3:], torch.zeros(2, 3))
    assert torch.allclose(pe[1, 0], torch.tensor(1 / 3))  # the self-loop


@pytest.mark.parametrize('num_nodes', [3, 2000, 2001, 3000])
def test_random_walk_pe_does_not_depend_on_graph_size(num_nodes):
    # The multi-edge motif padded with isolated nodes: same values on both
    # sides of DENSE_THRESHOLD and of PyG's 2,000-node switch.
    ei = torch.tensor(GRAPHS['multi_edge'][0])
    small = AddRandomWalkPE(4)(Data(edge_index=ei, num_nodes=3)).rw_pe
    t = AddRandomWalkPE(4)
    t.BLOCK_ENTRIES = 7 * num_nodes  # several blocks on the sparse path
    pe = t(Data(edge_index=ei, num_nodes=num_nodes)).rw_pe
    assert pe.shape == (num_nodes, 4)
    torch.testing.assert_close(pe[:3], small, rtol=0, atol=1e-7)
    torch.testing.assert_close(small, _reference(ei, 3, 4).float(), rtol=0,
                               atol=1e-6)
    assert torch.equal(pe[3:], torch.zeros(num_nodes - 3, 4))


@pytest.mark.parametrize('num_nodes', [15, 130, 400])
def test_random_walk_pe_matches_pyg_on_simple_graphs(num_nodes):
    torch.manual_seed(num_nodes)
    path = torch.stack([torch.arange(num_nodes - 1),
                        torch.arange(1, num_nodes)])
    ei = to_undirected(torch.cat(
        [path, erdos_renyi_graph(num_nodes, 4.0 / num_nodes)], dim=1),
        num_nodes=num_nodes)
    data = Data(edge_index=ei, num_nodes=num_nodes)
    pe = AddRandomWalkPE(8)(data.clone()).rw_pe
    ref = PyGAddRandomWalkPE(8, attr_name='pe')(data.clone()).pe
    torch.testing.assert_close(pe, ref, rtol=0, atol=1e-6)


def test_random_walk_pe_empty_and_single_node():
    empty = torch.empty(2, 0, dtype=torch.long)
    for num_nodes in (0, 1):
        pe = AddRandomWalkPE(3)(Data(edge_index=empty,
                                     num_nodes=num_nodes)).rw_pe
        assert torch.equal(pe, torch.zeros(num_nodes, 3))
    pe = AddRandomWalkPE(3)(Data(edge_index=torch.tensor([[0], [0]]),
                                 num_nodes=1)).rw_pe
    assert torch.equal(pe, torch.ones(1, 3))  # a loop walks back each step


def test_random_walk_pe_errors():
    ei = torch.tensor([[0, 1], [1, 0]])
    t = AddRandomWalkPE(3)
    with pytest.raises(ValueError, match=r"'data.edge_weight'.*\[2\]"):
        t(Data(edge_index=ei, num_nodes=2, edge_weight=torch.ones(3)))
    with pytest.raises(ValueError, match="'data.edge_weight'.*non-negative"):
        t(Data(edge_index=ei, num_nodes=2,
               edge_weight=torch.tensor([1.0, -1.0])))
    with pytest.raises(ValueError, match=r"'data.edge_index'.*\[0, 2\)"):
        t(Data(edge_index=ei + 1, num_nodes=2))
    with pytest.raises(ValueError, match=r"'data.edge_index'.*\[2, E\]"):
        t(Data(edge_index=torch.zeros(3, 2, dtype=torch.long), num_nodes=2))
