import numpy as np
import pytest
import torch
from PIL import Image

import samsa_geo.visualization.colors as vis_colors
import samsa_geo.visualization.points as points
import samsa_geo.visualization.selection as selection
from samsa_geo.typing import WITH_OPEN3D
from samsa_geo.visualization import (
    SamplingRecorder,
    head_colors,
    plot_sampled_points,
    read_ply_colors,
    select_graph,
    write_sampling_ply,
)


def _head_pixels(img: np.ndarray, color: np.ndarray, tol: int = 12) -> int:
    diff = np.abs(img.astype(np.int64) - np.round(color * 255)).max(axis=-1)
    return int((diff <= tol).sum())


def _indices():
    # Two graphs of 30 and 20 points, 3 heads, k_max = 6 (+1 register slot).
    batch = torch.cat([torch.zeros(30), torch.ones(20)]).long()
    idx = torch.full((2, 3, 7), -1, dtype=torch.long)
    for g, (start, n) in enumerate([(0, 30), (30, 20)]):
        for h in range(3):
            idx[g, h, :6] = start + torch.randperm(n)[:6]
    idx[1, 0, 6] = -2  # a register token: not a point
    idx[1, 2, 5] = -1  # an unused slot
    return torch.randn(50, 3), batch, idx


def test_head_colors():
    colors = head_colors(20)
    assert colors.shape == (20, 3)
    assert ((colors >= 0) & (colors <= 1)).all()
    dist = np.abs(colors[:, None] - colors[None]).max(-1)
    assert (dist + np.eye(20) > 0.05).all()  # distinct
    for ref in (vis_colors.GREY, vis_colors.SHARED_COLOR,
                vis_colors.BACKGROUND):
        assert (np.abs(colors - np.asarray(ref)).max(-1) > 0.2).all()
    assert np.array_equal(head_colors(np.int64(3)), colors[:3])
    for heads in (True, False):
        with pytest.raises(TypeError) as info:
            head_colors(heads)
        assert str(info.value) == "Expected 'heads' to be an int (got bool)"


def test_select_graph():
    pos, batch, idx = _indices()
    pts, local = select_graph(idx, pos, batch, graph_index=1)
    assert np.allclose(pts, pos[30:].numpy())
    assert local.shape == (3, 7)
    valid = idx[1] >= 0
    assert np.array_equal(local[valid.numpy()], (idx[1][valid] - 30).numpy())
    assert (local[~valid.numpy()] == -1).all()

    with pytest.raises(IndexError, match="'graph_index'"):
        select_graph(idx, pos, batch, graph_index=2)
    with pytest.raises(ValueError, match=r"'pos' to have shape \[N, 3\]"):
        select_graph(idx, torch.randn(50, 4), batch)
    with pytest.raises(IndexError, match="'indices'"):
        select_graph(idx + 50, pos, batch)
    with pytest.raises(ValueError, match="'batch'"):
        select_graph(idx, pos, None)
    with pytest.raises(TypeError, match='integer'):
        select_graph(idx.float(), pos, batch)
    bad = idx.clone()
    bad[0, 0, 0] = 45  # graph 0 pointing into graph 1
    with pytest.raises(ValueError, match='graph 0'):
        select_graph(bad, pos, batch, graph_index=0)


@pytest.mark.parametrize('text, what', [
    ('hello\n', "an 'end_header' line"),
    ('ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\n'
     'end_header\n', "'red', 'green' and 'blue' properties"),
])
def test_read_ply_colors_names_a_file_that_is_not_one(tmp_path, text, what):
    # It raised "'end_header' is not in list", naming no file.
    path = tmp_path / 'notes.txt'
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        read_ply_colors(path)
    assert str(info.value) == (f"Expected 'path' to be an ASCII PLY file "
                               f"with {what} (got {str(path)!r})")


