import pytest
import torch


@pytest.fixture
def molecule_case(small_graphs):
    """A 3-layer ``SamsaGraphModel`` of width 64 on CUDA, a batch of 64
    molecule-sized graphs (2-25 nodes, 9 node and 3 edge features) and a
    weight of its 64 outputs."""
    from samsa_geo.nn.models import SamsaGraphModel
    sizes = torch.randint(2, 26, (64, ),
                          generator=torch.Generator().manual_seed(0))
    data = small_graphs(sizes.tolist(), 9, device='cuda')
    torch.manual_seed(0)
    model = SamsaGraphModel(9, 64, 1, 3, edge_dim=3, heads=4).cuda()
    return model, data, torch.randn(64, 1, device='cuda')
