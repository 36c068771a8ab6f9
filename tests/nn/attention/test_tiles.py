"""Equal-size sets cut into whole tiles are a reshape (no index, no
gather): the same layout, output and gradients as the indexed tiles."""
import pytest
import torch

from samsa_geo.nn import SamsaAttention
from samsa_geo.nn.attention import _tiles
from samsa_geo.nn.attention._sets import set_info
from samsa_geo.nn.attention._tiles import (
    from_tiles,
    make_tiles,
    per_tile,
    to_tiles,
)


def indexed_tiles(info, batch, N, T):
    # The general packed layout, as unequal sets get it.
    class Unequal:
        equal = False

        def __getattr__(self, name):
            return getattr(info, name)
    return make_tiles(Unequal(), batch, N, True, T)


def test_reshape_tiles_equal_indexed_tiles():
    B, n, H, T = 3, 64, 2, 16
    batch = torch.arange(B).repeat_interleave(n)
    info = set_info(B * n, batch, 8, 0, False, batch.device, B, n)
    tiles = make_tiles(info, batch, B * n, True, T)
    assert tiles.index is None and tiles.tile_set is None
    assert (tiles.num_tiles, tiles.size, tiles.per_set) == (B * n // T, T,
                                                            n // T)
    ref = indexed_tiles(info, batch, B * n, T)
    assert ref.index is not None and ref.num_tiles == tiles.num_tiles
    q = torch.randn(B * n, H, 5)
    keys = torch.randn(B, H, 8, 5)
    assert torch.equal(to_tiles(q, tiles), to_tiles(q, ref))
    assert torch.equal(per_tile(keys, tiles), per_tile(keys, ref))
    assert torch.equal(from_tiles(to_tiles(q, tiles), tiles), q)


def test_tiles_not_dividing_the_sets_keep_the_index():
    B, n = 2, 40
    batch = torch.arange(B).repeat_interleave(n)
    info = set_info(B * n, batch, 8, 0, False, batch.device, B, n)
    tiles = make_tiles(info, batch, B * n, True, 16)
    assert tiles.index is not None and tiles.per_set == 1


@pytest.mark.parametrize('sampling', ['hard', 'soft'])
def test_attention_with_reshaped_tiles_equals_indexed_tiles(monkeypatch,
                                                            sampling):
    torch.manual_seed(0)
    attn = SamsaAttention(32, heads=4, k=6, sampling=sampling, padded=False,
                          tile_size=16).train()
    x = torch.randn(3 * 64, 32)
    batch = torch.arange(3).repeat_interleave(64)

    def step():
        torch.manual_seed(1)
        xg = x.clone().requires_grad_()
        out = attn(xg, batch, num_graphs=3, max_num_nodes=64)
        out.square().sum().backward()
        grads = [xg.grad] + [p.grad for p in attn.parameters()]
        attn.zero_grad(set_to_none=True)
        return [out] + grads

    calls = []
    make = _tiles.make_tiles

    def spy(info, batch, N, packed, T):
        tiles = make(info, batch, N, packed, T)
        calls.append(tiles)
        return tiles

    import samsa_geo.nn.attention.samsa_attention as sa
    monkeypatch.setattr(sa, 'make_tiles', spy)
    got = step()
    assert calls[-1].per_set == 4 and calls[-1].index is None
    monkeypatch.setattr(
        sa, 'make_tiles',
        lambda info, batch, N, packed, T: indexed_tiles(info, batch, N, T))
    want = step()
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
