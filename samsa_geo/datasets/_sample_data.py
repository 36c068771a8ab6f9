"""The generator of the bundled synthetic samples, written in the real
archives' formats:

  OUT/modelnet40_sample/modelnet40_normal_resampled/...
      (read by samsa_geo.datasets.ModelNet40NormalResampled)
  OUT/shapenet_part_sample/shapenetcore_partanno_segmentation_benchmark_v0_normal/...
      (read by samsa_geo.datasets.ShapeNetPart)
  OUT/lrgb_sample/<name>/raw/... for the five LRGB datasets
      (read by samsa_geo.datasets.LRGBDataset; generated in
      samsa_geo/datasets/_lrgb_sample.py)

Every shape is procedural (primitives with random size, aspect and pose),
sampled on its surface with outward unit normals, y up, centred and scaled
to the unit sphere, like the real archives. Deterministic: seeded, so the
files written on first use by :func:`samsa_geo.datasets.sample_root` are
byte for byte those of the source checkout's ``datasets/`` folder.
"""
import json
import math
import os
import os.path as osp
import shutil

import numpy as np

from samsa_geo.datasets._lrgb_sample import write_lrgb_samples

SEED = 20240808
MODELNET_POINTS = 1024
MODELNET_SPLIT = (12, 4)  # train, test shapes per class
SHAPENET_POINTS = 512
SHAPENET_SPLIT = (12, 3, 4)  # train, val, test shapes per category


# Surface samplers: each returns (points [n, 3], normals [n, 3]), y up.
def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def box(rng, n, half, center=(0, 0, 0), skip=()):
    half = np.asarray(half, dtype=float)
    faces = [(a, s) for a in range(3) for s in (-1, 1) if (a, s) not in skip]
    areas = [4 * np.prod(np.delete(half, a)) for a, _ in faces]
    counts = rng.multinomial(n, np.array(areas) / sum(areas))
    pts, nrm = [], []
    for (a, s), k in zip(faces, counts):
        p = rng.uniform(-1, 1, (k, 3)) * half
        p[:, a] = s * half[a]
        q = np.zeros((k, 3))
        q[:, a] = s
        pts.append(p)
        nrm.append(q)
    return np.concatenate(pts) + center, np.concatenate(nrm)


def ellipsoid(rng, n, radii, center=(0, 0, 0)):
    radii = np.asarray(radii, dtype=float)
    # Rejection by the area element keeps the sampling close to uniform.
    out = np.empty((0, 3))
    while len(out) < n:
        u = unit(rng.normal(size=(4 * n, 3)))
        w = np.linalg.norm(u / radii, axis=-1) * np.prod(radii)
        out = np.concatenate([out, u[rng.uniform(0, w.max(), len(w)) < w]])
    u = out[:n]
    return u * radii + center, unit(u / radii)


def disk(rng, n, r, y, up, r_in=0.0, center=(0, 0)):
    rad = np.sqrt(rng.uniform(r_in**2 / r**2, 1, n)) * r
    t = rng.uniform(0, 2 * math.pi, n)
    p = np.stack([rad * np.cos(t) + center[0], np.full(n, y),
                  rad * np.sin(t) + center[1]], -1)
    q = np.zeros((n, 3))
    q[:, 1] = 1 if up else -1
    return p, q


def tube(rng, n, r, y0, y1, inward=False):
    t = rng.uniform(0, 2 * math.pi, n)
    p = np.stack([r * np.cos(t), rng.uniform(y0, y1, n), r * np.sin(t)], -1)
    q = np.stack([np.cos(t), np.zeros(n), np.sin(t)], -1)
    return p, -q if inward else q


def frustum(rng, n, r0, r1, y0, y1):
    """Lateral surface between radius r0 at y0 and r1 at y1."""
    # Area-uniform along the slant: the circumference grows linearly.
    u = rng.uniform(0, 1, n)
    if abs(r1 - r0) > 1e-9:
        s = (np.sqrt(r0**2 + u * (r1**2 - r0**2)) - r0) / (r1 - r0)
    else:
        s = u
    rad, y = r0 + s * (r1 - r0), y0 + s * (y1 - y0)
    t = rng.uniform(0, 2 * math.pi, n)
    p = np.stack([rad * np.cos(t), y, rad * np.sin(t)], -1)
    h = y1 - y0
    q = unit(np.stack([h * np.cos(t), np.full(n, r0 - r1), h * np.sin(t)], -1))
    return p, q


