"""Whole layers at the sizes users run: SamsaConv against a plain
full-attention transformer layer, PyG's GPSConv (multihead, performer), and
a small-graph training epoch (SamsaGraphModel against GPSConv and GINE).

Every layer is built with its default arguments and called as a PyG user
calls it: ``conv(x, None, batch)`` (``samsa_conv``); ``samsa_conv_batch``
adds what :func:`~samsa_geo.nn.batch_hints` reads from a PyG ``Batch``
(``num_graphs``, ``max_num_nodes``), ``samsa_conv_hints`` ``num_graphs``
only. One JSON record per measurement, with its provenance (GPU, torch,
commit, flags, date) inside. In the graph epoch, ``samsa_graph_model``
passes ``num_graphs`` only, ``samsa_graph_model_hints`` everything
:func:`~samsa_geo.nn.batch_hints` reads from the batch::

    python benchmarks/layer.py --device cuda --commit $(git rev-parse HEAD)
    python benchmarks/layer.py --device cuda --compile reduce-overhead \
        --compile-only --sizes 32x1024
"""
import argparse
import ast
import contextlib
import importlib
import itertools
import os
import sys
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GINEConv, GPSConv, global_mean_pool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    add_commit_argument,
    compile_module,
    measure_or_error,
    parse_sizes,
    print_table,
    provenance,
    write_records,
)

from samsa_geo import ops  # noqa: E402
from samsa_geo.nn import SamsaConv, batch_hints  # noqa: E402
from samsa_geo.nn.attention import config  # noqa: E402
from samsa_geo.nn.models import SamsaGraphModel  # noqa: E402

SIZES = '32x1024,8x4096,2x16384,1x65536,1x262144'
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16,
          'fp16': torch.float16}


class FullLayer(nn.Module):
    r"""The peer: a pre-norm transformer layer of the same width, exact
    attention through SDPA over equal-size sets, MLP of width :math:`3C`."""
    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(channels)
        self.lin_qkv = nn.Linear(channels, 3 * channels)
        self.lin_out = nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 3 * channels), nn.GELU(),
                                 nn.Linear(3 * channels, channels))

    def forward(self, x, batch_size: int):
        N, C = x.shape
        n, H = N // batch_size, self.heads
        # [N, 3C] -> [3, B, H, n, D]
        qkv = self.lin_qkv(self.norm1(x)).view(batch_size, n, 3, H, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)  # [B, H, n, D]
        x = x + self.lin_out(o.transpose(1, 2).reshape(N, C))
        return x + self.mlp(self.norm2(x))


def parse_switches(text: str) -> dict:
    """``'fused_inference=1,fused_bias=0'`` -> ``{'fused_inference': True,
    'fused_bias': False}``; values other than 0/1/true/false stay
    strings."""
    out = {}
    for item in filter(None, text.split(',')):
        name, _, value = item.partition('=')
        low = value.strip().lower()
        out[name.strip()] = {'1': True, 'true': True, '0': False,
                             'false': False}.get(low, value.strip())
    return out


def build(op: str, C: int, H: int, k: int) -> nn.Module:
    if op.startswith('samsa_conv'):
        return SamsaConv(C, None, heads=H, k=k)
    if op == 'full_layer':
        return FullLayer(C, H)
    if op == 'gps_conv_multihead':
        return GPSConv(C, None, heads=H, attn_type='multihead')
    if op == 'gps_conv_performer':
        return GPSConv(C, None, heads=H, attn_type='performer')
    raise ValueError(f"unknown op {op!r}")


def call(op: str, model, x, batch, B: int):
    if op == 'full_layer':
        return model(x, B)
    if op == 'samsa_conv_hints':  # num_graphs only: bound shapes
        return model(x, None, batch, num_graphs=B)
    if op == 'samsa_conv_batch':  # batch_hints(data) of a PyG Batch
        n = x.size(0) // B
        return model(x, None, batch, num_graphs=B, max_num_nodes=n)
    return model(x, None, batch)


