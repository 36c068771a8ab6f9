"""Profile of one SamsaConv call (and the full-attention peer): GPU kernels,
GPU time, host synchronisations and the top operators by host time::

    python benchmarks/profile_layer.py --sizes 32x1024 --pass fwd

``--host`` adds the host's side: the aten calls of one call (forward and
backward, views apart), the host time per call of calls issued back to
back without synchronising, the time per call of the same stream
including the GPU's, and the host's own time for the forward and for the
backward, each issued while the GPU still runs a long sleep kernel (so
that no call waits on the GPU; median of 9); ``--kernels N`` lists the N
kernel names with the most GPU time (total and launches). Gradients are
set to ``None`` after each training step, as in ``benchmarks/layer.py``::

    python benchmarks/profile_layer.py --sizes 32x1024,1x262144 \
        --ops samsa_conv_batch,full_layer --pass fwdbwd --host --kernels 40

``--compile`` profiles the layer under :func:`torch.compile` (default
mode); the aten counts of ``--host`` stay the eager model's. The layer's
own CUDA graphs of inference calls are off unless ``--cuda-graphs``.

``--replay-parts`` (with ``--cuda-graphs``, ``--pass fwd``) splits an
inference call that replays a CUDA graph into what it issues: the copies
of the inputs into the graph's buffers (none where the graph reads them
in place, as it does for the one input tensor called again here), the
replay and the layer's last step after it (``tail``). It times the whole
call and its parts issued directly (``copies+replay+tail``,
``replay+tail``, ``replay``, ``copies``, ``tail``), each per call and
pipelined (CUDA events, median), and the host's time of each with an
idle GPU; the whole call less its parts is the host's work before the
copies or the replay (the layer's checks)::

    python benchmarks/profile_layer.py --sizes 32x1024,1x65536 \
        --ops samsa_conv_batch --cuda-graphs --replay-parts
"""
import collections
import statistics
import time
import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import measure, parse_sizes  # noqa: E402
from count_ops import OpCounter  # noqa: E402
from layer import DTYPES, build, call  # noqa: E402

from samsa_geo.nn.attention import config  # noqa: E402


