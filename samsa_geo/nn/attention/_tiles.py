r"""Query layout of the attention: *tiles*.

A tile holds up to ``T`` consecutive queries of one set. The padded layout
is the special case of one tile per set (``T = n_max``); the packed layout
bounds the padding to ``T - 1`` queries per set, so batches with very
uneven set sizes never pay for ``B * n_max`` queries. Keys are gathered once
per tile, so memory stays
:math:`O(N \cdot C + \text{tiles} \cdot k \cdot C)`.
"""
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from samsa_geo.nn.attention._sets import SetInfo, search_right


@dataclass
class Tiles:
    r"""Query layout.

    Attributes:
        num_tiles (int): number of tiles.
        size (int): :math:`T`, queries per tile.
        tile_set (Tensor, optional): ``[num_tiles]`` set of each tile, or
            ``None`` when tile ``t`` is set ``t``.
        index (Tensor, optional): ``[N]`` flat slot ``tile * T + pos`` of
            each token, or ``None`` when the layout is a plain reshape.
        shared (bool): all tiles belong to one set (keys are broadcast).
        per_set (int): tiles of each set where the layout is a reshape of
            equal-size sets cut into ``per_set`` tiles each (``tile_set``
            is then ``None``; tile ``t`` belongs to set ``t // per_set``).
    """
    num_tiles: int
    size: int
    tile_set: Optional[Tensor]
    index: Optional[Tensor]
    shared: bool = False
    per_set: int = 1


def make_tiles(info: SetInfo, batch: Optional[Tensor], num_tokens: int,
               packed: bool, tile_size: int) -> Tiles:
    r"""The query layout, computed on the device without any read-back.

    Without ``packed``, one tile per set of :math:`n_{\max}` queries (a
    reshape for equal-size sets). With it, tiles of ``tile_size`` queries;
    their number is the bound
    :math:`\min(\lfloor (N + B (T - 1)) / T \rfloor, B \lceil n_{\max} / T
    \rceil)`, and tiles past the sets' own hold padding only (they read
    the last set's keys; their rows are never gathered back).
    """
    B, n_max = info.num_sets, info.max_size
    packed = packed or n_max is None
    if n_max is not None:
        packed = packed and tile_size < n_max
    if not packed and info.equal:  # a reshape
        return Tiles(B, n_max, None, None)
    T = tile_size
    if info.equal and batch is not None and n_max > 0 and n_max % T == 0:
        # Equal sets cut into whole tiles: still a reshape, no index.
        return Tiles(B * (n_max // T), T, None, None, per_set=n_max // T)
    device = info.ptr.device
    if batch is None:  # one set cut into tiles that share its keys
        num_tiles = -(-num_tokens // T)
        index = None if num_tiles * T == num_tokens else \
            torch.arange(num_tokens, device=device)
        return Tiles(num_tiles, T, None, index, shared=True)
    loc = torch.arange(num_tokens, device=device) - info.ptr[batch]
    if not packed:
        return Tiles(B, n_max, None, batch * n_max + loc)
    per_set = (info.size + T - 1) // T  # [B]
    ends = torch.cumsum(per_set, 0)
    num_tiles = (num_tokens + B * (T - 1)) // T
    if n_max is not None:
        num_tiles = min(num_tiles, B * -(-n_max // T))
    num_tiles = max(num_tiles, 1)
    tile_set = search_right(ends, torch.arange(num_tiles, device=device))
    tile_set = tile_set.clamp_(max=B - 1)  # padding tiles: the last set
    index = ((ends - per_set)[batch] + loc // T) * T + loc % T
    return Tiles(num_tiles, T, tile_set, index)


def to_tiles(t: Tensor, tiles: Tiles) -> Tensor:
    """``[N, H, F]`` token rows -> ``[num_tiles, H, T, F]``."""
    N, H, Fd = t.shape
    if tiles.index is None:
        return t.view(tiles.num_tiles, tiles.size, H, Fd).transpose(1, 2)
    out = t.new_zeros(tiles.num_tiles * tiles.size, H, Fd)
    out.index_copy_(0, tiles.index, t)
    # [num_tiles * T, H, F] -> [num_tiles, H, T, F]
    return out.view(tiles.num_tiles, tiles.size, H, Fd).transpose(1, 2)


def from_tiles(t: Tensor, tiles: Tiles) -> Tensor:
    """``[num_tiles, H, T, F]`` -> ``[N, H, F]`` token rows."""
    nt, H, T, Fd = t.shape
    flat = t.transpose(1, 2).reshape(nt * T, H, Fd)  # [num_tiles * T, H, F]
    if tiles.index is None:
        return flat
    return flat.index_select(0, tiles.index)


def per_tile(t: Tensor, tiles: Tiles) -> Tensor:
    """Per-set tensor ``[B, ...]`` -> per-tile ``[num_tiles, ...]``."""
    if tiles.shared:  # one set: broadcast, no copy (backward is a sum)
        return t.expand(tiles.num_tiles, *t.shape[1:])
    if tiles.per_set > 1:  # [B, ...] -> [B, per_set, ...] -> [nt, ...]
        rest = t.shape[1:]
        return t.unsqueeze(1).expand(t.size(0), tiles.per_set,
                                     *rest).reshape(tiles.num_tiles, *rest)
    return t if tiles.tile_set is None else t.index_select(0, tiles.tile_set)