def layer_step(op, model, fn_model, x, batch, B, pas, dtype, device):
    """A call of ``fn_model`` (``model``, or it compiled) in pass ``pas``:
    a forward without gradients (eval mode), or a forward and backward
    (train mode) after which the gradients are set to ``None``. The
    backward starts from a fixed gradient of the output, made before the
    timing, as a layer inside a model receives one: no loss is timed."""
    model.train(pas == 'fwdbwd')
    xg = x.detach().requires_grad_(pas == 'fwdbwd')
    grad_out = torch.randn_like(x) if pas == 'fwdbwd' else None  # [N, C]

    def fn():
        with torch.autocast(device.type, dtype=DTYPES[dtype],
                            enabled=dtype != 'fp32'):
            if pas == 'fwd':
                with torch.no_grad():
                    call(op, fn_model, xg, batch, B)
                return
            out = call(op, fn_model, xg, batch, B)
        out.backward(grad_out)
        model.zero_grad(set_to_none=True)
        xg.grad = None

    return fn


def layer_inputs(op, B, n, args, device):
    """The layer ``op`` of the benchmark's width on ``device``, and ``B``
    equal sets of ``n`` random tokens with their batch vector."""
    model = build(op, args.channels, args.heads, args.k).to(device)
    x = torch.randn(B * n, args.channels, device=device)
    batch = torch.arange(B, device=device).repeat_interleave(n)
    return model, x, batch


def layer_case(op, B, n, args, device, compile_mode, pipelined):
    C, H, k = args.channels, args.heads, args.k
    model, x, batch = layer_inputs(op, B, n, args, device)
    fn_model = model if compile_mode is None else \
        compile_module(model, None if compile_mode == 'default'
                       else compile_mode)
    records = []
    for pas in args.passes:
        fn = layer_step(op, model, fn_model, x, batch, B, pas, args.dtype,
                        device)
        rec = dict(op=op, n=n, batch=B, k=k if 'samsa' in op else None,
                   channels=C, heads=H, **{'pass': pas}, dtype=args.dtype,
                   pipelined=pipelined, compile_mode=compile_mode)
        records.append(_timed(rec, fn, device, args, pipelined, model))
    return records