def host_times(step, calls: int = 30):
    """(host ms, ms) per call of ``calls`` steps issued back to back: the
    host's time to issue them, and the time until the GPU finished."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        step()
    host = time.perf_counter() - t0
    torch.cuda.synchronize()
    total = time.perf_counter() - t0
    return host / calls * 1e3, total / calls * 1e3


#: GPU cycles of the sleep kernel that keeps the GPU busy while the host
#: issues the pass that busy_host_times times (about 50 ms).
SLEEP_CYCLES = 100_000_000


def busy_host_times(forward, backward=None, calls: int = 9,
                    sleep=None):
    """Median host ms of ``forward()`` and of ``backward(out)`` on its
    output (:obj:`None` without ``backward``), each issued while the GPU
    runs ``sleep()`` (on CUDA a kernel of :data:`SLEEP_CYCLES` cycles,
    launched before each pass): the host's own time, with no call waiting
    for the GPU to catch up."""
    if sleep is None:
        def sleep():
            torch.cuda.synchronize()
            torch.cuda._sleep(SLEEP_CYCLES)
    fwd, bwd = [], []
    for _ in range(calls):
        sleep()
        t0 = time.perf_counter()
        out = forward()
        fwd.append(time.perf_counter() - t0)
        if backward is not None:
            sleep()
            t0 = time.perf_counter()
            backward(out)
            bwd.append(time.perf_counter() - t0)

    return (1e3 * statistics.median(fwd),
            1e3 * statistics.median(bwd) if bwd else None)


def replay_parts(model, inputs, tail_args, call_fn):
    """``[(name, fn)]``: the whole inference call ``call_fn`` of ``model``
    (a :class:`~samsa_geo.nn.SamsaConv` whose call replays a CUDA graph)
    and the parts it issues, from the graph it replayed last: the copies
    of ``inputs`` into the graph's buffers (none where the graph reads
    them in place), the replay and the layer's last step on the graph's
    outputs (``model._tail(*out, *tail_args)``). Raises
    :class:`RuntimeError` where the model holds no graph."""
    graphs = getattr(getattr(model, '_graphs', None), '_graphs', None)
    if not graphs:
        raise RuntimeError("Expected the layer to replay a CUDA graph "
                           "(--cuda-graphs, --pass fwd, a signature seen "
                           "three times)")
    entry = next(reversed(graphs.values()))
    in_place = not entry.inputs
    if not in_place and len(entry.inputs) != len(inputs):
        raise RuntimeError(f"Expected {len(entry.inputs)} inputs of the "
                           f"graph (got {len(inputs)})")

    def copies():
        entry.load(inputs)

    def replay():
        entry.graph.replay()

    def tail():
        return model._tail(*entry.out, *tail_args)

    def replay_tail():
        replay()
        return tail()

    def copies_replay_tail():
        copies()
        return replay_tail()

    if in_place:
        return [('call', call_fn), ('replay+tail', replay_tail),
                ('replay', replay), ('tail', tail)]
    return [('call', call_fn), ('copies+replay+tail', copies_replay_tail),
            ('replay+tail', replay_tail), ('replay', replay),
            ('copies', copies), ('tail', tail)]


def print_replay_parts(title, parts, dtype, device) -> None:
    """Prints each of ``parts`` (:func:`replay_parts`), run under autocast
    to ``dtype`` without gradients: ms per call, pipelined, and the host's
    ms with an idle GPU."""
    for name, fn in parts:
        def run(fn=fn):
            with torch.autocast('cuda', dtype=dtype), torch.no_grad():
                return fn()
        one = measure(run, device, repeat=30)['ms']
        piped = measure(run, device, repeat=20, pipelined=True)['ms']
        # The host's time after a synchronisation: with an idle GPU.
        host = busy_host_times(run, calls=30,
                               sleep=torch.cuda.synchronize)[0]
        print(f'== {title} {name:<20} {one:.3f} ms per call, {piped:.3f} '
              f'pipelined, host (idle GPU) {host:.3f}')


def count_aten(op, model, xg, batch, B, dtype, train):
    """Aten calls (and of them views) of one forward and its backward."""
    with OpCounter() as fwd:
        with torch.autocast('cuda', dtype=dtype), \
                torch.set_grad_enabled(train):
            out = call(op, model, xg, batch, B)
    bwd = OpCounter()
    if train:
        with bwd:
            out.backward(torch.ones_like(out))
        model.zero_grad(set_to_none=True)
        xg.grad = None
    return fwd, bwd


def kernel_totals(kernels, top: int):
    """Lines of the ``top`` kernel names by GPU time."""
    time_by, count_by = collections.Counter(), collections.Counter()
    for e in kernels:
        time_by[e.name] += e.device_time
        count_by[e.name] += 1
    return [f'  {t / 1e3:8.3f} ms {count_by[name]:4d}x {name[:100]}'
            for name, t in time_by.most_common(top)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--sizes', default='32x1024')
    p.add_argument('--ops', default='samsa_conv,samsa_conv_hints,full_layer')
    p.add_argument('--pass', dest='pas', default='fwd',
                   choices=['fwd', 'fwdbwd'])
    p.add_argument('--dtype', default='bf16', choices=list(DTYPES))
    p.add_argument('--top', type=int, default=12)
    p.add_argument('--sort', default='self_cpu_time_total',
                   help="column the operator table is sorted by, e.g. "
                   "'self_device_time_total'")
    p.add_argument('--host', action='store_true',
                   help='also count aten calls and time the host')
    p.add_argument('--kernels', type=int, default=0,
                   help='list this many kernel names by GPU time')
    p.add_argument('--cuda-graphs', action='store_true',
                   help="let SamsaConv replay CUDA graphs of its inference "
                   "calls (config.use_cuda_graphs); off by default here, so "
                   "that the profile shows every eager launch")
    p.add_argument('--compile', action='store_true',
                   help='profile torch.compile(model) (default mode; '
                   'operator counts stay those of the eager model)')
    p.add_argument('--replay-parts', action='store_true',
                   help='time an inference replay and its parts (copies '
                   'in, replay, last step) per call and pipelined, and '
                   'their host time; needs --cuda-graphs and --pass fwd')
    args = p.parse_args()
    if args.replay_parts and not (args.cuda_graphs and args.pas == 'fwd'):
        p.error('--replay-parts needs --cuda-graphs and --pass fwd')
    config.set_cuda_graphs(args.cuda_graphs)
    device = torch.device('cuda')
    for B, n in parse_sizes(args.sizes):
        x = torch.randn(B * n, 256, device=device)
        batch = torch.arange(B, device=device).repeat_interleave(n)
        for op in args.ops.split(','):
            model = build(op, 256, 8, 256).to(device)
            model.train(args.pas == 'fwdbwd')
            fn_model = torch.compile(model) if args.compile else model
            xg = x.detach().requires_grad_(args.pas == 'fwdbwd')
            # The output's gradient, fixed as in layer.py: no loss.
            grad_out = torch.randn_like(x)  # [N, C]

            def forward():
                with torch.autocast('cuda', dtype=DTYPES[args.dtype]), \
                        torch.set_grad_enabled(args.pas == 'fwdbwd'):
                    return call(op, fn_model, xg, batch, B)

            def backward(out):
                out.backward(grad_out)
                model.zero_grad(set_to_none=True)
                xg.grad = None

            def step():
                out = forward()
                if args.pas == 'fwdbwd':
                    backward(out)

            for _ in range(3):
                step()
            torch.cuda.synchronize()
            if args.replay_parts and op.startswith('samsa_conv'):
                print_replay_parts(f'{op} {B}x{n}', replay_parts(
                    model, (xg, batch), (batch, B), forward),
                    DTYPES[args.dtype], device)
                continue
            if args.host:
                fwd, bwd = count_aten(op, model, xg, batch, B,
                                      DTYPES[args.dtype],
                                      args.pas == 'fwdbwd')
                host_ms, ms = host_times(step)
                fwd_ms, bwd_ms = busy_host_times(
                    forward, backward if args.pas == 'fwdbwd' else None)
                print(f'== {op} {B}x{n} {args.pas}: host {host_ms:.3f} ms '
                      f'per call, {ms:.3f} ms with the GPU; aten calls '
                      f'{fwd.total} ({fwd.views} views) forward, '
                      f'{bwd.total} ({bwd.views} views) backward')
                print(f'== {op} {B}x{n} {args.pas}: host alone (GPU busy) '
                      f'{fwd_ms:.3f} ms forward' + (
                          '' if bwd_ms is None
                          else f', {bwd_ms:.3f} ms backward'))
            with profile(activities=[ProfilerActivity.CPU,
                                     ProfilerActivity.CUDA]) as prof:
                step()
                torch.cuda.synchronize()
            events = prof.events()
            kernels = [e for e in events
                       if e.device_type == torch.autograd.DeviceType.CUDA]
            syncs = [e for e in events if 'Synchronize' in e.name
                     or e.name in ('aten::item', 'aten::_local_scalar_dense')]
            gpu_ms = sum(e.device_time for e in kernels) / 1e3
            print(f'== {op} {B}x{n} {args.pas}: {len(kernels)} kernels, '
                  f'{gpu_ms:.3f} ms GPU, {len(syncs)} sync events')
            for line in kernel_totals(kernels, args.kernels):
                print(line)
            print(prof.key_averages().table(
                sort_by=args.sort, row_limit=args.top,
                max_name_column_width=60))


if __name__ == '__main__':
    main()
