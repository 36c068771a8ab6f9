"""Where a small-graph training step spends its time: the forward, the
backward and the optimizer step of ``SamsaGraphModel`` (with
:func:`~samsa_geo.nn.batch_hints`), a ``GPSConv`` multihead model and a GINE
model (those of ``benchmarks/layer.py --graph-epoch``), with AdamW in its
foreach and its fused implementation. Each phase is timed to its end with a
synchronisation (median over the steps of an epoch), the epoch without
(median of ``--repeat`` epochs, each in its own order of the graphs, as a
shuffling loader gives them), and the aten calls of every phase are
counted below autograd (views included) on the first batch, with the
launches of samsa_geo's Triton kernels beside them. One JSON record
per model and optimizer, with its provenance::

    python benchmarks/graph_step.py --device cuda --commit $(git rev-parse HEAD)

``--ab SWITCHES`` runs the SAMSA model with the attention ``config``
switches (comma-separated) all off, each alone on and, for several, all on
(the record's ``attention_config``)::

    python benchmarks/graph_step.py --device cuda --ab packed_attention,fused_gine
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, provenance, write_records  # noqa: E402
from _common import add_commit_argument  # noqa: E402
from count_ops import OpCounter  # noqa: E402
from layer import (  # noqa: E402
    build_graph_model,
    graph_forward,
    molecule_batches,
)

from samsa_geo.nn.attention import config  # noqa: E402
from samsa_geo.testing import recorded_launches  # noqa: E402

OPS = ('samsa_graph_model_hints', 'gps_graph_model', 'gine_graph_model')


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def graph_step_case(op: str, optimizer: str, batches, args,
                    device: torch.device) -> dict:
    torch.manual_seed(0)
    C, depth = args.channels, args.depth
    model = build_graph_model(op, C, depth).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3,
                            fused=True if optimizer == 'fused' else None,
                            foreach=True if optimizer == 'foreach' else None)

    def forward(data):
        return graph_forward(op, model, data)

    def step(data, phases=None):
        start = time.perf_counter()
        loss = F.mse_loss(forward(data), data.y)
        if phases is not None:
            sync(device)
            t_fwd = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if phases is not None:
            sync(device)
            t_bwd = time.perf_counter()
        opt.step()
        if phases is not None:
            sync(device)
            phases.append((t_fwd - start, t_bwd - t_fwd,
                           time.perf_counter() - t_bwd))

    # Each epoch in its own order of the graphs of batches, as a shuffling
    # loader gives them (so the batches' sizes differ between epochs),
    # collated before it runs.
    sizes = dict(num_graphs=sum(data.num_graphs for data in batches),
                 batch_size=batches[0].num_graphs)
    orders = iter([molecule_batches(device, shuffle=e, **sizes) for e in
                   range(args.warmup + args.repeat + 1)])
    for _ in range(args.warmup):
        for data in next(orders):
            step(data)
    sync(device)
    epochs = []
    for _ in range(args.repeat):
        order = next(orders)
        start = time.perf_counter()
        for data in order:
            step(data)
        sync(device)
        epochs.append(time.perf_counter() - start)
    phases = []
    for data in next(orders):
        step(data, phases)

    data = batches[0]
    opt.zero_grad(set_to_none=True)
    with recorded_launches(run=True) as launches:
        with OpCounter(launches) as fwd:
            loss = F.mse_loss(forward(data), data.y)
        with OpCounter(launches) as bwd:
            loss.backward()
        with OpCounter(launches) as upd:
            opt.step()

    def ms(values):
        return 1e3 * statistics.median(values)

    rec = dict(op=op, optimizer=f'adamw_{optimizer}', batch=64,
               channels=C, layers=depth, dtype='fp32',
               **{'pass': 'train_step'}, epoch_ms=ms(epochs),
               fwd_ms=ms([p[0] for p in phases]),
               bwd_ms=ms([p[1] for p in phases]),
               opt_ms=ms([p[2] for p in phases]),
               fwd_calls=fwd.total, fwd_views=fwd.views,
               bwd_calls=bwd.total, bwd_views=bwd.views,
               opt_calls=upd.total, fwd_launches=fwd.launches,
               bwd_launches=bwd.launches, opt_launches=upd.launches,
               trained_tensors=sum(p.grad is not None
                                   for p in model.parameters()),
               # CUDA graphs of training steps the model keeps at the end
               # (SamsaGraphModel's; None for the other models).
               graphs_kept=(len(model._train_graphs)
                            if hasattr(model, '_train_graphs') else None))
    rec.update(provenance(device, args))
    return rec


def ab_states(names):
    """The switch settings of ``--ab``: all off, each alone on, and all on
    where there are several."""
    off = {name: False for name in names}
    states = [off] + [dict(off, **{name: True}) for name in names]
    if len(names) > 1:
        states.append({name: True for name in names})
    return states


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available()
                   else 'cpu')
    p.add_argument('--ops', default=','.join(OPS))
    p.add_argument('--optimizers', default='foreach,fused')
    p.add_argument('--channels', type=int, default=64)
    p.add_argument('--depth', type=int, default=3)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--repeat', type=int, default=5)
    add_commit_argument(p)
    p.add_argument('--out', default=None)
    p.add_argument('--ab', metavar='SWITCHES', default=None,
                   help='attention config switches, comma-separated: the '
                   'SAMSA model runs with all off, each alone on and (for '
                   'several) all on')
    args = p.parse_args()
    names = [] if args.ab is None else args.ab.split(',')
    unknown = [name for name in names if name not in config._SETTERS]
    if unknown:
        p.error(f"--ab expects some of {sorted(config._SETTERS)} "
                f"(got {', '.join(map(repr, unknown))})")
    device = torch.device(args.device)
    batches = molecule_batches(device)
    records = []
    for op in args.ops.split(','):
        states = [None]
        if names and op.startswith('samsa'):
            states = ab_states(names)
        for opt in args.optimizers.split(','):
            for state in states:
                with config.attention_config(**(state or {})):
                    rec = graph_step_case(op, opt, batches, args, device)
                if state is not None:
                    rec['attention_config'] = ','.join(
                        f'{name}={int(on)}' for name, on in state.items())
                records.append(rec)
    out = args.out or os.path.join(os.path.dirname(__file__), 'results',
                                   'graph_step.json')
    write_records(records, out)
    columns = ['op', 'optimizer', 'epoch_ms', 'fwd_ms', 'bwd_ms', 'opt_ms',
               'fwd_calls', 'bwd_calls', 'opt_calls', 'fwd_launches',
               'bwd_launches']
    if args.ab is not None:
        columns.insert(2, 'attention_config')
    print_table(records, columns)


if __name__ == '__main__':
    main()
