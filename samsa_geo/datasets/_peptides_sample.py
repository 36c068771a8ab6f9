r"""The generator of the bundled synthetic Peptides-func sample, written in
the raw format of the LRGB archive:

  OUT/lrgb_sample/peptides-func/raw/{train,val,test}.pt
      (read by samsa_geo.datasets.LRGBDataset(OUT/lrgb_sample, 'Peptides-func'))

Every molecule is a short peptide-like chain of heavy atoms: residues of ten
kinds (side chains from none to an aromatic ring, a proline ring, sulfur
that may close a disulfide bridge), featurised like OGB's ``smiles2graph``
(9 atom and 3 bond columns), with 10 binary labels that follow from the
structure, several of them from atoms far apart in the graph. Seeded: the
same arguments write the same bytes.
"""
from collections import deque
from typing import Dict, List, Tuple

import numpy as np
import torch

from samsa_geo.datasets._lrgb_raw import write_splits

LRGB_SEED = 20240809
PEPTIDES_SPLIT = (64, 32, 16)  # train, val, test molecules
NUM_RESIDUES = (3, 5)  # range of the chain length, inclusive

# OGB atom feature values (atomic number - 1) and bond types.
C, N, O, S = 5, 6, 7, 15
VALENCE = {C: 4, N: 3, O: 2, S: 2}
SINGLE, DOUBLE, AROMATIC = 0, 1, 3
ORDER = {SINGLE: 1.0, DOUBLE: 2.0, AROMATIC: 1.5}
SP2, SP3 = 1, 2
NEUTRAL = 5  # formal charge 0 (OGB stores charge + 5)

RESIDUES = 'GAVSCKDPFH'
RESIDUE_PROBS = [0.10, 0.12, 0.10, 0.10, 0.12, 0.10, 0.10, 0.10, 0.08, 0.08]
HYDROPHOBIC = set('AVPF')
POLAR = set('SCKDH')
CYCLIC_PROB = 0.25  # a designed cysteine pair ...
BRIDGE_PROB = 0.8  # ... and its disulfide bridge
FAR = 7  # bonds between sulfur and aromatic ring for label 5

LABELS = [
    'aromatic ring (F or H residue)',
    'sulfur (C residue)',
    'disulfide bridge (S-S bond closing a macrocycle)',
    'at least two charged residues (K, D)',
    'N- and C-terminal residues both hydrophobic or both not',
    f'every sulfur at least {FAR} bonds from every aromatic ring atom '
    '(both present)',
    'more hydrophobic (A, V, P, F) than polar (S, C, K, D, H) residues',
    'at least 4 residues',
    'a P residue in the N-terminal half (position < length // 2)',
    'none of labels 0, 2, 3, 5',
]


def peptide(rng, residues: str) -> Tuple[List[int], List[int], List, Dict]:
    """Heavy atoms (OGB atomic-number values), chirality tags and bonds
    ``(i, j, type, conjugated)`` of the chain ``residues``; ``info`` holds
    the sulfur and aromatic atoms, whether a disulfide bridge formed, the
    backbone ``(N, C=O oxygen)`` of every residue, the lysine amine
    nitrogens, the aspartate carboxyl oxygens and the residue of every
    atom."""
    elem, chiral, bonds = [], [], []
    sulfur, ring_atoms = [], []
    backbone, amine, carboxyl, residue_of = [], [], [], []

    def atom(e, tag=0):
        elem.append(e)
        chiral.append(tag)
        residue_of.append(len(backbone) - 1)
        return len(elem) - 1

    def bond(i, j, kind=SINGLE, conjugated=False):
        bonds.append((i, j, kind, conjugated or kind == AROMATIC))

    def ring(start, kinds):
        # An aromatic ring of the elements `kinds`, bonded to `start`.
        idx = [atom(e) for e in kinds]
        ring_atoms.extend(idx)
        for a, b in zip(idx, idx[1:] + idx[:1]):
            bond(a, b, AROMATIC)
        bond(start, idx[0])

    prev_c = None
    for res in residues:
        backbone.append(None)
        n = atom(N)
        ca = atom(C, 0 if res == 'G' else int(rng.integers(1, 3)))
        c, o = atom(C), atom(O)
        backbone[-1] = (n, o)
        bond(n, ca)
        bond(ca, c)
        bond(c, o, DOUBLE, True)
        if prev_c is not None:
            bond(prev_c, n, SINGLE, True)  # peptide bond
        prev_c = c
        if res == 'G':
            continue
        cb = atom(C)
        bond(ca, cb)
        if res == 'V':
            bond(cb, atom(C))
            bond(cb, atom(C))
        elif res == 'S':
            bond(cb, atom(O))
        elif res == 'C':
            sulfur.append(atom(S))
            bond(cb, sulfur[-1])
        elif res == 'K':
            cg = atom(C)
            bond(cb, cg)
            amine.append(atom(N))
            bond(cg, amine[-1])
        elif res == 'D':
            cg = atom(C)
            bond(cb, cg)
            carboxyl.extend([atom(O), atom(O)])
            bond(cg, carboxyl[-2], DOUBLE, True)
            bond(cg, carboxyl[-1], SINGLE, True)
        elif res == 'P':
            cg, cd = atom(C), atom(C)
            bond(cb, cg)
            bond(cg, cd)
            bond(cd, n)  # the ring closes on the backbone nitrogen
        elif res == 'F':
            ring(cb, [C] * 6)
        elif res == 'H':
            ring(cb, [C, N, C, N, C])
    bond(prev_c, atom(O), SINGLE, True)  # C-terminal OH
    bridge = len(sulfur) >= 2 and rng.uniform() < BRIDGE_PROB
    if bridge:
        bond(sulfur[0], sulfur[-1])
    return elem, chiral, bonds, {'sulfur': sulfur, 'ring': ring_atoms,
                                 'bridge': bridge, 'backbone': backbone,
                                 'amine': amine, 'carboxyl': carboxyl,
                                 'residue_of': residue_of}


