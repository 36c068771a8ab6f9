"""Times SamsaConv's training batch norm of a residual sum alone, as the
layer runs it under bf16 autocast (a float32 stream ``x``, the bfloat16
branch output ``h``, 256 channels): ``residual_batch_norm``'s Triton
kernels (``triton``) against PyTorch's addition, batch norm and cast to
bfloat16 for the MLP (``pytorch``), forward (``fwd``) and forward and
backward with gradients on both outputs (``fwdbwd``), pipelined, with the
largest deviation of the output from PyTorch's. Writes JSON records with
their provenance (``--commit`` names the tree's commit where git cannot).

    python benchmarks/batch_norm_kernel.py  # adds to its results JSON
    python benchmarks/batch_norm_kernel.py --tokens 65536,262144
    python benchmarks/batch_norm_kernel.py --sweep  # the reductions' sizes

``--sweep`` prints, instead, the two reduction passes (statistics and
gradient sums) over a grid of ``MAX_SPANS`` x ``BLOCK_VALUES``, the
constants that size their programs.
"""
import itertools
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import measure, provenance, token_kernel_main  # noqa: E402

from samsa_geo.ops import residual_batch_norm  # noqa: E402
from samsa_geo.ops._triton import batch_norm as kernels  # noqa: E402


def main():
    token_kernel_main('batch_norm_kernel', _case, _sweep,
                      ['op', 'tokens', 'pass', 'ms', 'max_abs_err'])


def _case(M, C, dev, args):
    torch.manual_seed(0)
    x = torch.randn(M, C, device=dev).requires_grad_()
    h = torch.randn(M, C, device=dev).bfloat16().requires_grad_()
    w = (torch.rand(C, device=dev) + 0.5).requires_grad_()
    b = torch.randn(C, device=dev).requires_grad_()
    rm, rv = torch.zeros(C, device=dev), torch.ones(C, device=dev)
    go = torch.randn(M, C, device=dev)
    gz = torch.randn(M, C, device=dev).bfloat16()

    def triton():
        return residual_batch_norm(x, h, w, b, rm, rv,
                                   copy_dtype=torch.bfloat16)

    def pytorch():
        y = F.batch_norm(x + h, rm, rv, w, b, training=True)
        return y, y.to(torch.bfloat16)

    ref = pytorch()[0].detach()
    records = []
    for name, fn in (('pytorch', pytorch), ('triton', triton)):
        for pass_ in ('fwd', 'fwdbwd'):
            def call(fn=fn, pass_=pass_):
                if pass_ == 'fwd':
                    with torch.no_grad():
                        return fn()
                y, z = fn()
                torch.autograd.backward([y, z], [go, gz])
                for t in (x, h, w, b):
                    t.grad = None
            rec = dict(op=name, tokens=M, channels=C, **{'pass': pass_},
                       **provenance(dev, args))
            rec.update(measure(call, dev, warmup=3, repeat=20,
                               pipelined=True))
            with torch.no_grad():
                rec['max_abs_err'] = float((fn()[0] - ref).abs().max())
            records.append(rec)
    return records


def _sweep(M, C, dev):
    x = torch.randn(M, C, device=dev)
    h = torch.randn(M, C, device=dev).bfloat16()
    w, b = torch.ones(C, device=dev), torch.zeros(C, device=dev)
    rm, rv = torch.zeros(C, device=dev), torch.ones(C, device=dev)
    go = torch.randn(M, C, device=dev)
    gz = torch.randn(M, C, device=dev).bfloat16()
    saved = kernels.MAX_SPANS, kernels.BLOCK_VALUES
    try:
        for spans, values in itertools.product((128, 256, 512, 1024),
                                               (1024, 2048, 4096, 8192)):
            kernels.MAX_SPANS, kernels.BLOCK_VALUES = spans, values
            _, _, mean, invstd = kernels.batch_norm_stats(
                x, h, w, b, rm, rv, 0.1, 1e-5)
            stats = measure(lambda: kernels.batch_norm_stats(
                x, h, w, b, rm, rv, 0.1, 1e-5), dev, warmup=3, repeat=20,
                pipelined=True)['ms']
            grad = measure(lambda: kernels.batch_norm_grad(
                go, gz, x, h, w, mean, invstd, True), dev, warmup=3,
                repeat=20, pipelined=True)['ms']
            print(f'tokens {M} MAX_SPANS {spans} BLOCK_VALUES {values}: '
                  f'statistics {stats:.3f} ms, gradient sums {grad:.3f} ms')
    finally:
        kernels.MAX_SPANS, kernels.BLOCK_VALUES = saved


if __name__ == '__main__':
    main()