@pytest.mark.parametrize('graph_index', [0, 1])
def test_ply_colours_are_recorded_indices(tmp_path, point_model, point_batch,
                                          graph_index):
    with SamplingRecorder(point_model) as rec:
        point_model(point_batch.pos, point_batch.batch)
    idx = rec.indices['attns.1']  # 3 heads
    path = write_sampling_ply(tmp_path / 'l.ply', point_batch.pos, idx,
                              point_batch.batch, graph_index, comment='x y')
    xyz, rgb = read_ply_colors(path)
    nodes = (point_batch.batch == graph_index).nonzero().view(-1)
    assert np.allclose(xyz, point_batch.pos[nodes].numpy(), atol=1e-5)

    offset = int(nodes[0])
    grey = np.round(np.asarray(vis_colors.GREY) * 255)
    coloured = set(np.flatnonzero((rgb != grey).any(axis=1)).tolist())
    rec_idx = idx[graph_index]
    expected = set((rec_idx[rec_idx >= 0] - offset).tolist())
    assert coloured == expected and len(expected) > 0

    # Exact membership per head, and the colour of single-head points.
    with open(path) as f:
        lines = f.read().splitlines()
    rows = np.array([ln.split() for ln in lines[lines.index('end_header')
                                                + 1:]], dtype=float)
    member = rows[:, 6:].astype(int)  # [n, heads]
    palette = np.round(head_colors(3) * 255)
    for h in range(3):
        sel = rec_idx[h][rec_idx[h] >= 0] - offset
        assert set(np.flatnonzero(member[:, h]).tolist()) == set(sel.tolist())
    one = member.sum(1) == 1
    assert np.array_equal(rgb[one], palette[member[one].argmax(1)])
    assert (rgb[member.sum(1) > 1] == 0).all()

    if WITH_OPEN3D:  # Open3D reads our file with the same colours.
        import open3d as o3d
        cloud = o3d.io.read_point_cloud(str(path))
        assert np.allclose(np.asarray(cloud.colors) * 255, rgb, atol=0.5)


def _reference_ply_rows(points_xyz, rgb, member):
    # The per-point loop the writer used before np.savetxt.
    lines = []
    for p, c, m in zip(points_xyz, rgb, member.astype(np.int64)):
        fields = [f'{v:.6g}' for v in p] + [str(v) for v in c]
        lines.append(' '.join(fields + [str(v) for v in m]) + '\n')
    return ''.join(lines)


def test_ply_rows_byte_identical(tmp_path):
    rng = np.random.default_rng(0)
    for t in range(40):
        n0, n1 = int(rng.integers(0, 30)), int(rng.integers(1, 30))
        heads, k = int(rng.integers(1, 15)), int(rng.integers(1, 8))
        dim = 2 if t % 5 == 0 else 3
        scale = 10.0**rng.integers(-8, 9, size=(n0 + n1, dim))
        pos = rng.standard_normal((n0 + n1, dim)) * scale
        pos[rng.random(pos.shape) < 0.05] = 0.0
        if t % 2:
            pos = torch.from_numpy(pos).float()
        batch = np.repeat([0, 1], [n0, n1])
        idx = np.full((2, heads, k), -1)
        for g, (lo, n) in enumerate([(0, n0), (n0, n1)]):
            if n > 0:
                idx[g] = rng.integers(lo - 3, lo + n, (heads, k))
                idx[g][idx[g] < lo] = -1 - rng.integers(0, 3)
        for g in (0, 1):
            path = write_sampling_ply(tmp_path / f'{t}_{g}.ply', pos, idx,
                                      batch, g, comment='t')
            text = path.read_text()
            body = text[text.index('end_header\n') + len('end_header\n'):]
            xyz, local = selection.select_graph(idx, pos, batch, g)
            member = selection.sampling_membership(local, xyz.shape[0])
            rgb = np.round(vis_colors.membership_colors(member) * 255)
            assert body == _reference_ply_rows(xyz, rgb.astype(np.int64),
                                               member)


