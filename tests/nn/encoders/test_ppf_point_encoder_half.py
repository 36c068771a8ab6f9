import torch

import samsa_geo.nn.encoders.ppf_point_encoder as ppf_module
from samsa_geo.nn.encoders import PPFPointEncoder


def _clouds():
    # Cloud 0: 8 points about 200 apart (float16 squared distances
    # overflow); cloud 1: 20 ordinary points.
    gen = torch.Generator().manual_seed(0)
    pos = torch.cat([torch.randn(8, 3, generator=gen) * 200,
                     torch.randn(20, 3, generator=gen)]).half()
    batch = torch.tensor([0] * 8 + [1] * 20)
    return pos, batch, gen


def test_half_batch_isolation():
    torch.manual_seed(0)
    enc = PPFPointEncoder(16, num_neighbors=8).half().eval()
    pos, batch, gen = _clouds()
    moved = pos.clone()
    moved[8:] += torch.randn(20, 3, generator=gen).half()
    with torch.no_grad():
        out = enc(pos, batch)
        out_moved = enc(moved, batch)
        alone = enc(pos[:8])
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    # Moving cloud 1 leaves cloud 0's tokens exactly unchanged:
    assert torch.equal(out[:8], out_moved[:8])
    assert torch.equal(out[:8], alone)
    assert not torch.equal(out[8:], out_moved[8:])


def test_half_neighbours_ranked_in_float32(monkeypatch):
    seen = []
    knn_neighbours = ppf_module.knn_neighbours

    def recording(x, y, *args, **kwargs):
        seen.append((x.dtype, y.dtype))
        return knn_neighbours(x, y, *args, **kwargs)

    monkeypatch.setattr(ppf_module, 'knn_neighbours', recording)
    enc = PPFPointEncoder(16, num_neighbors=8).half().eval()
    pos, batch, _ = _clouds()
    with torch.no_grad():
        enc(pos, batch)
    assert seen == [(torch.float32, torch.float32)]
