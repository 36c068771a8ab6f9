"""Building data loaders for the trainer and moving batches to a device."""
import sys
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from samsa_geo.ops.validation import check_int
from samsa_geo.train.distributed import get_rank, get_world_size, is_distributed
from samsa_geo.train.distributed_eval_sampler import DistributedEvalSampler
from samsa_geo.train.seed import seed_worker


def _is_pyg_dataset(dataset: Any) -> bool:
    # PyG objects can only exist once torch_geometric is imported: avoid the
    # (slow) import for plain tensor datasets.
    if 'torch_geometric' not in sys.modules:
        return False
    from torch_geometric.data.data import BaseData
    try:
        return len(dataset) > 0 and isinstance(dataset[0], BaseData)
    except Exception:
        return False


def _is_int(value: Any) -> bool:
    # An int that is not a bool.
    return isinstance(value, int) and not isinstance(value, bool)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool,
                distributed: Optional[bool] = None, seed: int = 0,
                num_workers: int = 0, drop_last: bool = False,
                collate_fn: Optional[Callable] = None,
                pyg: Optional[bool] = None, **kwargs: Any) -> DataLoader:
    r"""Builds a reproducible (and, under DDP, sharded) data loader.

    * Training (:obj:`shuffle=True`): a
      :class:`~torch.utils.data.distributed.DistributedSampler` (also with
      one process), whose order depends only on :obj:`seed` and the epoch
      that :class:`~samsa_geo.train.Trainer` sets, which makes resuming
      exact. Under DDP each rank gets :obj:`batch_size` examples per step,
      so the global batch is :obj:`batch_size * world_size`.
    * Evaluation (:obj:`shuffle=False`): under DDP a
      :class:`DistributedEvalSampler` (contiguous shards, no padding), so the
      trainer's gathered metrics count every example exactly once.

    Workers are seeded through a :class:`torch.Generator` and
    :func:`seed_worker`.

    Args:
        dataset (Dataset): A map-style dataset of tensors/tuples or of PyG
            :class:`~torch_geometric.data.Data` objects.
        batch_size (int): Examples per step and rank.
        shuffle (bool): Shuffle every epoch (training) or not (evaluation).
        distributed (bool, optional): Shard over ranks; auto-detected from the
            process group when :obj:`None`. (default: :obj:`None`)
        seed (int, optional): Seed of the shuffle order and worker seeds, in
            :math:`[-2^{63}, 2^{63})`. (default: :obj:`0`)
        num_workers (int, optional): Loader worker processes. (default: :obj:`0`)
        drop_last (bool, optional): Drop the last incomplete batch (training).
            (default: :obj:`False`)
        collate_fn (callable, optional): Custom collate function (non-PyG).
            (default: :obj:`None`)
        pyg (bool, optional): Use :class:`torch_geometric.loader.DataLoader`;
            auto-detected from :obj:`dataset[0]` when :obj:`None`.
            (default: :obj:`None`)
        **kwargs: Passed on to the loader (e.g. :obj:`pin_memory`,
            :obj:`follow_batch`).
    """
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"Expected 'batch_size' to be a positive int "
                         f"(got {batch_size!r})")
    for name, value in (('shuffle', shuffle), ('drop_last', drop_last)):
        if not isinstance(value, bool):
            raise TypeError(f"Expected '{name}' to be a bool "
                            f"(got {value!r})")
    check_int('seed', seed)
    # What torch.Generator.manual_seed takes, also as seed + epoch.
    if not -2**63 <= seed < 2**63:
        raise ValueError(f"Expected 'seed' in [-2**63, 2**63) (got {seed})")
    if not _is_int(num_workers) or num_workers < 0:
        raise ValueError(f"Expected 'num_workers' to be a non-negative int "
                         f"(got {num_workers!r})")
    if distributed is None:
        distributed = is_distributed()
    num_replicas = get_world_size() if distributed else 1
    rank = get_rank() if distributed else 0
    if shuffle:
        sampler = DistributedSampler(dataset, num_replicas=num_replicas,
                                     rank=rank, shuffle=True, seed=seed,
                                     drop_last=drop_last)
    elif distributed:
        sampler = DistributedEvalSampler(dataset, num_replicas, rank)
    else:
        sampler = None
    generator = torch.Generator()
    generator.manual_seed(seed)
    common = dict(batch_size=batch_size, sampler=sampler,
                  num_workers=num_workers, drop_last=drop_last,
                  worker_init_fn=seed_worker, generator=generator,
                  persistent_workers=False, **kwargs)
    if pyg is None:
        pyg = collate_fn is None and _is_pyg_dataset(dataset)
    if pyg:
        if collate_fn is not None:
            raise ValueError("Expected 'collate_fn' to be None when 'pyg' is "
                             "True (PyG's loader collates Data objects)")
        from torch_geometric.loader import DataLoader as PyGDataLoader
        return PyGDataLoader(dataset, **common)
    return DataLoader(dataset, collate_fn=collate_fn, **common)


def steps_per_epoch(num_examples: int, batch_size: int, *,
                    drop_last: bool = False,
                    num_replicas: Optional[int] = None) -> int:
    r"""The steps per epoch of a training loader of :func:`make_loader`
    (:obj:`shuffle=True`) over :obj:`num_examples` examples, without
    building it: under DDP each of the :math:`R` ranks takes
    :math:`\lfloor N / R \rfloor` (:obj:`drop_last`) or
    :math:`\lceil N / R \rceil` examples, in batches of :obj:`batch_size`.
    Learning-rate schedules set before the loader exists (warm-up steps)
    count with it.

    Args:
        num_examples (int): Training examples :math:`N`.
        batch_size (int): Examples per step and rank.
        drop_last (bool, optional): As passed to :func:`make_loader`.
            (default: :obj:`False`)
        num_replicas (int, optional): Ranks :math:`R`; those of the process
            group when :obj:`None` (join it first, e.g. with
            :func:`~samsa_geo.train.init_distributed`). (default: :obj:`None`)
    """
    for name, value, low in (('num_examples', num_examples, 0),
                             ('batch_size', batch_size, 1)):
        if not _is_int(value) or value < low:
            raise ValueError(f"Expected '{name}' to be an int of at least "
                             f"{low} (got {value!r})")
    if num_replicas is None:
        num_replicas = get_world_size()
    if drop_last:  # DistributedSampler's shard, then whole batches only
        return num_examples // num_replicas // batch_size
    per_rank = -(-num_examples // num_replicas)  # ceil, padded shards
    return -(-per_rank // batch_size)


def move_to_device(batch: Any, device: torch.device) -> Any:
    r"""Moves a batch to :obj:`device`: tensors, objects with a :meth:`to`
    method (PyG :class:`~torch_geometric.data.Batch`), and lists, tuples and
    dicts of those; anything else is returned unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [move_to_device(v, device) for v in batch]
        if hasattr(batch, '_fields'):  # namedtuple
            return type(batch)(*moved)
        return type(batch)(moved)
    if hasattr(batch, 'to') and callable(batch.to):
        return batch.to(device)
    return batch