def _check_png(path, size, ncols, nrows, heads, num_heads=3):
    img = np.asarray(Image.open(path).convert('RGB'))
    width, height = size
    assert img.shape == (nrows * height, ncols * width, 3)
    assert img.std() > 5.0  # not blank
    palette = head_colors(num_heads)
    for p, h in enumerate(heads):
        r, c = divmod(p, ncols)
        panel = img[r * height:(r + 1) * height, c * width:(c + 1) * width]
        assert _head_pixels(panel, palette[h]) >= 20
        for other in set(heads) - {h}:  # other heads' colours absent
            assert _head_pixels(panel, palette[other]) == 0


def test_matplotlib_backend(tmp_path):
    pos, batch, idx = _indices()
    out = plot_sampled_points(pos, idx, tmp_path / 'p.png', batch=batch,
                              graph_index=1, panel_size=(150, 120),
                              ncols=2, backend='matplotlib')
    assert out['backend'] == 'matplotlib'
    _check_png(out['png'], (150, 120), 2, 2, [0, 1, 2])


def test_open3d_failure_falls_back(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError('EGL not available')

    monkeypatch.setattr(points, 'render_open3d', broken)
    monkeypatch.setattr('samsa_geo.typing.WITH_OPEN3D', True)
    pos, batch, idx = _indices()
    with pytest.warns(UserWarning, match='EGL not available'):
        out = plot_sampled_points(pos, {'a': idx}, tmp_path / 'p.png',
                                  batch=batch, heads=[2], panel_size=(100, 90))
    assert out['backend'] == 'matplotlib'
    _check_png(out['png'], (100, 90), 1, 1, [2])
    with pytest.raises(RuntimeError, match='Open3D could not render'):
        plot_sampled_points(pos, idx, tmp_path / 'q.png', batch=batch,
                            backend='open3d')


def test_bad_arguments(tmp_path):
    pos, batch, idx = _indices()
    with pytest.raises(ValueError, match="'backend'"):
        plot_sampled_points(pos, idx, tmp_path / 'p.png', batch, backend='x')
    with pytest.raises(IndexError, match="'heads'"):
        plot_sampled_points(pos, idx, tmp_path / 'p.png', batch, heads=[3])
    with pytest.raises(ValueError, match="'panel_size'"):
        plot_sampled_points(pos, idx, tmp_path / 'p.png', batch,
                            panel_size=(4, 4), backend='matplotlib')
    with pytest.raises(TypeError, match=r"'ncols' to be an int \(got bool\)"):
        plot_sampled_points(pos, idx, tmp_path / 'p.png', batch, ncols=True,
                            backend='matplotlib')
    with pytest.raises(RuntimeError, match='display'):
        if points.has_display():
            pytest.skip('a display exists')
        points.show_sampled_points(pos, idx, batch)


def test_bad_backend_message(tmp_path):
    # The backend is checked where the panels are rendered: the user still
    # gets the full message, and no file is written.
    pos, batch, idx = _indices()
    msg = ("Expected 'backend' to be one of ('auto', 'open3d', "
           "'matplotlib') (got 'x')")
    with pytest.raises(ValueError) as e:
        plot_sampled_points(pos, idx, tmp_path / 'p.png', batch, backend='x')
    assert str(e.value) == msg
    assert not (tmp_path / 'p.png').exists()


@pytest.mark.skipif(not WITH_OPEN3D, reason='open3d is not installed')
def test_open3d_backend(tmp_path):
    pos, batch, idx = _indices()
    out = plot_sampled_points(pos, {'l0': idx, 'l1': idx.flip(1)},
                              tmp_path / 'p.png', batch=batch,
                              panel_size=(160, 128), ncols=3,
                              backend='open3d')
    assert out['backend'] == 'open3d'
    _check_png(out['png'], (160, 128), 3, 2, [0, 1, 2, 0, 1, 2])
