import os
import os.path as osp
import pickle
import sys

import pytest
import torch

sys.path.insert(0, osp.dirname(__file__))
from _train_toy import ToyTask, make_dataset, make_model  # noqa: E402

from samsa_geo.train import (CheckpointError, Trainer, load_checkpoint,  # noqa: E402
                             make_loader, save_checkpoint)
from samsa_geo.testing import CraftedPayload  # noqa: E402
from samsa_geo.train.checkpoint import atomic_write  # noqa: E402


def state():
    return {'model': {'w': torch.arange(1000.0)}, 'epoch': 3,
            'best_score': None, 'rng': (1, torch.tensor([1, 2]), 0.5)}


def test_round_trip_is_weights_only_loadable(tmp_path):
    path = tmp_path / 'sub' / 'last.pt'
    save_checkpoint(state(), path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded['model']['w'], torch.arange(1000.0))
    assert loaded['epoch'] == 3 and loaded['best_score'] is None
    assert loaded['format'] == 'samsa_geo.train/1'
    # No temporary file is left next to the checkpoint.
    assert os.listdir(tmp_path / 'sub') == ['last.pt']


class Unpicklable:
    # A local lambda fails with AttributeError up to Python 3.13 and with
    # PicklingError from 3.14: this fails the same way everywhere.
    def __reduce__(self):
        raise pickle.PicklingError('Unpicklable refuses to be pickled')


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / 'last.pt'
    save_checkpoint(state(), path)
    before = path.read_bytes()
    # The writer's error reaches the caller unchanged.
    with pytest.raises(pickle.PicklingError, match='refuses to be pickled'):
        save_checkpoint({'model': {'w': torch.ones(1000)},
                         'extra': Unpicklable()}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['last.pt']


def test_atomic_write_replaces_whole_file_or_nothing(tmp_path):
    path = tmp_path / 'sub' / 'log.csv'
    with atomic_write(path, newline='') as f:
        f.write('a,b\r\n1,2\r\n')
        assert not path.exists()  # nothing visible before the block ends
    assert path.read_bytes() == b'a,b\r\n1,2\r\n'  # newline='' kept
    with pytest.raises(RuntimeError, match='boom'):
        with atomic_write(path) as f:
            f.write('half')
            raise RuntimeError('boom')
    assert path.read_bytes() == b'a,b\r\n1,2\r\n'
    assert os.listdir(tmp_path / 'sub') == ['log.csv']
    with atomic_write(path, 'wb') as f:
        f.write(b'\x00\x01')
    assert path.read_bytes() == b'\x00\x01'
    with pytest.raises(ValueError, match="'mode'"):
        with atomic_write(path, 'a'):
            pass


@pytest.mark.parametrize('damage', ['truncate', 'garbage', 'zero'])
def test_damaged_checkpoint_raises_checkpoint_error(tmp_path, damage):
    path = tmp_path / 'last.pt'
    save_checkpoint(state(), path)
    data = path.read_bytes()
    if damage == 'truncate':
        path.write_bytes(data[:len(data) // 2])
    elif damage == 'garbage':
        path.write_bytes(b'\x00not a zip archive' * 10)
    else:
        path.write_bytes(b'')
    with pytest.raises(CheckpointError, match=r"Checkpoint '.*last\.pt'.*"
                       r"truncated or corrupted"):
        load_checkpoint(path)
    assert issubclass(CheckpointError, ValueError)


def test_foreign_or_incomplete_files(tmp_path):
    torch.save({'w': torch.zeros(2)}, tmp_path / 'foreign.pt')
    with pytest.raises(CheckpointError, match='not a samsa_geo.train checkpoint'):
        load_checkpoint(tmp_path / 'foreign.pt')
    save_checkpoint({'epoch': 1}, tmp_path / 'partial.pt')
    with pytest.raises(CheckpointError, match=r"lacks the entries \['model'\]"):
        load_checkpoint(tmp_path / 'partial.pt')
    with pytest.raises(FileNotFoundError, match='missing.pt'):
        load_checkpoint(tmp_path / 'missing.pt')


class Opaque:
    pass


@pytest.mark.parametrize('content', ['opaque', 'code'])
def test_unsafe_pickle_is_rejected(tmp_path, content):
    path, ran = tmp_path / 'evil.pt', tmp_path / 'ran'
    obj = Opaque() if content == 'opaque' else CraftedPayload(ran)
    torch.save({'format': 'samsa_geo.train/1', 'model': obj}, path)
    name = 'Opaque' if content == 'opaque' else 'io.open'
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    message = str(exc.value)
    assert message.startswith(f"Checkpoint '{path}' (")
    assert 'holds code or types that a weights-only load does not accept' \
        in message and name in message and 'truncated' not in message
    assert message.endswith('rewrite this one')  # whole sentences
    assert not ran.exists()


def test_resume_from_truncated_last_pt_names_the_file(tmp_path):
    def run(resume):
        tr = Trainer(make_model(), ToyTask(), out_dir=str(tmp_path), epochs=2,
                     resume=resume, progress=False, tensorboard=False)
        return tr.fit(make_loader(make_dataset(16), 8, shuffle=True))

    run(False)
    last = tmp_path / 'last.pt'
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=str(last)):
        run(True)
