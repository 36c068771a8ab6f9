"""Host time of one Triton kernel launch: Triton's own ``kernel[grid](...)``
against samsa_geo's :class:`~samsa_geo.ops._triton.launch.Launcher`, and
the whole ``select_topk_triton`` call (output allocation and arguments
included), for the segmented top-k of 32 sets x 1,024 tokens x 8 heads::

    python benchmarks/launch.py --commit $(git rev-parse HEAD)

Launches are issued back to back without synchronising; the host time per
launch is the wall time of ``--calls`` launches over their number. Records
(``op``: ``triton_call``, ``launcher``, ``select_topk_triton``; ``us``)
go to ``benchmarks/results/launch.json``.
"""
import argparse
import os
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, provenance, write_records  # noqa: E402
from _common import add_commit_argument  # noqa: E402


def host_us(fn, calls: int) -> float:
    """Microseconds of host time per call of ``fn``, ``calls`` in a row."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    us = (time.perf_counter() - t0) / calls * 1e6
    torch.cuda.synchronize()
    return us


def cases(device: torch.device, B: int = 32, n: int = 1024, H: int = 8,
          k: int = 256) -> dict:
    """The three ways of launching the segmented top-k of ``B`` sets of
    ``n`` tokens (``H`` heads, ``k`` kept), by record name; each returns
    the ``[B, H, k]`` token indices it writes."""
    from samsa_geo.nn.attention import _topk_triton as topk
    gen = torch.Generator(device=device).manual_seed(0)
    score = torch.randn(B * n, H, device=device, generator=gen)
    idx = torch.empty(B, H, k, dtype=torch.long, device=device)
    grid = (B * H, )
    # The kernel's parameters as select_topk_triton passes them for equal
    # sets without registers: each set is one chunk (chunk = n, 1 chunk).
    params = (score, score, score, score, idx, idx, score.stride(0),
              score.stride(1), score.stride(0), score.stride(1),
              idx.stride(0), idx.stride(1), B * n, k, 0, k, n,
              topk.search_steps(B * n, topk.SEARCH_FANOUT), n, 1)
    meta = dict(H=H, EQUAL=True, HAS_KB=False, HAS_BOUNDS=False,
                BLOCK_S=max(16, triton.next_power_of_2(n)),
                BLOCK_K=max(16, triton.next_power_of_2(k)),
                FANOUT=topk.SEARCH_FANOUT, num_warps=4)

    def triton_call():
        topk._select_topk[grid](*params, **meta)
        return idx

    def launcher():
        topk._launch_select_topk(grid, *params, **meta)
        return idx

    return {
        'triton_call': triton_call,
        'launcher': launcher,
        'select_topk_triton': lambda: topk.select_topk_triton(
            score, None, None, B, n, k, k),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--calls', type=int, default=2000)
    add_commit_argument(p)
    p.add_argument('--out', default=None)
    args = p.parse_args()
    device = torch.device('cuda')
    B, n, H, k = 32, 1024, 8, 256
    stamp = provenance(device, args)
    records = [dict(stamp, op=op, batch=B, n=n, heads=H, k=k,
                    us=host_us(fn, args.calls))
               for op, fn in cases(device).items()]
    print_table(records, ['op', 'batch', 'n', 'us'])
    out = args.out or os.path.join(os.path.dirname(__file__), 'results',
                                   'launch.json')
    write_records(records, out)


if __name__ == '__main__':
    main()
