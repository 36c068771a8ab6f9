"""Profile of one small-graph training epoch (the models, batches and fused
AdamW of ``benchmarks/graph_step.py``), steps issued back to back as a
training loop issues them: the epoch's time without the profiler, the GPU's
kernel time and kernel count within it, the host's runtime calls (kernel
launches, copies, synchronisations) and the operators with the most host
time::

    python benchmarks/profile_graph_step.py --device cuda
    python benchmarks/profile_graph_step.py --ops samsa_graph_model_hints \\
        --top 40

On a GPU, where these steps are bound by the host, the epoch less the
kernel time is what the GPU waits for the host. The aten calls per step
are the outermost operator calls of the forward, backward and optimizer
passes (``aten::linear`` and not the ``aten::addmm`` inside it).
"""
import argparse
import os
import sys
import time
from typing import Dict

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from graph_step import sync  # noqa: E402
from layer import (  # noqa: E402
    build_graph_model,
    graph_forward,
    molecule_batches,
)

OPS = ('samsa_graph_model_hints', 'gine_graph_model')
#: Host runtime calls counted per epoch.
RUNTIME_CALLS = ('cudaLaunchKernel', 'cuLaunchKernel', 'cuLaunchKernelEx',
                 'cudaLaunchKernelExC', 'cudaMemcpyAsync', 'cudaMemsetAsync',
                 'cudaStreamSynchronize', 'cudaDeviceSynchronize',
                 'cudaMalloc', 'cudaFree')


def _inside_aten(event) -> bool:
    # Whether an operator call runs inside another one (aten::addmm inside
    # aten::linear), and not directly from Python, autograd or the
    # optimizer.
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith('aten::'):
            return True
        parent = parent.cpu_parent
    return False


def profile_epoch(op: str, batches, args, device: torch.device) -> Dict:
    """Warms the model ``op`` up for ``args.warmup`` epochs, times one epoch
    and profiles the next; returns the summary and the profiler's key
    averages (``events``)."""
    torch.manual_seed(0)
    model = build_graph_model(op, args.channels, args.depth).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3,
                            fused=device.type == 'cuda' or None)

    def step(data):
        loss = F.mse_loss(graph_forward(op, model, data), data.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        for data in batches:
            step(data)
    sync(device)
    start = time.perf_counter()
    for data in batches:
        step(data)
    sync(device)
    epoch_ms = 1e3 * (time.perf_counter() - start)
    activities = [ProfilerActivity.CPU]
    if device.type == 'cuda':
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for data in batches:
            step(data)
        sync(device)
    events = prof.key_averages()
    kernels = [e for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA]
    steps = max(len(batches), 1)
    counts = {e.key: e.count for e in events}
    top_level = sum(e.name.startswith('aten::') and not _inside_aten(e)
                    for e in prof.events())
    return dict(op=op, steps=len(batches), epoch_ms=epoch_ms,
                kernel_ms=sum(k.device_time_total for k in kernels) / 1e3,
                kernels_per_step=len(kernels) / steps,
                aten_calls_per_step=top_level / steps,
                runtime_calls={name: counts[name] for name in RUNTIME_CALLS
                               if name in counts},
                addmm_per_step=counts.get('aten::addmm', 0) / steps,
                events=events)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available()
                   else 'cpu')
    p.add_argument('--ops', default=','.join(OPS))
    p.add_argument('--channels', type=int, default=64)
    p.add_argument('--depth', type=int, default=3)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--top', type=int, default=25)
    args = p.parse_args()
    device = torch.device(args.device)
    batches = molecule_batches(device)
    name = (torch.cuda.get_device_name(device) if device.type == 'cuda'
            else 'CPU')
    print(f'{name}, torch {torch.__version__}, {len(batches)} batches of '
          f'64 graphs, C={args.channels}, {args.depth} layers, fp32')
    for op in args.ops.split(','):
        r = profile_epoch(op, batches, args, device)
        print(f"== {op}: epoch {r['epoch_ms']:.2f} ms without the profiler, "
              f"GPU kernels {r['kernel_ms']:.2f} ms "
              f"({r['kernels_per_step']:.0f} per step), "
              f"{r['aten_calls_per_step']:.0f} outermost aten calls per step")
        for key, count in r['runtime_calls'].items():
            print(f"   {key:<26} {count / max(r['steps'], 1):8.1f} per step")
        print(r['events'].table(sort_by='self_cpu_time_total',
                                row_limit=args.top,
                                max_name_column_width=48))


if __name__ == '__main__':
    main()
