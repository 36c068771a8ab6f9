"""Times and profiles the point-cloud SamsaConv layer and classifier on
the GPU (bf16 inference, 128 clouds x 1,024 points): the layer as the
classifier builds it, with and without the relative bias (the fused
kernel, Triton or ``--inference-kernel flex``, or the explicit path), eager
and compiled.

    python benchmarks/profile_points.py --out profile_points.txt
"""
import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import compile_module, measure, point_conv  # noqa: E402

from samsa_geo.nn.attention import config  # noqa: E402
from samsa_geo.nn.models import SamsaPointClassifier  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--clouds', type=int, default=128)
    p.add_argument('--points', type=int, default=1024)
    p.add_argument('--rows', type=int, default=22)
    p.add_argument('--compile', action='store_true')
    p.add_argument('--compile-mode', default=None,
                   help='torch.compile mode (implies --compile)')
    p.add_argument('--weights', default='fp32', choices=['fp32', 'bf16'])
    p.add_argument('--cases', default=None,
                   help='comma-separated subset of the case names')
    p.add_argument('--profile', default='layer,layer_bias_fused,'
                   'classifier_paper')
    p.add_argument('--inference-kernel', default=None,
                   choices=['triton', 'flex'])
    p.add_argument('--out', default=None)
    return p


class Log:
    """Prints lines and keeps them for the ``--out`` file."""
    def __init__(self):
        self.lines = []

    def __call__(self, line):
        print(line, flush=True)
        self.lines.append(line)


def case(module, fused, autocast, *inputs, **kwargs):
    """A no-grad bf16 call of ``module`` with the fused relative bias on
    (``True``), off (``False``) or forced explicit (``'explicit'``)."""
    def fn():
        config.set_fused_bias(fused)
        with torch.no_grad(), torch.autocast('cuda', torch.bfloat16,
                                             enabled=autocast):
            module(*inputs, **kwargs)
    return fn


def timed_functions(args, dev):
    """The cases by name: single layers (as the classifier builds them)
    and the classifier at both presets, with the fused bias and without,
    plus compiled variants under ``--compile``."""
    compiled = args.compile or args.compile_mode is not None
    B, n, C = args.clouds, args.points, 256
    torch.manual_seed(0)
    pos = torch.randn(B * n, 3, device=dev)
    batch = torch.arange(B, device=dev).repeat_interleave(n)
    wdtype = torch.bfloat16 if args.weights == 'bf16' else torch.float32
    autocast = args.weights == 'fp32'
    x = torch.randn(B * n, C, device=dev, dtype=wdtype)
    kw = dict(num_graphs=B, max_num_nodes=n)
    cases = {
        'layer_graph_ln': (point_conv(C, 8, 256, False, 'graph'), False),
        'layer': (point_conv(C, 8, 256, False), False),
        'layer_bias_fused': (point_conv(C, 8, 256, True), True),
        'layer_bias_explicit': (point_conv(C, 8, 256, True), 'explicit'),
        'layer_k512_bias_fused': (point_conv(C, 8, 512, True), True),
    }

    def layer_inputs(bias):
        return dict(pos=pos if bias else None, **kw)

    fns = {}
    for name, (layer, bias) in cases.items():
        layer.to(dev, wdtype).eval()
        fns[name] = case(layer, bias is True, autocast, x, None, batch,
                         **layer_inputs(bias))
    for preset in ('small', 'paper'):
        cfg = SamsaPointClassifier.SMALL if preset == 'small' else {}
        for fused in (True, False):
            model = SamsaPointClassifier(40, **cfg).to(dev, wdtype).eval()
            suffix = '' if fused else '_explicit'
            fns[f'classifier_{preset}{suffix}'] = case(model, fused,
                                                       autocast, pos, batch)
            if fused and compiled:
                fns[f'classifier_{preset}_compiled'] = case(
                    compile_module(model, args.compile_mode), True,
                    autocast, pos, batch)
    if compiled:
        for name in ('layer', 'layer_bias_fused'):
            layer, bias = cases[name]
            fns[name + '_compiled'] = case(
                compile_module(layer, args.compile_mode), True, autocast, x,
                None, batch, **layer_inputs(bias))
    return fns


def time_all(fns, wanted, dev, B, n, log):
    """Per-call and pipelined times of every wanted case."""
    for name, fn in fns.items():
        if wanted is not None and name not in wanted:
            continue
        try:
            r = measure(fn, dev, warmup=3, repeat=20)
            rp = measure(fn, dev, warmup=1, repeat=20, pipelined=True)
            log(f'{name:28s} {r["ms"]:8.3f} ms  '
                f'{B * n / r["ms"] / 1e3:8.2f} M points/s  '
                f'{B / r["ms"] * 1e3:9.0f} clouds/s  '
                f'peak {r["peak_mb"]:.0f} MB; pipelined {rp["ms"]:.3f} ms '
                f'{B * n / rp["ms"] / 1e3:.2f} M points/s')
        except Exception as e:  # report and go on
            log(f'{name:28s} failed: {type(e).__name__}: {str(e)[:300]}')
    try:
        import torch._dynamo.utils as du
        log(f'dynamo counters: {dict(du.counters["stats"])}')
    except Exception:
        pass


def profile_all(fns, names, wanted, rows, log):
    """The profiler's table of 5 calls of each case in ``names``."""
    for name in names:
        if not name or (wanted is not None and name not in wanted):
            continue
        fn = fns[name]
        fn()
        with profile(activities=[ProfilerActivity.CPU,
                                 ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
        log(f'==== {name} (5 calls)')
        log(prof.key_averages().table(sort_by='cuda_time_total',
                                      row_limit=rows))


def run(args):
    """Times and profiles the cases that ``args`` (the namespace of
    :func:`build_parser`) selects; returns the logged lines."""
    dev = torch.device('cuda')
    if args.inference_kernel:
        config.set_bias_inference_kernel(args.inference_kernel)
    wanted = None if args.cases is None else set(args.cases.split(','))
    log = Log()
    fns = timed_functions(args, dev)
    time_all(fns, wanted, dev, args.clouds, args.points, log)
    profile_all(fns, args.profile.split(','), wanted, args.rows, log)
    if args.out:
        with open(args.out, 'w') as f:
            f.write('\n'.join(log.lines) + '\n')
    return log.lines


def main(argv=None):
    return run(build_parser().parse_args(argv))


if __name__ == '__main__':
    main()
