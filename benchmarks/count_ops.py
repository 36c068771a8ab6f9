"""Host work of one layer call, counted on the CPU: the aten operators it
dispatches (each one a kernel launch or at least a dispatch on a GPU), the
module calls and the autograd nodes of its graph, for the forward pass alone
(inference) and for a training step (forward and backward). A proxy for the
host time per call on a GPU, where eager calls of these layers are bound by
launches. The CPU time per call (this thread's, least of ``--repeat``) is
printed too, at the counted size and at a small one (``--time-size``) where
host work dominates::

    python benchmarks/count_ops.py
    python benchmarks/count_ops.py --sizes 32x1024 --channels 256 --k 256
    python benchmarks/count_ops.py --graph-step
    python benchmarks/count_ops.py --dtype bf16

``--dtype bf16`` runs the calls under CPU autocast, as
``benchmarks/layer.py`` runs them under CUDA autocast: the parameters'
casts are counted too. ``--ab SWITCH`` times ``samsa_conv_batch`` at the
``--time-size`` with an attention switch on and off in interleaved
rounds of one process (less noise than two runs on shared cores)::

    python benchmarks/count_ops.py --ab stacked_casts --dtype bf16

``--graph-step`` counts one training step (forward and backward, without
the optimizer) of the small-graph models of ``benchmarks/layer.py
--graph-epoch`` on its first batch of 64 molecule-sized graphs:
``samsa_graph_model`` given ``num_graphs`` only, ``samsa_graph_model_hints``
given :func:`~samsa_geo.nn.batch_hints`, the GPSConv and GINE models.
``--host`` times instead the host work of each model's step
(forward with its loss, and backward) on 4 small graphs of 8 channels,
where the CPU's compute is a minor part, the models interleaved in
``--rounds`` rounds, with ratios to the GINE model::

    python benchmarks/count_ops.py --graph-step --host --rounds 300

``--per-layer`` splits those counts into one layer's (the model of 3
layers less the model of 2) and the rest of the model's (encoders, head,
loss)::

    python benchmarks/count_ops.py --graph-step --per-layer

``--kernels SWITCHES`` also counts ``samsa_graph_model_hints`` with the
attention ``config`` switches of samsa_geo's Triton kernels for small
graphs on (``packed_attention``, ``fused_gine``; each alone and all),
their kernels run by Triton's interpreter where they would serve a CUDA
call, each launch counted once and the interpreter's own work not::

    TRITON_INTERPRET=1 python benchmarks/count_ops.py --graph-step \
        --kernels packed_attention,fused_gine

``--replay`` times the host's work of a ``SamsaConv`` inference call
that replays its CUDA graph (``samsa_conv_batch`` at ``--time-size``,
``batch_hints`` given), on the CPU with a stand-in graph whose replay
runs nothing, for inputs the graph copies in (two tensors in turn) and
inputs it reads in place (the same tensors again): from the call to the
launch of the inputs' copies and to the replay's (what the GPU waits
for, a call alone), and the whole call (its last step included, run on
the CPU)::

    python benchmarks/count_ops.py --replay --channels 64 --time-size 4x64

The layers are built and called as ``benchmarks/layer.py`` does (``build``,
``call``). The value checks that SamsaAttention runs on the CPU only
(finite inputs) are switched off, as on a GPU outside debug mode.
"""
import argparse
import collections
import contextlib
import os
import sys
import time
from typing import Callable, Dict, List, Optional
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_sizes  # noqa: E402
from layer import (  # noqa: E402
    build,
    build_graph_model,
    call,
    graph_forward,
    molecule_batches,
)

from samsa_geo.nn.attention import config  # noqa: E402
from samsa_geo.testing import autograd_node_kinds  # noqa: E402


class OpCounter(TorchDispatchMode):
    """Counts every aten operator call below autograd; ``views`` counts the
    ones that only make a new view of their input (no kernel). Given the
    list of :func:`samsa_geo.testing.recorded_launches`, ``launches``
    counts the Triton launches made inside the block."""
    def __init__(self, launches: Optional[List] = None):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.views = 0
        self.launches = 0
        self._recorded = launches

    def __enter__(self):
        self._first = len(self._recorded or ())
        return super().__enter__()

    def __exit__(self, *exc):
        self.launches = len(self._recorded or ()) - self._first
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        self.views += bool(func.is_view)
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


