"""Times the general path's attention of query tiles over their set's keys
alone, at the tile layout a layer of C = 256 (8 heads of 32, k = 256 keys
per set and head, bf16) uses for equal sets of n tokens: samsa_geo's tile
kernels (``_tile_attention_triton``, switch ``config.tile_attention``)
against PyTorch's SDPA with its own choice of backend and with each of
flash, memory-efficient and cuDNN attention forced; forward alone and
forward with backward, pipelined (calls back to back), each with the
largest deviation of its output from the default SDPA's. Writes JSON
records with their provenance::

    python benchmarks/tile_attention_kernel.py --sizes 32x1024,1x262144

``--packed`` times instead the kernels on packed rows (switch
``config.packed_attention``) against the padded path they replace (rows
padded to ``[B, n_max]`` slots, SDPA, rows read back), on a batch of
``--graphs`` sets of 2 to ``--max-size`` tokens (molecule-sized graphs;
64 channels, 4 heads, float32 and bf16), per call and pipelined::

    python benchmarks/tile_attention_kernel.py --packed
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    add_commit_argument,
    measure_or_error,
    parse_sizes,
    print_table,
    provenance,
    write_records,
)

#: Cases besides the kernels: PyTorch's SDPA, free or with one backend.
SDPA_CASES = {'sdpa': None, 'sdpa_flash': 'FLASH_ATTENTION',
              'sdpa_efficient': 'EFFICIENT_ATTENTION',
              'sdpa_cudnn': 'CUDNN_ATTENTION'}


def tile_size(n: int, base: int = 256) -> int:
    """The layer's tile of queries for sets of ``n`` tokens
    (``SamsaAttention._tile_size`` with the default ``tile_size``)."""
    T = max(base, -(-n // 128))
    return -(-T // 64) * 64 if T > base else T


def inputs(B: int, n: int, H: int, D: int, K: int, dev: torch.device):
    """Queries ``[nt, H, T, D]`` (a view of token-major rows), and keys and
    values ``[nt, H, K, D]`` of every tile: a broadcast view for one set,
    copies per tile for several (as the layer makes them)."""
    T = tile_size(n)
    nt = B * n // T
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(nt, T, H, D, device=dev, dtype=torch.bfloat16,
                    generator=g).transpose(1, 2)  # [nt, H, T, D]
    kv = torch.randn(B, H, K, 2 * D, device=dev, dtype=torch.bfloat16,
                     generator=g)
    per_set = nt // B
    if B == 1:
        kv = kv.expand(nt, H, K, 2 * D)
    else:  # [B, H, K, 2D] -> [nt, H, K, 2D]
        kv = kv.repeat_interleave(per_set, dim=0)
    return q, kv[..., :D], kv[..., D:], T, nt


def ragged_sets(num_sets: int, max_size: int, seed: int = 0):
    """Sizes of ``num_sets`` sets of 2 to ``max_size`` tokens (seeded), the
    sorted batch vector of their tokens (CPU)."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(2, max_size + 1, (num_sets, ), generator=g)
    sizes[0] = max_size  # the largest set is there
    return sizes, torch.repeat_interleave(torch.arange(num_sets), sizes)


