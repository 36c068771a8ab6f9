"""Panels to render: one per layer and attention head."""
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from samsa_geo.visualization.colors import GREY, head_colors
from samsa_geo.visualization.selection import ArrayLike, graph_membership


@dataclass
class Panel:
    r"""One view: a point cloud :obj:`pos` with the points one head sampled
    (:obj:`sampled`) drawn in :obj:`color`, the rest in :data:`GREY`."""
    pos: np.ndarray  # [n, 3]
    sampled: np.ndarray  # [n] bool
    color: np.ndarray  # [3]
    title: str

    def colors(self) -> np.ndarray:
        r"""Per-point colours :obj:`[n, 3]`."""
        colors = np.tile(np.asarray(GREY), (self.pos.shape[0], 1))
        colors[self.sampled] = self.color
        return colors


def _layer_dict(
    indices: Union[ArrayLike, Mapping[str, ArrayLike]]
) -> Dict[str, ArrayLike]:
    if isinstance(indices, Mapping):
        if len(indices) == 0:
            raise ValueError("Expected 'indices' to hold at least one layer "
                             "(got an empty mapping)")
        return dict(indices)
    return {'': indices}


def make_point_panels(
    pos: ArrayLike,
    indices: Union[ArrayLike, Mapping[str, ArrayLike]],
    batch: Optional[ArrayLike] = None,
    graph_index: int = 0,
    heads: Optional[Sequence[int]] = None,
) -> List[Panel]:
    r"""One panel per layer and head (heads restricted to :obj:`heads`)."""
    panels = []
    for name, idx in _layer_dict(indices).items():
        points, member = graph_membership(idx, pos, batch, graph_index)
        panels += head_panels(name, points, member, heads)
    return panels


def head_panels(name: str, points: np.ndarray, member: np.ndarray,
                heads: Optional[Sequence[int]]) -> List[Panel]:
    r"""One panel per chosen head (all if :obj:`heads` is :obj:`None`) of
    one layer's points :obj:`[n, 3]` and membership :obj:`[n, heads]`,
    titled with :obj:`name`."""
    num_heads = member.shape[1]
    chosen = list(range(num_heads)) if heads is None else list(heads)
    for h in chosen:
        if not 0 <= h < num_heads:
            raise IndexError(f"Expected 'heads' to be in [0, {num_heads}) "
                             f"(got {h})")
    palette = head_colors(num_heads)
    panels = []
    for h in chosen:
        title = f'{name} head {h}' if name else f'head {h}'
        title += f' ({int(member[:, h].sum())} pts)'
        panels.append(Panel(points, member[:, h], palette[h], title))
    return panels
