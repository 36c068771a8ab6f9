"""Times the backward pass of the importance scorer's float32 tail alone
(what the training node ``ScoreTail`` runs after recomputing the second
layer's output ``y``): PyTorch's ops (LayerNorm forward and backward,
residual sum, two float32 GEMMs, column sums, casts: ``pytorch``) against
the Triton kernel of ``_score_grad_triton`` in its default configuration
(``triton_default``) and others (``triton_rows*``), at a layer's shape
(C = 256, 8 heads, ``y`` in bf16 as under autocast, float32 tokens), each
with the largest relative deviation of its gradients from PyTorch's.
Pipelined timing (calls back to back). Writes JSON records with their
provenance (``--commit`` names the tree's commit where git cannot).

    python benchmarks/scorer_grad_kernel.py --tokens 65536
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    add_commit_argument,
    measure_or_error,
    print_table,
    provenance,
    write_records,
)

from samsa_geo.nn.attention._score_grad import _tail_grads  # noqa: E402

#: Row blocks, warps and programs per multiprocessor timed besides the
#: default configuration.
CONFIGS = [(16, 4, 2), (16, 4, 8), (16, 4, 16), (16, 2, 8), (16, 2, 16),
           (16, 8, 4), (16, 8, 8), (32, 4, 4), (32, 4, 8), (32, 4, 16),
           (32, 8, 4), (32, 8, 8), (64, 8, 4), (64, 8, 2)]
#: Most values of a row block timed: on an H200, 64 rows of 256 channels
#: asked for 286,720 bytes of shared memory (232,448 available).
MAX_BLOCK = 8192


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--tokens', type=int, default=65536)
    p.add_argument('--channels', type=int, default=256)
    p.add_argument('--heads', type=int, default=8)
    add_commit_argument(p)
    p.add_argument('--out', default=os.path.join(
        os.path.dirname(__file__), 'results', 'scorer_grad_kernel.json'))
    args = p.parse_args()
    from samsa_geo.nn.attention import _score_grad_triton as module

    dev = torch.device('cuda')
    torch.manual_seed(0)
    N, C, H = args.tokens, args.channels, args.heads
    y = torch.randn(N, C, device=dev).bfloat16()
    x = torch.randn(N, C, device=dev)
    grad = torch.randn(N, H, device=dev)
    ws, bs = torch.randn(H, C, device=dev), torch.randn(H, device=dev)
    ln_w, ln_b = torch.rand(C, device=dev) + 0.5, torch.randn(C, device=dev)
    b2 = torch.randn(C, device=dev).bfloat16()
    need = (True, ) * 9

    def pytorch():
        g_x, g_y, g_ws, g_bs, g_lnw, g_lnb, g_b2 = _tail_grads(
            y.float(), x, grad, ws, bs, ln_w, ln_b, b2, torch.float32, 1e-5,
            need)
        return g_x, g_y.to(y.dtype), g_ws, g_lnw, g_lnb, g_b2

    def kernel(config=None):
        def fn():
            module.KERNEL_CONFIG = config
            return module.score_tail_backward_triton(y, x, grad, ws, ln_w,
                                                     ln_b, 1e-5)
        return fn

    cases = [('pytorch', pytorch), ('triton_default', kernel())]
    width = 1 << max(4, (C - 1).bit_length())  # the kernel's BLOCK_C
    for rows, warps, per_sm in CONFIGS:
        if rows * width > MAX_BLOCK:
            continue
        cfg = dict(BLOCK_N=rows, num_warps=warps, programs_per_sm=per_sm)
        cases.append((f'triton_rows{rows}_warps{warps}_programs{per_sm}',
                      kernel(cfg)))
    ref = [t.double() for t in pytorch()]
    records = []
    for name, fn in cases:
        rec = dict(op=name, tokens=N, channels=C, heads=H,
                   **provenance(dev, args))
        rec.update(measure_or_error(fn, dev, warmup=3, repeat=50,
                                    pipelined=True))
        if rec['ms'] is not None:
            rec['max_rel_err'] = max(
                float((a.double() - r).norm() / r.norm())
                for a, r in zip(fn(), ref))
        records.append(rec)
    module.KERNEL_CONFIG = None
    print_table(records, ['op', 'ms', 'max_rel_err', 'error'])
    write_records(records, args.out)


if __name__ == '__main__':
    main()
