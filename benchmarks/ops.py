"""Timings of the geometry ops against their targets, each implementation
in the same process.

Four cases, each timed for every implementation that serves it (``triton``:
samsa_geo's Triton kernels, the default on CUDA without torch-cluster;
``torch``: the pure-PyTorch fallback; ``compiled``: torch-cluster, when
installed):

- ``knn``: k = 16 nearest neighbours of every point, 128 clouds x 1,024
  points (target on CUDA: <= 1 ms); on CUDA also pipelined (calls back to
  back), as the neighbour table without value checks or read-back
  (``triton-table``: the kernel and its launch), by the tiled kernel
  (``triton-tiled``), with ``--sweep`` by configurations of the dense
  kernel, and on a lattice moved by about 1e-6 (``knn_128x1024_jittered_
  lattice``: the dense kernel's slowest case);
- ``knn``: k = 16 of every point of one cloud of 100,000 points (<= 20 ms);
- ``fps``: 1,024 of 10,000 points, 32 clouds (<= 10 ms);
- ``classifier``: inference of the small ``SamsaPointClassifier`` (bf16
  autocast on CUDA, eager), plain and rotation-invariant, 128 clouds x
  1,024 points, in clouds/s; the rotation-invariant one (which builds a
  kNN graph) should reach >= 0.5x the plain one's throughput (ratio
  record ``classifier_ri_vs_plain``).

Each call is timed alone after warm-up (CUDA events, median), through the
public functions with their default value checks, unless its record says
``pipelined``. Every record carries its
provenance: device, torch and Triton versions, git commit, date and the
command-line flags. Adds them to ``benchmarks/results/ops.json``.

    python benchmarks/ops.py --device cuda
    python benchmarks/ops.py --device cpu
"""
import argparse
import importlib.util
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import measure, write_records  # noqa: E402
from _common import provenance as base_provenance  # noqa: E402

import samsa_geo.typing  # noqa: E402
from samsa_geo.nn.models import SamsaPointClassifier  # noqa: E402
from samsa_geo.ops import (  # noqa: E402
    fps,
    knn,
    knn_neighbours,
    use_backend,
    value_checks,
)

HERE = os.path.dirname(os.path.abspath(__file__))
#: Configurations (BLOCK_Q, BLOCK_P, warps) of the dense kNN kernel that
#: ``--sweep`` times.
SWEEP = [(2, 1024, 1), (4, 1024, 1), (8, 1024, 1), (4, 1024, 2),
         (8, 1024, 2), (16, 1024, 4), (4, 512, 1), (8, 512, 1)]
#: Targets on the GPU (milliseconds, or the throughput ratio).
TARGETS = {'knn_128x1024': 1.0, 'knn_100k': 20.0, 'fps_32x10k': 10.0,
           'classifier_ri_vs_plain': 0.5}


def provenance(device: torch.device, args: argparse.Namespace) -> dict:
    """Device, versions, commit, date and flags of this run
    (:func:`_common.provenance`), with Triton's version, whether the
    checkout has uncommitted changes, the command line and the threads."""
    rec = base_provenance(device, args)
    # git_commit marks a tree that differs from its commit with -dirty.
    rec['dirty'] = None if args.commit is not None or rec['commit'] is None \
        else rec['commit'].endswith('-dirty')
    triton = None
    if importlib.util.find_spec('triton') is not None:
        import triton
        triton = triton.__version__
    rec.update(triton=triton, flags=' '.join(sys.argv[1:]),
               threads=torch.get_num_threads())
    return rec


def implementations(device: torch.device) -> list:
    impls = ['torch']
    if device.type == 'cuda' and importlib.util.find_spec('triton'):
        impls.insert(0, 'triton')
    if samsa_geo.typing.WITH_TORCH_CLUSTER:
        impls.append('compiled')
    return impls


