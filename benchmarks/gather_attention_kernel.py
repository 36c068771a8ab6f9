"""Times the fused inference path's attention kernel alone
(``_gather_attention_triton``: every token attends to its set's selected
candidates, keys and values gathered by index inside the kernel) at a
layer's shape (C = 256, 8 heads of 32, k = 256 candidates per set and
head, bf16): its default configuration (``triton_default``) against
the same kernel on the selected rows alone (``triton_rows``, a
``[B, H, k, 2D]`` batch read slot by slot, as replayed calls from
``FUSED_SAMPLED_ROWS_MIN_TOKENS`` tokens give it), other blocks of
queries and keys, warps and stages (``triton_m*``), and
cuDNN's attention (``sdpa_gathered``, what the unfused path runs after
gathering the keys and values; the gather not timed), each with the
largest deviation from the default's output. Pipelined timing (calls
back to back). Writes JSON records with their provenance (``--commit``
names the tree's commit where git cannot).

    python benchmarks/gather_attention_kernel.py --sizes 32x1024,1x65536
    python benchmarks/gather_attention_kernel.py --configs default
"""
import argparse
import itertools
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

#: Query blocks, key blocks, warps and stages timed besides the default.
CONFIGS = [c for c in itertools.product([64, 128, 256], [64, 128, 256],
                                        [4, 8], [1, 2, 3])
           if c[0] * c[1] <= 32768]


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--sizes', default='32x1024,8x4096,2x16384,1x65536,'
                   '1x262144', help='comma list of BxN cases')
    p.add_argument('--channels', type=int, default=256)
    p.add_argument('--heads', type=int, default=8)
    p.add_argument('--k', type=int, default=256)
    p.add_argument('--configs', default='all', choices=['all', 'default'],
                   help="'default': time the default configuration and "
                   'cuDNN only')
    add_commit_argument(p)
    p.add_argument('--out', default=os.path.join(
        os.path.dirname(__file__), 'results', 'gather_attention_kernel.json'))
    args = p.parse_args()
    from samsa_geo.nn.attention import _gather_attention_triton as module

    dev = torch.device('cuda')
    H, K = args.heads, args.k
    D = args.channels // H
    records = []
    for B, n in parse_sizes(args.sizes):
        N = B * n
        g = torch.Generator(device=dev).manual_seed(0)
        q = torch.randn(N, H * D, device=dev, dtype=torch.bfloat16,
                        generator=g)
        kv = torch.randn(N, 2 * H * D, device=dev, dtype=torch.bfloat16,
                         generator=g)
        # K distinct tokens of its own set per set and head: [B, H, K].
        idx = torch.rand(B * H, n, device=dev, generator=g).argsort(-1)
        idx = idx[:, :K].view(B, H, K) + n * torch.arange(
            B, device=dev).view(B, 1, 1)

        def kernel(config=None):
            def fn():
                module.KERNEL_CONFIG = config
                return module.gather_attention_triton(q, kv, None, idx, None,
                                                      n)
            return fn

        ref = kernel()().float()
        qh = q.view(B, n, H, D).transpose(1, 2)  # [B, H, n, D]
        heads = torch.arange(H, device=dev).view(1, H, 1)
        rows = kv.view(N, H, 2, D)[idx, heads]  # [B, H, K, 2, D]
        kh, vh = rows[:, :, :, 0].contiguous(), rows[:, :, :, 1].contiguous()
        selected = rows.view(B, H, K, 2 * D)  # [B, H, K, 2, D] -> [.., 2D]
        cases = [('triton_default', kernel()),
                 ('triton_rows',
                  lambda: module.gather_attention_triton(q, selected, None,
                                                         idx, None, n)),
                 ('sdpa_gathered',
                  lambda: F.scaled_dot_product_attention(qh, kh, vh)
                  .transpose(1, 2).reshape(N, H * D))]
        for bm, bn, warps, stages in (CONFIGS if args.configs == 'all'
                                      else []):
            cfg = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps,
                       num_stages=stages)
            cases.append((f'triton_m{bm}_n{bn}_warps{warps}_stages{stages}',
                          kernel(cfg)))
        runs = []
        for name, fn in cases:
            rec = dict(op=name, batch=B, n=n, k=K, heads=H, head_dim=D,
                       dtype='bf16', **provenance(dev, args))
            rec.update(measure_or_error(fn, dev, warmup=3, repeat=30,
                                        pipelined=True))
            if rec['ms'] is not None:
                rec['max_abs_err'] = float((fn().float() - ref).abs().max())
            runs.append(rec)
        module.KERNEL_CONFIG = None
        records += runs
        best = sorted((r for r in runs if r['op'].startswith('triton_m')
                       and r['ms'] is not None), key=lambda r: r['ms'])
        print(f'== {B}x{n}')
        print_table(runs[:3] + best[:5], ['op', 'ms', 'max_abs_err', 'error'])
    write_records(records, args.out)


if __name__ == '__main__':
    main()
