"""Atomic file and checkpoint writing, and safe checkpoint loading."""
import os
import os.path as osp
from contextlib import contextmanager
from typing import IO, Any, Dict, Iterable, Iterator, Optional, Union

import torch

from samsa_geo.io import rejection_message

CHECKPOINT_FORMAT = 'samsa_geo.train/1'


class CheckpointError(ValueError):
    r"""Raised when a checkpoint file is truncated, corrupted or not a
    :mod:`samsa_geo.train` checkpoint. The message names the file."""


@contextmanager
def atomic_write(path: Union[str, os.PathLike], mode: str = 'w',
                 newline: Optional[str] = None) -> Iterator[IO]:
    r"""Opens a temporary file in the folder of :obj:`path` for writing; when
    the :obj:`with` block ends without error the data is flushed and fsynced
    and the file renamed over :obj:`path` with :func:`os.replace`, so a crash
    at any moment leaves either the previous file or the new one, never half
    a file. On error the temporary file is removed and :obj:`path` is left
    untouched.

    Args:
        path (str): Destination file (its folder is created if needed).
        mode (str, optional): :obj:`'w'` (text) or :obj:`'wb'` (binary).
            (default: :obj:`'w'`)
        newline (str, optional): Passed to :func:`open` in text mode, e.g.
            :obj:`''` for :mod:`csv`. (default: :obj:`None`)
    """
    if mode not in ('w', 'wb'):
        raise ValueError(f"Expected 'mode' to be 'w' or 'wb' (got {mode!r})")
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = osp.join(folder, f'.{osp.basename(path)}.{os.getpid()}.tmp')
    try:
        with open(tmp, mode, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    try:  # Persist the rename itself (POSIX); best effort elsewhere.
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_checkpoint(state: Dict[str, Any], path: Union[str, os.PathLike]) -> None:
    r"""Writes :obj:`state` to :obj:`path` atomically (see
    :func:`atomic_write`): the data goes to a temporary file in the same
    folder, is flushed and fsynced, then renamed over :obj:`path` with
    :func:`os.replace`, so a crash at any moment leaves either the previous
    file or the new one, never half a file.

    Args:
        state (dict): Tensors and plain Python types only (so that
            :obj:`torch.load(weights_only=True)` can read it back).
        path (str): Destination file.
    """
    with atomic_write(path, 'wb') as f:
        torch.save({'format': CHECKPOINT_FORMAT, **state}, f)


def load_checkpoint(path: Union[str, os.PathLike],
                    map_location: Union[str, torch.device] = 'cpu',
                    required: Iterable[str] = ('model', )) -> Dict[str, Any]:
    r"""Reads a checkpoint written by :func:`save_checkpoint` with
    :obj:`torch.load(weights_only=True)`.

    Args:
        path (str): The checkpoint file.
        map_location (str or torch.device, optional): Where to put tensors.
            (default: :obj:`'cpu'`)
        required (Iterable[str], optional): Keys that must be present.
            (default: :obj:`('model',)`)

    Raises:
        FileNotFoundError: If :obj:`path` does not exist.
        CheckpointError: If the file cannot be unpickled (truncated or
            corrupted, or holding code or types a weights-only load refuses)
            or lacks a required key.
    """
    path = os.fspath(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f"Checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types on damaged archives.
        raise CheckpointError(rejection_message(
            path, e, 'Checkpoint', "Delete it or replace it: a damaged "
            "'last.pt' can be replaced by a copy of 'best.pt' from the same "
            "folder to resume from the best epoch")) from e
    if not isinstance(state, dict) or state.get('format') != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"File '{path}' is not a samsa_geo.train checkpoint (expected a "
            f"dict with format '{CHECKPOINT_FORMAT}')")
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(
            f"Checkpoint '{path}' lacks the entries {missing}")
    return state