def bond_distances(num_atoms, bonds, sources):
    # Shortest-path lengths from the nearest of `sources` (BFS).
    adj = [[] for _ in range(num_atoms)]
    for i, j, _, _ in bonds:
        adj[i].append(j)
        adj[j].append(i)
    dist = np.full(num_atoms, -1)
    queue = deque(sources)
    dist[list(sources)] = 0
    while queue:
        u = queue.popleft()
        for v in adj[u]:
            if dist[v] < 0:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def distance_matrix(num_atoms, bonds) -> np.ndarray:
    """Shortest-path lengths in bonds between all atoms, ``[N, N]`` (the
    molecules are connected)."""
    return np.stack([bond_distances(num_atoms, bonds, [a])
                     for a in range(num_atoms)])


def _in_ring(num_atoms, bonds):
    # An atom lies on a ring when one of its bonds is not a bridge (removing
    # it leaves its ends connected).
    out = np.zeros(num_atoms, dtype=bool)
    for k, (i, j, _, _) in enumerate(bonds):
        rest = bonds[:k] + bonds[k + 1:]
        if bond_distances(num_atoms, rest, [i])[j] >= 0:
            out[i] = out[j] = True
    return out


def featurize(elem, chiral, bonds, aromatic_atoms):
    """OGB-style ``x`` int64 ``[N, 9]``, ``edge_attr`` int64 ``[E, 3]`` and
    ``edge_index`` int64 ``[2, E]`` (each bond in both directions, one
    after the other, as ``smiles2graph`` stores them)."""
    num = len(elem)
    degree = np.zeros(num, dtype=int)
    valence = np.zeros(num)
    conjugated = np.zeros(num, dtype=bool)
    for i, j, kind, conj in bonds:
        for a in (i, j):
            degree[a] += 1
            valence[a] += ORDER[kind]
            conjugated[a] |= conj
    aromatic = np.zeros(num, dtype=bool)
    aromatic[list(aromatic_atoms)] = True
    ring = _in_ring(num, bonds)
    x = []
    for a in range(num):
        hs = max(0, int(VALENCE[elem[a]] - valence[a]))
        x.append([elem[a], chiral[a], degree[a], NEUTRAL, hs, 0,
                  SP2 if conjugated[a] else SP3, int(aromatic[a]),
                  int(ring[a])])
    index, attr = [], []
    for i, j, kind, conj in bonds:
        index += [(i, j), (j, i)]
        attr += [(kind, 0, int(conj))] * 2
    return (torch.tensor(x, dtype=torch.long),
            torch.tensor(attr, dtype=torch.long),
            torch.tensor(index, dtype=torch.long).t().contiguous())  # [2, E]


