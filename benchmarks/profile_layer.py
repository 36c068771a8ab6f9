"""Profile of one SamsaConv call (and the full-attention peer): GPU kernels,
GPU time, host synchronisations and the top operators by host time::

    python benchmarks/profile_layer.py --sizes 32x1024 --pass fwd
"""
import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from layer import DTYPES, build, call  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--sizes', default='32x1024')
    p.add_argument('--ops', default='samsa_conv,samsa_conv_hints,full_layer')
    p.add_argument('--pass', dest='pas', default='fwd',
                   choices=['fwd', 'fwdbwd'])
    p.add_argument('--dtype', default='bf16', choices=list(DTYPES))
    p.add_argument('--top', type=int, default=12)
    p.add_argument('--sort', default='self_cpu_time_total',
                   help="column the operator table is sorted by, e.g. "
                   "'self_device_time_total'")
    args = p.parse_args()
    device = torch.device('cuda')
    for size in args.sizes.split(','):
        B, n = (int(v) for v in size.split('x'))
        x = torch.randn(B * n, 256, device=device)
        batch = torch.arange(B, device=device).repeat_interleave(n)
        for op in args.ops.split(','):
            model = build(op, 256, 8, 256).to(device)
            model.train(args.pas == 'fwdbwd')
            xg = x.detach().requires_grad_(args.pas == 'fwdbwd')

            def step():
                with torch.autocast('cuda', dtype=DTYPES[args.dtype]), \
                        torch.set_grad_enabled(args.pas == 'fwdbwd'):
                    out = call(op, model, xg, batch, B)
                if args.pas == 'fwdbwd':
                    out.float().square().mean().backward()

            for _ in range(3):
                step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU,
                                     ProfilerActivity.CUDA]) as prof:
                step()
                torch.cuda.synchronize()
            events = prof.events()
            kernels = [e for e in events
                       if e.device_type == torch.autograd.DeviceType.CUDA]
            syncs = [e for e in events if 'Synchronize' in e.name
                     or e.name in ('aten::item', 'aten::_local_scalar_dense')]
            gpu_ms = sum(e.device_time for e in kernels) / 1e3
            print(f'== {op} {B}x{n} {args.pas}: {len(kernels)} kernels, '
                  f'{gpu_ms:.3f} ms GPU, {len(syncs)} sync events')
            print(prof.key_averages().table(
                sort_by=args.sort, row_limit=args.top,
                max_name_column_width=60))


if __name__ == '__main__':
    main()
