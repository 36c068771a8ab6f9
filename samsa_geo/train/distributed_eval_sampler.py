from typing import Iterator, Optional, Sized

from torch.utils.data import Sampler

from samsa_geo.ops.validation import check_non_negative_int, check_positive_int
from samsa_geo.train.distributed import get_rank, get_world_size


class DistributedEvalSampler(Sampler[int]):
    r"""Splits a dataset into :obj:`num_replicas` contiguous shards without
    padding or dropping, so every example is evaluated exactly once.

    Unlike :class:`~torch.utils.data.distributed.DistributedSampler`, which
    repeats examples until every rank has the same count, shard sizes differ by
    at most one. Rank :math:`r` gets indices
    :math:`[\lfloor rN/R \rfloor, \lfloor (r+1)N/R \rfloor)`, so concatenating
    the shards in rank order restores dataset order.

    Args:
        dataset (Sized): The dataset to split.
        num_replicas (int, optional): Number of ranks; the process group's
            world size when :obj:`None`. (default: :obj:`None`)
        rank (int, optional): This rank; the process group's rank when
            :obj:`None`. (default: :obj:`None`)
    """
    def __init__(self, dataset: Sized, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None) -> None:
        if num_replicas is None:
            num_replicas = get_world_size()
        if rank is None:
            rank = get_rank()
        # NumPy ints pass (a world size read from elsewhere); bools do not.
        check_positive_int('num_replicas', num_replicas, integral=True)
        check_non_negative_int('rank', rank, integral=True)
        if rank >= num_replicas:
            raise ValueError(f"Expected 'rank' in [0, {num_replicas - 1}] "
                             f"(got {rank})")
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        n = len(dataset)
        self.start = rank * n // num_replicas
        self.end = (rank + 1) * n // num_replicas

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end))

    def __len__(self) -> int:
        return self.end - self.start

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_replicas={self.num_replicas}, '
                f'rank={self.rank}, indices=[{self.start}, {self.end}))')
