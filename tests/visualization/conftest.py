from typing import Optional

import pytest
import torch
from torch import Tensor
from torch.nn import Linear, Module, ModuleList
from torch_geometric.data import Batch, Data
from torch_geometric.nn import global_mean_pool


class SamsaAttention(Module):
    """Temporary test double with the contract of samsa_geo.nn.SamsaAttention
    (per-graph top-k of per-head scores; -1 pads, -2 - r marks register r)."""
    def __init__(self, channels: int, heads: int = 1, k: int = 64,
                 num_registers: int = 0) -> None:
        super().__init__()
        self.heads, self.k, self.num_registers = heads, k, num_registers
        self.lin_score = Linear(channels, heads)
        self.lin = Linear(channels, channels)

    def forward(self, x: Tensor, batch: Optional[Tensor] = None, *,
                pos: Optional[Tensor] = None, return_indices: bool = False):
        if batch is None:
            batch = x.new_zeros(x.size(0), dtype=torch.long)
        B = int(batch.max()) + 1
        sizes = torch.bincount(batch, minlength=B)
        k_max = min(self.k, int(sizes.max())) + self.num_registers
        score = self.lin_score(x)  # [N, H]
        idx = torch.full((B, self.heads, k_max), -1, dtype=torch.long)
        out = torch.zeros_like(x)
        for g in range(B):
            nodes = (batch == g).nonzero().view(-1)
            k = min(self.k, nodes.numel())
            top = score[nodes].topk(k, dim=0).indices.t()  # [H, k]
            idx[g, :, :k] = nodes[top]
            for r in range(self.num_registers):
                idx[g, :, k + r] = -2 - r
            ctx = self.lin(x[nodes[top]]).mean(dim=(0, 1))
            out[nodes] = ctx
        return (out, idx) if return_indices else out


def attention_class():
    return SamsaAttention


class PointModel(Module):
    def __init__(self, channels: int = 12, heads=(2, 3), k: int = 6) -> None:
        super().__init__()
        Attn = attention_class()
        self.lin_in = Linear(3, channels)
        self.attns = ModuleList([Attn(channels, heads=h, k=k) for h in heads])
        # A nested attention, to check names from named_modules().
        self.block = Module()
        self.block.lin = Linear(channels, channels)
        self.block.attn = Attn(channels, heads=1, k=k)
        self.lin_out = Linear(channels, 4)

    def forward(self, pos: Tensor, batch: Optional[Tensor] = None,
                x: Optional[Tensor] = None) -> Tensor:
        h = self.lin_in(pos)
        for attn in self.attns:
            h = h + attn(h, batch, pos=pos)
        h = h + self.block.attn(self.block.lin(h), batch, pos=pos)
        if batch is None:
            batch = h.new_zeros(h.size(0), dtype=torch.long)
        return self.lin_out(global_mean_pool(h, batch))


@pytest.fixture
def point_model() -> PointModel:
    return PointModel().eval()


@pytest.fixture
def point_batch() -> Batch:
    data = [Data(pos=torch.randn(n, 3)) for n in (40, 25)]
    return Batch.from_data_list(data)


@pytest.fixture
def attn_cls():
    return attention_class()


@pytest.fixture
def model_factory():
    return PointModel
