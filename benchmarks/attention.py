"""SamsaAttention against full attention, SamsaConv against GPSConv.

One record per measurement (op, n, k, channels, heads, batch, pass, dtype,
norm, ms, peak_mb, device, torch, commit, dirty, date, flags) added to
``benchmarks/results/attention.json``.

SamsaConv and both GPSConvs are built with their default arguments (their
default norm: batch norm); ``--layer-norm`` builds them with
``norm='layer_norm'`` instead (the records' ``norm`` and flags say which).

    python benchmarks/attention.py --device cpu
    python benchmarks/attention.py --device cuda --dtype bf16 --compile
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GPSConv

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    add_commit_argument,
    device_name,
    measure_or_error,
    parse_sizes,
    print_table,
    write_records,
)

from samsa_geo.nn import SamsaAttention, SamsaConv  # noqa: E402

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16,
          'fp16': torch.float16}


class FullAttention(nn.Module):
    """The same layer with exact full attention through SDPA (the peer)."""
    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.lin_q = nn.Linear(channels, channels)
        self.lin_kv = nn.Linear(channels, 2 * channels)
        self.lin_out = nn.Linear(channels, channels)

    def forward(self, x, batch_size: int):
        N, C = x.shape
        n, H = N // batch_size, self.heads
        # [N, C] -> [B, H, n, D] (equal-size sets)
        q = self.lin_q(x).view(batch_size, n, H, -1).transpose(1, 2)
        k, v = self.lin_kv(x).view(batch_size, n, H, -1).transpose(
            1, 2).chunk(2, dim=-1)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.lin_out(o.transpose(1, 2).reshape(N, C))


class Projections(nn.Module):
    """The layer's linear projections alone: the floor of any attention."""
    def __init__(self, channels: int):
        super().__init__()
        self.lin_q = nn.Linear(channels, channels)
        self.lin_kv = nn.Linear(channels, 2 * channels)
        self.lin_out = nn.Linear(channels, channels)

    def forward(self, x, batch_size: int):
        q = self.lin_q(x)
        kv = self.lin_kv(x)
        return self.lin_out(q + kv[:, :q.size(1)] + kv[:, q.size(1):])


#: Ops built with a norm (the layers): the others have none.
NORMED = ('samsa_conv', 'gps_conv_multihead', 'gps_conv_performer')


def build(op: str, C: int, H: int, k: int, layer_norm: bool = False):
    """The module of ``op``; the layers (:data:`NORMED`) with their default
    norm, or ``norm='layer_norm'`` where ``layer_norm``."""
    norm = dict(norm='layer_norm') if layer_norm else {}
    if op == 'samsa_attention':
        return SamsaAttention(C, heads=H, k=k)
    if op == 'sdpa':
        return FullAttention(C, H)
    if op == 'projections':
        return Projections(C)
    if op == 'samsa_conv':
        return SamsaConv(C, None, heads=H, k=k, **norm)
    if op == 'gps_conv_multihead':
        return GPSConv(C, None, heads=H, attn_type='multihead', **norm)
    if op == 'gps_conv_performer':
        return GPSConv(C, None, heads=H, attn_type='performer', **norm)
    raise ValueError(op)


def call(op: str, model, x, batch, B: int, n: int):
    if op in ('sdpa', 'projections'):
        return model(x, B)
    if op == 'samsa_attention':
        return model(x, batch, num_graphs=B, max_num_nodes=n)
    if op == 'samsa_conv':
        return model(x, None, batch, num_graphs=B, max_num_nodes=n)
    return model(x, None, batch)


