r"""The generator of the bundled synthetic Peptides-struct sample, in the raw
format of the LRGB archive:

  OUT/lrgb_sample/peptides-struct/raw/{train,val,test}.pt
      (read by samsa_geo.datasets.LRGBDataset(OUT/lrgb_sample, 'Peptides-struct'))

The molecules are the peptide-like chains of the Peptides-func sample
(:mod:`samsa_geo.datasets._peptides_sample`), longer; the 11 regression
targets are graph quantities of the heavy-atom graph, shifted and scaled by
fixed constants (:data:`STRUCT_CENTER`, :data:`STRUCT_SCALE`) to about zero
mean and unit spread. Seeded: the same arguments write the same bytes.
"""
from typing import List, Tuple

import numpy as np
import torch

from samsa_geo.datasets._lrgb_raw import write_splits
from samsa_geo.datasets._peptides_sample import (N, O, S, distance_matrix,
                                                 molecule)

STRUCT_SEED = 20240810
STRUCT_SPLIT = (40, 20, 16)  # train, val, test molecules
STRUCT_RESIDUES = (3, 6)  # range of the chain length, inclusive
FAR_PAIR = 8  # bonds apart for target 8
NEAR_AROMATIC = 3  # bonds from an aromatic atom for target 10

TARGETS = [
    'heavy atoms',
    'rings (bonds - atoms + 1)',
    'aromatic atoms',
    'heteroatoms (N, O, S)',
    'branch atoms (degree 3 or more)',
    'diameter (largest shortest-path length, in bonds)',
    'radius (smallest eccentricity, in bonds)',
    'mean shortest-path length over atom pairs',
    f'fraction of atom pairs at least {FAR_PAIR} bonds apart',
    'largest shortest-path length between two heteroatoms',
    f'atoms more than {NEAR_AROMATIC} bonds from every aromatic atom '
    '(all atoms when there is none)',
]
#: Target ``t`` is ``(value_t - STRUCT_CENTER[t]) / STRUCT_SCALE[t]``.
STRUCT_CENTER = [37.0, 1.5, 4.0, 15.0, 12.0, 17.0, 9.0, 7.0, 0.4, 16.0, 30.0]
STRUCT_SCALE = [10.0, 1.0, 4.0, 4.0, 4.0, 4.0, 2.0, 1.5, 0.15, 4.0, 10.0]


def struct_values(elem: List[int], bonds, aromatic: List[int]) -> List[float]:
    """The 11 quantities of :data:`TARGETS`, before scaling."""
    num = len(elem)
    dist = distance_matrix(num, bonds)  # [N, N]
    degree = np.zeros(num, dtype=int)
    for i, j, _, _ in bonds:
        degree[i] += 1
        degree[j] += 1
    hetero = [a for a in range(num) if elem[a] in (N, O, S)]
    pairs = dist[np.triu_indices(num, 1)]  # [N (N - 1) / 2]
    eccentricity = dist.max(1)
    near = (dist[:, aromatic].min(1) <= NEAR_AROMATIC if aromatic
            else np.zeros(num, dtype=bool))
    return [float(num), float(len(bonds) - num + 1), float(len(aromatic)),
            float(len(hetero)), float((degree >= 3).sum()),
            float(eccentricity.max()), float(eccentricity.min()),
            float(pairs.mean()), float((pairs >= FAR_PAIR).mean()),
            float(dist[np.ix_(hetero, hetero)].max()), float((~near).sum())]


def struct_graph(rng) -> Tuple[Tuple, str]:
    """One raw Peptides-struct tuple ``(x, edge_attr, edge_index, y)``
    (``y`` float ``[1, 11]``) and its residue string."""
    residues, elem, bonds, info, tensors = molecule(rng, STRUCT_RESIDUES)
    values = struct_values(elem, bonds, info['ring'])
    y = torch.tensor([[(v - c) / s for v, c, s in zip(
        values, STRUCT_CENTER, STRUCT_SCALE)]], dtype=torch.float)  # [1, 11]
    return (*tensors, y), residues


def write_peptides_struct(top: str, split=STRUCT_SPLIT) -> str:
    """Writes ``top/peptides-struct/raw/`` and returns the README section."""
    rng = np.random.default_rng(STRUCT_SEED)
    graphs, sizes = write_splits(top, 'peptides-struct',
                                 lambda: struct_graph(rng)[0], split)
    y = torch.cat([g[3] for g in graphs['train']])  # [64, 11]
    lines = '\n'.join(
        f'  {t}. {text}: (value - {c:g}) / {s:g} (training mean '
        f'{m:.2f}, std {d:.2f})' for t, (text, c, s, m, d) in enumerate(zip(
            TARGETS, STRUCT_CENTER, STRUCT_SCALE, y.mean(0).tolist(),
            y.std(0).tolist())))
    return f"""\
## `peptides-struct` (graph regression, 11 targets, MAE)

- `peptides-struct/raw/{{train,val,test}}.pt`: lists of `(x, edge_attr,
  edge_index, y)` tuples as in the archive, {split[0]}/{split[1]}/{split[2]}
  molecules (seed {STRUCT_SEED}), {min(sizes)}-{max(sizes)} heavy atoms
  (mean {sum(sizes) / len(sizes):.1f}): the chains of `peptides-func`
  above with {STRUCT_RESIDUES[0]}-{STRUCT_RESIDUES[1]} residues, same
  features
- `y` float `[1, 11]`: graph quantities of the heavy-atom graph (bonds
  counted once), each shifted and scaled by fixed constants:
{lines}

Targets 5-9 are distances across the whole molecule.
"""
