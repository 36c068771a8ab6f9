from typing import List, Optional

import torch
from torch import Tensor

from samsa_geo.ops.validation import (
    check_int,
    check_number,
    check_positive_int,
    check_tensor,
)


def holdout_indices(y: Tensor, ratio: float, seed: int = 0) -> Tensor:
    r"""Returns a fixed, seeded per-class hold-out of :obj:`ratio` of the
    samples with labels :obj:`y` of shape :obj:`[N]` (at least one per
    class of two or more samples), sorted; :obj:`ratio` lies in
    :math:`(0, 1)`."""
    check_tensor('y', y)
    if y.dim() != 1:
        raise ValueError(f"Expected 'y' to have shape [N] (got "
                         f"{list(y.shape)}); flatten labels of shape [N, 1] "
                         f"with y.view(-1)")
    check_number('ratio', ratio)
    if not 0 < ratio < 1:  # also refuses NaN
        raise ValueError(f"Expected 'ratio' in (0, 1) (got {ratio})")
    check_int('seed', seed)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for c in y.unique(sorted=True).tolist():
        members = (y == c).nonzero().view(-1)
        if members.numel() < 2:
            continue
        num = max(1, int(round(ratio * members.numel())))
        perm = torch.randperm(members.numel(), generator=gen)
        out.append(members[perm[:num]])
    if not out:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(out).sort().values


def split_indices(y: Tensor, split: str, ratio: float) -> Optional[List[int]]:
    r"""Indices of :obj:`split` (:obj:`'train'` or :obj:`'val'`) when
    :obj:`ratio` of the official train split is held out for validation;
    :obj:`None` (all samples) for :obj:`'test'` or without a hold-out."""
    if split == 'test' or ratio <= 0:
        return None
    val = holdout_indices(y, ratio)
    if split == 'val':
        return val.tolist()
    keep = torch.ones(y.numel(), dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().view(-1).tolist()


def check_split_args(split: str, num_points: int, val_ratio: float) -> None:
    r"""Validates the split arguments shared by the ModelNet loaders."""
    if split not in ('train', 'val', 'test'):
        raise ValueError(f"Expected 'split' to be 'train', 'val' or "
                         f"'test' (got '{split}')")
    check_positive_int('num_points', num_points, integral=True)
    if not 0 <= val_ratio < 1:
        raise ValueError(f"Expected 'val_ratio' in [0, 1) (got {val_ratio})")
    if split == 'val' and val_ratio == 0:
        raise ValueError("Expected 'val_ratio' > 0 for split='val' "
                         "(ModelNet has no official validation split)")
