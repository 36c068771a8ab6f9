"""An object whose unpickling runs code, for tests of the safe loaders."""
import os
from typing import Any, Tuple, Union


class CraftedPayload:
    r"""Pickles as a call of :func:`open` on :obj:`path` in write mode:
    unpickling it creates the file, so a test sees whether code ran.

    Args:
        path (str): The file that appears if the payload runs.
    """
    def __init__(self, path: Union[str, os.PathLike]) -> None:
        self.path = os.fspath(path)

    def __reduce__(self) -> Tuple[Any, Tuple[str, str]]:
        return (open, (self.path, 'w'))
