import os.path as osp

SAMPLES = {
    'modelnet40': 'modelnet40_sample',
    'shapenet_part': 'shapenet_part_sample',
}


def sample_root(name: str) -> str:
    r"""Returns the root of a bundled synthetic sample of the repository's
    :obj:`datasets/` folder, to pass as :obj:`root` to the matching loader:
    :obj:`"modelnet40"` for
    :class:`~samsa_geo.datasets.ModelNet40NormalResampled` and
    :obj:`"shapenet_part"` for :class:`~samsa_geo.datasets.ShapeNetPart`.
    The loader writes its cache to :obj:`processed/` inside that root
    (ignored by git).

    Args:
        name (str): :obj:`"modelnet40"` or :obj:`"shapenet_part"`.
    """
    if name not in SAMPLES:
        raise ValueError(f"Expected 'name' to be one of {sorted(SAMPLES)} "
                         f"(got '{name}')")
    repo = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    root = osp.join(repo, 'datasets', SAMPLES[name])
    if not osp.isdir(root):
        raise FileNotFoundError(
            f"The bundled sample '{SAMPLES[name]}' is not at '{root}' (it "
            f"ships with the source checkout; regenerate it with "
            f"'python3 scripts/make_sample_data.py')")
    return root
