"""Full-batch node classification on one synthetic graph of ogbn-arxiv size
(169,343 nodes, ~1.17M edges stored in both directions, 128 features,
40 classes): a model
of SamsaConv layers (GCN local branch + SAMSA global attention over all
nodes) vs. a 3-layer GCN. Reports time per training epoch (forward,
backward, AdamW step; the median of the epochs timed) and peak memory: one
run (device, machine, config, results and provenance: torch, commit and
dirty, date, flags) added to ``benchmarks/results/graph_scale.json``,
replacing an earlier run of the same device and flags at the same commit
(runs of other commits are kept).

The graph is stochastic-block-like: every node belongs to one of 40
communities (its class), 80% of the edges join nodes of the same community,
and features are a class mean plus Gaussian noise. Each configuration runs
in its own process so that CPU peak memory (max RSS) is not shared.

    python benchmarks/graph_scale.py --device cpu --nodes 20000
    python benchmarks/graph_scale.py --device cuda            # 169,343 nodes
"""
import argparse
import json
import os
import os.path as osp
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn import Linear, Module, ModuleList
from torch_geometric.nn import GCNConv
from torch_geometric.utils import to_undirected

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import (  # noqa: E402
    add_commit_argument,
    add_to_results,
    device_name,
    run_provenance,
)

ARXIV_NODES, ARXIV_EDGES = 169_343, 1_166_243


def sbm_graph(num_nodes, num_edges, num_classes=40, channels=128, p_in=0.8,
              seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (num_nodes, ), generator=gen)
    order = torch.argsort(y)  # nodes grouped by community
    counts = torch.bincount(y, minlength=num_classes)
    start = counts.cumsum(0) - counts
    src = torch.randint(0, num_nodes, (num_edges, ), generator=gen)
    # Same community: a random member of src's community; else any node.
    offset = (torch.rand(num_edges, generator=gen) * counts[y[src]]).long()
    dst_in = order[start[y[src]] + offset]
    dst_out = torch.randint(0, num_nodes, (num_edges, ), generator=gen)
    inside = torch.rand(num_edges, generator=gen) < p_in
    dst = torch.where(inside, dst_in, dst_out)
    keep = src != dst
    edge_index = to_undirected(torch.stack([src[keep], dst[keep]]),
                               num_nodes=num_nodes)
    means = torch.randn(num_classes, channels, generator=gen)
    x = means[y] + 2.0 * torch.randn(num_nodes, channels, generator=gen)
    return x, edge_index, y


class GCN(Module):
    def __init__(self, in_channels, hidden_channels, out_channels, num_layers):
        super().__init__()
        sizes = [in_channels] + [hidden_channels] * (num_layers - 1)
        self.convs = ModuleList([GCNConv(a, b) for a, b in
                                 zip(sizes, sizes[1:] + [out_channels])])

    def forward(self, x, edge_index):
        for i, conv in enumerate(self.convs):
            x = conv(x, edge_index)
            if i < len(self.convs) - 1:
                x = F.relu(x)
        return x


class SamsaNodeModel(Module):
    def __init__(self, in_channels, hidden_channels, out_channels, num_layers,
                 heads, k):
        super().__init__()
        from samsa_geo.nn import SamsaConv
        self.lin_in = Linear(in_channels, hidden_channels)
        self.convs = ModuleList([
            SamsaConv(hidden_channels, GCNConv(hidden_channels, hidden_channels),
                      heads=heads, k=k) for _ in range(num_layers)])
        self.lin_out = Linear(hidden_channels, out_channels)

    def forward(self, x, edge_index):
        x = self.lin_in(x)
        for conv in self.convs:
            x = conv(x, edge_index)  # one set: attention over all nodes
        return self.lin_out(x)


