from typing import Dict, Iterable, Sequence, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from samsa_geo.ops.validation import check_tensor


class StandardizeFeatures(BaseTransform):
    r"""Channel-wise standardisation of node/edge features with fixed
    statistics (computed once on the training split, see
    :meth:`from_dataset`):

    .. math::
        \mathbf{x}'_{i,c} = \frac{\mathbf{x}_{i,c} - \mu_c}{\sigma_c},

    where :math:`\mu_c, \sigma_c` are the mean and (population) standard
    deviation of channel :math:`c` over all rows of the training split;
    :math:`\sigma_c < \epsilon` is replaced by 1 (constant channels).
    Used for PascalVOC-SP / COCO-SP, whose raw features have very different
    scales.

    Args:
        stats (dict): :obj:`{attr: (mean, std)}`, each of shape :math:`(C,)`,
            finite, with :math:`\sigma_c > 0`.

    Shapes:
        - **input:** :obj:`data[attr]` :math:`(N, C)`
        - **output:** same shapes, float
    """
    def __init__(self, stats: Dict[str, Tuple[Tensor, Tensor]]) -> None:
        if not isinstance(stats, dict) or len(stats) == 0:
            raise ValueError(f"Expected 'stats' to be a non-empty dict "
                             f"{{attr: (mean, std)}} (got {stats!r})")
        for key, pair in stats.items():
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"Expected 'stats[{key!r}]' to be a pair "
                                 f"(mean, std) (got {type(pair).__name__})")
            mean, std = pair
            check_tensor(f'stats[{key!r}][0]', mean)
            check_tensor(f'stats[{key!r}][1]', std)
            if mean.dim() != 1 or mean.shape != std.shape:
                raise ValueError(f"Expected mean and std of '{key}' to have "
                                 f"the same shape [C] (got {list(mean.shape)} "
                                 f"and {list(std.shape)})")
            # Checked once here, so that forward() never reads them.
            finite = torch.isfinite(mean).all() & torch.isfinite(std).all()
            if not bool(finite):
                raise ValueError(f"Expected mean and std of '{key}' to be "
                                 f"finite (found NaN or inf; does the data "
                                 f"hold NaN?)")
            if not bool((std > 0).all()):
                raise ValueError(f"Expected std of '{key}' to be positive "
                                 f"(got {std.min().item()} in channel "
                                 f"{int(std.argmin())})")
        self.stats = {k: (m.float(), s.float()) for k, (m, s) in stats.items()}

    @staticmethod
    def compute_stats(
        data_list: Iterable[Data],
        attrs: Sequence[str] = ('x', 'edge_attr'),
        eps: float = 1e-6,
    ) -> Dict[str, Tuple[Tensor, Tensor]]:
        r"""Mean and std of every channel of :obj:`attrs` over all rows of
        :obj:`data_list` (a dataset or list of :class:`Data`), accumulated in
        float64 in one pass. A dataset's :obj:`transform` is applied while
        iterating, so compute the statistics before setting this one."""
        if (getattr(data_list, '_data', None) is not None
                and getattr(data_list, '_indices', 0) is None
                and getattr(data_list, 'transform', 0) is None):
            # Whole, untransformed InMemoryDataset: one pass over its storage.
            data_list = [data_list._data]  # type: ignore[attr-defined]
        sums: Dict[str, Tensor] = {}
        squares: Dict[str, Tensor] = {}
        counts: Dict[str, int] = {a: 0 for a in attrs}
        for data in data_list:
            for a in attrs:
                value = data[a] if a in data else None
                if value is None:
                    raise ValueError(f"Expected 'data.{a}' to be set")
                value = value.double().view(value.size(0), -1)  # [N, C]
                sums[a] = sums.get(a, 0) + value.sum(0)
                squares[a] = squares.get(a, 0) + value.square().sum(0)
                counts[a] += value.size(0)
        stats = {}
        for a in attrs:
            if counts[a] == 0:
                raise ValueError(f"Expected at least one row of '{a}'")
            mean = sums[a] / counts[a]
            var = (squares[a] / counts[a] - mean.square()).clamp(min=0)
            std = var.sqrt()
            std[std < eps] = 1.0
            stats[a] = (mean.float(), std.float())
        return stats

    @classmethod
    def from_dataset(cls, dataset: Iterable[Data],
                     attrs: Sequence[str] = ('x', 'edge_attr'),
                     eps: float = 1e-6) -> 'StandardizeFeatures':
        r"""Builds the transform from the statistics of :obj:`dataset`."""
        return cls(cls.compute_stats(dataset, attrs, eps))

    def forward(self, data: Data) -> Data:
        for key, (mean, std) in self.stats.items():
            value = data[key] if key in data else None
            if value is None:
                raise ValueError(f"Expected 'data.{key}' to be set (the "
                                 f"statistics cover {list(self.stats)})")
            if value.size(-1) != mean.numel():
                raise ValueError(f"Expected 'data.{key}' to have "
                                 f"{mean.numel()} channels "
                                 f"(got {list(value.shape)})")
            data[key] = (value.float() - mean.to(value.device)) / std.to(
                value.device)
        return data

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(attrs={list(self.stats)})'