def packed_main(args, dev: torch.device) -> None:
    from samsa_geo.nn.attention import config
    from samsa_geo.nn.attention._dense import dense_layout, sets_attention

    sizes, batch = ragged_sets(args.graphs, args.max_size)
    batch = batch.to(dev)
    B, n, H = args.graphs, args.max_size, args.heads
    N, C = batch.numel(), args.channels
    layout = dense_layout(batch, B, n)
    records = []
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.Generator(device=dev).manual_seed(0)
        qkv = torch.randn(N, 3 * C, device=dev, dtype=dtype, generator=g)
        grad = torch.randn(N, C, device=dev, dtype=dtype, generator=g)
        with config.attention_config(packed_attention=False):
            ref = sets_attention(qkv, layout, B, n, H, 0.0).float()
        for name, on in (('packed_triton', True), ('padded_sdpa', False)):
            for pass_ in args.passes.split(','):
                leaf = qkv.detach().requires_grad_(pass_ == 'fwdbwd')

                def fn(on=on, leaf=leaf, pass_=pass_):
                    with config.attention_config(packed_attention=on):
                        out = sets_attention(leaf, layout, B, n, H, 0.0)
                    if pass_ == 'fwdbwd':
                        out.backward(grad)
                    return out

                for pipelined in (False, True):
                    rec = dict(op=name, batch=B, n=n, tokens=N, heads=H,
                               head_dim=C // H, dtype=str(dtype)[6:],
                               pipelined=pipelined, **{'pass': pass_},
                               **provenance(dev, args))
                    rec.update(measure_or_error(fn, dev, warmup=3,
                                                repeat=args.repeat,
                                                pipelined=pipelined))
                    if rec['ms'] is not None:
                        with torch.no_grad():
                            out = fn(pass_='fwd').float()
                        rec['max_abs_err'] = float((out - ref).abs().max())
                    records.append(rec)
    print(f'== {B} sets of 2-{n} tokens ({N} in all), {C} channels, '
          f'{H} heads')
    print_table(records, ['op', 'dtype', 'pass', 'pipelined', 'ms',
                          'max_abs_err', 'error'])
    write_records(records, args.out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--sizes', default='32x1024,8x4096,2x16384,1x65536,'
                   '1x262144', help='comma list of BxN cases')
    p.add_argument('--channels', type=int, default=None,
                   help='256 (64 with --packed)')
    p.add_argument('--heads', type=int, default=None,
                   help='8 (4 with --packed)')
    p.add_argument('--k', type=int, default=256)
    p.add_argument('--passes', default='fwd,fwdbwd')
    p.add_argument('--repeat', type=int, default=30)
    add_commit_argument(p)
    p.add_argument('--out', default=os.path.join(
        os.path.dirname(__file__), 'results', 'tile_attention_kernel.json'))
    p.add_argument('--packed', action='store_true',
                   help='the kernels on packed rows of small sets')
    p.add_argument('--graphs', type=int, default=64)
    p.add_argument('--max-size', type=int, default=25)
    args = p.parse_args()
    # Defaults: the layer of C = 256, 8 heads; small sets 64, 4 heads.
    args.channels = args.channels or (64 if args.packed else 256)
    args.heads = args.heads or (4 if args.packed else 8)
    if args.packed:
        return packed_main(args, torch.device('cuda'))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from samsa_geo.nn.attention._tile_attention_triton import (
        tile_attention_triton,
    )

    dev = torch.device('cuda')
    H, K = args.heads, args.k
    D = args.channels // H
    records = []
    for B, n in parse_sizes(args.sizes):
        q, k, v, T, nt = inputs(B, n, H, D, K, dev)
        grad = torch.randn_like(q)

        def sdpa(backend):
            def fn(q, k, v):
                if backend is None:
                    return F.scaled_dot_product_attention(q, k, v)
                with sdpa_kernel(getattr(SDPBackend, backend)):
                    return F.scaled_dot_product_attention(q, k, v)
            return fn

        cases = {'triton': tile_attention_triton}
        cases.update({name: sdpa(b) for name, b in SDPA_CASES.items()})
        ref = F.scaled_dot_product_attention(q, k, v).float()
        runs = []
        for name, attend in cases.items():
            for pass_ in args.passes.split(','):
                leaves = [t.detach().requires_grad_(pass_ == 'fwdbwd')
                          for t in (q, k, v)]

                def fn(attend=attend, leaves=leaves, pass_=pass_):
                    out = attend(*leaves)
                    if pass_ == 'fwdbwd':
                        out.backward(grad)
                    return out

                rec = dict(op=name, batch=B, n=n, k=K, heads=H, head_dim=D,
                           tile=T, tiles=nt, dtype='bf16',
                           **{'pass': pass_}, **provenance(dev, args))
                rec.update(measure_or_error(fn, dev, warmup=3,
                                            repeat=args.repeat,
                                            pipelined=True))
                if rec['ms'] is not None and pass_ == 'fwd':
                    with torch.no_grad():
                        out = attend(q, k, v).float()
                    rec['max_abs_err'] = float((out - ref).abs().max())
                runs.append(rec)
        records += runs
        print(f'== {B}x{n}: {nt} tiles of {T} queries, {K} keys')
        print_table(runs, ['op', 'pass', 'ms', 'max_abs_err', 'error'])
    write_records(records, args.out)


if __name__ == '__main__':
    main()
