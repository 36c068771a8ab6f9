"""Point clouds with the points each attention head sampled highlighted.

Open3D renders off-screen when it can; matplotlib draws the same panels when
it cannot. Coloured PLY files are always written by hand, so they need
neither backend.
"""
import colorsys
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from torch import Tensor

ArrayLike = Union[Tensor, np.ndarray]
PathLike = Union[str, os.PathLike]

#: Colour of points no head sampled.
GREY: Tuple[float, float, float] = (0.75, 0.75, 0.75)
#: Colour of points sampled by more than one head (in per-layer PLY files).
SHARED_COLOR: Tuple[float, float, float] = (0.0, 0.0, 0.0)
BACKGROUND: Tuple[float, float, float] = (1.0, 1.0, 1.0)

# Saturated, mutually distinct colours, none of them grey, white or black.
_PALETTE = np.array([
    [0.894, 0.102, 0.110], [0.216, 0.494, 0.722], [0.302, 0.686, 0.290],
    [0.596, 0.306, 0.639], [1.000, 0.498, 0.000], [0.651, 0.337, 0.157],
    [0.969, 0.506, 0.749], [0.000, 0.750, 0.750], [0.737, 0.741, 0.133],
    [0.090, 0.745, 0.812], [0.400, 0.000, 0.600], [0.000, 0.400, 0.200],
])

BACKENDS = ('auto', 'open3d', 'matplotlib')


def head_colors(heads: int) -> np.ndarray:
    r"""Returns one RGB colour in :math:`[0, 1]` per head, shape
    :obj:`[heads, 3]`; heads beyond the fixed palette get golden-ratio hues.
    """
    if heads < 0:
        raise ValueError(f"Expected 'heads' to be non-negative (got {heads})")
    colors = [_PALETTE[h] for h in range(min(heads, len(_PALETTE)))]
    for h in range(len(_PALETTE), heads):
        hue = (h * 0.618033988749895) % 1.0
        colors.append(np.array(colorsys.hsv_to_rgb(hue, 0.9, 0.85)))
    return np.asarray(colors, dtype=np.float64).reshape(heads, 3)


def _to_numpy(value: ArrayLike, name: str) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise TypeError(f"Expected '{name}' to be a torch.Tensor or numpy array "
                    f"(got {type(value).__name__})")


def _check_pos(pos: ArrayLike) -> np.ndarray:
    pos = _to_numpy(pos, 'pos').astype(np.float64)
    if pos.ndim != 2 or pos.shape[1] not in (2, 3):
        raise ValueError(f"Expected 'pos' to have shape [N, 3] or [N, 2] "
                         f"(got {list(pos.shape)})")
    if pos.shape[1] == 2:  # planar points lie in z = 0
        pos = np.concatenate([pos, np.zeros((pos.shape[0], 1))], axis=1)
    return pos


def select_graph(
    indices: ArrayLike,
    pos: ArrayLike,
    batch: Optional[ArrayLike] = None,
    graph_index: int = 0,
) -> Tuple[np.ndarray, np.ndarray]:
    r"""Cuts one graph out of a batch and turns its global sampled indices
    into indices local to that graph.

    Args:
        indices (torch.Tensor): Global token indices of shape
            :obj:`[num_graphs, heads, k_max]` (or :obj:`[heads, k_max]` for a
            single graph); negative entries (unused slots, registers) are
            ignored.
        pos (torch.Tensor): Token positions of shape :obj:`[N, 3]`.
        batch (torch.Tensor, optional): Batch vector of shape :obj:`[N]`.
            (default: :obj:`None`)
        graph_index (int, optional): Which graph of the batch.
            (default: :obj:`0`)

    Returns:
        The graph's positions :obj:`[n, 3]` and local indices
        :obj:`[heads, k_max]`, with :obj:`-1` wherever no point was sampled.
    """
    pos = _check_pos(pos)
    idx = _to_numpy(indices, 'indices')
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"Expected 'indices' to have an integer dtype "
                        f"(got {idx.dtype})")
    if idx.ndim == 2:
        idx = idx[None]  # [1, heads, k_max]
    if idx.ndim != 3:
        raise ValueError(f"Expected 'indices' to have shape "
                         f"[num_graphs, heads, k_max] (got {list(idx.shape)})")
    num_graphs, num_nodes = idx.shape[0], pos.shape[0]
    if not 0 <= graph_index < num_graphs:
        raise IndexError(f"Expected 'graph_index' to be in [0, {num_graphs}) "
                         f"(got {graph_index})")
    if idx.size > 0 and idx.max() >= num_nodes:
        raise IndexError(f"Expected 'indices' to be smaller than the number "
                         f"of points {num_nodes} (got {int(idx.max())})")
    if batch is None:
        if num_graphs != 1:
            raise ValueError(f"Expected 'batch' for indices of {num_graphs} "
                             f"graphs (got None)")
        nodes = np.arange(num_nodes)
    else:
        batch = _to_numpy(batch, 'batch').reshape(-1)
        if batch.shape[0] != num_nodes:
            raise ValueError(f"Expected 'batch' to have shape [{num_nodes}] "
                             f"(got {list(batch.shape)})")
        nodes = np.flatnonzero(batch == graph_index)

    local_of = np.full(num_nodes, -1, dtype=np.int64)
    local_of[nodes] = np.arange(nodes.shape[0])
    glob = idx[graph_index].astype(np.int64)  # [heads, k_max]
    valid = glob >= 0
    local = np.full(glob.shape, -1, dtype=np.int64)
    local[valid] = local_of[glob[valid]]
    if (local[valid] < 0).any():
        raise ValueError(f"Expected the indices of graph {graph_index} to "
                         f"point into graph {graph_index} only")
    return pos[nodes], local


