from itertools import islice
from typing import Callable, List, Optional

import numpy as np
from torch_geometric.data import Data

from samsa_geo.io import DamagedFileError


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


def read_table(path: str, columns: int, layout: str,
               sep: Optional[str] = None,
               max_rows: Optional[int] = None) -> np.ndarray:
    r"""The rows of numbers of a text file as a float32 array
    :math:`[N, \text{columns}]` (blank lines skipped), reading at most
    :obj:`max_rows` lines.

    Raises:
        DamagedFileError: Naming :obj:`path` and the line, if the file is
            not text, holds no row (empty or blank), a row has another
            number of fields (:obj:`layout` says which, e.g.
            :obj:`'x,y,z,nx,ny,nz'`), a field is not a number, or a value is
            not finite in float32.
    """
    with open(path, 'rb') as f:
        raw = list(islice(f, max_rows)) if max_rows is not None else list(f)
    try:
        lines = [line.decode('utf-8') for line in raw]
    except UnicodeDecodeError:
        for number, line in enumerate(raw, 1):
            try:
                line.decode('utf-8')
            except UnicodeDecodeError as e:
                raise DamagedFileError(
                    f"Expected text in '{path}' (line {number} holds bytes "
                    f"that are not UTF-8: {e.reason} at byte {e.start}); the "
                    f"file is damaged, re-extract it from the archive"
                ) from None
    rows = [(number, line.strip()) for number, line in enumerate(lines, 1)
            if line.strip()]
    if not rows:  # else a shape of 0 points, which fails much later
        got = 'it is empty' if not raw else 'it holds only blank lines'
        raise DamagedFileError(
            f"Expected rows of {columns} fields '{layout}' in '{path}' "
            f"({got}); the file is truncated or damaged, re-extract it "
            f"from the archive")
    joiner = ' ' if sep is None else sep
    values = None
    try:
        with np.errstate(over='ignore'):  # 1e39 -> inf, reported below
            values = np.array(joiner.join(r for _, r in rows).split(sep),
                              dtype=np.float32)
    except ValueError:
        pass
    if values is None or values.size != len(rows) * columns:
        for number, row in rows:
            fields = row.split(sep)
            if len(fields) != columns:
                raise DamagedFileError(
                    f"Expected {columns} fields '{layout}' on line {number} "
                    f"of '{path}' (got {len(fields)}: {row[:80]!r}); the "
                    f"file is truncated or damaged")
            for field in fields:
                try:
                    float(field)
                except ValueError:
                    raise DamagedFileError(
                        f"Expected numbers on line {number} of '{path}' "
                        f"(got {field[:40]!r})") from None
    table = values.reshape(-1, columns)  # [N, columns]
    bad = ~np.isfinite(table).all(axis=1)
    if bad.any():
        number = rows[int(bad.nonzero()[0][0])][0]
        raise DamagedFileError(
            f"Expected finite values on line {number} of '{path}' (got "
            f"NaN, infinity, or a magnitude beyond float32's 3.4e38); "
            f"{int(bad.sum())} row(s) of the file are affected")
    return table
