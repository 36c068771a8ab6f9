import pytest
import torch
from torch_geometric.data import Data, InMemoryDataset
from torch_geometric.utils import erdos_renyi_graph, to_undirected

from samsa_geo.transforms import AddLaplacianPE, AddRandomWalkPE, RandomSignFlip
from samsa_geo.transforms.add_laplacian_pe import canonical_eigenvector_sign


def _random_graph(num_nodes: int, p: float = 0.3, seed: int = 0) -> Data:
    torch.manual_seed(seed)
    # A path guarantees connectivity; random chords break the symmetries.
    path = torch.stack([torch.arange(num_nodes - 1), torch.arange(1, num_nodes)])
    ei = torch.cat([path, erdos_renyi_graph(num_nodes, p)], dim=1)
    return Data(edge_index=to_undirected(ei, num_nodes=num_nodes),
                num_nodes=num_nodes)


def _permute(data: Data, perm: torch.Tensor) -> Data:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return Data(edge_index=inv[data.edge_index], num_nodes=data.num_nodes)


def _laplacian(data: Data) -> torch.Tensor:
    n = data.num_nodes
    adj = torch.zeros(n, n, dtype=torch.float64)
    adj[data.edge_index[0], data.edge_index[1]] = 1.0
    d = adj.sum(1).pow(-0.5)
    return torch.eye(n, dtype=torch.float64) - d.view(-1, 1) * adj * d.view(1, -1)


def _dense_eig(data: Data, k: int):
    val, vec = torch.linalg.eigh(_laplacian(data))
    return val, vec[:, 1:k + 1]


def test_repr_and_errors():
    assert repr(AddLaplacianPE(8)) == ("AddLaplacianPE(k=8, attr_name='lap_pe', "
                                       "is_undirected=None)")
    assert repr(AddRandomWalkPE(16)) == ("AddRandomWalkPE(walk_length=16, "
                                         "attr_name='rw_pe')")
    assert repr(RandomSignFlip()) == "RandomSignFlip(attr_name='lap_pe')"
    with pytest.raises(ValueError, match="'k'"):
        AddLaplacianPE(0)
    with pytest.raises(ValueError, match="'walk_length'"):
        AddRandomWalkPE(0)
    with pytest.raises(ValueError, match="data.lap_pe"):
        RandomSignFlip()(Data(num_nodes=3))


@pytest.mark.parametrize('build, message', [
    (lambda: AddLaplacianPE(True), "Expected 'k' to be a positive integer "
                                   "(got True)"),
    (lambda: AddLaplacianPE(False), "Expected 'k' to be a positive integer "
                                    "(got False)"),
    (lambda: AddRandomWalkPE(True), "Expected 'walk_length' to be a "
                                    "positive integer (got True)"),
])
def test_bool_is_not_a_count(build, message):
    # True == 1: it was taken for one eigenvector or one step.
    with pytest.raises(ValueError) as info:
        build()
    assert str(info.value) == message


@pytest.mark.parametrize('value', ['no', 0, 1.0])
def test_laplacian_pe_is_undirected_must_be_a_bool_or_none(value):
    # 'no' is true to Python: directed graphs were read as undirected.
    with pytest.raises(TypeError) as info:
        AddLaplacianPE(2, is_undirected=value)
    assert str(info.value) == (f"Expected 'is_undirected' to be a bool or "
                               f"None (got {value!r})")
    for ok in (None, True, False):
        assert AddLaplacianPE(2, is_undirected=ok).is_undirected is ok


@pytest.mark.parametrize('num_nodes', [12, 130])  # dense and sparse (ARPACK)
def test_laplacian_pe_values(num_nodes):
    data = _random_graph(num_nodes, p=4.0 / num_nodes)
    k = 5
    pe = AddLaplacianPE(k, is_undirected=True)(data.clone()).lap_pe
    assert pe.shape == (num_nodes, k) and pe.dtype == torch.float32
    val, ref = _dense_eig(data, k)
    assert (val[2:k + 2] - val[1:k + 1]).min() > 1e-6  # simple spectrum
    ref = canonical_eigenvector_sign(ref).float()
    assert torch.allclose(pe, ref, atol=1e-4)
    idx = pe.abs().argmax(0)
    assert (pe[idx, torch.arange(k)] > 0).all()