def torus(rng, n, big, small, arc=2 * math.pi):
    """Torus about the y axis, or an arc of it (angle 'arc' from +x)."""
    out = np.empty((0, 2))
    while len(out) < n:
        u = rng.uniform(0, arc, 4 * n)
        v = rng.uniform(0, 2 * math.pi, 4 * n)
        w = (big + small * np.cos(v)) / (big + small)
        keep = rng.uniform(0, 1, 4 * n) < w
        out = np.concatenate([out, np.stack([u[keep], v[keep]], -1)])
    u, v = out[:n, 0], out[:n, 1]
    q = np.stack([np.cos(v) * np.cos(u), np.sin(v), np.cos(v) * np.sin(u)], -1)
    c = np.stack([big * np.cos(u), np.zeros(n), big * np.sin(u)], -1)
    return c + small * q, q


def triangle(rng, n, a, b, c, inside):
    u, v = rng.uniform(0, 1, (2, n, 1))
    flip = (u + v) > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    p = a + u * (b - a) + v * (c - a)
    q = unit(np.cross(b - a, c - a))
    if np.dot(q, (a + b + c) / 3 - inside) < 0:
        q = -q
    return p, np.tile(q, (n, 1))


def mix(rng, n, parts):
    """parts: [(area, label, sampler(k))] -> points, normals, labels."""
    areas = np.array([a for a, _, _ in parts], dtype=float)
    counts = rng.multinomial(n, areas / areas.sum())
    pts, nrm, lab = [], [], []
    for (_, label, fn), k in zip(parts, counts):
        if k:
            p, q = fn(k)
            pts.append(p)
            nrm.append(q)
            lab.append(np.full(k, label))
    return np.concatenate(pts), np.concatenate(nrm), np.concatenate(lab)


def pose(rng, pts, nrm, max_yaw=25, max_tilt=5):
    """Random yaw about y and small tilt, then unit-sphere normalisation."""
    def rot(axis, deg):
        t = math.radians(deg)
        c, s = math.cos(t), math.sin(t)
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        return r
    r = (rot(1, rng.uniform(-max_yaw, max_yaw)) @
         rot(0, rng.uniform(-max_tilt, max_tilt)) @
         rot(2, rng.uniform(-max_tilt, max_tilt)))
    pts, nrm = pts @ r.T, nrm @ r.T
    pts = pts - (pts.max(0) + pts.min(0)) / 2
    return pts / np.linalg.norm(pts, axis=-1).max(), unit(nrm)


