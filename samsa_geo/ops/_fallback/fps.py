"""Farthest point sampling in pure PyTorch."""
import torch
from torch import Tensor

from samsa_geo.ops._fallback.blocks import pad


def fps(src: Tensor, ptr: Tensor, ratio: Tensor,
        random_start: bool) -> Tensor:
    r"""Farthest point sampling over all examples at once.

    The examples are padded to :obj:`[B, N_max]` and every iteration picks the
    next point of each example simultaneously; only the number of samples is
    looped over.
    """
    device = src.device
    batch_size = ptr.numel() - 1
    deg = ptr[1:] - ptr[:-1]
    num_samples = sample_counts(deg, ratio)
    total = int(num_samples.sum())
    if total == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    sizes = deg.tolist()
    n_max, s_max = max(sizes), int(num_samples.max())
    pos = pad(src, ptr, sizes, 0.0)  # [F, B, N_max]
    valid = torch.arange(n_max, device=device) < deg.unsqueeze(1)  # [B, N_max]

    arange = torch.arange(batch_size, device=device)
    start = start_points(deg, random_start)
    out = torch.empty(batch_size, s_max, dtype=torch.long, device=device)
    out[:, 0] = start
    # Padding slots hold -1 so that they never win the arg-max:
    dist = sq_dist_to(pos, pos[:, arange, start]).masked_fill(~valid, -1.0)
    for i in range(1, s_max):
        idx = dist.argmax(dim=1)  # [B]
        out[:, i] = idx
        dist = torch.minimum(dist, sq_dist_to(pos, pos[:, arange, idx]))

    keep = torch.arange(s_max, device=device) < num_samples.unsqueeze(1)
    return (out + ptr[:-1].unsqueeze(1))[keep]


def sample_counts(deg: Tensor, ratio: Tensor) -> Tensor:
    r"""Samples per example, :math:`\lceil r \cdot N_b \rceil`, with the
    arithmetic of :obj:`torch_cluster` so that counts agree bit for bit."""
    return torch.ceil(deg.to(torch.float) * ratio).long()


def start_points(deg: Tensor, random_start: bool) -> Tensor:
    r"""The local index of the first sample of every example :obj:`[B]`:
    uniform in :obj:`[0, deg)` (drawn with :func:`torch.rand` on
    :obj:`deg`'s device) or :obj:`0`."""
    if not random_start:
        return torch.zeros_like(deg)
    start = (torch.rand(deg.numel(), device=deg.device) * deg).long()
    return torch.minimum(start, (deg - 1).clamp(min=0))


def sq_dist_to(pos: Tensor, centre: Tensor) -> Tensor:
    r"""Squared distances :obj:`[B, N_max]` of feature-major points
    :obj:`[F, B, N_max]` to one centre per example :obj:`[F, B]`, summed
    over features in order like :obj:`torch_cluster`."""
    if pos.size(0) > 8:
        return (pos - centre.unsqueeze(-1)).square().sum(0)
    dist = (pos[0] - centre[0].unsqueeze(1)).square()
    for f in range(1, pos.size(0)):
        dist = dist + (pos[f] - centre[f].unsqueeze(1)).square()
    return dist