#: The switches of --kernels: samsa_geo's Triton kernels that a training
#: step of the small-graph model takes on CUDA.
GRAPH_KERNEL_SWITCHES = ('packed_attention', 'fused_gine')


@contextlib.contextmanager
def interpreted_kernels():
    """Inside: samsa_geo's Triton kernels serve the CPU calls they would
    serve on CUDA (run by Triton's interpreter), and the list it yields
    records their launches (:func:`samsa_geo.testing.recorded_launches`,
    for :class:`OpCounter`)."""
    from samsa_geo.nn.attention import _dense
    from samsa_geo.ops import _triton
    from samsa_geo.testing import recorded_launches
    with mock.patch.object(_triton, 'runs_on', lambda x, forced: True), \
            mock.patch.object(_dense, 'triton_serves', lambda device: True), \
            recorded_launches(run=True) as launches:
        yield launches


def count_modules(fn: Callable[[], object]):
    """``(result, number of module calls)`` of ``fn()``."""
    calls = [0]

    def hook(module, args):
        calls[0] += 1

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        out = fn()
    finally:
        handle.remove()
    return out, calls[0]


def least_thread_time(step: Callable[[], object], reset: Callable[[], None],
                      repeat: int) -> float:
    """CPU time in ms of this thread (one intra-op thread) for ``step()``,
    the least of ``repeat`` calls, ``reset()`` after each: robust to other
    processes sharing the cores."""
    times: List[float] = []
    for _ in range(repeat):
        t0 = time.thread_time()
        step()
        times.append((time.thread_time() - t0) * 1e3)
        reset()
    return min(times)


def measure(op: str, B: int, n: int, C: int, H: int, k: int, train: bool,
            repeat: int, dtype: str = 'fp32') -> Dict[str, object]:
    torch.manual_seed(0)
    model = build(op, C, H, k).train(train)
    x = torch.randn(B * n, C, requires_grad=train)
    batch = torch.arange(B).repeat_interleave(n)

    def forward():
        with torch.autocast('cpu', dtype=torch.bfloat16,
                            enabled=dtype == 'bf16'):
            return call(op, model, x, batch, B)

    def step():
        with torch.set_grad_enabled(train):
            out = forward()
        if train:
            out.float().square().mean().backward()
        return out

    def reset():
        model.zero_grad(set_to_none=True)
        x.grad = None

    # First call: caches (fused weights, batch sizes); the gradients go,
    # as in benchmarks/layer.py's steps (none to accumulate into).
    step()
    reset()
    with OpCounter() as fwd_counter:
        with torch.set_grad_enabled(train):
            out, modules = count_modules(forward)
    rec = dict(op=op, size=f'{B}x{n}', step='train' if train else 'fwd',
               fwd_ops=fwd_counter.total, fwd_views=fwd_counter.views,
               modules=modules, top=fwd_counter.ops)
    if train:
        nodes = autograd_node_kinds(out)
        with OpCounter() as bwd_counter:
            out.float().square().mean().backward()
        rec.update(bwd_ops=bwd_counter.total, bwd_views=bwd_counter.views,
                   nodes=sum(nodes.values()),
                   top=fwd_counter.ops + bwd_counter.ops)
        reset()
    rec['ms'] = least_thread_time(step, reset, repeat)
    return rec


def ab_times(switch: str, B: int, n: int, C: int, H: int, k: int,
             train: bool, dtype: str, rounds: int,
             repeat: int) -> Dict[bool, float]:
    """Least thread time in ms of a ``samsa_conv_batch`` call (or training
    step) with the attention switch ``switch`` on and off, over
    ``rounds`` interleaved rounds of ``repeat`` calls each."""
    torch.manual_seed(0)
    model = build('samsa_conv_batch', C, H, k).train(train)
    x = torch.randn(B * n, C, requires_grad=train)
    batch = torch.arange(B).repeat_interleave(n)

    def step():
        with torch.autocast('cpu', dtype=torch.bfloat16,
                            enabled=dtype == 'bf16'):
            with torch.set_grad_enabled(train):
                out = call('samsa_conv_batch', model, x, batch, B)
        if train:
            out.float().square().mean().backward()

    def reset():
        model.zero_grad(set_to_none=True)
        x.grad = None

    best = {True: float('inf'), False: float('inf')}
    for _ in range(rounds):
        for on in (True, False):
            with config.attention_config(**{switch: on}):
                step()
                reset()
                best[on] = min(best[on],
                               least_thread_time(step, reset, repeat))
    return best


