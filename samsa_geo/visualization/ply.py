"""Coloured ASCII PLY files of the sampled points, written and read by hand
(no renderer needed)."""
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from samsa_geo.visualization.colors import membership_colors
from samsa_geo.visualization.selection import (
    ArrayLike,
    PathLike,
    graph_membership,
)


def write_sampling_ply(
    path: PathLike,
    pos: ArrayLike,
    indices: ArrayLike,
    batch: Optional[ArrayLike] = None,
    graph_index: int = 0,
    comment: Optional[str] = None,
) -> Path:
    r"""Writes one graph's points as an ASCII PLY file whose vertex colours
    encode which heads sampled them (see :func:`membership_colors`), plus one
    :obj:`uchar` property :obj:`head<h>` per head (1 if head :obj:`h` sampled
    the point), so membership is exact even where heads overlap.

    Args:
        path (str): The file to write.
        pos (torch.Tensor): Token positions :obj:`[N, 3]`.
        indices (torch.Tensor): Global sampled indices
            :obj:`[num_graphs, heads, k_max]` of one layer.
        batch (torch.Tensor, optional): Batch vector :obj:`[N]`.
            (default: :obj:`None`)
        graph_index (int, optional): Which graph. (default: :obj:`0`)
        comment (str, optional): A comment line for the header.
            (default: :obj:`None`)
    """
    points, member = graph_membership(indices, pos, batch, graph_index)
    return write_ply(path, points, member, comment)


def write_ply(path: PathLike, points: np.ndarray, member: np.ndarray,
              comment: Optional[str] = None) -> Path:
    r"""Writes points :obj:`[n, 3]` with their membership :obj:`[n, heads]`
    as the ASCII PLY file :func:`write_sampling_ply` describes."""
    rgb = np.round(membership_colors(member) * 255).astype(np.int64)
    heads = member.shape[1]
    header = ['ply', 'format ascii 1.0']
    if comment:
        header.append('comment ' + ' '.join(comment.split()))
    header += [f'element vertex {points.shape[0]}', 'property float x',
               'property float y', 'property float z', 'property uchar red',
               'property uchar green', 'property uchar blue']
    header += [f'property uchar head{h}' for h in range(heads)]
    header.append('end_header')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One row per point: x y z red green blue head0 ... (small integers are
    # exact in float64, so '%d' prints them as the ints they are).
    rows = np.concatenate([points, rgb, member], axis=1)  # [n, 6 + heads]
    with open(path, 'w') as f:
        f.write('\n'.join(header) + '\n')
        np.savetxt(f, rows, fmt=['%.6g'] * 3 + ['%d'] * (3 + heads),
                   delimiter=' ')
    return path


def read_ply_colors(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    r"""Reads positions :obj:`[N, 3]` and 0-255 colours :obj:`[N, 3]` back
    from an ASCII PLY file written by :func:`write_sampling_ply`."""
    with open(path) as f:
        lines = f.read().splitlines()
    if 'end_header' not in lines:
        _raise_not_ply(path, "an 'end_header' line")
    end = lines.index('end_header')
    props = [ln.split()[-1] for ln in lines[:end] if ln.startswith('property')]
    if not {'red', 'green', 'blue'} <= set(props):
        _raise_not_ply(path, "'red', 'green' and 'blue' properties")
    rows = np.array([ln.split() for ln in lines[end + 1:] if ln.strip()],
                    dtype=np.float64).reshape(-1, len(props))
    cols = [props.index(c) for c in ('red', 'green', 'blue')]
    return rows[:, :3], rows[:, cols].astype(np.int64)


def _raise_not_ply(path: PathLike, missing: str) -> None:
    raise ValueError(f"Expected 'path' to be an ASCII PLY file with "
                     f"{missing} (got {str(path)!r})")
