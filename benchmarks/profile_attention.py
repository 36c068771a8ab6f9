"""Profiles one SamsaAttention call (kernels sorted by device time).

    python benchmarks/profile_attention.py --n 65536 --batch 1
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from samsa_geo.nn import SamsaAttention


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--n', type=int, default=65536)
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--channels', type=int, default=256)
    p.add_argument('--heads', type=int, default=8)
    p.add_argument('--k', type=int, default=256)
    p.add_argument('--rows', type=int, default=25)
    args = p.parse_args()
    dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    attn = SamsaAttention(args.channels, heads=args.heads, k=args.k).to(
        dev, torch.bfloat16 if dev.type == 'cuda' else torch.float32)
    B, n = args.batch, args.n
    x = torch.randn(B * n, args.channels, device=dev,
                    dtype=attn.lin_q.weight.dtype, requires_grad=True)
    batch = torch.arange(B, device=dev).repeat_interleave(n) if B > 1 else None
    kw = dict(num_graphs=B, max_num_nodes=n) if B > 1 else {}
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                     if dev.type == 'cuda' else [])
    key = 'cuda_time_total' if dev.type == 'cuda' else 'cpu_time_total'
    for mode in ('fwd', 'fwdbwd'):
        attn.train(mode == 'fwdbwd')
        for _ in range(3):
            out = attn(x, batch, **kw)
            if mode == 'fwdbwd':
                out.float().square().mean().backward()
        with profile(activities=acts) as prof:
            for _ in range(5):
                if mode == 'fwd':
                    with torch.no_grad():
                        attn(x, batch, **kw)
                else:
                    attn(x, batch, **kw).float().square().mean().backward()
            if dev.type == 'cuda':
                torch.cuda.synchronize()
        print(f'==== {mode} B={B} n={n} (5 calls)')
        print(prof.key_averages().table(sort_by=key, row_limit=args.rows))


if __name__ == '__main__':
    main()
