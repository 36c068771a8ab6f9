"""Times the fused inference path's top-k selection alone
(``select_topk_triton``: one kernel launch per set and head, or, for sets
beyond one block, the chunks' winners and their merge) at the layer's
shapes (8 heads, k = 256, float32 scores): equal sets (``1x65536``,
``1x262144``: 16 and 64 chunks of 4,096 tokens and a merge) and ragged
ones given by ``batch`` (``32x1024``), for every ``RADIX_BITS`` (the bits
of the k-th largest score found per pass of its threshold search: 32 /
RADIX_BITS reductions of 2^RADIX_BITS counts each), against
``torch.topk`` (``torch_topk``: the top k per set and head of the padded
``[B, H, n]`` scores, with their indices sorted into token order as the
kernel writes them); every record says whether the kernel's ids equal
``torch.topk``'s (``equal``; the scores have no ties). Pipelined timing
(calls back to back). Writes JSON records with their provenance
(``--commit`` names the tree's commit where git cannot).

    python benchmarks/selection_kernel.py  # adds to its results JSON
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    add_commit_argument,
    measure,
    parse_sizes,
    print_table,
    provenance,
    write_records,
)

from samsa_geo.nn.attention import _topk_triton as topk  # noqa: E402
from samsa_geo.nn.attention._dispatch import selection_chunks  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--sizes', default='32x1024,1x65536,1x262144',
                   help='sets x tokens, comma-separated')
    p.add_argument('--heads', type=int, default=8)
    p.add_argument('-k', type=int, default=256)
    p.add_argument('--radix', default='1,2,4',
                   help='RADIX_BITS values (1, 2 or 4) to time, '
                        'comma-separated')
    add_commit_argument(p)
    p.add_argument('--out', default=os.path.join(
        os.path.dirname(__file__), 'results', 'selection_kernel.json'))
    args = p.parse_args()
    dev = torch.device('cuda')
    radixes = [int(r) for r in args.radix.split(',')]
    records = []
    for B, n in parse_sizes(args.sizes):
        records += _case(B, n, args.heads, args.k, radixes, dev, args)
    print_table(records, ['op', 'sets', 'tokens', 'chunks', 'ms', 'equal'])
    write_records(records, args.out)


def _case(B, n, H, k, radixes, dev, args):
    g = torch.Generator(device=dev).manual_seed(0)
    score = torch.randn(B * n, H, device=dev, generator=g)
    # Ragged sets where B > 1 (given by 'batch', as a PyG batch is), one
    # set otherwise.
    batch = None
    if B > 1:
        batch = torch.arange(B, device=dev).repeat_interleave(n)
    k_max = min(k, n)

    def kernel():
        return topk.select_topk_triton(score, None, batch, B, n, k, k_max)

    def torch_topk():
        ids = score.view(B, n, H).topk(k_max, dim=1).indices  # [B, k, H]
        ids = ids.transpose(1, 2).sort(-1).values  # [B, H, k], token order
        return ids + torch.arange(B, device=dev).view(B, 1, 1) * n

    ref = torch_topk()
    common = dict(sets=B, tokens=n, heads=H, k=k,
                  chunks=selection_chunks(n, 0, k_max))
    records = []
    cases = [('torch_topk', None, torch_topk)] + [
        (f'triton_radix{r}', r, kernel) for r in radixes]
    saved = topk.RADIX_BITS
    try:
        for name, radix, fn in cases:
            if radix is not None:
                topk.RADIX_BITS = radix
            rec = dict(op=name, radix_bits=radix, **common,
                       **provenance(dev, args))
            rec.update(measure(fn, dev, warmup=3, repeat=50, pipelined=True))
            rec['equal'] = bool(torch.equal(fn(), ref))
            records.append(rec)
    finally:
        topk.RADIX_BITS = saved
    return records


if __name__ == '__main__':
    main()