def worker(args):
    device = torch.device(args.device)
    num_edges = round(ARXIV_EDGES * args.nodes / ARXIV_NODES)
    x, edge_index, y = sbm_graph(args.nodes, num_edges)
    x, edge_index, y = x.to(device), edge_index.to(device), y.to(device)
    torch.manual_seed(0)
    if args.model == 'gcn':
        model = GCN(128, args.hidden, 40, 3)
    else:
        model = SamsaNodeModel(128, args.hidden, 40, args.layers, args.heads,
                               args.k)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for epoch in range(args.warmup + args.epochs):
        sync()
        t0 = time.perf_counter()
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x, edge_index), y)
        loss.backward()
        opt.step()
        sync()
        if epoch >= args.warmup:
            times.append(time.perf_counter() - t0)
    with torch.no_grad():
        model.eval()
        acc = float((model(x, edge_index).argmax(-1) == y).float().mean())
    if device.type == 'cuda':
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        kind = 'cuda_max_allocated_minus_inputs'
    else:
        # Linux ru_maxrss is in KiB; growth of the process peak while training.
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                - rss_before) / 1024
        kind = 'max_rss_growth'
    t = torch.tensor(times, dtype=torch.float64)
    return {'model': args.model, 'num_nodes': args.nodes,
            'num_edges': int(edge_index.size(1)),
            'num_params': sum(p.numel() for p in model.parameters()),
            # The median of the epochs, as the other benchmarks report.
            'epoch_time_s': statistics.median(times),
            'epoch_time_mean_s': float(t.mean()),
            'epoch_time_std_s': float(t.std()) if len(t) > 1 else 0.0,
            'epoch_times_s': times,
            'peak_memory_mb': peak, 'memory_kind': kind,
            'final_loss': float(loss), 'train_acc_after': acc}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available()
                        else 'cpu')
    parser.add_argument('--nodes', type=int, nargs='+', default=None,
                        help='graph sizes (default: 20000 on CPU, 169343 on '
                             'CUDA)')
    parser.add_argument('--models', default='samsa,gcn')
    parser.add_argument('--hidden', type=int, default=128)
    parser.add_argument('--layers', type=int, default=3)
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--k', type=int, default=64)
    parser.add_argument('--epochs', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--out', default=osp.join(osp.dirname(__file__),
                                                  'results'),
                        help='folder of graph_scale.json')
    add_commit_argument(parser)
    parser.add_argument('--model', help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is not None:
        args.nodes = args.nodes[0]
        print(json.dumps(worker(args)))
        return

    device = torch.device(args.device)
    sizes = args.nodes or ([ARXIV_NODES] if device.type == 'cuda' else [20_000])
    results = []
    for n in sizes:
        for model in args.models.split(','):
            cmd = [sys.executable, __file__, '--model', model, '--nodes',
                   str(n)] + [f'--{k}={getattr(args, k)}' for k in
                              ('device', 'hidden', 'layers', 'heads', 'k',
                               'epochs', 'warmup')]
            if args.threads:
                cmd.append(f'--threads={args.threads}')
            env = {**os.environ, 'PYTHONPATH': osp.join(osp.dirname(
                osp.abspath(__file__)), '..')}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.exit(f'{model} with {n} nodes failed:\n{proc.stderr}')
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(row)
            print(f"{model:>5} | {row['num_nodes']:>7,} nodes "
                  f"{row['num_edges']:>9,} edges | {row['num_params']:>7,} "
                  f"params | {row['epoch_time_s']:.3f} s/epoch | peak "
                  f"{row['peak_memory_mb']:.0f} MiB", flush=True)
    name = device.type
    machine = {'device': name, 'platform': platform.platform(),
               'processor': platform.processor() or platform.machine(),
               'cpu_count': os.cpu_count(), 'threads': torch.get_num_threads(),
               'torch': torch.__version__}
    if device.type == 'cuda':
        machine['gpu'] = torch.cuda.get_device_name(device)
    config = {k: getattr(args, k) for k in ('hidden', 'layers', 'heads', 'k',
                                            'epochs', 'warmup')}
    path = osp.join(args.out, 'graph_scale.json')
    run = {'device': device_name(device), 'machine': machine,
           'config': config, 'results': results}
    run.update(run_provenance(args.commit))
    # Replaces a run of the same device and flags at the same commit.
    add_to_results(path, [run], lambda r: (
        r.get('device'), r['machine']['device'], r['machine'].get('gpu'),
        r.get('flags')))
    print(f'Wrote {path}')


if __name__ == '__main__':
    main()
