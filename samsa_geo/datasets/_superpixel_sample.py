r"""The generator of the bundled synthetic PascalVOC-SP and COCO-SP samples,
in the raw format of the LRGB archives:

  OUT/lrgb_sample/pascalvoc-sp/raw/{train,val,test}.pickle
  OUT/lrgb_sample/coco-sp/raw/{train,val,test}.pickle
      (read by samsa_geo.datasets.LRGBDataset(OUT/lrgb_sample, name))

Every image is a jittered grid of superpixels: a background of one of a few
scene colours and one to three objects, each a connected blob of cells of
one of a few object kinds. The class of an object superpixel is the pair
(scene, kind), so a superpixel inside an object has to look past its own
object to the background for its class; background superpixels are class 0.
Seeded: the same arguments write the same bytes.
"""
from typing import Dict, List, Tuple

import numpy as np
import torch

from samsa_geo.datasets._lrgb_raw import COCO_ORIGINAL_LABELS, write_splits

SUPERPIXEL_SEED = {'pascalvoc-sp': 20240812, 'coco-sp': 20240813}
SUPERPIXEL_SPLIT = (40, 32, 20)  # train, val, test images
GRID = (4, 6)  # range of the grid's rows and columns, inclusive
OBJECTS = (1, 3)  # objects per image, inclusive
OBJECT_CELLS = (3, 7)  # cells per object, inclusive
JITTER = 0.3  # centroid offset, in cells
BRIGHTNESS = (0.8, 1.2)  # range of the image-wide brightness factor
COLOR_NOISE = 0.04  # std of a superpixel's mean colour around its region's

SCENES = np.array([[0.45, 0.65, 0.9],  # sky
                   [0.35, 0.6, 0.3],  # grass
                   [0.55, 0.5, 0.45]])  # indoor
SCENE_TEXTURE = 0.05
KINDS = np.array([[0.8, 0.2, 0.2], [0.9, 0.75, 0.2], [0.2, 0.3, 0.75],
                  [0.85, 0.85, 0.85], [0.25, 0.2, 0.2], [0.6, 0.3, 0.7]])
KIND_TEXTURE = np.array([0.02, 0.12, 0.05, 0.02, 0.12, 0.05])
#: Kinds of objects per dataset (the first ones of :data:`KINDS`).
NUM_KINDS = {'pascalvoc-sp': 3, 'coco-sp': 4}
#: COCO-SP's loader maps the original COCO category ids of the raw files to
#: 0-80: sample class ``c`` is written as the original id of loaded class
#: ``COCO_CLASSES[c]`` (0 is the background, as for PascalVOC-SP).
COCO_CLASSES = [0, 1, 3, 7, 12, 13, 20, 26, 27, 40, 45, 61, 80]


def sample_class(scene: int, kind: int, num_kinds: int) -> int:
    """Class of a superpixel of object kind :obj:`kind` on scene
    :obj:`scene` (0 is the background)."""
    return 1 + scene * num_kinds + kind


def _grid_edges(rows: int, cols: int, rng) -> List[Tuple[int, int]]:
    # Region adjacency of a jittered grid: 4-neighbours plus one diagonal of
    # every 2 x 2 block, drawn at random (cells meet at three-way corners).
    cell = np.arange(rows * cols).reshape(rows, cols)
    edges = [(cell[r, c], cell[r, c + 1]) for r in range(rows)
             for c in range(cols - 1)]
    edges += [(cell[r, c], cell[r + 1, c]) for r in range(rows - 1)
              for c in range(cols)]
    for r in range(rows - 1):
        for c in range(cols - 1):
            if rng.uniform() < 0.5:
                edges.append((cell[r, c], cell[r + 1, c + 1]))
            else:
                edges.append((cell[r, c + 1], cell[r + 1, c]))
    return [(int(a), int(b)) for a, b in edges]


def _grow(rng, free: np.ndarray, adj: List[List[int]], size: int) -> List[int]:
    # A connected blob of up to `size` free cells grown from a random one.
    blob = [int(rng.choice(np.flatnonzero(free)))]
    free[blob[0]] = False
    while len(blob) < size:
        frontier = sorted({v for u in blob for v in adj[u] if free[v]})
        if not frontier:
            break
        blob.append(int(rng.choice(frontier)))
        free[blob[-1]] = False
    return blob