def test_laplacian_pe_deterministic_and_keeps_rng():
    data = _random_graph(20)
    torch.manual_seed(0)
    a = AddLaplacianPE(6)(data.clone()).lap_pe
    after_a = torch.rand(3)
    torch.manual_seed(0)
    b = AddLaplacianPE(6)(data.clone()).lap_pe
    after_b = torch.rand(3)
    torch.manual_seed(1)
    c = AddLaplacianPE(6)(data.clone()).lap_pe
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(after_a, after_b)  # global random stream untouched


@pytest.mark.parametrize('is_undirected', [None, True, False])
def test_laplacian_pe_permutation(is_undirected):
    data = _random_graph(15, seed=3)
    perm = torch.randperm(15)
    t = AddLaplacianPE(6, is_undirected=is_undirected)
    pe = t(data.clone()).lap_pe
    pe_perm = t(_permute(data, perm)).lap_pe
    # Up to sign in general; with the canonical sign, exactly:
    assert torch.allclose(pe_perm.abs(), pe[perm].abs(), atol=1e-5)
    assert torch.allclose(pe_perm, pe[perm], atol=1e-5)


@pytest.mark.parametrize('num_nodes', [0, 1, 2, 4, 9])
def test_laplacian_pe_pads_small_graphs(num_nodes):
    k = 8
    if num_nodes > 1:
        data = _random_graph(num_nodes, seed=num_nodes)
    else:
        data = Data(edge_index=torch.empty(2, 0, dtype=torch.long),
                    num_nodes=num_nodes)
    pe = AddLaplacianPE(k)(data).lap_pe
    assert pe.shape == (num_nodes, k)
    num_eig = max(num_nodes - 1, 0)
    assert torch.equal(pe[:, num_eig:], torch.zeros(num_nodes, k - num_eig))
    if num_nodes > 1:
        val, _ = _dense_eig(data, num_eig)
        lap = _laplacian(data).float()
        vec = pe[:, :num_eig]
        # Columns are orthonormal eigenvectors of the non-trivial eigenvalues:
        assert torch.allclose(vec.T @ vec, torch.eye(num_eig), atol=1e-5)
        rayleigh = (vec * (lap @ vec)).sum(0)
        assert torch.allclose(lap @ vec, vec * rayleigh, atol=1e-5)
        assert torch.allclose(rayleigh, val[1:].float(), atol=1e-5)


def test_random_walk_pe_values_and_permutation():
    # Triangle 0-1-2 plus pendant node 3 attached to 0.
    ei = to_undirected(torch.tensor([[0, 1, 2, 0], [1, 2, 0, 3]]))
    data = Data(edge_index=ei, num_nodes=4)
    pe = AddRandomWalkPE(3)(data.clone()).rw_pe
    assert pe.shape == (4, 3)
    # Return probability after 2 steps from node 3: 3->0->3 = 1 * 1/3.
    assert torch.allclose(pe[3], torch.tensor([0.0, 1 / 3, 0.0]))
    # Node 0 (degree 3): 2 steps back = 1/3 * (1/2 + 1/2 + 1) = 2/3.
    assert torch.allclose(pe[0, 1], torch.tensor(2 / 3))

    big = _random_graph(25, seed=5)
    perm = torch.randperm(25)
    t = AddRandomWalkPE(8)
    # Exact up to float round-off of the matrix powers:
    assert torch.allclose(t(_permute(big, perm)).rw_pe, t(big.clone()).rw_pe[perm],
                          rtol=0, atol=1e-6)


