"""Point clouds with the points each attention head sampled highlighted.

Open3D renders off-screen when it can; matplotlib draws the same panels when
it cannot (:mod:`~samsa_geo.visualization.renderers`). Coloured PLY files
(:mod:`~samsa_geo.visualization.ply`) need neither backend.
"""
import os
import sys
import warnings
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

from samsa_geo.ops.validation import check_positive_int
from samsa_geo.visualization.colors import head_colors, membership_colors
from samsa_geo.visualization.compose import compose_grid
from samsa_geo.visualization.panels import Panel, make_point_panels
from samsa_geo.visualization.renderers import (
    check_backend,
    render_matplotlib,
    render_open3d,
)
from samsa_geo.visualization.selection import (
    ArrayLike,
    PathLike,
    graph_membership,
)


def render_panels(
    panels: Sequence[Panel],
    out_png: PathLike,
    panel_size: Tuple[int, int] = (320, 320),
    ncols: Optional[int] = None,
    point_size: float = 3.0,
    backend: str = 'auto',
    caption: Optional[str] = None,
) -> Tuple[Path, str]:
    r"""Renders the panels with the chosen backend and composes them into
    one grid PNG of exactly :obj:`ncols * width` by :obj:`nrows * height`
    pixels, plus a band on top for :obj:`caption` if given. Returns the
    path and the backend that drew the panels."""
    check_backend(backend)
    if len(panels) == 0:
        raise ValueError("Expected at least one panel to render (got none)")
    width, height = (int(v) for v in panel_size)
    if width < 16 or height < 16:
        raise ValueError(f"Expected 'panel_size' to be at least (16, 16) "
                         f"(got {tuple(panel_size)})")
    if ncols is None:
        ncols = min(len(panels), 4)
    check_positive_int('ncols', ncols, integral=True)

    from samsa_geo.typing import WITH_OPEN3D
    images, used = None, 'matplotlib'
    if backend == 'open3d' or (backend == 'auto' and WITH_OPEN3D):
        try:
            images = render_open3d(panels, (width, height), point_size)
            used = 'open3d'
        except Exception as e:  # Open3D missing, no EGL/Vulkan, crash ...
            if backend == 'open3d':
                raise RuntimeError(f"Open3D could not render: {e}") from e
            warnings.warn(f"Open3D could not render ({e}); falling back to "
                          f"matplotlib")
    if images is None:
        images = render_matplotlib(panels, (width, height), point_size)
    path = compose_grid(images, [p.title for p in panels], ncols, out_png,
                        caption)
    return path, used


def plot_sampled_points(
    pos: ArrayLike,
    indices: Union[ArrayLike, Mapping[str, ArrayLike]],
    out_png: PathLike,
    batch: Optional[ArrayLike] = None,
    graph_index: int = 0,
    heads: Optional[Sequence[int]] = None,
    panel_size: Tuple[int, int] = (320, 320),
    ncols: Optional[int] = None,
    point_size: float = 3.0,
    backend: str = 'auto',
) -> Dict[str, str]:
    r"""Draws a point cloud in grey with the points each head sampled in the
    head's colour (:func:`head_colors`), one panel per layer and head, and
    saves the panels as one grid PNG.

    Args:
        pos (torch.Tensor): Token positions :obj:`[N, 3]` (or :obj:`[N, 2]`).
        indices (torch.Tensor or dict): Sampled global indices
            :obj:`[num_graphs, heads, k_max]` of one layer, or a mapping from
            layer name to such tensors (e.g.
            :obj:`SamplingRecorder.indices`).
        out_png (str): The PNG file to write.
        batch (torch.Tensor, optional): Batch vector :obj:`[N]`.
            (default: :obj:`None`)
        graph_index (int, optional): Which graph of the batch to draw.
            (default: :obj:`0`)
        heads (list of int, optional): Heads to draw; all if :obj:`None`.
            (default: :obj:`None`)
        panel_size (tuple of int, optional): :obj:`(width, height)` of one
            panel in pixels. (default: :obj:`(320, 320)`)
        ncols (int, optional): Panels per row; :obj:`min(panels, 4)` if
            :obj:`None`. (default: :obj:`None`)
        point_size (float, optional): Size of unsampled points in pixels;
            sampled points are 2.5 times larger. (default: :obj:`3.0`)
        backend (str, optional): :obj:`"open3d"` (off-screen renderer),
            :obj:`"matplotlib"` (3-D scatter) or :obj:`"auto"` (Open3D,
            falling back to matplotlib if it cannot import or render).
            (default: :obj:`"auto"`)

    Returns:
        :obj:`{'png': path, 'backend': name of the backend used}`.
    """
    panels = make_point_panels(pos, indices, batch, graph_index, heads)
    path, used = render_panels(panels, out_png, panel_size, ncols,
                               point_size, backend)
    return {'png': str(path), 'backend': used}


def has_display() -> bool:
    r"""Whether an interactive window can be opened."""
    if sys.platform in ('win32', 'darwin'):
        return True
    return bool(os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY'))


def show_sampled_points(
    pos: ArrayLike,
    indices: ArrayLike,
    batch: Optional[ArrayLike] = None,
    graph_index: int = 0,
    head: Optional[int] = None,
) -> None:
    r"""Opens an interactive Open3D window
    (:func:`open3d.visualization.draw_geometries`) showing one layer's
    sampled points: all heads coloured as in :func:`membership_colors`, or
    only :obj:`head` in its colour.

    Raises:
        RuntimeError: If no display is available or Open3D is not installed.
    """
    if not has_display():
        raise RuntimeError("No display available for an interactive window; "
                           "use plot_sampled_points() or write_sampling_ply()")
    try:
        import open3d as o3d
    except ImportError as e:
        raise RuntimeError("show_sampled_points() requires open3d "
                           "(pip install open3d)") from e
    points, member = graph_membership(indices, pos, batch, graph_index)
    if head is None:
        colors = membership_colors(member)
    else:
        if not 0 <= head < member.shape[1]:
            raise IndexError(f"Expected 'head' to be in "
                             f"[0, {member.shape[1]}) (got {head})")
        colors = Panel(points, member[:, head],
                       head_colors(member.shape[1])[head], '').colors()
    cloud = o3d.geometry.PointCloud()
    cloud.points = o3d.utility.Vector3dVector(points)
    cloud.colors = o3d.utility.Vector3dVector(colors)
    o3d.visualization.draw_geometries([cloud],
                                      window_name='samsa_geo sampling')
