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


@pytest.mark.parametrize('protocol', [2, 3, 4, 5])
def test_restricted_pickle_every_protocol(protocol):
    # Protocol 2 pickles bytes through _codecs.encode (and b'' through
    # bytes()), protocol 5 arrays through NumPy's _frombuffer.
    objs = {'t': torch.arange(6.).view(2, 3), 'e': torch.empty(0),
            'l': torch.tensor([1, 2], dtype=torch.long),
            'a': np.arange(6.).reshape(2, 3),
            'f': np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
            'b': np.array([True, False]), 'z': np.empty((0, 3)),
            's': np.float32(1.5), 'raw': b'\x00\xff', 'none': b''}
    out = restricted_pickle_load(io.BytesIO(pickle.dumps(objs, protocol)))
    for key in ('t', 'e', 'l'):
        assert torch.equal(out[key], objs[key])
        assert out[key].dtype == objs[key].dtype
    for key in ('a', 'f', 'b', 'z'):
        assert out[key].dtype == objs[key].dtype
        assert out[key].shape == objs[key].shape
        assert np.array_equal(out[key], objs[key])
    assert out['f'].flags.f_contiguous
    assert out['s'] == np.float32(1.5) and out['s'].dtype == np.float32
    assert out['raw'] == b'\x00\xff' and out['none'] == b''


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command, ))


class _Codec:
    # _codecs.encode with a codec other than the latin-1 of protocol 2.
    def __reduce__(self):
        import _codecs
        return (_codecs.encode, ('abc', 'rot13'))


@pytest.mark.parametrize('protocol', [2, 5])
def test_restricted_pickle_still_refuses_calls(tmp_path, protocol):
    ran = tmp_path / 'ran'
    data = pickle.dumps([np.arange(3), _System(f'touch {ran}')], protocol)
    with pytest.raises(UnsafeFileError, match=r"\('(posix|nt).system'\), so "
                       r"it was not loaded and nothing in it ran"):
        restricted_pickle_load(io.BytesIO(data), 'x.pickle')
    assert not ran.exists()
    with pytest.raises(UnsafeFileError, match=r"\('_codecs.encode'\)"):
        restricted_pickle_load(io.BytesIO(pickle.dumps(_Codec(), protocol)))


def test_weights_only_load_missing_file_or_directory(tmp_path):
    missing = tmp_path / 'missing.pt'
    with pytest.raises(FileNotFoundError, match=rf"^Cache '{missing}' does "
                       r"not exist$"):
        weights_only_load(missing, 'Cache')
    with pytest.raises(IsADirectoryError, match=rf"^Cache '{tmp_path}' is a "
                       r"directory, not a file$"):
        weights_only_load(tmp_path, 'Cache')
