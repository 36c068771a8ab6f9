import pytest
import torch
from torch_geometric.data import Data

from samsa_geo.transforms import StandardizeFeatures


def test_standardize_features():
    data_list = [Data(x=torch.randn(n, 3) * 5 + 2, num_nodes=n) for n in (4, 7)]
    for d in data_list:
        d.x[:, 2] = 1.0  # constant channel: std replaced by 1
    norm = StandardizeFeatures.from_dataset(data_list, attrs=['x'])
    mean, std = norm.stats['x']
    assert std[2] == 1.0
    x = torch.cat([norm(d.clone()).x for d in data_list])
    assert torch.allclose(x[:, :2].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(x[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-5)
    assert torch.allclose(x[:, 2], torch.zeros(11))
    with pytest.raises(ValueError, match="3 channels"):
        norm(Data(x=torch.randn(2, 4)))
    with pytest.raises(ValueError, match="'stats'"):
        StandardizeFeatures({})