def ab_case(op, B, n, args, device):
    """One model, its calls timed with the ``config`` switch ``args.ab`` on
    and off in alternation (``--ab-rounds`` rounds of each, per call): two
    records per pass, ``ms`` the median over the rounds of each state, so
    that both see the same machine at the same time."""
    C, H, k = args.channels, args.heads, args.k
    model, x, batch = layer_inputs(op, B, n, args, device)
    records = []
    for pas in args.passes:
        fn = layer_step(op, model, model, x, batch, B, pas, args.dtype,
                        device)
        times = {True: [], False: []}
        for _ in range(args.ab_rounds):
            for state in (True, False):
                with config.attention_config(**{args.ab: state}):
                    got = measure_or_error(fn, device, warmup=args.warmup,
                                           repeat=args.repeat,
                                           modules=[model])
                times[state].append(got['ms'])
        for state in (True, False):
            ms = sorted(t for t in times[state] if t is not None)
            rec = dict(op=op, n=n, batch=B, k=k, channels=C, heads=H,
                       **{'pass': pas}, dtype=args.dtype, pipelined=False,
                       compile_mode=None,
                       attention_config=f'{args.ab}={int(state)}',
                       ms=ms[len(ms) // 2] if ms else None,
                       rounds_ms=times[state])
            rec.update(provenance(device, args))
            records.append(rec)
            print_table([rec], ['op', 'batch', 'n', 'pass',
                                'attention_config', 'ms'])
    return records


def _timed(rec, fn, device, args, pipelined, model):
    """``rec`` with the timing of ``fn``, a call of ``model`` (whose kept
    graphs and casts are dropped before it), and the provenance."""
    rec.update(measure_or_error(fn, device, warmup=args.warmup,
                                repeat=args.repeat, pipelined=pipelined,
                                modules=[model]))
    rec.update(provenance(device, args))
    print_table([rec], ['op', 'batch', 'n', 'pass', 'pipelined',
                        'compile_mode', 'ms', 'peak_mb'])
    return rec


class GraphModel(nn.Module):
    """A PyG model of ``depth`` layers of ``conv`` ('gps' multihead or
    'gine') on node features, mean-pooled to one value per graph."""
    def __init__(self, kind: str, in_channels: int, edge_dim: int,
                 channels: int, depth: int):
        super().__init__()
        self.lin_in = nn.Linear(in_channels, channels)
        self.lin_edge = nn.Linear(edge_dim, channels)

        def gine():
            return GINEConv(nn.Sequential(
                nn.Linear(channels, channels), nn.ReLU(),
                nn.Linear(channels, channels)), edge_dim=channels)

        self.kind = kind
        self.convs = nn.ModuleList([
            GPSConv(channels, gine(), heads=4, attn_type='multihead')
            if kind == 'gps' else gine() for _ in range(depth)])
        self.head = nn.Linear(channels, 1)

    def forward(self, x, edge_index, edge_attr, batch, num_graphs):
        h, e = self.lin_in(x), self.lin_edge(edge_attr)
        for conv in self.convs:
            if self.kind == 'gps':
                h = conv(h, edge_index, batch, edge_attr=e)
            else:
                h = F.relu(conv(h, edge_index, e))
        return self.head(global_mean_pool(h, batch, num_graphs))


#: Graph orders the small-graph epoch cycles through.
GRAPH_EPOCH_ORDERS = 8


def molecule_batches(device, num_graphs=642, batch_size=64, seed=0,
                     shuffle=None):
    """Random molecule-sized graphs (FreeSolv's 642 graphs, 2-25 heavy
    atoms, bonds along a chain plus rings), collated as a PyG loader does:
    in a random order drawn from seed ``shuffle`` where given (an epoch of
    a shuffling loader: batches of other sizes each epoch)."""
    from torch_geometric.data import Batch, Data
    g = torch.Generator().manual_seed(seed)
    graphs = []
    for _ in range(num_graphs):
        n = int(torch.randint(2, 26, (1, ), generator=g))
        src = torch.arange(n - 1)
        extra = torch.randint(0, n, (2, n // 4), generator=g)
        ei = torch.cat([torch.stack([src, src + 1]), extra], 1)
        ei = torch.cat([ei, ei.flip(0)], 1)
        graphs.append(Data(x=torch.randn(n, 9, generator=g), edge_index=ei,
                           edge_attr=torch.randn(ei.size(1), 3, generator=g),
                           y=torch.randn(1, generator=g)))
    if shuffle is not None:
        rng = torch.Generator().manual_seed(shuffle)
        order = torch.randperm(num_graphs, generator=rng)
        graphs = [graphs[i] for i in order.tolist()]
    return [Batch.from_data_list(graphs[i:i + batch_size]).to(device)
            for i in range(0, num_graphs, batch_size)]


def build_graph_model(op: str, channels: int, depth: int) -> nn.Module:
    """The small-graph model ``op`` (``samsa_graph_model[_hints]``,
    ``gps_graph_model`` or ``gine_graph_model``) for the batches of
    :func:`molecule_batches`."""
    if op.startswith('samsa_graph_model'):
        return SamsaGraphModel(9, channels, 1, depth, edge_dim=3, heads=4)
    return GraphModel(op.split('_')[0], 9, 3, channels, depth)


def graph_forward(op: str, model: nn.Module, data) -> torch.Tensor:
    """One prediction per graph of ``data``: ``op`` ending in ``_hints``
    passes what :func:`batch_hints` reads from the Batch (the largest
    graph too), the others ``num_graphs`` only."""
    hints = batch_hints(data) if op.endswith('_hints') else \
        dict(num_graphs=data.num_graphs)
    return model(data.x, data.edge_index, data.edge_attr, data.batch,
                 **hints).view(-1)


def graph_epoch_case(op, args, device):
    C, depth = args.graph_channels, args.graph_depth
    # Each epoch in another order, as a shuffling loader gives them
    # (eight orders, in turn).
    batches = [molecule_batches(device, shuffle=e)
               for e in range(GRAPH_EPOCH_ORDERS)]
    orders = itertools.cycle(batches)
    model = build_graph_model(op, C, depth).to(device)
    # The optimizer of samsa_geo's Trainer: AdamW, fused on CUDA.
    fused = device.type == 'cuda'
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3,
                            fused=True if fused else None)

    def epoch():
        for data in next(orders):
            loss = F.mse_loss(graph_forward(op, model, data), data.y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    # Each epoch is timed alone (its batches run back to back inside it):
    # pipelined=False, as the record says.
    pipelined = False
    rec = dict(op=op, n=None, batch=64, k=32 if 'samsa' in op else None,
               channels=C, heads=4, **{'pass': 'train_epoch'},
               dtype='fp32', pipelined=pipelined, compile_mode=None,
               graphs=len(batches[0]) * 64, layers=depth,
               optimizer='adamw_fused' if fused else 'adamw')
    return _timed(rec, epoch, device, args, pipelined, model)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available()
                   else 'cpu')
    p.add_argument('--dtype', default=None, choices=list(DTYPES),
                   help='autocast dtype (default: bf16 on CUDA, fp32 on CPU)')
    p.add_argument('--channels', type=int, default=256)
    p.add_argument('--heads', type=int, default=8)
    p.add_argument('--k', type=int, default=256)
    p.add_argument('--sizes', default=SIZES, help='comma list of BxN cases')
    p.add_argument('--ops', default='samsa_conv,samsa_conv_batch,'
                   'samsa_conv_hints,full_layer,gps_conv_multihead,'
                   'gps_conv_performer')
    p.add_argument('--passes', default='fwd,fwdbwd')
    p.add_argument('--compile', default=None,
                   help="also time torch.compile: 'default' or a mode")
    p.add_argument('--compile-ops', default='samsa_conv_batch,full_layer')
    p.add_argument('--compile-only', action='store_true',
                   help='time only the compiled variants')
    p.add_argument('--no-pipelined', action='store_true',
                   help='time each call alone only')
    p.add_argument('--graph-epoch', action='store_true',
                   help='also time a small-graph training epoch')
    p.add_argument('--graph-channels', type=int, default=64)
    p.add_argument('--graph-depth', type=int, default=3)
    p.add_argument('--max-gps-n', type=int, default=16384,
                   help='skip GPSConv multihead above this set size')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--repeat', type=int, default=20)
    add_commit_argument(p)
    p.add_argument('--attention-config', default='',
                   help='comma list of samsa_geo.nn.attention.config '
                   'switches, e.g. fused_inference=1')
    p.add_argument('--ab', default=None,
                   help='a samsa_geo.nn.attention.config switch (e.g. '
                   'stacked_casts) timed on and off in alternation, per '
                   'call, for the SAMSA ops only')
    p.add_argument('--ab-rounds', type=int, default=5)
    p.add_argument('--fused-max-set-size', type=int, default=None,
                   help='largest set of the fused inference path for this '
                   'run, in place of FUSED_MAX_SET_SIZE (to time the fused '
                   'path on larger sets)')
    p.add_argument('--sampled-rows-min-tokens', type=int, default=None,
                   help='fewest tokens from which the general path (in '
                   'evaluation and in training) projects the sampled rows '
                   'alone, in place of SAMPLED_ROWS_MIN_TOKENS and '
                   'TRAINING_SAMPLED_ROWS_MIN_TOKENS (a huge value projects '
                   'every token)')
    p.add_argument('--fused-sampled-rows-min-tokens', type=int,
                   default=None,
                   help='the same for the fused inference path, in place '
                   'of FUSED_SAMPLED_ROWS_MIN_TOKENS')
    p.add_argument('--cuda-graph-max-elements', type=int, default=None,
                   help='largest input (x.numel()) whose SamsaConv calls '
                   'replay CUDA graphs, in place of samsa_geo.nn.conv.'
                   'samsa_conv.CUDA_GRAPH_MAX_ELEMENTS (inference graphs '
                   'also need the fused path: --fused-max-set-size)')
    p.add_argument('--linear-min-elements', type=int, default=None,
                   help='smallest output whose bias gradient the layer '
                   'sums with samsa_geo.ops.linear\'s kernel, in place of '
                   'samsa_geo.ops.linear.MIN_ELEMENTS (a huge value times '
                   'PyTorch\'s reduction)')
    p.add_argument('--sdpa-backends', default=None,
                   help='comma list of the PyTorch SDPA backends (' +
                   ', '.join(SDPA_BACKENDS) + ') that the run\'s attention '
                   'calls may take, in this order of priority, in place of '
                   'PyTorch\'s choice (the full layer\'s calls too)')
    p.add_argument('--ops-backend', default='auto',
                   choices=['auto', 'torch'],
                   help="what backend='auto' means for samsa_geo.ops in "
                   "this run: 'torch' runs the layer's norms (layer_norm, "
                   "residual_affine, residual_batch_norm) as PyTorch's "
                   "ops, to time the kernels against them")
    p.add_argument('--inductor-config', default=None,
                   help='comma list of KEY=VALUE settings of '
                   'torch._inductor.config for the run\'s compiled cases '
                   '(VALUE a Python literal), e.g. '
                   'triton.coalesce_tiling_analysis=False')
    p.add_argument('--out', default=None)
    args = p.parse_args()
    # The library's thresholds for this run, where given: the attention's,
    # the layer's CUDA graphs', samsa_geo.ops.linear's.
    attention = 'samsa_geo.nn.attention.samsa_attention'
    for module, name, value in (
            (attention, 'FUSED_MAX_SET_SIZE', args.fused_max_set_size),
            (attention, 'SAMPLED_ROWS_MIN_TOKENS',
             args.sampled_rows_min_tokens),
            (attention, 'TRAINING_SAMPLED_ROWS_MIN_TOKENS',
             args.sampled_rows_min_tokens),
            (attention, 'FUSED_SAMPLED_ROWS_MIN_TOKENS',
             args.fused_sampled_rows_min_tokens),
            ('samsa_geo.nn.conv.samsa_conv', 'CUDA_GRAPH_MAX_ELEMENTS',
             args.cuda_graph_max_elements),
            ('samsa_geo.ops.linear', 'MIN_ELEMENTS',
             args.linear_min_elements)):
        if value is not None:
            setattr(importlib.import_module(module), name, value)
    ops.set_default_backend(args.ops_backend)
    with config.attention_config(**parse_switches(args.attention_config)), \
            sdpa_backends(args.sdpa_backends), \
            inductor_config(args.inductor_config):
        run(args)


#: Names of --sdpa-backends: PyTorch's SDPBackend members.
SDPA_BACKENDS = {'flash': 'FLASH_ATTENTION',
                 'efficient': 'EFFICIENT_ATTENTION',
                 'cudnn': 'CUDNN_ATTENTION', 'math': 'MATH'}


def sdpa_backends(names: Optional[str]):
    """The context of ``--sdpa-backends``: PyTorch's SDPA restricted to
    the backends ``names`` (comma list of :data:`SDPA_BACKENDS`' keys),
    tried in that order; no restriction where ``names`` is empty."""
    if not names:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    chosen = names.split(',')
    unknown = [n for n in chosen if n not in SDPA_BACKENDS]
    if unknown:
        raise ValueError(f"Expected '--sdpa-backends' to name backends "
                         f"among {list(SDPA_BACKENDS)} (got {unknown})")
    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[n])
                        for n in chosen], set_priority=True)