def graph_kernel_counts(names: List[str]) -> List[Dict[str, object]]:
    """The aten calls and kernel launches of ``samsa_graph_model_hints``'s
    training step with each switch of ``names`` alone on and, for several,
    all on (see :func:`interpreted_kernels`)."""
    settings = [[name] for name in names]
    if len(names) > 1:
        settings.append(list(names))
    rows = []
    for on in settings:
        with interpreted_kernels() as launches, \
                config.attention_config(**{name: True for name in on}):
            r = measure_graph_step('samsa_graph_model_hints', 0, launches)
        r['op'] = 'samsa_graph_model_hints +' + '+'.join(on)
        rows.append(r)
    return rows


def measure_graph_step(op: str, repeat: int,
                       launches: Optional[List] = None, depth: int = 3,
                       ) -> Dict[str, object]:
    """Counts (and, for ``repeat`` > 0, times) one training step of the
    small-graph model ``op`` of ``depth`` layers; with ``launches`` (the
    list of :func:`interpreted_kernels`) also the kernel launches of each
    pass."""
    torch.manual_seed(0)
    data = molecule_batches(torch.device('cpu'))[0]
    model = build_graph_model(op, 64, depth)

    def forward():
        return graph_forward(op, model, data)

    def step():
        torch.nn.functional.mse_loss(forward(), data.y).backward()

    step()
    # Counted as a training loop runs it: gradients set to None first, so
    # the backward pass writes them instead of adding to them.
    model.zero_grad(set_to_none=True)
    with OpCounter(launches) as fwd_counter:
        out = forward()
    loss = torch.nn.functional.mse_loss(out, data.y)
    with OpCounter(launches) as bwd_counter:
        loss.backward()
    ms = least_thread_time(step, lambda: model.zero_grad(set_to_none=True),
                           repeat) if repeat > 0 else None
    return dict(op=op, fwd_ops=fwd_counter.total, bwd_ops=bwd_counter.total,
                fwd_views=fwd_counter.views, bwd_views=bwd_counter.views,
                ms=ms, fwd_top=fwd_counter.ops, bwd_top=bwd_counter.ops,
                fwd_launches=fwd_counter.launches,
                bwd_launches=bwd_counter.launches)


def graph_layer_counts(op: str) -> Dict[str, tuple]:
    """The aten calls and views of one training step of the small-graph
    model ``op`` split into one layer's (the model of 3 layers less the
    model of 2) and the rest's (encoders, head, loss): ``layer_fwd``,
    ``layer_bwd``, ``rest_fwd``, ``rest_bwd``, each (calls, views)."""
    two, three = (measure_graph_step(op, 0, depth=d) for d in (2, 3))
    names = [f'{key}_{n}' for key in ('fwd', 'bwd') for n in ('ops', 'views')]
    layer = {n: three[n] - two[n] for n in names}
    rest = {n: three[n] - 3 * layer[n] for n in names}
    return {f'{part}_{key}': (counts[f'{key}_ops'], counts[f'{key}_views'])
            for part, counts in (('layer', layer), ('rest', rest))
            for key in ('fwd', 'bwd')}


