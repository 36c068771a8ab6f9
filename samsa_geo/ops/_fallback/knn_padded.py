"""The padded brute-force kNN strategy: examples of similar size padded to a
common length and ranked in groups of whole examples."""
from typing import Iterator, List, Tuple

import torch
from torch import Tensor

from samsa_geo.ops._fallback import blocks

PAD_SLACK = 2**12


def use_padding(size_x: List[int], size_y: List[int]) -> bool:
    r"""Whether padding every example to the largest one wastes little
    memory: at most a quarter of the points plus :obj:`PAD_SLACK` rows, for
    both :obj:`x` and :obj:`y` (always true for a single example)."""
    for sizes in (size_x, size_y):
        total = sum(sizes)
        if len(sizes) * max(sizes) > 1.25 * total + PAD_SLACK:
            return False
    return True


def example_blocks(size_x: List[int], size_y: List[int], chunk_size: int
                   ) -> Iterator[Tuple[int, int, int, int, int]]:
    r"""Splits padded examples into blocks ``(b0, b1, q0, q1, s)``: queries
    ``q0:q1`` of examples ``b0:b1`` against their first :obj:`s` candidates.

    Consecutive examples are grouped while the block, padded to the group's
    largest example, holds at most :obj:`chunk_size` entries; an example too
    large on its own is split into query-row chunks (at least one row).
    Groups without any query-candidate pair are skipped.
    """
    num_examples = len(size_x)
    if min(size_x) == max(size_x) and min(size_y) == max(size_y):
        # Equal sizes: fixed-size groups, no per-example loop.
        nx, ny = size_x[0], size_y[0]
        if nx * ny == 0:
            return
        if nx * ny > chunk_size:
            rows = max(chunk_size // nx, 1)
            for b in range(num_examples):
                for q0 in range(0, ny, rows):
                    yield b, b + 1, q0, min(q0 + rows, ny), nx
            return
        group = chunk_size // (nx * ny)
        for b0 in range(0, num_examples, group):
            yield b0, min(b0 + group, num_examples), 0, ny, nx
        return

    b0 = 0
    while b0 < num_examples:
        nx, ny = size_x[b0], size_y[b0]
        if nx * ny > chunk_size:
            rows = max(chunk_size // nx, 1)
            for q0 in range(0, ny, rows):
                yield b0, b0 + 1, q0, min(q0 + rows, ny), nx
            b0 += 1
            continue
        b1 = b0 + 1
        while b1 < num_examples:
            nx_next, ny_next = max(nx, size_x[b1]), max(ny, size_y[b1])
            if (b1 + 1 - b0) * nx_next * ny_next > chunk_size:
                break
            nx, ny, b1 = nx_next, ny_next, b1 + 1
        if nx * ny > 0:
            yield b0, b1, 0, ny, nx
        b0 = b1


def knn_padded(x: Tensor, y: Tensor, k: int, ptr_x: Tensor, ptr_y: Tensor,
               size_x: List[int], size_y: List[int], cosine: bool,
               chunk_size: int) -> Tensor:
    r"""The padded path of :func:`~samsa_geo.ops._fallback.knn.knn`; every
    block is one top-k call on :obj:`[G, Q, S]`, without host
    synchronisation inside the loop."""
    device, batch_size = x.device, len(size_x)
    nx_max, ny_max = max(size_x), max(size_y)
    k_max = min(k, nx_max)
    # Missing candidates are masked after the distances: padding them with
    # +inf coordinates would tie with real squared distances that overflow
    # to +inf, and top-k could then return them.
    xp = blocks.pad(x, ptr_x, size_x, 0.0)
    yp = blocks.pad(y, ptr_y, size_y, 0.0)
    count_x = ptr_x[1:] - ptr_x[:-1]
    missing = (torch.arange(nx_max, device=device).unsqueeze(0)
               >= count_x.unsqueeze(1)).unsqueeze(1)  # [B, 1, N_max]

    full = (min(size_y) == ny_max and min(size_x) >= k_max)
    nbr = (torch.empty if full else torch.zeros)(
        batch_size, ny_max, k_max, dtype=torch.long, device=device)
    for b0, b1, q0, q1, s in example_blocks(size_x, size_y, chunk_size):
        dist = blocks.distances(yp[:, b0:b1, q0:q1], xp[:, b0:b1, :s], cosine)
        if min(size_x[b0:b1]) < s:  # padded: rank it strictly last
            blocks.exclude(dist, missing[b0:b1, :, :s])
        kk = min(k, s)
        nbr[b0:b1, q0:q1, :kk] = dist.topk(kk, dim=-1, largest=False,
                                           sorted=True)[1]  # [G, Q, kk]

    rows = (ptr_y[:-1].view(-1, 1, 1) + torch.arange(
        ny_max, device=device).view(1, -1, 1)).expand_as(nbr)
    cols = nbr + ptr_x[:-1].view(-1, 1, 1)  # [B, M_max, k_max]
    if full:
        return torch.stack([rows.reshape(-1), cols.view(-1)], dim=0)
    count_y = ptr_y[1:] - ptr_y[:-1]
    keep = ((torch.arange(ny_max, device=device).view(1, -1, 1)
             < count_y.view(-1, 1, 1))
            & (torch.arange(k_max, device=device).view(1, 1, -1)
               < count_x.clamp(max=k).view(-1, 1, 1)))
    return torch.stack([rows[keep], cols[keep]], dim=0)
