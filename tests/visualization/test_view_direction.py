"""The matplotlib fallback must show clouds as Open3D does: same camera, and
not mirrored (a rotation of the axes, never a reflection)."""
import numpy as np
import pytest
import torch
from PIL import Image

from samsa_geo.typing import WITH_OPEN3D
from samsa_geo.visualization import plot_sampled_points
from samsa_geo.visualization._open3d_render import _camera
from samsa_geo.visualization.renderers import MATPLOTLIB_AXES

SIZE = 200  # panel width and height in pixels


def _arms() -> tuple:
    # Three arms of 40 points along +x, +y, +z. Head 2a colours the far end
    # (last 5 points) of arm a, head 2a+1 its near end (first 5).
    t = np.linspace(0.05, 1.0, 40)
    o = np.zeros_like(t)
    pos = np.concatenate([np.stack([t, o, o], 1), np.stack([o, t, o], 1),
                          np.stack([o, o, t], 1)])
    heads = []
    for a in range(3):
        heads += [list(range(40 * a + 35, 40 * a + 40)),
                  list(range(40 * a, 40 * a + 5))]
    return pos, torch.tensor([heads])


def _screen_directions(png) -> np.ndarray:
    r"""Measured on-screen unit directions :obj:`(right, up)` of the +x, +y,
    +z arms: from the centroid of the near end's coloured pixels to the far
    end's."""
    img = np.asarray(Image.open(png).convert('RGB')).astype(np.int64)
    cents = []
    for h in range(6):
        panel = img[:, h * SIZE:(h + 1) * SIZE]
        ys, xs = np.nonzero(panel.max(-1) - panel.min(-1) > 60)  # not grey
        assert xs.size > 0, f'head {h} drew nothing'
        cents.append(np.array([xs.mean(), -ys.mean()]))  # y up
    dirs = np.stack([cents[2 * a] - cents[2 * a + 1] for a in range(3)])
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def _open3d_directions(pos: np.ndarray) -> np.ndarray:
    r"""The screen directions of the axes under the camera that
    :mod:`samsa_geo.visualization._open3d_render` sets up (look-at, y up)."""
    center, eye, up = (v.astype(np.float64) for v in _camera(pos))
    forward = (center - eye) / np.linalg.norm(center - eye)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    true_up = np.cross(right, forward)
    dirs = np.stack([np.eye(3) @ right, np.eye(3) @ true_up], axis=1)
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def test_matplotlib_axes_are_a_rotation():
    m = MATPLOTLIB_AXES.astype(np.float64)
    assert np.allclose(m @ m.T, np.eye(3))
    assert np.isclose(np.linalg.det(m), 1.0)  # not a reflection
    # Open3D's up axis (y) is matplotlib's vertical axis (z).
    assert np.array_equal(m @ np.array([0, 1, 0]), [0, 0, 1])


def _check_backend(tmp_path, backend):
    pos, idx = _arms()
    out = plot_sampled_points(torch.tensor(pos, dtype=torch.float32), idx,
                              tmp_path / f'{backend}.png', ncols=6,
                              panel_size=(SIZE, SIZE), backend=backend)
    assert out['backend'] == backend
    measured = _screen_directions(out['png'])
    expected = _open3d_directions(pos)
    cos = (measured * expected).sum(axis=1)
    for axis, c, m, e in zip('xyz', cos, measured, expected):
        assert c > 0.98, (f'{backend}: +{axis} drawn towards {m.round(2)}, '
                          f"Open3D's view has {e.round(2)}")


def test_matplotlib_matches_open3d_view(tmp_path):
    _check_backend(tmp_path, 'matplotlib')


@pytest.mark.skipif(not WITH_OPEN3D, reason='open3d is not installed')
def test_open3d_matches_its_camera(tmp_path):
    # Checks the camera model the matplotlib test compares against.
    _check_backend(tmp_path, 'open3d')