def sampling_membership(local_indices: np.ndarray,
                        num_points: int) -> np.ndarray:
    r"""Boolean matrix :obj:`[num_points, heads]`: which head sampled which
    point. :obj:`local_indices` has shape :obj:`[heads, k_max]`; negative
    entries are ignored."""
    heads = local_indices.shape[0]
    member = np.zeros((num_points, heads), dtype=bool)
    for h in range(heads):
        sel = local_indices[h]
        member[sel[sel >= 0], h] = True
    return member


def _graph_membership(
    indices: ArrayLike,
    pos: ArrayLike,
    batch: Optional[ArrayLike],
    graph_index: int,
) -> Tuple[np.ndarray, np.ndarray]:
    # One graph's points [n, 3] and which head sampled which point [n, heads].
    points, local = select_graph(indices, pos, batch, graph_index)
    return points, sampling_membership(local, points.shape[0])


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
    points, member = _graph_membership(indices, pos, batch, graph_index)
    return _write_ply(path, points, member, comment)


def _write_ply(path: PathLike, points: np.ndarray, member: np.ndarray,
               comment: Optional[str]) -> Path:
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
    end = lines.index('end_header')
    props = [ln.split()[-1] for ln in lines[:end] if ln.startswith('property')]
    rows = np.array([ln.split() for ln in lines[end + 1:] if ln.strip()],
                    dtype=np.float64).reshape(-1, len(props))
    cols = [props.index(c) for c in ('red', 'green', 'blue')]
    return rows[:, :3], rows[:, cols].astype(np.int64)


@dataclass
class _Panel:
    pos: np.ndarray  # [n, 3]
    sampled: np.ndarray  # [n] bool
    color: np.ndarray  # [3]
    title: str

    def colors(self) -> np.ndarray:
        colors = np.tile(np.asarray(GREY), (self.pos.shape[0], 1))
        colors[self.sampled] = self.color
        return colors


def _render_open3d(panels: Sequence[_Panel], size: Tuple[int, int],
                   point_size: float, timeout: float = 300.0) -> np.ndarray:
    # A child process: see _open3d_render.py for why.
    import samsa_geo
    root = str(Path(samsa_geo.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [root] + [p for p in [env.get('PYTHONPATH')] if p])
    with tempfile.TemporaryDirectory(prefix='samsa_o3d_') as tmp:
        inp, out = os.path.join(tmp, 'in.npz'), os.path.join(tmp, 'out.npz')
        arrays: Dict[str, np.ndarray] = dict(
            size=np.asarray(size), point_size=np.asarray(point_size),
            num_panels=np.asarray(len(panels)),
            background=np.asarray(BACKGROUND))
        for p, panel in enumerate(panels):
            arrays[f'pos_{p}'] = panel.pos.astype(np.float32)
            arrays[f'colors_{p}'] = panel.colors().astype(np.float32)
            arrays[f'sampled_{p}'] = panel.sampled
        np.savez(inp, **arrays)
        proc = subprocess.run(
            [sys.executable, '-m', 'samsa_geo.visualization._open3d_render',
             inp, out], env=env, capture_output=True, text=True,
            timeout=timeout)
        if proc.returncode != 0 or not os.path.exists(out):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise RuntimeError(f"Open3D rendering failed (exit code "
                               f"{proc.returncode}): " + ' | '.join(tail))
        with np.load(out) as f:
            images = f['images']
    expected = (len(panels), size[1], size[0], 3)
    if images.shape != expected:
        raise RuntimeError(f"Open3D returned images of shape "
                           f"{images.shape} (expected {expected})")
    return images


def _render_matplotlib(panels: Sequence[_Panel], size: Tuple[int, int],
                       point_size: float) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = size
    images = np.empty((len(panels), height, width, 3), dtype=np.uint8)
    for p, panel in enumerate(panels):
        dpi = 100
        fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi,
                     facecolor=BACKGROUND)
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_axes((0, 0, 1, 1), projection='3d')
        ax.set_facecolor(BACKGROUND)
        # Open3D shows y up; matplotlib's vertical axis is z.
        x, y, z = panel.pos[:, 0], panel.pos[:, 2], panel.pos[:, 1]
        rest, hit = ~panel.sampled, panel.sampled
        ax.scatter(x[rest], y[rest], z[rest], c=[GREY], s=point_size,
                   depthshade=False, linewidths=0)
        ax.scatter(x[hit], y[hit], z[hit], c=[panel.color],
                   s=(2.5 * point_size)**2 / 2, depthshade=False,
                   linewidths=0)
        lo, hi = panel.pos.min(axis=0), panel.pos.max(axis=0)
        center, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-6)
        ax.set_xlim(center[0] - half, center[0] + half)
        ax.set_ylim(center[2] - half, center[2] + half)
        ax.set_zlim(center[1] - half, center[1] + half)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=25, azim=-55)
        ax.set_axis_off()
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
        img = np.full((height, width, 3), 255, dtype=np.uint8)
        h, w = min(height, rgba.shape[0]), min(width, rgba.shape[1])
        img[:h, :w] = rgba[:h, :w, :3]
        images[p] = img
    return images


