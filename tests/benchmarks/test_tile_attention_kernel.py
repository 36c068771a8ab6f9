import argparse
import os.path as osp
import sys

import pytest
import torch

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', '..', 'benchmarks'))
import tile_attention_kernel as bench  # noqa: E402

from samsa_geo.nn import SamsaAttention  # noqa: E402
from samsa_geo.nn.attention._sets import set_info  # noqa: E402


@pytest.mark.parametrize('B,n', [(32, 1024), (8, 4096), (2, 16384),
                                 (1, 65536), (1, 262144)])
def test_the_benchmark_times_the_layers_tile_layout(B, n):
    # The tile of queries the benchmark uses is the layer's, and its keys
    # are one broadcast view for one set, per-tile copies for several.
    attn = SamsaAttention(256, heads=8, k=256)
    batch = torch.arange(B).repeat_interleave(n)
    info = set_info(B * n, batch, 256, 0, False, batch.device, B, n)
    assert bench.tile_size(n) == attn._tile_size(info, B * n)
    # (2 heads of 16 channels: small tensors on the CPU.)
    q, k, v, T, nt = bench.inputs(B, n, 2, 16, 256, torch.device('cpu'))
    assert T == bench.tile_size(n)
    assert q.shape == (nt, 2, T, 16) and nt * T == B * n
    assert q.transpose(1, 2).is_contiguous()  # token-major rows
    assert k.shape == v.shape == (nt, 2, 256, 16)
    assert (k.stride(0) == 0) == (B == 1)


def test_packed_mode_times_both_paths_on_the_same_sets(monkeypatch, spy,
                                                       triton_modules):
    # --packed (its kernels interpreted on the CPU here): every dtype,
    # path, pass and timing mode has a record, and the kernels' output
    # equals the padded path's.
    kernel = triton_modules('samsa_geo.nn.attention._tile_attention_triton')
    launches = spy(kernel, 'packed_attention_triton', keep_args=False)
    from samsa_geo.nn.attention import _dense
    monkeypatch.setattr(_dense, 'triton_serves', lambda device: True)
    written = []
    monkeypatch.setattr(bench, 'write_records',
                        lambda records, path: written.extend(records))
    args = argparse.Namespace(graphs=5, max_size=9, heads=2, channels=32,
                              passes='fwd,fwdbwd', repeat=1, commit=None,
                              out=None)
    spy_calls = []
    real = _dense.sets_attention

    def spy(qkv, layout, *rest):
        spy_calls.append(layout.ptr.tolist())
        return real(qkv, layout, *rest)

    monkeypatch.setattr(_dense, 'sets_attention', spy)
    bench.packed_main(args, torch.device('cpu'))
    assert len(written) == 2 * 2 * 2 * 2
    assert len(launches) > 0
    sizes, _ = bench.ragged_sets(5, 9)
    assert int(sizes.max()) == 9 and int(sizes.min()) >= 2
    assert spy_calls[0] == [0, *sizes.cumsum(0).tolist()]
    for rec in written:
        assert rec['ms'] is not None and rec['tokens'] == int(sizes.sum())
        tol = 1e-5 if rec['dtype'] == 'float32' else 3e-2
        assert rec['max_abs_err'] <= tol, rec
