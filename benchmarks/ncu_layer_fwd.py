"""One layer's eager forwards, for NVIDIA Nsight Compute (``ncu``) to
profile its kernels: ``SamsaConv(256, heads=8, k=256)`` in evaluation on
one set of ``--tokens`` float32 tokens under bf16 autocast, its CUDA
graphs off, called ``--calls`` times (the first compiles the Triton
kernels). The profile in ``benchmarks/results/ncu_layer_fwd.txt`` is
that of the second call's kernels::

    KERNELS='importance_score|gather_attention|_select_topk|_merge_topk'
    KERNELS="$KERNELS|residual_affine|nvjet|copy_kernel"
    ncu --target-processes all -k regex:"$KERNELS" \\
        --launch-skip 11 --launch-count 11 --section SpeedOfLight \\
        --section Occupancy --section LaunchStats \\
        --section MemoryWorkloadAnalysis \\
        python benchmarks/ncu_layer_fwd.py

Nsight Compute runs each kernel alone at its base clocks (and several
times, for its counters): its durations are longer than the kernels'
times in a run, and only its ratios (memory and compute throughput,
occupancy) and resource counts (registers, shared memory) are quoted.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from layer import build, call  # noqa: E402

from samsa_geo.nn.attention import config  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--tokens', type=int, default=65536)
    p.add_argument('--calls', type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    conv = build('samsa_conv_batch', 256, 8, 256).cuda().eval()
    x = torch.randn(args.tokens, 256, device='cuda')
    batch = torch.zeros(args.tokens, dtype=torch.long, device='cuda')
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16), \
            config.attention_config(cuda_graphs=False):
        for _ in range(args.calls):
            call('samsa_conv_batch', conv, x, batch, 1)
    torch.cuda.synchronize()


if __name__ == '__main__':
    main()