def graph_host_times(ops: List[str], rounds: int) -> Dict[str, tuple]:
    """Host time of the training step of each small-graph model of
    ``ops`` on a batch small enough that the CPU's own compute is a minor
    part (4 molecule-sized graphs, 8 channels): the forward pass with its
    loss and the backward pass, this thread's CPU time in ms (the first
    quartile over ``rounds`` rounds, the models interleaved in each)."""
    data = molecule_batches(torch.device('cpu'), num_graphs=4,
                            batch_size=4)[0]
    models = {}
    for op in ops:
        torch.manual_seed(0)
        models[op] = build_graph_model(op, 8, 3)
    times: Dict[str, tuple] = {op: ([], []) for op in ops}
    for r in range(rounds + 5):  # 5 rounds of warm-up
        for op in ops:
            model = models[op]
            t0 = time.thread_time()
            loss = torch.nn.functional.mse_loss(
                graph_forward(op, model, data), data.y)
            t1 = time.thread_time()
            loss.backward()
            t2 = time.thread_time()
            model.zero_grad(set_to_none=True)
            if r >= 5:
                times[op][0].append(1e3 * (t1 - t0))
                times[op][1].append(1e3 * (t2 - t1))
    return {op: tuple(sorted(t)[len(t) // 4] for t in times[op])
            for op in ops}


class _CudaStandIn(torch.Tensor):
    # A CPU tensor that SamsaConv takes for a CUDA one (is_cuda), with no
    # __torch_function__ of its own: operators see a plain tensor.
    __torch_function__ = torch._C._disabled_torch_function_impl

    @property
    def is_cuda(self) -> bool:
        return True


class _StandInGraph:
    # Stands in for a captured CUDA graph: its buffers hold the traced
    # call's outputs (the layer's body up to its last step), and a replay
    # runs nothing but notes its time in marks.
    def __init__(self, out, marks: List[float]):
        self.out, self.marks = out, marks

    def replay(self):
        self.marks.append(time.perf_counter())

    def pool(self):
        return (0, 0)


def replay_host_times(B: int, n: int, C: int, H: int, k: int,
                      repeat: int) -> Dict[str, Dict[str, float]]:
    """Host time of ``samsa_conv_batch`` inference calls that replay a
    stand-in CUDA graph on the CPU (median of ``repeat`` calls, after the
    capture), for two kinds of call: ``'copies'``, inputs at other
    addresses than the last call's (two tensors in turn), which the graph
    copies in, and ``'in_place'``, the same tensors again, which it reads
    where they are. Each gives ``to_copies_us`` from the call to the
    launch of the inputs' copies (NaN where there is none), ``to_replay_us``
    to the replay's launch, ``call_us`` the whole call (its last step run
    on the CPU), ``replays`` (the timed calls that replayed, all of them
    unless one ran eagerly), ``copies`` (the timed calls that copied) and
    ``max_abs_diff``, between a replayed call's output and an eager one's
    (the stand-in graph holds the traced body's outputs)."""
    from samsa_geo.nn.conv import _graph_replay
    torch.manual_seed(0)
    conv = build('samsa_conv_batch', C, H, k).eval()
    batch = torch.arange(B).repeat_interleave(n)
    copies: List[float] = []
    replays: List[float] = []
    load = _graph_replay._Graph.load

    def timed_load(self, inputs):
        copies.append(time.perf_counter())
        return load(self, inputs)

    def capture(fn, buffers, pool):
        with config.attention_config(cuda_graphs=False):
            out = fn(*[t.as_subclass(torch.Tensor) for t in buffers])
        return _StandInGraph(out, replays), out

    attn = conv.attn
    out: Dict[str, Dict[str, float]] = {}
    with mock.patch.object(torch.cuda, 'is_current_stream_capturing',
                           lambda: False), \
            mock.patch.object(_graph_replay, 'capture', capture), \
            mock.patch.object(_graph_replay._Graph, 'load', timed_load), \
            mock.patch.object(attn, '_runs_fused', lambda *a: True), \
            torch.no_grad():
        for mode, count in (('copies', 2), ('in_place', 1)):
            conv._graphs.clear()
            xs = [torch.randn(B * n, C).as_subclass(_CudaStandIn)
                  for _ in range(count)]
            for i in range(3):  # eager, eager, captured
                call('samsa_conv_batch', conv, xs[i % count], batch, B)
            n_copies, n_replays = len(copies), len(replays)
            to_copies, to_replay, whole = [], [], []
            for i in range(repeat):
                c, r = len(copies), len(replays)
                t0 = time.perf_counter()
                call('samsa_conv_batch', conv, xs[i % count], batch, B)
                t1 = time.perf_counter()
                whole.append(t1 - t0)
                to_copies.append(copies[-1] - t0 if len(copies) > c
                                 else float('nan'))
                to_replay.append(replays[-1] - t0 if len(replays) > r
                                 else float('nan'))
            x = xs[0]
            got = call('samsa_conv_batch', conv, x, batch, B)
            with config.attention_config(cuda_graphs=False):
                ref = call('samsa_conv_batch', conv, x, batch, B)
            out[mode] = dict(
                to_copies_us=1e6 * _median(to_copies),
                to_replay_us=1e6 * _median(to_replay),
                call_us=1e6 * _median(whole),
                replays=len(replays) - n_replays - 1,
                copies=len(copies) - n_copies - (mode == 'copies'),
                max_abs_diff=(got - ref).abs().max().item())
    return out


def _median(values: List[float]) -> float:
    # NaN where any value is (a call without the mark).
    if any(v != v for v in values):
        return float('nan')
    return sorted(values)[len(values) // 2]


def print_top(r: Dict[str, object]) -> None:
    """Lists the operators of each pass of a graph-step count by count."""
    for pas in ('fwd', 'bwd'):
        print(f'    {pas}: ' + ', '.join(
            f'{name} {c}' for name, c in r[pas + '_top'].most_common()))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--sizes', default='32x1024')
    p.add_argument('--ops', default='samsa_conv_batch,samsa_conv,full_layer')
    p.add_argument('--channels', type=int, default=64)
    p.add_argument('--heads', type=int, default=8)
    p.add_argument('--k', type=int, default=64)
    p.add_argument('--repeat', type=int, default=51)
    p.add_argument('--time-size', default='4x128',
                   help='size of the wall-clock timing, where host work '
                   'dominates')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--dtype', choices=('fp32', 'bf16'), default='fp32',
                   help='bf16: the calls run under CPU autocast')
    p.add_argument('--graph-step', action='store_true',
                   help='count a training step of the small-graph models '
                   'instead')
    p.add_argument('--kernels', metavar='SWITCHES', default=None,
                   help='with --graph-step: also count the SAMSA model with '
                   'these switches on (some of '
                   f'{",".join(GRAPH_KERNEL_SWITCHES)}), under '
                   'TRITON_INTERPRET=1')
    p.add_argument('--ab', metavar='SWITCH',
                   help='time samsa_conv_batch at --time-size with this '
                   'attention switch on and off, interleaved')
    p.add_argument('--rounds', type=int, default=40)
    p.add_argument('--list', action='store_true',
                   help='also list the operators of each case by count')
    p.add_argument('--per-layer', action='store_true',
                   help='with --graph-step: the calls of one layer of each '
                   'model (3 layers less 2) and of the rest of the model')
    p.add_argument('--host', action='store_true',
                   help='with --graph-step: time the host work of each '
                   'model\'s step on a batch of 4 small graphs (8 '
                   'channels), the models interleaved, for --rounds rounds')
    p.add_argument('--replay', action='store_true',
                   help='time the host work of samsa_conv_batch inference '
                   'calls at --time-size that replay a stand-in CUDA '
                   'graph, with inputs copied in and read in place: to the '
                   'copies\' and the replay\'s launch, and the whole call')
    args = p.parse_args()
    kernels = [] if args.kernels is None else args.kernels.split(',')
    if kernels:
        unknown = set(kernels) - set(GRAPH_KERNEL_SWITCHES)
        if unknown or not args.graph_step:
            p.error(f"--kernels takes --graph-step and some of "
                    f"{GRAPH_KERNEL_SWITCHES} (got {args.kernels!r})")
        if os.environ.get('TRITON_INTERPRET') != '1':
            p.error('--kernels runs the kernels in Triton\'s interpreter: '
                    'set TRITON_INTERPRET=1')
    if args.per_layer and not args.graph_step:
        p.error('--per-layer takes --graph-step')
    torch.set_num_threads(args.threads)
    sizes = '' if args.graph_step and args.host else \
        f', C={args.channels}, H={args.heads}, k={args.k}, {args.dtype}'
    print(f'CPU, {args.threads} thread(s), torch {torch.__version__}{sizes}')
    if args.replay:
        (tB, tn), = parse_sizes(args.time_size)
        with mock.patch.object(config, 'checks_values', lambda device: False):
            r = replay_host_times(tB, tn, args.channels, args.heads, args.k,
                                  max(args.repeat, 1001))
        for mode, m in r.items():
            copied = ('' if mode == 'in_place' else
                      f"{m['to_copies_us']:.1f} us to the copies' launch, ")
            print(f"samsa_conv_batch {args.time_size} replayed inference "
                  f"call, inputs {mode.replace('_', ' ')} (stand-in graph, "
                  f"median of {m['replays']}): {copied}"
                  f"{m['to_replay_us']:.1f} us to the replay's launch, "
                  f"{m['call_us']:.1f} us the whole call")
        return
    if args.ab:
        (tB, tn), = parse_sizes(args.time_size)
        with mock.patch.object(config, 'checks_values', lambda device: False):
            for train in (False, True):
                best = ab_times(args.ab, tB, tn, args.channels, args.heads,
                                args.k, train, args.dtype, args.rounds, 25)
                print(f"samsa_conv_batch {args.time_size} "
                      f"{'train' if train else 'fwd'}: {args.ab}=1 "
                      f"{best[True]:.3f} ms, {args.ab}=0 {best[False]:.3f} ms")
        return
    if args.graph_step and args.host:
        ops = ['samsa_graph_model_hints', 'gps_graph_model',
               'gine_graph_model']
        with mock.patch.object(config, 'checks_values', lambda device: False):
            host = graph_host_times(ops, args.rounds)
        gine = host['gine_graph_model']
        print(f"host ms per step, 4 graphs, C=8, fp32 (first quartile of "
              f"{args.rounds} rounds)")
        print(f"{'op':<24} {'fwd ms':>8} {'bwd ms':>8} {'x GINE fwd':>11} "
              f"{'bwd':>6} {'step':>6}")
        for op, (f, b) in host.items():
            print(f"{op:<24} {f:>8.3f} {b:>8.3f} {f / gine[0]:>11.2f} "
                  f"{b / gine[1]:>6.2f} {(f + b) / sum(gine):>6.2f}")
        return
    if args.graph_step and args.per_layer:
        # One layer's calls: the model of 3 layers less the model of 2.
        print("aten calls of one training step (views in brackets): one "
              "layer, and the rest of the model (encoders, head, loss)")
        print(f"{'op':<24} {'layer fwd':>12} {'layer bwd':>12} "
              f"{'rest fwd':>12} {'rest bwd':>12}")
        with mock.patch.object(config, 'checks_values', lambda device: False):
            for op in ('samsa_graph_model_hints', 'gps_graph_model',
                       'gine_graph_model'):
                cells = graph_layer_counts(op)
                print(f"{op:<24} " + ' '.join(
                    f"{f'{c} ({v})':>12}" for c, v in cells.values()))
        return
    if args.graph_step:
        print(f"{'op':<24} {'fwd ops':>8} {'bwd ops':>8} {'ms':>8}")
        with mock.patch.object(config, 'checks_values', lambda device: False):
            for op in ('samsa_graph_model', 'samsa_graph_model_hints',
                       'gps_graph_model', 'gine_graph_model'):
                r = measure_graph_step(op, args.repeat)
                print(f"{op:<24} {r['fwd_ops']:>8} {r['bwd_ops']:>8} "
                      f"{r['ms']:>8.2f}")
                if args.list:
                    print_top(r)
            if kernels:
                print('Triton kernels on (interpreted): aten calls + '
                      'launches')
            for r in graph_kernel_counts(kernels):
                print(f"{r['op']}: forward {r['fwd_ops']} + "
                      f"{r['fwd_launches']}, backward {r['bwd_ops']} + "
                      f"{r['bwd_launches']}")
                if args.list:
                    print_top(r)
        return
    print(f"{'op':<18} {'size':<9} {'step':<6} {'fwd ops':>8} "
          f"{'(views)':>8} {'bwd ops':>8} {'(views)':>8} {'modules':>8} "
          f"{'nodes':>6} {'ms':>8} {'ms at ' + args.time_size:>12}")
    with mock.patch.object(config, 'checks_values', lambda device: False):
        for B, n in parse_sizes(args.sizes):
            for op in args.ops.split(','):
                for train in (False, True):
                    r = measure(op, B, n, args.channels, args.heads, args.k,
                                train, 1, args.dtype)
                    (tB, tn), = parse_sizes(args.time_size)
                    small = measure(op, tB, tn, args.channels, args.heads,
                                    args.k, train, args.repeat, args.dtype)
                    print(f"{r['op']:<18} {r['size']:<9} {r['step']:<6} "
                          f"{r['fwd_ops']:>8} {r['fwd_views']:>8} "
                          f"{r.get('bwd_ops', '-'):>8} "
                          f"{r.get('bwd_views', '-'):>8} "
                          f"{r['modules']:>8} {r.get('nodes', '-'):>6} "
                          f"{r['ms']:>8.2f} {small['ms']:>12.3f}")
                    if args.list:
                        print('    ' + ', '.join(
                            f'{name} {c}'
                            for name, c in r['top'].most_common()))


if __name__ == '__main__':
    main()
