from typing import Optional

import pytest
import torch
from torch import Tensor
from torch.nn import Linear, Module, ModuleList
from torch_geometric.data import Batch, Data
from torch_geometric.nn import global_mean_pool

from samsa_geo.nn import SamsaAttention, SamsaConv


class PointModel(Module):
    r"""Two bare attention layers (one with registers) and one inside a
    :class:`SamsaConv`, called the way models call them."""
    def __init__(self, channels: int = 12, k: int = 6) -> None:
        super().__init__()
        self.lin_in = Linear(3, channels)
        self.attns = ModuleList([
            SamsaAttention(channels, heads=2, k=k),
            SamsaAttention(channels, heads=3, k=k, num_registers=2),
        ])
        self.conv = SamsaConv(channels, heads=1, k=k)
        self.lin_out = Linear(channels, 4)

    def forward(self, pos: Tensor, batch: Optional[Tensor] = None,
                x: Optional[Tensor] = None) -> Tensor:
        h = self.lin_in(pos)
        for attn in self.attns:
            h = h + attn(h, batch, pos=pos)
        h = self.conv(h, batch=batch, pos=pos)
        if batch is None:
            batch = h.new_zeros(h.size(0), dtype=torch.long)
        return self.lin_out(global_mean_pool(h, batch))


@pytest.fixture
def attn_cls():
    return SamsaAttention


@pytest.fixture
def point_model() -> PointModel:
    return PointModel().eval()


@pytest.fixture
def point_batch() -> Batch:
    data = [Data(pos=torch.randn(n, 3)) for n in (40, 25)]
    return Batch.from_data_list(data)
