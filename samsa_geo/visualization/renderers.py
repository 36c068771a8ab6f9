"""The two renderers of point panels: Open3D off-screen (in a child
process) and matplotlib."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

from samsa_geo.visualization.colors import BACKGROUND, GREY
from samsa_geo.visualization.panels import Panel

#: The renderer choices: Open3D falling back to matplotlib, or one of them.
BACKENDS = ('auto', 'open3d', 'matplotlib')

#: Maps a point's :obj:`(x, y, z)` to matplotlib's axes (rows: matplotlib's
#: x, y, z). Open3D shows :obj:`y` up with :obj:`+z` towards the viewer, while
#: matplotlib's vertical axis is its :obj:`z`: data :obj:`y` becomes
#: matplotlib's :obj:`z` and data :obj:`z` becomes matplotlib's :obj:`-y`. A
#: rotation (determinant +1), not a reflection, so the matplotlib panels show
#: the cloud as Open3D does, not mirrored.
MATPLOTLIB_AXES = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])


def check_backend(backend: str) -> None:
    r"""Raises a :class:`ValueError` unless :obj:`backend` is one of
    :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"Expected 'backend' to be one of {BACKENDS} "
                         f"(got '{backend}')")


def render_open3d(panels: Sequence[Panel], size: Tuple[int, int],
                  point_size: float, timeout: float = 300.0) -> np.ndarray:
    r"""Images :obj:`[num_panels, height, width, 3]` (uint8) of the panels,
    rendered off-screen by Open3D in a child process (see
    :mod:`samsa_geo.visualization._open3d_render` for why); raises a
    :class:`RuntimeError` if the child fails."""
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


def render_matplotlib(panels: Sequence[Panel], size: Tuple[int, int],
                      point_size: float) -> np.ndarray:
    r"""Images :obj:`[num_panels, height, width, 3]` (uint8) of the panels,
    drawn as matplotlib 3-D scatter plots with the view of Open3D's."""
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
        # Open3D's view (y up) in matplotlib's axes (z up); see
        # MATPLOTLIB_AXES.
        mpl = np.asarray(panel.pos, dtype=np.float64) @ MATPLOTLIB_AXES.T
        x, y, z = mpl[:, 0], mpl[:, 1], mpl[:, 2]
        rest, hit = ~panel.sampled, panel.sampled
        ax.scatter(x[rest], y[rest], z[rest], c=[GREY], s=point_size,
                   depthshade=False, linewidths=0)
        ax.scatter(x[hit], y[hit], z[hit], c=[panel.color],
                   s=(2.5 * point_size)**2 / 2, depthshade=False,
                   linewidths=0)
        lo, hi = mpl.min(axis=0), mpl.max(axis=0)
        center, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-6)
        ax.set_xlim(center[0] - half, center[0] + half)
        ax.set_ylim(center[1] - half, center[1] + half)
        ax.set_zlim(center[2] - half, center[2] + half)
        ax.set_box_aspect((1, 1, 1))
        # Open3D's camera looks from data direction (0.9, 0.7, 1.3), i.e.
        # matplotlib's (0.9, -1.3, 0.7): azimuth -55, elevation about 24.
        ax.view_init(elev=25, azim=-55)
        ax.set_axis_off()
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
        img = np.full((height, width, 3), 255, dtype=np.uint8)
        h, w = min(height, rgba.shape[0]), min(width, rgba.shape[1])
        img[:h, :w] = rgba[:h, :w, :3]
        images[p] = img
    return images