def run_case(op, B, n, args, device, dtype, compiled: bool):
    C, H, k = args.channels, args.heads, args.k
    records = []
    model = build(op, C, H, k, args.layer_norm).to(device=device,
                                                   dtype=dtype)
    fn_model = model
    if compiled:
        fn_model = torch.compile(model, dynamic=False, mode=args.compile_mode)
    x = torch.randn(B * n, C, device=device, dtype=dtype)
    batch = None
    if B > 1 or op.startswith('gps'):
        batch = torch.arange(B, device=device).repeat_interleave(n)
    for pas in args.passes:
        model.train(pas == 'fwdbwd')
        xg = x.detach().requires_grad_(pas == 'fwdbwd')

        def fn():
            if pas == 'fwd':
                with torch.no_grad():
                    call(op, fn_model, xg, batch, B, n)
            else:
                out = call(op, fn_model, xg, batch, B, n)
                out.float().square().mean().backward()
                model.zero_grad(set_to_none=True)
                xg.grad = None

        rec = dict(op=op + ('_compiled' if compiled else ''), n=n,
                   k=k if 'samsa' in op else None, channels=C, heads=H,
                   batch=B, **{'pass': pas}, dtype=args.dtype,
                   norm=('layer_norm' if args.layer_norm else 'default')
                   if op in NORMED else None,
                   device=device_name(device), torch=torch.__version__,
                   compile_mode=args.compile_mode if compiled else None)
        rec.update(measure_or_error(fn, device, warmup=args.warmup,
                                    repeat=args.repeat, modules=[model]))
        records.append(rec)
        print_table([rec], ['op', 'batch', 'n', 'pass', 'ms', 'peak_mb'])
    return records


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available()
                        else 'cpu')
    parser.add_argument('--dtype', default=None, choices=list(DTYPES))
    parser.add_argument('--channels', type=int, default=256)
    parser.add_argument('--heads', type=int, default=8)
    parser.add_argument('--k', type=int, default=256)
    parser.add_argument('--sizes', type=str, default=None,
                        help='comma list of BxN cases, e.g. 1x65536,32x1024')
    parser.add_argument('--ops', type=str, default='samsa_attention,sdpa,'
                        'projections,samsa_conv,gps_conv_multihead,'
                        'gps_conv_performer')
    parser.add_argument('--passes', type=str, default='fwd,fwdbwd')
    parser.add_argument('--compile', action='store_true',
                        help='also time torch.compile of samsa and sdpa')
    parser.add_argument('--compile-mode', default=None,
                        help="e.g. 'reduce-overhead' (CUDA graphs)")
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeat', type=int, default=10)
    parser.add_argument('--max-gps-n', type=int, default=65536,
                        help='skip GPSConv above this set size')
    parser.add_argument('--layer-norm', action='store_true',
                        help="build SamsaConv and the GPSConvs with "
                        "norm='layer_norm' (default: their default norm)")
    add_commit_argument(parser)
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    args.dtype = args.dtype or ('bf16' if device.type == 'cuda' else 'fp32')
    args.passes = args.passes.split(',')
    dtype = DTYPES[args.dtype]
    if args.sizes is None:
        if device.type == 'cuda':
            args.sizes = ('1x1024,1x4096,1x16384,1x65536,1x262144,'
                          '32x1024,128x150')
        else:
            args.sizes = '1x1024,1x4096,1x16384,8x1024,128x150'
    cases = parse_sizes(args.sizes)
    torch.manual_seed(0)
    records = []
    for B, n in cases:
        for op in args.ops.split(','):
            if op.startswith('gps') and n > args.max_gps_n:
                continue
            records += run_case(op, B, n, args, device, dtype, False)
            if args.compile and op in ('samsa_attention', 'sdpa'):
                records += run_case(op, B, n, args, device, dtype, True)
            if device.type == 'cuda':  # the case's model is gone now
                torch.cuda.empty_cache()
    out = args.out or os.path.join(os.path.dirname(__file__), 'results',
                                   'attention.json')
    write_records(records, out, commit=args.commit)
    print_table(records, ['op', 'batch', 'n', 'pass', 'dtype', 'ms',
                          'peak_mb'])


if __name__ == '__main__':
    main()