# ModelNet-style classes ----------------------------------------------------
def modelnet_shape(rng, cls, n):
    U = rng.uniform
    if cls == 'sphere':
        p, q = ellipsoid(rng, n, U(0.95, 1.05, 3))
    elif cls == 'ellipsoid':
        p, q = ellipsoid(rng, n, [1.0, U(0.35, 0.75), U(0.55, 0.95)])
    elif cls == 'cube':
        p, q = box(rng, n, U(0.85, 1.15, 3))
    elif cls == 'slab':
        p, q = box(rng, n, [1.0, U(0.08, 0.25), U(0.5, 1.0)])
    elif cls == 'cylinder':
        r, h = U(0.3, 0.7), U(0.6, 1.2)
        p, q, _ = mix(rng, n, [
            (2 * math.pi * r * 2 * h, 0, lambda k: tube(rng, k, r, -h, h)),
            (math.pi * r * r, 0, lambda k: disk(rng, k, r, h, True)),
            (math.pi * r * r, 0, lambda k: disk(rng, k, r, -h, False))])
    elif cls == 'cone':
        r, h = U(0.4, 0.8), U(0.8, 1.6)
        p, q, _ = mix(rng, n, [
            (math.pi * r * math.hypot(r, h), 0,
             lambda k: frustum(rng, k, r, 0.0, 0.0, h)),
            (math.pi * r * r, 0, lambda k: disk(rng, k, r, 0.0, False))])
    elif cls == 'capsule':
        r, h = U(0.25, 0.45), U(0.4, 0.9)

        def cap(k, s):
            u = unit(rng.normal(size=(k, 3)))
            u[:, 1] = s * np.abs(u[:, 1])
            return u * r + [0, s * h, 0], u
        p, q, _ = mix(rng, n, [
            (2 * math.pi * r * 2 * h, 0, lambda k: tube(rng, k, r, -h, h)),
            (2 * math.pi * r * r, 0, lambda k: cap(k, 1)),
            (2 * math.pi * r * r, 0, lambda k: cap(k, -1))])
    elif cls == 'torus':
        p, q = torus(rng, n, 1.0, U(0.15, 0.4))
    elif cls == 'pyramid':
        a, h = U(0.6, 1.0), U(0.8, 1.5)
        corners = np.array([[a, 0, a], [-a, 0, a], [-a, 0, -a], [a, 0, -a]])
        apex, inside = np.array([0, h, 0]), np.array([0, h / 4, 0])
        parts = [(4 * a * a, 0, lambda k: box(rng, k, [a, 0, a],
                                              skip=[(1, 1)]))]
        for i in range(4):
            b, c = corners[i], corners[(i + 1) % 4]
            area = np.linalg.norm(np.cross(b - apex, c - apex)) / 2
            parts.append((area, 0, lambda k, b=b, c=c: triangle(
                rng, k, apex, b, c, inside)))
        p, q, _ = mix(rng, n, parts)
    elif cls == 'table':
        p, q, _ = table(rng, n, drawer=False)
    else:
        raise ValueError(cls)
    if len(p) != n:  # the pyramid base is a flat box: keep n points
        raise RuntimeError(cls)
    return pose(rng, p, q)


MODELNET_CLASSES = ['capsule', 'cone', 'cube', 'cylinder', 'ellipsoid',
                    'pyramid', 'slab', 'sphere', 'table', 'torus']


# ShapeNet-part-style categories (global part labels of the benchmark) -----
def table(rng, n, drawer, top=47, leg=48, box_label=49):
    U = rng.uniform
    w, d, t = U(0.8, 1.2), U(0.4, 0.8), U(0.04, 0.1)
    h, lw = U(0.5, 0.9), U(0.05, 0.09)
    parts = [(8 * (w * d + w * t + d * t), top,
              lambda k: box(rng, k, [w, t, d], [0, h + t, 0]))]
    for sx in (-1, 1):
        for sz in (-1, 1):
            c = [sx * (w - 2 * lw), h / 2, sz * (d - 2 * lw)]
            parts.append((8 * h / 2 * lw + 4 * lw * lw, leg,
                          lambda k, c=c: box(rng, k, [lw, h / 2, lw], c,
                                             skip=[(1, 1)])))
    if drawer:
        dw, dh, dd = w * 0.4, U(0.08, 0.15), d * 0.7
        parts.append((8 * (dw * dh + dd * dh) + 4 * dw * dd, box_label,
                      lambda k: box(rng, k, [dw, dh, dd], [0, h - dh, 0],
                                    skip=[(1, 1)])))
    return mix(rng, n, parts)


def mug(rng, n, handle=36, cup=37):
    U = rng.uniform
    r, h, wall = U(0.35, 0.55), U(0.8, 1.3), 0.04
    big, small = U(0.2, 0.3) * h, U(0.05, 0.09)

    def handle_fn(k):
        p, q = torus(rng, k, big, small, arc=math.pi)
        # Half ring in the x-z plane -> x-y plane (a cyclic permutation of
        # the axes is a rotation), protruding from the cup wall at +x.
        p, q = p[:, [2, 0, 1]], q[:, [2, 0, 1]]
        return p + [r, h / 2, 0], q

    return mix(rng, n, [
        (2 * math.pi * r * h, cup, lambda k: tube(rng, k, r, 0, h)),
        (2 * math.pi * (r - wall) * h, cup,
         lambda k: tube(rng, k, r - wall, wall, h, inward=True)),
        (math.pi * r * r, cup, lambda k: disk(rng, k, r, 0.0, False)),
        (math.pi * (r - wall)**2, cup,
         lambda k: disk(rng, k, r - wall, wall, True)),
        (math.pi * (r**2 - (r - wall)**2), cup,
         lambda k: disk(rng, k, r, h, True, r_in=r - wall)),
        (2 * math.pi * big * math.pi * small, handle, handle_fn)])


