"""Times a fused relative-bias attention kernel alone (inference, bf16) at
the default point classifier's shape (128 clouds x 1,024 queries, 8 heads,
k = 512, head dimension 32): FlexAttention with one set of tile options,
or samsa_geo's Triton kernel (autotuned, or one fixed configuration).
Prints one JSON line, with the largest deviation on two tiles from a
float64 reference (PyTorch's unfused FlexAttention path) and its provenance
(device, torch, commit and dirty, date, flags; ``--commit`` names the
tree's commit where git cannot). Run each option
set in its own process: a failing Triton configuration can poison the CUDA
context.

    python benchmarks/flex_options.py --options '{"BLOCK_M": 64}'
    python benchmarks/flex_options.py --kernel triton
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_commit_argument, measure, provenance  # noqa: E402

from samsa_geo.nn.attention import _attend  # noqa: E402
from samsa_geo.nn.attention._flex import (  # noqa: E402
    PairGeometry,
    biased_flex_attention,
)


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--kernel', default='flex', choices=['flex', 'triton'])
    p.add_argument('--options', default='{}',
                   help='FlexAttention kernel options, or the Triton '
                   'kernel configuration (BLOCK_M, BLOCK_N, num_warps, '
                   'num_stages); {} for the defaults / autotuning')
    p.add_argument('--exact-math', action='store_true',
                   help='Triton kernel: libdevice exp2/log2')
    p.add_argument('--tiles', type=int, default=128)
    p.add_argument('--queries', type=int, default=1024)
    p.add_argument('--heads', type=int, default=8)
    p.add_argument('--k', type=int, default=512)
    p.add_argument('--head-dim', type=int, default=32)
    p.add_argument('--normals', action='store_true')
    add_commit_argument(p)
    args = p.parse_args()
    options = json.loads(args.options) or None
    dev = torch.device('cuda')
    nt, H, T, K, D = args.tiles, args.heads, args.queries, args.k, \
        args.head_dim
    torch.manual_seed(0)
    q = torch.randn(nt, H, T, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(nt, H, K, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn(nt, H, K, D, device=dev, dtype=torch.bfloat16)
    geo = PairGeometry(torch.randn(nt, T, 3, device=dev),
                       torch.randn(nt, H, K, 3, device=dev))
    if args.normals:
        geo.normal_q = torch.randn(nt, T, 3, device=dev)
        geo.normal_k = torch.randn(nt, H, K, 3, device=dev)
    weights = (torch.randn(H, 2, device=dev) * 0.1,
               torch.full((H, ), 0.5413, device=dev),
               torch.randn(H, 2, device=dev) * 0.1,
               torch.zeros(H, device=dev))
    rec = dict(kernel=args.kernel, options=options, tiles=nt, heads=H,
               queries=T, k=K, head_dim=D, normals=args.normals,
               **provenance(dev, args))
    if args.kernel == 'triton':
        from samsa_geo.nn.attention import _bias_triton
        _bias_triton.KERNEL_CONFIG = options
        _bias_triton.FAST_MATH = not args.exact_math
        rec['exact_math'] = args.exact_math

        def run():
            return _attend._run_triton_kernel(q, k, v, None, geo, weights)
    else:
        def run():
            return biased_flex_attention(q, k, v, None, geo, weights,
                                         kernel_options=options)
    try:
        with torch.no_grad():
            out = run()
            # float64 reference: PyTorch's unfused FlexAttention path.
            ref = biased_flex_attention(
                *(t[:2].double() for t in (q, k, v)), None,
                geo.slice(0, 2), tuple(w.double() for w in weights),
                compiled=False)
            rec['max_err'] = float((out[:2].double() - ref).abs().max())
            rec.update(measure(run, dev, warmup=3, repeat=20))
            rec['pairs_per_s'] = nt * H * T * K / rec['ms'] * 1e3
            if args.kernel == 'triton' and options is None:
                best = _bias_triton._biased_attention_tuned.best_config
                rec['best_config'] = dict(
                    **best.kwargs, num_warps=best.num_warps,
                    num_stages=best.num_stages)
    except Exception as e:  # report the failing configuration
        rec['error'] = f'{type(e).__name__}: {str(e)[:200]}'
    print(json.dumps(rec), flush=True)


if __name__ == '__main__':
    main()
