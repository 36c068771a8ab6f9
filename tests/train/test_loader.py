from collections import namedtuple

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from samsa_geo.train import make_loader, move_to_device, steps_per_epoch


def dataset(n=20):
    return TensorDataset(torch.arange(n).float().unsqueeze(-1), torch.arange(n))


def order(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return torch.cat([y for _, y in loader]).tolist()


def test_shuffle_depends_only_on_seed_and_epoch():
    a = make_loader(dataset(), 4, shuffle=True, seed=3)
    b = make_loader(dataset(), 4, shuffle=True, seed=3)
    c = make_loader(dataset(), 4, shuffle=True, seed=4)
    torch.manual_seed(0)
    first = order(a, 0)
    torch.manual_seed(1)  # the global RNG plays no part
    assert order(b, 0) == first
    assert sorted(first) == list(range(20)) and first != list(range(20))
    assert order(a, 1) != first
    assert order(c, 0) != first


def test_eval_loader_keeps_order_and_every_example():
    loader = make_loader(dataset(10), 3, shuffle=False)
    assert loader.sampler.__class__.__name__ == 'SequentialSampler'
    assert torch.cat([y for _, y in loader]).tolist() == list(range(10))
    assert len(loader) == 4  # the last, smaller batch is kept


def test_drop_last_and_bad_batch_size():
    assert len(make_loader(dataset(10), 3, shuffle=True, drop_last=True)) == 3
    with pytest.raises(ValueError, match="'batch_size'"):
        make_loader(dataset(), 0, shuffle=True)


@pytest.mark.parametrize('kwargs,error,match', [
    ({'batch_size': True}, ValueError,
     r"'batch_size' to be a positive int \(got True\)"),
    ({'shuffle': 'no'}, TypeError, r"'shuffle' to be a bool \(got 'no'\)"),
    ({'drop_last': 1}, TypeError, r"'drop_last' to be a bool \(got 1\)"),
    ({'seed': 1.5}, TypeError, r"'seed' to be an int \(got float\)"),
    ({'seed': 'x'}, TypeError, r"'seed' to be an int \(got str\)"),
    ({'seed': True}, TypeError, r"'seed' to be an int \(got bool\)"),
    ({'seed': 2**64}, ValueError,
     r"'seed' in \[-2\*\*63, 2\*\*63\) \(got 18446744073709551616\)"),
    ({'num_workers': -1}, ValueError,
     r"'num_workers' to be a non-negative int \(got -1\)"),
])
def test_bad_arguments(kwargs, error, match):
    kwargs = {'batch_size': 4, 'shuffle': True, **kwargs}
    with pytest.raises(error, match=match):
        make_loader(dataset(), **kwargs)


@pytest.mark.parametrize('seed', [-1, 2**63 - 1])
def test_extreme_seeds_shuffle(seed):
    loader = make_loader(dataset(), 4, shuffle=True, seed=seed)
    assert sorted(order(loader, 1)) == list(range(20))


def test_pyg_is_detected():
    from torch_geometric.data import Data
    from torch_geometric.loader import DataLoader as PyGDataLoader

    graphs = [Data(x=torch.randn(i + 1, 2)) for i in range(5)]
    loader = make_loader(graphs, 2, shuffle=False)
    assert isinstance(loader, PyGDataLoader)
    batch = next(iter(loader))
    assert batch.num_graphs == 2 and batch.x.shape == (3, 2)
    with pytest.raises(ValueError, match="'collate_fn'"):
        make_loader(graphs, 2, shuffle=False, pyg=True, collate_fn=list)


def test_move_to_device_nested():
    Pair = namedtuple('Pair', ['a', 'b'])

    class WithTo:
        def __init__(self):
            self.moved_to = None

        def to(self, device):
            self.moved_to = device
            return self

    obj = WithTo()
    batch = {'x': torch.ones(2), 'pair': Pair(torch.zeros(1), 3),
             'list': [torch.ones(1), 'name', {'y': torch.arange(3)}],
             'tuple': (torch.zeros(2, 2, dtype=torch.half), None),
             'obj': obj}
    # The meta device: every tensor that moved says so, with no allocation.
    meta = torch.device('meta')
    out = move_to_device(batch, meta)
    assert list(out) == list(batch)
    assert out['x'].device == meta and out['x'].shape == (2,)
    assert isinstance(out['pair'], Pair) and out['pair'].b == 3
    assert out['pair'].a.device == meta
    assert type(out['list']) is list and len(out['list']) == 3
    assert out['list'][0].device == meta and out['list'][1] == 'name'
    y = out['list'][2]['y']
    assert y.device == meta and y.dtype == torch.long and y.shape == (3,)
    assert type(out['tuple']) is tuple and out['tuple'][1] is None
    assert out['tuple'][0].device == meta
    assert out['tuple'][0].dtype == torch.half
    assert out['obj'] is obj and obj.moved_to == meta
    # The input batch is left where it was.
    assert batch['x'].device.type == 'cpu'
    assert torch.equal(batch['list'][2]['y'], torch.arange(3))


@pytest.mark.parametrize('drop_last', [False, True])
def test_steps_per_epoch_is_the_training_loaders_length(drop_last):
    for n in (0, 1, 7, 8, 9, 20, 33):
        for batch_size in (1, 3, 4, 50):
            loader = make_loader(dataset(n), batch_size, shuffle=True,
                                 drop_last=drop_last)
            assert steps_per_epoch(n, batch_size,
                                   drop_last=drop_last) == len(loader)
            for replicas in (2, 3):  # every rank's shard of a DDP run
                lengths = {len(DataLoader(
                    dataset(n), batch_size, drop_last=drop_last,
                    sampler=DistributedSampler(
                        dataset(n), replicas, rank, drop_last=drop_last)))
                    for rank in range(replicas)}
                assert lengths == {steps_per_epoch(
                    n, batch_size, drop_last=drop_last,
                    num_replicas=replicas)}
    assert steps_per_epoch(32, 4, num_replicas=2) == 4
    with pytest.raises(ValueError, match="'batch_size'.*at least 1"):
        steps_per_epoch(10, 0)
    with pytest.raises(ValueError, match="'num_examples'"):
        steps_per_epoch(-1, 4)
