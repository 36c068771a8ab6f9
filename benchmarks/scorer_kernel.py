"""Times the importance scorer alone at a point layer's shape (128 clouds x
1,024 tokens, C = 256, 8 heads, bf16 inference): the PyTorch formula eager
and compiled, and the fused Triton kernel of its tail (default and other
configurations), with the largest deviation from the PyTorch formula.
Pipelined timing (calls back to back). Writes JSON records.

    python benchmarks/scorer_kernel.py   # adds to results/scorer_kernel.json
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    device_name,
    measure,
    print_table,
    write_records,
)

from samsa_geo.nn.attention import ImportanceScorer, config  # noqa: E402


#: Row blocks and warps timed besides the default configuration.
CONFIGS = [(4, 4), (8, 4), (16, 4), (16, 8), (32, 8), (64, 8)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--tokens', type=int, default=128 * 1024)
    p.add_argument('--channels', type=int, default=256)
    p.add_argument('--heads', type=int, default=8)
    p.add_argument('--out', default=os.path.join(
        os.path.dirname(__file__), 'results', 'scorer_kernel.json'))
    args = p.parse_args()
    from samsa_geo.nn.attention import _score_triton

    dev = torch.device('cuda')
    torch.manual_seed(0)
    N, C, H = args.tokens, args.channels, args.heads
    scorer = ImportanceScorer(C, H).to(dev, torch.bfloat16).eval()
    x = torch.randn(N, C, device=dev, dtype=torch.bfloat16)
    compiled = torch.compile(scorer)

    def run(module, fused, config=None):
        def fn():
            config.set_fused_scorer(fused)
            _score_triton.KERNEL_CONFIG = config
            with torch.no_grad():
                return module(x)
        return fn

    cases = [('pytorch_eager', run(scorer, False)),
             ('pytorch_compiled', run(compiled, False)),
             ('triton_default', run(scorer, True))]
    for rows, warps in CONFIGS:
        cfg = dict(BLOCK_N=rows, num_warps=warps)
        if rows * C <= 16384:
            name = f"triton_rows{cfg['BLOCK_N']}_warps{cfg['num_warps']}"
            cases.append((name, run(scorer, True, cfg)))
    ref = run(scorer, False)().double()
    records = []
    for name, fn in cases:
        rec = dict(op=name, tokens=N, channels=C, heads=H,
                   device=device_name(dev), torch=torch.__version__)
        rec.update(measure(fn, dev, warmup=3, repeat=50, pipelined=True))
        rec['max_abs_err'] = float((fn().double() - ref).abs().max())
        records.append(rec)
    config.set_fused_scorer(True)
    _score_triton.KERNEL_CONFIG = None
    print_table(records, ['op', 'ms', 'max_abs_err'])
    write_records(records, args.out)


if __name__ == '__main__':
    main()
