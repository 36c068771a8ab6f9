import hashlib
import json
import os
import os.path as osp
import warnings
from typing import Dict, Type

from torch_geometric.data import Data
from torch_geometric.data.data import BaseData

from samsa_geo.io import DamagedFileError, weights_only_load

#: Records, in the processed folder, the raw files each cache was built from.
FINGERPRINT_FILE = 'raw_fingerprint.json'

_ADVICE = ("Delete it, or pass force_reload=True: it is rebuilt from the raw "
           "files")


def raw_fingerprint(folder: str) -> str:
    r"""A hash of the relative path, size and modification time of every
    file under :obj:`folder` (the empty string if it does not exist)."""
    if not osp.isdir(folder):
        return ''
    digest = hashlib.sha256()
    for top, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = osp.join(top, name)
            stat = os.stat(path)
            digest.update(f'{osp.relpath(path, folder)}\0{stat.st_size}\0'
                          f'{stat.st_mtime_ns}\n'.encode())
    return digest.hexdigest()


class CheckedCache:
    r"""Mixin for :class:`~torch_geometric.data.InMemoryDataset` subclasses
    (listed first among the bases) that makes their cache safe and current:

    - the processed files, and PyG's :obj:`pre_transform.pt` /
      :obj:`pre_filter.pt`, load with a weights-only :func:`torch.load`,
      never retried without it, so a crafted file fails with an error naming
      it and runs nothing;
    - the cache key covers the raw files: the size and modification time of
      every file under :obj:`raw_dir` are hashed into
      :obj:`processed/raw_fingerprint.json` for each processed file, and a
      cache whose raw files changed (or that records none) is rebuilt, with
      a warning.
    """
    def load(self, path: str, data_cls: Type[BaseData] = Data) -> None:
        out = weights_only_load(path, 'Cache file', _ADVICE)
        if not (isinstance(out, tuple) and len(out) in (2, 3)
                and isinstance(out[0], dict) and isinstance(out[1], dict)):
            raise DamagedFileError(
                f"Cache file '{path}' is not a PyG InMemoryDataset file "
                f"(expected a tuple (data dict, slices dict[, data class]) "
                f"got {type(out).__name__}). {_ADVICE}")
        if len(out) == 3:
            data_cls = out[2]
        self.slices = out[1]
        self.data = data_cls.from_dict(out[0])

    def _fingerprint_path(self) -> str:
        return osp.join(self.processed_dir, FINGERPRINT_FILE)

    def _read_fingerprints(self) -> Dict[str, str]:
        path = self._fingerprint_path()
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _process(self) -> None:
        for name in ('pre_transform.pt', 'pre_filter.pt'):
            path = osp.join(self.processed_dir, name)
            if not self.force_reload and osp.exists(path):
                # PyG reads these without weights_only: check them first.
                weights_only_load(path, 'Cache file', _ADVICE)
        current = raw_fingerprint(self.raw_dir)
        stored = self._read_fingerprints()
        names = [osp.basename(p) for p in self.processed_paths]
        force_reload = self.force_reload
        if (not force_reload and all(osp.exists(p) for p in
                                     self.processed_paths)
                and any(stored.get(name) != current for name in names)):
            warnings.warn(f"The raw files under '{self.raw_dir}' changed "
                          f"since '{self.processed_dir}' was built (or it "
                          f"records no fingerprint of them): re-processing",
                          stacklevel=2)
            self.force_reload = True
        try:
            super()._process()
        finally:
            self.force_reload = force_reload
        if any(stored.get(name) != current for name in names):
            stored.update({name: current for name in names})
            with open(self._fingerprint_path(), 'w') as f:
                json.dump(stored, f, indent=1, sort_keys=True)