def op_cases(device: torch.device, args: argparse.Namespace, record):
    """kNN of 128 x 1,024 and of 100,000 points, FPS of 32 x 10,000."""
    gen = torch.Generator().manual_seed(0)
    k = 16
    clouds, n = args.knn_clouds, 1024
    pos = torch.rand(clouds * n, 3, generator=gen).to(device)
    batch = torch.arange(clouds, device=device).repeat_interleave(n)
    fields = dict(n=n, k=k, batch=clouds, queries=clouds * n)
    for impl in implementations(device):
        record('knn', 'knn_128x1024', impl, fields,
               lambda: knn(pos, pos, k, batch, batch, batch_size=clouds,
                           backend=impl))
    if 'triton' in implementations(device):
        knn_variants(pos, batch, clouds, k, fields, args, record)

    n = args.knn_points
    pos = torch.rand(n, 3, generator=gen).to(device)
    for impl in implementations(device):
        record('knn', 'knn_100k', impl, dict(n=n, k=k, batch=1, queries=n),
               lambda: knn(pos, pos, k, backend=impl), repeat=3)

    clouds, n, samples = args.fps_clouds, 10_000, 1024
    pos = torch.rand(clouds * n, 3, generator=gen).to(device)
    batch = torch.arange(clouds, device=device).repeat_interleave(n)
    for impl in implementations(device):
        record('fps', 'fps_32x10k', impl, dict(n=n, k=samples, batch=clouds),
               lambda: fps(pos, batch, samples / n, False,
                           batch_size=clouds, backend=impl), repeat=3)


def knn_variants(pos, batch, clouds, k, fields, args, record):
    """The Triton kNN of 128 x 1,024 points by the tiled kernel (``triton-
    tiled``) next to the dense one that ``triton`` picks, and with
    ``--sweep`` the dense kernel's (BLOCK_Q, BLOCK_P, warps)
    configurations (``triton-dense-...``)."""
    from samsa_geo.ops._triton import knn as knn_module
    from samsa_geo.ops._triton import knn_dense

    def run():
        knn(pos, pos, k, batch, batch, batch_size=clouds, backend='triton')

    def table():
        with value_checks(False):
            knn_neighbours(pos, pos, k, batch, batch, batch_size=clouds,
                           backend='triton')

    record('knn', 'knn_128x1024', 'triton', fields, run, pipelined=True)
    record('knn', 'knn_128x1024', 'triton-table', fields, table)
    record('knn', 'knn_128x1024', 'triton-table', fields, table,
           pipelined=True)
    # The dense kernel's slow case: a lattice moved by about 1e-6, whose
    # distances tie in their leading bits (it ranks such rows again).
    gen = torch.Generator().manual_seed(1)
    jittered = (pos * 4).round() / 4 + 1e-6 * torch.randn(
        pos.shape, generator=gen).to(pos.device)
    record('knn', 'knn_128x1024_jittered_lattice', 'triton', fields,
           lambda: knn(jittered, jittered, k, batch, batch,
                       batch_size=clouds, backend='triton'))
    dense_mean_size = knn_module.DENSE_MEAN_SIZE
    knn_module.DENSE_MEAN_SIZE = 0
    try:
        record('knn', 'knn_128x1024', 'triton-tiled', fields, run)
    finally:
        knn_module.DENSE_MEAN_SIZE = dense_mean_size
    # The dense kernel with its default configuration, then with each
    # configuration of the sweep, whatever DENSE_MEAN_SIZE says.
    knn_module.DENSE_MEAN_SIZE = max(dense_mean_size, 2 * pos.size(0))
    config = knn_dense.dense_config
    try:
        record('knn', 'knn_128x1024', 'triton-dense', fields, run)
        for cfg in (SWEEP if args.sweep else []):
            knn_dense.dense_config = lambda size, cfg=cfg: cfg
            record('knn', 'knn_128x1024', 'triton-dense-' + 'x'.join(
                map(str, cfg)), fields, run)
    finally:
        knn_dense.dense_config = config
        knn_module.DENSE_MEAN_SIZE = dense_mean_size


