from typing import Callable, List, Optional

from torch_geometric.data import Data


def read_lines(path: str) -> List[str]:
    r"""The non-empty lines of a text file, stripped."""
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def prepare(data: Data, pre_filter: Optional[Callable],
            pre_transform: Optional[Callable]) -> Optional[Data]:
    r"""Applies a dataset's :obj:`pre_filter` (:obj:`None` when it rejects
    :obj:`data`) and :obj:`pre_transform`."""
    if pre_filter is not None and not pre_filter(data):
        return None
    return data if pre_transform is None else pre_transform(data)
