"""Timings of the geometry ops against their targets, each implementation
in the same process.

Four cases, each timed for every implementation that serves it (``triton``:
samsa_geo's Triton kernels, the default on CUDA without torch-cluster;
``torch``: the pure-PyTorch fallback; ``compiled``: torch-cluster, when
installed):

- ``knn``: k = 16 nearest neighbours of every point, 128 clouds x 1,024
  points (``knn_128x1024``; target on CUDA: <= 1 ms); on CUDA also
  pipelined (calls back to back), as the neighbour table without value
  checks or read-back
  (``triton-table``: the kernel and its launch), by the tiled kernel
  (``triton-tiled``), with ``--sweep`` by configurations of the dense
  kernel, and on a lattice moved by about 1e-6 (``knn_128x1024_jittered_
  lattice``: the dense kernel's slowest case);
- ``knn``: k = 16 of every point of one cloud of 100,000 points
  (``knn_100k``, <= 20 ms);
- ``fps``: 1,024 of 10,000 points, 32 clouds (``fps_32x10k``, <= 10 ms);
- ``classifier``: inference of the small ``SamsaPointClassifier`` (bf16
  autocast on CUDA, eager), plain and rotation-invariant, 128 clouds x
  1,024 points, in clouds/s; the rotation-invariant one (which builds a
  kNN graph) should reach >= 0.5x the plain one's throughput (ratio
  record ``classifier_ri_vs_plain``, one per backend: both models on the
  same one).

A case's name carries its sizes (``--knn-points 2000``: ``knn_2k``), and a
record has a target only where its sizes are the target's.

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
from typing import Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_commit_argument, measure, write_records  # noqa
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
#: Targets on the GPU (milliseconds, or the throughput ratio), by case:
#: a case's name carries its sizes (see :func:`count`), so that other sizes
#: have no target.
TARGETS = {'knn_128x1024': 1.0, 'knn_100k': 20.0, 'fps_32x10k': 10.0,
           'classifier_ri_vs_plain': 0.5}
#: Sizes of the targets whose case's name does not carry them.
TARGET_SIZES = {'classifier_ri_vs_plain': dict(batch=128, n=1024)}


def count(n: int) -> str:
    """``n`` as case names write it: 100000 -> '100k', 1024 -> '1024'."""
    return f'{n // 1000}k' if n >= 1000 and n % 1000 == 0 else str(n)


def case_target(device: torch.device, case: str,
                fields: dict) -> Optional[float]:
    """The target of ``case`` on ``device`` (CUDA only), where ``fields``
    have the sizes the target is set for; :obj:`None` elsewhere."""
    if device.type != 'cuda' or case not in TARGETS:
        return None
    sizes = TARGET_SIZES.get(case, {})
    if any(fields.get(k) != v for k, v in sizes.items()):
        return None
    return TARGETS[case]


def provenance(device: torch.device, args: argparse.Namespace) -> dict:
    """Device, versions, commit, date and flags of this run
    (:func:`_common.provenance`), with Triton's version, whether the
    checkout has uncommitted changes, the command line and the threads."""
    rec = base_provenance(device, args)  # with commit and dirty
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
    """kNN of 128 x 1,024 and of 100,000 points, FPS of 32 x 10,000 (the
    sizes of the flags: each case named by its own)."""
    gen = torch.Generator().manual_seed(0)
    k = 16
    clouds, n = args.knn_clouds, 1024
    pos = torch.rand(clouds * n, 3, generator=gen).to(device)
    batch = torch.arange(clouds, device=device).repeat_interleave(n)
    fields = dict(n=n, k=k, batch=clouds, queries=clouds * n)
    case = f'knn_{clouds}x{count(n)}'
    for impl in implementations(device):
        record('knn', case, impl, fields,
               lambda: knn(pos, pos, k, batch, batch, batch_size=clouds,
                           backend=impl))
    if 'triton' in implementations(device):
        knn_variants(pos, batch, clouds, k, fields, args, record, case)

    n = args.knn_points
    pos = torch.rand(n, 3, generator=gen).to(device)
    for impl in implementations(device):
        record('knn', f'knn_{count(n)}', impl,
               dict(n=n, k=k, batch=1, queries=n),
               lambda: knn(pos, pos, k, backend=impl), repeat=3)

    clouds, n, samples = args.fps_clouds, 10_000, 1024
    pos = torch.rand(clouds * n, 3, generator=gen).to(device)
    batch = torch.arange(clouds, device=device).repeat_interleave(n)
    for impl in implementations(device):
        record('fps', f'fps_{clouds}x{count(n)}', impl,
               dict(n=n, k=samples, batch=clouds),
               lambda: fps(pos, batch, samples / n, False,
                           batch_size=clouds, backend=impl), repeat=3)


def knn_variants(pos, batch, clouds, k, fields, args, record, case):
    """The Triton kNN of 128 x 1,024 points (``case``, named by the sizes)
    by the tiled kernel (``triton-tiled``) next to the dense one that
    ``triton`` picks, and with ``--sweep`` the dense kernel's (BLOCK_Q,
    BLOCK_P, warps) configurations (``triton-dense-...``)."""
    from samsa_geo.ops._triton import knn as knn_module
    from samsa_geo.ops._triton import knn_dense

    def run():
        knn(pos, pos, k, batch, batch, batch_size=clouds, backend='triton')

    def table():
        with value_checks(False):
            knn_neighbours(pos, pos, k, batch, batch, batch_size=clouds,
                           backend='triton')

    record('knn', case, 'triton', fields, run, pipelined=True)
    record('knn', case, 'triton-table', fields, table)
    record('knn', case, 'triton-table', fields, table, pipelined=True)
    # The dense kernel's slow case: a lattice moved by about 1e-6, whose
    # distances tie in their leading bits (it ranks such rows again).
    gen = torch.Generator().manual_seed(1)
    jittered = (pos * 4).round() / 4 + 1e-6 * torch.randn(
        pos.shape, generator=gen).to(pos.device)
    record('knn', case + '_jittered_lattice', 'triton', fields,
           lambda: knn(jittered, jittered, k, batch, batch,
                       batch_size=clouds, backend='triton'))
    dense_mean_size = knn_module.DENSE_MEAN_SIZE
    knn_module.DENSE_MEAN_SIZE = 0
    try:
        record('knn', case, 'triton-tiled', fields, run)
    finally:
        knn_module.DENSE_MEAN_SIZE = dense_mean_size
    # The dense kernel with its default configuration, then with each
    # configuration of the sweep, whatever DENSE_MEAN_SIZE says.
    knn_module.DENSE_MEAN_SIZE = max(dense_mean_size, 2 * pos.size(0))
    config = knn_dense.dense_config
    try:
        record('knn', case, 'triton-dense', fields, run)
        for cfg in (SWEEP if args.sweep else []):
            knn_dense.dense_config = lambda size, cfg=cfg: cfg
            record('knn', case, 'triton-dense-' + 'x'.join(
                map(str, cfg)), fields, run)
    finally:
        knn_dense.dense_config = config
        knn_module.DENSE_MEAN_SIZE = dense_mean_size


def classifier_cases(device: torch.device, args: argparse.Namespace,
                     record) -> dict:
    """Small classifier, plain and rotation-invariant, each with the ops'
    default backends (``auto``) and with the pure-PyTorch fallback
    (``torch``): the records by ``(variant, impl)``."""
    clouds, n = args.classifier_clouds, 1024
    torch.manual_seed(0)
    pos = torch.randn(clouds * n, 3, device=device)
    batch = torch.arange(clouds, device=device).repeat_interleave(n)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=device.type == 'cuda')
    out = {}
    for variant in ['plain', 'ri']:
        model = SamsaPointClassifier.small(
            40, rotation_invariant=variant == 'ri').to(device).eval()
        for impl in CLASSIFIER_IMPLS:
            def fn(model=model):
                with torch.no_grad(), autocast:
                    model(pos, batch)

            with use_backend(impl):
                rec = record('classifier', f'classifier_{variant}', impl,
                             dict(n=n, batch=clouds, dtype='bf16'
                                  if device.type == 'cuda' else 'fp32'),
                             fn, modules=[model])
            rec['clouds_per_s'] = clouds / rec['ms'] * 1e3
            out[variant, impl] = rec
    return out


#: Backends of the classifier's ops timed: the default choice and the
#: pure-PyTorch fallback.
CLASSIFIER_IMPLS = ('auto', 'torch')


def ratio_records(device: torch.device, timed: dict) -> list:
    """``classifier_ri_vs_plain``: the rotation-invariant classifier's
    throughput over the plain one's, both with the same ops backend (one
    record per backend, naming both models' records), with its target
    where the sizes are the target's."""
    out = []
    for impl in CLASSIFIER_IMPLS:
        plain, ri = timed['plain', impl], timed['ri', impl]
        ratio = ri['clouds_per_s'] / plain['clouds_per_s']
        rec = dict(op='classifier', case='classifier_ri_vs_plain', impl=impl,
                   n=plain['n'], batch=plain['batch'], ratio=round(ratio, 3),
                   numerator=f"{ri['case']} ({ri['impl']})",
                   denominator=f"{plain['case']} ({plain['impl']})")
        target = case_target(device, rec['case'], rec)
        if target is not None:
            rec['target'] = target
            rec['meets_target'] = ratio >= target
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
    add_commit_argument(parser)
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

    def record(op, case, impl, fields, fn, repeat=None, pipelined=False,
               modules=()):
        rec = dict(op=op, case=case, impl=impl, **fields,
                   pipelined=pipelined)
        target = case_target(device, case, rec)
        if target is not None:
            rec['target_ms'] = target
        rec.update(measure(fn, device, warmup=2,
                           repeat=repeat or args.repeat,
                           pipelined=pipelined, modules=modules))
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
        for rec in ratio_records(device,
                                 classifier_cases(device, args, record)):
            rec.update(common)
            records.append(rec)
            print(json.dumps({k: rec[k] for k in ('case', 'impl', 'ratio')}))
    write_records(records, out_path)


if __name__ == '__main__':
    main()
