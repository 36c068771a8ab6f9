r"""The generator of the bundled synthetic PCQM-Contact sample, in the raw
format of the LRGB archive:

  OUT/lrgb_sample/pcqm-contact/raw/{train,val,test}.pt
      (read by samsa_geo.datasets.LRGBDataset(OUT/lrgb_sample, 'PCQM-Contact'))

The molecules are the peptide-like chains of the Peptides-func sample
(:mod:`samsa_geo.datasets._peptides_sample`); every chain folds into a
hairpin at its middle, and the contacts are the atom pairs at least
:data:`MIN_HOPS` bonds apart that the fold or the side chains bring
together (:func:`contacts`). Seeded: the same arguments write the same
bytes.
"""
from typing import Set, Tuple

import numpy as np
import torch

from samsa_geo.datasets._lrgb_raw import write_splits
from samsa_geo.datasets._peptides_sample import distance_matrix, molecule

CONTACT_SEED = 20240811
CONTACT_SPLIT = (40, 20, 16)  # train, val, test molecules
CONTACT_RESIDUES = (4, 6)  # range of the chain length, inclusive
MIN_HOPS = 5  # contacts join atoms at least this many bonds apart
MIN_SEPARATION = 2  # residues between hairpin partners


def contacts(residues: str, info, dist: np.ndarray) -> Set[Tuple[int, int]]:
    """Unordered contact pairs ``(i, j)``, ``i < j``: residue ``r`` of a
    chain of length ``L`` pairs with residue ``L - 1 - r`` when they are at
    least :data:`MIN_SEPARATION` apart (backbone N of one with the carbonyl
    O of the other, both ways: the hydrogen bonds of an antiparallel
    hairpin); every sulfur touches every aromatic ring atom and every lysine
    amine N every aspartate carboxyl O; pairs closer than :data:`MIN_HOPS`
    bonds are no contacts."""
    length, pairs = len(residues), set()
    for r in range(length):
        s = length - 1 - r
        if s - r >= MIN_SEPARATION:
            (n_r, o_r), (n_s, o_s) = info['backbone'][r], info['backbone'][s]
            pairs |= {(n_r, o_s), (o_r, n_s)}
    for group_a, group_b in (('sulfur', 'ring'), ('amine', 'carboxyl')):
        pairs |= {(a, b) for a in info[group_a] for b in info[group_b]}
    return {(min(i, j), max(i, j)) for i, j in pairs if dist[i, j] >= MIN_HOPS}


def contact_graph(rng) -> Tuple:
    """One raw PCQM-Contact tuple ``(x, edge_attr, edge_index,
    edge_label_index, edge_label)``: every contact in both directions
    (label 1), then as many pairs at least :data:`MIN_HOPS` bonds apart that
    are no contact (label 0)."""
    residues, elem, bonds, info, tensors = molecule(rng, CONTACT_RESIDUES)
    dist = distance_matrix(len(elem), bonds)  # [N, N]
    pos = sorted(contacts(residues, info, dist))
    far = np.argwhere(dist >= MIN_HOPS)  # [F, 2] ordered pairs
    far = far[[(min(i, j), max(i, j)) not in set(pos) for i, j in far]]
    neg = far[rng.choice(len(far), size=2 * len(pos), replace=False)]
    directed = [(i, j) for i, j in pos] + [(j, i) for i, j in pos]
    label_index = torch.tensor(directed + neg.tolist(),
                               dtype=torch.long).t().contiguous()  # [2, L]
    label = torch.cat([torch.ones(len(directed), dtype=torch.long),
                       torch.zeros(len(neg), dtype=torch.long)])  # [L]
    return (*tensors, label_index, label)


def write_pcqm_contact(top: str, split=CONTACT_SPLIT) -> str:
    """Writes ``top/pcqm-contact/raw/`` and returns the README section."""
    rng = np.random.default_rng(CONTACT_SEED)
    graphs, sizes = write_splits(top, 'pcqm-contact',
                                 lambda: contact_graph(rng), split)
    counts = [int(g[4].sum()) // 2 for gs in graphs.values() for g in gs]
    return f"""\
## `pcqm-contact` (link prediction, filtered MRR)

- `pcqm-contact/raw/{{train,val,test}}.pt`: lists of `(x, edge_attr,
  edge_index, edge_label_index, edge_label)` tuples as in the archive,
  {split[0]}/{split[1]}/{split[2]} molecules (seed {CONTACT_SEED}),
  {min(sizes)}-{max(sizes)} heavy atoms (mean {sum(sizes) / len(sizes):.1f}):
  the chains of `peptides-func` above with
  {CONTACT_RESIDUES[0]}-{CONTACT_RESIDUES[1]} residues, same features
- contacts (`edge_label` 1, {min(counts)}-{max(counts)} per molecule, mean
  {sum(counts) / len(counts):.1f}; stored in both directions): pairs at
  least {MIN_HOPS} bonds apart that the fold brings together. The chain
  folds into a hairpin at its middle: residue `r` of `L` faces residue
  `L - 1 - r`, and when they are at least {MIN_SEPARATION} residues apart
  the backbone N of each touches the carbonyl O of the other; every sulfur
  touches every aromatic ring atom, every lysine amine N every aspartate
  carboxyl O
- `edge_label` 0: as many pairs as contact rows, at least {MIN_HOPS} bonds
  apart and no contact, drawn at random (one direction)

The hairpin contacts depend on where an atom lies relative to both ends of
the chain, up to the whole molecule apart.
"""
