r"""Reading files that may be damaged or crafted, without running code: a
weights-only :func:`torch.load` with no fallback, a restricted unpickler for
plain pickles of tensors, and the messages that name the file at fault."""
import io
import os
import os.path as osp
import pickle
import re
from typing import Any, BinaryIO, Union

import torch

# Globals a plain pickle of tensors, NumPy arrays and containers needs; the
# storages are rebuilt by a weights-only load (see _load_storage).
_PICKLE_GLOBALS = {
    ('collections', 'OrderedDict'),
    ('torch._utils', '_rebuild_tensor_v2'),
    ('torch._utils', '_rebuild_tensor'),
    ('torch._tensor', '_rebuild_from_type_v2'),
    ('torch', 'Tensor'),
    ('torch', 'Size'),
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'),
    ('numpy._core.multiarray', 'scalar'),
} | {('numpy.dtypes', name) for name in (
    'Float32DType', 'Float64DType', 'Int64DType', 'Int32DType', 'Int16DType',
    'Int8DType', 'UInt8DType', 'BoolDType', 'Float16DType')}


class DamagedFileError(ValueError):
    r"""Raised when a data file is truncated, corrupted or breaks its
    format (short rows, missing fields, non-finite values, labels out of
    range). The message names the file and, where known, the line or
    sample."""


class UnsafeFileError(ValueError):
    r"""Raised when a file holds code, or types that a safe load does not
    accept; nothing in it ran. The message names the file and the type."""


def rejection_message(path: Union[str, os.PathLike], error: Exception,
                      what: str, advice: str) -> str:
    r"""Why a weights-only :func:`torch.load` refused :obj:`path`, in whole
    sentences: either the file holds code or types a weights-only load does
    not accept (named), or it is truncated or corrupted (then :obj:`advice`
    follows)."""
    path = os.fspath(path)
    size = osp.getsize(path) if osp.isfile(path) else 0
    text = str(error)
    found = re.search(r'GLOBAL ([\w.]+)', text)
    if 'Weights only load failed' in text and found:
        return (f"{what} '{path}' ({size} bytes) holds code or types that a "
                f"weights-only load does not accept ('{found.group(1)}'), so "
                f"it was not loaded and nothing in it ran. Use only files "
                f"written by samsa_geo or from a source you trust, and "
                f"rewrite this one")
    if 'WeightsUnpickler error:' in text:  # not a pickle a writer produced
        text = text.split('WeightsUnpickler error:')[1]
    first = text.strip().split('\n')[0].split('. ')[0].rstrip('.')
    cause = type(error).__name__ + (f': {first}' if first else '')
    return (f"{what} '{path}' ({size} bytes) is truncated or corrupted and "
            f"cannot be read ({cause}). {advice}")


def weights_only_load(path: Union[str, os.PathLike], what: str = 'File',
                      advice: str = 'Delete it or replace it') -> Any:
    r"""Loads :obj:`path` with :obj:`torch.load(weights_only=True)` and never
    retries without it (as PyG's :obj:`fs.torch_load` does). Tensors,
    containers, plain types and the types registered with
    :func:`torch.serialization.add_safe_globals` (PyG registers its data
    classes) are accepted.

    Raises:
        FileNotFoundError: If :obj:`path` does not exist.
        IsADirectoryError: If :obj:`path` is a directory.
        UnsafeFileError: If the file holds code or other types.
        DamagedFileError: If it is truncated or corrupted (the message names
            it).
    """
    if osp.isdir(path):
        raise IsADirectoryError(f"{what} '{os.fspath(path)}' is a directory, "
                                f"not a file")
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError as e:  # nothing to delete or replace
        raise FileNotFoundError(f"{what} '{os.fspath(path)}' does not "
                                f"exist") from e
    except Exception as e:  # torch raises many types on damaged archives.
        message = rejection_message(path, e, what, advice)
        if 'holds code' in message:
            raise UnsafeFileError(message) from e
        raise DamagedFileError(message) from e


def _load_storage(data: bytes) -> Any:
    # Stands in for torch.storage._load_from_bytes, which loads with
    # weights_only=False.
    return torch.load(io.BytesIO(data), weights_only=True)


def _latin1_bytes(text: Any, encoding: Any) -> bytes:
    # Stands in for _codecs.encode, through which protocol 2 pickles bytes
    # (as a latin-1 str): any other codec or input is refused.
    if not isinstance(text, str) or encoding != 'latin1':
        raise pickle.UnpicklingError(f'GLOBAL _codecs.encode of '
                                     f'{type(text).__name__} to {encoding!r}')
    return text.encode('latin1')


def _empty_bytes() -> bytes:
    # Stands in for bytes(), through which protocol 2 pickles b''.
    return b''


def _array_from_buffer(buf: Any, dtype: Any, shape: Any, order: Any) -> Any:
    # Stands in for NumPy's _frombuffer, through which protocol 5 pickles
    # arrays: a view of the pickled bytes (NumPy refuses object dtypes).
    import numpy as np
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)) or \
            not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError(f'GLOBAL numpy._core.numeric.'
                                     f'_frombuffer of {type(buf).__name__}')
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


# Reconstruction helpers of plain pickles, replaced by the functions above,
# which build bytes and arrays from bytes and nothing else.
_PICKLE_HELPERS = {
    ('torch.storage', '_load_from_bytes'): _load_storage,
    ('_codecs', 'encode'): _latin1_bytes,
    ('__builtin__', 'bytes'): _empty_bytes,
    ('builtins', 'bytes'): _empty_bytes,
    ('numpy._core.numeric', '_frombuffer'): _array_from_buffer,
    ('numpy.core.numeric', '_frombuffer'): _array_from_buffer,
}


class _TensorUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        helper = _PICKLE_HELPERS.get((module, name))
        if helper is not None:
            return helper
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'GLOBAL {module}.{name}')


def restricted_pickle_load(file: BinaryIO, path: str = '<stream>',
                           what: str = 'File') -> Any:
    r"""Unpickles a plain :mod:`pickle` of tensors, NumPy arrays, containers
    and plain types, of any protocol from 2 to 5; any other global (a
    function to call, a class to build) is refused before it runs. The
    helpers through which pickles rebuild bytes (protocol 2) and arrays
    (protocol 5) are replaced by functions that build only bytes and arrays
    from bytes.

    Raises:
        UnsafeFileError: If the pickle names another global.
        DamagedFileError: If it is truncated or corrupted.
    """
    try:
        return _TensorUnpickler(file).load()
    except pickle.UnpicklingError as e:
        found = re.search(r'GLOBAL ([\w.]+)', str(e))
        if found:
            raise UnsafeFileError(
                f"{what} '{path}' holds code or types that a safe load does "
                f"not accept ('{found.group(1)}'), so it was not loaded and "
                f"nothing in it ran") from None
        raise DamagedFileError(
            f"{what} '{path}' is truncated or corrupted and cannot be read "
            f"(UnpicklingError: {e})") from e
    except (EOFError, ValueError, TypeError, AttributeError,
            RuntimeError) as e:
        if isinstance(e, UnsafeFileError):  # from a storage inside
            raise
        raise DamagedFileError(
            f"{what} '{path}' is truncated or corrupted and cannot be read "
            f"({type(e).__name__}: {e})") from e
