"""Memory that one layer's training forward keeps for its backward, counted
on the CPU: the bytes of every distinct storage that autograd saves (a
view keeps its whole storage alive), grouped by the source line that saved
it. A proxy for the activation part of the peak training memory on a GPU,
which ``benchmarks/layer.py`` measures (``peak_mb``)::

    python benchmarks/saved_memory.py
    python benchmarks/saved_memory.py --sizes 1x16384,32x1024 --top 12

The layers are built and called as ``benchmarks/layer.py`` does, under
bf16 autocast unless ``--dtype fp32``.
"""
import argparse
import collections
import os
import sys
import traceback
from typing import Dict, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_sizes  # noqa: E402
from layer import build, call  # noqa: E402

#: Source files whose lines name a saved tensor (the innermost such frame).
OWN = ('samsa_geo', 'layer.py', 'torch_geometric')


def saved_storages(op: str, B: int, n: int, C: int, H: int, k: int,
                   dtype: str) -> Tuple[int, Dict[tuple, int]]:
    """Total bytes of the distinct storages saved by one training forward
    of ``op`` on ``B`` sets of ``n`` tokens, and the bytes per (source
    line, shape, dtype) of the tensor that first saved each storage."""
    torch.manual_seed(0)
    model = build(op, C, H, k).train()
    x = torch.randn(B * n, C, requires_grad=True)
    batch = torch.arange(B).repeat_interleave(n)
    seen: Dict[int, int] = {}
    where: Dict[tuple, int] = collections.Counter()

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen[ptr] = t.untyped_storage().nbytes()
            frames = [f for f in traceback.extract_stack()[:-1]
                      if any(s in f.filename for s in OWN)]
            line = f'{os.path.basename(frames[-1].filename)}:' \
                   f'{frames[-1].lineno}' if frames else '?'
            where[(line, tuple(t.shape), str(t.dtype))] += seen[ptr]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast('cpu', dtype=torch.bfloat16,
                           enabled=dtype == 'bf16'):
        call(op, model, x, batch, B)
    return sum(seen.values()), where


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--sizes', default='1x16384')
    p.add_argument('--ops', default='samsa_conv_batch,full_layer')
    p.add_argument('--channels', type=int, default=256)
    p.add_argument('--heads', type=int, default=8)
    p.add_argument('--k', type=int, default=256)
    p.add_argument('--dtype', default='bf16', choices=['bf16', 'fp32'])
    p.add_argument('--top', type=int, default=8)
    args = p.parse_args()
    print(f'CPU, torch {torch.__version__}, C={args.channels}, '
          f'H={args.heads}, k={args.k}, {args.dtype}')
    for B, n in parse_sizes(args.sizes):
        for op in args.ops.split(','):
            total, where = saved_storages(op, B, n, args.channels,
                                          args.heads, args.k, args.dtype)
            print(f'{op} {B}x{n}: {total / 2**20:.1f} MB saved, '
                  f'{total / (B * n):.0f} bytes per token')
            for (line, shape, dt), nbytes in sorted(
                    where.items(), key=lambda kv: -kv[1])[:args.top]:
                print(f'  {nbytes / 2**20:8.1f} MB  {line:28s} '
                      f'{str(list(shape)):22s} {dt}')


if __name__ == '__main__':
    main()
