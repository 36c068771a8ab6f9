import torch
from torch import Tensor

from samsa_geo.typing import WITH_TORCH_CLUSTER


def farthest_point_indices(pos: Tensor, num: int) -> Tensor:
    r"""Deterministic farthest point sampling of :obj:`num` points of one
    cloud :obj:`pos` :math:`(N, 3)`, starting from point :obj:`0`."""
    n = pos.size(0)
    if num >= n:
        return torch.arange(n)
    if WITH_TORCH_CLUSTER:
        import torch_cluster
        return torch_cluster.fps(pos, ratio=num / n, random_start=False)[:num]
    index = torch.zeros(num, dtype=torch.long)
    dist = (pos - pos[0]).pow(2).sum(-1)
    for i in range(1, num):
        index[i] = dist.argmax()
        dist = torch.minimum(dist, (pos - pos[index[i]]).pow(2).sum(-1))
    return index
