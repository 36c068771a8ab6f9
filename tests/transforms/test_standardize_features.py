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


@pytest.mark.parametrize('mean, std, match', [
    # Zero std used to give inf features.
    (torch.zeros(2), torch.tensor([1.0, 0.0]), "std of 'x' to be positive"),
    (torch.zeros(2), torch.tensor([1.0, -1.0]), "std of 'x' to be positive"),
    # NaN statistics used to give NaN features.
    (torch.tensor([0.0, float('nan')]), torch.ones(2), "'x' to be finite"),
    (torch.zeros(2), torch.tensor([float('inf'), 1.0]), "'x' to be finite"),
])
def test_standardize_features_bad_stats(mean, std, match):
    with pytest.raises(ValueError, match=match):
        StandardizeFeatures({'x': (mean, std)})


def test_standardize_features_nan_data():
    data_list = [Data(x=torch.tensor([[1.0], [float('nan')]]))]
    with pytest.raises(ValueError, match="'x' to be finite"):
        StandardizeFeatures.from_dataset(data_list, attrs=['x'])


def test_standardize_features_missing_attribute():
    norm = StandardizeFeatures({'x': (torch.zeros(2), torch.ones(2))})
    # Used to raise a bare KeyError.
    with pytest.raises(ValueError, match=r"'data.x' to be set"):
        norm(Data(pos=torch.randn(3, 2)))
    with pytest.raises(ValueError, match=r"'stats\['x'\]' to be a pair"):
        StandardizeFeatures({'x': torch.zeros(2)})
