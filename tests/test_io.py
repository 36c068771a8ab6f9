import io
import os
import pickle

import numpy as np
import pytest
import torch

from samsa_geo.io import (DamagedFileError, UnsafeFileError,
                          restricted_pickle_load, weights_only_load)
from samsa_geo.testing import CraftedPayload


def test_restricted_pickle_round_trip():
    # What PyG's LRGB superpixel pickles hold: tuples of tensors and arrays.
    graphs = [(torch.randn(5, 14), torch.randn(8, 2),
               torch.randint(0, 5, (2, 8)), np.arange(5)),
              {'y': [1, 2.5, 'a', None], 'z': torch.ones(2, dtype=torch.long)}]
    out = restricted_pickle_load(io.BytesIO(pickle.dumps(graphs)))
    for a, b in zip(out[0][:3], graphs[0][:3]):
        assert torch.equal(a, b) and a.dtype == b.dtype
    assert np.array_equal(out[0][3], graphs[0][3])
    assert out[1]['y'] == [1, 2.5, 'a', None]
    assert torch.equal(out[1]['z'], graphs[1]['z'])


def test_restricted_pickle_refuses_code_before_it_runs(tmp_path):
    ran = tmp_path / 'ran'
    data = pickle.dumps([torch.zeros(2), CraftedPayload(ran)])
    with pytest.raises(UnsafeFileError, match=r"File 'x.pickle' holds code "
                       r"or types that a safe load does not accept "
                       r"\('io.open'\), so it was not loaded"):
        restricted_pickle_load(io.BytesIO(data), 'x.pickle')
    assert not ran.exists()
    # A tensor storage holding code inside is refused too.
    inner = io.BytesIO()
    torch.save(CraftedPayload(ran), inner)
    from torch.storage import _load_from_bytes
    crafted = pickle.dumps(type('R', (), {'__reduce__': lambda self: (
        _load_from_bytes, (inner.getvalue(), ))})())
    with pytest.raises(UnsafeFileError, match="'io.open'"):
        restricted_pickle_load(io.BytesIO(crafted), 'y.pickle')
    assert not ran.exists()


def test_restricted_pickle_damaged():
    data = pickle.dumps([torch.randn(100)])
    with pytest.raises(DamagedFileError, match=r"'z.pickle' is truncated or "
                       r"corrupted .*truncated"):
        restricted_pickle_load(io.BytesIO(data[:len(data) // 2]), 'z.pickle')


def test_weights_only_load(tmp_path):
    path = tmp_path / 'a.pt'
    torch.save({'w': torch.arange(3)}, path)
    assert torch.equal(weights_only_load(path)['w'], torch.arange(3))
    ran = tmp_path / 'ran'
    torch.save([CraftedPayload(ran)], path)
    with pytest.raises(UnsafeFileError, match=rf"Cache '{path}' .*'io.open'"):
        weights_only_load(path, 'Cache')
    assert not ran.exists()
    path.write_bytes(os.urandom(64))
    with pytest.raises(DamagedFileError, match=r"truncated or corrupted .*"
                       r"\. Rebuild it$"):
        weights_only_load(path, 'Cache', 'Rebuild it')