def labels(residues: str, num_atoms: int, bonds, info) -> List[float]:
    """The 10 binary labels of :data:`LABELS`."""
    hydrophobic = sum(r in HYDROPHOBIC for r in residues)
    polar = sum(r in POLAR for r in residues)
    far = False
    if info['sulfur'] and info['ring']:
        dist = bond_distances(num_atoms, bonds, info['sulfur'])
        far = int(dist[info['ring']].min()) >= FAR
    y = [bool(info['ring']), bool(info['sulfur']), info['bridge'],
         sum(r in 'KD' for r in residues) >= 2,
         (residues[0] in HYDROPHOBIC) == (residues[-1] in HYDROPHOBIC),
         far, hydrophobic > polar, len(residues) >= 4,
         'P' in residues[:len(residues) // 2]]
    y.append(not (y[0] or y[2] or y[3] or y[5]))
    return [float(v) for v in y]


def random_residues(rng, num_residues=NUM_RESIDUES) -> str:
    """A residue string of a length in the inclusive range
    :obj:`num_residues`, with a designed cysteine pair in a quarter of the
    chains."""
    length = int(rng.integers(num_residues[0], num_residues[1] + 1))
    res = list(rng.choice(list(RESIDUES), size=length, p=RESIDUE_PROBS))
    if rng.uniform() < CYCLIC_PROB:  # a designed cysteine pair
        i, j = rng.choice(length, size=2, replace=False)
        res[i] = res[j] = 'C'
    return ''.join(res)


def molecule(rng, num_residues=NUM_RESIDUES) -> Tuple:
    """A random chain of :obj:`num_residues` (inclusive range): its residue
    string, atoms, bonds and ``info`` (:func:`peptide`) and its tensors
    ``(x, edge_attr, edge_index)`` (:func:`featurize`)."""
    residues = random_residues(rng, num_residues)
    elem, chiral, bonds, info = peptide(rng, residues)
    return residues, elem, bonds, info, featurize(elem, chiral, bonds,
                                                  info['ring'])


def peptide_graph(rng) -> Tuple:
    """One raw Peptides-func tuple ``(x, edge_attr, edge_index, y)`` (``y``
    float ``[1, 10]``) and its residue string."""
    residues, elem, bonds, info, tensors = molecule(rng)
    y = torch.tensor([labels(residues, len(elem), bonds, info)])  # [1, 10]
    return (*tensors, y), residues


def write_peptides_func(top: str, split=PEPTIDES_SPLIT) -> str:
    """Writes ``top/peptides-func/raw/`` and returns the README section."""
    rng = np.random.default_rng(LRGB_SEED)
    graphs, sizes = write_splits(top, 'peptides-func',
                                 lambda: peptide_graph(rng)[0], split)
    y = torch.cat([g[3] for gs in graphs.values() for g in gs])  # [112, 10]
    labels = '\n'.join(f'  {k}. {text} ({rate:.2f})' for k, (text, rate)
                       in enumerate(zip(LABELS, y.mean(0).tolist())))
    return f"""\
## `peptides-func` (graph multi-label classification, 10 tasks, AP)

- `peptides-func/raw/{{train,val,test}}.pt`: `torch.save`-d lists of
  `(x, edge_attr, edge_index, y)` tuples as in the archive,
  {split[0]}/{split[1]}/{split[2]} molecules (seed {LRGB_SEED}),
  {min(sizes)}-{max(sizes)} heavy atoms each (mean
  {sum(sizes) / len(sizes):.1f}; the real molecules have about 150)
- `x` int64 `[N, 9]` and `edge_attr` int64 `[E, 3]` follow OGB's
  `smiles2graph` encoding (atomic number - 1, chirality tag, degree, formal
  charge + 5, hydrogens, radicals, hybridisation, aromatic, in ring; bond
  type, stereo, conjugated); every bond is stored in both directions
- each molecule is a chain of {NUM_RESIDUES[0]}-{NUM_RESIDUES[1]} residues:
  backbone N-C-C(=O) joined by peptide bonds, a C-terminal OH, and side
  chains of ten kinds: G (none), A, V, S (O), C (S), K (N), D (carboxyl), P
  (ring closed on the backbone N), F (benzene ring), H (5-ring with two N);
  in a quarter of the molecules two residues are set to C, and two
  cysteines close a disulfide bridge with probability {BRIDGE_PROB}
- `y` float `[1, 10]`, one binary label per rule (positive rate in the
  sample):
{labels}

Labels 4, 5 and 8 depend on atoms up to the whole chain apart (the two
termini, the sulfur-ring distance, the position of a proline), so a model
has to see beyond a few bonds.
"""