def lamp(rng, n, base=24, shade=25, bracket=26, stem=27):
    U = rng.uniform
    rb, hb = U(0.3, 0.5), U(0.04, 0.1)
    rs, hs = U(0.02, 0.05), U(0.8, 1.4)
    r0, r1, hh = U(0.35, 0.6), U(0.15, 0.3), U(0.3, 0.5)
    y_shade = hb + hs - hh * 0.3
    parts = [
        (2 * math.pi * rb * hb + 2 * math.pi * rb * rb, base,
         lambda k: mix(rng, k, [
             (2 * math.pi * rb * hb, 0, lambda j: tube(rng, j, rb, 0, hb)),
             (math.pi * rb * rb, 0, lambda j: disk(rng, j, rb, hb, True)),
             (math.pi * rb * rb, 0, lambda j: disk(rng, j, rb, 0, False))
         ])[:2]),
        (2 * math.pi * rs * hs, stem,
         lambda k: tube(rng, k, rs, hb, hb + hs)),
        (math.pi * (r0 + r1) * math.hypot(r0 - r1, hh), shade,
         lambda k: frustum(rng, k, r0, r1, y_shade, y_shade + hh)),
    ]
    if rng.uniform() < 0.5:
        rr = r1 * 0.8
        parts.append((4 * math.pi**2 * rr * 0.02, bracket,
                      lambda k: (lambda p, q: (p + [0, y_shade + hh, 0], q))(
                          *torus(rng, k, rr, 0.02))))
    return mix(rng, n, parts)


SHAPENET = [  # (category, synset, generator)
    ('Lamp', '03636649', lamp),
    ('Mug', '03797390', mug),
    ('Table', '04379243', lambda rng, n: table(rng, n, rng.uniform() < 0.5)),
]

README_MODELNET = """\
# SYNTHETIC sample in the `modelnet40_normal_resampled` format

Everything here is **synthetic** (procedural primitives), written by
`scripts/make_sample_data.py` (seed {seed}); it is NOT ModelNet40 data.
It exists so that examples and tests run offline with the same loader as the
real archive (`samsa_geo.datasets.ModelNet40NormalResampled`).

- {num_classes} classes: {classes}
- {train} train + {test} test shapes per class ({total} shapes), ids
  `{{class}}_{{0001}}`, test ids numbered after train ids
- {points} points per shape (the real files have 10,000), lines
  `x,y,z,nx,ny,nz` with 6 decimals, outward unit normals, y up, centred and
  scaled to the unit sphere
- shapes vary in size, aspect and pose (yaw within +-25 deg, tilt within
  +-5 deg), so the task is learnable but not trivial (e.g. cube/slab,
  sphere/ellipsoid/capsule)
- file names follow the real archive (`modelnet40_shape_names.txt`,
  `modelnet40_train.txt`, `modelnet40_test.txt`) because the loader expects
  them; numbers measured on this sample say nothing about ModelNet40.

Regenerate: `python3 scripts/make_sample_data.py`.
"""

README_SHAPENET = """\
# SYNTHETIC sample in the `shapenetcore_partanno_segmentation_benchmark_v0_normal` format

Everything here is **synthetic** (procedural shapes with labelled parts),
written by `scripts/make_sample_data.py` (seed {seed}); it is NOT ShapeNet
data. It exists so that examples and tests run offline with the same loader as
the real archive (`samsa_geo.datasets.ShapeNetPart`, built on PyG's
`ShapeNet`).

- categories (real synset ids, global part labels of the 50-part benchmark):
  - Lamp `03636649`: 24 base, 25 lampshade, 26 bracket ring (in about half
    of the lamps only), 27 stem
  - Mug `03797390`: 36 handle, 37 cup
  - Table `04379243`: 47 top, 48 legs, 49 drawer box (in about half of the
    tables only)
  (part names follow the names commonly listed for the benchmark)
- shape files `{{synset}}/synthetic_{{category}}_{{0001}}.txt`, lines
  `x y z nx ny nz part`, {points} points per shape (real shapes have about
  2,600), y up, unit sphere, outward normals
- splits in `train_test_split/shuffled_{{train,val,test}}_file_list.json`
  ({train}/{val}/{test} shapes per category); `synsetoffset2category.txt`
  lists only the sample's categories.

Regenerate: `python3 scripts/make_sample_data.py`.
"""


