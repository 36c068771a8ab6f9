"""Off-screen Open3D rendering of point panels, run in a child process.

Filament (Open3D's renderer) aborts the whole process on some driver and
teardown errors, which no ``except`` can catch; running it as
``python -m samsa_geo.visualization._open3d_render IN.npz OUT.npz`` turns any
such crash into a non-zero exit code that the caller answers with the
matplotlib fallback. Only numpy and open3d are imported here.
"""
import sys

import numpy as np


def _camera(pos: np.ndarray) -> tuple:
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    center = (lo + hi) / 2.0
    radius = float(np.linalg.norm(pos - center, axis=1).max()) or 1.0
    direction = np.array([0.9, 0.7, 1.3])
    eye = center + direction / np.linalg.norm(direction) * radius * 3.0
    up = np.array([0.0, 1.0, 0.0])
    return (center.astype(np.float32), eye.astype(np.float32),
            up.astype(np.float32))


def render(inputs: dict) -> np.ndarray:
    import open3d as o3d
    from open3d.visualization import rendering

    width, height = (int(v) for v in inputs['size'])
    point_size = float(inputs['point_size'])
    num_panels = int(inputs['num_panels'])
    background = [float(v) for v in inputs['background']] + [1.0]

    renderer = rendering.OffscreenRenderer(width, height)
    # No tone mapping or anti-aliasing: unlit colours stay exact.
    renderer.scene.view.set_post_processing(False)
    images = np.empty((num_panels, height, width, 3), dtype=np.uint8)
    try:
        for p in range(num_panels):
            pos = inputs[f'pos_{p}'].astype(np.float64)
            colors = inputs[f'colors_{p}'].astype(np.float64)
            sampled = inputs[f'sampled_{p}'].astype(bool)
            scene = renderer.scene
            scene.clear_geometry()
            scene.set_background(background)
            for name, mask, size in (('cloud', ~sampled, point_size),
                                     ('sampled', sampled, 2.5 * point_size)):
                if not mask.any():
                    continue
                cloud = o3d.geometry.PointCloud()
                cloud.points = o3d.utility.Vector3dVector(pos[mask])
                cloud.colors = o3d.utility.Vector3dVector(colors[mask])
                material = rendering.MaterialRecord()
                material.shader = 'defaultUnlit'
                material.point_size = size
                scene.add_geometry(name, cloud, material)
            center, eye, up = _camera(pos)
            renderer.setup_camera(40.0, center, eye, up)
            images[p] = np.asarray(renderer.render_to_image())[..., :3]
    finally:
        # Geometry must go before the renderer, or Filament aborts on exit.
        renderer.scene.clear_geometry()
        del renderer
    return images


def main(argv: list) -> int:
    if len(argv) != 3:
        print('usage: python -m samsa_geo.visualization._open3d_render '
              'IN.npz OUT.npz', file=sys.stderr)
        return 2
    with np.load(argv[1]) as f:
        inputs = dict(f)
    images = render(inputs)
    np.savez(argv[2], images=images)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
