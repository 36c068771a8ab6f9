"""Timings of the geometry ops: pure-PyTorch fallback vs torch-cluster.

Cases: farthest point sampling of 1,024 of 10,000 points (one cloud and a
batch of 8 clouds), k-nearest neighbours (k=16) of every point of a cloud
of 100,000 points, and the kNN graph (k=16) of batches of 8 and 128 clouds
of 1,024 points. Writes JSON records ``{op, impl, n, k, batch,
queries, device, torch, ms}`` (median milliseconds) to
``benchmarks/results/ops_<device>.json``.

    python benchmarks/ops.py --device cpu
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import write_records  # noqa: E402

import samsa_geo.typing  # noqa: E402
from samsa_geo.ops import fps, knn, knn_graph  # noqa: E402


def timed(fn, device, repeats, slow_s=2.0):
    """Median wall time in ms; a first call slower than ``slow_s`` is the only
    measurement (it dominates any warm-up effect)."""
    def once():
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1000

    first = once()
    if first > slow_s * 1000:
        return first, 1
    times = [once() for _ in range(repeats)]
    return statistics.median(times), repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--out', default=None,
                        help='output JSON (default: '
                        'benchmarks/results/ops_<device>.json)')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--knn-points', type=int, default=100_000)
    parser.add_argument('--knn-queries', type=int, default=10_000,
                        help='queries of the smaller kNN case')
    parser.add_argument('--threads', type=int, default=None,
                        help='intra-op threads (default: torch default)')
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('CUDA is not available')
    out_path = args.out or os.path.join(os.path.dirname(__file__), 'results',
                                        f'ops_{device.type}.json')
    impls = ['torch'] + (['compiled']
                         if samsa_geo.typing.WITH_TORCH_CLUSTER else [])
    gen = torch.Generator().manual_seed(0)
    records = []

    def record(op, impl, n, k, batch, fn, queries=None):
        ms, reps = timed(fn, device, args.repeats)
        rec = dict(op=op, impl=impl, n=n, k=k, batch=batch, queries=queries,
                   device=device.type, torch=torch.__version__,
                   ms=round(ms, 3), repeats=reps,
                   threads=torch.get_num_threads())
        records.append(rec)
        print(json.dumps(rec), flush=True)

    num_points, num_samples = 10_000, 1024
    ratio = num_samples / num_points
    for clouds in (1, 8):
        pos = torch.rand(clouds * num_points, 3, generator=gen).to(device)
        batch = torch.arange(clouds, device=device).repeat_interleave(
            num_points)
        for impl in impls:
            out = fps(pos, batch, ratio, False, backend=impl)
            assert out.numel() == clouds * num_samples
            record('fps', impl, num_points, num_samples, clouds,
                   lambda: fps(pos, batch, ratio, False, backend=impl))

    # Timed on the first --knn-queries queries against all N points, then
    # on all N queries. The fallback is brute force (O(N * M)) on CUDA and
    # an exact spatial grid for such large examples on CPU.
    k, n = 16, args.knn_points
    pos = torch.rand(n, 3, generator=gen).to(device)
    for m in sorted({min(args.knn_queries, n), n}):
        y = pos[:m]
        for impl in impls:
            record('knn', impl, n, k, 1,
                   lambda: knn(pos, y, k, backend=impl), queries=m)

    # Batches of equal-size clouds, the layout of the point-cloud models.
    for clouds in (8, 128):
        pos = torch.rand(clouds * 1024, 3, generator=gen).to(device)
        batch = torch.arange(clouds, device=device).repeat_interleave(1024)
        for impl in impls:
            record('knn_graph', impl, 1024, k, clouds,
                   lambda: knn_graph(pos, k, batch, backend=impl))

    write_records(records, out_path)


if __name__ == '__main__':
    main()