def _font(size: int) -> Any:
    from PIL import ImageFont
    try:  # a scalable font (Pillow >= 10.1 with FreeType)
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _compose(images: np.ndarray, titles: Sequence[str], ncols: int,
             out_png: PathLike, caption: Optional[str] = None) -> Path:
    from PIL import Image, ImageDraw

    num, height, width, _ = images.shape
    nrows = -(-num // ncols)
    # Panel titles scale with the panel; the caption gets a band on top.
    font = _font(max(10, min(width, height) // 20))
    band = 0
    if caption:
        caption_font = _font(max(12, min(width, height) // 14))
        band = int(caption_font.size * 1.6) if hasattr(
            caption_font, 'size') else 20
    grid = np.full((band + nrows * height, ncols * width, 3), 255,
                   dtype=np.uint8)
    for p in range(num):
        r, c = divmod(p, ncols)
        top = band + r * height
        grid[top:top + height, c * width:(c + 1) * width] = images[p]
    image = Image.fromarray(grid)
    draw = ImageDraw.Draw(image)
    if caption:
        draw.text((6, band // 5), caption, fill=(0, 0, 0), font=caption_font)
    for p, title in enumerate(titles):
        r, c = divmod(p, ncols)
        draw.text((c * width + 4, band + r * height + 3), title,
                  fill=(0, 0, 0), font=font)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_png)
    return out_png


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"Expected 'backend' to be one of {BACKENDS} "
                         f"(got '{backend}')")


def render_panels(
    panels: Sequence[_Panel],
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
    _check_backend(backend)
    if len(panels) == 0:
        raise ValueError("Expected at least one panel to render (got none)")
    width, height = (int(v) for v in panel_size)
    if width < 16 or height < 16:
        raise ValueError(f"Expected 'panel_size' to be at least (16, 16) "
                         f"(got {tuple(panel_size)})")
    if ncols is None:
        ncols = min(len(panels), 4)
    if ncols < 1:
        raise ValueError(f"Expected 'ncols' to be positive (got {ncols})")

    from samsa_geo.typing import WITH_OPEN3D
    images, used = None, 'matplotlib'
    if backend == 'open3d' or (backend == 'auto' and WITH_OPEN3D):
        try:
            images = _render_open3d(panels, (width, height), point_size)
            used = 'open3d'
        except Exception as e:  # Open3D missing, no EGL/Vulkan, crash ...
            if backend == 'open3d':
                raise RuntimeError(f"Open3D could not render: {e}") from e
            warnings.warn(f"Open3D could not render ({e}); falling back to "
                          f"matplotlib")
    if images is None:
        images = _render_matplotlib(panels, (width, height), point_size)
    path = _compose(images, [p.title for p in panels], ncols, out_png,
                    caption)
    return path, used


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
) -> List[_Panel]:
    r"""One panel per layer and head (heads restricted to :obj:`heads`)."""
    panels = []
    for name, idx in _layer_dict(indices).items():
        points, member = _graph_membership(idx, pos, batch, graph_index)
        panels += _head_panels(name, points, member, heads)
    return panels


def _head_panels(name: str, points: np.ndarray, member: np.ndarray,
                 heads: Optional[Sequence[int]]) -> List[_Panel]:
    # One panel per chosen head of one layer's membership [n, heads].
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
        panels.append(_Panel(points, member[:, h], palette[h], title))
    return panels


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
    points, member = _graph_membership(indices, pos, batch, graph_index)
    if head is None:
        colors = membership_colors(member)
    else:
        if not 0 <= head < member.shape[1]:
            raise IndexError(f"Expected 'head' to be in "
                             f"[0, {member.shape[1]}) (got {head})")
        colors = _Panel(points, member[:, head],
                        head_colors(member.shape[1])[head], '').colors()
    cloud = o3d.geometry.PointCloud()
    cloud.points = o3d.utility.Vector3dVector(points)
    cloud.colors = o3d.utility.Vector3dVector(colors)
    o3d.visualization.draw_geometries([cloud],
                                      window_name='samsa_geo sampling')
