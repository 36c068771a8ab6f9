"""Loops of stacked ``SamsaConv`` layers on CUDA, inference (``fwd``) or
training (``fwdbwd``): how many layer calls replay a CUDA graph that reads
its inputs in place, how many copy them in and how many run eagerly, and
the time of a step, for two loops: ``same`` (one input tensor every step,
as ``layer.py`` calls the layer) and ``fresh`` (a new input tensor every
step, as a data loader gives them)::

    python benchmarks/graph_inputs.py --sizes 32x1024,1x65536 \\
        --passes fwd,fwdbwd --commit $(git rev-parse HEAD)

``SamsaConv(256, None, heads=8, k=256)`` layers (``--layers``), bf16
autocast, called with the batch's sizes, ``--warmup`` steps, then
``--steps`` steps back to back timed with CUDA events, for ``--rounds``
rounds of both loops in turn (new layers each round). A training step
runs the stack in train mode and its backward pass from a fixed gradient
of the last layer's output, then sets the gradients to ``None``. Records
(``op`` ``samsa_conv_stack``; ``pass``, ``loop``, ``round``, ``ms`` per
step, ``in_place``, ``copies`` and ``eager``: layer calls of the timed
steps; ``graphs``: the kinds of graph each layer keeps) go to
``benchmarks/results/graph_inputs.json``.
"""
import argparse
import contextlib
import copy
import os
import sys
from typing import Callable, Dict, Iterator, List, Optional
from unittest import mock

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_commit_argument, parse_sizes  # noqa: E402
from _common import print_table, provenance, write_records  # noqa: E402

from samsa_geo.nn import SamsaConv  # noqa: E402
from samsa_geo.nn.conv import _graph_replay, _graph_training  # noqa: E402


@contextlib.contextmanager
def counted_replays() -> Iterator[Dict[str, int]]:
    """Within the block, counts the graphs' replays (inference and
    training) that read their inputs in place (``'in_place'``) and that
    copy them in (``'copies'``)."""
    counts = {'in_place': 0, 'copies': 0}
    call = _graph_replay.GraphReplay.__call__
    train_call = _graph_training.TrainingGraphReplay.__call__

    def counted_call(self, *args, **kwargs):
        out = call(self, *args, **kwargs)
        if out is not None:  # replayed: the graph is the latest one
            counts['copies' if self._latest.inputs else 'in_place'] += 1
        return out

    def counted_train_call(self, *args, **kwargs):
        out = train_call(self, *args, **kwargs)
        # A replay's output comes from the node that holds its graph.
        graph = getattr(out.grad_fn, 'graph', None)
        if isinstance(graph, _graph_training._TrainingGraph):
            counts['in_place' if graph.pinned else 'copies'] += 1
        return out

    with mock.patch.object(_graph_replay.GraphReplay, '__call__',
                           counted_call), \
            mock.patch.object(_graph_training.TrainingGraphReplay,
                              '__call__', counted_train_call):
        yield counts


def graph_kinds(layer: SamsaConv, training: bool = False) -> List[str]:
    """``'in_place'`` or ``'copies'`` for each inference graph (or
    training graph) the layer keeps, least recently used first."""
    graphs = layer._train_graphs if training else layer._graphs
    return ['in_place' if isinstance(name, _graph_replay._Pinned)
            else 'copies' for name in graphs._graphs]


def run_loop(layers: torch.nn.ModuleList,
             make_input: Callable[[], torch.Tensor], batch: torch.Tensor,
             hints: dict, steps: int,
             grad: Optional[torch.Tensor] = None) -> None:
    """``steps`` steps of the stack on ``make_input()``, each with its
    backward pass from ``grad`` where one is given."""
    for _ in range(steps):
        h = make_input()
        for layer in layers:
            h = layer(h, None, batch, **hints)
        if grad is not None:
            h.backward(grad)
            layers.zero_grad(set_to_none=True)


def measure_loop(layers: torch.nn.ModuleList, loop: str, B: int, n: int,
                 channels: int, warmup: int, steps: int,
                 device: torch.device, pas: str = 'fwd') -> dict:
    """Counts and ms per step of ``loop`` (``'same'`` or ``'fresh'``) on
    ``B`` sets of ``n`` tokens, on the CUDA ``device``, in pass ``pas``
    (``'fwd'`` or ``'fwdbwd'``)."""
    batch = torch.arange(B, device=device).repeat_interleave(n)
    hints = dict(num_graphs=B, max_num_nodes=n)
    x = torch.randn(B * n, channels, device=device)
    if loop == 'same':
        def make_input():
            return x
    else:
        def make_input():
            return torch.randn(B * n, channels, device=device)
    training = pas == 'fwdbwd'
    layers.train(training)
    grad = torch.randn_like(x) if training else None  # [B * n, C]
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    with torch.set_grad_enabled(training), \
            torch.autocast('cuda', dtype=torch.bfloat16):
        run_loop(layers, make_input, batch, hints, warmup, grad)
        torch.cuda.synchronize()
        with counted_replays() as counts:
            start.record()
            run_loop(layers, make_input, batch, hints, steps, grad)
            end.record()
            torch.cuda.synchronize()
    calls = steps * len(layers)
    return dict(ms=start.elapsed_time(end) / steps,
                in_place=counts['in_place'], copies=counts['copies'],
                eager=calls - counts['in_place'] - counts['copies'],
                graphs=[graph_kinds(layer, training) for layer in layers])


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--sizes', default='32x1024,1x65536')
    p.add_argument('--passes', default='fwd')
    p.add_argument('--layers', type=int, default=3)
    p.add_argument('--channels', type=int, default=256)
    p.add_argument('--heads', type=int, default=8)
    p.add_argument('--k', type=int, default=256)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--rounds', type=int, default=3)
    add_commit_argument(p)
    p.add_argument('--out', default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        p.error('needs CUDA (inference graphs are CUDA graphs)')
    device = torch.device('cuda')
    stamp = provenance(device, args)
    records = []
    passes = args.passes.split(',')
    if not set(passes) <= {'fwd', 'fwdbwd'}:
        p.error(f"--passes takes fwd and fwdbwd (got {args.passes!r})")
    for B, n in parse_sizes(args.sizes):
        torch.manual_seed(0)
        base = torch.nn.ModuleList(
            SamsaConv(args.channels, None, heads=args.heads, k=args.k)
            for _ in range(args.layers)).to(device)
        for pas in passes:
            for rnd in range(args.rounds):
                for loop in ('same', 'fresh'):
                    r = measure_loop(copy.deepcopy(base), loop, B, n,
                                     args.channels, args.warmup,
                                     args.steps, device, pas)
                    records.append(dict(
                        stamp, op='samsa_conv_stack', batch=B, n=n,
                        layers=args.layers, loop=loop, round=rnd,
                        **{'pass': pas}, **r))
    print_table(records, ['op', 'batch', 'n', 'pass', 'loop', 'round', 'ms',
                          'in_place', 'copies', 'eager', 'graphs'])
    out = args.out or os.path.join(os.path.dirname(__file__), 'results',
                                   'graph_inputs.json')
    write_records(records, out)


if __name__ == '__main__':
    main()
