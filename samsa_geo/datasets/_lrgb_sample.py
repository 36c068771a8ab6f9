r"""The bundled synthetic LRGB sample: one small dataset per LRGB archive, in
that archive's raw format, and its README:

  OUT/lrgb_sample/<name>/raw/...  for the five names of LRGBDataset.names
      (read by samsa_geo.datasets.LRGBDataset(OUT/lrgb_sample, name))

Each dataset has a generator module of its own and a seed of its own, so
that changing one leaves the others' bytes alone.
"""
from samsa_geo.datasets._pcqm_contact_sample import write_pcqm_contact
from samsa_geo.datasets._peptides_sample import write_peptides_func
from samsa_geo.datasets._peptides_struct_sample import write_peptides_struct
from samsa_geo.datasets._superpixel_sample import write_superpixels

README_LRGB = """\
# SYNTHETIC samples in the raw formats of the five LRGB datasets

Everything here is **synthetic** (generated peptide-like chains and
superpixel grids), written by `scripts/make_sample_data.py`; it is NOT LRGB
data. It exists so that `examples/lrgb.py` and tests run offline with the
same loader as the real archives (`samsa_geo.datasets.LRGBDataset`, PyG's
`LRGBDataset`): pass this folder as `root` and the dataset's name
(`'Peptides-func'`, `'Peptides-struct'`, `'PascalVOC-SP'`, `'COCO-SP'`,
`'PCQM-Contact'`). Every label follows from the graph by the rules below,
without noise; the label names of the real datasets do not apply.

Numbers measured on these samples say nothing about LRGB.

Regenerate: `python3 scripts/make_sample_data.py`.

"""


def write_lrgb_samples(out: str) -> None:
    r"""Writes :obj:`out/lrgb_sample/`: the raw folders of the five
    datasets, then the README (last: it marks a complete sample)."""
    top = f'{out}/lrgb_sample'
    sections = [write_peptides_func(top), write_peptides_struct(top),
                write_superpixels(top, 'pascalvoc-sp'),
                write_superpixels(top, 'coco-sp'), write_pcqm_contact(top)]
    with open(f'{top}/README.md', 'w') as f:
        f.write(README_LRGB + '\n'.join(sections))
