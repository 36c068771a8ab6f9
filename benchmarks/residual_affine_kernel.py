"""Times SamsaConv's inference residual sum and batch norm alone, as the
layer runs it under bf16 autocast (a float32 stream ``x``, the bfloat16
branch output ``h``, 256 channels, the evaluation batch norm as a
per-channel scale and shift): ``residual_affine``'s Triton kernel
(``triton``; ``triton_copy`` also writes the bfloat16 copy that the MLP
reads, as the layer's first residual does) against PyTorch's addition,
``addcmul`` and cast (``pytorch``, ``pytorch_copy``), pipelined, with the
bytes moved per call over the time (``gb_s``: the memory bandwidth the
call reaches) and the largest deviation from PyTorch's float32 output
(of the float32 output; for ``pytorch_copy``, of its bfloat16 copy). Writes
JSON records with their provenance (``--commit`` names the tree's commit
where git cannot).

    python benchmarks/residual_affine_kernel.py  # adds to its results JSON
    python benchmarks/residual_affine_kernel.py --sweep

``--sweep`` prints, instead, the kernel's time over a grid of
``BLOCK_VALUES`` x ``NUM_WARPS``, the constants that size its programs.
"""
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import measure, provenance, token_kernel_main  # noqa: E402

from samsa_geo.ops import residual_affine  # noqa: E402
from samsa_geo.ops._triton import residual_affine as kernels  # noqa: E402


def main():
    token_kernel_main('residual_affine_kernel', _case, _sweep,
                      ['op', 'tokens', 'ms', 'gb_s', 'max_abs_err'])


def _inputs(M, C, dev):
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(M, C, device=dev, generator=g)
    h = torch.randn(M, C, device=dev, generator=g).bfloat16()
    scale = torch.rand(C, device=dev, generator=g) + 0.5
    shift = torch.randn(C, device=dev, generator=g)
    return x, h, scale, shift


def _bytes(M, C, copy):
    # x read (float32), h read (bfloat16), y written (float32), the copy
    # written (bfloat16).
    return M * C * (4 + 2 + 4 + (2 if copy else 0))


def _case(M, C, dev, args):
    x, h, scale, shift = _inputs(M, C, dev)
    ref = torch.addcmul(shift, x + h, scale)
    cases = [
        ('pytorch', False, lambda: torch.addcmul(shift, x + h, scale)),
        ('pytorch_copy', True, lambda: torch.addcmul(shift, x + h, scale)
         .to(torch.bfloat16)),
        ('triton', False, lambda: residual_affine(x, h, scale, shift,
                                                  backend='triton')[0]),
        ('triton_copy', True, lambda: residual_affine(
            x, h, scale, shift, copy_dtype=torch.bfloat16,
            backend='triton')[0]),
    ]
    records = []
    for name, copy, fn in cases:
        rec = dict(op=name, tokens=M, channels=C, **provenance(dev, args))
        rec.update(measure(fn, dev, warmup=3, repeat=30, pipelined=True))
        rec['gb_s'] = _bytes(M, C, copy) / rec['ms'] / 1e6
        rec['max_abs_err'] = float((fn().float() - ref).abs().max())
        records.append(rec)
    return records


def _sweep(M, C, dev):
    x, h, scale, shift = _inputs(M, C, dev)
    saved = kernels.BLOCK_VALUES, kernels.NUM_WARPS
    try:
        for values, warps in itertools.product(
                (1024, 2048, 4096, 8192, 16384), (2, 4, 8, 16)):
            kernels.BLOCK_VALUES, kernels.NUM_WARPS = values, warps
            times = [measure(lambda: residual_affine(
                x, h, scale, shift, copy_dtype=copy, backend='triton'),
                dev, warmup=3, repeat=30, pipelined=True)['ms']
                for copy in (None, torch.bfloat16)]
            rates = [_bytes(M, C, copy) / ms / 1e6
                     for copy, ms in zip((False, True), times)]
            print(f'tokens {M} BLOCK_VALUES {values} NUM_WARPS {warps}: '
                  f'{times[0]:.4f} ms ({rates[0]:.0f} GB/s), with the copy '
                  f'{times[1]:.4f} ms ({rates[1]:.0f} GB/s)')
    finally:
        kernels.BLOCK_VALUES, kernels.NUM_WARPS = saved


if __name__ == '__main__':
    main()
