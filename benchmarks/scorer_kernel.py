"""Times the importance scorer alone at a point layer's shape (128 clouds x
1,024 tokens, C = 256, 8 heads, bf16 inference), from the tokens to the
scores: the PyTorch formula eager and compiled; the scorer's own choice
(``triton_default``); the Triton kernel from the MLP's hidden layer (GELU,
second layer, LayerNorm, residual and projection in one launch after the
first layer's GEMM: ``triton_from_hidden`` and other configurations,
``triton_rows*``); and the kernel of the tail alone after PyTorch's GELU
and second layer (``triton_tail_only``, what the scorer runs beyond
``SCORE_MLP_MAX_CHANNELS`` channels),
and, from the hidden rows as the layer's stacked projection leaves them
(a strided column slice, the first layer not timed), PyTorch's GELU or
the Triton one (``gelu_triton``) before the second layer and the tail's
kernel (``strided_*_gelu_tail``) against the kernel from the hidden
layer (``strided_from_hidden``, and other configurations,
``strided_rows*``); each with the largest deviation from
the PyTorch formula. Pipelined timing
(calls back to back). Writes JSON records with their provenance
(``--commit`` names the tree's commit where git cannot).

    python benchmarks/scorer_kernel.py   # adds to results/scorer_kernel.json
    python benchmarks/scorer_kernel.py --tokens 65536
    python benchmarks/scorer_kernel.py --tokens 262144 --fp32-tokens
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    add_commit_argument,
    measure,
    print_table,
    provenance,
    write_records,
)

from samsa_geo.nn.attention import ImportanceScorer  # noqa: E402
from samsa_geo.nn.attention import config as config_module  # noqa: E402


#: Row blocks, column blocks of the second layer, warps and pipeline
#: stages timed besides the default configuration.
CONFIGS = [(32, 32, 4, 3), (64, 32, 4, 2), (64, 64, 4, 2), (64, 32, 8, 3),
           (64, 64, 8, 3), (64, 32, 8, 2), (128, 32, 8, 3), (128, 64, 8, 3)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--tokens', type=int, default=128 * 1024)
    p.add_argument('--channels', type=int, default=256)
    p.add_argument('--heads', type=int, default=8)
    p.add_argument('--fp32-tokens', action='store_true',
                   help='float32 tokens x, as SamsaConv under bf16 autocast '
                        'passes them (the hidden rows stay bf16)')
    add_commit_argument(p)
    p.add_argument('--out', default=os.path.join(
        os.path.dirname(__file__), 'results', 'scorer_kernel.json'))
    args = p.parse_args()
    from samsa_geo.nn.attention import _score_triton

    dev = torch.device('cuda')
    torch.manual_seed(0)
    N, C, H = args.tokens, args.channels, args.heads
    scorer = ImportanceScorer(C, H).to(dev, torch.bfloat16).eval()
    x = torch.randn(N, C, device=dev, dtype=torch.bfloat16)
    # The tokens the kernels read: the same values, in float32 with
    # --fp32-tokens.
    xk = x.float() if args.fp32_tokens else x
    compiled = torch.compile(scorer)

    def run(module, fused):
        def fn():
            config_module.set_fused_scorer(fused)
            _score_triton.KERNEL_CONFIG = None
            with torch.no_grad():
                return module(x)
        return fn

    lin1, act, lin2 = scorer.score_nn
    norm, lin = scorer.norm, scorer.lin
    tail = (norm.weight, norm.bias, norm.eps, lin.weight, lin.bias)

    def tail_only():
        with torch.no_grad():
            y = lin2(act(lin1(x)))
            return _score_triton.importance_score_triton(y, xk, *tail)

    def from_hidden(config=None, rows=lambda: lin1(x)):
        # The kernel from the hidden rows that rows() gives (by default
        # the first layer's output, timed with it).
        def fn():
            _score_triton.KERNEL_CONFIG = config
            with torch.no_grad():
                return _score_triton.importance_score_triton(
                    rows(), xk, *tail, lin2.weight, lin2.bias,
                    act.approximate)
        return fn

    # The hidden rows as SamsaAttention has them: a column slice of its
    # stacked projection (queries, keys and values, then the scorer's
    # first layer), strided; timed from the hidden rows on.
    with torch.no_grad():
        other = torch.randn(3 * C, C, device=dev, dtype=x.dtype) / C**0.5
        stacked = F.linear(x, torch.cat([other, lin1.weight]),
                           torch.cat([other.new_zeros(3 * C), lin1.bias]))
    hidden = stacked[:, 3 * C:]  # [N, C], row stride 4C

    def strided(gelu):
        def fn():
            with torch.no_grad():
                y = lin2(gelu(hidden))
                return _score_triton.importance_score_triton(y, xk, *tail)
        return fn

    def strided_from_hidden(config=None):
        return from_hidden(config, lambda: hidden)

    cases = [('pytorch_eager', run(scorer, False)),
             ('pytorch_compiled', run(compiled, False)),
             ('triton_default', run(scorer, True)),
             ('triton_tail_only', tail_only),
             ('triton_from_hidden', from_hidden()),
             ('strided_pytorch_gelu_tail', strided(F.gelu)),
             ('strided_triton_gelu_tail', strided(_score_triton.gelu_triton)),
             ('strided_from_hidden', strided_from_hidden())]
    for rows, cols, warps, stages in CONFIGS:
        if rows * C <= 32768:
            cfg = dict(BLOCK_N=rows, BLOCK_K=cols, num_warps=warps,
                       num_stages=stages)
            name = f"rows{rows}_k{cols}_warps{warps}_stages{stages}"
            cases.append(('triton_' + name, from_hidden(cfg)))
            cases.append(('strided_' + name, strided_from_hidden(cfg)))
    ref = run(scorer, False)().double()
    records = []
    for name, fn in cases:
        rec = dict(op=name, tokens=N, channels=C, heads=H,
                   fp32_tokens=args.fp32_tokens,
                   **provenance(dev, args))
        rec.update(measure(fn, dev, warmup=3, repeat=50, pipelined=True))
        rec['max_abs_err'] = float((fn().double() - ref).abs().max())
        records.append(rec)
    config_module.set_fused_scorer(True)
    _score_triton.KERNEL_CONFIG = None
    print_table(records, ['op', 'ms', 'max_abs_err'])
    write_records(records, args.out)


if __name__ == '__main__':
    main()
