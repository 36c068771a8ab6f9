"""Times the fused inference path's projection GEMM alone at a layer's
shapes (float32 tokens of C = 256 channels under bf16 autocast; the
stacked projection's queries and scorer layer, 512 columns, as replayed
calls from ``FUSED_SAMPLED_ROWS_MIN_TOKENS`` tokens run it, or with the
keys and values too, 1,024 columns): the Triton kernel that rounds the
float32 rows in its GEMM (``triton_default``; other blocks, groups, warps
and stages: ``triton_m*``) against the cast then cuBLAS's GEMM
(``torch_cast_linear``, what the path runs with ``config.fused_cast``
off) and cuBLAS's GEMM alone on rows cast beforehand
(``torch_linear_bf16``, not timed: the cast), each with the largest
deviation from ``torch_cast_linear``'s output. Pipelined timing (calls
back to back). Writes JSON records with their provenance (``--commit``
names the tree's commit where git cannot).

    python benchmarks/cast_linear_kernel.py
    python benchmarks/cast_linear_kernel.py --configs default
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
    print_table,
    provenance,
    write_records,
)

#: Row blocks, column blocks, reduction blocks, warps and stages timed
#: besides the default (groups of 8 row blocks).
CONFIGS = [c for c in itertools.product([64, 128], [64, 128, 256], [32, 64],
                                        [4, 8], [3, 4])
           if not (c[0] == 128 and c[1] == 256 and c[3] == 4)]


def parse_shapes(text):
    # 'MxN' items: rows and output columns.
    return [tuple(int(v) for v in item.split('x'))
            for item in text.split(',') if item]


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--shapes', default='65536x512,65536x1024,32768x1024',
                   help='comma list of MxN cases (rows x output columns)')
    p.add_argument('--channels', type=int, default=256)
    p.add_argument('--configs', default='all', choices=['all', 'default'],
                   help="'default': time the default configuration and "
                   'PyTorch only')
    add_commit_argument(p)
    p.add_argument('--out', default=os.path.join(
        os.path.dirname(__file__), 'results', 'cast_linear_kernel.json'))
    args = p.parse_args()
    from samsa_geo.ops._triton import cast_linear as module

    dev = torch.device('cuda')
    K = args.channels
    records = []
    for M, N in parse_shapes(args.shapes):
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(M, K, device=dev, generator=g)
        w = (torch.randn(N, K, device=dev, generator=g)
             / K**0.5).bfloat16()
        b = torch.randn(N, device=dev, generator=g).bfloat16()
        x_low = x.bfloat16()

        def kernel(config=None):
            def fn():
                module.KERNEL_CONFIG = config
                return module.cast_linear_triton(x, w, b)
            return fn

        ref = F.linear(x.bfloat16(), w, b).float()
        cases = [('torch_cast_linear', lambda: F.linear(x.bfloat16(), w, b)),
                 ('torch_linear_bf16', lambda: F.linear(x_low, w, b)),
                 ('triton_default', kernel())]
        for bm, bn, bk, warps, stages in (CONFIGS if args.configs == 'all'
                                          else []):
            cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
                       num_warps=warps, num_stages=stages)
            cases.append((f'triton_m{bm}_n{bn}_k{bk}_warps{warps}'
                          f'_stages{stages}', kernel(cfg)))
        runs = []
        for name, fn in cases:
            rec = dict(op=name, m=M, n=N, k=K, dtype='fp32->bf16',
                       **provenance(dev, args))
            rec.update(measure_or_error(fn, dev, warmup=3, repeat=30,
                                        pipelined=True))
            if rec['ms'] is not None:
                rec['max_abs_err'] = float((fn().float() - ref).abs().max())
            runs.append(rec)
        module.KERNEL_CONFIG = None
        records += runs
        best = sorted((r for r in runs if r['op'].startswith('triton_m')
                       and r['ms'] is not None), key=lambda r: r['ms'])
        print(f'== {M}x{N}x{K}')
        print_table(runs[:3] + best[:5], ['op', 'ms', 'max_abs_err', 'error'])
    write_records(records, args.out)


if __name__ == '__main__':
    main()
