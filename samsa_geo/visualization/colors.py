"""Colours of the sampling views: one colour per attention head, grey for
points no head sampled, black for points several heads sampled."""
import colorsys
from typing import Tuple

import numpy as np

from samsa_geo.ops.validation import check_non_negative_int

#: Colour of points no head sampled.
GREY: Tuple[float, float, float] = (0.75, 0.75, 0.75)
#: Colour of points sampled by more than one head (in per-layer PLY files).
SHARED_COLOR: Tuple[float, float, float] = (0.0, 0.0, 0.0)
#: Background of rendered panels.
BACKGROUND: Tuple[float, float, float] = (1.0, 1.0, 1.0)

# Saturated, mutually distinct colours, none of them grey, white or black.
_PALETTE = np.array([
    [0.894, 0.102, 0.110], [0.216, 0.494, 0.722], [0.302, 0.686, 0.290],
    [0.596, 0.306, 0.639], [1.000, 0.498, 0.000], [0.651, 0.337, 0.157],
    [0.969, 0.506, 0.749], [0.000, 0.750, 0.750], [0.737, 0.741, 0.133],
    [0.090, 0.745, 0.812], [0.400, 0.000, 0.600], [0.000, 0.400, 0.200],
])


def head_colors(heads: int) -> np.ndarray:
    r"""Returns one RGB colour in :math:`[0, 1]` per head, shape
    :obj:`[heads, 3]`; heads beyond the fixed palette get golden-ratio hues.
    """
    check_non_negative_int('heads', heads, integral=True)
    colors = [_PALETTE[h] for h in range(min(heads, len(_PALETTE)))]
    for h in range(len(_PALETTE), heads):
        hue = (h * 0.618033988749895) % 1.0
        colors.append(np.array(colorsys.hsv_to_rgb(hue, 0.9, 0.85)))
    return np.asarray(colors, dtype=np.float64).reshape(heads, 3)


def membership_colors(member: np.ndarray) -> np.ndarray:
    r"""Colours :obj:`[N, 3]` for a membership matrix :obj:`[N, heads]`:
    :data:`GREY` if no head sampled the point, the head's colour if one did,
    :data:`SHARED_COLOR` if several did."""
    heads = member.shape[1]
    count = member.sum(axis=1)
    colors = np.tile(np.asarray(GREY), (member.shape[0], 1))
    one = count == 1
    colors[one] = head_colors(heads)[member[one].argmax(axis=1)]
    colors[count > 1] = SHARED_COLOR
    return colors
