"""Point-cloud inference throughput: SamsaPointClassifier against a PyG
PointTransformerConv model and a DGCNN-style (dynamic EdgeConv) model of
similar width, plus one SamsaConv layer against one PointTransformerConv
layer. kNN graphs of the peers are built with samsa_geo.ops (pure PyTorch
where torch-cluster is absent) inside the timed region for the models and
outside it for the single layers.

    python benchmarks/points.py --device cpu
    python benchmarks/points.py --device cuda --dtype bf16
    python benchmarks/points.py --device cuda --dtype bf16 --weights bf16

``--weights bf16`` casts every model's parameters (and the point
features) to bfloat16 instead of running float32 weights under autocast;
positions stay float32. The SamsaConv layer is configured as inside
:class:`SamsaPointClassifier` (per-point LayerNorm, GELU); on CUDA its
relative bias runs as one fused kernel: samsa_geo's Triton kernel, or
FlexAttention with ``--inference-kernel flex``.
"""
import argparse
import json
import os
import sys

import torch
from torch import nn
from torch_geometric.nn import (
    EdgeConv,
    PointTransformerConv,
    global_max_pool,
    global_mean_pool,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import device_name, is_oom, measure, print_table  # noqa: E402
from _common import compile_module, point_conv, write_records  # noqa: E402
from _common import add_commit_argument  # noqa: E402

from samsa_geo.nn.attention import config  # noqa: E402
from samsa_geo.nn.models import SamsaPointClassifier  # noqa: E402
from samsa_geo.ops import knn_graph  # noqa: E402

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}


def mlp(i, o):
    return nn.Sequential(nn.Linear(i, o), nn.LayerNorm(o), nn.GELU(),
                         nn.Linear(o, o))


class PointTransformerNet(nn.Module):
    """Linear embedding, L PointTransformerConv layers on a kNN graph."""
    def __init__(self, num_classes, channels, num_layers, k=16):
        super().__init__()
        self.k = k
        self.lin = nn.Linear(3, channels)
        self.convs = nn.ModuleList([
            PointTransformerConv(channels, channels) for _ in range(num_layers)
        ])
        self.head = mlp(2 * channels, num_classes)

    def forward(self, pos, batch):
        edge_index = knn_graph(pos, self.k, batch)
        h = self.lin(pos)
        for conv in self.convs:
            h = h + conv(h, pos, edge_index)
        h = torch.cat([global_max_pool(h, batch), global_mean_pool(h, batch)],
                      dim=-1)
        return self.head(h)


class DGCNN(nn.Module):
    """DGCNN-style: EdgeConv on a kNN graph rebuilt in feature space."""
    def __init__(self, num_classes, channels, num_layers, k=16):
        super().__init__()
        self.k = k
        dims = [3] + [channels] * num_layers
        self.convs = nn.ModuleList([
            EdgeConv(mlp(2 * dims[i], dims[i + 1]), aggr='max')
            for i in range(num_layers)
        ])
        self.head = mlp(2 * channels * num_layers, num_classes)

    def forward(self, pos, batch):
        h, hs = pos, []
        for conv in self.convs:
            edge_index = knn_graph(h.float(), self.k, batch)
            h = conv(h, edge_index)
            hs.append(h)
        h = torch.cat(hs, dim=-1)
        h = torch.cat([global_max_pool(h, batch), global_mean_pool(h, batch)],
                      dim=-1)
        return self.head(h)


#: Model sizes timed: the classifier's presets and peers of equal width.
PRESETS = {'small': dict(channels=64, num_layers=2, heads=4, k=64),
           'paper': dict(channels=256, num_layers=6, heads=8, k=512)}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available()
                   else 'cpu')
    p.add_argument('--dtype', default=None, choices=list(DTYPES))
    p.add_argument('--clouds', type=int, default=None)
    p.add_argument('--points', type=int, default=1024)
    p.add_argument('--repeat', type=int, default=10)
    p.add_argument('--weights', default='fp32', choices=['fp32', 'bf16'],
                   help='parameter dtype (fp32: autocast to --dtype)')
    p.add_argument('--compile', action='store_true',
                   help='torch.compile every timed model and layer')
    p.add_argument('--compile-mode', default=None,
                   help='torch.compile mode (implies --compile); '
                   'reduce-overhead and max-autotune use CUDA graphs')
    p.add_argument('--flex-options', default=None,
                   help='JSON tile options of the fused relative-bias '
                   'kernel (samsa_geo.nn.attention.config)')
    p.add_argument('--inference-kernel', default=config.bias_inference_kernel(),
                   choices=['triton', 'flex'],
                   help='kernel of the relative-bias attention in inference')
    p.add_argument('--pipelined', action='store_true',
                   help='throughput of calls run back to back (CUDA); '
                   'default: each call timed alone')
    p.add_argument('--only', default=None,
                   help='comma-separated subset of the op names')
    add_commit_argument(p)
    p.add_argument('--out', default=None)
    return p


