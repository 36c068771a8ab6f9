import json
import os
import os.path as osp
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, osp.dirname(__file__))
from _train_toy import ROOT, TOY, fit_toy, make_dataset  # noqa: E402

from samsa_geo.train import DistributedEvalSampler, all_gather_cat  # noqa: E402


@pytest.mark.parametrize('n,replicas', [(13, 2), (10, 3), (2, 4), (0, 2),
                                        (7, 1)])
def test_eval_sampler_partitions_without_padding(n, replicas):
    shards = [list(DistributedEvalSampler(range(n), replicas, rank))
              for rank in range(replicas)]
    # Concatenated in rank order the shards are exactly the dataset order.
    assert sum(shards, []) == list(range(n))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert [len(DistributedEvalSampler(range(n), replicas, r))
            for r in range(replicas)] == sizes


def test_eval_sampler_bad_arguments():
    with pytest.raises(ValueError, match="'rank'"):
        DistributedEvalSampler(range(4), 2, 2)
    with pytest.raises(ValueError, match="'num_replicas'"):
        DistributedEvalSampler(range(4), 0, 0)


@pytest.mark.parametrize('args, name', [((True, 0), 'num_replicas'),
                                        ((2, True), 'rank'),
                                        ((2, False), 'rank')])
def test_eval_sampler_counts_must_not_be_bools(args, name):
    # True was one replica (or rank 1), as bool is a subclass of int.
    with pytest.raises(TypeError) as info:
        DistributedEvalSampler(range(4), *args)
    assert str(info.value) == f"Expected '{name}' to be an int (got bool)"
    # NumPy ints are taken, as before.
    shard = DistributedEvalSampler(range(4), np.int64(2), np.int64(1))
    assert list(shard) == [2, 3]


def test_all_gather_cat_is_identity_without_group():
    x = torch.randn(5, 3)
    assert all_gather_cat(x) is x


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process(tmp_path):
    r"""2 ranks x batch 4 (gloo) == 1 process x batch 8: the DistributedSampler
    shards of one seeded permutation form the same global batches, and DDP's
    gradient average equals the mean loss over the global batch. Validation
    has 13 examples (shards of 6 and 7): gathered metrics must be exact."""
    env = {**os.environ, 'PYTHONPATH': ROOT, 'OMP_NUM_THREADS': '1'}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1',
           '--nproc_per_node', '2', '--rdzv_backend', 'c10d',
           '--rdzv_endpoint', f'127.0.0.1:{free_port()}', TOY,
           str(tmp_path / 'ddp'), '--batch_size', '4', '--epochs', '3']
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Summary lines are printed by rank 0 only.
    assert proc.stdout.count('epoch   1/3') == 1

    fit_toy(str(tmp_path / 'single'), batch_size=8, epochs=3)
    single = torch.load(tmp_path / 'single' / 'final_weights.pt')
    ddp = torch.load(tmp_path / 'ddp' / 'final_weights.pt')
    torch.testing.assert_close(ddp, single, rtol=0, atol=1e-5)

    metrics = json.load(open(tmp_path / 'ddp' / 'final_metrics.json'))
    x = make_dataset(13, seed=7).tensors[0]
    assert metrics['test_count'] == 13.0  # every example exactly once
    assert metrics['test_x_sum'] == x.sum(-1).double().sum().item()
    assert (metrics['test_acc'] * 13) == pytest.approx(
        round(metrics['test_acc'] * 13), abs=1e-9)
    ref = json.load(open(tmp_path / 'single' / 'final_metrics.json'))
    assert metrics['test_x_sum'] == ref['test_x_sum']
    assert metrics['test_acc'] == ref['test_acc']
    assert metrics['test_loss'] == pytest.approx(ref['test_loss'], abs=1e-5)
    summary = json.load(open(tmp_path / 'ddp' / 'metrics.json'))
    assert summary['world_size'] == 2
    state = torch.load(tmp_path / 'ddp' / 'last.pt', weights_only=True)
    assert len(state['ranks']) == 2  # RNG states of both ranks