def inductor_config(settings: Optional[str]):
    """The context of ``--inductor-config``: ``torch._inductor.config``
    with the comma list ``settings`` of ``KEY=VALUE`` (``VALUE`` a Python
    literal: ``False``, ``4``, ``'max'``) applied; nothing where
    ``settings`` is empty. A setting without ``=``, a value that is no
    literal or a key that the config lacks raises a :class:`ValueError`
    naming the flag."""
    if not settings:
        return contextlib.nullcontext()
    import torch._inductor.config as inductor
    patch = {}
    for item in settings.split(','):
        key, sep, text = item.partition('=')
        try:
            if not sep:
                raise ValueError
            patch[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"Expected '--inductor-config' to hold "
                             f"KEY=VALUE settings with Python literals as "
                             f"values (got {item!r})") from None
    unknown = sorted(set(patch) - set(inductor.get_config_copy()))
    if unknown:
        raise ValueError(f"Expected '--inductor-config' to name settings "
                         f"of torch._inductor.config (got {unknown})")
    return inductor.patch(patch)


def run(args):
    device = torch.device(args.device)
    args.dtype = args.dtype or ('bf16' if device.type == 'cuda' else 'fp32')
    args.passes = args.passes.split(',')
    torch.manual_seed(0)
    cases = parse_sizes(args.sizes)
    op_names = args.ops.split(',')
    compiled = args.compile_ops.split(',') if args.compile else []
    timings = [False] if args.no_pipelined or device.type != 'cuda' \
        else [False, True]
    records = []
    out = args.out or os.path.join(os.path.dirname(__file__), 'results',
                                   'layer.json')
    for B, n in cases:
        for op in op_names:
            if args.ab:
                if op.startswith('samsa_conv'):
                    records += ab_case(op, B, n, args, device)
                continue
            if op == 'gps_conv_multihead' and n > args.max_gps_n:
                continue
            for pipelined in timings:
                if not args.compile_only:
                    records += layer_case(op, B, n, args, device, None,
                                          pipelined)
                if op in compiled:
                    records += layer_case(op, B, n, args, device,
                                          args.compile, pipelined)
        # The run's records so far: a run stopped later keeps them.
        write_records(records, out, quiet=True)
    if args.graph_epoch:
        for op in ('samsa_graph_model', 'samsa_graph_model_hints',
                   'gps_graph_model', 'gine_graph_model'):
            records.append(graph_epoch_case(op, args, device))
    write_records(records, out)
    print_table(records, ['op', 'batch', 'n', 'pass', 'pipelined',
                          'compile_mode', 'ms', 'peak_mb'])


if __name__ == '__main__':
    main()