class PointBenchmark:
    """Forward passes on ``clouds`` random clouds of ``points`` points,
    timed under one configuration (the flags of :func:`build_parser`);
    :attr:`records` collects one record per op."""
    def __init__(self, args):
        self.args = args
        self.device = device = torch.device(args.device)
        self.cuda = device.type == 'cuda'
        self.compile = args.compile or args.compile_mode is not None
        self.dtype = args.dtype or ('bf16' if self.cuda else 'fp32')
        self.B = args.clouds or (128 if self.cuda else 8)
        self.n = args.points
        self.wdtype = DTYPES[args.weights]
        self.autocast = torch.autocast(
            device.type, dtype=DTYPES[self.dtype],
            enabled=self.dtype != 'fp32' and args.weights == 'fp32')
        self.only = None if args.only is None else set(args.only.split(','))
        torch.manual_seed(0)
        self.pos = torch.randn(self.B * self.n, 3, device=device)
        self.batch = torch.arange(self.B, device=device).repeat_interleave(
            self.n)
        self.records = []

    def wanted(self, op):
        return self.only is None or op in self.only

    def maybe_compile(self, module):
        if not self.compile:
            return module
        return compile_module(module, self.args.compile_mode)

    def record(self, op, fn, params=None, modules=()):
        """Times ``fn`` as ``op``, a call of ``modules`` (whose kept graphs
        and casts are dropped first); an error, e.g. out of memory, is
        recorded instead of a time."""
        if not self.wanted(op):
            return
        args, B, n = self.args, self.B, self.n
        rec = dict(op=op, n=n, batch=B, dtype=self.dtype,
                   weights=args.weights, device=device_name(self.device),
                   torch=torch.__version__, params=params,
                   compiled=args.compile_mode or self.compile,
                   flex_options=config.flex_kernel_options(),
                   inference_kernel=config.bias_inference_kernel(),
                   timing='pipelined' if args.pipelined and self.cuda
                   else 'per_call',
                   **{'pass': 'fwd'})
        try:
            rec.update(measure(fn, self.device, warmup=2, repeat=args.repeat,
                               pipelined=args.pipelined, modules=modules))
            rec['clouds_per_s'] = B / rec['ms'] * 1e3
            rec['points_per_s'] = B * n / rec['ms'] * 1e3
            rec['ms_per_cloud'] = rec['ms'] / B
        except Exception as e:  # OOM or a compiler failure: record it
            rec.update(ms=None, error='oom' if is_oom(e) else str(e)[:120])
            if self.cuda:
                torch.cuda.empty_cache()
        self.records.append(rec)
        print_table([rec], ['op', 'batch', 'ms', 'clouds_per_s',
                            'points_per_s', 'ms_per_cloud'])

    def run_models(self, presets=PRESETS):
        """The classifiers (plain and rotation-invariant) and their peers
        at every preset; kNN graphs inside the timed region."""
        models = {}
        for name, cfg in presets.items():
            models[f'samsa_point_classifier_{name}'] = SamsaPointClassifier(
                40, **cfg)
            models[f'samsa_point_classifier_{name}_ri'] = \
                SamsaPointClassifier(40, rotation_invariant=True, **cfg)
            models[f'point_transformer_{name}'] = PointTransformerNet(
                40, cfg['channels'], cfg['num_layers'])
            models[f'dgcnn_{name}'] = DGCNN(40, cfg['channels'],
                                            cfg['num_layers'])
        for name, model in models.items():
            if not self.wanted(name):
                continue
            model = model.to(self.device, self.wdtype).eval()
            params = sum(p.numel() for p in model.parameters())
            # The peers take positions as features: in the weights' dtype.
            p_in = self.pos if name.startswith('samsa') else \
                self.pos.to(self.wdtype)

            def fn(model=self.maybe_compile(model), p_in=p_in):
                with torch.no_grad(), self.autocast:
                    model(p_in, self.batch)
            self.record(name, fn, params, modules=[model])
            models[name] = model.cpu()

    def run_layers(self, channels=256):
        """One layer each, graph built outside the timing; SamsaConv as the
        classifier configures it."""
        B, n, pos, batch, C = self.B, self.n, self.pos, self.batch, channels
        x = torch.randn(B * n, C, device=self.device, dtype=self.wdtype)
        edge_index = knn_graph(pos, 16, batch)
        layers = {
            'samsa_conv_layer': (point_conv(C, 8, 256),
                                 lambda m: m(x, None, batch, num_graphs=B,
                                             max_num_nodes=n)),
            'samsa_conv_layer_relbias': (
                point_conv(C, 8, 256, relative_bias=True),
                lambda m: m(x, None, batch, pos=pos, num_graphs=B,
                            max_num_nodes=n)),
            'point_transformer_conv_layer': (
                PointTransformerConv(C, C),
                lambda m: m(x, pos.to(self.wdtype), edge_index)),
        }
        for name, (layer, call) in layers.items():
            if not self.wanted(name):
                continue
            layer = layer.to(self.device, self.wdtype).eval()

            def fn(layer=self.maybe_compile(layer), call=call):
                with torch.no_grad(), self.autocast:
                    call(layer)
            self.record(name, fn, sum(p.numel() for p in layer.parameters()),
                        modules=[layer])


#: The benchmark's result file (each record carries its device and flags).
DEFAULT_OUT = os.path.join(os.path.dirname(__file__), 'results', 'points.json')


def run(args):
    """Runs the benchmark configured by ``args`` (the namespace of
    :func:`build_parser`), writes the records and returns them."""
    config.set_bias_inference_kernel(args.inference_kernel)
    if args.flex_options:
        config.set_flex_kernel_options(json.loads(args.flex_options) or None)
    bench = PointBenchmark(args)
    bench.run_models()
    bench.run_layers()
    write_records(bench.records, args.out or DEFAULT_OUT,
                  commit=args.commit)
    print_table(bench.records, ['op', 'params', 'batch', 'ms',
                                'clouds_per_s', 'points_per_s',
                                'ms_per_cloud'])
    return bench.records


def main(argv=None):
    return run(build_parser().parse_args(argv))


if __name__ == '__main__':
    main()