def test_random_sign_flip():
    data = _random_graph(10)
    data = AddLaplacianPE(4)(data)
    before = data.lap_pe.clone()
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        out = RandomSignFlip(generator=gen)(data.clone()).lap_pe
        ratio = out.sum(0) / before.sum(0)
        assert torch.allclose(out.abs(), before.abs())
        assert torch.allclose(out, before * ratio.round())  # whole columns
        seen.add(tuple(ratio.round().tolist()))
    assert len(seen) > 1


class _ToyGraphs(InMemoryDataset):
    def __init__(self, root, pre_transform=None):
        super().__init__(root, pre_transform=pre_transform)
        self.load(self.processed_paths[0])

    @property
    def raw_file_names(self):
        return []

    @property
    def processed_file_names(self):
        return ['data.pt']

    def download(self):
        pass

    def process(self):
        data_list = [_random_graph(n, seed=n) for n in (3, 7, 11)]
        data_list = [self.pre_transform(d) for d in data_list]
        self.save(data_list, self.processed_paths[0])


def test_cache_reuse(tmp_path, monkeypatch):
    from torch_geometric.transforms import Compose
    pre = Compose([AddLaplacianPE(4), AddRandomWalkPE(5)])
    first = _ToyGraphs(tmp_path, pre_transform=pre)
    assert first[0].lap_pe.shape == (3, 4) and first[2].rw_pe.shape == (11, 5)

    calls = []
    orig = AddLaplacianPE.forward

    def spy(self, data):
        calls.append(1)
        return orig(self, data)

    monkeypatch.setattr(AddLaplacianPE, 'forward', spy)
    second = _ToyGraphs(tmp_path, pre_transform=pre)
    assert calls == []
    for a, b in zip(first, second):
        assert torch.equal(a.lap_pe, b.lap_pe) and torch.equal(a.rw_pe, b.rw_pe)


_EI = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
_NOT_NODES = ("Expected 'data.edge_index' to hold node indices in [0, {}) "
              "(got values in [{}, {}])")
_BAD_GRAPHS = [
    (dict(edge_index=_EI + 5), ValueError, _NOT_NODES.format(3, 5, 7)),
    (dict(edge_index=_EI - 1), ValueError, _NOT_NODES.format(3, -1, 1)),
    (dict(edge_index=_EI[:, :1], num_nodes=1), ValueError,
     _NOT_NODES.format(1, 0, 1)),
    (dict(edge_index=_EI.float()), TypeError,
     "Expected 'data.edge_index' to be an integer tensor "
     "(got torch.float32)"),
    (dict(edge_index=_EI[0]), ValueError,
     "Expected 'data.edge_index' to have shape [2, E] (got [4])"),
    (dict(edge_weight=torch.ones(2)), ValueError,
     "Expected 'data.edge_weight' to have shape [4] (got [2])"),
    (dict(edge_weight=[1.0] * 4), TypeError,
     "Expected 'data.edge_weight' to be a Tensor (got list)"),
    (dict(edge_weight=torch.full((4, ), float('nan'))), ValueError,
     "Expected 'data.edge_weight' to hold finite non-negative values"),
    (dict(edge_weight=torch.tensor([1.0, 1.0, -1.0, -1.0])), ValueError,
     "Expected 'data.edge_weight' to hold finite non-negative values"),
]


@pytest.mark.parametrize('transform', [AddLaplacianPE(1),
                                       AddRandomWalkPE(2)])
@pytest.mark.parametrize('bad', _BAD_GRAPHS, ids=[
    'out_of_range', 'negative', 'one_node', 'float', 'one_row',
    'weight_length', 'weight_list', 'weight_nan', 'weight_negative'])
def test_positional_encodings_name_bad_graphs(transform, bad):
    # Both transforms give the same errors; AddLaplacianPE failed deep in
    # PyG, torch or numpy (or, for one node, not at all).
    kwargs, error, message = bad
    data = Data(**{'edge_index': _EI, 'num_nodes': 3, **kwargs})
    with pytest.raises(error) as exc:
        transform(data)
    assert str(exc.value) == message