def superpixel_graph(rng, num_kinds: int) -> Tuple[Tuple, Dict]:
    """One raw tuple ``(x, edge_attr, edge_index, y)`` of a superpixel
    image (sample classes; COCO ids are applied by the writer) and its
    scene and objects ``[(kind, cells), ...]``."""
    rows, cols = (int(rng.integers(GRID[0], GRID[1] + 1)) for _ in range(2))
    num = rows * cols
    edges = _grid_edges(rows, cols, rng)
    adj = [[] for _ in range(num)]
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    scene = int(rng.integers(len(SCENES)))
    base = np.tile(SCENES[scene], (num, 1))  # [N, 3]
    texture = np.full(num, SCENE_TEXTURE)
    y = np.zeros(num, dtype=np.int64)
    free, objects = np.ones(num, dtype=bool), []
    for _ in range(int(rng.integers(OBJECTS[0], OBJECTS[1] + 1))):
        kind = int(rng.integers(num_kinds))
        size = int(rng.integers(OBJECT_CELLS[0], OBJECT_CELLS[1] + 1))
        cells = _grow(rng, free, adj, size)
        base[cells], texture[cells] = KINDS[kind], KIND_TEXTURE[kind]
        y[cells] = sample_class(scene, kind, num_kinds)
        objects.append((kind, cells))
    brightness = rng.uniform(*BRIGHTNESS)
    mean = np.clip(brightness * base + rng.normal(0, COLOR_NOISE, (num, 3)),
                   0, 1)
    std = texture[:, None] * rng.uniform(0.7, 1.3, (num, 3))  # [N, 3]
    low = np.clip(mean - 2 * std * rng.uniform(0.8, 1.2, (num, 3)), 0, 1)
    high = np.clip(mean + 2 * std * rng.uniform(0.8, 1.2, (num, 3)), 0, 1)
    grid = np.stack(np.divmod(np.arange(num), cols), 1)  # [N, 2] row, col
    centroid = (grid + 0.5 + rng.uniform(-JITTER, JITTER, (num, 2))) / [
        rows, cols]
    x = np.concatenate([mean, std, low, high, centroid], 1)  # [N, 14]
    index = np.array(edges + [(b, a) for a, b in edges]).T  # [2, E]
    length = np.linalg.norm(centroid[index[0]] - centroid[index[1]], axis=1)
    contrast = np.linalg.norm(mean[index[0]] - mean[index[1]], axis=1)
    edge_attr = np.stack([length, contrast], 1)  # [E, 2]
    graph = (torch.tensor(x, dtype=torch.float),
             torch.tensor(edge_attr, dtype=torch.float),
             torch.tensor(index, dtype=torch.long), torch.from_numpy(y))
    return graph, {'scene': scene, 'objects': objects}


def write_superpixels(top: str, name: str, split=SUPERPIXEL_SPLIT) -> str:
    """Writes ``top/<name>/raw/`` (:obj:`name` ``'pascalvoc-sp'`` or
    ``'coco-sp'``) and returns the README section."""
    rng = np.random.default_rng(SUPERPIXEL_SEED[name])
    num_kinds = NUM_KINDS[name]
    ids = torch.tensor([COCO_ORIGINAL_LABELS[c] for c in COCO_CLASSES])

    def draw():
        graph = superpixel_graph(rng, num_kinds)[0]
        return graph[:3] + (ids[graph[3]], ) if name == 'coco-sp' else graph
    graphs, sizes = write_splits(top, name, draw, split)
    num_classes = 1 + len(SCENES) * num_kinds
    y = torch.cat([g[3] for g in graphs['val']])
    present = len(set(y.tolist()))
    background = float((y == 0).double().mean())
    ids = (f'; written as the original COCO category ids '
           f'{[COCO_ORIGINAL_LABELS[c] for c in COCO_CLASSES]}, which the '
           f'loader maps to the classes {COCO_CLASSES} of 81'
           if name == 'coco-sp' else '')
    return f"""\
## `{name}` (node classification, macro F1)

- `{name}/raw/{{train,val,test}}.pickle`: pickled lists of `(x, edge_attr,
  edge_index, y)` tuples as in the archive, {split[0]}/{split[1]}/{split[2]}
  images (seed {SUPERPIXEL_SEED[name]}), {min(sizes)}-{max(sizes)}
  superpixels each (a jittered grid of {GRID[0]}-{GRID[1]} rows and columns;
  the real images have about 480)
- `x` float32 `[N, 14]`: mean, spread, minimum and maximum RGB (3 each) and
  the centroid (row, column) in [0, 1]; `edge_attr` float32 `[E, 2]`:
  centroid distance and mean-colour distance; edges join grid neighbours
  and one diagonal of every 2 x 2 block, both directions stored
- a background of one of {len(SCENES)} scene colours and
  {OBJECTS[0]}-{OBJECTS[1]} objects, each {OBJECT_CELLS[0]}-{OBJECT_CELLS[1]} connected cells of one of
  {num_kinds} kinds (colour and texture); the image's brightness varies by
  a factor {BRIGHTNESS[0]}-{BRIGHTNESS[1]}
- `y` int64 `[N]`: 0 for the background, `1 + scene * {num_kinds} + kind`
  for an object superpixel ({num_classes} classes{ids}; {present} of them
  in the validation split, background {background:.2f} of its nodes)

The scene is read off the background around the object, so the superpixels
inside an object need more than one hop.
"""
