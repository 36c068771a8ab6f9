import os
import os.path as osp
import shutil
import tempfile

from samsa_geo.datasets._sample_data import write_samples

SAMPLES = {
    'modelnet40': 'modelnet40_sample',
    'shapenet_part': 'shapenet_part_sample',
    'lrgb': 'lrgb_sample',
}


def _checkout_root() -> str:
    # The source checkout's datasets/ folder, next to the package.
    repo = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    return osp.join(repo, 'datasets')


def _cache_root() -> str:
    if os.environ.get('SAMSA_GEO_DATA'):
        return os.environ['SAMSA_GEO_DATA']
    cache = (os.environ.get('XDG_CACHE_HOME')
             or osp.join(osp.expanduser('~'), '.cache'))
    return osp.join(cache, 'samsa_geo', 'datasets')


def _complete(top: str) -> bool:
    # The generator writes README.md last, so its presence marks a whole
    # sample.
    return osp.isfile(osp.join(top, 'README.md'))


def sample_root(name: str) -> str:
    r"""Returns the root of a bundled synthetic sample, to pass as
    :obj:`root` to the matching loader: :obj:`"modelnet40"` for
    :class:`~samsa_geo.datasets.ModelNet40NormalResampled`,
    :obj:`"shapenet_part"` for :class:`~samsa_geo.datasets.ShapeNetPart`
    and :obj:`"lrgb"` for :class:`~samsa_geo.datasets.LRGBDataset` with any
    of its five names (one small dataset each).

    From a source checkout this is the repository's :obj:`datasets/` folder.
    After any other install (a wheel, :obj:`pip install .`) the samples are
    written on first use (about 4 seconds, 14 MB) by the same seeded
    generator, byte for byte the checkout's files, into
    :obj:`$SAMSA_GEO_DATA` if set, else
    :obj:`$XDG_CACHE_HOME/samsa_geo/datasets` (default
    :obj:`~/.cache/samsa_geo/datasets`). The loader writes its cache to
    :obj:`processed/` inside the returned root (LRGB:
    :obj:`<name>/processed/`).

    Args:
        name (str): :obj:`"modelnet40"`, :obj:`"shapenet_part"` or
            :obj:`"lrgb"`.
    """
    if name not in SAMPLES:
        raise ValueError(f"Expected 'name' to be one of {sorted(SAMPLES)} "
                         f"(got '{name}')")
    checkout = osp.join(_checkout_root(), SAMPLES[name])
    if _complete(checkout):
        return checkout
    cache = _cache_root()
    root = osp.join(cache, SAMPLES[name])
    if not _complete(root):
        os.makedirs(cache, exist_ok=True)
        # Written aside and renamed into place, so that a concurrent or
        # interrupted first use never leaves a half-written sample behind.
        tmp = tempfile.mkdtemp(prefix='.samples-', dir=cache)
        try:
            write_samples(tmp)
            for folder in SAMPLES.values():
                if not _complete(osp.join(cache, folder)):
                    shutil.rmtree(osp.join(cache, folder), ignore_errors=True)
                    try:
                        os.replace(osp.join(tmp, folder),
                                   osp.join(cache, folder))
                    except OSError:  # another process put it there first
                        if not _complete(osp.join(cache, folder)):
                            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root