def classifier_cases(device: torch.device, args: argparse.Namespace,
                     record) -> list:
    """Small classifier, plain and rotation-invariant (ops by default and
    with the pure-PyTorch fallback)."""
    clouds, n = args.classifier_clouds, 1024
    torch.manual_seed(0)
    pos = torch.randn(clouds * n, 3, device=device)
    batch = torch.arange(clouds, device=device).repeat_interleave(n)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=device.type == 'cuda')
    out = []
    for variant in ['plain', 'ri']:
        model = SamsaPointClassifier.small(
            40, rotation_invariant=variant == 'ri').to(device).eval()
        impls = ['auto'] + (['torch'] if variant == 'ri' else [])
        for impl in impls:
            def fn(model=model):
                with torch.no_grad(), autocast:
                    model(pos, batch)

            with use_backend(impl):
                rec = record('classifier', f'classifier_{variant}', impl,
                             dict(n=n, batch=clouds, dtype='bf16'
                                  if device.type == 'cuda' else 'fp32'),
                             fn)
            rec['clouds_per_s'] = clouds / rec['ms'] * 1e3
            out.append(rec)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available()
                        else 'cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--out', default=None,
                        help='result file the records are added to '
                        '(default: benchmarks/results/ops.json)')
    parser.add_argument('--repeat', type=int, default=10)
    parser.add_argument('--knn-clouds', type=int, default=128)
    parser.add_argument('--knn-points', type=int, default=100_000)
    parser.add_argument('--fps-clouds', type=int, default=32)
    parser.add_argument('--classifier-clouds', type=int, default=128)
    parser.add_argument('--skip-classifier', action='store_true')
    parser.add_argument('--sweep', action='store_true',
                        help='also time configurations of the dense kNN '
                        'kernel (128 x 1,024 points)')
    parser.add_argument('--dense-mean-size', type=int, default=None,
                        help='DENSE_MEAN_SIZE of the Triton kNN for the '
                        'whole run (default: the library\'s)')
    parser.add_argument('--commit', default=None,
                        help='commit to record where the tree has no git '
                        'metadata (default: git describe --always --dirty)')
    parser.add_argument('--threads', type=int, default=None,
                        help='intra-op threads (default: torch default)')
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.dense_mean_size is not None:
        from samsa_geo.ops._triton import knn as knn_module
        knn_module.DENSE_MEAN_SIZE = args.dense_mean_size
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('CUDA is not available')
    out_path = args.out or os.path.join(HERE, 'results', 'ops.json')
    common = provenance(device, args)
    records = []

    def record(op, case, impl, fields, fn, repeat=None, pipelined=False):
        rec = dict(op=op, case=case, impl=impl, **fields,
                   pipelined=pipelined)
        if device.type == 'cuda' and case in TARGETS:
            rec['target_ms'] = TARGETS[case]
        rec.update(measure(fn, device, warmup=2,
                           repeat=repeat or args.repeat,
                           pipelined=pipelined))
        if 'target_ms' in rec:
            rec['meets_target'] = rec['ms'] <= rec['target_ms']
        rec.update(common)
        records.append(rec)
        print(json.dumps({k: rec[k] for k in ('case', 'impl', 'pipelined',
                                              'ms') if k in rec}),
              flush=True)
        return rec

    op_cases(device, args, record)
    if not args.skip_classifier:
        plain, ri, ri_torch = classifier_cases(device, args, record)
        for ri_rec, impl in [(ri, 'auto'), (ri_torch, 'torch')]:
            ratio = ri_rec['clouds_per_s'] / plain['clouds_per_s']
            rec = dict(op='classifier', case='classifier_ri_vs_plain',
                       impl=impl, n=plain['n'], batch=plain['batch'],
                       ratio=round(ratio, 3))
            if device.type == 'cuda':
                rec['target'] = TARGETS['classifier_ri_vs_plain']
                rec['meets_target'] = ratio >= rec['target']
            rec.update(common)
            records.append(rec)
            print(json.dumps({k: rec[k] for k in ('case', 'impl', 'ratio')}))
    write_records(records, out_path)


if __name__ == '__main__':
    main()