def write_modelnet(rng, out, split=MODELNET_SPLIT):
    top = osp.join(out, 'modelnet40_sample')
    base = osp.join(top, 'modelnet40_normal_resampled')
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    train, test = [], []
    for cls in MODELNET_CLASSES:
        os.makedirs(osp.join(base, cls))
        for i in range(sum(split)):
            shape_id = f'{cls}_{i + 1:04d}'
            p, q = modelnet_shape(rng, cls, MODELNET_POINTS)
            perm = rng.permutation(len(p))
            np.savetxt(osp.join(base, cls, f'{shape_id}.txt'),
                       np.concatenate([p, q], 1)[perm], fmt='%.6f',
                       delimiter=',')
            (train if i < split[0] else test).append(shape_id)
    for name, lines in (('shape_names', MODELNET_CLASSES), ('train', train),
                        ('test', test)):
        with open(osp.join(base, f'modelnet40_{name}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    with open(osp.join(top, 'README.md'), 'w') as f:
        f.write(README_MODELNET.format(
            seed=SEED, num_classes=len(MODELNET_CLASSES),
            classes=', '.join(MODELNET_CLASSES), train=split[0],
            test=split[1],
            total=len(MODELNET_CLASSES) * sum(split),
            points=MODELNET_POINTS))


def write_shapenet(rng, out):
    top = osp.join(out, 'shapenet_part_sample')
    base = osp.join(top,
                    'shapenetcore_partanno_segmentation_benchmark_v0_normal')
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(osp.join(base, 'train_test_split'))
    splits = {'train': [], 'val': [], 'test': []}
    for category, synset, fn in SHAPENET:
        os.makedirs(osp.join(base, synset))
        for i in range(sum(SHAPENET_SPLIT)):
            name = f'synthetic_{category.lower()}_{i + 1:04d}'
            p, q, label = fn(rng, SHAPENET_POINTS)
            p, q = pose(rng, p, q)
            perm = rng.permutation(len(p))
            rows = np.concatenate([p, q, label[:, None]], 1)[perm]
            np.savetxt(osp.join(base, synset, f'{name}.txt'), rows,
                       fmt='%.6f', delimiter=' ')
            split = ('train' if i < SHAPENET_SPLIT[0] else
                     'val' if i < sum(SHAPENET_SPLIT[:2]) else 'test')
            splits[split].append(f'shape_data/{synset}/{name}')
    for split, names in splits.items():
        names = [names[i] for i in rng.permutation(len(names))]
        with open(osp.join(base, 'train_test_split',
                           f'shuffled_{split}_file_list.json'), 'w') as f:
            json.dump(names, f)
    with open(osp.join(base, 'synsetoffset2category.txt'), 'w') as f:
        f.write(''.join(f'{c}\t{s}\n' for c, s, _ in SHAPENET))
    with open(osp.join(top, 'README.md'), 'w') as f:
        f.write(README_SHAPENET.format(
            seed=SEED, points=SHAPENET_POINTS, train=SHAPENET_SPLIT[0],
            val=SHAPENET_SPLIT[1], test=SHAPENET_SPLIT[2]))


def write_samples(out: str, modelnet_split: tuple = MODELNET_SPLIT,
                  modelnet_only: bool = False) -> None:
    r"""Writes the synthetic samples that :func:`sample_root` returns,
    :obj:`modelnet40_sample/`, :obj:`shapenet_part_sample/` and
    :obj:`lrgb_sample/`, under :obj:`out`. Seeded: the same arguments write
    the same bytes.

    Args:
        out (str): The folder that receives both samples.
        modelnet_split (tuple, optional): Train and test shapes per ModelNet
            class. (default: :obj:`(12, 4)`)
        modelnet_only (bool, optional): Skip the ShapeNet sample, which draws
            from the random stream after the ModelNet sample, and the LRGB
            sample (a stream of its own). (default: :obj:`False`)
    """
    rng = np.random.default_rng(SEED)
    write_modelnet(rng, out, tuple(modelnet_split))
    if not modelnet_only:
        write_shapenet(rng, out)
        write_lrgb_samples(out)
